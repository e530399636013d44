"""First contact: both commands (and `from utils import Embedder`) on a Python that lacks a requirement, and Ctrl-C
while they start. Each is one line naming the problem and what to do, exit 2 or 130, never a traceback.

The requirements are hidden, and imports slowed down, by a `sitecustomize` module on PYTHONPATH, imported by every
Python these tests start (the worker server included): a module named in TEST_HIDE_MODULES is not found, as if not
installed; one named in TEST_SLOW_IMPORT finds itself but waits TEST_SLOW_S seconds before it runs (noting the
process id in TEST_SLOW_MARK first), so that a signal reaches the process inside that import, not at a guessed moment.
A directory holding a `torch` package that fails on import stands for an install that is there but broken.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env
from utils.requirements import INSTALL, REQUIREMENTS

SCRIPTS = ["generate_embeddings_t5.py", "validate_t5_embeddings.py"]
CONFIG = str(REPO / "examples" / "config_offline.yaml")

HOOK = """
import importlib.machinery, os, sys, time

HIDDEN = set(filter(None, os.environ.get("TEST_HIDE_MODULES", "").split(",")))
SLOW = os.environ.get("TEST_SLOW_IMPORT")


class SlowLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with open(os.environ["TEST_SLOW_MARK"], "a") as mark:
            mark.write(f"{os.getpid()}\\n")
        time.sleep(float(os.environ.get("TEST_SLOW_S", "60")))
        self.loader.exec_module(module)


class Hook:
    def find_spec(self, name, path=None, target=None):
        if name in HIDDEN or name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name == SLOW:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None:
                spec.loader = SlowLoader(spec.loader)
            return spec
        return None


sys.meta_path.insert(0, Hook())
"""
BROKEN_TORCH = "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"


@pytest.fixture(scope="module")
def hook(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hook")
    (directory / "sitecustomize.py").write_text(HOOK)
    return directory


@pytest.fixture(scope="module")
def broken_torch(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("broken")
    (directory / "torch").mkdir()
    (directory / "torch" / "__init__.py").write_text(BROKEN_TORCH)
    return directory


def run(args: list[str], pythonpath: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**cli_env(), "PYTHONPATH": str(pythonpath), **env}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- a requirement missing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("hidden", ["torch", "transformers", "yaml"])
def test_a_missing_requirement_is_one_line_with_the_install_commands(script, hidden, hook):
    """transformers is imported only by the worker processes, yaml before torch: each is found missing first thing."""
    result = run([script, "--config", CONFIG], hook, TEST_HIDE_MODULES=hidden)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"error: {REQUIREMENTS[hidden]} is not installed in this Python"), line
    assert line.endswith(INSTALL)
    assert "pip install torch==2.13.0 && pip install -r requirements_t5.txt" in line and "pytorch.org" in line


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_requirement_that_fails_to_import_is_one_line(script, broken_torch):
    result = run([script, "--config", CONFIG], broken_torch)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == f"error: torch cannot be imported (No module named 'torch'); {INSTALL}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_works_without_torch(script, hook, broken_torch):
    for pythonpath, env in ((hook, {"TEST_HIDE_MODULES": "torch"}), (broken_torch, {})):
        result = run([script, "--help"], pythonpath, **env)
        assert result.returncode == 0 and "--config" in result.stdout, result.stderr


def test_the_python_api_raises_one_import_error(hook, broken_torch):
    """`from utils import Embedder` without torch, and Embedder(...) with a torch that fails to import: an ImportError
    (and the project's UserError) whose message is the one line; nothing from inside torch in the traceback."""
    code = (
        "from utils.errors import UserError\n"
        "try:\n"
        "    from utils import Embedder\n"
        "    Embedder('any')\n"
        "except ImportError as exc:\n"
        "    assert isinstance(exc, UserError) and exc.name == 'torch', exc\n"
        "    print(exc)\n"
    )
    missing = run(["-c", code], hook, TEST_HIDE_MODULES="torch")
    broken = run(["-c", code], broken_torch)
    assert missing.returncode == 0 and missing.stdout.startswith("torch is not installed"), missing.stderr
    assert broken.returncode == 0 and broken.stdout.startswith("torch cannot be imported"), broken.stderr
    uncaught = run(["-c", "from utils import Embedder"], hook, TEST_HIDE_MODULES="torch")
    assert uncaught.returncode == 1 and "site-packages" not in uncaught.stderr, uncaught.stderr
    assert uncaught.stderr.splitlines()[-1].startswith("utils.requirements.MissingRequirement: torch is not installed")


def test_the_python_api_does_not_ask_for_what_only_the_job_needs(hook):
    """The output writers' h5py and pyarrow and the report's matplotlib are the job's: the API works without them."""
    result = run(["-c", "from utils import Embedder; print(Embedder.__name__)"], hook,
                 TEST_HIDE_MODULES="h5py,pyarrow,matplotlib")  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "Embedder", result.stderr


def test_the_requirement_table_lists_requirements_txt():
    """Every package requirements_t5.txt installs for running (the lines before its tests) is checked up front."""
    text = (REPO / "requirements_t5.txt").read_text().split("# tests and linting")[0]
    listed = [re.match(r"[A-Za-z0-9_.-]+", line).group(0) for line in text.splitlines() if line[:1].isalpha()]
    assert listed == list(REQUIREMENTS.values())


# -- Ctrl-C while starting -------------------------------------------------------------------------------------------
def wait_for_mark(mark: Path, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if mark.exists() and mark.read_text().strip():
            return int(mark.read_text().split()[0])
        time.sleep(0.02)
    raise AssertionError(f"no process reached the slowed import: {process.communicate()}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_while_torch_imports_is_one_line_and_exit_130(script, hook, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it, while the command imports torch."""
    mark = tmp_path / "mark"
    env = {**cli_env(), "PYTHONPATH": str(hook), "TEST_SLOW_IMPORT": "torch", "TEST_SLOW_MARK": str(mark)}
    process = subprocess.Popen(
        [sys.executable, script, "--config", CONFIG], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert wait_for_mark(mark, process) == process.pid
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert one_line(stderr).startswith("interrupted")


def test_ctrl_c_while_the_worker_server_imports_leaves_it_working(hook, tmp_path):
    """The worker server imports torch and transformers while the command reads its inputs; a Ctrl-C then (it reaches
    the whole process group) is the command's to handle: the server neither dies nor prints a traceback, and a
    worker forked from it afterwards runs."""
    mark = tmp_path / "mark"
    code = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from utils.running.local import start_worker_server, worker_context\n"
        "start_worker_server()\n"
        "mark = Path(os.environ['TEST_SLOW_MARK'])\n"
        "deadline = time.monotonic() + 60\n"
        "while not mark.exists() or not mark.read_text().strip():\n"
        "    assert time.monotonic() < deadline, 'the worker server never imported transformers'\n"
        "    time.sleep(0.02)\n"
        "os.kill(int(mark.read_text().split()[0]), signal.SIGINT)\n"
        "worker = worker_context().Process(target=print, args=('worker ran',))\n"
        "worker.start()\n"
        "worker.join()\n"
        "sys.exit(worker.exitcode)\n"
    )
    result = run(["-c", code], hook, TEST_SLOW_IMPORT="transformers", TEST_SLOW_MARK=str(mark), TEST_SLOW_S="1")
    assert result.returncode == 0, result.stderr
    assert "worker ran" in result.stdout and "Traceback" not in result.stderr, result.stderr
