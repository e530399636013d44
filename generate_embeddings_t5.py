#!/usr/bin/env python
"""Protein language-model embeddings for every FASTA split and model in a config.

    python generate_embeddings_t5.py --config config_t5.yaml

Plans model × split jobs, runs one worker process per model (or per shard) on its device, merges the workers'
checkpoint chunks into one file per split and model, in input order, keyed by protein id. Rerun the same command
after a crash or Ctrl-C to resume. Exit codes: 0 done, 1 a model failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from utils import worker
from utils.config import Config, load_config
from utils.errors import UserError
from utils.fasta import Record, read_fasta
from utils.ids import apply_id_format
from utils.preflight import ResolvedModel
from utils.store import OutputLock, sequence_digest
from utils.worker import WorkOrder

BAD_INPUT, MODEL_FAILED, INTERRUPTED_EXIT = 2, 1, 130


def read_splits(config: Config) -> dict[str, list[Record]]:
    splits, problems = {}, []
    for name, path in config.splits.items():
        try:
            splits[name] = apply_id_format(read_fasta(path), config.id_format, str(path))
        except UserError as exc:
            problems += exc.problems
    if problems:
        raise UserError(problems)
    return splits


def prepare(config_path: Path):
    """Everything that can fail because of the user's input, before a model loads or a file is written."""
    from utils import preflight

    config = load_config(config_path)
    problems = preflight.check_paths(config) + preflight.check_devices(config)
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
    return config, splits, models


def unique_sequences(splits: dict[str, list[Record]]) -> list[str]:
    """Each distinct sequence once, in order of first appearance across the run's splits."""
    return list(dict.fromkeys(r.sequence for records in splits.values() for r in records))


def shard_by_residues(sequences: list[str], shards: int) -> list[list[str]]:
    """Balance residues across shards: longest first, each to the lightest shard so far."""
    groups: list[list[str]] = [[] for _ in range(shards)]
    load = [0] * shards
    for sequence in sorted(sequences, key=len, reverse=True):
        lightest = load.index(min(load))
        groups[lightest].append(sequence)
        load[lightest] += len(sequence)
    return groups


@dataclass
class Job:
    """One model: its work orders (one per device it is sharded over) and how each worker ended."""

    model: ResolvedModel
    orders: list[WorkOrder] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return len(self.exit_codes) == len(self.orders) and all(code == 0 for code in self.exit_codes)

    @property
    def failed(self) -> bool:
        return any(code not in (0, worker.INTERRUPTED) for code in self.exit_codes)

    merged: dict = field(default_factory=dict)  # split → float16 [N, D], kept for the concatenated file


def plan_jobs(config: Config, splits: dict[str, list[Record]], models: list) -> list[Job]:
    from utils import preflight
    from utils.encode import resolve_precision

    sequences = unique_sequences(splits)
    jobs = []
    for model in models:
        chunk_dir = preflight.chunk_dir(config, model.config)
        devices = model.config.devices
        job = Job(model)
        shards = shard_by_residues(sequences, len(devices))
        for shard, (device, shard_sequences) in enumerate(zip(devices, shards, strict=True)):
            label = model.config.key if len(devices) == 1 else f"{model.config.key}[{shard}]"
            log_name = model.config.output_key + (f".shard{shard}" if len(devices) > 1 else "")
            job.orders.append(
                WorkOrder(
                    label=label,
                    model_name=model.source,
                    family=model.family.name,
                    arch=model.arch,
                    device=device,
                    precision=resolve_precision(model.config.precision, device),
                    token_budget=model.config.max_tokens_per_batch,
                    max_items=config.run.batch_size,
                    max_residues=config.run.max_residues,
                    window_overlap=config.run.window_overlap,
                    per_residue=config.run.per_residue,
                    batches_per_chunk=config.run.save_every_n_batches,
                    chunk_dir=chunk_dir,
                    chunk_settings=preflight.chunk_settings(config, model),
                    sequences=tuple(shard_sequences),
                    log_path=config.log_dir / f"{log_name}.log",
                    bar_position=0,
                    seed=config.run.seed,
                )
            )
        jobs.append(job)
    return jobs


def _worker_main(order: WorkOrder) -> None:
    sys.exit(worker.run(order))


class Runner:
    """Runs work orders as processes: one lane per device, orders on the same device one after another."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs
        self.context = multiprocessing.get_context("spawn")
        self.stopping = threading.Event()
        self.running: set = set()
        self.lock = threading.Lock()

    def lanes(self) -> dict[str, list[tuple[Job, object]]]:
        lanes: dict[str, list] = {}
        for job in self.jobs:
            for order in job.orders:
                lanes.setdefault(order.device, []).append((job, order))
        return lanes

    def _run_lane(self, position: int, items: list) -> None:
        from dataclasses import replace

        for job, order in items:
            if self.stopping.is_set():
                job.exit_codes.append(worker.INTERRUPTED)
                continue
            process = self.context.Process(target=_worker_main, args=(replace(order, bar_position=position),))
            with self.lock:
                process.start()
                self.running.add(process)
            process.join()
            with self.lock:
                self.running.discard(process)
            job.exit_codes.append(process.exitcode)

    def stop(self, signum: int, _frame: object) -> None:
        if not self.stopping.is_set():
            print("\nstopping: each worker finishes its current batch and keeps its finished chunks", file=sys.stderr)
        self.stopping.set()
        with self.lock:
            for process in self.running:
                if process.pid is not None:
                    try:
                        process.terminate()
                    except (OSError, AttributeError):
                        pass

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._run_lane, args=(position, items), daemon=True)
            for position, items in enumerate(self.lanes().values())
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # short waits keep the main thread responsive to signals


def merge_outputs(config: Config, splits: dict[str, list[Record]], job: Job) -> list[str]:
    """Chunks → one final file per split, in input order; returns one summary line per file."""
    import torch

    from utils.families import tool_model_name
    from utils.output import h5_path, residues_h5_path, write_outputs
    from utils.store import ChunkStore

    model = job.model
    store = ChunkStore(job.orders[0].chunk_dir, job.orders[0].chunk_settings, model.dim)
    found, _ = store.load()
    lines = []
    for split, records in splits.items():
        rows = [found.get(sequence_digest(r.sequence)) for r in records]
        missing = [r.id for r, row in zip(records, rows, strict=True) if row is None]
        if missing:
            example = missing[0]
            raise RuntimeError(f"model {model.config.key}: {len(missing)} protein(s) have no embedding, e.g. {example}")
        ids = [r.id for r in records]
        embeddings = torch.stack([row.pooled for row in rows]).to(torch.float16)
        notes = {r.id: row.note for r, row in zip(records, rows, strict=True) if row.note}
        windowed = {i: {k: v for k, v in n.items() if k != "redone"} for i, n in notes.items() if "windows" in n}
        redone = {i: n["redone"] for i, n in notes.items() if "redone" in n}
        meta = {
            "model": model.config.name,
            "model_name": tool_model_name(model.family, model.arch),  # ProtSpace's name: protspace prepare needs it
            "model_key": model.config.key,
            "output_key": model.config.output_key,
            "family": model.family.label,
            "dim": model.dim,
            "precision": sorted({o.precision for o in job.orders}),
            "devices": list(model.config.devices),
            "pooling": f"mean over residue token rows [{model.family.residue_offset}, "
            f"{model.family.residue_offset}+L): no special tokens, no prefix, no padding",
            "windowed": windowed,
            "redone_in_fp32": redone,  # id → why (non-finite in fp16/bf16)
            "split": split,
            "checkpoint": model.identity,
            "headers": [r.header for r in records],  # aligned with ids; in HDF5 each dataset's "header" attribute
        }
        if model.family.licence:
            meta["licence"] = model.family.licence
        key = model.config.output_key
        write_outputs(config.output_dir, split, key, ids, embeddings, meta, config.run.output_format)
        if config.run.per_residue:
            write_residue_rows(store, records, residues_h5_path(h5_path(config.output_dir, split, key)), meta)
        if config.run.concatenate:
            job.merged[split] = embeddings
        note = f", {len(windowed)} embedded in windows (see meta['windowed'])" if windowed else ""
        note += f", {len(redone)} redone in fp32 (see meta['redone_in_fp32'])" if redone else ""
        lines.append(f"{split} {model.config.output_key}: {len(ids)} proteins × {model.dim}{note}")
    return lines


def write_residue_rows(store, records: list[Record], path: Path, meta: dict) -> None:
    """Per-residue rows streamed chunk by chunk, since a whole job's would not fit in memory. The datasets are
    created empty in input order first, so the file still lists proteins in input order."""
    from utils.output import H5Writer

    ids_by_digest: dict[str, list[str]] = {}
    with H5Writer(path, {**meta, "rows": "residue rows only, [L, D] float16 per protein"}) as writer:
        for record in records:
            writer.reserve(record.id, (len(record.sequence), meta["dim"]))
            ids_by_digest.setdefault(sequence_digest(record.sequence), []).append(record.id)
        for digest, rows in store.residue_rows():
            for protein_id in ids_by_digest.pop(digest, ()):
                writer.fill(protein_id, rows)
        if ids_by_digest:  # raised inside the block, so no incomplete file is put in place
            raise RuntimeError(f"{path.name}: residue rows missing for {len(ids_by_digest)} sequence(s)")


def write_concatenated(config: Config, splits: dict[str, list[Record]], jobs: list[Job]) -> list[str]:
    """All models side by side, in config order, from the embeddings merge_outputs kept: works for every format."""
    from utils.families import tool_model_name
    from utils.output import CONCAT_KEY, concatenate, write_outputs

    lines = []
    for split, records in splits.items():
        embeddings, columns = concatenate([(job.model.config.output_key, job.merged[split]) for job in jobs])
        meta = {
            "model_name": "+".join(tool_model_name(job.model.family, job.model.arch) for job in jobs),
            "models": [job.model.config.name for job in jobs],
            "output_keys": [job.model.config.output_key for job in jobs],
            "families": [job.model.family.label for job in jobs],
            "split": split,
            "headers": [r.header for r in records],
        }
        ids = [r.id for r in records]
        write_outputs(
            config.output_dir, split, CONCAT_KEY, ids, embeddings, meta, config.run.output_format, columns=columns
        )
        lines.append(f"{split} concat: {len(ids)} proteins × {embeddings.shape[1]}")
    return lines


def run(config: Config, splits: dict[str, list[Record]], models: list) -> int:
    jobs = plan_jobs(config, splits, models)
    runner = Runner(jobs)
    previous = {s: signal.signal(s, runner.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    try:
        runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if runner.stopping.is_set():
        # A worker the stop request reached while it was still starting (before it installed its own handler)
        # dies of the signal: that is an interruption, not a failure of the model.
        for job in jobs:
            job.exit_codes = [
                worker.INTERRUPTED if code in (-signal.SIGTERM, -signal.SIGINT) else code for code in job.exit_codes
            ]
    failed = [job for job in jobs if job.failed]
    summary = []
    for job in jobs:
        if job.finished:
            summary += merge_outputs(config, splits, job)
    if config.run.concatenate and all(job.finished for job in jobs):
        summary += write_concatenated(config, splits, jobs)
    for line in summary:
        print(f"wrote {line}")
    for job in failed:
        print(
            f"error: model {job.model.config.key} failed; see {config.log_dir}/{job.model.config.output_key}*.log",
            file=sys.stderr,
        )
    if not failed and not all(job.finished for job in jobs):
        print("interrupted: finished chunks are kept; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED_EXIT
    print(f"done in {time.perf_counter() - started:.1f} s; outputs in {config.output_dir}", file=sys.stderr)
    return MODEL_FAILED if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config_t5.yaml"), help="YAML config (see README)")
    args = parser.parse_args(argv)
    try:
        config, splits, models = prepare(args.config)
        with OutputLock(config.output_dir):
            return run(config, splits, models)
    except UserError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:  # during the checks, before any worker started: nothing was written
        print("\ninterrupted before any work started; rerun the same command to start", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
