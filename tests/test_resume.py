"""kill -9 of the main job, twice, then a rerun: the result equals an uninterrupted run's, and the rerun reuses
the finished chunks instead of recomputing them."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import REPO, cli_env, load_output, random_protein, run_cli, write_config, write_fasta

PROTEINS = 700


def _setup(directory: Path, checkpoint: Path) -> Path:
    rng = random.Random(11)
    write_fasta(
        directory / "train.fasta", [(f"P{i}", random_protein(rng, rng.randint(60, 400))) for i in range(PROTEINS)]
    )
    write_fasta(directory / "test.fasta", [(f"T{i}", random_protein(rng, rng.randint(60, 400))) for i in range(100)])
    return write_config(
        directory, {"prost_t5": {"name": checkpoint}}, run_params={"batch_size": 16, "save_every_n_batches": 1}
    )


def _chunks(directory: Path) -> int:
    return len(list((directory / "out" / ".chunks").glob("*/*.chk")))


def _kill_when(config: Path, directory: Path, chunks: int) -> None:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _chunks(directory) < chunks and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _workers_gone(directory: Path, timeout: float = 10) -> bool:
    """The worker dies with its parent (PR_SET_PDEATHSIG): no process may keep writing chunks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _chunks(directory)
        time.sleep(0.5)
        if _chunks(directory) == before:
            return True
    return False


def _recomputed(log: Path) -> tuple[int, int]:
    """(unique sequences, already in chunks) from the last run's log line."""
    found = re.findall(r"(\d+) unique sequences, (\d+) already in chunks", log.read_text())
    total, done = found[-1]
    return int(total), int(done)


def test_sigkill_twice_then_resume_equals_uninterrupted(checkpoints, tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    config_ref = _setup(reference_dir, checkpoints["prost_t5"])
    config_killed = _setup(killed_dir, checkpoints["prost_t5"])

    started = time.perf_counter()
    result = run_cli("generate_embeddings_t5.py", "--config", str(config_ref))
    full_seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    total_chunks = _chunks(reference_dir)

    _kill_when(config_killed, killed_dir, total_chunks // 3)
    assert _workers_gone(killed_dir)
    first = _chunks(killed_dir)
    assert not list((killed_dir / "out").glob("*.pt")), "a killed run must not leave final files"

    _kill_when(config_killed, killed_dir, (2 * total_chunks) // 3)
    assert _workers_gone(killed_dir)
    second = _chunks(killed_dir)
    assert first < second < total_chunks

    started = time.perf_counter()
    result = run_cli("generate_embeddings_t5.py", "--config", str(config_killed))
    rerun_seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr

    total, reused = _recomputed(killed_dir / "logs" / "prost_t5.log")
    assert reused >= total // 2, (reused, total)
    for split in ("train", "test"):
        a = load_output(reference_dir / "out" / f"{split}_embeddings_prost_t5.pt")
        b = load_output(killed_dir / "out" / f"{split}_embeddings_prost_t5.pt")
        assert a["ids"] == b["ids"]
        assert torch.equal(a["embeddings"], b["embeddings"])
    print(
        f"\nresume: {reused}/{total} sequences reused from {second}/{total_chunks} chunks; "
        f"uninterrupted run {full_seconds:.1f} s, rerun after two kills {rerun_seconds:.1f} s "
        f"({rerun_seconds / full_seconds:.0%})"
    )
