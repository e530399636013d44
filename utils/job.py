"""The local engine: a checked config → work orders → one worker process per order → one final file per split.

    config, splits, models = prepare(config_path)   # every check of the user's input; nothing loaded or written
    with OutputLock(config.output_dir):
        code = run_job(config, splits, models)      # plan, run the workers, merge, report → an exit code

Each model's unique sequences (duplicates across splits are embedded once) are sharded over its devices by
residues; each shard is one work order, run by one worker process (utils/worker.py) in a lane per device, so orders
on one device run one after another. Workers write checkpoint chunks under `{output_dir}/.chunks/{output_key}`;
when every order of a model finished, its chunks are merged into one file per split, in input order.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils import exits
from utils.config import Config, RunParams, load_config
from utils.errors import UserError
from utils.fasta import Records, Strings, read_fasta
from utils.ids import apply_id_format, uniprot_lookalikes
from utils.limits import Limits, device_limits
from utils.malloc import give_back_free_memory
from utils.preflight import ResolvedModel
from utils.report import progress_path, report_run
from utils.shards import Shard
from utils.unique import (
    UniqueSequences,
    digest_hex,
    hex_to_digests,
    share_sequences,
    shared_splits,
    shared_unique,
    unique_of,
)

if TYPE_CHECKING:
    from utils.gather import UniqueVectors
    from utils.store import ChunkStore


# -- checks -----------------------------------------------------------------------------------------------------------
def read_splits(config: Config) -> dict[str, Records]:
    """Every split's records; their sequences point into the job's unique set (utils.unique)."""
    splits, problems = {}, []
    for name, path in config.splits.items():
        try:
            splits[name] = apply_id_format(read_fasta(path), config.id_format, str(path))
        except UserError as exc:
            problems += exc.problems
    if problems:
        raise UserError(problems)
    unmapped = uniprot_lookalikes(splits.values(), config.id_format)
    if unmapped:
        print(f"note: {unmapped}", file=sys.stderr)
    shared = share_sequences(splits)[0]
    give_back_free_memory()  # the reading's and the deduplication's transient arrays
    return shared


def prepare(config_path: Path) -> tuple[Config, dict[str, Records], list[ResolvedModel]]:
    """Everything that can fail because of the user's input, before a model loads or a file is written.
    Raises UserError listing every problem found."""
    config = load_config(config_path)
    return (config, *prepare_inputs(config))


def prepare_inputs(
    config: Config, devices: bool = True, engine: bool = True
) -> tuple[dict[str, Records], list[ResolvedModel]]:
    """prepare's checks of a loaded config: paths, devices (unless `devices` is False: --merge and --set-aside run
    nothing on them), the engine (unless `engine` is False: nor does --dry-run), the FASTA splits, the models, the
    disk. Raises UserError listing every problem found."""
    from utils import preflight

    problems = preflight.check_paths(config)
    problems += preflight.check_devices(config) if devices else []
    problems += preflight.check_engine(config) if engine else []
    try:
        splits = read_splits(config)
    except UserError as exc:
        problems += exc.problems
        splits = {}
    models, model_problems = preflight.resolve_models(config)
    problems += model_problems
    if problems:
        raise UserError(problems)
    disk = preflight.check_disk(config, splits, models)
    if disk:
        raise UserError(disk)
    return splits, models


# -- plan -------------------------------------------------------------------------------------------------------------
def unique_sequences(splits: dict[str, Records]) -> Sequence[str]:
    """Each distinct sequence once, in order of first appearance across the run's splits."""
    return unique_of(splits).sequences


def shard_by_residues(lengths: Sequence[int], shards: int) -> list[np.ndarray]:
    """Balance residues across shards: longest first, each to the lightest shard so far. → indices per shard."""
    if shards == 1:
        return [np.arange(len(lengths))]
    groups: list[list[int]] = [[] for _ in range(shards)]
    load = [0] * shards
    for index in np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist():
        lightest = load.index(min(load))
        groups[lightest].append(index)
        load[lightest] += int(lengths[index])
    return [np.asarray(group, dtype=np.int64) for group in groups]


@dataclass(frozen=True)
class WorkOrder:
    """What one worker process embeds: one model (or one shard of it) on one device."""

    label: str  # the model key, with the shard when sharded
    model: ResolvedModel  # checkpoint, family, architecture; model.config has its precision and token budget
    run: RunParams  # the config's run_params, names unchanged
    device: str
    precision: str  # model.config.precision resolved for this device
    sequences: Sequence[str]  # this shard's unique sequences (packed: utils.fasta.Strings)
    chunk_settings: dict  # what produced the chunks (utils.preflight.chunk_settings)
    chunk_dir: Path
    log_path: Path
    bar_position: int = 0  # the progress bar's line: the order's lane
    owns_store: bool = True  # a run over the whole store may set aside chunks it cannot use; a shard (--shard) may not
    progress_path: Path | None = None  # this run's progress records for the run report (None: no report)

    def limits(self, memory_bytes: int | None = None) -> Limits:
        """Batch budgets and the longest one-pass protein on this order's device (utils.limits); `memory_bytes`
        stands in for the device's memory (the pre-flight check's --assume-device-memory-gb)."""
        return device_limits(
            self.model.arch,
            self.device,
            self.precision,
            batch_size=self.run.batch_size,
            max_tokens_per_batch=self.model.config.max_tokens_per_batch,  # the model's own, else run_params'
            max_residues=self.run.max_residues,
            memory_bytes=memory_bytes,
        )


@dataclass
class Job:
    """One model: its work orders (one per device it is sharded over) and how each worker ended."""

    model: ResolvedModel
    chunk_dir: Path
    chunk_settings: dict
    orders: list[WorkOrder] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what the runner saw go wrong (a worker that did not start)

    @property
    def finished(self) -> bool:
        return len(self.exit_codes) == len(self.orders) and all(code == exits.OK for code in self.exit_codes)

    @property
    def failed(self) -> bool:
        return any(code not in (exits.OK, exits.INTERRUPTED) for code in self.exit_codes)


def new_run_id() -> str:
    """Names this run's progress files: runs that share a log_dir (other configs, other output_dirs) never mix."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def plan_jobs(
    config: Config,
    splits: dict[str, Records],
    models: list[ResolvedModel],
    shard: Shard | None = None,
    run_id: str | None = None,
) -> list[Job]:
    """One Job per model; with `shard` (--shard I/N), only the unique sequences whose digest falls in that shard.
    `run_id`: when given (and the run reports), each order records its progress in a file named by it."""
    from utils import preflight
    from utils.encode import resolve_precision

    unique = unique_of(splits)
    if shard is not None:
        unique = unique.take(np.flatnonzero([shard.holds(digest_hex(d)) for d in unique.digests.tolist()]))
    jobs = []
    for model in models:
        devices = model.config.devices
        # The chunk directory and settings are also what the pre-flight disk check reads: one definition, there.
        job = Job(model, preflight.chunk_dir(config, model.config), preflight.chunk_settings(config, model))
        parts = [
            unique if len(devices) == 1 else unique.take(p) for p in shard_by_residues(unique.lengths(), len(devices))
        ]
        # An array task (--shard I/N) logs to a file of its own: tasks on several nodes share the log directory.
        task = f".task{shard.index}of{shard.count}" if shard is not None else ""
        for part, (device, part_unique) in enumerate(zip(devices, parts, strict=True)):
            sharded = len(devices) > 1
            label = f"{model.config.key}[{part}]" if sharded else model.config.key
            log_name = model.config.output_key + task + (f".shard{part}" if sharded else "")
            log_path = config.log_dir / f"{log_name}.log"
            # A shard writes no report, so no progress records either
            reported = run_id is not None and config.run.report and shard is None
            job.orders.append(
                WorkOrder(
                    label=label,
                    model=model,
                    run=config.run,
                    device=device,
                    precision=resolve_precision(model.config.precision, device),
                    sequences=part_unique.sequences,
                    chunk_settings=job.chunk_settings,
                    chunk_dir=job.chunk_dir,
                    log_path=log_path,
                    owns_store=shard is None,
                    progress_path=progress_path(log_path, run_id) if reported and run_id else None,
                )
            )
        jobs.append(job)
    return jobs


# -- run --------------------------------------------------------------------------------------------------------------
# Workers are forked from a server process that has imported these once. A spawned worker would import torch and
# transformers afresh (seconds of CPU per model); the server is started first thing (start_worker_server), so its
# imports run while this process still reads the config and the FASTA files. It never touches a GPU, so forking
# from it is safe for CUDA. Each worker watches this process and dies with it (utils.worker._die_with_main).
WORKER_PRELOAD = [
    "torch",
    "transformers",
    "transformers.modeling_utils",  # from_pretrained's machinery: seconds on first use, even for a tiny model
    "utils.worker",
]


def worker_context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def start_worker_server() -> None:
    """Start the process workers are forked from now, so that its imports overlap this process's checks."""
    from multiprocessing import forkserver

    worker_context()
    forkserver.ensure_running()


def _worker_process(order: WorkOrder, main_pid: int) -> None:
    from utils.worker import run_work_order

    sys.exit(run_work_order(order, main_pid))


class Interrupted(Exception):
    """A stop request seen between two final files of the merge."""


def note_in_log(path: Path, message: str) -> None:
    """A line the main process adds to a worker's log: how the worker ended, which the worker cannot write itself
    when a signal killed it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} main: {message}\n")
    except OSError:
        pass  # the log is a convenience; never fail the run for it


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Runner:
    """Runs work orders as processes: one lane per device, orders on the same device one after another.

    Stopping (SIGINT / SIGTERM): each worker is asked to finish its current batch and write its chunk. A worker that
    has not stopped after `grace_s` seconds, or any worker when a second signal comes, is killed (its current chunk is
    lost; finished chunks are kept). The handlers stay installed until the last final file is in place: a signal
    during the merge stops it between two files (run_job checks `stopping`).
    """

    def __init__(self, jobs: list[Job], grace_s: float = 30, on_all_started: Callable[[], None] | None = None):
        self.jobs = jobs
        self.grace_s = grace_s
        # Called once every order has its worker (each has a copy of its sequences): the job lets its own go then
        self.on_all_started = on_all_started
        self.unstarted = sum(len(job.orders) for job in jobs)
        self.context = worker_context()
        self.stopping = threading.Event()
        self.stop_requested_at: float | None = None
        self.killed = False
        self.running: set = set()
        self.lock = threading.Lock()

    def lanes(self) -> dict[str, list[tuple[Job, WorkOrder]]]:
        lanes: dict[str, list[tuple[Job, WorkOrder]]] = {}
        for job in self.jobs:
            for order in job.orders:
                lanes.setdefault(order.device, []).append((job, order))
        return lanes

    def _run_lane(self, position: int, items: list[tuple[Job, WorkOrder]]) -> None:
        for job, order in items:
            if self.stopping.is_set():
                job.exit_codes.append(exits.INTERRUPTED)
                continue
            worker_order = replace(order, bar_position=position)
            process = self.context.Process(target=_worker_process, args=(worker_order, os.getpid()))
            try:
                with self.lock:
                    process.start()
                    self.running.add(process)
                    self.unstarted -= 1
                    all_started = self.unstarted == 0
                if all_started and self.on_all_started is not None:
                    self.on_all_started()
            except (OSError, EOFError) as exc:  # EMFILE (RLIMIT_NOFILE), a worker server gone: this order fails
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                emfile = getattr(exc, "errno", None) == errno.EMFILE
                hint = "; raise the open-file limit (ulimit -n) and rerun" if emfile else ""
                job.problems.append(f"{order.label}: could not start a worker process ({reason}){hint}")
                note_in_log(order.log_path, f"could not start the worker process: {reason}")
                job.exit_codes.append(exits.FAILED)
                continue
            process.join()
            with self.lock:
                self.running.discard(process)
            if process.exitcode != exits.OK:
                note_in_log(order.log_path, f"worker {describe_exit(process.exitcode)}")
            job.exit_codes.append(process.exitcode)

    def stop(self, signum: int, _frame: object) -> None:
        if self.stopping.is_set():  # a second Ctrl-C: do not wait for anyone
            print("\nstopping: second signal; killed the workers (finished chunks are kept)", file=sys.stderr)
            self.kill_workers()
            return
        print("\nstopping: each worker finishes its current batch and keeps its finished chunks", file=sys.stderr)
        self.stop_requested_at = time.monotonic()
        self.stopping.set()
        with self.lock:
            for process in self.running:
                if process.pid is not None:
                    try:
                        process.terminate()
                    except (OSError, AttributeError):
                        pass

    def kill_workers(self) -> None:
        with self.lock:
            for process in self.running:
                if process.pid is not None:
                    try:
                        process.kill()
                        self.killed = True
                    except (OSError, AttributeError):
                        pass

    def _escalate_if_overdue(self) -> None:
        started = self.stop_requested_at
        if started is None or self.killed or time.monotonic() - started < self.grace_s:
            return
        with self.lock:
            waiting = bool(self.running)
        if waiting:
            print(
                f"\nstopping: workers did not stop within {self.grace_s:g} s; killed them (finished chunks are kept)",
                file=sys.stderr,
            )
            self.kill_workers()

    def run_all(self) -> None:
        """Every lane on a thread of its own; returns when every lane has ended (or was stopped)."""
        threads = [
            threading.Thread(target=self._run_lane, args=(position, items), daemon=True)
            for position, items in enumerate(self.lanes().values())
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # short waits keep the main thread responsive to signals
                self._escalate_if_overdue()
        if self.stopping.is_set():
            # A worker the stop request reached while it was still starting (before it installed its own handler)
            # dies of the signal, and one that did not stop in time was killed: an interruption, not a failure.
            stopped = (-signal.SIGTERM, -signal.SIGINT) + ((-signal.SIGKILL,) if self.killed else ())
            for job in self.jobs:
                job.exit_codes = [exits.INTERRUPTED if code in stopped else code for code in job.exit_codes]


# -- merge ------------------------------------------------------------------------------------------------------------
def merge_outputs(
    config: Config, splits: dict[str, Records], job: Job, stopping: threading.Event | None = None
) -> tuple[list[str], dict]:
    """A finished model's chunks → one final file per split, in input order. Raises Interrupted, between two
    files, once `stopping` is set: every file already in place is whole.

    Returns (one summary line per file, {split: float16 [N, D]}), the latter for the concatenated file."""
    from utils.gather import UniqueVectors, scratch_path
    from utils.store import ChunkStore

    model = job.model
    splits = shared_splits(splits)
    unique = unique_of(splits)
    store = ChunkStore(job.chunk_dir, job.chunk_settings, model.dim)
    scratch = scratch_path(store)
    try:
        # The vectors laid out by unique index on disk; each split's rows are gathered from there a block at a time
        vectors = UniqueVectors.scatter(store, unique, scratch)
        return _write_splits(config, splits, job, store, unique, vectors, stopping)
    finally:
        scratch.unlink(missing_ok=True)


def _write_splits(
    config: Config,
    splits: dict[str, Records],
    job: Job,
    store: ChunkStore,
    unique: UniqueSequences,
    vectors: UniqueVectors,
    stopping: threading.Event | None,
) -> tuple[list[str], dict]:
    from utils.families import tool_model_name
    from utils.output import h5_path, residues_h5_path, write_outputs

    model = job.model
    noted_unique = np.flatnonzero(np.isin(unique.digests, hex_to_digests(list(vectors.notes))))
    lines, merged = [], {}
    for split, records in splits.items():
        if stopping is not None and stopping.is_set():
            raise Interrupted
        positions = records.sequences.index  # type: ignore[attr-defined]  # shared_splits made them SharedSequences
        missing = np.flatnonzero(~vectors.filled[positions])
        if len(missing):
            example = records.ids[int(missing[0])]
            raise RuntimeError(f"model {model.config.key}: {len(missing)} protein(s) have no embedding, e.g. {example}")
        noted = np.flatnonzero(np.isin(positions, noted_unique)).tolist()
        notes = {records.ids[i]: vectors.notes[unique.hex_digest(int(positions[i]))] for i in noted}
        embeddings = vectors.rows(positions)
        windowed = {i: {k: v for k, v in n.items() if k != "redone"} for i, n in notes.items() if "windows" in n}
        redone = {i: n["redone"] for i, n in notes.items() if "redone" in n}
        meta = {
            "model": model.config.name,
            # ProtSpace's name for the model (protspace prepare needs it), with the layer when not the last
            "model_name": tool_model_name(model.family, model.arch, model.layer_index),
            "layer": model.layer_index,  # the hidden state pooled: 0 embeddings … layers (the last, after its norm)
            "layers": model.arch.layers,
            "model_key": model.config.key,
            "output_key": model.config.output_key,
            "family": model.family.label,
            "dim": model.dim,
            "precision": job.chunk_settings["precisions"],  # what the chunks were made with (--merge: read there)
            "devices": list(model.config.devices),
            "pooling": f"mean over residue token rows [{model.family.residue_offset}, "
            f"{model.family.residue_offset}+L): no special tokens, no prefix, no padding",
            # longer proteins go to windows (None: none by setting; a device too small still windows, noted per protein)
            "max_residues": job.chunk_settings["max_residues"],
            "windowed": windowed,
            "redone_in_fp32": redone,  # id → why (non-finite in fp16/bf16)
            "split": split,
            "checkpoint": model.identity,
            "headers": records.headers,  # aligned with ids; in HDF5 each dataset's "header" attribute
        }
        if model.family.licence:
            meta["licence"] = model.family.licence
        key = model.config.output_key
        write_outputs(config.output_dir, split, key, records.ids, embeddings, meta, config.run.output_format)
        if config.run.per_residue:
            write_residue_rows(store, records, residues_h5_path(h5_path(config.output_dir, split, key)), meta)
        if config.run.concatenate:
            merged[split] = embeddings.whole()
        note = f", {len(windowed)} embedded in windows (see meta['windowed'])" if windowed else ""
        note += f", {len(redone)} redone in fp32 (see meta['redone_in_fp32'])" if redone else ""
        lines.append(f"{split} {model.config.output_key}: {len(records)} proteins × {model.dim}{note}")
    return lines, merged


def write_residue_rows(store: ChunkStore, records: Records, path: Path, meta: dict) -> None:
    """Per-residue rows streamed chunk by chunk, since a whole job's would not fit in memory. The datasets are
    created empty in input order first, so the file still lists proteins in input order."""
    from utils.output import H5Writer
    from utils.unique import split_digests

    ids_by_digest: dict[str, list[str]] = {}
    with H5Writer(path, {**meta, "rows": "residue rows only, [L, D] float16 per protein"}) as writer:
        lengths = records.lengths().tolist()
        for protein_id, length, digest in zip(records.ids, lengths, split_digests(records).tolist(), strict=True):
            writer.reserve(protein_id, (length, meta["dim"]))
            ids_by_digest.setdefault(digest_hex(digest), []).append(protein_id)
        for digest, rows in store.residue_rows():
            for protein_id in ids_by_digest.pop(digest, ()):
                writer.fill(protein_id, rows)
        if ids_by_digest:  # raised inside the block, so no incomplete file is put in place
            raise RuntimeError(f"{path.name}: residue rows missing for {len(ids_by_digest)} sequence(s)")


def write_concatenated(
    config: Config, splits: dict[str, Records], jobs: list[Job], merged: dict[str, dict]
) -> list[str]:
    """All models side by side, in config order, from the matrices merge_outputs returned (`merged`: output_key →
    split → [N, D]); works for every output format."""
    from utils.families import tool_model_name
    from utils.output import CONCAT_KEY, concatenate, write_outputs

    lines = []
    for split, records in splits.items():
        keys = [job.model.config.output_key for job in jobs]
        embeddings, columns = concatenate([(key, merged[key][split]) for key in keys])
        meta = {
            "model_name": "+".join(tool_model_name(j.model.family, j.model.arch, j.model.layer_index) for j in jobs),
            "models": [job.model.config.name for job in jobs],
            "output_keys": keys,
            "families": [job.model.family.label for job in jobs],
            "split": split,
            "headers": records.headers,
        }
        ids = records.ids
        write_outputs(
            config.output_dir, split, CONCAT_KEY, ids, embeddings, meta, config.run.output_format, columns=columns
        )
        lines.append(f"{split} concat: {len(ids)} proteins × {embeddings.shape[1]}")
    return lines


# -- the whole job ----------------------------------------------------------------------------------------------------
def run_job(
    config: Config,
    splits: dict[str, Records],
    models: list[ResolvedModel],
    shard: Shard | None = None,
    actor_class: type | None = None,
) -> int:
    """Plan, run every worker (run_params.engine: local processes, or a Ray actor pool), merge each finished model,
    report. Returns an exit code (utils.exits). The caller holds the output directory's lock (shared for a shard).

    `shard`: embed only that shard's sequences into the chunk store and write no final file (`merge_job` does, once
    every shard has finished). `actor_class`: the Ray engine's actor (tests give one that fails on purpose)."""
    splits = shared_splits(splits)
    jobs = plan_jobs(config, splits, models, shard, run_id=new_run_id())
    claim_stores(config, jobs, shard)
    if config.run.engine == "ray":
        from utils.ray_engine import EmbedActor, RayRunner

        runner: Runner | RayRunner = RayRunner(jobs, config.run, actor_class or EmbedActor)
    else:
        runner = Runner(jobs, config.run.stop_grace_s, on_all_started=lambda: release_residues(splits, jobs))
    # Handled until the last final file is in place: a signal during the merge stops it between two files.
    previous = {s: signal.signal(s, runner.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    started_at = time.time()  # the run report keeps the workers' progress records from this moment on
    try:
        runner.run_all()
        release_residues(splits, jobs)  # the workers had them; from here on only lengths and digests are needed
        if shard is not None:
            return report_shard(config, jobs, shard, started)
        return finish_jobs(config, splits, jobs, started, started_at, runner.stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def claim_stores(config: Config, jobs: list[Job], shard: Shard | None) -> None:
    """Before any work, each model's chunk store is made this run's (utils.store.ChunkStore.claim): a shard refuses
    a store of other settings (UserError, every model's at once), a run over the whole store takes it; set-aside
    chunks of these settings come back."""
    from utils.store import ChunkStore

    reconcile = (
        f"To finish that job, set those settings back in {config.path}; to start over with these settings, run "
        f"`python generate_embeddings_t5.py --config {config.path} --set-aside` once (it moves the other chunks to "
        "set_aside/, and a run of their settings brings them back), then the shards"
    )
    problems = []
    for job in jobs:
        store = ChunkStore(job.chunk_dir, job.chunk_settings, job.model.dim)
        try:
            notes = store.claim(str(shard) if shard is not None else None, reconcile)
        except UserError as exc:
            problems += [f"model {job.model.config.key}: {problem}" for problem in exc.problems]
            continue
        for note in notes:
            print(f"note: model {job.model.config.key}: {note}", file=sys.stderr)
    if problems:
        raise UserError(problems)


def set_aside_job(config: Config, splits: dict[str, Records], models: list[ResolvedModel]) -> int:
    """--set-aside: claim every model's store for this config's settings and move the chunks it cannot use (other
    settings, damaged) into set_aside/, embedding nothing; shards of the new settings can then start."""
    from utils.store import ChunkStore

    for job in plan_jobs(config, splits, models):
        store = ChunkStore(job.chunk_dir, job.chunk_settings, job.model.dim)
        for note in store.claim(None, ""):
            print(f"note: model {job.model.config.key}: {note}", file=sys.stderr)
        done, report = store.done_digests(set_aside=True)
        for line in report.lines(f"model {job.model.config.key}"):
            print(f"note: {line}", file=sys.stderr)
        print(f"model {job.model.config.key}: {len(done)} sequences in chunks of these settings", file=sys.stderr)
    return exits.OK


def release_residues(splits: dict[str, Records], jobs: list[Job]) -> None:
    """Let the job's residues go (lengths and digests stay): once every worker has its copy, the main process
    needs them no more, and at a proteome's size they are a good part of its memory."""
    unique = shared_unique(splits)
    if unique is not None:
        unique.sequences.release()
    for job in jobs:
        for order in job.orders:
            if isinstance(order.sequences, Strings):  # a shard's own copy when a model runs on several devices
                order.sequences.release()
    give_back_free_memory()


def report_shard(config: Config, jobs: list[Job], shard: Shard, started: float) -> int:
    failed = [job for job in jobs if job.failed]
    for job in failed:
        print(f"error: model {job.model.config.key} failed in shard {shard}; see {config.log_dir}", file=sys.stderr)
    if failed:
        return exits.FAILED
    if not all(job.finished for job in jobs):
        print(f"interrupted: shard {shard}'s finished chunks are kept; rerun the same command", file=sys.stderr)
        return exits.INTERRUPTED
    embedded = sum(len(order.sequences) for order in jobs[0].orders) if jobs else 0
    print(
        f"shard {shard}: {embedded} unique sequences in the chunk store in {time.perf_counter() - started:.1f} s; "
        "when every shard has finished, run the same command with --merge instead of --shard",
        file=sys.stderr,
    )
    return exits.OK


def merge_job(config: Config, splits: dict[str, Records], models: list[ResolvedModel]) -> int:
    """--merge: the final files from the chunk store that the shards filled. Needs no device: the settings that the
    shards' machines decided (utils.preflight.machine_settings) are read from the chunks. Refuses (UserError: per
    model, why (damaged, other settings, renamed output_key) and a count with examples) before writing anything if
    any protein has no embedding yet."""
    from utils.preflight import machine_settings
    from utils.shards import merged_settings, missing_report, store_problems, stores_of_checkpoint
    from utils.store import ChunkStore

    started, started_at = time.perf_counter(), time.time()
    splits = shared_splits(splits)
    jobs = plan_jobs(config, splits, models)
    used = {model.output_key for model in config.models}
    problems = []
    for job in jobs:
        survey = ChunkStore(job.chunk_dir, job.chunk_settings).survey()
        job.chunk_settings = merged_settings(job.chunk_settings, machine_settings(config, job.model.config), survey)
        store = ChunkStore(job.chunk_dir, job.chunk_settings, job.model.dim)
        done, report = store.done_digests()
        have = np.isin(unique_of(splits).digests, done)
        missing_rows = [(r, np.flatnonzero(~have[r.sequences.index])) for r in splits.values()]
        count = sum(len(rows) for _, rows in missing_rows)
        if count:
            label = f"model {job.model.config.key}"
            renamed = stores_of_checkpoint(job.chunk_dir.parent, job.chunk_settings, used)
            problems += store_problems(label, store, report, renamed, config.path)
            examples = [records.ids[i] for records, rows in missing_rows for i in rows[:10].tolist()]
            problems.append(missing_report(examples, count, label))
        job.exit_codes = [exits.OK] * len(job.orders)
    if problems:
        raise UserError(problems)
    stopping = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stopping.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return finish_jobs(config, splits, jobs, started, started_at, stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def finish_jobs(
    config: Config,
    splits: dict[str, Records],
    jobs: list[Job],
    started: float,
    started_at: float,
    stopping: threading.Event | None = None,
) -> int:
    """Merge every finished model (and the concatenation when all finished), report, and return the exit code.
    `started`: perf_counter at the start; `started_at`: wall-clock time, from which the run report reads progress;
    `stopping`: set by a signal, which stops the merge between two files (each file in place is whole)."""
    failed = [job for job in jobs if job.failed]
    if failed:
        print(file=sys.stderr)  # a dead worker's progress bar may have left its line open
    try:
        summary = merge_finished(config, splits, jobs, stopping or threading.Event())
    except Interrupted:
        if config.run.report:
            report_run(config, splits, jobs, started_at, "interrupted")
        print("interrupted: the final files in place are whole, finished chunks are kept; rerun the same "
              "command to resume", file=sys.stderr)  # fmt: skip
        return exits.INTERRUPTED
    except OSError as exc:  # ENOSPC and the like, from h5py or torch.save: the chunks are all there
        where = exc.filename or config.output_dir
        print(
            f"error: writing the final files in {where}: {exc.strerror or exc}; free some space (or fix the "
            "directory) and rerun the same command to resume: finished chunks are kept",
            file=sys.stderr,
        )
        return exits.FAILED
    for line in summary:
        say(f"wrote {line}")
    for job in failed:
        for problem in job.problems:
            print(f"error: model {problem}", file=sys.stderr)
        print(
            f"error: model {job.model.config.key} failed; see {config.log_dir}/{job.model.config.output_key}*.log",
            file=sys.stderr,
        )
    interrupted = not failed and not all(job.finished for job in jobs)
    if config.run.report:
        report_run(config, splits, jobs, started_at, "failed" if failed else "interrupted" if interrupted else "done")
    if interrupted:
        print("interrupted: finished chunks are kept; rerun the same command to resume", file=sys.stderr)
        return exits.INTERRUPTED
    if failed:
        return exits.FAILED
    print(f"done in {time.perf_counter() - started:.1f} s; outputs in {config.output_dir}", file=sys.stderr)
    return exits.OK


def merge_finished(config: Config, splits: dict[str, Records], jobs: list[Job], stopping: threading.Event) -> list[str]:
    """Final files of every finished model (and the concatenated file when all finished) → summary lines."""
    summary, merged = [], {}
    for job in jobs:
        if job.finished:
            lines, embeddings = merge_outputs(config, splits, job, stopping)
            summary += lines
            if config.run.concatenate:
                merged[job.model.config.output_key] = embeddings
    if config.run.concatenate and all(job.finished for job in jobs):
        if stopping.is_set():
            raise Interrupted
        summary += write_concatenated(config, splits, jobs, merged)
    return summary


def say(line: str) -> None:
    """A line on stdout that may be closed (`| head`): the files are written, so that is no error. Python's docs:
    point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
