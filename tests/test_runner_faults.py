"""Faults around the job runner, through the real command (issue 13, cases 6, 7, 9, 10 and 11).

Faults are injected with a `sitecustomize` module on PYTHONPATH, imported by the main process and by every spawned
worker, that patches the product's modules as they load, steered by environment variables: EMFILE (too many open files)
from the first worker start, a worker blocked in a sleep that ignores the stop request, a slow merge (so a
signal lands in it), and ENOSPC from the chunk writer or from the merge. The product code has no test hooks.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    REPO,
    chunk_files,
    cli_env,
    load_output,
    patching_sitecustomize,
    random_protein,
    write_config,
    write_fasta,
)

HOOK = patching_sitecustomize(
    r"""
import errno, os, time

def _patch_start():
    # The first worker start fails as it does when the process is out of file descriptors (RLIMIT_NOFILE). Not a
    # real lowered limit: with the forkserver start method, EMFILE in the middle of handing the descriptors over
    # kills CPython's fork server itself, which is not what this test is about.
    import multiprocessing.process as mp_process
    original = mp_process.BaseProcess.start
    state = {"calls": 0}

    def start(self):
        state["calls"] += 1
        if state["calls"] == 1:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return original(self)

    mp_process.BaseProcess.start = start

def _patch_encode(module):
    original = module.Encoder.embed
    marker = os.environ.get("TEST_MARKER")

    def embed(self, *args, **kwargs):
        if marker:
            with open(marker, "w") as handle:
                handle.write(str(os.getpid()))  # the worker's pid, for a test that kills it
        if os.environ.get("TEST_BLOCK_EMBED"):
            while True:  # a worker stuck in I/O: the stop request is noted, and never looked at
                time.sleep(3600)
        if os.environ.get("TEST_EMBED_SLOW_S"):
            time.sleep(float(os.environ["TEST_EMBED_SLOW_S"]))
        return original(self, *args, **kwargs)

    module.Encoder.embed = embed

def _patch_store(module):
    original = module.write_new_bytes
    calls = [0]

    def write_new_bytes(path, data):
        if path.suffix == ".chk":
            calls[0] += 1
            if calls[0] > int(os.environ["TEST_CHUNK_ENOSPC_AFTER"]):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, data)

    module.write_new_bytes = write_new_bytes

def _patch_output(module):
    original = module.write_outputs

    def write_outputs(output_dir, split, *args, **kwargs):
        if os.environ.get("TEST_MERGE_MARKER"):
            open(os.environ["TEST_MERGE_MARKER"], "a").close()
            time.sleep(1.5)
        if os.environ.get("TEST_MERGE_ENOSPC"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output_dir / f".{split}.tmp"))
        if os.environ.get("TEST_MERGE_NO_MEMORY"):  # what pyarrow raises under ulimit -v
            import pyarrow.lib
            raise pyarrow.lib.ArrowMemoryError("malloc of size 1048576 failed")
        return original(output_dir, split, *args, **kwargs)

    module.write_outputs = write_outputs

PATCHES = {}
if os.environ.get("TEST_START_EMFILE"):
    _patch_start()
if os.environ.get("TEST_MARKER") or os.environ.get("TEST_BLOCK_EMBED") or os.environ.get("TEST_EMBED_SLOW_S"):
    PATCHES["utils.engine.encode"] = _patch_encode
if os.environ.get("TEST_CHUNK_ENOSPC_AFTER"):
    PATCHES["utils.files"] = _patch_store  # every chunk is written through utils.files.write_new_bytes
if os.environ.get("TEST_MERGE_MARKER") or os.environ.get("TEST_MERGE_ENOSPC") or os.environ.get("TEST_MERGE_NO_MEMORY"):
    PATCHES["utils.outputs.writers"] = _patch_output
"""
)

RNG = random.Random(31)
TRAIN = [(f"p{i}", random_protein(RNG, RNG.randint(10, 50))) for i in range(10)]
TEST = [("t0", random_protein(RNG, 25))]


@pytest.fixture(scope="module")
def hook_path(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("runner_hook")
    (directory / "sitecustomize.py").write_text(HOOK)
    return str(directory)


def _setup(directory: Path, checkpoints, models=("esm",), **run_params) -> Path:
    write_fasta(directory / "train.fasta", TRAIN)
    write_fasta(directory / "test.fasta", TEST)
    params = {"batch_size": 2, "save_every_n_batches": 1, **run_params}
    return write_config(directory, {key: {"name": checkpoints["esm2"]} for key in models}, run_params=params)


def _start(config: Path, hook_path: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)],
        cwd=REPO, env={**cli_env(), "PYTHONPATH": hook_path, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run(config: Path, hook_path: str, **env: str) -> subprocess.CompletedProcess:
    process = _start(config, hook_path, **env)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), process.communicate(timeout=60)


def _finals(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*_embeddings_*"))


def _temporary(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp" in p.name]


def _assert_own_lines(stderr: str) -> None:
    """Every message starts on its own line, whatever a progress bar left on the line before (bars end in '\\r')."""
    for line in stderr.split("\n"):
        for word in ("error:", "interrupted", "stopping:", "done in"):
            if word in line:
                assert line.startswith(word), (word, line)


# -- 6: a worker that cannot start ------------------------------------------------------------------------------------
def test_worker_that_cannot_start_fails_its_model_and_later_models_still_run(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints, models=("first", "second"))
    result = _run(config, hook_path, TEST_START_EMFILE="1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "interrupted" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any("first" in line and "could not start" in line and "Too many open files" in line for line in errors)
    assert _finals(tmp_path / "out") == ["test_embeddings_second.pt", "train_embeddings_second.pt"]
    assert "done in" not in result.stderr


# -- 7: signals until the last file is in place; leftovers of earlier runs ------------------------------------------
def test_sigterm_during_merge_exits_130_and_leaves_whole_files(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints, output_format="both")
    marker = tmp_path / "merging"
    process = _start(config, hook_path, TEST_MERGE_MARKER=str(marker))
    _wait_for(marker, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr and "before any work started" not in stderr, stderr
    assert "Traceback" not in stderr
    out = tmp_path / "out"
    assert not _temporary(out)
    assert len(_finals(out)) < 4
    for name in _finals(out):  # whatever is in place is whole
        if name.endswith(".pt"):
            assert len(load_output(out / name)["ids"]) in (len(TRAIN), len(TEST))

    resumed = _run(config, hook_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _finals(out) == sorted(f"{s}_embeddings_esm.{x}" for s in ("test", "train") for x in ("h5", "pt"))
    log = (tmp_path / "logs" / "esm.log").read_text()
    unique, reused = map(int, re.findall(r"(\d+) unique sequences, (\d+) already in chunks", log)[-1])
    assert unique == reused  # only the merge was left to do


def test_sigint_during_merge_is_not_called_before_any_work(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints)
    marker = tmp_path / "merging"
    process = _start(config, hook_path, TEST_MERGE_MARKER=str(marker))
    _wait_for(marker, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "before any work started" not in stderr and "rerun the same command to resume" in stderr, stderr
    assert "Traceback" not in stderr and not _temporary(tmp_path / "out")


def test_temporary_files_of_earlier_runs_are_removed_at_start(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints)
    from utils.files import HOST, STALE_TEMPORARY_S

    out = tmp_path / "out"
    partition = out / ".chunks" / "esm2.fp32.layer2.0123456789abcdef"
    partition.mkdir(parents=True)
    (out / ".chunks" / "esm").mkdir(parents=True)  # the earlier layout's directory
    leftovers = [
        out / ".train_embeddings_esm.per_residue.h5.tmp-999999",
        out / ".test_embeddings_esm.pt.tmp-999998",
        out / ".chunks" / "esm" / ".0123456789abcdef0123.chk.tmp-999997",  # a dead writer's, the earlier naming
        partition / f".0123456789abcdef0123.chk.tmp-999996-{HOST}",  # a dead writer's on this host
        partition / ".0123456789abcdef0124.chk.tmp-999995-0badc0de",  # another host's, a day old
    ]
    alive = partition / f".0123456789abcdef0125.chk.tmp-{os.getpid()}-0badc0de"  # may be writing on another host
    for path in [*leftovers, alive]:
        path.write_bytes(b"partial")
    os.utime(leftovers[-1], (time.time() - STALE_TEMPORARY_S - 60,) * 2)
    result = _run(config, hook_path)
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in leftovers)
    assert alive.exists()  # a store is shared with other runs: only what is certainly dead goes


# -- 9: a stop that hangs escalates ------------------------------------------------------------------------------------
def test_worker_that_ignores_the_stop_is_killed_after_the_grace_period(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints, stop_grace_s=2)
    marker = tmp_path / "embedding"
    process = _start(config, hook_path, TEST_BLOCK_EMBED="1", TEST_MARKER=str(marker))
    _wait_for(marker, process)
    stopped = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - stopped < 30
    assert process.returncode == 130, stderr
    assert "did not stop within 2 s" in stderr and "Traceback" not in stderr, stderr
    _assert_own_lines(stderr)


def test_second_ctrl_c_kills_the_workers_at_once(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints)  # the default grace period: far longer than this test waits
    marker = tmp_path / "embedding"
    process = _start(config, hook_path, TEST_BLOCK_EMBED="1", TEST_MARKER=str(marker))
    _wait_for(marker, process)
    stopped = time.monotonic()
    process.send_signal(signal.SIGINT)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - stopped < 20
    assert process.returncode == 130, stderr
    assert "second" in stderr and "killed" in stderr and "Traceback" not in stderr, stderr


# -- 10: disk full, stdout closed --------------------------------------------------------------------------------------
def test_disk_full_mid_run_is_one_line_and_resumable(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints)
    result = _run(config, hook_path, TEST_CHUNK_ENOSPC_AFTER="2")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "No space left on device" in line]
    assert len(lines) == 1 and "rerun the same command to resume" in lines[0], result.stderr
    assert len(chunk_files(tmp_path / "out")) == 2  # the chunks before it are kept
    assert not _temporary(tmp_path / "out") and "done in" not in result.stderr
    _assert_own_lines(result.stderr)


def test_disk_full_during_merge_is_one_line_and_resumable(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints)
    result = _run(config, hook_path, TEST_MERGE_ENOSPC="1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "No space left on device" in line]
    assert len(lines) == 1 and lines[0].startswith("error:") and "rerun the same command" in lines[0], result.stderr
    assert not _finals(tmp_path / "out") and not _temporary(tmp_path / "out")


def test_merge_out_of_memory_is_one_line_and_the_rerun_finishes(checkpoints, tmp_path, hook_path):
    """Under a memory limit pyarrow raises ArrowMemoryError in the merge: one line, exit 1, the report written and
    the progress files gone; the same command again only merges."""
    config = _setup(tmp_path, checkpoints, report=True)
    result = _run(config, hook_path, TEST_MERGE_NO_MEMORY="1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "ran out of memory" in line]
    assert line.startswith("error:") and "malloc of size 1048576 failed" in line and "rerun the same command" in line
    assert not _finals(tmp_path / "out") and not list((tmp_path / "logs").glob("*.progress.jsonl"))
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["status"] == "failed"
    rerun = _run(config, hook_path)
    assert rerun.returncode == 0, rerun.stderr
    assert _finals(tmp_path / "out") == ["test_embeddings_esm.pt", "train_embeddings_esm.pt"]


def test_closed_stdout_after_the_files_are_written_is_not_an_error(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints)
    process = _start(config, hook_path)
    process.stdout.close()  # as `| true` or `| head -0` would
    stderr = process.stderr.read()
    process.wait(timeout=300)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert _finals(tmp_path / "out") == ["test_embeddings_esm.pt", "train_embeddings_esm.pt"]


# -- 11: a killed worker: the message on its own line, no "done", the signal in the log ------------------------------
def test_killed_worker_is_reported_on_its_own_line_and_in_its_log(checkpoints, tmp_path, hook_path):
    config = _setup(tmp_path, checkpoints)
    marker = tmp_path / "embedding"
    process = _start(config, hook_path, TEST_EMBED_SLOW_S="0.3", TEST_MARKER=str(marker))
    _wait_for(marker, process)
    time.sleep(0.5)  # the progress bar has drawn a line
    os.kill(int(marker.read_text()), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    _assert_own_lines(stderr)
    assert "error: model esm" in stderr and "done in" not in stderr, stderr
    assert "SIGKILL" in (tmp_path / "logs" / "esm.log").read_text()


def test_stop_grace_is_a_config_key(tmp_path):
    from utils.inputs.config import load_config

    path = tmp_path / "c.yaml"
    config = {"paths": {"raw_train_sequences": "x.fa", "output_dir": "out"}, "models": {"m": {"name": "x/y"}}}
    path.write_text(yaml.safe_dump({**config, "run_params": {"stop_grace_s": 5}}))
    assert load_config(path).run.stop_grace_s == 5
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).run.stop_grace_s == 30
