"""Where the device's time goes over a few batches: torch.profiler around them, then, from the profiler's own trace,
the device kernels ranked by total time and the share of the profiled window in which the device ran nothing.

Idle is measured on the trace's clock: the window spans every timed event (host operators, runtime calls and device
work) of the profiled batches; busy is the union of the device's kernel, copy and memset intervals. A high idle share
means the host does not keep the device fed (Python between kernels, synchronisations, tokenization). On a CPU run
there are no device events, and the summary lists the CPU operators by self time instead.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
TOP = 15


def profile_run(run: Callable[[], None], device: str, top: int = TOP) -> dict[str, Any]:
    """Profile `run()` (it should end with the device's work done) and summarise it (summarize_trace)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        run()
        if device != "cpu":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="profile-") as directory:
        trace = Path(directory) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text()).get("traceEvents", [])
    summary = summarize_trace(events, top)
    summary["host_seconds"] = seconds
    if not summary["top"]:
        summary["kind"] = "CPU operators by self time (no device events in the trace)"
        summary["top"] = top_cpu_operators(prof, top)
    return summary


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: concurrent kernels count once."""
    busy, reached = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reached:
            continue
        busy += end - max(start, reached)
        reached = end
    return busy


def summarize_trace(events: list[dict[str, Any]], top: int = TOP) -> dict[str, Any]:
    """A Chrome trace's events (torch.profiler's export) → window, device busy time, idle shares, top kernels."""
    timed = [e for e in events if e.get("ph") == "X" and "ts" in e]
    spans = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in timed]
    device = [e for e in timed if e.get("cat") in DEVICE_CATEGORIES]
    device_spans = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in device]
    window = max(end for _, end in spans) - min(start for start, _ in spans) if spans else 0.0
    busy = busy_time(device_spans)
    kernel_span = max(e for _, e in device_spans) - min(s for s, _ in device_spans) if device_spans else 0.0
    totals: dict[str, list[float]] = {}
    for event, (start, end) in zip(device, device_spans, strict=True):
        entry = totals.setdefault(str(event.get("name", "?")), [0, 0.0])
        entry[0] += 1
        entry[1] += end - start
    kernel_time = sum(total for _, total in totals.values())
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:top]
    return {
        "kind": "device kernels, copies and memsets by total time",
        "window_us": window,
        "device_busy_us": busy,
        "device_idle_fraction": 1 - busy / window if window and device else None,
        "idle_fraction_first_to_last_kernel": 1 - busy / kernel_span if kernel_span else None,
        "device_events": len(device),
        "top": [
            {"name": name[:300], "calls": int(calls), "total_us": total, "share": total / kernel_time}
            for name, (calls, total) in ranked
        ],
    }


def top_cpu_operators(prof: Any, top: int = TOP) -> list[dict[str, Any]]:
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    return [
        {"name": e.key[:300], "calls": int(e.count), "total_us": float(e.self_cpu_time_total),
         "share": e.self_cpu_time_total / total}
        for e in rows
    ]  # fmt: skip


def format_profile(title: str, summary: dict[str, Any]) -> str:
    """The summary as a few lines of text: header, idle shares, the ranked table."""
    lines = [f"== {title}"]
    if "error" in summary:
        return "\n".join([*lines, f"profile failed: {summary['error']}"])
    idle = summary.get("device_idle_fraction")
    if idle is not None:
        between = summary.get("idle_fraction_first_to_last_kernel") or 0.0
        lines.append(
            f"device idle {idle:.1%} of the profiled window ({summary['window_us'] / 1e3:.1f} ms on the trace, "
            f"{summary['host_seconds']:.2f} s on the host), {between:.1%} between the first and the last kernel; "
            f"{summary['device_events']} device events"
        )
    else:
        lines.append(f"no device events; {summary['host_seconds']:.2f} s on the host")
    lines.append(f"top {len(summary['top'])} {summary['kind']}:")
    lines.append(f"{'share':>7} {'total ms':>9} {'calls':>6}  name")
    for row in summary["top"]:
        lines.append(f"{row['share']:>7.1%} {row['total_us'] / 1e3:>9.2f} {row['calls']:>6}  {row['name'][:110]}")
    return "\n".join(lines)
