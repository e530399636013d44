"""One worker process: one work order (a model, or one shard of it, on one device), in checkpoint chunks.

The worker loads its model once, plans length-sorted batches over all its sequences (utils.engine.embedder), skips
the sequences its partition of the chunk store already holds (a previous run's, another config's, or those a run
working at the same time wrote meanwhile), and writes each new chunk atomically. SIGTERM / Ctrl-C: the current batch
finishes, the finished batches of the current chunk are written, and the worker exits with exits.INTERRUPTED.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils import exits
from utils.engine.attention import compile_stats
from utils.engine.batching import batch_views, chunked
from utils.engine.embedder import embed_batches
from utils.engine.encode import Encoder, ModelError, load_encoder
from utils.engine.finite import Fp32Redo
from utils.engine.limits import protein_name, windows_text
from utils.files import process_alive
from utils.inputs.fasta import sequence_lengths
from utils.inputs.unique import digest_hex, digests_of
from utils.malloc import give_back_free_memory
from utils.outputs.progress import ProgressLog
from utils.running.plan import WorkOrder
from utils.running.store import ChunkStore, changed_settings, describe_changes
from utils.units import size_text


def _die_with_main(main_pid: int) -> None:
    """A worker must not outlive a main process killed with SIGKILL (it would hold the device and write chunks).

    Workers are forked from the worker server, not from the main process, and that server outlives the main process
    while any worker runs, so PR_SET_PDEATHSIG alone would not fire: a thread waits on the main process's pidfd and
    kills this worker the moment the main process is gone (or at once, if it is gone already).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the worker server dying is also the end
    try:
        handle = os.pidfd_open(main_pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
        return
    except (AttributeError, OSError):  # no pidfd (not Linux ≥ 5.3): poll instead
        handle = None

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])
        else:
            while process_alive(main_pid):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-main", daemon=True).start()


def memory_record(device: str, encoders: list[Any]) -> dict[str, Any]:
    """Peak memory and out-of-memory retries so far, for the progress log: on a GPU the allocator's peak in this
    process (one worker per device at a time, so the model's own), on the CPU the process's peak RSS."""
    if device.startswith("cuda"):
        peak, kind = torch.cuda.max_memory_allocated(device), "device allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"  # Linux: kB
    retries = sum(getattr(e, "out_of_memory_events", 0) for e in encoders if e is not None)
    return {"peak_memory_bytes": int(peak), "peak_memory_kind": kind, "out_of_memory_retries": retries}


def compile_record(before: dict[str, float]) -> dict[str, float]:
    """The compiler's work in this worker so far (utils.engine.attention.compile_stats, less what `before` had)."""
    now = compile_stats()
    return {key: round(now[key] - before.get(key, 0), 3) for key in now}


def note_forward(encoder: Encoder, order: WorkOrder, log: logging.Logger, progress: ProgressLog) -> str:
    """Which forward and kernel run, in the log and the progress record; a fallback from the configured kernel
    (it failed its check at load, or a batch later) also as one line on the console. Returns the path noted."""
    log.info("forward: %s", encoder.path)
    progress.write("forward", path=encoder.path, fallback=encoder.fallback_reason)
    if encoder.fallback_reason:
        log.warning("attention %s fell back to %s", order.run.attention, encoder.kernel)
        print(
            f"note: {order.label}: attention '{order.run.attention}' runs as {encoder.kernel}: "
            f"{encoder.fallback_reason}",
            file=sys.stderr,
        )
    if encoder.layout_reason:  # not a setting the user chose: say so where they look
        print(f"note: {order.label}: transformers' own forward runs ({encoder.layout_reason})", file=sys.stderr)
    return encoder.path


def open_log(path: Path, run_id: str = "") -> logging.Logger:
    """The worker's log file, appended to; every line names the run (runs of other configs may share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"worker.{path.stem}")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s run {run_id or '-'} %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


def run_work_order(order: WorkOrder, main_pid: int) -> int:
    """Process entry point: signals, log file, then the order. Returns an exit code (utils.exits)."""
    _die_with_main(main_pid)
    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log = open_log(order.log_path, order.run_id)
    try:
        return embed_order(order, log, stop)
    except ModelError as exc:
        log.error("%s", exc)
        print(f"\nerror: model {order.label}: {exc}", file=sys.stderr)
        return exits.FAILED
    except OSError as exc:  # disk full, a directory gone: one line, not a traceback; the finished chunks are kept
        log.exception("worker failed")
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"\nerror: model {order.label}: {exc.strerror or exc}{where}; fix that (free some space) and rerun the "
            "same command to resume: finished chunks are kept",
            file=sys.stderr,
        )
        return exits.FAILED
    except Exception as exc:  # anything else: one line here, the traceback in the log
        log.exception("worker failed")
        print(
            f"\nerror: model {order.label}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]} "
            f"(the traceback is in {order.log_path})",
            file=sys.stderr,
        )
        return exits.FAILED


def report_damaged(store: ChunkStore, label: str, log: logging.Logger) -> None:
    """Damaged chunks the store met since the last call: a note each (quarantined; their sequences are redone)."""
    for message in store.damaged.lines(label):
        log.warning(message)
        print(f"note: {message}", file=sys.stderr)
    store.damaged.found.clear()


def embed_order(order: WorkOrder, log: logging.Logger, stop: dict[str, bool]) -> int:
    """Every sequence of the order not yet in a chunk → new chunks. Returns exits.OK or exits.INTERRUPTED."""
    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore: a worker killed by a signal would leave it behind, and the
    # resource tracker would print a warning about it. One bar per process needs only a thread lock.
    tqdm.set_lock(threading.RLock())
    torch.manual_seed(order.run.seed)
    family = order.model.family
    store = ChunkStore(order.store_dir, order.chunk_settings, order.model.dim)
    # Packed (utils.inputs.fasta.Strings, numpy): a proteome's order costs bytes per protein, not objects per protein
    sequences = order.sequences
    # Every sequence's digest only when the store may hold some (a resume, a shared cache): a fresh partition's chunks
    # hash their own sequences as they go, so a proteome's worker holds no 20 bytes a sequence for nothing
    digests = digests_of(sequences) if store.chunk_files() else None
    is_done = np.zeros(len(sequences), dtype=bool)
    if digests is not None:
        is_done = store.held(digests)
    report_damaged(store, order.label, log)

    def digests_at(indices: np.ndarray) -> np.ndarray:
        return digests[indices] if digests is not None else digests_of([sequences[i] for i in indices.tolist()])

    lengths = sequence_lengths(sequences, np.int32)
    limits = order.limits()
    # The plan covers every sequence, done or not, so a rerun cuts the same batches and chunks as the first run.
    batches = batch_views(*limits.plan_batch_bounds(lengths, family.special_tokens))
    pending = [b for b in batches if not is_done[b].all()]
    residues_todo = sum(int(lengths[b].sum()) for b in pending)
    longest = int(pending[0][0]) if pending else None  # the plan runs longest first
    if longest is not None and not limits.fits(int(lengths[longest])):
        # Memory never changes a vector: a protein that cannot run whole (or in its windows) fails the model, now
        raise ModelError(limits.does_not_fit(protein_name(sequences[longest]), int(lengths[longest])))
    give_back_free_memory()  # the planning's transient arrays
    reused = int(is_done.sum())
    log.info(
        "model %s (%s) on %s, %s; %d unique sequences, %d already in chunks; token budget %d; %s; memory %s (%s)",
        order.model.source, family.label, order.device, order.precision, len(sequences), reused,
        limits.max_tokens_per_batch, windows_text(limits.max_residues), size_text(limits.memory_bytes),
        limits.memory_source,
    )  # fmt: skip
    if 0 < reused < len(sequences):
        print(f"note: {order.label}: {reused} sequences already in the store, computing the rest", file=sys.stderr)
    elif not reused and len(sequences):
        others = store.others()
        if others:  # say why nothing is reused: the store has this checkpoint, but under other settings
            what = describe_changes(changed_settings(others[0][1], order.chunk_settings))
            message = (
                f"{order.label}: the store holds this checkpoint's vectors only under other settings ({what}); "
                "computing them for these settings"
            )
            log.warning(message)
            print(f"note: {message}", file=sys.stderr)
    # For the run report (utils/outputs/report.py): one JSON line per event, a flush per chunk.
    progress = ProgressLog(order.progress_path, label=order.label, model=order.model.config.key, device=order.device)
    progress.write(
        "start", precision=order.precision, sequences=len(sequences), reused=reused,
        reused_chunks=store.chunks_read, max_residues=limits.max_residues or 0,
    )  # fmt: skip
    if not pending:
        progress.write("end", status="done")
        progress.close()
        return exits.OK

    started = time.perf_counter()
    compiled_before = compile_stats()
    tokenizer, model = load_encoder(
        order.model.source, family, order.device, order.precision, layer_index=order.model.layer_index
    )
    log.info("model loaded in %.1f s", time.perf_counter() - started)
    progress.write("loaded", seconds=time.perf_counter() - started)

    def encoder_for(tokenizer: Any, model: torch.nn.Module) -> Encoder:
        return Encoder(
            tokenizer, model, family, order.device, limits.max_residues, order.run.window_overlap,
            order.run.per_residue, tokens_per_pass=limits.max_tokens_per_batch, attention=order.run.attention,
            limits=limits,
        )  # fmt: skip

    encoder = encoder_for(tokenizer, model)
    forward = note_forward(encoder, order, log, progress)
    fp32 = None  # non-finite proteins (fp16/bf16 overflow) are redone in fp32: that copy loads on first need
    if order.precision != "fp32":
        fp32 = Fp32Redo(
            lambda: encoder_for(
                *load_encoder(order.model.source, family, order.device, "fp32", layer_index=order.model.layer_index)
            )
        )
    bar = tqdm(
        total=residues_todo, unit="res", unit_scale=True, desc=order.label, position=order.bar_position,
        dynamic_ncols=True, leave=True, file=sys.stderr, postfix={"proteins": 0},
    )  # fmt: skip
    proteins = 0
    try:
        for chunk in chunked(batches, order.run.save_every_n_batches):
            todo = [b for b in chunk if not is_done[b].all()]
            if todo:  # a run at work on the same store at the same time may have written some of them meanwhile
                wanted = np.concatenate(todo)
                wanted_digests = digests_at(wanted)
                is_done[wanted[store.held(wanted_digests, new_only=True)]] = True
                report_damaged(store, order.label, log)
                todo = [b for b in chunk if not is_done[b].all()]
            if not todo:
                continue
            chunk_digests: list[str] = []
            chunk_embedded: list = []
            chunk_residues, chunk_windowed, chunk_redone = 0, [], 0
            for batch, embedded in embed_batches(encoder, sequences, todo, order.precision, fp32):
                batch_digests = [digest_hex(d) for d in digests_at(batch).tolist()]
                chunk_digests += batch_digests
                chunk_embedded += embedded
                for e, i, digest in zip(embedded, batch, batch_digests, strict=True):
                    if e.note:
                        log.info("sequence %s (%d residues): %s", digest[:12], lengths[i], e.note)
                        if "windows" in e.note:  # a protein redone in fp32 in one pass has a note, no windows
                            chunk_windowed.append(int(lengths[i]))
                        chunk_redone += "redone" in e.note
                proteins += len(batch)
                batch_residues = int(lengths[batch].sum())
                chunk_residues += batch_residues
                bar.update(batch_residues)
                bar.set_postfix(proteins=proteins, refresh=False)
                if stop["requested"]:
                    break
            path = store.write(chunk_digests, chunk_embedded, order.run.per_residue)
            del chunk_embedded
            give_back_free_memory()  # a chunk's tensors, once per chunk
            log.info("wrote %s (%d proteins)", path.name, len(chunk_digests))
            if encoder.path != forward:  # a kernel failed on a batch: the next one took over
                forward = note_forward(encoder, order, log, progress)
            memory = memory_record(order.device, [encoder, fp32 and fp32.encoder])
            progress.write(
                "chunk", proteins=len(chunk_digests), residues=chunk_residues, windowed=chunk_windowed,
                redone_in_fp32=chunk_redone, **memory, **compile_record(compiled_before),
            )  # fmt: skip
            if stop["requested"]:
                log.warning("stopped by signal after %d proteins; finished chunks are kept", proteins)
                progress.write("end", status="interrupted")
                return exits.INTERRUPTED
        progress.write(
            "end", status="done", **memory_record(order.device, [encoder, fp32 and fp32.encoder]),
            **compile_record(compiled_before),
        )  # fmt: skip
    finally:
        bar.close()
        encoder.close()
        progress.close()
        if fp32 is not None:
            fp32.close()
    elapsed = time.perf_counter() - started
    log.info("done: %d proteins, %d residues in %.1f s", proteins, residues_todo, elapsed)
    return exits.OK
