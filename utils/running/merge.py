"""Merge: a finished model's chunks → one final file per split (and format), in input order, keyed by protein id.

    finish_jobs(config, splits, jobs, ...)   # after run_job's workers: merge each finished model, report, exit code
    merge_job(config, splits, models)        # --merge: the same from the chunks that --shard tasks filled

Each split's rows are gathered from the model's partitions of the chunk store a block at a time
(utils/outputs/gather.py) and written by utils/outputs/writers.py; every file is put in place whole (a signal stops
the merge between two files).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils import exits
from utils.checks.resolve import ResolvedModel
from utils.errors import UserError
from utils.inputs.fasta import Records
from utils.inputs.keys import Config
from utils.inputs.unique import UniqueSequences, digest_hex, hex_to_digests, shared_splits, unique_of
from utils.outputs.report import report_run
from utils.running.plan import Job, plan_jobs

if TYPE_CHECKING:
    from utils.outputs.gather import UniqueVectors
    from utils.running.store import ChunkStore


# -- chunks → files ----------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    """A stop request seen between two final files of the merge."""


class MissingEmbeddings(Exception):
    """Proteins without a vector in the store when the merge reads it (a chunk damaged since the workers read it)."""


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
        unique_of(shared_splits(splits)).drop_sorted()  # the report, next, needs memory more
    except Interrupted:
        if config.run.report:
            report_run(config, splits, jobs, started_at, "interrupted")
        print("interrupted: the final files in place are whole, finished chunks are kept; rerun the same "
              "command to resume", file=sys.stderr)  # fmt: skip
        return exits.INTERRUPTED
    except MissingEmbeddings as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exits.FAILED
    except MemoryError as exc:  # pyarrow's ArrowMemoryError too: under a memory limit (ulimit -v, a cgroup, --mem)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no memory left"
        print(
            f"error: writing the final files in {config.output_dir} ran out of memory ({reason}); every vector is in "
            "the chunk store: rerun the same command (it only merges), with more memory if the limit was the job's",
            file=sys.stderr,
        )
        if config.run.report:
            report_run(config, splits, jobs, started_at, "failed")
        return exits.FAILED
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
        print(f"error: model {job.model.config.key} failed; {where_to_look(config, job)}", file=sys.stderr)
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


def where_to_look(config: Config, job: Job) -> str:
    """Where a failed model's story is: its workers' logs where they exist; with Ray the actors log to Ray's own
    session logs (the driver printed their error above)."""
    if any(order.log_path.exists() for order in job.orders):
        return f"see {config.log_dir}/{job.model.config.output_key}*.log"
    if config.run.engine == "ray":
        return "the error is above; the actors' own output is in Ray's session logs (`ray logs cluster` lists them)"
    return "the error is above"


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


def merge_outputs(
    config: Config, splits: dict[str, Records], job: Job, stopping: threading.Event | None = None
) -> tuple[list[str], dict]:
    """A finished model's chunks → one final file per split, in input order. Raises Interrupted, between two
    files, once `stopping` is set: every file already in place is whole.

    Returns (one summary line per file, {split: float16 [N, D]}), the latter for the concatenated file."""
    from utils.outputs.gather import UniqueVectors, scratch_path

    model = job.model
    splits = shared_splits(splits)
    unique = unique_of(splits)
    stores = job_stores(job)
    scratch = scratch_path(config.output_dir, model.config.output_key)
    try:
        # The vectors laid out by unique index on disk; each split's rows are gathered from there a block at a time
        vectors = UniqueVectors.scatter(stores, unique, scratch)
        if not vectors.filled.all():
            damaged = [line for store in stores for line in store.damaged.lines(f"model {model.config.key}")]
            raise MissingEmbeddings(
                "\n".join(
                    [
                        *damaged,
                        f"model {model.config.key}: {int((~vectors.filled).sum())} sequence(s) have no vector in the "
                        "store; rerun the same command to compute them",
                    ]
                )
            )
        return _write_splits(config, splits, job, stores, unique, vectors, stopping)
    finally:
        scratch.unlink(missing_ok=True)


def job_stores(job: Job) -> list[ChunkStore]:
    """The store partitions a model's vectors are read from, in order of preference."""
    return [partition_of(job, settings) for settings in job.partitions()]


def partition_of(job: Job, settings: dict) -> ChunkStore:
    from utils.running.store import ChunkStore

    return ChunkStore(job.store_dir, settings, job.model.dim)


def _write_splits(
    config: Config,
    splits: dict[str, Records],
    job: Job,
    stores: list[ChunkStore],
    unique: UniqueSequences,
    vectors: UniqueVectors,
    stopping: threading.Event | None,
) -> tuple[list[str], dict]:
    from utils.engine.families import tool_model_name
    from utils.outputs.writers import h5_path, residues_h5_path, write_outputs

    model = job.model
    where, found = unique.positions_of(hex_to_digests(list(vectors.notes)))
    noted_unique = np.sort(where[found])
    lines, merged = [], {}
    for split, records in splits.items():
        if stopping is not None and stopping.is_set():
            raise Interrupted
        positions = records.sequences.index  # type: ignore[attr-defined]  # shared_splits made them SharedSequences
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
            # what the chunks were made with (--merge: found in the store)
            "precision": sorted({p for settings in job.partitions() for p in settings["precisions"]}),
            "devices": list(model.config.devices),
            "pooling": f"mean over residue token rows [{model.family.residue_offset}, "
            f"{model.family.residue_offset}+L): no special tokens, no prefix, no padding",
            # longer proteins went through windows (None: none did); never the device's choice (utils.engine.limits)
            "max_residues": job.partitions()[0]["max_residues"],
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
            write_residue_rows(stores, records, residues_h5_path(h5_path(config.output_dir, split, key)), meta)
        if config.run.concatenate:
            merged[split] = embeddings.whole()
        note = f", {len(windowed)} embedded in windows (see meta['windowed'])" if windowed else ""
        note += f", {len(redone)} redone in fp32 (see meta['redone_in_fp32'])" if redone else ""
        lines.append(f"{split} {model.config.output_key}: {len(records)} proteins × {model.dim}{note}")
    return lines, merged


def write_residue_rows(stores: list[ChunkStore], records: Records, path: Path, meta: dict) -> None:
    """Per-residue rows streamed chunk by chunk, since a whole job's would not fit in memory. The datasets are
    created empty in input order first, so the file still lists proteins in input order."""
    from utils.inputs.unique import split_digests
    from utils.outputs.writers import H5Writer, h5_file_bytes, text_bytes

    ids_by_digest: dict[str, list[str]] = {}
    lengths = records.lengths().tolist()
    size = h5_file_bytes(len(records), sum(lengths) * meta["dim"] * 2, text_bytes(records.ids, records.headers))
    with H5Writer(path, {**meta, "rows": "residue rows only, [L, D] float16 per protein"}, size) as writer:
        for protein_id, length, digest in zip(records.ids, lengths, split_digests(records).tolist(), strict=True):
            writer.reserve(protein_id, (length, meta["dim"]))
            ids_by_digest.setdefault(digest_hex(digest), []).append(protein_id)
        wanted = split_digests(records)
        for store in stores:
            for digest, rows in store.residue_rows(wanted):
                for protein_id in ids_by_digest.pop(digest, ()):
                    writer.fill(protein_id, rows)
        if ids_by_digest:  # raised inside the block, so no incomplete file is put in place
            raise RuntimeError(f"{path.name}: residue rows missing for {len(ids_by_digest)} sequence(s)")


def write_concatenated(
    config: Config, splits: dict[str, Records], jobs: list[Job], merged: dict[str, dict]
) -> list[str]:
    """All models side by side, in config order, from the matrices merge_outputs returned (`merged`: output_key →
    split → [N, D]); works for every output format."""
    from utils.engine.families import tool_model_name
    from utils.outputs.writers import CONCAT_KEY, concatenate, write_outputs

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


def say(line: str) -> None:
    """A line on stdout that may be closed (`| head`): the files are written, so that is no error. Python's docs:
    point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# -- --merge: from the chunks that --shard tasks filled ----------------------------------------------------------------
def merge_job(config: Config, splits: dict[str, Records], models: list[ResolvedModel]) -> int:
    """--merge: the final files from the store partitions the shards filled. Needs no device: where the shards'
    machines decided the precision (`precision: auto` on `device: auto`), the partition that holds most of the job
    is read. Refuses (UserError: per model, how many proteins have no vector, a few ids, and why where the store can
    tell: a damaged chunk, or the same sequences under other settings) before writing anything."""
    from utils.checks.preflight import chunk_settings, machine_decides_precision
    from utils.running.shards import missing_problems, missing_report

    started, started_at = time.perf_counter(), time.time()
    splits = shared_splits(splits)
    unique = unique_of(splits)
    jobs = plan_jobs(config, splits, models)
    problems = []
    for job in jobs:
        if machine_decides_precision(job.model.config):
            candidates = [chunk_settings(config, job.model, device) for device in ("cuda:0", "cpu")]
            held = [int(partition_of(job, s).claimed(unique.digests).sum()) for s in candidates]
            own = job.partitions()[0]
            job.read_from = [max(candidates, key=lambda s: (held[candidates.index(s)], s == own))]
        stores = job_stores(job)
        have = np.zeros(len(unique), dtype=bool)
        for store in stores:
            for chunk in store.chunks_holding(unique.sorted_digests()):
                where, found = unique.positions_of(hex_to_digests(chunk["digests"]))
                have[where[found]] = True
        missing_rows = [(r, np.flatnonzero(~have[r.sequences.index])) for r in splits.values()]
        count = sum(len(rows) for _, rows in missing_rows)
        if count:
            examples = [records.ids[i] for records, rows in missing_rows for i in rows[:10].tolist()]
            problems += missing_problems(f"model {job.model.config.key}", stores, unique.digests[~have], config.path)
            problems.append(missing_report(examples, count, f"model {job.model.config.key}"))
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
