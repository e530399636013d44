"""Workers' progress records: what the run report is drawn from.

Each worker writes JSON lines to `{log_dir}/{log name}.{run id}.progress.jsonl` (ProgressLog: one line when it
starts, when the model has loaded, per checkpoint chunk written, and when it ends), so recording costs the run nothing
but a flush per chunk. At the end of the run, read_progress and summarise_worker turn one run's files into a
WorkerSummary per worker (utils/outputs/report.py writes the report from them), and the files go.

A run killed with -9 cannot remove its files: the main process holds a lock (flock) on each of its run's files from
before its workers start (ProgressHold), the kernel drops the locks of a process however it dies, and every run
removes the files in its log_dir whose lock is free (runs of other configs may share the log_dir: theirs are held).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PROGRESS_SUFFIX = ".progress.jsonl"


def progress_path(log_path: Path, run_id: str) -> Path:
    """The progress file of one run's worker, beside the worker's log file."""
    return log_path.with_name(f"{log_path.stem}.{run_id}{PROGRESS_SUFFIX}")


class ProgressHold:
    """The main process's locks on its run's progress files (`paths`), from before the workers start until
    release(); made after the files in `log_dir` that no live run holds (left by runs killed with -9) are removed."""

    def __init__(self, log_dir: Path, paths: Iterable[Path]):
        paths = list(paths)
        self.handles: list[IO[str]] = [_held(path) for path in paths]
        if log_dir.is_dir():
            for path in log_dir.glob(f"*{PROGRESS_SUFFIX}"):
                if path not in paths:
                    _remove_if_unheld(path)

    def release(self) -> None:
        for handle in self.handles:
            handle.close()  # the lock goes with it


def _held(path: Path) -> IO[str]:
    """`path` created (or kept) and locked; a sweep by another run may remove it between the open and the lock: then
    again, until the locked file is the one at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: the file is this run's all the same, only unguarded
            return handle
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _remove_if_unheld(path: Path) -> None:
    try:
        handle = open(path, "a", encoding="utf-8")
    except OSError:
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live run (or no locks on this filesystem: then nothing is removed)
            return
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                path.unlink()
        except FileNotFoundError:
            pass


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


# -- per worker --------------------------------------------------------------------------------------------------------
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
    forward_fallback: str = ""  # why the configured kernel did not run (it failed its check or a batch), or ""
    compiles: int = 0  # graphs the compiler traced (FlexAttention: one per row length), cache hits included
    compile_seconds: float = 0.0
    compiled_anew: int = 0  # kernels built because the compile cache did not hold them
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
        elif kind == "forward":  # again when a kernel failed mid-run and the next one took over: the last one counts
            worker.forward = event.get("path", "")
            worker.forward_fallback = event.get("fallback", "")
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
        if "compiles" in event:  # so far, in the worker
            worker.compiles = max(worker.compiles, event["compiles"])
            worker.compile_seconds = max(worker.compile_seconds, event.get("compile_seconds", 0.0))
            worker.compiled_anew = max(worker.compiled_anew, event.get("compiled_anew", 0))
    if worker.status == "running":
        worker.status = "failed"  # no end event: the process died
    return worker
