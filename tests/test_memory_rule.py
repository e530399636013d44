"""Memory never changes what a protein's vector is, through the real CLI on tiny checkpoints: shards run under
different memory limits (SLURM's --mem) never merge into a mix of windowed and whole proteins (a shard whose memory
cannot hold a protein fails in one line, and the merge waits for it); a protein whose one pass does not fit fails its
model in one line naming it, the need, the limit and the fix, while the other model of the run is written."""

from __future__ import annotations

import random
import subprocess
import sys

from tests.conftest import REPO, cli_env, load_output, random_protein, write_config, write_fasta


def _cli(config, *args, env_extra=None):
    env = {**cli_env(), **(env_extra or {})}
    command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_shards_with_and_without_a_memory_limit_never_merge_into_a_mixed_file(checkpoints, tmp_path):
    # Under SLURM_MEM_PER_NODE=150 the old `max_residues: auto` fell to 16 and windowed every protein past 16 residues
    # (exit 0); the shard without the limit embedded them whole, and the merge wrote the mix with exit 0. 150 MiB does
    # not even hold the worker process (Python, torch): that shard fails in one line and the merge waits for it.
    rng = random.Random(24)
    train = [(f"P{i}", random_protein(rng, rng.randint(20, 300))) for i in range(16)]
    write_fasta(tmp_path / "train.fasta", train)
    config = write_config(tmp_path, {"esm2": {"name": checkpoints["esm2"]}}, test=None)
    limited = _cli(config, "--shard", "0/2", env_extra={"SLURM_MEM_PER_NODE": "150"})
    assert limited.returncode == 1, limited.stderr
    assert "Traceback" not in limited.stderr
    assert "does not fit in memory" in limited.stderr and "SLURM's --mem allows 150 MiB" in limited.stderr
    assert _cli(config, "--shard", "1/2").returncode == 0
    waiting = _cli(config, "--merge")
    assert waiting.returncode == 2, waiting.stderr  # refused, naming the proteins shard 0 has not embedded
    assert not (tmp_path / "out" / "train_embeddings_esm2.pt").exists()


def test_a_protein_that_does_not_fit_fails_its_model_in_one_line(checkpoints, tmp_path):
    # 440 MiB leaves ~18 MiB for the model once the process is counted: the tiny T5's one pass of 1,000 residues needs
    # more (its position-bias workspace), 300 fit, and so does ESM2's (no such workspace).
    rng = random.Random(7)
    long = random_protein(rng, 1000)
    write_fasta(tmp_path / "train.fasta", [("short", random_protein(rng, 300)), ("long", long)])
    models = {"t5": {"name": checkpoints["prot_t5"]}, "esm2": {"name": checkpoints["esm2"]}}
    config = write_config(tmp_path, models, test=None)
    result = _cli(config, env_extra={"SLURM_MEM_PER_NODE": "440"})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith(f"error: model t5: protein {long[:12]}… (1,000 residues) does not fit in memory: ")
    assert "SLURM's --mem allows 440 MiB" in errors[0] and "run_params.max_residues: " in errors[0]
    assert not (tmp_path / "out" / "train_embeddings_t5.pt").exists()
    esm2 = load_output(tmp_path / "out" / "train_embeddings_esm2.pt")  # the other model is whole and written
    assert esm2["meta"]["windowed"] == {}
