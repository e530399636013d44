"""The one embedding loop, and the Python API built on it.

    plan batches (utils.batching) → tokenize the next batch on the encoder's prefetch thread → Encoder.embed
    → one result per sequence, in the caller's order

The worker (utils/worker.py) wraps chunks and resume around `embed_batches`; the pre-flight check, the benchmarks
and `Embedder` call `embed_in_batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from utils.batching import plan_batches

if TYPE_CHECKING:
    from utils.encode import Embedded, Encoder


class BatchLimits(Protocol):
    token_budget: int  # padded tokens per batch
    max_residues: int  # longest protein embedded in one pass; longer ones go through windows


def plan_embedding_batches(
    sequences: Sequence[str], limits: BatchLimits, batch_size: int, special_tokens: int
) -> list[list[int]]:
    """Indices into `sequences`, in batches, longest first. A protein past max_residues is planned at that length:
    it runs alone in windows of max_residues (Encoder.embed), never at its full length."""
    lengths = [min(len(s), limits.max_residues) for s in sequences]
    return plan_batches(lengths, limits.token_budget, batch_size, special_tokens)


def embed_batches(
    encoder: Encoder, sequences: Sequence[str], batches: Sequence[Sequence[int]]
) -> Iterator[tuple[Sequence[int], list[Embedded]]]:
    """(batch, one Embedded per index in it) for each batch in turn; the next batch is tokenized on a CPU thread
    while the device runs the current one. Stop iterating at any batch boundary (the worker does on a signal)."""
    if not batches:
        return
    ahead = encoder.tokenize_ahead([sequences[i] for i in batches[0]])
    for k, batch in enumerate(batches):
        batch_sequences = [sequences[i] for i in batch]
        tokens = ahead.result()  # a TokenLayoutError raised on the thread is raised here
        if any(len(s) > encoder.max_residues for s in batch_sequences):
            tokens = None  # windows tokenize each window themselves
        if k + 1 < len(batches):
            ahead = encoder.tokenize_ahead([sequences[i] for i in batches[k + 1]])
        yield batch, encoder.embed(batch_sequences, tokens)


def embed_in_batches(
    encoder: Encoder,
    sequences: Sequence[str],
    limits: BatchLimits,
    batch_size: int,
    on_batch: Callable[[Sequence[int], list[Embedded]], None] | None = None,
) -> list[Embedded]:
    """Every sequence through the encoder in planned batches → one Embedded per sequence, in the caller's order.
    `on_batch(indices, embedded)` is called after each batch (progress, timing)."""
    batches = plan_embedding_batches(sequences, limits, batch_size, encoder.family.special_tokens)
    results: list[Embedded | None] = [None] * len(sequences)
    for batch, embedded in embed_batches(encoder, sequences, batches):
        for i, item in zip(batch, embedded, strict=True):
            results[i] = item
        if on_batch is not None:
            on_batch(batch, embedded)
    return results  # type: ignore[return-value]  # every index is in exactly one batch
