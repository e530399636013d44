#!/usr/bin/env python
"""What the GPU scripts (gpu_first_call.sh, gpu_check.sh) leave in $OUT, gathered after every step so that a call cut
off at its limit keeps what it finished, and the tables printed at the end.

    python benchmarks/gpu_results.py environment --device cuda:0 --json W/environment.json
    python benchmarks/gpu_results.py collect --work W --out O [--table]

environment: Python, torch (and its CUDA), transformers, the GPU, what the engine's kernels find (FlexAttention,
varlen, ESM C in transformers) and where compiled kernels are cached; exit 1 when a GPU was asked for and torch sees
none. collect: W/steps.jsonl (benchmarks/steps.sh) and every stage's JSON in W (W/job/summary.json for the whole
job) into O/results.json, each W/*.profile into O/profile.txt; --table prints one table per kind of stage:
throughput (benchmarks/throughput.py), one long protein (long_protein.py), the whole job (gpu_job.py summary) and the
host path (host_overhead.py). collect imports no torch: it takes a blink after every step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.results_io import read_json, read_steps, write_json  # noqa: E402

SIDES = ("seed", "fair_esm", "engine", "engine_b128", "engine_sdpa")
GIB = 2**30


def environment(device: str) -> dict[str, Any]:
    import platform

    import torch
    import transformers

    from utils.engine.attention import inductor_cache_dir, varlen_available

    gpu = torch.cuda.is_available()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "gpus": torch.cuda.device_count() if gpu else 0,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if gpu else None,
        "esmc_in_transformers": hasattr(transformers, "EsmcModel"),
        "varlen_attention": varlen_available(torch.device(device)),
        "inductor_cache": str(inductor_cache_dir()),
    }
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        info["flex_attention"] = True
    except ImportError:
        info["flex_attention"] = False
    return info


def throughput_rows(name: str, report: dict[str, Any]) -> list[tuple[str, ...]]:
    def cell(side: dict[str, Any], key: str, fmt: str, scale: float | None = None) -> str:
        value = side.get(key)
        return "-" if value is None else fmt.format(value / scale if scale else value)

    rows = []
    for side_name in SIDES:
        if side_name not in report:
            continue
        s = report[side_name]
        vs_seed = report.get(f"speedup_{side_name}", {}).get("wall_with_warmup")
        vs_peer = report.get(f"speedup_{side_name}_vs_fair_esm", {}).get("wall_with_warmup")
        compiles = "-"
        if "compiles" in s:
            compiles = f"{s['compiles']} ({s.get('compiled_anew', '?')} new, {s.get('compile_seconds', 0):.1f} s)"
        windowed = ", ".join(f"{k}: {v['windows']}x{v['window_residues']}" for k, v in s.get("windowed", {}).items())
        rows.append((
            name, side_name, cell(s, "residues_per_s", "{:.0f}"), cell(s, "steady_residues_per_s", "{:.0f}"),
            "-" if vs_seed is None else f"{vs_seed:.2f}x", "-" if vs_peer is None else f"{vs_peer:.2f}x",
            f"{cell(s, 'mfu', '{:.2f}')}/{cell(s, 'mfu_steady', '{:.2f}')}", cell(s, "padding_fraction", "{:.2f}"),
            cell(s, "peak_memory_bytes", "{:.1f}", GIB), cell(s, "warmup_seconds", "{:.1f}"), compiles,
            cell(s, "fp32_redone", "{}"), f"{s['proteins_out']}/{report['proteins']['count']}",
            str(s.get("truncated_proteins", "-")), windowed or "-", s.get("path", "-"),
        ))  # fmt: skip
    return rows


THROUGHPUT_HEAD = ("stage", "side", "res/s", "res/s steady", "vs seed", "vs fair-esm", "MFU/steady", "padding",
                   "peak GiB", "warm-up s", "compiles (new, s)", "fp32 redone", "proteins", "truncated", "windowed",
                   "path")  # fmt: skip


def text_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *rows]]


def tables(stages: dict[str, dict[str, Any]]) -> list[str]:
    """Every stage's figures as text: throughput sides, long proteins, the whole job, the host path."""
    lines: list[str] = []
    throughput = [row for name, r in stages.items() if "engine" in r or "seed" in r for row in throughput_rows(name, r)]
    if throughput:
        lines += [
            "throughput: res/s and speed-ups over the wall with warm-up (Encoder build, self-check, compiles); steady: "
            "batches without compiling; model load excluded; compiles: graphs compiled (of them built anew, not "
            "found in the compile cache) and their seconds",
            *text_table(THROUGHPUT_HEAD, throughput),
            "",
        ]
    long_rows = [
        (name, f"{row['residues']:,}", f"{row['seconds']:.1f}", f"{row['peak_bytes'] / GIB:.2f}",
         f"{row['estimated_peak_bytes'] / GIB:.2f}", str(row["windows"]), str(row["finite"]), row["path"])
        for name, r in stages.items() if "rows" in r and "layers" in r for row in r["rows"]
    ]  # fmt: skip
    if long_rows:
        head = ("stage", "residues", "seconds", "peak GiB", "memory model GiB", "windows", "finite", "path")
        lines += ["one long protein in one pass (model loaded; the first pass, compiles included):"]
        lines += [*text_table(head, long_rows), ""]
    if "job" in stages and stages["job"].get("text"):
        lines += ["the whole job (gpu_job.py):", stages["job"]["text"], ""]
    host = [
        (name, family, f"{f['marginal_proteins_per_s']:,.0f}", f"{f['marginal_residues_per_s']:,.0f}",
         f"{f['startup_seconds']:.1f}")
        for name, r in stages.items() if "families" in r for family, f in r["families"].items()
    ]  # fmt: skip
    if host:
        head = ("stage", "family", "proteins/s", "residues/s", "start-up s")
        lines += ["host path on this machine's CPU (zero-layer models; marginal rate, start-up apart):"]
        lines += [*text_table(head, host), ""]
    return lines


def collect(work: Path, out: Path, table: bool) -> None:
    steps = read_steps(work / "steps.jsonl")
    stages = {path.stem: read_json(path) for path in sorted(work.glob("*.json"))}
    if (work / "job" / "summary.json").exists():
        stages["job"] = read_json(work / "job" / "summary.json")
    write_json(out / "results.json", {"steps": steps, "stages": stages})
    profiles = [path.read_text() for path in sorted(work.glob("*.profile"))]
    (out / "profile.txt").write_text("\n".join(profiles) or "no profile was written (see stderr.log)\n")
    if not table:
        return
    environment_info = stages.get("environment", {})
    if environment_info:
        print("environment: " + ", ".join(f"{k} {v}" for k, v in environment_info.items()))
    for text in profiles:
        print(text)
    for line in tables(stages):
        print(line)
    print("steps (exit code, seconds): " + ", ".join(f"{k} {v['exit']} {v['seconds']} s" for k, v in steps.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("environment", "collect"))
    parser.add_argument("--device", default="cuda:0", help="environment: the device the script measures")
    parser.add_argument("--json", type=Path, help="environment: where its figures go")
    parser.add_argument("--work", type=Path, help="collect: the script's working directory")
    parser.add_argument("--out", type=Path, help="collect: where results.json and profile.txt go")
    parser.add_argument("--table", action="store_true", help="collect: print the tables")
    args = parser.parse_args(argv)
    if args.what == "collect":
        collect(args.work, args.out, args.table)
        return 0
    info = environment(args.device)
    if args.json:
        write_json(args.json, info)
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    if args.device != "cpu" and not info["gpus"]:
        print("no GPU visible to torch", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
