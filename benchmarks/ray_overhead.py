#!/usr/bin/env python
"""What the Ray engine costs over the local engine on the same proteins, on one machine.

    python benchmarks/ray_overhead.py --proteins 2000 [--json PATH]

One tiny ESM-2 checkpoint (tests/tiny_checkpoints.py: 2 layers, hidden size 32, so the model's own time is small and
the engines' overhead shows), N random proteins of 50-300 residues, the job run in this process four times into
fresh output directories: the local engine (one worker process), the Ray engine (one CPU actor) twice on a local
Ray started here (4 logical CPUs), then the local engine again (the faster local run is compared). Prints Ray's
start-up, each run's wall time, and the Ray engine's extra time per protein over the local engine (first Ray job:
actor start and model load included; second: the Ray runtime warm, a new actor still started). Both engines'
vectors are compared as well. Both engines run torch with one thread (OMP_NUM_THREADS=1, as Ray sets it for an
actor of one CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def write_job(directory: Path, checkpoint: Path, proteins: int, engine: str) -> Path:
    rng = random.Random(0)
    directory.mkdir(parents=True)
    with open(directory / "proteins.fasta", "w") as handle:
        for i in range(proteins):
            handle.write(f">p{i}\n{''.join(rng.choices(AMINO, k=rng.randint(50, 300)))}\n")
    config = {
        "paths": {
            "data_dir": str(directory),
            "splits": {"all": "proteins.fasta"},
            "output_dir": str(directory / "out"),
            "log_dir": str(directory / "logs"),
        },
        "run_params": {"engine": engine, "batch_size": 64, "save_every_n_batches": 4},
        "models": {"esm": {"name": str(checkpoint), "device": "cpu"}},
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory / "config.yaml"


def timed_job(config_path: Path) -> float:
    from utils.running.local import run_job
    from utils.running.plan import prepare

    config, splits, models = prepare(config_path)
    started = time.perf_counter()
    code = run_job(config, splits, models)
    if code != 0:
        raise SystemExit(f"{config_path}: the job failed with exit code {code}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # One intra-op thread on both sides: Ray gives an actor of num_cpus=1 OMP_NUM_THREADS=1, and the local worker
    # (a spawned process) inherits this; otherwise the comparison is of thread counts on a shared machine.
    os.environ["OMP_NUM_THREADS"] = "1"
    import ray
    import torch

    from tests.tiny_checkpoints import build_esm2
    from utils.running.ray_engine import UTILS_DIR

    n = args.proteins
    with tempfile.TemporaryDirectory(prefix="ray_overhead_") as tmp:
        root = Path(tmp)
        checkpoint = build_esm2(root / "esm2")
        local = timed_job(write_job(root / "local", checkpoint, n, "local"))
        started = time.perf_counter()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"py_modules": [str(UTILS_DIR)]})  # fmt: skip
        startup = time.perf_counter() - started
        cold = timed_job(write_job(root / "ray_cold", checkpoint, n, "ray"))
        warm = timed_job(write_job(root / "ray_warm", checkpoint, n, "ray"))
        ray.shutdown()
        local_again = timed_job(write_job(root / "local_again", checkpoint, n, "local"))
        local_first, local = local, min(local, local_again)  # the first run also warms the page cache
        a = torch.load(root / "local" / "out" / "all_embeddings_esm.pt", weights_only=True)
        b = torch.load(root / "ray_warm" / "out" / "all_embeddings_esm.pt", weights_only=True)
        same_ids = a["ids"] == b["ids"]
        cosine = float(torch.nn.functional.cosine_similarity(a["embeddings"].float(), b["embeddings"].float()).min())
    figures = {
        "proteins": n,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "ray_version": ray.__version__,
        "ray_startup_s": round(startup, 2),
        "local_s": round(local, 2),
        "local_runs_s": [round(local_first, 2), round(local_again, 2)],
        "ray_cold_s": round(cold, 2),
        "ray_warm_s": round(warm, 2),
        "ray_extra_ms_per_protein_cold": round(1000 * (cold - local) / n, 3),
        "ray_extra_ms_per_protein_warm": round(1000 * (warm - local) / n, 3),
        "same_ids": same_ids,
        "min_cosine_fp16_outputs": round(cosine, 6),
    }
    print(
        f"{n} proteins: Ray start-up {startup:.1f} s; job wall time local {local:.1f} s, Ray {cold:.1f} s (first job), "
        f"{warm:.1f} s (second job); Ray's extra time {figures['ray_extra_ms_per_protein_cold']:.2f} / "
        f"{figures['ray_extra_ms_per_protein_warm']:.2f} ms per protein; same ids {same_ids}, min cosine {cosine:.6f}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
