#!/usr/bin/env python
"""Peak memory and wall time of the main job against the number of proteins, on a zero-layer model.

    python benchmarks/memory_scaling.py --sizes 100000,1000000 --format parquet [--json PATH]

For each size: N short random proteins (20-60 residues, seeded, ~1 % duplicates) in one FASTA split, a tiny ESM-2
checkpoint with no transformer layer (embedding lookup and layer norm: what is left is the job's own bookkeeping),
the real CLI in a subprocess. Reports the peak RSS of the whole process tree (main process + worker, sampled every
50 ms) and of its largest process (ru_maxrss), wall time, and between consecutive sizes the peak bytes per extra
protein and the time ratio. The output matrix itself is N × 32 × 2 bytes here (hidden size 32).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def zero_layer_checkpoint(directory: Path) -> Path:
    from tests import tiny_checkpoints

    tiny_checkpoints._TINY_ESM = {**tiny_checkpoints._TINY_ESM, "num_hidden_layers": 0}
    return tiny_checkpoints.build_esm2(directory / "esm2_zero_layers")


def write_proteins(path: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as handle:
        previous = "MKV"
        for i in range(count):
            sequence = previous if rng.random() < 0.01 else "".join(rng.choices(AMINO, k=rng.randint(20, 60)))
            handle.write(f">prot_{i} some description\n{sequence}\n")
            previous = sequence


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
        todo += children.get(current, [])
    return total


def run_size(directory: Path, checkpoint: Path, count: int, output_format: str, batch_size: int) -> dict:
    work = directory / f"n{count}"
    work.mkdir()
    write_proteins(work / "proteins.fasta", count)
    config = {
        "paths": {
            "data_dir": str(work),
            "splits": {"proteome": "proteins.fasta"},
            "output_dir": str(work / "out"),
            "log_dir": str(work / "logs"),
        },
        "run_params": {
            "batch_size": batch_size,
            "save_every_n_batches": 100,
            "output_format": output_format,
            "max_tokens_per_batch": batch_size * 64,
        },
        "models": {"esm": {"name": str(checkpoint), "device": "cpu"}},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(work / "config.yaml")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.05)
    stderr = process.stderr.read() if process.stderr else ""
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"n={count}: the job failed ({process.returncode}):\n{stderr[-3000:]}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
    return {"proteins": count, "wall_s": round(wall, 2), "peak_tree_rss": peak, "peak_largest_process_rss": largest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated protein counts, ascending")
    parser.add_argument("--format", default="parquet", help="run_params.output_format")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="memory_scaling_") as tmp:
        checkpoint = zero_layer_checkpoint(Path(tmp))
        for count in sizes:
            results.append(run_size(Path(tmp), checkpoint, count, args.format, args.batch_size))
            r = results[-1]
            print(
                f"n={count:>9,}  wall {r['wall_s']:8.1f} s  peak RSS (tree) {r['peak_tree_rss'] / 2**20:8.1f} MiB  "
                f"largest process {r['peak_largest_process_rss'] / 2**20:8.1f} MiB",
                flush=True,
            )
    for small, large in zip(results[:-1], results[1:], strict=True):
        extra = large["proteins"] - small["proteins"]
        per = (large["peak_tree_rss"] - small["peak_tree_rss"]) / extra
        print(
            f"{small['proteins']:,} → {large['proteins']:,}: {per:.0f} bytes of peak RSS per extra protein; "
            f"wall time × {large['wall_s'] / small['wall_s']:.2f} for × {large['proteins'] / small['proteins']:.0f} "
            "proteins"
        )
    if args.json:
        args.json.write_text(json.dumps({"format": args.format, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
