"""benchmarks/throughput.py's figures: each side's fastest round, rates, MFU and speed-ups (finish), the text
table (summarize), and the JSON and profile files (write_outputs)."""

from __future__ import annotations

from typing import Any

from benchmarks.device_profile import format_profile
from benchmarks.engine_side import VARIANTS
from benchmarks.results_io import write_json


def side_names(report: dict[str, Any]) -> list[str]:
    return [name for name in ("seed", "fair_esm", *(v.side for v in VARIANTS.values())) if name in report]


def finish(report: dict[str, Any], runs: dict[str, list[dict[str, Any]]], residues: int) -> None:
    """Each side's fastest round (by wall with warm-up), its rates, and the speed-ups, into `report`."""
    rate = report["matmul_rate_flops"]
    for name, results in runs.items():
        if not results:
            continue
        best = dict(min(results, key=lambda r: r["wall_with_warmup_seconds"]))
        wall = best["wall_with_warmup_seconds"]
        best["residues_per_s"] = residues / wall
        best["residues_per_s_without_warmup"] = residues / best["encode_seconds"]
        best["mfu"] = best["useful_flops"] / wall / rate
        if best.get("steady_seconds"):
            best["mfu_steady"] = best["steady_flops"] / best["steady_seconds"] / rate
        best["wall_with_warmup_seconds_all_rounds"] = [r["wall_with_warmup_seconds"] for r in results]
        best["warmup_seconds_all_rounds"] = [r["warmup_seconds"] for r in results]
        report[name] = best
    for name in side_names(report):
        for base in ("seed", "fair_esm"):
            if name == base or base not in report or (base == "fair_esm" and name == "seed"):
                continue
            b, s = report[base], report[name]
            key = f"speedup_{name}" if base == "seed" else f"speedup_{name}_vs_fair_esm"
            report[key] = {
                "wall_with_warmup": b["wall_with_warmup_seconds"] / s["wall_with_warmup_seconds"],
                "encode": b["encode_seconds"] / s["encode_seconds"],
                "total": b["total_seconds"] / s["total_seconds"],
                "cpu_time": b["encode_cpu_seconds"] / s["encode_cpu_seconds"],
            }


def summarize(report: dict[str, Any]) -> str:
    names = side_names(report)
    sides = [report[name] for name in names]
    gib = 2**30

    def row(label: str, key: str, fmt: str = "{:.1f}", scale: float = 1.0) -> tuple[str, ...]:
        cells = []
        for s in sides:
            value = s.get(key)
            cells.append("-" if value is None else fmt.format(value / scale if scale != 1 else value))
        return (label, *cells)

    rows = [
        ("", *names),
        row("model load seconds (not in the rates)", "load_seconds", "{:.2f}"),
        row("warm-up seconds (Encoder, self-check)", "warmup_seconds", "{:.2f}"),
        row("first batch seconds", "first_batch_seconds", "{:.2f}"),
        row("encode seconds (batch loop)", "encode_seconds"),
        row("wall with warm-up seconds", "wall_with_warmup_seconds"),
        row("compile seconds (Dynamo)", "compile_seconds", "{:.1f}"),
        row("compiles (frames)", "compiles", "{}"),
        row("encode CPU seconds (user+sys)", "encode_cpu_seconds"),
        row("input residues/s (wall with warm-up)", "residues_per_s", "{:.0f}"),
        row("residues/s, batches without compiling", "steady_residues_per_s", "{:.0f}"),
        row("forward rows (proteins)", "forward_rows", "{}"),
        row("residues embedded", "residues_embedded", "{}"),
        row("truncated proteins", "truncated_proteins", "{}"),
        ("windowed proteins", *(str(len(s["windowed"])) if "windowed" in s else "-" for s in sides)),
        row("fp32 redone proteins", "fp32_redone", "{}"),
        row("padding fraction", "padding_fraction", "{:.3f}"),
        row("attention row padding (flex)", "attention_padding_fraction", "{:.3f}"),
        row("peak memory GiB", "peak_memory_bytes", "{:.2f}", gib),
        row("MFU (wall with warm-up)", "mfu", "{:.3f}"),
        row("MFU, batches without compiling", "mfu_steady", "{:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    proteins = report["proteins"]
    lines = [
        f"device: {report['device_name']} ({report['device']}); arch {report['arch']}; "
        f"matmul rate {report['matmul_rate_flops'] / 1e12:.3f} TFLOP/s ({report['matmul_rate_kind']})",
        f"proteins: {proteins['count']} ({proteins['unique']} unique), {proteins['residues']} residues, lengths "
        f"{proteins['length_range']}, median {proteins['median_length']}; {proteins['note']}",
    ]
    lines += ["  ".join([f"{r[0]:<{width}}", *(f"{c:>16}" for c in r[1:])]) for r in rows]
    for name in names:
        for key, base in ((f"speedup_{name}", "seed"), (f"speedup_{name}_vs_fair_esm", "fair_esm")):
            if key in report:
                s = report[key]
                lines.append(
                    f"{name} vs {base}: wall with warm-up {s['wall_with_warmup']:.2f}x, batch loop alone "
                    f"{s['encode']:.2f}x, with model load {s['total']:.2f}x, CPU time {s['cpu_time']:.2f}x"
                )
    for name in names:
        side = report[name]
        if name in ("seed", "fair_esm"):
            lines.append(
                f"{name}: {side['path']}; truncated {side['truncated_proteins']} protein(s) (lengths "
                f"{side['truncated_lengths']}), lost {side['skipped_out_of_memory']} to out of memory"
            )
            continue
        lines.append(
            f"{name}: {side['path']}; {side['precision']}, token budget {side['token_budget']}, max_residues "
            f"{side['max_residues']}, max_items {side['max_items']}, {side['batches']} batches, compiled during "
            f"batches {side['compile_batches'][:12]}, {side['out_of_memory_events']} out-of-memory split(s), "
            f"{side['fp32_redone']} redone in fp32; windowed: {side['windowed'] or 'none'}"
        )
    lines.append(
        f"all sides saw the same proteins; rounds: {report['rounds']} (fastest kept); load average per round: "
        f"{report['load_average']}"
    )
    return "\n".join(lines)


def write_outputs(args: Any, report: dict[str, Any]) -> None:
    """The JSON (all figures so far: it is rewritten after every side) and, once the engine was profiled, the
    profile's text."""
    if args.json:
        write_json(args.json, report)
    engine = report.get("engine")
    if args.profile and engine and engine.get("profile"):
        p = engine["profile"]
        title = (
            f"{report['arch']} engine on {report['device_name']}: {p['path']}; {p['batches']} batches from batch "
            f"{p['first_batch']} of {engine['batches']} ({p['proteins']} proteins, {p['tokens']} tokens), after the "
            "timed run"
        )
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        args.profile.write_text(format_profile(title, p) + "\n")
