"""Many strings packed as one buffer and their end offsets: a proteome's ids, headers and sequences without a Python
object per protein (a list of str costs ~57 bytes per string beyond its characters; this, 4 or 8)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np


class PackedStrings(Sequence[str]):
    """What Strings and utils.inputs.spill.FileStrings share: each string is made from its UTF-8 bytes, which a
    subclass gives one at a time (raw) or all in turn (raw_items)."""

    __slots__ = ()

    def raw(self, index: int) -> bytes | bytearray:
        raise NotImplementedError

    def raw_items(self) -> Iterator[bytes | bytearray]:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.raw(index).decode()

    def __iter__(self) -> Iterator[str]:
        for item in self.raw_items():
            yield item.decode()


class Strings(PackedStrings):
    """Many strings packed as one UTF-8 buffer and their end offsets. A list of str costs ~57 bytes per string
    beyond its characters; this costs 4 (or 8) bytes, so a proteome's ids, headers and sequences stay compact."""

    __slots__ = ("data", "ends")

    def __init__(self, data: bytes | bytearray | None, ends: np.ndarray):
        self.data = data
        self.ends = ends

    @classmethod
    def of(cls, items: Iterable[str]) -> Strings:
        builder = StringsBuilder()
        for item in items:
            builder.append(item)
        return builder.build()

    def __len__(self) -> int:
        return len(self.ends)

    def _span(self, index: int) -> tuple[int, int]:
        if index < 0:
            index += len(self.ends)
        if not 0 <= index < len(self.ends):
            raise IndexError(index)
        return (int(self.ends[index - 1]) if index else 0), int(self.ends[index])

    def raw(self, index: int) -> bytes | bytearray:
        """One string's UTF-8 bytes (a copy)."""
        start, end = self._span(int(index))
        return self._text()[start:end]

    def raw_items(self) -> Iterator[bytes | bytearray]:
        """Every string's UTF-8 bytes in turn."""
        start, data = 0, self._text()
        for end in self.ends.tolist():
            yield data[start:end]
            start = end

    def _text(self) -> bytes | bytearray:
        if self.data is None:
            raise RuntimeError("these strings were released (only their lengths were kept)")
        return self.data

    def release(self) -> None:
        """Drop the text, keep the lengths: a job lets its residues go once the workers have them."""
        self.data = None

    def byte_lengths(self, dtype: type = np.int64) -> np.ndarray:
        """Bytes per string (characters, for ASCII text such as sequences), int64 or `dtype`; no temporary arrays."""
        lengths = np.empty(len(self.ends), dtype=dtype)
        if len(lengths):
            lengths[0] = self.ends[0]
            np.subtract(self.ends[1:], self.ends[:-1], out=lengths[1:], casting="unsafe")
        return lengths

    def total_bytes(self) -> int:
        """The bytes of all the strings together."""
        return int(self.ends[-1]) if len(self.ends) else 0

    def take(self, indices: Iterable[int]) -> Strings:
        """The strings at `indices`, in that order, as new packed strings."""
        builder = StringsBuilder()
        for index in indices:
            builder.append_bytes(self.raw(index))
        return builder.build()


class StringsBuilder:
    """Appends into one growing buffer; build() packs the offsets as uint32 when they fit (4 bytes a string)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends = array("q")

    def append(self, text: str) -> None:
        self.append_bytes(text.encode())

    def append_bytes(self, data: bytes | bytearray) -> None:
        self.data += data
        self.ends.append(len(self.data))

    def build(self) -> Strings:
        ends = np.frombuffer(self.ends, dtype=np.int64) if self.ends else np.zeros(0, dtype=np.int64)
        dtype = np.uint32 if len(self.data) < 2**32 else np.int64
        packed = Strings(self.data, ends.astype(dtype))
        self.data, self.ends = bytearray(), array("q")
        return packed
