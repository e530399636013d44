"""Encoder hidden states → per-protein vectors: the mean over exactly the residue rows.

No prefix token, no end token, no padding: with residues at [offset, offset + L) of each row, the mean divides
the sum of those L rows by L. Sums run in float32 whatever the encoder's precision.
"""

from __future__ import annotations

import torch


def residue_mask(lengths: torch.Tensor, offset: int, total_tokens: int) -> torch.Tensor:
    """[B, T] bool, True at each protein's residue positions."""
    positions = torch.arange(total_tokens, device=lengths.device)
    return (positions >= offset) & (positions < offset + lengths[:, None])


def mean_over_residues(hidden: torch.Tensor, lengths: torch.Tensor, offset: int) -> torch.Tensor:
    """hidden [B, T, D], lengths [B] (residues per protein) → [B, D] float32."""
    mask = residue_mask(lengths, offset, hidden.shape[1]).to(torch.float32)
    summed = torch.einsum("btd,bt->bd", hidden.float(), mask)
    return summed / lengths[:, None].to(torch.float32)


def segment_means(hidden: torch.Tensor, owner: torch.Tensor, lengths: torch.Tensor, rows: int = 16384) -> torch.Tensor:
    """Packed hidden [N, D], owner [N] (the protein of each residue token; B for prefix and end tokens), lengths [B]
    → [B, D] float32. The float32 copy is made a block of rows at a time, so pooling adds little to a long batch's
    memory."""
    count = lengths.shape[0]
    sums = torch.zeros(count + 1, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        sums.index_add_(0, owner[start : start + rows], hidden[start : start + rows].float())
    return sums[:count] / lengths[:, None].to(torch.float32)


def residue_rows(hidden: torch.Tensor, lengths: list[int], offset: int) -> list[torch.Tensor]:
    """Per protein, its [L, D] residue rows (views into hidden)."""
    return [hidden[i, offset : offset + n] for i, n in enumerate(lengths)]


def merge_windows(window_rows: list[torch.Tensor], spans: list[tuple[int, int]], n_residues: int) -> torch.Tensor:
    """Residue rows of overlapping windows → one [n, D] float32 array; overlapped residues average their windows."""
    dim = window_rows[0].shape[-1]
    total = torch.zeros(n_residues, dim, dtype=torch.float32)
    count = torch.zeros(n_residues, 1, dtype=torch.float32)
    for rows, (start, end) in zip(window_rows, spans, strict=True):
        total[start:end] += rows.float().cpu()
        count[start:end] += 1
    return total / count
