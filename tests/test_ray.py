"""The Ray engine on a local Ray started once for this module (4 logical CPUs on a 2-core machine: two CPU actors and
room for Ray Data's read tasks). Drivers join it through RAY_ADDRESS, as on a cluster.

- the real CLI with engine: ray equals the local engine (ids in input order; fp32 chunks cosine ≥ 0.99999, max |Δ|
  ≤ 1e-4; the final float16 files within one float16 step), with a model on two CPU actors;
- an actor that exits once mid-run: every protein is stored exactly once, output as above;
- a driver killed with SIGKILL mid-run: the rerun sends only the sequences missing from the chunk store.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, cli_env, load_output, random_protein, run_cli, write_config, write_fasta
from utils.outputs.writers import parquet_path, pt_path, read_parquet

ray = pytest.importorskip("ray")

from utils.running.ray_engine import EmbedActor  # noqa: E402  (after the skip: the module needs Ray)


class ExitOnceActor(EmbedActor):
    """Exits its process on its second block, once per run (a marker file beside the chunks says it happened)."""

    def __init__(self, order):
        super().__init__(order)
        self.blocks = 0

    def __call__(self, block):
        self.blocks += 1
        if self.blocks == 2:
            marker = self.order.chunk_dir.parent / "actor_exited"
            marker.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
                os._exit(1)
            except FileExistsError:
                pass
        return super().__call__(block)


class SlowActor(EmbedActor):
    def __call__(self, block):
        time.sleep(0.4)
        return super().__call__(block)


@pytest.fixture(scope="module")
def ray_address():
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        # Actors of this module's own drivers import the test module's actor classes.
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _proteins() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(31)
    train = [(f"tr{i}", random_protein(rng, rng.randint(1, 150))) for i in range(40)]
    test = [(f"te{i}", random_protein(rng, rng.randint(1, 150))) for i in range(8)] + [("te_dup", train[0][1])]
    return train, test


def _job(directory: Path, checkpoints, engine: str) -> Path:
    train, test = _proteins()
    write_fasta(directory / "train.fasta", train)
    write_fasta(directory / "test.fasta", test)
    models = {
        "t5": {"name": checkpoints["prot_t5"], "device": ["cpu", "cpu"]},  # two actors
        "esm": {"name": checkpoints["esm2"], "layer": 1},  # an inner layer: the actors must cut where the workers do
    }
    run_params = {"engine": engine, "batch_size": 4, "save_every_n_batches": 2, "output_format": ["pt", "parquet"]}
    return write_config(directory, models, run_params=run_params)


def _chunk_vectors(out: Path, key: str) -> dict[str, torch.Tensor]:
    """digest → fp32 vector over every chunk file, insisting that no digest is stored twice."""
    vectors: dict[str, torch.Tensor] = {}
    for path in sorted((out / ".chunks" / key).glob("*.chk")):
        chunk = torch.load(path, weights_only=True)
        for digest, vector in zip(chunk["digests"], chunk["pooled"], strict=True):
            assert digest not in vectors, f"{digest} stored twice"
            vectors[digest] = vector
    return vectors


def assert_equals_local(local: Path, found: Path) -> None:
    for key in ("t5", "esm"):
        expected, got = _chunk_vectors(local, key), _chunk_vectors(found, key)
        assert got.keys() == expected.keys()
        a = torch.stack([expected[d] for d in expected])
        b = torch.stack([got[d] for d in expected])
        assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() >= 0.99999
        assert (a - b).abs().max() <= 1e-4
        for split in ("train", "test"):
            want, have = load_output(pt_path(local, split, key)), load_output(pt_path(found, split, key))
            assert have["ids"] == want["ids"]
            assert torch.allclose(have["embeddings"].float(), want["embeddings"].float(), rtol=2**-10, atol=1e-4)
            ids, vectors, _ = read_parquet(parquet_path(found, split, key))
            assert ids == want["ids"] and torch.equal(vectors, have["embeddings"])


@pytest.fixture(scope="module")
def local_run(checkpoints, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("local")
    result = run_cli("generate_embeddings_t5.py", "--config", str(_job(directory, checkpoints, "local")))
    assert result.returncode == 0, result.stderr
    return directory / "out"


def _ray_cli(config: Path, address: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args, "--config", str(config)],
        cwd=REPO, env=cli_env() | {"RAY_ADDRESS": address}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_ray_engine_through_the_cli_equals_local(checkpoints, local_run, ray_address, tmp_path):
    process = _ray_cli(_job(tmp_path, checkpoints, "ray"), ray_address, str(REPO / "generate_embeddings_t5.py"))
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert "ray: t5: 0 sequences already in chunks, computing 48" in stderr  # 49 proteins, one duplicate
    assert_equals_local(local_run, tmp_path / "out")


def test_actor_that_exits_mid_run_loses_and_duplicates_nothing(checkpoints, local_run, ray_address, tmp_path):
    from utils.running.local import run_job
    from utils.running.plan import prepare

    config, splits, models = prepare(_job(tmp_path, checkpoints, "ray"))
    assert run_job(config, splits, models, actor_class=ExitOnceActor) == 0
    assert (tmp_path / "out" / ".chunks" / "actor_exited").exists()  # the fault did happen
    assert_equals_local(local_run, tmp_path / "out")  # _chunk_vectors refuses a protein stored twice


DRIVER = f"""
import sys
import ray
# the actors import tests.test_ray
ray.init(runtime_env={{"env_vars": {{"PYTHONPATH": {str(REPO)!r}}}}}, log_to_driver=False)
from tests.test_ray import SlowActor
from pathlib import Path
from utils.running.local import run_job
from utils.running.plan import prepare
config, splits, models = prepare(Path(sys.argv[sys.argv.index("--config") + 1]))
sys.exit(run_job(config, splits, models, actor_class=SlowActor))
"""


def test_killed_driver_resumes_with_only_the_missing_sequences(checkpoints, local_run, ray_address, tmp_path):
    config = _job(tmp_path, checkpoints, "ray")
    chunks = tmp_path / "out" / ".chunks"
    driver = _ray_cli(config, ray_address, "-c", DRIVER)
    deadline = time.monotonic() + 300
    while not list(chunks.glob("t5/*.chk")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    kept = len(_chunk_vectors(tmp_path / "out", "t5"))
    assert 0 < kept < 48

    process = _ray_cli(config, ray_address, str(REPO / "generate_embeddings_t5.py"))
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert f"ray: t5: {kept} sequences already in chunks, computing {48 - kept}" in stderr
    assert_equals_local(local_run, tmp_path / "out")
