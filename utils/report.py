"""What a run did, to look at: `{output_dir}/run_report.html` (self-contained: the charts are inline PNGs, it opens
offline) and `{output_dir}/run_summary.json` (the same numbers, plus the versions of Python, torch and transformers
and each checkpoint's identity).

Workers record their progress as JSON lines in `{log_dir}/{log name}.progress.jsonl` (ProgressLog: one line when
they start, when the model has loaded, per checkpoint chunk written, and when they end), so the report costs the run
nothing but a flush per chunk; the main process builds the report once, at the end of the run, interrupted or not.
The report shows: residues/s over time per worker, the length histogram per split with the proteins that went
through windows marked, time per model and device, proteins reused from earlier chunks against computed, and the
output files written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPORT_NAME = "run_report.html"
SUMMARY_NAME = "run_summary.json"
PROGRESS_SUFFIX = ".progress.jsonl"
HISTOGRAM_BINS = 40


def progress_path(log_path: Path) -> Path:
    """The progress file that belongs beside a worker's log file."""
    return log_path.with_name(log_path.stem + PROGRESS_SUFFIX)


class ProgressLog:
    """A worker's progress as JSON lines, one event a line, flushed as written (a killed worker keeps what it had).
    Each run starts the file afresh."""

    def __init__(self, log_path: Path, **identity: Any):
        self.path = progress_path(log_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.path.open("w", encoding="utf-8")
        self.identity = identity

    def write(self, event: str, **fields: Any) -> None:
        record = {"t": time.time(), "event": event, **self.identity, **fields}
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def read_progress(log_dir: Path, since: float) -> dict[str, list[dict]]:
    """Worker label → its events of the run that began at `since` (files left by earlier runs are skipped)."""
    workers: dict[str, list[dict]] = {}
    for path in sorted(log_dir.glob(f"*{PROGRESS_SUFFIX}")):
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: the events before it stand
        if events and events[0].get("t", 0) >= since and "label" in events[0]:
            workers[events[0]["label"]] = events
    return workers


# -- numbers --------------------------------------------------------------------------------------------------------
@dataclass
class WorkerSummary:
    label: str
    model: str
    device: str
    precision: str = ""
    status: str = "running"  # done, interrupted, failed (no end event: the worker died)
    started: float = 0.0  # seconds since the run began
    ended: float = 0.0
    loaded: float = 0.0  # seconds since the run began when the model was ready
    load_seconds: float = 0.0
    sequences: int = 0
    reused: int = 0  # unique sequences found in earlier chunks
    reused_chunks: int = 0
    computed: int = 0  # unique sequences embedded in this run
    computed_chunks: int = 0
    residues: int = 0
    windowed: list[int] = field(default_factory=list)  # lengths of the proteins embedded in windows in this run
    max_residues: int = 0
    rate: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the run began, residues/s)

    computing_seconds: float = 0.0  # from the model loaded to the last chunk written

    @property
    def residues_per_second(self) -> float:
        return self.residues / self.computing_seconds if self.computing_seconds > 0 else 0.0


def summarise_worker(events: list[dict], run_started: float) -> WorkerSummary:
    first = events[0]
    worker = WorkerSummary(first["label"], first.get("model", ""), first.get("device", ""))
    previous = loaded = first["t"]
    for event in events:
        kind, at = event["event"], event["t"]
        worker.ended = at - run_started
        if kind == "start":
            worker.started = worker.loaded = at - run_started
            worker.precision = event.get("precision", "")
            worker.sequences = event.get("sequences", 0)
            worker.reused = event.get("reused", 0)
            worker.reused_chunks = event.get("reused_chunks", 0)
            worker.max_residues = event.get("max_residues", 0)
        elif kind == "loaded":
            worker.load_seconds = event.get("seconds", 0.0)
            worker.loaded = at - run_started
            previous = loaded = at
        elif kind == "chunk":
            worker.computed += event.get("proteins", 0)
            worker.computed_chunks += 1
            worker.residues += event.get("residues", 0)
            worker.windowed += event.get("windowed", [])
            if at > previous:
                worker.rate.append((at - run_started, event.get("residues", 0) / (at - previous)))
            previous = at
            worker.computing_seconds = at - loaded
        elif kind == "end":
            worker.status = event.get("status", "done")
    if worker.status == "running":
        worker.status = "failed"  # no end event: the process died
    return worker


def nearest_rank(sorted_values: Sequence[int], q: float) -> int:
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def split_summary(sequences: Sequence[str]) -> dict[str, Any]:
    lengths = sorted(len(s) for s in sequences)
    return {
        "proteins": len(lengths),
        "unique": len(set(sequences)),
        "residues": sum(lengths),
        "lengths": {
            "min": lengths[0] if lengths else 0,
            **{f"p{q}": nearest_rank(lengths, q) for q in (50, 90, 99)},
            "max": lengths[-1] if lengths else 0,
        },
    }


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cuda": str(torch.version.cuda),
    }


def output_table(output_dir: Path, since: float) -> list[dict[str, Any]]:
    """The output files this run wrote (modified since it began)."""
    rows = []
    for path in sorted(output_dir.glob("*_embeddings_*")):
        if path.is_file() and path.stat().st_mtime >= since - 1:
            rows.append({"file": path.name, "bytes": path.stat().st_size})
    return rows


# -- charts ---------------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    """pyplot on the file-only backend: the run may have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _time_unit(seconds: float) -> tuple[float, str]:
    """(divisor, axis label) for a time axis that spans `seconds`."""
    if seconds > 3 * 3600:
        return 3600.0, "hours since the run began"
    if seconds > 180:
        return 60.0, "minutes since the run began"
    return 1.0, "seconds since the run began"


def chart_rates(workers: Iterable[WorkerSummary]) -> str | None:
    plt = _pyplot()
    drawn = [w for w in workers if w.rate]
    if not drawn:
        return None
    unit, label = _time_unit(max(w.ended for w in drawn))
    figure, axes = plt.subplots(figsize=(8, 3.2))
    for worker in drawn:
        times, rates = zip(*worker.rate, strict=True)
        axes.plot([t / unit for t in times], rates, marker="o", markersize=3, label=f"{worker.label} ({worker.device})")
    axes.set_xlabel(label)
    axes.set_ylabel("residues / s (per chunk)")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return _png(figure)


def chart_lengths(split_lengths: dict[str, list[int]], limits: dict[str, int]) -> str | None:
    """One histogram per split (log length axis); proteins past a model's one-pass limit (windows) in red."""
    import numpy as np

    plt = _pyplot()

    if not split_lengths:
        return None
    figure, axes_list = plt.subplots(
        1, len(split_lengths), figsize=(4 * len(split_lengths) + 1, 3), squeeze=False, sharey=False
    )
    everything = [n for lengths in split_lengths.values() for n in lengths] or [1]
    edges = np.geomspace(max(1, min(everything)), max(everything) + 1, HISTOGRAM_BINS + 1)
    shortest_limit = min(limits.values()) if limits else None
    for axes, (split, lengths) in zip(axes_list[0], split_lengths.items(), strict=True):
        axes.hist(lengths, bins=edges, color="#7a9cc6", label="one pass")
        if shortest_limit is not None:
            long = [n for n in lengths if n > shortest_limit]
            if long:
                axes.hist(long, bins=edges, color="#d0473c", label="windows (some model)")
        by_limit: dict[int, list[str]] = {}
        for model, limit in limits.items():
            by_limit.setdefault(limit, []).append(model)
        for row, (limit, models) in enumerate(sorted(by_limit.items())):
            if limit < max(everything):
                axes.axvline(limit, color="#d0473c", linestyle="--", linewidth=0.8)
                top = axes.get_ylim()[1] * (0.9 - 0.08 * row)
                axes.text(limit, top, f" {', '.join(sorted(models))}: {limit:,}", fontsize=7, color="#d0473c")
        axes.set_xscale("log")
        axes.set_title(f"{split}: {len(lengths):,} proteins", fontsize=9)
        axes.set_xlabel("residues")
        axes.legend(fontsize=7)
    axes_list[0][0].set_ylabel("proteins")
    return _png(figure)


def chart_timeline(workers: Sequence[WorkerSummary]) -> str | None:
    plt = _pyplot()
    if not workers:
        return None
    unit, label = _time_unit(max(w.ended for w in workers))
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(workers) + 1.2))
    colours = {"done": "#4c9a5f", "interrupted": "#e0a030", "failed": "#d0473c"}
    for row, worker in enumerate(workers):
        start, loaded, ended = worker.started / unit, worker.loaded / unit, worker.ended / unit
        axes.barh(row, loaded - start, left=start, color="#bbbbbb", label="start and model load")
        axes.barh(row, ended - loaded, left=loaded, color=colours.get(worker.status, "#888888"), label=worker.status)
    axes.set_yticks(range(len(workers)), [f"{w.label} ({w.device})" for w in workers], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(label)
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes.legend(unique.values(), unique.keys(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=4)
    axes.set_xlim(left=0)
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def chart_reuse(workers: Sequence[WorkerSummary]) -> str | None:
    plt = _pyplot()
    if not workers:
        return None
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(workers) + 1.2))
    labels = [f"{w.label} ({w.device})" for w in workers]
    reused = [w.reused for w in workers]
    computed = [w.computed for w in workers]
    axes.barh(labels, reused, color="#7a9cc6", label="reused from earlier chunks")
    axes.barh(labels, computed, left=reused, color="#4c9a5f", label="computed in this run")
    axes.invert_yaxis()
    axes.set_xlabel("unique sequences")
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    return _png(figure)


# -- the report -----------------------------------------------------------------------------------------------------
def build_summary(
    *,
    config_path: Path,
    splits: dict[str, list[str]],
    models: list[dict[str, Any]],
    workers: list[WorkerSummary],
    outputs: list[dict[str, Any]],
    started: float,
    ended: float,
    exit_status: str,
) -> dict[str, Any]:
    """The run's numbers as plain data (run_summary.json)."""
    return {
        "config": str(config_path),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "ended": datetime.fromtimestamp(ended, timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(ended - started, 3),
        "status": exit_status,
        "versions": versions(),
        "splits": {name: split_summary(sequences) for name, sequences in splits.items()},
        "models": models,
        "workers": [
            {
                "label": w.label,
                "model": w.model,
                "device": w.device,
                "precision": w.precision,
                "status": w.status,
                "started_seconds": round(w.started, 3),
                "ended_seconds": round(w.ended, 3),
                "load_seconds": round(w.load_seconds, 3),
                "unique_sequences": w.sequences,
                "reused": w.reused,
                "reused_chunks": w.reused_chunks,
                "computed": w.computed,
                "computed_chunks": w.computed_chunks,
                "residues_computed": w.residues,
                "residues_per_second": round(w.residues_per_second, 1),
                "windowed_lengths": w.windowed,
                "max_residues": w.max_residues,
                "rate_over_time": [[round(t, 3), round(r, 1)] for t, r in w.rate],  # [seconds since start, residues/s]
            }
            for w in workers
        ],
        "outputs": outputs,
    }


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(png: str | None, alt: str) -> str:
    if png is None:
        return f"<p class='none'>{html.escape(alt)}: nothing to show (no worker computed anything in this run)</p>"
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png}'>"


def render_html(summary: dict[str, Any], split_lengths: dict[str, list[int]], workers: list[WorkerSummary]) -> str:
    limits: dict[str, int] = {}
    for worker in workers:
        if worker.max_residues:
            limits[worker.model] = min(limits.get(worker.model, worker.max_residues), worker.max_residues)
    v = summary["versions"]
    splits_rows = [
        (name, f"{s['proteins']:,}", f"{s['unique']:,}", f"{s['residues']:,}",
         " / ".join(f"{s['lengths'][k]:,}" for k in ("min", "p50", "p90", "p99", "max")))
        for name, s in summary["splits"].items()
    ]  # fmt: skip
    model_rows = [
        (m["key"], m["name"], m["model_name"], m["family"], m["layer"], ", ".join(m["devices"]), m["checkpoint"],
         m["status"])
        for m in summary["models"]
    ]  # fmt: skip
    worker_rows = [
        (w["label"], w["device"], w["precision"], w["status"], f"{w['load_seconds']:.1f}",
         f"{w['ended_seconds'] - w['started_seconds']:.1f}", f"{w['reused']:,} ({w['reused_chunks']} chunks)",
         f"{w['computed']:,} ({w['computed_chunks']} chunks)", f"{w['residues_per_second']:,.0f}",
         len(w["windowed_lengths"]))
        for w in summary["workers"]
    ]  # fmt: skip
    output_rows = [(o["file"], f"{o['bytes'] / 1e6:,.2f} MB") for o in summary["outputs"]]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Embedding run report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f0f0f0; }} img {{ max-width: 100%; }} .none {{ color: #888; }} code {{ font-size: 0.95em; }}
</style></head><body>
<h1>Embedding run report</h1>
<p><code>{html.escape(summary['config'])}</code>: <b>{html.escape(summary['status'])}</b>,
{summary['wall_seconds']:,.1f} s ({html.escape(summary['started'])} → {html.escape(summary['ended'])}).
Python {v['python']}, torch {v['torch']}, transformers {v['transformers']} (CUDA {v['cuda']}),
{html.escape(v['platform'])}. The numbers are in <code>{SUMMARY_NAME}</code> beside this file.</p>
<h2>Inputs</h2>
{_table(("split", "proteins", "unique", "residues", "length min / p50 / p90 / p99 / max"), splits_rows)}
{_image(chart_lengths(split_lengths, limits), "length histogram per split")}
<p>Red: proteins longer than a model's one-pass limit (dashed lines), embedded in overlapping windows by that model
(listed in each output's <code>meta["windowed"]</code>).</p>
<h2>Models</h2>
{_table(("key", "checkpoint", "model_name", "family", "layer", "devices", "identity", "status"), model_rows)}
<h2>Workers</h2>
{_table(("worker", "device", "precision", "status", "load s", "total s", "reused", "computed", "residues/s",
         "windowed"), worker_rows)}
<h3>Throughput over time</h3>
{_image(chart_rates(workers), "residues per second over time")}
<h3>Time per model and device</h3>
{_image(chart_timeline(workers), "time per model and device")}
<h3>Reused and computed</h3>
{_image(chart_reuse(workers), "reused and computed")}
<h2>Outputs written</h2>
{_table(("file", "size"), output_rows) if output_rows else "<p class='none'>none in this run</p>"}
</body></html>
"""


def write_report(
    output_dir: Path,
    log_dir: Path,
    config_path: Path,
    splits: dict[str, list[str]],
    models: list[dict[str, Any]],
    started: float,
    exit_status: str,
) -> Path:
    """Collect the workers' progress of the run that began at `started` and write the report and summary (each
    atomically). `splits`: split → its sequences in input order; `models`: one dict per model (key, name,
    model_name, family, layer, devices, checkpoint, status). Returns the report's path."""
    from utils.store import atomic_write_bytes

    ended = time.time()
    progress = read_progress(log_dir, started)
    workers = [summarise_worker(events, started) for events in progress.values()]
    workers.sort(key=lambda w: (w.device, w.started))
    summary = build_summary(
        config_path=config_path,
        splits=splits,
        models=models,
        workers=workers,
        outputs=output_table(output_dir, started),
        started=started,
        ended=ended,
        exit_status=exit_status,
    )
    split_lengths = {name: [len(s) for s in sequences] for name, sequences in splits.items()}
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output_dir / SUMMARY_NAME, (json.dumps(summary, indent=1) + "\n").encode())
    report = output_dir / REPORT_NAME
    atomic_write_bytes(report, render_html(summary, split_lengths, workers).encode())
    return report


def report_run(config: Any, splits: dict[str, Any], jobs: list[Any], started: float, status: str) -> None:
    """The job's last step (utils.job.run_job): the report of the run that began at `started`, for whatever was
    done. A report that cannot be written is a note, never a failure of the run."""
    from utils.families import tool_model_name

    models = []
    for job in jobs:
        model = job.model
        state = "done" if job.finished else "failed" if job.failed else "interrupted"
        models.append({
            "key": model.config.key,
            "name": model.config.name,
            "model_name": tool_model_name(model.family, model.arch, model.layer_index),
            "family": model.family.label,
            "layer": model.layer_index,
            "devices": list(model.config.devices),
            "checkpoint": model.identity,
            "status": state,
        })  # fmt: skip
    sequences = {name: [record.sequence for record in records] for name, records in splits.items()}
    try:
        path = write_report(config.output_dir, config.log_dir, config.path, sequences, models, started, status)
    except Exception as exc:  # noqa: BLE001 - the outputs are written; the report is only a picture of the run
        print(f"note: the run report could not be written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    print(f"report: {path}", file=sys.stderr)
