"""Records of every split → the distinct sequences a job embeds, each once, with its digest.

A sequence that appears in several proteins (within a split or across splits) is embedded once. After
`share_sequences`, each split's records point into one `UniqueSequences` (an index per protein, not a copy of the
residues), and the job works with the unique set from then on: the plan shards it over devices, the workers embed
it, the merge finds each protein's vector by its sequence's digest. All of it is packed arrays, so memory grows by
a few bytes per protein beyond the residues themselves.

Digests are the sha1 of the sequence's ASCII letters: the chunk store's keys (utils.running.store.sequence_digest, hex).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import overload

import numpy as np

from utils.inputs.fasta import Records
from utils.inputs.strings import Strings, StringsBuilder

DIGEST = np.dtype("S20")  # sha1, raw bytes
DEDUPE_BLOCK = 1 << 16


@dataclass(frozen=True)
class UniqueSequences:
    """Each distinct sequence once, in order of first appearance across the splits, with its sha1 digest."""

    sequences: Strings
    digests: np.ndarray  # DIGEST [U]

    def __len__(self) -> int:
        return len(self.sequences)

    def lengths(self, dtype: type = np.int64) -> np.ndarray:
        return self.sequences.byte_lengths(dtype)

    def hex_digest(self, index: int) -> str:
        return digest_hex(self.digests[index])

    def take(self, indices: np.ndarray) -> UniqueSequences:
        return UniqueSequences(self.sequences.take(indices.tolist()), self.digests[indices])

    def sorted_digests(self) -> np.ndarray:
        """The digests sorted (made once, with positions_of's index: 28 bytes a sequence while this set lives)."""
        if "_sorted" not in self.__dict__:
            order = np.argsort(self.digests, kind="stable")
            if len(order) < 2**32:
                order = order.astype(np.uint32)
            object.__setattr__(self, "_order", order)
            object.__setattr__(self, "_sorted", self.digests[order])
        return self.__dict__["_sorted"]

    def drop_sorted(self) -> None:
        """Let sorted_digests' arrays go (the merge, once its files are written)."""
        self.__dict__.pop("_sorted", None)
        self.__dict__.pop("_order", None)

    def positions_of(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in this set, whether it is in this set) of each of `digests`: a binary search in the sorted
        digests (the merge looks up every chunk's)."""
        ordered, order = self.sorted_digests(), self.__dict__["_order"]
        if not len(ordered):
            return np.zeros(len(digests), dtype=np.int64), np.zeros(len(digests), dtype=bool)
        at = np.minimum(np.searchsorted(ordered, digests), len(ordered) - 1)
        return order[at], ordered[at] == digests


class SharedSequences(Sequence[str]):
    """A split's sequences as positions in the job's UniqueSequences (4 bytes a protein, not a copy of residues)."""

    __slots__ = ("unique", "index")

    def __init__(self, unique: UniqueSequences, index: np.ndarray):
        self.unique = unique
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    @overload
    def __getitem__(self, position: int) -> str: ...
    @overload
    def __getitem__(self, position: slice) -> list[str]: ...
    def __getitem__(self, position: int | slice) -> str | list[str]:
        if isinstance(position, slice):
            return [self.unique.sequences[i] for i in self.index[position].tolist()]
        return self.unique.sequences[int(self.index[position])]

    def __iter__(self) -> Iterator[str]:
        sequences = self.unique.sequences
        for i in self.index.tolist():
            yield sequences[i]

    def byte_lengths(self, dtype: type = np.int64) -> np.ndarray:
        return self.unique.lengths(dtype)[self.index]

    def digests(self) -> np.ndarray:
        return self.unique.digests[self.index]

    def distinct(self) -> int:
        """How many distinct sequences: a bit per unique sequence, no sort, no string."""
        seen = np.zeros(len(self.unique), dtype=bool)
        seen[self.index] = True
        return int(seen.sum())


def digest_hex(digest: bytes) -> str:
    """A DIGEST element as the chunk store's hex key (numpy drops an "S" element's trailing NUL bytes: restored)."""
    return digest.ljust(DIGEST.itemsize, b"\0").hex()


def hex_to_digests(keys: Sequence[str]) -> np.ndarray:
    """Chunk store hex keys → a DIGEST array."""
    digests = np.empty(len(keys), dtype=DIGEST)
    for i, key in enumerate(keys):
        digests[i] = bytes.fromhex(key)
    return digests


def digests_of(sequences: Sequence[str] | Strings) -> np.ndarray:
    """sha1 of each sequence, as a DIGEST array."""
    digests = np.empty(len(sequences), dtype=DIGEST)
    if hasattr(sequences, "raw_items"):  # packed (Strings) or in a file (utils.inputs.spill.FileStrings)
        for i, sequence in enumerate(sequences.raw_items()):
            digests[i] = hashlib.sha1(sequence).digest()
        return digests
    for i, sequence in enumerate(sequences):
        digests[i] = hashlib.sha1(sequence.encode("ascii")).digest()
    return digests


def dedupe(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct digest once, numbered in order of first appearance: (the position of each one's first
    appearance, ascending; for every position, the number of its digest, uint32 or int64). A sort and a few arrays
    of 1-8 bytes per digest, one at a time: at a proteome's size the transient arrays are the reading's peak."""
    count = len(digests)
    if not count:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint32)
    small = np.uint32 if count < 2**32 else np.int64
    order = np.argsort(digests, kind="stable").astype(small)  # equal digests stay in input order: the first first
    new = np.empty(count, dtype=bool)
    new[0] = True
    for start in range(1, count, DEDUPE_BLOCK):  # neighbours compared a block at a time: no sorted copy of them all
        end = min(count, start + DEDUPE_BLOCK)
        np.not_equal(digests[order[start:end]], digests[order[start - 1 : end - 1]], out=new[start:end])
    first = order[new].astype(np.int64)  # per distinct digest (in digest order), where it first appears
    group = np.cumsum(new, dtype=small)  # each sorted position's distinct digest, counted from 1
    group -= 1
    del new
    appearance = np.argsort(first, kind="stable")
    rank = np.empty(len(first), dtype=small)
    rank[appearance] = np.arange(len(first), dtype=small)
    index = np.empty(count, dtype=small)
    index[order] = rank[group]
    return first[appearance], index


def share_sequences(splits: dict[str, Records]) -> tuple[dict[str, Records], UniqueSequences]:
    """Splits whose records' sequences point into one UniqueSequences, and that set. The splits' own residue buffers
    are no longer referenced afterwards, so they are freed."""
    parts = [digests_of(records.sequences) for records in splits.values()]
    every = np.concatenate(parts) if parts else np.zeros(0, dtype=DIGEST)
    del parts
    first, index = dedupe(every)
    digests = every[first]
    del every
    # Each unique sequence's residues, copied from the split and row of its first appearance
    bounds = np.cumsum([0] + [len(records) for records in splits.values()])
    columns = [records.sequences for records in splits.values()]
    builder = StringsBuilder()
    for position in first.tolist():
        part = int(np.searchsorted(bounds, position, side="right")) - 1
        column, row = columns[part], position - int(bounds[part])
        builder.append_bytes(column.raw(row) if isinstance(column, Strings) else column[row].encode("ascii"))
    unique = UniqueSequences(builder.build(), digests)
    return share_index(splits, unique, index), unique


def share_index(splits: dict[str, Records], unique: UniqueSequences, index: np.ndarray) -> dict[str, Records]:
    """The splits with their sequences as positions in `unique`: `index` holds every split's proteins in turn."""
    shared, start = {}, 0
    for name, records in splits.items():
        rows = SharedSequences(unique, index[start : start + len(records)])
        shared[name] = replace(records, sequences=rows)  # type: ignore[arg-type]
        start += len(records)
    return shared


def shared_unique(splits: dict[str, Sequence]) -> UniqueSequences | None:
    """The one UniqueSequences every split's sequences point into (share_sequences made them), else None."""
    columns = [getattr(records, "sequences", None) for records in splits.values()]
    if columns and all(isinstance(c, SharedSequences) and c.unique is columns[0].unique for c in columns):
        return columns[0].unique  # type: ignore[union-attr]
    return None


def unique_of(splits: dict[str, Records]) -> UniqueSequences:
    """The UniqueSequences the splits share (share_sequences made them), or a fresh one."""
    unique = shared_unique(splits)
    if unique is not None:
        return unique
    return share_sequences({name: Records.of(records) for name, records in splits.items()})[1]


def shared_splits(splits: dict[str, Sequence]) -> dict[str, Records]:
    """The splits as Records sharing one UniqueSequences: unchanged when they already do
    (utils.running.plan.read_splits)."""
    if shared_unique(splits) is not None:
        return splits  # type: ignore[return-value]
    return share_sequences({name: Records.of(records) for name, records in splits.items()})[0]


def split_digests(records: Records) -> np.ndarray:
    """DIGEST of each protein's sequence, in the split's order."""
    if isinstance(records.sequences, SharedSequences):
        return records.sequences.digests()
    return digests_of(records.sequences)
