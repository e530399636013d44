#!/usr/bin/env python
"""How long the run report's HTML takes to draw (utils.outputs.report_html.render_html, matplotlib's charts
included) on a realistic run: 500 proteins in two splits (log-normal lengths, a few past the 1,022-residue limit),
two workers with 50 chunks each.

    python benchmarks/report_render.py

Prints the first call in this fresh process (imports the charts need included: what the end of a run pays) and the
median of five more calls. Runs in well under a second; no model, no files written.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.outputs.progress import WorkerSummary  # noqa: E402
from utils.outputs.report_html import render_html  # noqa: E402


def realistic_input(seed: int = 0) -> tuple[dict, dict[str, list[int]], list[WorkerSummary]]:
    rng = random.Random(seed)
    split_lengths = {
        name: [int(rng.lognormvariate(5.5, 0.7)) + 5 for _ in range(count)]
        for name, count in (("train", 450), ("test", 50))
    }
    workers = []
    for index, key in enumerate(("esm2", "prot_t5")):
        worker = WorkerSummary(key, key, "cpu", "fp32", "done", started=0.2 * index, loaded=3.0 + index,
                               ended=60.0 + index, load_seconds=2.8, sequences=500, reused=100, reused_chunks=2,
                               computed=400, computed_chunks=50, residues=120_000, windowed=[1300, 2100],
                               max_residues=1022)  # fmt: skip
        worker.rate = [(3.0 + index + 1.1 * chunk, 2000 + rng.random() * 500) for chunk in range(50)]
        worker.computing_seconds = 57.0
        workers.append(worker)
    lengths = {"min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    summary = {
        "config": "config.yaml", "status": "done", "wall_seconds": 61.0, "started": "", "ended": "",
        "versions": {"python": "", "torch": "", "transformers": "", "cuda": "", "platform": ""},
        "splits": {name: {"proteins": len(v), "unique": len(v), "residues": sum(v), "lengths": lengths}
                   for name, v in split_lengths.items()},
        "models": [], "workers": [], "outputs": [],
    }  # fmt: skip
    return summary, split_lengths, workers


def main() -> None:
    summary, split_lengths, workers = realistic_input()
    began = time.perf_counter()
    text = render_html(summary, split_lengths, workers, "run_summary.json")
    first = time.perf_counter() - began
    again = []
    for _ in range(5):
        began = time.perf_counter()
        render_html(summary, split_lengths, workers, "run_summary.json")
        again.append(time.perf_counter() - began)
    print(f"render_html: first call {first * 1e3:.1f} ms, then median {statistics.median(again) * 1e3:.1f} ms "
          f"({len(text):,} characters of HTML)")  # fmt: skip


if __name__ == "__main__":
    main()
