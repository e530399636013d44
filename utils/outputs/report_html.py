"""The run report's page: the summary's tables and four charts, drawn by matplotlib as inline SVG in one
self-contained HTML file (nothing fetched; it opens offline, from an e-mail or an artefact store).

matplotlib is imported when the charts are drawn, once, at the end of the run, never when a worker or the command
starts. Text stays text in the SVG (svg.fonttype none, no mathtext), so names are escaped by the SVG writer and read
back as they were.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.outputs.progress import WorkerSummary
from utils.outputs.report_text import Status, run_status
from utils.units import size_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HISTOGRAM_BINS = 40
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
LOAD_COLOUR = "#bbbbbb"
STATUS_COLOURS = {"done": "#4c9a5f", "interrupted": "#e0a030", "failed": "#d0473c"}
STATUS_BLOCK_COLOURS = {**STATUS_COLOURS, "notes": "#e0a030"}  # the status block's edge, by its Status.kind
ONE_PASS_COLOUR, WINDOWS_COLOUR = "#7a9cc6", "#d0473c"
REUSED_COLOUR, COMPUTED_COLOUR = "#7a9cc6", "#4c9a5f"
MARKERS_UP_TO = 100  # points per line; past that the markers merge into the line and only add bytes
# Text as <text> (searchable, escaped by the writer), names never read as $math$, no axes box on two sides
STYLE = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


# -- drawing --------------------------------------------------------------------------------------------------------
@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def _figure(width: float, height: float) -> Figure:
    """A figure of `width` × `height` inches, without pyplot (no GUI backend, no global figure list)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Figure, title: str) -> str:
    """The figure as one <svg> element to put inline in the page; `title` is drawn on top and is also the chart's
    accessible name (its <title>, which screen readers and hovering show)."""
    figure.suptitle(title, fontsize=11)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # without the XML declaration and doctype, which belong to a file
    opened = text.index(">") + 1
    return f"{text[:opened]}<title>{html.escape(title)}</title>{text[opened:]}"


def _number(value: float, _position: Any = None) -> str:
    """A tick label: thousands separated, at most two decimals, no trailing zeros; millions as "1.5M" (a GPU's
    residues/s) so that the label stays clear of the axis title beside it."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:,.2f}".rstrip("0").rstrip(".") + "M"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2 and 5 × 10^k inside [low, high], or only the powers of ten when that would crowd the axis; the two ends
    when not even two of those fall inside (a narrow range of lengths)."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks = [m * 10.0**d for d in decades for m in (1, 2, 5) if low <= m * 10.0**d <= high]
    if len(ticks) > 7:
        ticks = [t for t in ticks if math.log10(t).is_integer()]
    return ticks if len(ticks) >= 2 else [low, high]


def _time_unit(seconds: float) -> tuple[float, str]:
    """(divisor, axis label) for a time axis that spans `seconds`."""
    if seconds > 3 * 3600:
        return 3600.0, "hours since the run began"
    if seconds > 180:
        return 60.0, "minutes since the run began"
    return 1.0, "seconds since the run began"


def _worker_name(worker: WorkerSummary) -> str:
    return f"{worker.label} ({worker.device})"


def _legend(figure: Figure, entries: Sequence[tuple[str, str, str]]) -> None:
    """(label, colour, shape: box, line or dash) entries in one row below the plots."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=colour, label=label)
        if shape == "box"
        else Line2D([], [], color=colour, linestyle="--" if shape == "dash" else "-", label=label)
        for label, colour, shape in entries
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))


def _rows(figure: Figure, workers: Sequence[WorkerSummary], x_label: str) -> Any:
    """One axes with a row per worker, named on the left, top to bottom."""
    axes = figure.subplots()
    axes.set_yticks(range(len(workers)), [_worker_name(w) for w in workers])
    axes.set_ylim(len(workers) - 0.5, -0.5)
    axes.set_xlabel(x_label)
    axes.grid(axis="x", color="#e4e4e4")
    axes.set_axisbelow(True)
    return axes


# -- charts: each returns one <svg> element, or None when there is nothing to draw -----------------------------------
def chart_rates(workers: Iterable[WorkerSummary]) -> str | None:
    """Residues/s of each chunk over time, one line per worker."""
    drawn = [w for w in workers if w.rate]
    if not drawn:
        return None
    from matplotlib.ticker import FuncFormatter

    unit, time_label = _time_unit(max(w.ended for w in drawn))
    with _style():
        figure = _figure(7.2, 3.2)
        axes = figure.subplots()
        for index, worker in enumerate(drawn):
            times, rates = zip(*worker.rate, strict=True)
            axes.plot(
                np.asarray(times) / unit,
                rates,
                color=SERIES_COLOURS[index % len(SERIES_COLOURS)],
                linewidth=1.5,
                marker="o" if len(worker.rate) <= MARKERS_UP_TO else None,
                markersize=3,
                label=_worker_name(worker),
            )
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
        axes.set_xlabel(time_label)
        axes.set_ylabel("residues / s (per chunk)")
        axes.yaxis.set_major_formatter(FuncFormatter(_number))
        axes.grid(axis="y", color="#e4e4e4")
        figure.legend(loc="outside lower center", ncols=min(len(drawn), 3))
        return _svg(figure, "residues / s over time, per worker")


def chart_lengths(split_lengths: dict[str, np.ndarray], limits: dict[str, int]) -> str | None:
    """One histogram per split (log length axis, HISTOGRAM_BINS bins shared by all splits); the proteins past the
    shortest one-pass limit (they go through windows in at least that model) in red, each model's limit dashed.
    `split_lengths`: each split's lengths, sorted (utils.outputs.report.sorted_lengths): the bins are counted by
    binary search, with no array the size of the split."""
    if not split_lengths:
        return None
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    present = [lengths for lengths in split_lengths.values() if len(lengths)]
    low = max(1, min((int(lengths[0]) for lengths in present), default=1))
    high = max((int(lengths[-1]) for lengths in present), default=1) + 1
    edges = np.asarray([low * (high / low) ** (i / HISTOGRAM_BINS) for i in range(HISTOGRAM_BINS + 1)])
    shortest_limit = min(limits.values()) if limits else None
    by_limit: dict[int, list[str]] = {}
    for model, limit in limits.items():
        by_limit.setdefault(limit, []).append(model)
    shown_limits = [(limit, models) for limit, models in sorted(by_limit.items()) if low <= limit < high - 1]
    any_windows = shortest_limit is not None and any(int(lengths[-1]) > shortest_limit for lengths in present)
    entries = [("one pass", ONE_PASS_COLOUR, "box")]
    entries += [("windows (some model)", WINDOWS_COLOUR, "box")] if any_windows else []
    entries += [("a model's one-pass limit", WINDOWS_COLOUR, "dash")] if shown_limits else []
    with _style():
        figure = _figure(0.7 + 3.3 * len(split_lengths), 3.0)
        panels = figure.subplots(1, len(split_lengths), squeeze=False, sharex=True)[0]
        for index, (axes, (split, lengths)) in enumerate(zip(panels, split_lengths.items(), strict=True)):
            total, windowed = _bin_counts(lengths, edges, shortest_limit)
            # One filled outline per histogram (stairs), not a rectangle per bin: a fraction of the drawing time
            axes.stairs(total, edges, fill=True, color=ONE_PASS_COLOUR)
            if windowed.any():
                axes.stairs(windowed, edges, fill=True, color=WINDOWS_COLOUR)
            axes.set_xscale("log")
            axes.set_xlim(edges[0], edges[-1])
            axes.set_xticks(_log_ticks(edges[0], edges[-1]))
            axes.xaxis.set_major_formatter(FuncFormatter(_number))
            axes.xaxis.set_minor_formatter(NullFormatter())
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(axis="y", color="#e4e4e4")
            axes.set_axisbelow(True)
            axes.set_title(f"{split}: {len(lengths):,} proteins", fontweight="bold", fontsize=9)
            axes.set_xlabel("residues")
            if index == 0:
                axes.set_ylabel("proteins")
            for row, (limit, models) in enumerate(shown_limits):
                axes.axvline(limit, color=WINDOWS_COLOUR, linestyle="--", linewidth=1)
                right = limit < math.sqrt(edges[0] * edges[-1])  # the label on the side with more room
                # On a white ground: the label often crosses the red bars of the proteins past that very limit
                named = "every model" if len(models) == len(limits) > 1 else ", ".join(sorted(models))
                axes.text(limit, 0.97 - 0.09 * row, f" {named}: {limit:,} ", transform=axes.get_xaxis_transform(),
                          color=WINDOWS_COLOUR, fontsize=7, va="top", ha="left" if right else "right",
                          bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})  # fmt: skip
        _legend(figure, entries)
        return _svg(figure, "protein lengths per split")


def _bin_counts(lengths: np.ndarray, edges: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Proteins per bin of `edges` (the first and last bins open-ended), all and those longer than `limit`, from
    sorted integer `lengths`: a length is in bin i when it is at least edges[i] rounded up."""
    inner = np.ceil(edges[1:-1]).astype(np.int64)
    bounds = np.concatenate([[0], np.searchsorted(lengths, inner, side="left"), [len(lengths)]])
    total = np.diff(bounds)
    if limit is None:
        return total, np.zeros_like(total)
    cut = int(np.searchsorted(lengths, limit, side="right"))  # the first one past the limit
    windowed = bounds[1:] - np.maximum(bounds[:-1], cut)
    return total, np.maximum(windowed, 0)


def chart_timeline(workers: Sequence[WorkerSummary]) -> str | None:
    """A bar per worker: start-up and model load in grey, then embedding, coloured by how the worker ended."""
    if not workers:
        return None
    unit, time_label = _time_unit(max(w.ended for w in workers))
    statuses = list(dict.fromkeys(w.status for w in workers))
    with _style():
        figure = _figure(7.2, 1.4 + 0.3 * len(workers))
        axes = _rows(figure, workers, time_label)
        for row, worker in enumerate(workers):
            start, loaded, ended = worker.started / unit, worker.loaded / unit, worker.ended / unit
            axes.barh(row, loaded - start, left=start, height=0.6, color=LOAD_COLOUR)
            axes.barh(row, ended - loaded, left=loaded, height=0.6, color=STATUS_COLOURS.get(worker.status, "#888888"))
        axes.set_xlim(left=0)
        entries = [("start and model load", LOAD_COLOUR, "box")]
        _legend(figure, entries + [(status, STATUS_COLOURS.get(status, "#888888"), "box") for status in statuses])
        return _svg(figure, "time per model and device")


def chart_reuse(workers: Sequence[WorkerSummary]) -> str | None:
    """A bar per worker: unique sequences reused from earlier chunks, then those computed in this run."""
    if not workers:
        return None
    from matplotlib.ticker import MaxNLocator

    with _style():
        figure = _figure(7.2, 1.4 + 0.3 * len(workers))
        axes = _rows(figure, workers, "unique sequences")
        for row, worker in enumerate(workers):
            axes.barh(row, worker.reused, height=0.6, color=REUSED_COLOUR)
            axes.barh(row, worker.computed, left=worker.reused, height=0.6, color=COMPUTED_COLOUR)
        axes.set_xlim(left=0)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend(
            figure,
            [("reused from earlier chunks", REUSED_COLOUR, "box"), ("computed in this run", COMPUTED_COLOUR, "box")],
        )
        return _svg(figure, "unique sequences reused and computed, per worker")


# -- the page -------------------------------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


WORKER_COLUMNS = ("worker", "device", "precision", "status", "load s", "total s", "reused", "computed", "residues/s",
                  "windowed", "forward", "compiles (new, s)")  # fmt: skip


def _chart(svg: str | None, name: str) -> str:
    if svg is None:
        return f"<p class='none'>{html.escape(name)}: nothing to show (no worker computed anything in this run)</p>"
    return f"<figure>{svg}</figure>"


def _short_identity(identity: str) -> str:
    """'sha256:<64 hex digits>' → 'sha256:0e61381008d8…', enough to tell checkpoints apart (the whole identity is in
    the JSON): the whole one made the models table wider than the page."""
    kind, _, digest = identity.partition(":")
    return f"{kind}:{digest[:12]}…" if len(digest) > 16 else identity


def _status_block(status: Status) -> str:
    """What a reader must know first, in sentences, before any table or chart."""
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in status.notes)
    return (
        f"<div class='status' style='border-color: {STATUS_BLOCK_COLOURS[status.kind]}'>"
        f"<p><b>{html.escape(status.headline)}</b></p>{f'<ul>{notes}</ul>' if notes else ''}</div>"
    )


def store_section(path: str, rows: list[tuple]) -> str:
    """The chunk store after the run: its partitions, their size, and which this run used."""
    return f"""<h2>Chunk store</h2>
<p><code>{html.escape(path)}</code>: every vector computed, one partition per set of settings, shared by every run and
config that names it (a later run reuses what is here). <code>--prune-store</code> removes the partitions a config
does not use.</p>
{_table(("partition", "chunks", "size", "quarantined", "used by this run"), rows)}"""


def render_html(
    summary: dict[str, Any], split_lengths: dict[str, list[int]], workers: list[WorkerSummary], summary_name: str
) -> str:
    """The report page: the summary's tables and the four charts, in one self-contained HTML file. `summary_name`: the
    JSON file beside it that holds the same numbers."""
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
        (m["key"], m["name"], m["model_name"], m["family"], m["layer"], ", ".join(m["devices"]),
         _short_identity(m["checkpoint"]), m["status"])
        for m in summary["models"]
    ]  # fmt: skip
    worker_rows = [
        (w["label"], w["device"], w["precision"], w["status"], f"{w['load_seconds']:.1f}",
         f"{w['ended_seconds'] - w['started_seconds']:.1f}", f"{w['reused']:,} ({w['reused_chunks']} chunks)",
         f"{w['computed']:,} ({w['computed_chunks']} chunks)", f"{w['residues_per_second']:,.0f}",
         len(w["windowed_lengths"]), w["forward"] or "-",
         f"{w['compiles']} ({w['compiled_anew']} new, {w['compile_seconds']:.1f} s)" if w["compiles"] else "-")
        for w in summary["workers"]
    ]  # fmt: skip
    output_rows = [(o["file"], size_text(o["bytes"])) for o in summary["outputs"]]
    status = run_status(summary)
    store = summary.get("store") or {"path": "", "partitions": []}
    store_rows = [
        (p["directory"], f"{p['chunks']:,}", size_text(p["bytes"]), p["quarantined"] or "",
         "yes" if p["used_by_this_run"] else "no")
        for p in store["partitions"]
    ]  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Embedding run report: {status.word}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f0f0f0; }} .none {{ color: #888; }} code {{ font-size: 0.95em; }}
svg {{ max-width: 100%; height: auto; }} figure {{ margin: 0.5em 0; }}
.status {{ border-left: 0.4em solid; padding: 0.1em 1em; margin: 1em 0; background: #f7f7f7; }}
.status ul {{ padding-left: 1.2em; }} .status li {{ margin: 0.3em 0; }}
</style></head><body>
<h1>Embedding run report</h1>
{_status_block(status)}
<p><code>{html.escape(summary["config"])}</code>: {summary["wall_seconds"]:,.1f} s
({html.escape(summary["started"])} → {html.escape(summary["ended"])}).
Python {v["python"]}, torch {v["torch"]}, transformers {v["transformers"]} (CUDA {v["cuda"]}),
{html.escape(v["platform"])}. The numbers are in <code>{html.escape(summary_name)}</code> beside this file.</p>
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
{store_section(store["path"], store_rows) if "store" in summary else ""}
</body></html>
"""
