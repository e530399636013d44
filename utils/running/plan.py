"""Plan: the config's splits → each distinct sequence once → work orders, one per model and device.

    config, splits, models = prepare(config_path)   # every check of the user's input; nothing loaded or written
    jobs = plan_jobs(config, splits, models)         # one Job per model, one WorkOrder per device it runs on

Each model's unique sequences (duplicates across splits are embedded once) are sharded over its devices by
residues; each shard is one work order, which a worker (utils/running/worker.py, or a Ray actor) embeds into the
partition of the chunk store (utils/running/store.py) that its settings on its device name. The runners
(utils/running/local.py, ray_engine.py) and the merge (utils/running/merge.py) build on these records; this module
imports none of them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils import exits
from utils.checks.resolve import ResolvedModel
from utils.engine.limits import Limits, device_limits
from utils.errors import UserError
from utils.inputs.config import load_config
from utils.inputs.fasta import Records
from utils.inputs.keys import Config, RunParams
from utils.inputs.reading import Keep, read_fasta_splits
from utils.inputs.spill import Spill
from utils.inputs.unique import digest_hex, unique_of
from utils.malloc import give_back_free_memory
from utils.outputs.progress import progress_path
from utils.running.shards import Shard


# -- checks -----------------------------------------------------------------------------------------------------------
def read_splits(config: Config, keep: Keep | None = None) -> dict[str, Records]:
    """Every split's records (what `keep` asks for); their sequences point into the job's unique set."""
    splits, note = read_fasta_splits(config.splits, config.id_format, keep)
    if note:
        print(f"note: {note}", file=sys.stderr)
    give_back_free_memory()  # the reading's and the deduplication's transient arrays
    return splits


@contextmanager
def input_spill(config: Config, shard: Shard | None, merge: bool) -> Iterator[Keep | None]:
    """What a run keeps of its input (utils.inputs.reading.Keep): residues and header lines in scratch files in the
    output directory (which the caller holds the lock of), not in memory; a shard only its own proteins' residues,
    --merge only header lines. The files go when the run ends (a killed run's, when the next run takes the lock)."""
    if not config.output_dir.is_dir():  # refused by the checks that follow: nothing to spill into
        yield None
        return
    spill = Spill(config.output_dir, residues=not merge, headers=shard is None)
    try:
        yield Keep(belongs=shard.holds if shard is not None else None, residues=not merge, spill=spill)
    finally:
        spill.close()


def prepare(config_path: Path) -> tuple[Config, dict[str, Records], list[ResolvedModel]]:
    """Everything that can fail because of the user's input, before a model loads or a file is written.
    Raises UserError listing every problem found."""
    config = load_config(config_path)
    return (config, *prepare_inputs(config))


def prepare_inputs(
    config: Config, devices: bool = True, engine: bool = True, keep: Keep | None = None
) -> tuple[dict[str, Records], list[ResolvedModel]]:
    """prepare's checks of a loaded config: paths, devices (unless `devices` is False: --merge runs nothing on
    them), the engine (unless `engine` is False: nor does --dry-run), the FASTA splits (what `keep` asks to keep of
    them: utils.inputs.reading), the models, the disk. Raises UserError listing every problem found."""
    from utils.checks import preflight, resolve

    problems = preflight.check_paths(config)
    problems += preflight.check_devices(config) if devices else []
    problems += preflight.check_engine(config) if engine else []
    try:
        splits = read_splits(config, keep)
    except UserError as exc:
        problems += exc.problems
        splits = {}
    models, model_problems = resolve.resolve_models(config)
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
    sequences: Sequence[str]  # this shard's unique sequences (packed: utils.inputs.fasta.Strings)
    chunk_settings: dict  # what decides its vectors: its partition of the store (utils.checks.preflight.chunk_settings)
    store_dir: Path  # the chunk store (paths.store_dir)
    log_path: Path
    bar_position: int = 0  # the progress bar's line: the order's lane
    progress_path: Path | None = None  # this run's progress records for the run report (None: no report)
    run_id: str = ""  # on every line of the worker's log: runs of other configs may share the log file

    def limits(self, memory_bytes: int | None = None) -> Limits:
        """Batch budgets and the longest one-pass protein on this order's device (utils.engine.limits); `memory_bytes`
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
    store_dir: Path
    orders: list[WorkOrder] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what the runner saw go wrong (a worker that did not start)
    read_from: list[dict] = field(default_factory=list)  # --merge's choice of partitions; else the orders' own

    def partitions(self) -> list[dict]:
        """The settings of the store partitions this model's vectors come from, each once: its orders' (one per
        precision its devices run in), or those --merge found the shards wrote (read_from)."""
        if self.read_from:
            return self.read_from
        found: list[dict] = []
        for order in self.orders:
            if order.chunk_settings not in found:
                found.append(order.chunk_settings)
        return found

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
    from utils.checks import preflight
    from utils.engine.encode import resolve_precision

    unique = unique_of(splits)
    if shard is not None:
        unique = unique.take(np.flatnonzero([shard.holds(digest_hex(d)) for d in unique.digests.tolist()]))
    jobs = []
    for model in models:
        devices = model.config.devices
        job = Job(model, config.store)
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
                    # The partition is also what the pre-flight disk check reads: one definition, there.
                    chunk_settings=preflight.chunk_settings(config, model, device),
                    store_dir=config.store,
                    log_path=log_path,
                    progress_path=progress_path(log_path, run_id) if reported and run_id else None,
                    run_id=run_id or "",
                )
            )
        jobs.append(job)
    return jobs
