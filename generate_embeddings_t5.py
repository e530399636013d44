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

from utils.config import Config, load_config
from utils.errors import UserError
from utils.fasta import Record, read_fasta
from utils.store import OutputLock, sequence_digest

BAD_INPUT, MODEL_FAILED, INTERRUPTED_EXIT = 2, 1, 130


def read_splits(config: Config) -> dict[str, list[Record]]:
    splits, problems = {}, []
    for name, path in config.splits.items():
        try:
            splits[name] = read_fasta(path)
        except UserError as exc:
            problems += exc.problems
    if problems:
        raise UserError(problems)
    return splits


def prepare(config_path: Path):
    """Everything that can fail because of the user's input, before a model loads or a file is written."""
    from utils import preflight

    config = load_config(config_path)
    problems = preflight.check_devices(config)
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


def model_fingerprint(config: Config, model) -> str:
    from utils.encode import resolve_precision
    from utils.store import fingerprint

    precisions = sorted({resolve_precision(model.config.precision, d) for d in model.config.devices})
    return fingerprint(
        {
            "identity": model.identity,
            "name": model.config.name,
            "family": model.family,
            "precisions": precisions,
            "max_residues": config.run.max_residues,
            "window_overlap": config.run.window_overlap,
            "per_residue": config.run.per_residue,
            "format": 1,
        }
    )


@dataclass
class Job:
    model: object  # ResolvedModel
    orders: list = field(default_factory=list)
    exit_codes: list = field(default_factory=list)


def plan_jobs(config: Config, splits: dict[str, list[Record]], models: list) -> list[Job]:
    from utils.encode import resolve_precision
    from utils.worker import WorkOrder

    sequences = unique_sequences(splits)
    jobs = []
    for model in models:
        chunk_dir = config.output_dir / ".chunks" / model.config.output_key
        devices = model.config.devices
        job = Job(model)
        for shard, (device, shard_sequences) in enumerate(zip(devices, shard_by_residues(sequences, len(devices)))):
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
                    fingerprint=model_fingerprint(config, model),
                    sequences=tuple(shard_sequences),
                    log_path=config.log_dir / f"{log_name}.log",
                    bar_position=0,
                    seed=config.run.seed,
                )
            )
        jobs.append(job)
    return jobs


def _worker_main(order) -> None:
    from utils import worker

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
                job.exit_codes.append(INTERRUPTED_EXIT)
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
            print("\nstopping: finishing the current batch of each worker and keeping finished chunks ...", file=sys.stderr)
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

    from utils.output import h5_path, pt_path, write_h5, write_pt
    from utils.store import ChunkStore

    model = job.model
    store = ChunkStore(config.output_dir / ".chunks" / model.config.output_key, job.orders[0].fingerprint)
    found, _ = store.load()
    lines = []
    for split, records in splits.items():
        rows = [found.get(sequence_digest(r.sequence)) for r in records]
        missing = [r.id for r, row in zip(records, rows, strict=True) if row is None]
        if missing:
            raise RuntimeError(f"model {model.config.key}: no embedding for {len(missing)} protein(s), e.g. {missing[0]}")
        ids = [r.id for r in records]
        embeddings = torch.stack([row.pooled for row in rows]).to(torch.float16)
        windowed = {r.id: row.note for r, row in zip(records, rows, strict=True) if row.note}
        meta = {
            "model": model.config.name,
            "model_key": model.config.key,
            "output_key": model.config.output_key,
            "family": model.family.label,
            "dim": model.dim,
            "precision": sorted({o.precision for o in job.orders}),
            "devices": list(model.config.devices),
            "pooling": f"mean over residue token rows [{model.family.residue_offset}, "
            f"{model.family.residue_offset}+L): no special tokens, no prefix, no padding",
            "windowed": windowed,
            "split": split,
            "checkpoint": model.identity,
        }
        if model.family.licence:
            meta["licence"] = model.family.licence
        if config.run.output_format in ("pt", "both"):
            write_pt(pt_path(config.output_dir, split, model.config.output_key), ids, embeddings, meta)
        if config.run.output_format in ("h5", "both"):
            residues = [row.residues for row in rows] if config.run.per_residue else None
            write_h5(h5_path(config.output_dir, split, model.config.output_key), ids, embeddings, meta, residues)
        note = f", {len(windowed)} embedded in windows (see meta['windowed'])" if windowed else ""
        lines.append(f"{split} {model.config.output_key}: {len(ids)} proteins × {model.dim}{note}")
    return lines


def write_concatenated(config: Config, splits: dict[str, list[Record]], jobs: list[Job]) -> list[str]:
    import torch

    from utils.output import pt_path, write_pt

    lines = []
    for split in splits:
        parts, columns, start = [], {}, 0
        for job in jobs:
            key = job.model.config.output_key
            data = torch.load(pt_path(config.output_dir, split, key), weights_only=True)
            parts.append(data["embeddings"])
            columns[key] = [start, start + data["embeddings"].shape[1]]
            start += data["embeddings"].shape[1]
            ids = data["ids"]
        meta = {"models": [job.model.config.name for job in jobs], "split": split}
        write_pt(pt_path(config.output_dir, split, "concat"), ids, torch.cat(parts, dim=1), meta, columns=columns)
        lines.append(f"{split} concat: {len(ids)} proteins × {start}")
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
    failed = [job for job in jobs if any(code not in (0, INTERRUPTED_EXIT, 3) for code in job.exit_codes)]
    interrupted = runner.stopping.is_set() or any(code in (3, INTERRUPTED_EXIT) for job in jobs for code in job.exit_codes)
    finished = [job for job in jobs if job not in failed and all(code == 0 for code in job.exit_codes)]
    summary = []
    for job in finished:
        summary += merge_outputs(config, splits, job)
    if config.run.concatenate and len(finished) == len(jobs) and jobs:
        summary += write_concatenated(config, splits, jobs)
    for line in summary:
        print(f"wrote {line}")
    for job in failed:
        print(
            f"error: model {job.model.config.key} failed; see {config.log_dir}/{job.model.config.output_key}*.log",
            file=sys.stderr,
        )
    if interrupted and not failed:
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


if __name__ == "__main__":
    sys.exit(main())
