"""The Ray engine on a local Ray started once for this module (4 logical CPUs on a 2-core machine: two CPU actors and
room for Ray Data's read tasks). Drivers join it through RAY_ADDRESS, as on a cluster.

- the real CLI with engine: ray equals the local engine (ids in input order; fp32 chunks cosine ≥ 0.99999, max |Δ|
  ≤ 1e-4; the final float16 files within one float16 step), with a model on two CPU actors;
- an actor that exits once mid-run: every protein is stored exactly once, output as above;
- a driver killed with SIGKILL mid-run: the rerun sends only the sequences missing from the chunk store;
- faults: actors on every CPU run (more are refused in one line), no block for stall_timeout_s fails the model,
  SIGTERM and two Ctrl-Cs stop a driver that waits for a block (exit 130), the resume check reads digests only, an
  unreachable RAY_ADDRESS is one line, and a local Ray started by a driver goes with it after a kill -9.
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
            marker = self.order.store_dir / "actor_exited"
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


FAMILY = {"t5": "prot_t5", "esm": "esm2"}  # the config's keys → their partitions' names in the store


def _chunk_vectors(out: Path, key: str) -> dict[str, torch.Tensor]:
    """digest → fp32 vector over every chunk file, insisting that no digest is stored twice."""
    vectors: dict[str, torch.Tensor] = {}
    for path in sorted((out / ".chunks").glob(f"{FAMILY[key]}.*/*.chk")):
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
    assert "ray: t5: 0 sequences already in the store, computing 48" in stderr  # 49 proteins, one duplicate
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
    while not list(chunks.glob("prot_t5.*/*.chk")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    kept = len(_chunk_vectors(tmp_path / "out", "t5"))
    assert 0 < kept < 48

    process = _ray_cli(config, ray_address, str(REPO / "generate_embeddings_t5.py"))
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert f"ray: t5: {kept} sequences already in the store, computing {48 - kept}" in stderr
    assert_equals_local(local_run, tmp_path / "out")


# -- faults: a pool on every CPU, stalls, signals, unreachable clusters, leftovers of a killed driver ----------------
def _small_job(directory: Path, checkpoints, devices: list[str], **run_params) -> Path:
    directory.mkdir(exist_ok=True)
    rng = random.Random(5)
    write_fasta(directory / "train.fasta", [(f"p{i}", random_protein(rng, rng.randint(5, 40))) for i in range(12)])
    models = {"esm": {"name": checkpoints["esm2"], "device": devices}}
    run = {"engine": "ray", "batch_size": 2, "save_every_n_batches": 1, **run_params}
    return write_config(directory, models, test=None, run_params=run)


# Drivers that join the module's Ray through RAY_ADDRESS in connect() (ray.init replaces SIGTERM's handler there),
# with actors that load no model, defined in __main__ so that they travel by value: one that returns zero vectors at
# once (scheduling is what is tested), one that never returns a block.
DRIVER_WITHOUT_MODEL = """
import sys, time
from pathlib import Path
import numpy as np
import pyarrow as pa
from utils.running.local import run_job
from utils.running.plan import prepare
from utils.running.ray_engine import EmbedActor

class ZeroActor(EmbedActor):
    def __init__(self, order):
        self.order = order
    def __call__(self, block):
        rows, dim = block.num_rows, self.order.model.dim
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(rows * dim, np.float32)), dim)
        return pa.table({"digest": block.column("digest"), "embedding": vectors, "note": pa.nulls(rows, pa.string())})

class HangingActor(ZeroActor):
    def __call__(self, block):
        time.sleep(3600)

config, splits, models = prepare(Path(sys.argv[sys.argv.index("--config") + 1]))
actor = HangingActor if "--hang" in sys.argv else ZeroActor
sys.exit(run_job(config, splits, models, actor_class=actor))
"""


def _finish(process: subprocess.Popen, timeout: float) -> str:
    """Its stderr once it has ended; killed (and the test failed) when it has not ended in `timeout` s: a hang."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"still running after {timeout} s") from None


def test_actors_on_every_cpu_do_not_hang_and_too_many_are_refused(checkpoints, ray_address, tmp_path):
    # The module's Ray has 4 CPUs: four CPU actors hold all of them, and Ray Data had none left for its repartition.
    four = _ray_cli(_small_job(tmp_path / "four", checkpoints, ["cpu"] * 4), ray_address, "-c", DRIVER_WITHOUT_MODEL)
    stderr = _finish(four, 180)
    assert four.returncode == 0, stderr
    assert "computing 12" in stderr and "ray: esm: 12/12 sequences" in stderr
    # Five cannot all start: refused before anything runs, in one line.
    script = str(REPO / "generate_embeddings_t5.py")
    five = _ray_cli(_small_job(tmp_path / "five", checkpoints, ["cpu"] * 5), ray_address, script)
    stderr = _finish(five, 120)
    assert five.returncode == 2, stderr
    assert "models.esm: 5 Ray actor(s) need 5 CPU(s) but the Ray cluster has 4" in stderr
    assert "Traceback" not in stderr


def _hanging_driver(directory: Path, checkpoints, address: str, **run_params) -> tuple[subprocess.Popen, list[str]]:
    """A driver whose actor never returns a block, once it waits for one (its stderr lines so far)."""
    config = _small_job(directory, checkpoints, ["cpu"], **run_params)
    driver = _ray_cli(config, address, "-c", DRIVER_WITHOUT_MODEL, "--hang")
    lines = []
    for line in driver.stderr:
        lines.append(line)
        if "computing 12" in line:
            return driver, lines
    raise AssertionError("".join(lines))


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]], ids=["sigterm", "two-ctrl-c"])
def test_signals_stop_a_ray_run_that_waits_for_a_block(checkpoints, ray_address, tmp_path, signals):
    # SIGTERM (scancel) once: the block in flight gets stop_grace_s; a second Ctrl-C does not wait at all.
    grace = 1 if len(signals) == 1 else 600
    driver, _ = _hanging_driver(tmp_path, checkpoints, ray_address, stop_grace_s=grace)
    time.sleep(1)
    for sig in signals:
        driver.send_signal(sig)
        time.sleep(0.5)
    stderr = _finish(driver, 60)
    assert driver.returncode == 130, stderr
    assert "interrupted: finished chunks are kept; rerun the same command to resume" in stderr
    assert "Traceback" not in stderr and "SIGABRT" not in stderr


def test_no_block_for_stall_timeout_fails_the_model(checkpoints, ray_address, tmp_path):
    driver, _ = _hanging_driver(tmp_path, checkpoints, ray_address, stall_timeout_s=2)
    stderr = _finish(driver, 60)
    assert driver.returncode == 1, stderr
    assert "error: model esm on Ray: no block came back for 2 s (run_params.stall_timeout_s)" in stderr
    # actors log to Ray's session logs: no worker log to point at (it named logs/esm*.log, which did not exist)
    assert not (tmp_path / "logs").exists()
    assert "error: model esm failed; the error is above; the actors' own output is in Ray's session logs" in stderr


CONNECT = """
import os, sys
import ray
from utils.errors import UserError
from utils.running.ray_engine import connect

def no_cluster(*args, **kwargs):  # Ray's own words when RAY_ADDRESS=auto finds no Ray on this machine
    raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by setting "
                          "`--address` flag or `RAY_ADDRESS` environment variable.")

if sys.argv[1] == "auto":  # "auto" finds any Ray running here, such as this module's: Ray's answer is injected
    ray.init = no_cluster
os.environ["RAY_ADDRESS"] = sys.argv[1]
try:
    connect()
except UserError as exc:
    print("\\n".join(exc.lines()))
"""


@pytest.mark.parametrize("address", ["127.0.0.1:1", "auto"])
def test_no_cluster_at_ray_address_is_one_line(address):
    result = subprocess.run(
        [sys.executable, "-c", CONNECT, address], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert result.stdout.count("\n") == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"RAY_ADDRESS={address}: no ") and "unset RAY_ADDRESS" in result.stdout
    assert "Traceback" not in result.stderr


LOCAL_RAY = """
from ray._private import worker
from utils.running.ray_engine import connect
connect()
print(worker._global_node.all_processes["raylet"][0].process.pid, flush=True)
import time
time.sleep(600)
"""


def _children(parent: int) -> dict[int, bytes]:
    """pid → start time of each process whose parent is `parent` (a raylet's: its agents and workers)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found[int(pid)] = fields[19]
    return found


def _alive(processes: dict[int, bytes]) -> list[int]:
    alive = []
    for pid, start in processes.items():
        try:
            if Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19] == start:
                alive.append(pid)
        except OSError:
            continue
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_ray_goes_with_a_killed_driver():
    env = {k: v for k, v in cli_env().items() if k != "RAY_ADDRESS"}  # the driver starts a Ray of its own
    driver = subprocess.Popen(
        [sys.executable, "-c", LOCAL_RAY], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    raylet = int(driver.stdout.readline())
    started = _children(raylet)  # the agents (and idle workers) Ray started for this driver
    assert started
    driver.kill()
    driver.wait(timeout=30)
    deadline = time.monotonic() + 15  # Ray's own agents waited about a minute
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(started)
