"""Sequences → token ids by table lookup, built once from the checkpoint's own tokenizer and checked against it.

Every supported family gives each residue letter exactly one token, and puts fixed tokens before (ProstT5's
`<AA2fold>`, ESM's `<cls>`) and after (`</s>`, `<eos>`) the residues. So the checkpoint's tokenizer is asked once,
at load, for the id of every residue letter (through the family's own model text, so ProtT5's U/Z/O/B → X applies),
the prefix and the end tokens; from then on a batch becomes ids by one vectorised lookup (bytes → ids) written
straight into the padded array. transformers' tokenizers do a few thousand proteins per second on one core, which
is slower than a GPU consumes them; the lookup does hundreds of thousands.

At load the table is checked against the real tokenizer on sequences that cover every letter; if a single id
differs, the model is refused (a tokenizer that does not match its family's layout would give wrong vectors).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from utils.engine.families import Family
from utils.errors import ModelError
from utils.inputs.fasta import ALPHABET

_LETTERS = "".join(sorted(ALPHABET))
_NOT_A_RESIDUE = -1


class TokenLayoutError(ModelError):
    """The tokenizer does not give one token per residue in the family's layout: wrong tokenizer or model text."""


@dataclass(frozen=True)
class TokenTable:
    residue_ids: np.ndarray  # int64 [256]: ASCII code of a residue letter → token id; -1 for anything else
    prefix: tuple[int, ...]  # token ids before the first residue
    suffix: tuple[int, ...]  # token ids after the last residue
    pad_id: int

    @property
    def special_tokens(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def encode(self, sequences: Sequence[str]) -> dict[str, torch.Tensor]:
        """Upper-case residue strings → {input_ids, attention_mask: int64 [B, T], lengths: int64 [B]}, padded to the
        longest."""
        count = len(sequences)
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=count)
        offset = len(self.prefix)
        width = int(lengths.max(initial=0)) + self.special_tokens
        input_ids = np.full((count, width), self.pad_id, dtype=np.int64)
        input_ids[:, :offset] = self.prefix
        letters = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
        ids = self.residue_ids[letters]
        if (ids == _NOT_A_RESIDUE).any():
            bad = chr(letters[int(np.argmax(ids == _NOT_A_RESIDUE))])
            raise TokenLayoutError(f"{bad!r} is not a residue letter this model's table knows")
        rows = np.repeat(np.arange(count), lengths)
        starts = np.cumsum(lengths) - lengths
        columns = np.arange(len(letters)) - np.repeat(starts, lengths) + offset
        input_ids[rows, columns] = ids
        ends = offset + lengths
        for k, token in enumerate(self.suffix):
            input_ids[np.arange(count), ends + k] = token
        mask = np.arange(width)[None, :] < (lengths + self.special_tokens)[:, None]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "lengths": torch.from_numpy(lengths),
        }

    def pack(self, sequences: Sequence[str]) -> dict[str, torch.Tensor]:
        """Upper-case residue strings → one packed row: every protein's tokens end to end, no padding.

        {input_ids, positions (token index within its protein), owner (the protein a residue token belongs to, B
        for prefix and end tokens: pooling sums only residues): int64 [N]; lengths (residues), sizes (tokens):
        int64 [B]}"""
        count = len(sequences)
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=count)
        sizes = lengths + self.special_tokens
        total = int(sizes.sum())
        starts = np.cumsum(sizes) - sizes
        letters = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
        ids = self.residue_ids[letters]
        if (ids == _NOT_A_RESIDUE).any():
            bad = chr(letters[int(np.argmax(ids == _NOT_A_RESIDUE))])
            raise TokenLayoutError(f"{bad!r} is not a residue letter this model's table knows")
        positions = np.arange(total, dtype=np.int64) - np.repeat(starts, sizes)
        input_ids = np.empty(total, dtype=np.int64)
        owner = np.full(total, count, dtype=np.int64)
        residue_at = (
            np.repeat(starts + len(self.prefix), lengths)
            + np.arange(len(letters))
            - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        input_ids[residue_at] = ids
        owner[residue_at] = np.repeat(np.arange(count), lengths)
        for k, token in enumerate(self.prefix):
            input_ids[starts + k] = token
        for k, token in enumerate(self.suffix):
            input_ids[starts + len(self.prefix) + lengths + k] = token
        return {
            "input_ids": torch.from_numpy(input_ids),
            "positions": torch.from_numpy(positions),
            "owner": torch.from_numpy(owner),
            "lengths": torch.from_numpy(lengths),
            "sizes": torch.from_numpy(sizes),
        }


def _ids(tokenizer: Any, family: Family, sequences: Sequence[str]) -> list[list[int]]:
    texts = [family.model_text(s) for s in sequences]
    return tokenizer(texts, add_special_tokens=True)["input_ids"]


def build_table(tokenizer: Any, family: Family) -> TokenTable:
    """Ask the tokenizer for every residue letter once; raise TokenLayoutError if its layout is not the family's."""
    residue_ids = np.full(256, _NOT_A_RESIDUE, dtype=np.int64)
    prefix = suffix = None
    offset = family.residue_offset
    for letter, ids in zip(_LETTERS, _ids(tokenizer, family, list(_LETTERS)), strict=True):
        if len(ids) != 1 + family.special_tokens:
            raise TokenLayoutError(
                f"the tokenizer makes {len(ids)} tokens of the one residue {letter!r} (the {family.label} layout has "
                f"{1 + family.special_tokens}); it does not match the {family.label} layout"
            )
        if tokenizer.unk_token_id in ids:
            where = f"residue {letter!r}" if ids[offset] == tokenizer.unk_token_id else "the tokens around a residue"
            raise TokenLayoutError(
                f"the tokenizer gives <unk> for {where}; it does not match the {family.label} layout"
            )
        found_prefix, found_suffix = tuple(ids[:offset]), tuple(ids[offset + 1 :])
        if prefix is None:
            prefix, suffix = found_prefix, found_suffix
        elif (found_prefix, found_suffix) != (prefix, suffix):
            raise TokenLayoutError(f"the tokenizer puts other tokens around residue {letter!r} than around the others")
        residue_ids[ord(letter)] = ids[offset]
    assert prefix is not None and suffix is not None
    table = TokenTable(residue_ids, prefix, suffix, int(tokenizer.pad_token_id))
    check_table(table, tokenizer, family)
    return table


def check_table(table: TokenTable, tokenizer: Any, family: Family) -> None:
    """The table must give exactly the tokenizer's ids (and mask) on proteins that hold every letter, in a batch
    with padding."""
    rng = random.Random(0)
    sample = [_LETTERS, _LETTERS[::-1], "M", "".join(rng.choices(_LETTERS, k=97)), "XBUZO" * 3]
    expected = tokenizer([family.model_text(s) for s in sample], add_special_tokens=True, padding=True)
    found = table.encode(sample)
    for row, sequence in enumerate(sample):
        want = expected["input_ids"][row]
        got = found["input_ids"][row].tolist()
        if want != got or expected["attention_mask"][row] != found["attention_mask"][row].tolist():
            differ = (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b)
            column = next(differ, min(len(want), len(got)))
            raise TokenLayoutError(
                f"the token lookup table disagrees with the tokenizer on a {len(sequence)}-residue protein at token "
                f"{column}; the tokenizer does not follow the {family.label} layout"
            )
