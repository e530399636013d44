#!/usr/bin/env python
"""FlexAttention's compiles, counted and cached: the main command on 300 CAFA-like proteins with
`run_params.attention: flex` on the CPU, twice, each a fresh process, sharing one compile cache that starts empty
(the second run stands for another lane, a shard or a rerun on the same machine).

    python benchmarks/compile_cache.py --json benchmarks/results/cpu_compile_cache.json     # ~3 min on 2 cores

Two models, the tiny ProtT5 (T5's bias in the kernel) and the tiny ESM2 of tests/tiny_checkpoints.py: how many
times a model compiles depends on the row lengths, not on the width. Per run and model, from run_summary.json:
compiles (graphs Dynamo compiled: one per FlexAttention row length), those built anew (not found in the compile
cache), compile seconds, residues/s; beside them, the row lengths the batch plan needs under the engine's rule
(every row within the token budget padded to one length, the load-time self-check's too) and under a plain
power-of-two rule (each row to its own power of two), i.e. the compiles that rule would cost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.measure import synthetic_proteins  # noqa: E402
from benchmarks.results_io import read_json, write_json  # noqa: E402

SELF_CHECK_LENGTHS = (66, 7, 180)  # the proteins utils.engine.encode.Encoder checks a kernel on at load


def row_lengths(lengths: list[int], special: int) -> tuple[list[int], list[int]]:
    """(the engine's row lengths, a plain power-of-two rule's) over the CPU batch plan of `lengths`, the self-check
    included."""
    from utils.engine.attention import FLEX_SHORTEST_ROW, flex_row_length
    from utils.engine.limits import CPU_TOKENS_PER_BATCH, Limits

    budget = CPU_TOKENS_PER_BATCH  # no windows on the CPU at these lengths: max_residues is in the millions
    batches = Limits(budget, 32, 10**9, 0).plan_batches(lengths, special)
    totals = [sum(lengths[i] + special for i in batch) for batch in batches]
    totals.append(sum(n + special for n in SELF_CHECK_LENGTHS))
    floor = min(budget, FLEX_SHORTEST_ROW)
    return sorted({flex_row_length(t, floor) for t in totals}), sorted({flex_row_length(t) for t in totals})


def run(directory: Path, checkpoints: dict[str, Path], fasta: Path, cache: Path) -> tuple[dict, float]:
    directory.mkdir(parents=True)
    config = {
        "paths": {"data_dir": str(fasta.parent), "raw_train_sequences": fasta.name,
                  "output_dir": str(directory / "out"), "log_dir": str(directory / "logs")},
        "run_params": {"attention": "flex", "report": True},
        "models": {name: {"name": str(path), "device": "cpu"} for name, path in checkpoints.items()},
    }  # fmt: skip
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    started = time.perf_counter()
    command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(directory / "config.yaml")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the job failed:\n{result.stderr[-3000:]}")
    return read_json(directory / "out" / "run_summary.json"), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    from tests.tiny_checkpoints import build_esm2, build_prot_t5
    from utils.engine.families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=1000)
    parser.add_argument("--long", default="10000", help="extra long proteins, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    long = [int(x) for x in args.long.split(",") if x]
    proteins = synthetic_proteins(args.proteins, 0, args.max_length, long)
    unique = list(dict.fromkeys(proteins))
    report: dict = {"proteins": len(proteins), "unique": len(unique), "runs": []}
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as scratch:
        root = Path(scratch)
        checkpoints = {"prot_t5": build_prot_t5(root / "prot_t5"), "esm2": build_esm2(root / "esm2")}
        fasta = root / "data" / "train.fasta"
        fasta.parent.mkdir()
        fasta.write_text("".join(f">P{i}\n{s}\n" for i, s in enumerate(proteins)))
        rules = {name: row_lengths([len(s) for s in unique], FAMILIES[name].special_tokens) for name in checkpoints}
        print(f"{len(proteins)} proteins ({len(unique)} unique), attention: flex on the CPU; one compile cache, "
              "empty before the first run")  # fmt: skip
        print(f"{'run':<7} {'model':<8} {'compiles':>8} {'anew':>5} {'compile s':>9} {'residues/s':>10}  "
              f"{'rows, engine rule':<22} rows, power-of-two rule")  # fmt: skip
        for k in (1, 2):
            summary, wall = run(root / f"run{k}", checkpoints, fasta, root / "cache")
            entry = {"run": k, "wall_seconds": wall, "workers": []}
            for w in summary["workers"]:
                engine_rule, pow2_rule = rules[w["label"]]
                entry["workers"].append({
                    "model": w["label"], "compiles": w["compiles"], "compiled_anew": w["compiled_anew"],
                    "compile_seconds": w["compile_seconds"], "residues_per_second": w["residues_per_second"],
                    "forward": w["forward"], "rows_engine_rule": engine_rule, "rows_power_of_two_rule": pow2_rule,
                })  # fmt: skip
                print(f"{k:<7} {w['label']:<8} {w['compiles']:>8} {w['compiled_anew']:>5} "
                      f"{w['compile_seconds']:>9.1f} {w['residues_per_second']:>10,.0f}  {str(engine_rule):<22} "
                      f"{pow2_rule}")  # fmt: skip
            print(f"        run {k}: {wall:.1f} s, the whole command")
            report["runs"].append(entry)
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
