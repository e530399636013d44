"""Lengths → batches and windows. Pure functions over integers, testable without a model.

Batches are formed from length-sorted proteins, longest first (an out-of-memory shows in the first minutes, not at
hour three), under a budget of padded tokens: items × (longest residues + special tokens).
"""

from __future__ import annotations

from collections.abc import Sequence


def padded_tokens(lengths: Sequence[int], special_tokens: int) -> int:
    return len(lengths) * (max(lengths) + special_tokens) if lengths else 0


def plan_batches(lengths: Sequence[int], token_budget: int, max_items: int, special_tokens: int) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches, longest first. Ties keep input order, so plans are reproducible.

    Each batch holds at most `max_items` proteins and at most `token_budget` padded tokens; a protein that alone
    exceeds the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted descending, so the first item of a batch is its longest.
        longest = lengths[current[0]] if current else lengths[index]
        fits = (len(current) + 1) * (longest + special_tokens) <= token_budget
        if current and (len(current) >= max_items or not fits):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def window_spans(n_residues: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping [start, end) spans that cover [0, n_residues); the last span ends exactly at n_residues."""
    if n_residues <= window:
        return [(0, n_residues)]
    step = window - overlap
    starts = list(range(0, n_residues - window, step)) + [n_residues - window]
    return [(start, start + window) for start in starts]


def chunked(batches: list[list[int]], batches_per_chunk: int) -> list[list[list[int]]]:
    return [batches[i : i + batches_per_chunk] for i in range(0, len(batches), batches_per_chunk)]
