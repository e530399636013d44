"""Smaller faults of issue 24 (item 8), each through the real command where the user met it: ESM-1b's meta names the
window it used; max_residues below twice the default overlap is accepted; progress files of runs killed with -9 go,
those of live runs stay; every worker log line names its run; a kill -9 while a worker reads its order prints no
traceback; the dry run says a small memory limit in a unit that fits. (The Ray log hint is in test_ray.py; a checkpoint
transformers cannot run, in test_layouts.py.)"""

from __future__ import annotations

import fcntl
import random
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, load_output, random_protein, run_cli, write_config, write_fasta

RNG = random.Random(8)
SHORT = [(f"s{i}", random_protein(RNG, RNG.randint(20, 60))) for i in range(6)]


def test_esm1b_meta_names_the_window_it_used_not_a_larger_setting(checkpoints, tmp_path):
    long = random_protein(RNG, 1100)
    write_fasta(tmp_path / "train.fasta", [*SHORT, ("long", long)])
    models = {"esm1b": {"name": checkpoints["esm1b"]}}
    config = write_config(tmp_path, models, test=None, run_params={"max_residues": 2000})
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    meta = load_output(tmp_path / "out" / "train_embeddings_esm1b.pt")["meta"]
    assert meta["max_residues"] == 1022  # was 2000, while its windows were 1,022
    assert meta["windowed"]["long"]["window_residues"] == 1022


def test_max_residues_below_twice_the_default_overlap_is_accepted(checkpoints, tmp_path):
    from utils.engine.embedder import Embedder
    from utils.errors import UserError
    from utils.inputs.config import load_config

    write_fasta(tmp_path / "train.fasta", SHORT)
    config = write_config(tmp_path, {"m": {"name": "x/y"}}, test=None, run_params={"max_residues": 500})
    assert load_config(config).run.max_residues == 500  # was refused about window_overlap, a key not set
    explicit = write_config(tmp_path, {"m": {"name": "x/y"}}, test=None,
                            run_params={"max_residues": 500, "window_overlap": 300})  # fmt: skip
    with pytest.raises(UserError, match=r"run_params.window_overlap: must be less than half of max_residues \(500\)"):
        load_config(explicit)
    with Embedder(str(checkpoints["esm2"]), max_residues=500) as embedder:  # the API's default overlap as well
        assert embedder.embed(["MKTAYIAKQR"]).shape == (1, 32)
    with pytest.raises(UserError, match="window_overlap: must be less than half"):
        Embedder(str(checkpoints["esm2"]), max_residues=500, window_overlap=300)


def test_progress_files_of_killed_runs_go_and_log_lines_name_their_run(checkpoints, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    stale = logs / "esm.20250101-000000-4242.progress.jsonl"  # a run killed with -9 left it
    stale.write_text('{"t": 0, "event": "start", "label": "esm"}\n')
    live = logs / "esm.20250101-000001-4343.progress.jsonl"  # another config's run, still running: it holds its file
    live.write_text('{"t": 0, "event": "start", "label": "esm"}\n')
    write_fasta(tmp_path / "train.fasta", SHORT)
    models = {"esm": {"name": checkpoints["esm2"]}}
    first = write_config(tmp_path, models, test=None, run_params={"report": True})
    with open(live, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = run_cli("generate_embeddings_t5.py", "--config", str(first))
        assert result.returncode == 0, result.stderr
        assert not stale.exists() and live.exists()
    assert not [p for p in logs.glob("*.progress.jsonl") if p != live]  # the run's own went after its report
    # a second config sharing the log_dir and the output key appends to the same log: each line says whose it is
    (tmp_path / "second").mkdir()
    second = write_config(tmp_path / "second", models, test=None, extra_paths={"log_dir": str(logs)})
    write_fasta(tmp_path / "second" / "train.fasta", SHORT[:3])
    assert run_cli("generate_embeddings_t5.py", "--config", str(second)).returncode == 0
    lines = (logs / "esm.log").read_text().splitlines()
    runs = [re.match(r"^\S+ \S+ run (\S+) ", line) for line in lines]
    assert all(runs), [line for line, run in zip(lines, runs, strict=True) if not run]
    assert len({run.group(1) for run in runs}) == 2


KILLED_WHILE_SENDING = r"""
import os, signal, sys


class HalfThenKilled:
    # What a kill -9 of the main process while it hands a worker its order leaves the worker: half the bytes.
    def __init__(self, fd, *args, **kwargs):
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        os.write(self.fd, bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    from utils.running.local import start_worker_server, worker_context

    start_worker_server()
    import multiprocessing.popen_forkserver as forkserver_popen

    forkserver_popen.open = HalfThenKilled  # the pipe the order goes through
    worker_context().Process(target=print, args=("x" * 100_000,)).start()
"""


def test_kill_9_while_a_worker_reads_its_order_prints_no_traceback(tmp_path):
    script = tmp_path / "killed_main.py"
    script.write_text(KILLED_WHILE_SENDING)
    env = {**cli_env(), "PYTHONPATH": str(REPO)}
    # from another directory than the checkout, as a user may run it: the worker server still preloads
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == -9  # the main process did die mid-send
    assert "Traceback" not in result.stderr and "UnpicklingError" not in result.stderr, result.stderr


def test_dry_run_says_a_small_memory_limit_in_a_unit_that_fits(checkpoints, tmp_path):
    write_fasta(tmp_path / "train.fasta", SHORT)
    config = write_config(tmp_path, {"esm": {"name": checkpoints["esm2"]}}, test=None)
    command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config), "--dry-run"]
    env = {**cli_env(), "SLURM_MEM_PER_NODE": "150"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "0 GiB" not in result.stdout  # it said "would not fit 0 GiB" for 150 MiB
    assert "memory: 150 MiB (SLURM's --mem)" in result.stdout
    assert "will fail: protein " in result.stdout and "SLURM's --mem allows 150 MiB" in result.stdout
