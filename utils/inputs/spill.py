"""A run's input on disk instead of in memory: the residues and the header lines of a proteome's FASTA splits.

At UniRef scale (60 M proteins, ~16 GB of residues) the job cannot keep residues or headers in the process that reads
the input. The reader (utils/inputs/reading.py) appends them to two scratch files in the output directory as it goes:

    FileStrings   residues: the file, and each sequence's start and length (12 bytes a sequence in memory); a
                  worker process reads the batches it embeds from the file, so a work order travels as a path and
                  two arrays, and no process holds a whole proteome's residues
    HeaderLines   header lines, one per line in input order, read back in order as the writers ask for them
                  (the files are written in input order), a block at a time

The scratch files are named as temporary files (utils.files.temporary_path), so a killed run's are removed when the
next run takes the output directory; a run removes its own when it ends (`Spill.close`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from utils.files import temporary_path
from utils.inputs.strings import PackedStrings


class FileStrings(PackedStrings):
    """ASCII strings stored in a file, each at `starts[i]` for `lengths[i]` bytes: the Strings interface
    (utils.inputs.strings.Strings) over a file. Pickles as its path and arrays, never its text."""

    __slots__ = ("path", "starts", "lengths", "_descriptor")

    def __init__(self, path: Path, starts: np.ndarray, lengths: np.ndarray):
        self.path = path
        self.starts = starts
        self.lengths = lengths
        self._descriptor: int | None = None

    def _file(self) -> int:
        """One descriptor per process, opened on first read (a worker reads its batches one sequence at a time)."""
        if self._descriptor is None:
            self._descriptor = os.open(self.path, os.O_RDONLY)
        return self._descriptor

    def __len__(self) -> int:
        return len(self.starts)

    def raw(self, index: int) -> bytes:
        index = int(index)
        if index < 0:
            index += len(self.starts)
        if not 0 <= index < len(self.starts):
            raise IndexError(index)
        return os.pread(self._file(), int(self.lengths[index]), int(self.starts[index]))

    def raw_items(self) -> Iterator[bytes]:
        """Every string's bytes in turn."""
        descriptor = self._file()
        for start, length in zip(self.starts.tolist(), self.lengths.tolist(), strict=True):
            yield os.pread(descriptor, length, start)

    def byte_lengths(self, dtype: type = np.int64) -> np.ndarray:
        return self.lengths.astype(dtype, copy=False)

    def take(self, indices: Iterable[int] | np.ndarray) -> FileStrings:
        chosen = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        return FileStrings(self.path, self.starts[chosen], self.lengths[chosen])

    def release(self) -> None:
        """Nothing to let go but the descriptor: the text is in the file."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __getstate__(self) -> tuple:
        return (self.path, self.starts, self.lengths)

    def __setstate__(self, state: tuple) -> None:
        self.path, self.starts, self.lengths = state
        self._descriptor = None

    def __del__(self) -> None:
        self.release()


class HeaderLines(Sequence[str]):
    """`count` header lines of a file from byte `offset`, read forward as asked: index i, or a slice, at or past the
    last one read (writers go through a split in input order); going back starts over from `offset`."""

    BLOCK = 1 << 20

    def __init__(self, path: Path, offset: int, count: int, end: int = 0):
        self.path, self.offset, self.count, self.end = path, offset, count, end
        self._handle = None
        self._next = 0  # the index of the next line the handle gives

    def total_bytes(self) -> int:
        """The bytes of all the lines together (their line ends not counted)."""
        return max(self.end - self.offset - self.count, 0)

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            self._seek(start)
            return [self._line() for _ in range(start, stop)]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(index)
        self._seek(index)
        return self._line()

    def __iter__(self) -> Iterator[str]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for _ in range(self.count):
                yield handle.readline()[:-1].decode("utf-8")

    def _seek(self, index: int) -> None:
        if self._handle is None or index < self._next:
            if self._handle is not None:
                self._handle.close()
            self._handle = open(self.path, "rb", buffering=self.BLOCK)  # noqa: SIM115 (closed on rewind, or by gc)
            self._handle.seek(self.offset)
            self._next = 0
        while self._next < index:
            self._line()

    def _line(self) -> str:
        assert self._handle is not None
        self._next += 1
        return self._handle.readline()[:-1].decode("utf-8")

    def __getstate__(self) -> tuple:
        return (self.path, self.offset, self.count, self.end)

    def __setstate__(self, state: tuple) -> None:
        self.path, self.offset, self.count, self.end = state
        self._handle, self._next = None, 0

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._handle.close()


class Spill:
    """The two scratch files of one reading, in `directory`: residues and header lines, appended in input order."""

    def __init__(self, directory: Path, residues: bool = True, headers: bool = True):
        directory.mkdir(parents=True, exist_ok=True)
        self.residues_path = temporary_path(directory / "sequences") if residues else None
        self.headers_path = temporary_path(directory / "headers") if headers else None
        self._residues = open(self.residues_path, "wb") if self.residues_path else None  # noqa: SIM115
        self._headers = open(self.headers_path, "wb") if self.headers_path else None  # noqa: SIM115

    def add_residues(self, residues: bytes) -> int:
        """Append one sequence; → its start."""
        assert self._residues is not None
        start = self._residues.tell()
        self._residues.write(residues)
        return start

    def headers_offset(self) -> int:
        assert self._headers is not None
        return self._headers.tell()

    def add_header(self, header: str) -> None:
        assert self._headers is not None
        self._headers.write(header.encode("utf-8") + b"\n")

    def finish(self) -> None:
        """Flush what was written (readers open the files by path)."""
        for handle in (self._residues, self._headers):
            if handle is not None:
                handle.flush()

    def close(self) -> None:
        """The run is over: the files go."""
        for handle in (self._residues, self._headers):
            if handle is not None:
                handle.close()
        for path in (self.residues_path, self.headers_path):
            if path is not None:
                path.unlink(missing_ok=True)
