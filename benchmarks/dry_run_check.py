#!/usr/bin/env python
"""How close `--dry-run`'s projected time comes to a real run: a random-weight ESM2 in a real architecture (t6_8M by
default), CAFA-like proteins, the dry run's projection against the run's measured embedding time (from its
run_summary.json: model loaded → last chunk written) and wall time.

    python benchmarks/dry_run_check.py --arch esm2_t6_8M --proteins 150 --device cpu
    python benchmarks/dry_run_check.py --arch esm2_t33_650M --proteins 2000 --device cuda:0

Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARCHS = {  # facebook/esm2_* config.json: (hidden_size, intermediate_size, num_hidden_layers); 20 heads each
    "esm2_t6_8M": (320, 1280, 6),
    "esm2_t12_35M": (480, 1920, 12),
    "esm2_t30_150M": (640, 2560, 30),
    "esm2_t33_650M": (1280, 5120, 33),
}


def build_checkpoint(directory: Path, arch: str) -> Path:
    """A random ESM2 of the real size with the real tokenizer files (tests/tiny_checkpoints.py's builder)."""
    from tests.tiny_checkpoints import build_esm2

    hidden, ffn, layers = ARCHS[arch]
    sizes = {"hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": 20}
    return build_esm2(directory / arch, seed=0, sizes=sizes)


def proteins(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    amino = "ACDEFGHIKLMNPQRSTVWY"
    lengths = [min(2000, max(30, int(rng.lognormvariate(math.log(380), 0.75)))) for _ in range(count)]
    return [(f"P{i:05d}", "".join(rng.choice(amino) for _ in range(n))) for i, n in enumerate(lengths)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="esm2_t6_8M")
    parser.add_argument("--proteins", type=int, default=150)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        checkpoint = build_checkpoint(directory, args.arch)
        records = proteins(args.proteins, args.seed)
        (directory / "train.fasta").write_text("".join(f">{i}\n{s}\n" for i, s in records))
        config = {
            "paths": {"data_dir": str(directory), "raw_train_sequences": "train.fasta",
                      "output_dir": str(directory / "out"), "log_dir": str(directory / "logs")},
            "run_params": {"save_every_n_batches": 4},
            "models": {"esm2": {"name": str(checkpoint), "device": args.device}},
        }  # fmt: skip
        config_path = directory / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config_path)]
        dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, check=True)
        work = re.search(r"work: (.*)", dry.stdout).group(1)
        projected = re.search(r"projected wall time: (\d+(?:\.\d+)?) (s|min|h)", dry.stdout)
        seconds = float(projected.group(1)) * {"s": 1, "min": 60, "h": 3600}[projected.group(2)]
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        summary = json.loads((directory / "out" / "run_summary.json").read_text())
        (worker,) = summary["workers"]
        embedding = worker["residues_computed"] / worker["residues_per_second"]
        residues = sum(len(s) for _, s in records)
        print(f"arch {args.arch} on {args.device}: {args.proteins} proteins, {residues:,} residues (seed {args.seed})")
        print(f"dry run: {work}")
        print(f"projected (embedding only): {seconds:.1f} s")
        load = worker["load_seconds"]
        print(f"measured: embedding {embedding:.1f} s (model loaded → last chunk), load {load:.1f} s,", end=" ")
        print(f"wall {wall:.1f} s")
        print(f"measured / projected embedding time: {embedding / seconds:.2f}" if seconds else "projected 0 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
