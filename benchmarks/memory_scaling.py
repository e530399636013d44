#!/usr/bin/env python
"""Peak memory and wall time of the job against the number of proteins, on a zero-layer model: a whole run, one
array shard, and the merge after every shard.

    python benchmarks/memory_scaling.py --sizes 100000,1000000 --modes whole,shard,merge [--json PATH]

For each size: N random proteins (30-200 residues by default, seeded, ~1 % duplicates) in one FASTA split, a tiny
ESM-2 checkpoint with no transformer layer (embedding lookup and layer norm: what is left is the job's own
bookkeeping), the real CLI in a subprocess, Parquet output. Modes: `whole` (one run of the whole job), `shard` (the
first of `--shards` array tasks, `--shard 0/N`), `merge` (`--merge` once all N shards have run; the shards
themselves are not measured). Reports the peak RSS of the whole process tree (main process, worker server and
workers, sampled every 50 ms) and of its largest process (ru_maxrss), wall time; between consecutive sizes, the peak
bytes per extra protein and the time ratio; and, from the largest two sizes, a projection to UniRef50 (`--project`,
60 M proteins) of each mode's peak. The output matrix itself is N × 32 × 2 bytes here (hidden size 32).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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


def write_proteins(path: Path, count: int, lengths: tuple[int, int], seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as handle:
        previous = "MKV"
        for i in range(count):
            sequence = previous if rng.random() < 0.01 else "".join(rng.choices(AMINO, k=rng.randint(*lengths)))
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


def job_config(work: Path, checkpoint: Path, output_format: str, batch_size: int) -> Path:
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
            "max_tokens_per_batch": batch_size * 256,
        },
        "models": {"esm": {"name": str(checkpoint), "device": "cpu"}},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return work / "config.yaml"


def measure(config: Path, *flags: str) -> dict:
    """The CLI with `flags`, its process tree's peak RSS sampled every 50 ms, and its wall time."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    started = time.perf_counter()
    log = config.parent / "stderr.log"  # a file, not a pipe: a pipe nobody reads until the end fills and blocks
    with open(log, "w") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config), *flags],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file,
        )  # fmt: skip
        peak = 0
        while True:
            # wait4, not poll: its usage is this run's own (ru_maxrss: the largest process of its tree), where
            # RUSAGE_CHILDREN's is the largest of every run so far
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            peak = max(peak, tree_rss(process.pid))
            time.sleep(0.05)
    stderr = log.read_text()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(flags) or 'whole run'} failed ({process.returncode}):\n{stderr[-3000:]}")
    largest = usage.ru_maxrss * 1024
    return {"wall_s": round(wall, 2), "peak_tree_rss": peak, "peak_largest_process_rss": largest}


def run_size(directory: Path, checkpoint: Path, count: int, mode: str, args: argparse.Namespace) -> dict:
    work = directory / f"{mode}_n{count}"
    work.mkdir()
    write_proteins(work / "proteins.fasta", count, args.lengths)
    config = job_config(work, checkpoint, args.format, args.batch_size)
    if mode == "whole":
        figures = measure(config)
    elif mode == "shard":
        figures = measure(config, "--shard", f"0/{args.shards}")
    else:
        for index in range(args.shards):
            measure(config, "--shard", f"{index}/{args.shards}")
        figures = measure(config, "--merge")
    shutil.rmtree(work)
    return {"mode": mode, "proteins": count, **figures}


def project(small: dict, large: dict, proteins: int) -> float:
    """Peak tree RSS at `proteins`, on the line through the two measured sizes."""
    slope = (large["peak_tree_rss"] - small["peak_tree_rss"]) / (large["proteins"] - small["proteins"])
    return large["peak_tree_rss"] + slope * (proteins - large["proteins"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated protein counts, ascending")
    parser.add_argument("--modes", default="whole,shard,merge", help="comma-separated: whole, shard, merge")
    parser.add_argument("--shards", type=int, default=8, help="array tasks for the shard and merge modes")
    parser.add_argument("--lengths", default="30,200", help="min,max residues of the random proteins")
    parser.add_argument("--format", default="parquet", help="run_params.output_format")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--project", type=int, default=60_000_000, help="proteins to project the peaks to")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.lengths = tuple(int(n) for n in args.lengths.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="memory_scaling_") as tmp:
        checkpoint = zero_layer_checkpoint(Path(tmp))
        for mode in args.modes.split(","):
            for count in sizes:
                r = run_size(Path(tmp), checkpoint, count, mode, args)
                results.setdefault(mode, []).append(r)
                tree, largest = r["peak_tree_rss"] / 2**20, r["peak_largest_process_rss"] / 2**20
                print(
                    f"{mode:>5} n={count:>9,}  wall {r['wall_s']:8.1f} s  peak RSS (tree) {tree:8.1f} MiB  "
                    f"largest process {largest:8.1f} MiB",
                    flush=True,
                )
    projections = {}
    for mode, runs in results.items():
        for small, large in zip(runs[:-1], runs[1:], strict=True):
            extra = large["proteins"] - small["proteins"]
            per = (large["peak_tree_rss"] - small["peak_tree_rss"]) / extra
            times, more = large["wall_s"] / small["wall_s"], large["proteins"] / small["proteins"]
            print(
                f"{mode}: {small['proteins']:,} → {large['proteins']:,}: {per:.0f} bytes of peak RSS per extra "
                f"protein; wall time × {times:.2f} for × {more:.0f} proteins"
            )
        if len(runs) > 1:
            projections[mode] = project(runs[-2], runs[-1], args.project)
            print(f"{mode}: projected peak at {args.project:,} proteins: {projections[mode] / 2**30:.1f} GiB")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        document = {"settings": settings, "results": results, "projected_peak_bytes": projections}
        args.json.write_text(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
