"""Never a NaN or inf in a stored embedding.

Activations that overflow float16 (max 65,504) or bfloat16 turn a protein's vector into NaN or inf without any error.
Every batch is checked before it is stored; each non-finite protein is embedded again in fp32 on the same device
(a second copy of the weights, loaded only when first needed), and its note records that. A protein still non-finite
in fp32 fails the model, naming the protein: the checkpoint's weights are broken, and no precision will fix them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from utils.engine.encode import Embedded, ModelError


class NonFiniteError(ModelError):
    """Embeddings non-finite even in fp32: reported in one line naming the proteins, and the model fails."""


def is_finite(embedded: Embedded) -> bool:
    rows = embedded.residues
    return bool(torch.isfinite(embedded.pooled).all()) and (rows is None or bool(torch.isfinite(rows).all()))


def _named(sequences: list[str]) -> str:
    """Proteins by length and first residues: the worker sees sequences, and these find them in a FASTA."""
    shown = ", ".join(f"{len(s)} residues starting {s[:12]}" for s in sequences[:3])
    more = f" and {len(sequences) - 3} more" if len(sequences) > 3 else ""
    return f"{len(sequences)} protein(s) ({shown}{more})"


class Fp32Redo:
    """The fp32 encoder that redoes non-finite proteins; built on first use, since most runs never need it."""

    def __init__(self, build: Callable[[], Any]):
        self.build = build
        self.encoder: Any = None

    def embed(self, sequences: list[str]) -> list[Embedded]:
        if self.encoder is None:
            self.encoder = self.build()
        return self.encoder.embed(sequences)

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()


def redo_non_finite(
    embedded: list[Embedded], sequences: list[str], precision: str, redo: Fp32Redo | None
) -> tuple[list[Embedded], list[int]]:
    """→ (the batch with every non-finite protein redone in fp32, indices of the redone proteins).

    Raises NonFiniteError when a protein is non-finite in fp32 (or when `redo` is None: the batch already ran in fp32).
    """
    bad = [i for i, e in enumerate(embedded) if not is_finite(e)]
    if not bad:
        return embedded, []
    if redo is None:
        raise NonFiniteError(
            f"{_named([sequences[i] for i in bad])} give non-finite embeddings (NaN or inf) in {precision}; the "
            "checkpoint's weights are broken: download it again or check that it is the model you meant"
        )
    again = redo.embed([sequences[i] for i in bad])
    still = [bad[j] for j, e in enumerate(again) if not is_finite(e)]
    if still:
        raise NonFiniteError(
            f"{_named([sequences[i] for i in still])} give non-finite embeddings (NaN or inf) in {precision} and "
            "again in fp32; the checkpoint's weights are broken: download it again or check that it is the model "
            "you meant"
        )
    fixed = list(embedded)
    for i, redone in zip(bad, again, strict=True):
        note = {**(redone.note or {}), "redone": f"in fp32: non-finite in {precision}"}
        fixed[i] = Embedded(redone.pooled, redone.residues.half() if redone.residues is not None else None, note)
    return fixed, bad
