#!/usr/bin/env python
"""The host path alone: how many proteins per second the whole job moves when the model does almost nothing.

    python benchmarks/host_overhead.py                      # all five families, 2,000 and 20,000 proteins
    python benchmarks/host_overhead.py --families prot_t5,esm2 --small 2000 --large 20000 --json out.json

Each family's tiny checkpoint from tests/tiny_checkpoints.py with its layer count set to zero (token embeddings and
the final norm only, real tokenizer files), so the device's share is negligible and what is left is the host: FASTA
parsing, de-duplication, tokenization, batching, pooling, device copies, chunk writes and the merge into the final
file. The real CLI runs as a subprocess, twice per family (--small and --large random proteins of 50-400 residues,
mean ~225, no duplicates); the marginal rate (large - small) / (t_large - t_small) cancels the start-up (imports,
worker start, model load), which is reported on its own. Peak RSS is that of all the job's processes together
(benchmarks/process_tree.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.process_tree import run_measured  # noqa: E402
from tests import tiny_checkpoints  # noqa: E402

AMINO = "ACDEFGHIKLMNPQRSTVWY"
LAYER_KEY = {"prot_t5": "num_layers", "prost_t5": "num_layers"}  # the ESM families: num_hidden_layers
BUILDERS = {
    "prot_t5": tiny_checkpoints.build_prot_t5,
    "prost_t5": tiny_checkpoints.build_prost_t5,
    "esm2": tiny_checkpoints.build_esm2,
    "esm1b": tiny_checkpoints.build_esm1b,
    "esmc": tiny_checkpoints.build_esmc,
}


def zero_layer_checkpoint(family: str, directory: Path) -> Path:
    """The family's tiny checkpoint (real tokenizer files and layout), rebuilt with no transformer layers."""
    import transformers

    path = BUILDERS[family](directory / family)
    config = transformers.AutoConfig.from_pretrained(path)
    setattr(config, LAYER_KEY.get(family, "num_hidden_layers"), 0)
    model = getattr(transformers, config.architectures[0])(config)
    model.save_pretrained(path, safe_serialization=True)
    return path


def write_fasta(path: Path, count: int, seed: int) -> int:
    rng = random.Random(seed)
    residues = 0
    with open(path, "w") as handle:
        for i in range(count):
            length = rng.randint(50, 400)
            residues += length
            handle.write(f">P{i:07d}\n{''.join(rng.choices(AMINO, k=length))}\n")
    return residues


def run_job(workdir: Path, checkpoint: Path, count: int, seed: int, save_every: int) -> dict:
    run_dir = workdir / f"run-{checkpoint.name}-{count}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    residues = write_fasta(run_dir / "train.fasta", count, seed)
    config = {
        "paths": {
            "data_dir": str(run_dir), "raw_train_sequences": "train.fasta",
            "output_dir": str(run_dir / "out"), "log_dir": str(run_dir / "logs"),
        },
        "run_params": {"batch_size": 32, "save_every_n_batches": save_every},
        "models": {"m": {"name": str(checkpoint), "device": "cpu", "output_key": "m"}},
    }  # fmt: skip
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(run_dir / "config.yaml")]
    try:
        measured = run_measured(command, cwd=REPO, env=env)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"job failed on {count} proteins:\n{exc.stderr.decode()[-3000:]}") from None
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"proteins": count, "residues": residues, **measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(BUILDERS), help="comma-separated (default: all five)")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=5, help="save_every_n_batches (5: the seed's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="host-overhead-"))
    report: dict = {
        "cpus": os.cpu_count(), "small": args.small, "large": args.large, "save_every_n_batches": args.save_every,
        "families": {},
    }  # fmt: skip
    print(f"{'family':<10} {'proteins/s':>11} {'residues/s':>11} {'start-up s':>11} {'peak RSS GiB':>13}", flush=True)
    try:
        for family in args.families.split(","):
            checkpoint = zero_layer_checkpoint(family, workdir / "checkpoints")
            small = run_job(workdir, checkpoint, args.small, args.seed, args.save_every)
            large = run_job(workdir, checkpoint, args.large, args.seed + 1, args.save_every)
            # Too few proteins (a dry run) or a noisy machine can make the larger run no slower: no rate then (NaN)
            extra = large["seconds"] - small["seconds"]
            rate = (large["proteins"] - small["proteins"]) / extra if extra > 0 else math.nan
            residue_rate = (large["residues"] - small["residues"]) / extra if extra > 0 else math.nan
            startup = small["seconds"] - small["proteins"] / rate
            report["families"][family] = {
                "marginal_proteins_per_s": rate, "marginal_residues_per_s": residue_rate,
                "startup_seconds": startup, "runs": [small, large],
            }  # fmt: skip
            peak = max(small["peak_rss_bytes"], large["peak_rss_bytes"]) / 2**30
            print(f"{family:<10} {rate:>11,.0f} {residue_rate:>11,.0f} {startup:>11.1f} {peak:>13.2f}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
