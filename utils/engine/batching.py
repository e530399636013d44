"""Lengths → batches and windows. Pure functions over integers, testable without a model.

Batches are formed from length-sorted proteins, longest first (an out-of-memory shows in the first minutes, not at
hour three), under a budget of padded tokens (items × (longest residues + special tokens)), a budget of attention's
square tensors, and a cap on how much any protein is padded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# Most padding a protein may get, as a fraction of its own tokens (see plan_batches).
MAX_PADDING = 0.25


def padded_tokens(lengths: Sequence[int], special_tokens: int) -> int:
    return len(lengths) * (max(lengths) + special_tokens) if lengths else 0


def plan_batches(
    lengths: Sequence[int],
    max_tokens_per_batch: int,
    batch_size: int,
    special_tokens: int,
    *,
    max_square_tokens: int | None = None,
    max_padding: float = MAX_PADDING,
) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches, longest first. Ties keep input order, so plans are reproducible.

    A batch holds at most `batch_size` proteins, at most `max_tokens_per_batch` padded tokens, at most
    `max_square_tokens` items × tokens² (attention's T × T tensors grow with the square of the padded length), and no
    protein padded by more than `max_padding` of its own tokens (in the sparse tail of long proteins, a 3,000-residue
    protein padded to 10,000 would cost more attention than it needs by a factor of eleven). A protein that alone
    exceeds a budget gets a batch of its own.
    """
    order, bounds = plan_batch_bounds(
        lengths, max_tokens_per_batch, batch_size, special_tokens,
        max_square_tokens=max_square_tokens, max_padding=max_padding,
    )  # fmt: skip
    return [batch.tolist() for batch in batch_views(order, bounds)]


def plan_batch_bounds(
    lengths: Sequence[int] | np.ndarray,
    max_tokens_per_batch: int,
    batch_size: int,
    special_tokens: int,
    *,
    max_square_tokens: int | None = None,
    max_padding: float = MAX_PADDING,
    packed: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """plan_batches as (indices longest first, batch boundaries into them): batch k is order[bounds[k]:bounds[k+1]].
    Packed, for a worker with millions of proteins: 4 bytes a protein instead of a list entry and an int object.

    With `packed`, the batch's proteins are laid end to end with no padding (utils.engine.tokens.TokenTable.pack) and
    attention stays within each protein: the budget counts the sum of their tokens, and neither the square budget
    nor the padding cap applies."""
    # int32 (a protein's length fits) and a new array: the caller's is untouched. Planning a proteome, memory counts
    negated = np.negative(np.asarray(lengths, dtype=np.int32))
    order = np.argsort(negated, kind="stable")  # longest first, ties in input order
    if len(order) < 2**32:
        order = order.astype(np.uint32)
    ordered = np.negative(negated[order], out=negated)  # reuses the buffer
    if packed:
        return order, _packed_bounds(ordered, max_tokens_per_batch, batch_size, special_tokens)
    bounds = [0]
    start = 0
    longest = 0
    for position, length in _positions(ordered):
        # Sorted descending, so the first item of a batch is its longest.
        if position == start:
            longest = length + special_tokens
            continue
        items = position - start + 1
        fits = (
            items <= batch_size
            and items * longest <= max_tokens_per_batch
            and (max_square_tokens is None or items * longest * longest <= max_square_tokens)
            and longest <= (1 + max_padding) * (length + special_tokens)
        )
        if not fits:
            bounds.append(position)
            start, longest = position, length + special_tokens
    if len(order):
        bounds.append(len(order))
    return order, bounds


def _packed_bounds(ordered: np.ndarray, max_tokens: int, batch_size: int, special_tokens: int) -> list[int]:
    """Boundaries of packed batches over lengths sorted longest first: a batch closes when the next protein's tokens
    would pass the budget or the batch holds batch_size proteins; a protein alone over the budget is a batch."""
    bounds = [0]
    start, tokens = 0, 0
    for position, length in _positions(ordered):
        size = length + special_tokens
        if position > start and (tokens + size > max_tokens or position - start >= batch_size):
            bounds.append(position)
            start, tokens = position, 0
        tokens += size
    if len(ordered):
        bounds.append(len(ordered))
    return bounds


def batch_views(order: np.ndarray, bounds: list[int]) -> list[np.ndarray]:
    """plan_batch_bounds' result as one index array per batch (views into `order`, no copies)."""
    return [order[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def _positions(values: np.ndarray, block: int = 65536) -> Iterator[tuple[int, int]]:
    """(position, value) as Python ints, a block at a time: no list of every value at once."""
    for base in range(0, len(values), block):
        for offset, value in enumerate(values[base : base + block].tolist()):
            yield base + offset, value


def window_spans(n_residues: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping [start, end) spans that cover [0, n_residues); the last span ends exactly at n_residues."""
    if n_residues <= window:
        return [(0, n_residues)]
    step = window - overlap
    starts = list(range(0, n_residues - window, step)) + [n_residues - window]
    return [(start, start + window) for start in starts]


def chunked(batches: list[list[int]], batches_per_chunk: int) -> list[list[list[int]]]:
    return [batches[i : i + batches_per_chunk] for i in range(0, len(batches), batches_per_chunk)]
