"""Faults around the outputs, through the real command: a failing or refused rerun leaves the earlier outputs
byte-identical, a second run on the same output directory is refused naming the first one's pid, a changed FASTA or
precision never mixes in stale chunks, and SIGTERM keeps finished chunks and resumes to the uninterrupted result.

Faults inside the workers are injected with a `sitecustomize` module on PYTHONPATH (imported by every Python
process, the spawned workers included) that wraps `Encoder.embed`: it can fail after some batches, or slow each batch
down so that a signal reliably lands mid-run. The product code has no test hooks."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import generate_embeddings_t5
from tests.conftest import (
    REPO,
    Reference,
    chunk_files,
    cli_env,
    cosine,
    load_output,
    patching_sitecustomize,
    random_protein,
    run_cli,
    write_config,
    write_fasta,
)
from utils.files import OutputLock

FAULT_HOOK = patching_sitecustomize(
    """
import os, time
FAIL_AFTER = os.environ.get("TEST_EMBED_FAIL_AFTER")
SLOW = os.environ.get("TEST_EMBED_SLOW_S")

def patch(module):
    original, calls = module.Encoder.embed, [0]

    def embed(self, *args, **kwargs):
        calls[0] += 1
        if FAIL_AFTER and calls[0] > int(FAIL_AFTER):
            raise RuntimeError("injected fault in batch %d" % calls[0])
        if SLOW:
            time.sleep(float(SLOW))
        return original(self, *args, **kwargs)

    module.Encoder.embed = embed

PATCHES = {"utils.engine.encode": patch} if FAIL_AFTER or SLOW else {}
"""
)
KEY = "prot_t5_xl"
RUN_PARAMS = {"batch_size": 2, "save_every_n_batches": 1}  # one chunk per batch: many chunks, quickly
RNG = random.Random(13)
F1 = [(f"p{i}", random_protein(RNG, RNG.randint(8, 80))) for i in range(40)]
CHANGED = {"p3": "W" + F1[3][1][1:], "p17": F1[17][1] + "K"}
F2 = [(rec_id, CHANGED.get(rec_id, seq)) for rec_id, seq in F1[:-1]] + [
    (f"new{i}", random_protein(RNG, 30 + i)) for i in range(3)
]
TEST = [("t0", F1[0][1]), ("t1", random_protein(RNG, 50))]  # t0 repeats p0: one sequence, embedded once
U1 = {seq for _, seq in F1 + TEST}  # the distinct sequences of each run
U2 = {seq for _, seq in F2 + TEST}


@pytest.fixture(scope="module")
def hook_env(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("fault_hook")
    (directory / "sitecustomize.py").write_text(FAULT_HOOK)
    return {"PYTHONPATH": str(directory)}


@pytest.fixture(scope="module")
def reference(checkpoints) -> Reference:
    return Reference(checkpoints["prot_t5"], "prot_t5")


def _finals(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*_embeddings_*"))}


def _everything(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _configure(directory: Path, checkpoint: Path, train: list, **run_params) -> Path:
    write_fasta(directory / "train.fasta", train, width=25)
    write_fasta(directory / "test.fasta", TEST)
    return write_config(directory, {KEY: {"name": checkpoint}}, run_params={**RUN_PARAMS, **run_params})


def _cli(config: Path, **env: str) -> subprocess.CompletedProcess:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return run_cli("generate_embeddings_t5.py", "--config", str(config))


def _log_counts(log: str) -> list[tuple[int, int]]:
    """(unique sequences, already in chunks) for every worker start in a log."""
    return [(int(a), int(b)) for a, b in re.findall(r"(\d+) unique sequences, (\d+) already in chunks", log)]


# -- one output directory through a sequence of reruns ----------------------------------------------------------------
@pytest.fixture(scope="module")
def first_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("faults")
    config = _configure(directory, checkpoints["prot_t5"], F1)
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return directory, config, _finals(directory / "out")


def test_first_run_leaves_only_final_files_and_chunks(first_run):
    directory, _, finals = first_run
    assert sorted(finals) == [f"test_embeddings_{KEY}.pt", f"train_embeddings_{KEY}.pt"]
    top = sorted(p.name for p in (directory / "out").iterdir())
    assert top == [".chunks", ".lock", *sorted(finals)]  # no temporary or partial file left behind
    assert not [p for p in (directory / "out").rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def refused_reruns(first_run, checkpoints, hook_env):
    """A bad FASTA (in-process), a held lock and a model failing mid-run, each on top of the first run."""
    directory, config, finals = first_run
    out = directory / "out"
    results = {}

    before = _everything(out)
    (directory / "train.fasta").write_text(">p0\nMKV\n>p1\nMK?V\n")
    results["bad_fasta"] = generate_embeddings_t5.main(["--config", str(config)])
    results["bad_fasta_untouched"] = _everything(out) == before

    _configure(directory, checkpoints["prot_t5"], F2)
    with OutputLock(out):
        results["lock"] = run_cli("generate_embeddings_t5.py", "--config", str(config))

    results["fault"] = _cli(config, TEST_EMBED_FAIL_AFTER="2", **hook_env)
    results["fault_log"] = (directory / "logs" / f"{KEY}.log").read_text()
    return directory, config, finals, results


def test_refused_rerun_with_bad_fasta_leaves_everything_byte_identical(refused_reruns):
    *_, results = refused_reruns
    assert results["bad_fasta"] == 2
    assert results["bad_fasta_untouched"]


def test_second_run_on_same_output_dir_is_refused_naming_the_pid(refused_reruns):
    directory, _, finals, results = refused_reruns
    lock = results["lock"]
    assert lock.returncode == 2, lock.stderr
    assert f"another run (pid {os.getpid()}) is writing to this output directory" in lock.stderr
    assert str(directory / "out") in lock.stderr and "Traceback" not in lock.stderr


def test_model_failing_mid_run_leaves_earlier_outputs_byte_identical(refused_reruns):
    directory, _, finals, results = refused_reruns
    fault = results["fault"]
    assert fault.returncode == 1, fault.stderr
    assert "injected fault in batch 3" in results["fault_log"]  # it failed mid-run, after two batches
    assert f"error: model {KEY} failed" in fault.stderr
    assert _finals(directory / "out") == finals
    assert _log_counts(results["fault_log"])[-1] == (len(U2), len(U2 & U1))  # the changed FASTA: 5 new sequences


@pytest.fixture(scope="module")
def fasta_rerun(refused_reruns):
    """The changed FASTA again, without a fault: (directory, config, the first run's files, this run's train file)."""
    directory, config, finals, _ = refused_reruns
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    counts = _log_counts((directory / "logs" / f"{KEY}.log").read_text())[-1]
    return directory, config, finals, load_output(directory / "out" / f"train_embeddings_{KEY}.pt"), counts


def test_changed_fasta_recomputes_only_what_changed(fasta_rerun, reference):
    *_, new, (unique, reused) = fasta_rerun
    assert unique == len(U2) and len(U2 & U1) + 2 <= reused < len(U2)  # the first run's, and the failed run's two
    assert new["ids"] == [rec_id for rec_id, _ in F2]
    for row, (rec_id, sequence) in zip(new["embeddings"], F2, strict=True):
        assert cosine(row, reference(sequence)) >= 0.9999, rec_id  # a stale row for a changed sequence would not be


def test_changed_sequences_do_not_get_their_old_rows(fasta_rerun, tmp_path):
    _, _, finals, new, _ = fasta_rerun
    (tmp_path / "old.pt").write_bytes(finals[f"train_embeddings_{KEY}.pt"])
    old = load_output(tmp_path / "old.pt")
    for rec_id in CHANGED:
        assert not torch.equal(old["embeddings"][old["ids"].index(rec_id)], new["embeddings"][new["ids"].index(rec_id)])
    for i, (rec_id, _) in enumerate(F1[:-1]):
        if rec_id not in CHANGED:  # reused, or recomputed in another batch: the same up to float noise
            assert cosine(old["embeddings"][i], new["embeddings"][i]) >= 0.99999, rec_id


def test_changed_precision_gets_its_own_partition_and_recomputes(fasta_rerun, reference):
    directory, config, _, fp32, _ = fasta_rerun
    before = {p: p.stat().st_mtime_ns for p in (directory / "out" / ".chunks").glob("*/*") if p.is_file()}
    settings = yaml.safe_load(config.read_text())
    settings["run_params"]["precision"] = "bf16"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert (
        f"note: {KEY}: the store holds this checkpoint's vectors only under other settings "
        "(precisions: ['fp32'] → ['bf16']); computing them for these settings" in result.stderr
    ), result.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the fp32 partition as it was: nothing moved
    bf16 = load_output(directory / "out" / f"train_embeddings_{KEY}.pt")
    assert bf16["meta"]["precision"] == ["bf16"] and bf16["ids"] == fp32["ids"]
    assert _log_counts((directory / "logs" / f"{KEY}.log").read_text())[-1] == (len(U2), 0)
    for row, old_row, (rec_id, sequence) in zip(bf16["embeddings"], fp32["embeddings"], F2, strict=True):
        assert not torch.equal(row, old_row), rec_id  # recomputed in bf16, not an fp32 row mixed in
        assert cosine(row, reference(sequence)) >= 0.999, rec_id


# -- SIGTERM, then the same command again ------------------------------------------------------------------------------
def test_sigterm_keeps_chunks_and_resume_equals_uninterrupted_run(first_run, checkpoints, tmp_path, hook_env):
    uninterrupted = first_run[2]  # the first run: same FASTA and settings, never interrupted
    config = _configure(tmp_path, checkpoints["prot_t5"], F1)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)],
        cwd=REPO, env={**cli_env(), **hook_env, "TEST_EMBED_SLOW_S": "0.1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not chunk_files(tmp_path / "out") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    assert not list((tmp_path / "out").glob("*_embeddings_*"))  # no final file from an interrupted run
    kept = {d for path in chunk_files(tmp_path / "out") for d in torch.load(path, weights_only=True)["digests"]}
    assert 1 <= len(kept) < len(U1) - 2  # stopped early: most batches were never started

    resumed = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr
    unique, reused = _log_counts((tmp_path / "logs" / f"{KEY}.log").read_text())[-1]
    assert (unique, reused) == (len(U1), len(kept))  # the kept chunks are not recomputed
    assert _finals(tmp_path / "out").keys() == uninterrupted.keys()
    for name, data in uninterrupted.items():
        (tmp_path / f"expected_{name}").write_bytes(data)
        expected = load_output(tmp_path / f"expected_{name}")
        got = load_output(tmp_path / "out" / name)
        assert got["ids"] == expected["ids"]
        assert torch.equal(got["embeddings"], expected["embeddings"]), name


def _children(pid: int) -> list[str]:
    children = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                children += (task / "children").read_text().split()
            except OSError:
                pass
    except OSError:
        pass
    return children


def _worker_started(pid: int) -> bool:
    """A worker is forked from the job's worker server (a child of `pid` running multiprocessing's forkserver);
    multiprocessing's resource tracker is another child, and not a worker."""
    for child in _children(pid):
        try:
            if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes() and _children(int(child)):
                return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to see the worker start")
def test_sigterm_while_worker_starts_is_an_interruption_not_a_failure(checkpoints, tmp_path):
    config = _configure(tmp_path, checkpoints["prot_t5"], F1[:4])
    process = subprocess.Popen(
        [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not _worker_started(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)  # the worker is still importing: it has no handler of its own yet
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr and "failed" not in stderr and "Traceback" not in stderr
    assert not list((tmp_path / "out").glob("*_embeddings_*"))
