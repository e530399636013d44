"""What a run did, to look at: `{output_dir}/run_summary.json` (the numbers, plus the versions of Python, torch and
transformers and each checkpoint's identity) and `{output_dir}/run_report.html` (one self-contained file: charts drawn
by matplotlib as inline SVG; it opens offline).

The main process builds both once, at the end of the run, interrupted or not, from its own workers' progress records
(utils/outputs/progress.py; runs of other configs may share the log_dir), and then removes those records. The page
itself, charts included, is utils/outputs/report_html.py.
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from utils.inputs.fasta import sequence_lengths
from utils.outputs.progress import WorkerSummary, read_progress, summarise_worker

REPORT_NAME = "run_report.html"
SUMMARY_NAME = "run_summary.json"
MAX_ERROR_CHARS = 300  # of a worker's error in the report: its first line is what a reader needs
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")  # a record's time, as worker logs write it


def nearest_rank(sorted_values: Sequence[int], q: float) -> int:
    if not len(sorted_values):
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def unique_count(sequences: Sequence[str]) -> int:
    from utils.inputs.unique import SharedSequences

    if isinstance(sequences, SharedSequences):  # positions in the job's unique set
        return sequences.distinct()
    return len(set(sequences))


def sorted_lengths(sequences: Sequence[str]) -> np.ndarray:
    """A split's residues per protein, sorted, int32: the summary's figures and the report's histogram both read
    them (a proteome's split is millions of them: made once)."""
    return np.sort(sequence_lengths(sequences, np.int32))


def split_summary(sequences: Sequence[str], lengths: np.ndarray) -> dict[str, Any]:
    """`lengths`: the split's sorted_lengths."""
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


# -- the report -----------------------------------------------------------------------------------------------------
def build_summary(
    *,
    config_path: Path,
    splits: dict[str, list[str]],
    split_lengths: dict[str, np.ndarray],
    models: list[dict[str, Any]],
    workers: list[WorkerSummary],
    outputs: list[dict[str, Any]],
    started: float,
    ended: float,
    exit_status: str,
) -> dict[str, Any]:
    """The run's numbers as plain data (run_summary.json). `split_lengths`: each split's sorted_lengths."""
    return {
        "config": str(config_path),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "ended": datetime.fromtimestamp(ended, timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(ended - started, 3),
        "status": exit_status,
        "versions": versions(),
        "splits": {name: split_summary(sequences, split_lengths[name]) for name, sequences in splits.items()},
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
                "forward": w.forward,
                "forward_fallback": w.forward_fallback,
                "compiles": w.compiles,
                "compile_seconds": round(w.compile_seconds, 3),
                "compiled_anew": w.compiled_anew,
                "rate_over_time": [[round(t, 3), round(r, 1)] for t, r in w.rate],  # [seconds since start, residues/s]
            }
            for w in workers
        ],
        "outputs": outputs,
    }


def write_report(
    output_dir: Path,
    progress_paths: Iterable[Path],
    config_path: Path,
    splits: dict[str, list[str]],
    models: list[dict[str, Any]],
    started: float,
    exit_status: str,
    store: dict[str, Any] | None = None,
) -> Path:
    """Collect the progress of the run's workers (`progress_paths`) of the run that began at `started` and write the
    report and summary (each atomically). `splits`: split → its sequences in input order; `models`: one dict per
    model (key, name, model_name, family, layer, devices, checkpoint, status). Returns the report's path."""
    from utils.files import atomic_write_bytes
    from utils.outputs.report_html import render_html

    ended = time.time()
    progress = read_progress(progress_paths)
    workers = [summarise_worker(events, started) for events in progress.values()]
    workers.sort(key=lambda w: (w.device, w.started))
    split_lengths = {name: sorted_lengths(sequences) for name, sequences in splits.items()}
    summary = build_summary(
        config_path=config_path,
        splits=splits,
        split_lengths=split_lengths,
        models=models,
        workers=workers,
        outputs=output_table(output_dir, started),
        started=started,
        ended=ended,
        exit_status=exit_status,
    )
    if store is not None:
        summary["store"] = store
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output_dir / SUMMARY_NAME, (json.dumps(summary, indent=1) + "\n").encode())
    report = output_dir / REPORT_NAME
    atomic_write_bytes(report, render_html(summary, split_lengths, workers, SUMMARY_NAME).encode())
    return report


def worker_error(log_path: Path, since: float) -> str | None:
    """The last error a worker's log recorded at or after `since` (a log keeps the records of earlier runs): an ERROR
    record's message or, when a traceback follows it, the exception's line, which ends the traceback."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    error = None
    for i, line in enumerate(lines):
        stamp = LOG_TIME.match(line)
        if not stamp or " ERROR " not in line or time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) < since - 1:
            continue
        error = line.split(" ERROR ", 1)[1]
        if lines[i + 1 : i + 2] == ["Traceback (most recent call last):"]:
            error = next((text for text in lines[i + 2 :] if text and not text[0].isspace()), error)
    return error[:MAX_ERROR_CHARS] if error else None


def failure_reasons(job: Any, since: float) -> list[str]:
    """Why a model failed, as far as the main process (a worker that could not start) and the logs its workers wrote
    since the run began know it."""
    reasons = list(job.problems)
    for order in job.orders:
        error = worker_error(order.log_path, since)
        if error:
            reasons.append(f"{order.label}: {error}" if len(job.orders) > 1 else error)
    return reasons


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
            "problems": failure_reasons(job, started) if job.failed else [],
            "log": f"{config.log_dir}/{model.config.output_key}*.log",
            # why proteins went through windows (utils.outputs.report_text.window_reason): the limit set, or the model's
            "max_residues": {"set": config.run.max_residues, "model": model.arch.max_residues},
        })  # fmt: skip
    sequences = {name: records.sequences for name, records in splits.items()}
    paths = [order.progress_path for job in jobs for order in job.orders if order.progress_path is not None]
    try:
        store = store_summary(config.store, [settings for job in jobs for settings in job.partitions()])
        path = write_report(config.output_dir, paths, config.path, sequences, models, started, status, store)
    except Exception as exc:  # noqa: BLE001 - the outputs are written; the report is only a picture of the run
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        print(f"note: the run report could not be written ({reason}); the workers' logs say what they did",
              file=sys.stderr)  # fmt: skip
        path = None
    for progress in paths:  # in run_summary.json now, or lost with the report: either way one file per run piles up
        progress.unlink(missing_ok=True)
    if path is not None:
        print(f"report: {path}", file=sys.stderr)


def store_summary(root: Path, used: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunk store after the run: each partition with its chunks and bytes, and whether this run used it."""
    from utils.running.chunks import fingerprint
    from utils.running.store import partitions

    mine = {fingerprint(settings) for settings in used}
    return {
        "path": str(root),
        "partitions": [
            {
                "directory": p.directory.name,
                "settings": p.settings,
                "chunks": p.chunks,
                "bytes": p.bytes,
                "quarantined": p.quarantined,
                "used_by_this_run": p.fingerprint in mine,
            }
            for p in partitions(root)
        ],
    }
