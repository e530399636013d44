"""What a run did, to look at: `{output_dir}/run_report.html` (self-contained: the charts are inline SVG written by
this module, no plotting library; it opens offline) and `{output_dir}/run_summary.json` (the same numbers, plus the
versions of Python, torch and transformers and each checkpoint's identity).

Workers record their progress as JSON lines in `{log_dir}/{log name}.{run id}.progress.jsonl` (ProgressLog: one line
when they start, when the model has loaded, per checkpoint chunk written, and when they end), so the report costs the
run nothing but a flush per chunk; the main process builds the report once, at the end of the run, interrupted or not,
from its own workers' files only (runs of other configs may share the log_dir), and then removes them.
The report shows: residues/s over time per worker, the length histogram per split with the proteins that went
through windows marked, time per model and device, proteins reused from earlier chunks against computed, and the
output files written.
"""

from __future__ import annotations

import html
import json
import math
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from utils.inputs.fasta import sequence_lengths

REPORT_NAME = "run_report.html"
SUMMARY_NAME = "run_summary.json"
PROGRESS_SUFFIX = ".progress.jsonl"
HISTOGRAM_BINS = 40


def progress_path(log_path: Path, run_id: str) -> Path:
    """The progress file of one run's worker, beside the worker's log file."""
    return log_path.with_name(f"{log_path.stem}.{run_id}{PROGRESS_SUFFIX}")


class ProgressLog:
    """A worker's progress as JSON lines, one event a line, flushed as written (a killed worker keeps what it had).
    `path` None: the run writes no report, and nothing is recorded."""

    def __init__(self, path: Path | None, **identity: Any):
        self.path = path
        self.handle = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("w", encoding="utf-8")
        self.identity = identity

    def write(self, event: str, **fields: Any) -> None:
        if self.handle is None:
            return
        record = {"t": time.time(), "event": event, **self.identity, **fields}
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def read_progress(paths: Iterable[Path]) -> dict[str, list[dict]]:
    """Worker label → its events, from the progress files of one run's workers (a worker that never started has
    none)."""
    workers: dict[str, list[dict]] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: the events before it stand
        if events and "label" in events[0]:
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
    redone_in_fp32: int = 0  # proteins non-finite in fp16/bf16, embedded again in fp32
    peak_memory_bytes: int = 0  # GPU: the allocator's peak in the worker; CPU: the worker's peak RSS
    peak_memory_kind: str = ""
    out_of_memory_retries: int = 0  # batches that ran out of memory and were split (or went to windows)
    max_residues: int = 0
    forward: str = ""  # which forward pass and attention kernel ran (utils.engine.encode.Encoder.path)
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
        elif kind == "forward":
            worker.forward = event.get("path", "")
        elif kind == "chunk":
            worker.computed += event.get("proteins", 0)
            worker.computed_chunks += 1
            worker.residues += event.get("residues", 0)
            worker.windowed += event.get("windowed", [])
            worker.redone_in_fp32 += event.get("redone_in_fp32", 0)
            if at > previous:
                worker.rate.append((at - run_started, event.get("residues", 0) / (at - previous)))
            previous = at
            worker.computing_seconds = at - loaded
        elif kind == "end":
            worker.status = event.get("status", "done")
        if "peak_memory_bytes" in event:  # chunk and end events carry the figures so far
            worker.peak_memory_bytes = max(worker.peak_memory_bytes, event["peak_memory_bytes"])
            worker.peak_memory_kind = event.get("peak_memory_kind", "")
            worker.out_of_memory_retries = max(worker.out_of_memory_retries, event.get("out_of_memory_retries", 0))
    if worker.status == "running":
        worker.status = "failed"  # no end event: the process died
    return worker


def nearest_rank(sorted_values: Sequence[int], q: float) -> int:
    if not len(sorted_values):
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def unique_count(sequences: Sequence[str]) -> int:
    from utils.inputs.unique import SharedSequences

    if isinstance(sequences, SharedSequences):  # positions in the job's unique set: no string each
        return len(np.unique(sequences.index))
    return len(set(sequences))


def split_summary(sequences: Sequence[str]) -> dict[str, Any]:
    lengths = np.sort(sequence_lengths(sequences))
    return {
        "proteins": len(lengths),
        "unique": unique_count(sequences),
        "residues": int(lengths.sum()),
        "lengths": {
            "min": int(lengths[0]) if len(lengths) else 0,
            **{f"p{q}": int(nearest_rank(lengths, q)) for q in (50, 90, 99)},
            "max": int(lengths[-1]) if len(lengths) else 0,
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


# -- SVG drawing -----------------------------------------------------------------------------------------------------
# The charts are SVG written as text here, not drawn with a plotting library: importing one and rendering with it
# cost every run far more than the text does, in the main process, after the workers were done
# (`python benchmarks/report_render.py` times the drawing).
FONT = "system-ui, sans-serif"
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
LOAD_COLOUR = "#bbbbbb"
STATUS_COLOURS = {"done": "#4c9a5f", "interrupted": "#e0a030", "failed": "#d0473c"}
ONE_PASS_COLOUR, WINDOWS_COLOUR = "#7a9cc6", "#d0473c"
REUSED_COLOUR, COMPUTED_COLOUR = "#7a9cc6", "#4c9a5f"
MARKERS_UP_TO = 100  # points per line; past that the markers merge into the line and only add bytes
CHAR_WIDTH = 6.2  # px per character at the 11 px labels, to size margins and legends without measuring text


def _number(value: float) -> str:
    """A tick label: thousands separated, at most two decimals, no trailing zeros; millions as "1.5M" (a GPU's
    residues/s) so that the label stays clear of the axis title beside it."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:,.2f}".rstrip("0").rstrip(".") + "M"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _text(
    x: float,
    y: float,
    content: str,
    *,
    anchor: str = "start",
    size: int = 11,
    colour: str = "#222",
    rotate: bool = False,
    weight: str = "normal",
) -> str:
    """Text at (x, y); `content` is escaped here, so split names and model keys can hold any character."""
    turn = f" transform='rotate(-90 {x:.1f} {y:.1f})'" if rotate else ""
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' fill='{colour}' text-anchor='{anchor}'"
        f" font-weight='{weight}'{turn}>{html.escape(content)}</text>"
    )


def _rect(x: float, y: float, width: float, height: float, colour: str, tooltip: str = "") -> str:
    hover = f"<title>{html.escape(tooltip)}</title>" if tooltip else ""
    return (
        f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(width, 0):.1f}' height='{max(height, 0):.1f}'"
        f" fill='{colour}'>{hover}</rect>"
    )


def _line(x1: float, y1: float, x2: float, y2: float, colour: str = "#222", dashed: bool = False) -> str:
    dash = " stroke-dasharray='4 3'" if dashed else ""
    return f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='{colour}'{dash}/>"


def _svg(width: float, height: float, title: str, body: Sequence[str]) -> str:
    """One chart: the title is drawn on top and is also the accessible name (screen readers, hover)."""
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}'"
        f" viewBox='0 0 {width:.0f} {height:.0f}' role='img' font-family='{FONT}'>"
        f"<title>{html.escape(title)}</title>{_text(width / 2, 16, title, anchor='middle', size=13)}"
        + "".join(body)
        + "</svg>"
    )


def _legend(entries: Sequence[tuple[str, str, str]], left: float, top: float, width: float) -> tuple[list[str], float]:
    """(label, colour, shape: box, line or dash) entries in rows that wrap at `width`; the markup and its height."""
    parts, x, y = [], left, top
    for label, colour, shape in entries:
        item = 22 + len(label) * CHAR_WIDTH + 14
        if x > left and x + item > left + width:
            x, y = left, y + 16
        if shape == "box":
            parts.append(_rect(x, y + 2, 12, 9, colour))
        else:
            parts.append(_line(x, y + 6.5, x + 16, y + 6.5, colour, dashed=shape == "dash"))
        parts.append(_text(x + 20, y + 10, label))
        x += item
    return parts, (y - top + 16 if entries else 0)


def _linear_ticks(high: float, count: int = 5, whole: bool = False) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 × 10^k) up to the first one at or past `high`, where the axis ends; `whole`:
    steps of at least 1 and no 2.5, for counts of proteins."""
    high = high if high > 0 else 1.0
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in steps if m * magnitude >= raw)
    step = max(step, 1) if whole else step
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2 and 5 × 10^k inside [low, high], or only the powers of ten when that would crowd the axis; the two ends
    when not even two of those fall inside (a narrow range of lengths)."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks = [m * 10.0**d for d in decades for m in (1, 2, 5) if low <= m * 10.0**d <= high]
    if len(ticks) > 7:
        ticks = [t for t in ticks if math.log10(t).is_integer()]
    return ticks if len(ticks) >= 2 else [low, high]


@dataclass(frozen=True)
class Plot:
    """A plot area in SVG pixels and the data ranges it shows (x linear or logarithmic, y linear, y up)."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_log: bool = False

    def x(self, value: float) -> float:
        low, high = self.x_range
        if self.x_log:
            value, low, high = math.log(max(value, low)), math.log(low), math.log(high)
        return self.left + (value - low) / ((high - low) or 1) * self.width

    def y(self, value: float) -> float:
        low, high = self.y_range
        return self.top + self.height - (value - low) / ((high - low) or 1) * self.height

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def column(self, x_low: float, x_high: float, value: float, colour: str, tooltip: str) -> str:
        """A vertical bar from 0 up to `value` between two x values (a histogram bin)."""
        x0, x1 = self.x(x_low), self.x(x_high)
        return _rect(x0, self.y(value), x1 - x0 - 0.5, self.bottom - self.y(value), colour, tooltip)

    def row_bar(self, row: int, x_low: float, x_high: float, colour: str, tooltip: str) -> str:
        """A horizontal bar in row `row` of a chart whose y axis counts rows from the top."""
        x0 = self.x(x_low)
        return _rect(x0, self.y(row) + 4, self.x(x_high) - x0, abs(self.y(row + 1) - self.y(row)) - 8, colour, tooltip)

    def axes(
        self,
        x_ticks: Iterable[float],
        x_label: str,
        y_ticks: Iterable[tuple[float, str]],
        y_label: str = "",
        grid: str = "",
    ) -> list[str]:
        """Both axes with ticks and labels; `grid`: "x", "y" or "" for light lines across the plot at the ticks."""
        parts = [
            _line(self.left, self.top, self.left, self.bottom),
            _line(self.left, self.bottom, self.left + self.width, self.bottom),
        ]
        for value in x_ticks:
            x = self.x(value)
            if grid == "x":
                parts.append(_line(x, self.top, x, self.bottom, "#e4e4e4"))
            parts += [
                _line(x, self.bottom, x, self.bottom + 4),
                _text(x, self.bottom + 16, _number(value), anchor="middle"),
            ]
        for value, label in y_ticks:
            y = self.y(value)
            if grid == "y":
                parts.append(_line(self.left, y, self.left + self.width, y, "#e4e4e4"))
            parts += [_line(self.left - 4, y, self.left, y), _text(self.left - 7, y + 4, label, anchor="end")]
        parts.append(_text(self.left + self.width / 2, self.bottom + 32, x_label, anchor="middle"))
        if y_label:
            parts.append(_text(14, self.top + self.height / 2, y_label, anchor="middle", rotate=True))
        return parts


def _time_unit(seconds: float) -> tuple[float, str]:
    """(divisor, axis label) for a time axis that spans `seconds`."""
    if seconds > 3 * 3600:
        return 3600.0, "hours since the run began"
    if seconds > 180:
        return 60.0, "minutes since the run began"
    return 1.0, "seconds since the run began"


def _worker_name(worker: WorkerSummary) -> str:
    return f"{worker.label} ({worker.device})"


def _rows_left_margin(workers: Sequence[WorkerSummary]) -> float:
    """Room for the longest worker name left of the bars."""
    return 20 + CHAR_WIDTH * max(len(_worker_name(w)) for w in workers)


# -- charts: each returns one <svg> element, or None when there is nothing to draw -----------------------------------
def chart_rates(workers: Iterable[WorkerSummary]) -> str | None:
    """Residues/s of each chunk over time, one line per worker."""
    drawn = [w for w in workers if w.rate]
    if not drawn:
        return None
    unit, time_label = _time_unit(max(w.ended for w in drawn))
    entries = [(_worker_name(w), SERIES_COLOURS[i % len(SERIES_COLOURS)], "line") for i, w in enumerate(drawn)]
    legend, legend_height = _legend(entries, 70, 28, 630)
    x_ticks = _linear_ticks(max(t for w in drawn for t, _ in w.rate) / unit)
    y_ticks = _linear_ticks(max(r for w in drawn for _, r in w.rate))
    plot = Plot(70, 36 + legend_height, 630, 190, (0, x_ticks[-1]), (0, y_ticks[-1]))
    parts = legend + plot.axes(
        x_ticks, time_label, [(v, _number(v)) for v in y_ticks], "residues / s (per chunk)", grid="y"
    )
    for worker, (name, colour, _) in zip(drawn, entries, strict=True):
        points = [(plot.x(t / unit), plot.y(r)) for t, r in worker.rate]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(
            f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='1.5'>"
            f"<title>{html.escape(name)}</title></polyline>"
        )
        if len(points) <= MARKERS_UP_TO:
            parts += [f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='{colour}'/>" for x, y in points]
    return _svg(720, plot.bottom + 44, "residues / s over time, per worker", parts)


def chart_lengths(split_lengths: dict[str, list[int]], limits: dict[str, int]) -> str | None:
    """One histogram per split (log length axis, HISTOGRAM_BINS bins shared by all splits); the proteins past the
    shortest one-pass limit (they go through windows in at least that model) in red, each model's limit dashed."""
    if not split_lengths:
        return None
    everything = np.concatenate([np.asarray(lengths, dtype=np.int64) for lengths in split_lengths.values()])
    if not len(everything):
        everything = np.ones(1, dtype=np.int64)
    low, high = max(1, int(everything.min())), int(everything.max()) + 1
    edges = [low * (high / low) ** (i / HISTOGRAM_BINS) for i in range(HISTOGRAM_BINS + 1)]
    shortest_limit = min(limits.values()) if limits else None
    by_limit: dict[int, list[str]] = {}
    for model, limit in limits.items():
        by_limit.setdefault(limit, []).append(model)
    shown_limits = [(limit, models) for limit, models in sorted(by_limit.items()) if low <= limit < high - 1]
    any_windows = shortest_limit is not None and bool((everything > shortest_limit).any())
    panel_width = 330
    width = 70 + panel_width * len(split_lengths)
    entries = [("one pass", ONE_PASS_COLOUR, "box")]
    entries += [("windows (some model)", WINDOWS_COLOUR, "box")] if any_windows else []
    entries += [("a model's one-pass limit", WINDOWS_COLOUR, "dash")] if shown_limits else []
    parts, legend_height = _legend(entries, 70, 28, width - 90)
    top = 56 + legend_height
    for index, (split, lengths) in enumerate(split_lengths.items()):
        lengths = np.asarray(lengths, dtype=np.int64)
        which = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, HISTOGRAM_BINS - 1)
        total = np.bincount(which, minlength=HISTOGRAM_BINS).tolist()
        long = which[lengths > shortest_limit] if shortest_limit is not None else which[:0]
        windowed = np.bincount(long, minlength=HISTOGRAM_BINS).tolist()
        y_ticks = _linear_ticks(max(total, default=0), whole=True)
        left = 70 + index * panel_width
        plot = Plot(left, top, panel_width - 40, 170, (edges[0], edges[-1]), (0, y_ticks[-1]), x_log=True)
        parts.append(
            _text(left + plot.width / 2, top - 8, f"{split}: {len(lengths):,} proteins", anchor="middle", weight="bold")
        )
        parts += plot.axes(
            _log_ticks(edges[0], edges[-1]),
            "residues",
            [(v, _number(v)) for v in y_ticks],
            "proteins" if index == 0 else "",
            grid="y",
        )
        for which, (count, long) in enumerate(zip(total, windowed, strict=True)):
            if not count:
                continue
            span = f"{math.ceil(edges[which]):,}–{math.ceil(edges[which + 1]) - 1:,} residues"
            parts.append(
                plot.column(edges[which], edges[which + 1], count, ONE_PASS_COLOUR, f"{span}: {count:,} proteins")
            )
            if long:
                parts.append(
                    plot.column(edges[which], edges[which + 1], long, WINDOWS_COLOUR, f"{span}: {long:,} in windows")
                )
        for row, (limit, models) in enumerate(shown_limits):
            x, label = plot.x(limit), f"{', '.join(sorted(models))}: {limit:,}"
            fits_right = x + 3 + len(label) * CHAR_WIDTH * 9 / 11 <= plot.left + plot.width
            parts += [
                _line(x, plot.top, x, plot.bottom, WINDOWS_COLOUR, dashed=True),
                _text(x + 3 if fits_right else x - 3, plot.top + 10 + 12 * row, label, anchor="start" if fits_right
                      else "end", size=9, colour=WINDOWS_COLOUR),
            ]  # fmt: skip
    return _svg(width, top + 170 + 44, "protein lengths per split", parts)


def chart_timeline(workers: Sequence[WorkerSummary]) -> str | None:
    """A bar per worker: start-up and model load in grey, then embedding, coloured by how the worker ended."""
    if not workers:
        return None
    unit, time_label = _time_unit(max(w.ended for w in workers))
    statuses = dict.fromkeys(w.status for w in workers)
    entries = [("start and model load", LOAD_COLOUR, "box")]
    entries += [(status, STATUS_COLOURS.get(status, "#888888"), "box") for status in statuses]
    left = _rows_left_margin(workers)
    legend, legend_height = _legend(entries, left, 28, 700 - left)
    x_ticks = _linear_ticks(max(w.ended for w in workers) / unit)
    plot = Plot(left, 36 + legend_height, 700 - left, 24 * len(workers), (0, x_ticks[-1]), (len(workers), 0))
    names = [(row + 0.5, _worker_name(w)) for row, w in enumerate(workers)]
    parts = legend + plot.axes(x_ticks, time_label, names, grid="x")
    for row, worker in enumerate(workers):
        start, loaded, ended = worker.started / unit, worker.loaded / unit, worker.ended / unit
        loading = f"{worker.label}: start and model load, {worker.loaded - worker.started:,.1f} s"
        running = f"{worker.label}: {worker.status}, {worker.ended - worker.loaded:,.1f} s after the model loaded"
        parts.append(plot.row_bar(row, start, loaded, LOAD_COLOUR, loading))
        parts.append(plot.row_bar(row, loaded, ended, STATUS_COLOURS.get(worker.status, "#888888"), running))
    return _svg(720, plot.bottom + 44, "time per model and device", parts)


def chart_reuse(workers: Sequence[WorkerSummary]) -> str | None:
    """A bar per worker: unique sequences reused from earlier chunks, then those computed in this run."""
    if not workers:
        return None
    left = _rows_left_margin(workers)
    entries = [("reused from earlier chunks", REUSED_COLOUR, "box"), ("computed in this run", COMPUTED_COLOUR, "box")]
    legend, legend_height = _legend(entries, left, 28, 700 - left)
    x_ticks = _linear_ticks(max(w.reused + w.computed for w in workers), whole=True)
    plot = Plot(left, 36 + legend_height, 700 - left, 24 * len(workers), (0, x_ticks[-1]), (len(workers), 0))
    names = [(row + 0.5, _worker_name(w)) for row, w in enumerate(workers)]
    parts = legend + plot.axes(x_ticks, "unique sequences", names, grid="x")
    for row, worker in enumerate(workers):
        reused, done = worker.reused, worker.reused + worker.computed
        parts.append(plot.row_bar(row, 0, reused, REUSED_COLOUR, f"{worker.label}: {worker.reused:,} reused"))
        parts.append(plot.row_bar(row, reused, done, COMPUTED_COLOUR, f"{worker.label}: {worker.computed:,} computed"))
    return _svg(720, plot.bottom + 44, "unique sequences reused and computed, per worker", parts)


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
                "redone_in_fp32": w.redone_in_fp32,
                "peak_memory_bytes": w.peak_memory_bytes,
                "peak_memory_kind": w.peak_memory_kind,
                "out_of_memory_retries": w.out_of_memory_retries,
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


WORKER_COLUMNS = ("worker", "device", "precision", "status", "load s", "total s", "reused", "computed", "residues/s",
                  "windowed")  # fmt: skip


def _chart(svg: str | None, name: str) -> str:
    if svg is None:
        return f"<p class='none'>{html.escape(name)}: nothing to show (no worker computed anything in this run)</p>"
    return f"<figure>{svg}</figure>"


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
th {{ background: #f0f0f0; }} .none {{ color: #888; }} code {{ font-size: 0.95em; }}
svg {{ max-width: 100%; height: auto; }} figure {{ margin: 0.5em 0; }}
</style></head><body>
<h1>Embedding run report</h1>
<p><code>{html.escape(summary["config"])}</code>: <b>{html.escape(summary["status"])}</b>,
{summary["wall_seconds"]:,.1f} s ({html.escape(summary["started"])} → {html.escape(summary["ended"])}).
Python {v["python"]}, torch {v["torch"]}, transformers {v["transformers"]} (CUDA {v["cuda"]}),
{html.escape(v["platform"])}. The numbers are in <code>{SUMMARY_NAME}</code> beside this file.</p>
<h2>Inputs</h2>
{_table(("split", "proteins", "unique", "residues", "length min / p50 / p90 / p99 / max"), splits_rows)}
{_chart(chart_lengths(split_lengths, limits), "length histogram per split")}
<p>Red: proteins longer than a model's one-pass limit (dashed lines), embedded in overlapping windows by that model
(listed in each output's <code>meta["windowed"]</code>).</p>
<h2>Models</h2>
{_table(("key", "checkpoint", "model_name", "family", "layer", "devices", "identity", "status"), model_rows)}
<h2>Workers</h2>
{_table(WORKER_COLUMNS, worker_rows)}
<h3>Throughput over time</h3>
{_chart(chart_rates(workers), "residues per second over time")}
<h3>Time per model and device</h3>
{_chart(chart_timeline(workers), "time per model and device")}
<h3>Reused and computed</h3>
{_chart(chart_reuse(workers), "reused and computed")}
<h2>Outputs written</h2>
{_table(("file", "size"), output_rows) if output_rows else "<p class='none'>none in this run</p>"}
</body></html>
"""


def write_report(
    output_dir: Path,
    progress_paths: Iterable[Path],
    config_path: Path,
    splits: dict[str, list[str]],
    models: list[dict[str, Any]],
    started: float,
    exit_status: str,
) -> Path:
    """Collect the progress of the run's workers (`progress_paths`) of the run that began at `started` and write the
    report and summary (each atomically). `splits`: split → its sequences in input order; `models`: one dict per
    model (key, name, model_name, family, layer, devices, checkpoint, status). Returns the report's path."""
    from utils.files import atomic_write_bytes

    ended = time.time()
    progress = read_progress(progress_paths)
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
    split_lengths = {name: sequence_lengths(sequences) for name, sequences in splits.items()}
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output_dir / SUMMARY_NAME, (json.dumps(summary, indent=1) + "\n").encode())
    report = output_dir / REPORT_NAME
    atomic_write_bytes(report, render_html(summary, split_lengths, workers).encode())
    return report


def report_run(config: Any, splits: dict[str, Any], jobs: list[Any], started: float, status: str) -> None:
    """The job's last step (utils.running.local.run_job): the report of the run that began at `started`, for whatever
    was done. A report that cannot be written is a note, never a failure of the run."""
    from utils.engine.families import tool_model_name

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
    sequences = {name: records.sequences for name, records in splits.items()}
    paths = [order.progress_path for job in jobs for order in job.orders if order.progress_path is not None]
    try:
        path = write_report(config.output_dir, paths, config.path, sequences, models, started, status)
    except Exception as exc:  # noqa: BLE001 - the outputs are written; the report is only a picture of the run
        print(f"note: the run report could not be written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    for progress in paths:  # their numbers are in run_summary.json now; one file per run would pile up
        progress.unlink(missing_ok=True)
    print(f"report: {path}", file=sys.stderr)
