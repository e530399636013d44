"""Checkpoint chunks → one model's vectors laid out by unique index, on disk → a split's rows, block by block.

Chunks hold proteins in batch order (longest first); the final files list them in input order. Holding every unique
vector in memory to reorder them (U × D × 2 bytes: 2 GB per million proteins at D = 1,024) would make the merge the
job's memory ceiling, so the vectors are first scattered, one chunk at a time, into a float16 file laid out by unique
index (`UniqueVectors`), and the writers gather a block of rows at a time from it (`DiskRows`). Unique indices follow
first appearance, so a block of a split's rows reads a nearly contiguous stretch of that file. Rows are written with
plain writes and a block is mapped only while it is gathered, so the file's pages stay in the page cache, not in the
process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.inputs.unique import UniqueSequences, hex_to_digests
from utils.outputs.writers import RowView
from utils.running.store import ChunkStore


@dataclass
class UniqueVectors:
    """float16 [U, D] in `path`, row u the vector of unique sequence u; `filled[u]` whether a chunk had it."""

    path: Path
    dim: int
    filled: np.ndarray  # bool [U]
    notes: dict[str, Any] = field(default_factory=dict)  # hex digest → note (windows, fp32 redo), from the chunks

    @classmethod
    def scatter(cls, stores: list[ChunkStore], unique: UniqueSequences, path: Path) -> UniqueVectors:
        """The trusted chunks of `stores` (partitions, in order of preference) that hold any of `unique`'s sequences,
        one at a time, into `path` (created sparse; the caller removes it). A sequence in several chunks (two runs
        computed it) is taken once: from the first partition, then the first chunk, that holds it."""
        count, dim = len(unique), stores[0].dim or 0
        filled = np.zeros(count, dtype=bool)
        notes: dict[str, Any] = {}
        with open(path, "wb") as handle:
            handle.truncate(count * dim * 2)
        for store in stores:
            for chunk in store.chunks_holding(unique.sorted_digests()):
                where, found = unique.positions_of(hex_to_digests(chunk["digests"]))
                known = np.flatnonzero(found)
                known = known[~filled[where[known]]]
                if not len(known):
                    continue
                positions = where[known]
                vectors = chunk["pooled"][torch.from_numpy(known)].to(torch.float16).numpy()
                write_rows(path, positions, vectors)
                filled[positions] = True
                if chunk["notes"]:
                    taken = {chunk["digests"][i] for i in known.tolist()}
                    notes.update({d: n for d, n in chunk["notes"].items() if d in taken})
        return cls(path, dim, filled, notes)

    def rows(self, positions: np.ndarray) -> DiskRows:
        """A split's rows: `positions[i]` is protein i's unique index."""
        return DiskRows(self, positions)


class DiskRows(RowView):
    """RowView over a UniqueVectors file: each block is read from it when asked for, a block at a time."""

    def __init__(self, vectors: UniqueVectors, positions: np.ndarray):
        self.vectors = vectors
        self.rows = positions

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.vectors.dim

    def block(self, start: int, end: int) -> torch.Tensor:
        count = len(self.vectors.filled)
        if not count or end <= start:
            return torch.zeros(max(end - start, 0), self.vectors.dim, dtype=torch.float16)
        mapped = np.memmap(self.vectors.path, dtype=np.float16, mode="r", shape=(count, self.vectors.dim))
        block = np.array(mapped[np.asarray(self.rows[start:end], dtype=np.int64)])  # a copy: the map goes now
        del mapped
        return torch.from_numpy(block)


def write_rows(path: Path, positions: np.ndarray, vectors: np.ndarray) -> None:
    """vectors[i] into row positions[i] of the [U, D] float16 file, with plain writes: a chunk's rows fall all over
    the file, and a memory map would hold every page they touch in this process's memory while it is mapped."""
    order = np.argsort(positions, kind="stable")
    positions, vectors = positions[order], np.ascontiguousarray(vectors[order])
    row = vectors.shape[1] * vectors.itemsize
    # Runs of consecutive rows go in one write each
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    with open(path, "r+b") as handle:
        descriptor = handle.fileno()
        for start, end in zip([0, *breaks.tolist()], [*breaks.tolist(), len(positions)], strict=True):
            os.pwrite(descriptor, vectors[start:end].tobytes(), int(positions[start]) * row)


def scratch_path(output_dir: Path, output_key: str) -> Path:
    """Where the merge scatters one model's vectors: in the output directory (the store may be shared with other
    runs), a name the temporary-file sweep of the output directory's lock knows."""
    return output_dir / f".unique_vectors.{output_key}.f16.tmp-{os.getpid()}"
