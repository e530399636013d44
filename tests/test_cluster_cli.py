"""Array shards through the real CLI: examples/slurm_array.sh, run by a stand-in `sbatch` that starts the array's
three tasks at once on one output directory and then the merge, gives the same files as one local run; a merge
before every shard finished refuses with a count and examples and writes nothing. (That a resubmitted task finds its
work done follows from the digest rule, tested in test_shards.py, and the chunk store's resume.)"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    REPO,
    chunk_files,
    cli_env,
    load_output,
    patching_sitecustomize,
    random_protein,
    run_cli,
    write_config,
    write_fasta,
)
from utils.outputs.writers import parquet_path, pt_path, read_parquet

# A stand-in for SLURM's sbatch: the array's tasks run at once (as they would on three nodes), the dependent job
# after them; each prints what SLURM would, and a failed task fails the stand-in like afterok would hold the merge.
# A job asking for a GPU (--gres=gpu…) runs on a "GPU node": with FAKE_GPU_NODE_HOOK set, that directory's
# sitecustomize.py (GPU_NODE_HOOK) goes on its PYTHONPATH; the merge job asks for none and runs on a plain CPU node.
FAKE_SBATCH = r"""#!/usr/bin/env python3
import os, re, subprocess, sys
args = sys.argv[1:]
wrap = next(a.split("=", 1)[1] for a in args if a.startswith("--wrap="))
array = next((a.split("=", 1)[1] for a in args if a.startswith("--array=")), None)
env = dict(os.environ)
if any(a.startswith("--gres=gpu") for a in args) and os.environ.get("FAKE_GPU_NODE_HOOK"):
    env["PYTHONPATH"] = os.environ["FAKE_GPU_NODE_HOOK"]
if array:
    first, last = map(int, re.fullmatch(r"(\d+)-(\d+)", array).groups())
    tasks = [subprocess.Popen(["bash", "-c", wrap], env={**env, "SLURM_ARRAY_TASK_ID": str(i)})
             for i in range(first, last + 1)]
    if any(task.wait() for task in tasks):
        sys.exit("an array task failed")
else:
    subprocess.run(["bash", "-c", wrap], env=env, check=True)
print(4242)
"""
# What a GPU node gives a task, on a test machine without a GPU: the config's cuda:0 passes the device check, and the
# work orders planned for it (precision resolved for cuda:0: fp16 for `auto`) run on the CPU in that precision.
GPU_NODE_HOOK = patching_sitecustomize(
    """
import dataclasses


def patch_preflight(module):
    module.check_devices = lambda config: []


def patch_plan(module):
    plan = module.plan_jobs

    def plan_jobs(*args, **kwargs):
        jobs = plan(*args, **kwargs)
        for job in jobs:
            job.orders = [dataclasses.replace(order, device="cpu") for order in job.orders]
        return jobs

    module.plan_jobs = plan_jobs


PATCHES = {"utils.checks.preflight": patch_preflight, "utils.running.plan": patch_plan}
"""
)


def slurm_env(tmp_path: Path) -> dict[str, str]:
    """The stand-in sbatch first on PATH, and this interpreter's `python` (the script calls `python`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(FAKE_SBATCH)
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    hook = tmp_path / "gpu_node"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(GPU_NODE_HOOK)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    return cli_env() | {"PATH": path, "FAKE_GPU_NODE_HOOK": str(hook)}


def _proteins() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(12)
    train = [(f"tr{i}", random_protein(rng, rng.randint(1, 120))) for i in range(24)]
    test = [(f"te{i}", random_protein(rng, rng.randint(1, 120))) for i in range(6)]
    test.append(("te_dup", train[3][1]))  # a sequence in both splits: one shard embeds it, both splits get it
    return train, test


def _job_dir(directory: Path, checkpoints) -> Path:
    train, test = _proteins()
    write_fasta(directory / "train.fasta", train)
    write_fasta(directory / "test.fasta", test)
    models = {"t5": {"name": checkpoints["prot_t5"]}, "esm": {"name": checkpoints["esm2"]}}
    return write_config(directory, models, run_params={"output_format": ["pt", "parquet"], "concatenate": True})


def assert_same_embeddings(expected_dir: Path, found_dir: Path) -> None:
    """Same ids in the same order; vectors equal up to float noise of other batch compositions (fp16 outputs)."""
    for split in ("train", "test"):
        for key in ("t5", "esm", "concat"):
            expected = load_output(pt_path(expected_dir, split, key))
            found = load_output(pt_path(found_dir, split, key))
            assert found["ids"] == expected["ids"]
            a, b = expected["embeddings"].float(), found["embeddings"].float()
            assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() >= 0.99999
            assert torch.allclose(a, b, rtol=2**-10, atol=1e-4)  # within one float16 step
            ids, vectors, _ = read_parquet(parquet_path(found_dir, split, key))
            assert ids == found["ids"] and torch.equal(vectors, found["embeddings"])


@pytest.fixture(scope="module")
def local_run(checkpoints, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("local")
    result = run_cli("generate_embeddings_t5.py", "--config", str(_job_dir(directory, checkpoints)))
    assert result.returncode == 0, result.stderr
    return directory / "out"


def test_slurm_array_script_equals_one_local_run(checkpoints, local_run, tmp_path):
    config = _job_dir(tmp_path, checkpoints)
    result = subprocess.run(
        ["bash", str(REPO / "examples" / "slurm_array.sh"), str(config), "3"],
        env=slurm_env(tmp_path) | {"FAKE_GPU_NODE_HOOK": ""}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted array 4242 (3 shards)" in result.stdout
    assert_same_embeddings(local_run, tmp_path / "out")


def test_slurm_array_for_a_gpu_config_merges_on_a_node_without_gpu(checkpoints, local_run, tmp_path):
    """config_t5.yaml's `device: 0` and `precision: auto`: the shards (on "GPU nodes") make fp16 chunks; the merge,
    on a node without a GPU, must neither refuse cuda:0 nor resolve `auto` to fp32 and miss every chunk."""
    train, test = _proteins()
    write_fasta(tmp_path / "train.fasta", train)
    write_fasta(tmp_path / "test.fasta", test)
    config = write_config(tmp_path, {"esm": {"name": checkpoints["esm2"], "device": 0}})
    result = subprocess.run(
        ["bash", str(REPO / "examples" / "slurm_array.sh"), str(config), "2"],
        env=slurm_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for split in ("train", "test"):
        found = load_output(pt_path(tmp_path / "out", split, "esm"))
        expected = load_output(pt_path(local_run, split, "esm"))  # fp32 on CPU
        assert found["meta"]["precision"] == ["fp16"] and found["meta"]["devices"] == ["cuda:0"]
        assert found["ids"] == expected["ids"]
        similarity = torch.nn.functional.cosine_similarity(found["embeddings"].float(), expected["embeddings"].float())
        assert similarity.min() >= 0.999  # fp16 against fp32


def test_merge_before_every_shard_finished_refuses_and_writes_nothing(checkpoints, tmp_path):
    config = str(_job_dir(tmp_path, checkpoints))
    result = run_cli("generate_embeddings_t5.py", "--config", config, "--shard", "1/3")
    assert result.returncode == 0, result.stderr
    assert "run the same command with --merge" in result.stderr  # says what comes next
    assert chunk_files(tmp_path / "out")  # shards write chunks only
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == []

    refused = run_cli("generate_embeddings_t5.py", "--config", config, "--merge")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 2 and all("protein(s) have no embedding yet (e.g. '" in line for line in lines), lines
    assert lines[0].startswith("error: model t5: ") and "--shard I/N" in lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == []


def test_bad_shard_arguments_are_refused(tmp_path):
    result = run_cli("generate_embeddings_t5.py", "--config", str(tmp_path / "none.yaml"), "--shard", "3/3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --shard 3/3: the shard index must be 0 to 2 for 3 shard(s); "
        "with SLURM use --array=0-(N-1) and --shard $SLURM_ARRAY_TASK_ID/N"
    ]
    both = run_cli("generate_embeddings_t5.py", "--config", "x.yaml", "--shard", "0/2", "--merge")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr and "Traceback" not in both.stderr
