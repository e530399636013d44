"""One worker process: one model (or one shard of it) on one device, every split's unique sequences, in chunks.

The worker loads its model once, plans length-sorted batches over all its sequences, skips the chunks a previous
run finished, and writes each new chunk atomically. SIGTERM / Ctrl-C: the current batch finishes, the finished
batches of the current chunk are written, and the worker exits with INTERRUPTED.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.batching import chunked
from utils.encode import Encoder, ModelError, load_encoder
from utils.families import FAMILIES, Architecture
from utils.finite import Fp32Redo, redo_non_finite
from utils.limits import Limits, device_limits
from utils.store import ChunkStore, sequence_digest

INTERRUPTED = 3
FAILED = 1


@dataclass(frozen=True)
class WorkOrder:
    label: str  # model key, with the shard when sharded
    model_name: str
    family: str
    arch: Architecture
    device: str
    precision: str
    token_budget: int | None
    max_items: int
    max_residues: int | None
    window_overlap: int
    per_residue: bool
    batches_per_chunk: int
    chunk_dir: Path
    chunk_settings: dict  # what produced the chunks (utils.preflight.chunk_settings)
    sequences: tuple[str, ...]  # unique, this shard's
    log_path: Path
    bar_position: int
    seed: int


def resolve_limits(order: WorkOrder, memory_bytes: int | None = None) -> Limits:
    """This order's limits on its device (utils.limits), or on a device of `memory_bytes`, if given."""
    return device_limits(
        order.arch, order.device, order.precision, batch_size=order.max_items,
        max_tokens_per_batch=order.token_budget, max_residues=order.max_residues, memory_bytes=memory_bytes,
    )  # fmt: skip


def _die_with_parent() -> None:
    """A worker must not outlive a main process killed with SIGKILL (it would hold the device and write chunks)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _logger(path: Path) -> logging.Logger:
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"worker.{path.stem}")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


def run(order: WorkOrder) -> int:
    """Process entry point. Returns 0 when every sequence is in a chunk."""
    _die_with_parent()
    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log = _logger(order.log_path)
    try:
        return _run(order, log, stop)
    except ModelError as exc:
        log.error("%s", exc)
        print(f"error: model {order.label}: {exc}", file=sys.stderr)
        return FAILED
    except Exception:
        log.exception("worker failed")
        raise


def _run(order: WorkOrder, log: logging.Logger, stop: dict[str, bool]) -> int:
    from tqdm import tqdm

    torch.manual_seed(order.seed)
    family = FAMILIES[order.family]
    store = ChunkStore(order.chunk_dir, order.chunk_settings, order.arch.hidden)
    done, set_aside = store.load(set_aside=True)
    for message in set_aside.lines(order.label):
        log.warning(message)
        print(f"note: {message}", file=sys.stderr)

    sequences = list(order.sequences)
    digests = [sequence_digest(s) for s in sequences]
    limits = resolve_limits(order)
    batches = limits.plan_batches([len(s) for s in sequences], family.special_tokens)
    pending = [b for b in batches if any(digests[i] not in done for i in b)]
    residues_todo = sum(len(sequences[i]) for b in pending for i in b)
    reused = sum(d in done for d in digests)
    log.info(
        "model %s (%s) on %s, %s; %d unique sequences, %d already in chunks; token budget %d, max residues %d",
        order.model_name, family.label, order.device, order.precision, len(sequences), reused,
        limits.max_tokens_per_batch, limits.max_residues,
    )  # fmt: skip
    if 0 < reused < len(digests):
        print(
            f"note: {order.label}: {reused} sequences reused from earlier chunks, computing the rest", file=sys.stderr
        )
    if not pending:
        return 0

    started = time.perf_counter()
    tokenizer, model = load_encoder(order.model_name, family, order.device, order.precision)
    log.info("model loaded in %.1f s", time.perf_counter() - started)
    encoder = Encoder(
        tokenizer, model, family, order.device, limits.max_residues, order.window_overlap, order.per_residue
    )
    fp32 = None
    if order.precision != "fp32":
        fp32 = Fp32Redo(
            lambda: Encoder(
                *load_encoder(order.model_name, family, order.device, "fp32"), family, order.device,
                limits.max_residues, order.window_overlap, order.per_residue,
            )
        )  # fmt: skip
    bar = tqdm(
        total=residues_todo, unit="res", unit_scale=True, desc=order.label, position=order.bar_position,
        dynamic_ncols=True, leave=True, file=sys.stderr, postfix={"proteins": 0},
    )  # fmt: skip
    proteins = 0
    try:
        for chunk in chunked(batches, order.batches_per_chunk):
            todo = [b for b in chunk if any(digests[i] not in done for i in b)]
            if not todo:
                continue
            chunk_digests: list[str] = []
            chunk_embedded: list = []
            ahead = encoder.tokenize_ahead([sequences[i] for i in todo[0]])
            for k, batch in enumerate(todo):
                batch_sequences = [sequences[i] for i in batch]
                tokens = _tokens_or_none(ahead, batch_sequences, limits.max_residues)
                if k + 1 < len(todo):
                    ahead = encoder.tokenize_ahead([sequences[i] for i in todo[k + 1]])
                embedded = encoder.embed(batch_sequences, tokens)
                embedded, _ = redo_non_finite(embedded, batch_sequences, order.precision, fp32)
                chunk_digests += [digests[i] for i in batch]
                chunk_embedded += embedded
                for e, i in zip(embedded, batch, strict=True):
                    if e.note:
                        log.info("sequence %s (%d residues): %s", digests[i][:12], len(sequences[i]), e.note)
                proteins += len(batch)
                bar.update(sum(len(s) for s in batch_sequences))
                bar.set_postfix(proteins=proteins, refresh=False)
                if stop["requested"]:
                    break
            path = store.write(chunk_digests, chunk_embedded, order.per_residue)
            log.info("wrote %s (%d proteins)", path.name, len(chunk_digests))
            if stop["requested"]:
                log.warning("stopped by signal after %d proteins; finished chunks are kept", proteins)
                return INTERRUPTED
    finally:
        bar.close()
        encoder.close()
        if fp32 is not None:
            fp32.close()
    elapsed = time.perf_counter() - started
    log.info("done: %d proteins, %d residues in %.1f s", proteins, residues_todo, elapsed)
    return 0


def _tokens_or_none(future, sequences: list[str], max_residues: int):
    """Prefetched tokens, unless the batch goes through windows (which tokenize each window themselves)."""
    tokens = future.result()  # raises TokenLayoutError in this thread, where it is reported
    return None if any(len(s) > max_residues for s in sequences) else tokens
