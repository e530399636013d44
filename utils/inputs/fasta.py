"""FASTA file → records. The id is the header's first word, kept verbatim; the sequence is upper-case residues.

The file is read a block at a time and records are kept as packed columns (Records: ids, sequences and headers
each one buffer plus offsets), so memory grows by about the bytes of the records themselves, not by Python objects.

The id ends at the first whitespace character of any kind (str.split: also no-break and other Unicode spaces), as
in Biopython; an id that is empty after that, or holds a control or invisible format character, is refused.

Accepted as they are: plain or gzip (detected by content, not by name), a UTF-8 byte-order mark, wrapped lines,
LF / CRLF / CR line ends, blank lines, spaces or tabs inside sequence lines, lower-case residues (upper-cased: for
ProstT5 lower case would silently mean 3Di), one trailing `*`, any characters in the header.
Everything else that is not a protein is refused, each problem naming the file, the id and the position:
characters outside the alphabet, a `*` before the end, empty sequences, duplicate ids, a file with no records,
text before the first header, binary or otherwise compressed data.
"""

from __future__ import annotations

import gzip
import io
import re
import unicodedata
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from utils.errors import UserError
from utils.inputs.paths import input_file_problem
from utils.inputs.strings import Strings, StringsBuilder

# The 20 standard amino acids plus the ambiguity/rare codes every supported family has in its vocabulary.
ALPHABET = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
STOP = "*"
_ALPHABET_TEXT = "".join(sorted(ALPHABET))
# Checked before upper-casing: str.upper() maps some non-ASCII letters onto ASCII ones ('ı' → 'I', 'ſ' → 'S').
_LETTERS = ALPHABET | frozenset(c.lower() for c in ALPHABET)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BLANKS = " \t\v\f"  # ASCII blanks: trimmed from lines, dropped inside sequence lines
_DROP_BLANKS = str.maketrans("", "", _BLANKS)
_HIDDEN_CATEGORIES = ("Cc", "Cf")  # control and invisible format characters (e.g. U+200B): refused in ids
_HINTS = {
    "-": "alignment gaps are not residues: give unaligned sequences",
    ".": "alignment gaps are not residues: give unaligned sequences",
}
_OTHER_FORMATS = {  # magic bytes of compressed or binary formats people hand over instead of FASTA
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"PK\x03\x04": "a zip archive",
    b"\x89HDF": "an HDF5 file",
}


@dataclass(frozen=True)
class Record:
    id: str
    sequence: str
    header: str = field(default="", compare=False)  # the whole header line after '>', kept for the outputs


@dataclass(frozen=True)
class Records(Sequence[Record]):
    """One FASTA file's proteins in input order, as packed columns rather than an object per protein (a proteome of
    millions would otherwise cost hundreds of bytes each). Indexing and iteration give Record objects."""

    ids: Strings
    sequences: Strings  # upper-case residues, ASCII
    headers: Strings

    @classmethod
    def of(cls, records: Iterable[Record]) -> Records:
        if isinstance(records, Records):
            return records
        records = list(records)
        return cls(
            Strings.of(r.id for r in records),
            Strings.of(r.sequence for r in records),
            Strings.of(r.header for r in records),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Record(self.ids[index], self.sequences[index], self.headers[index])

    def __iter__(self) -> Iterator[Record]:
        for rec_id, sequence, header in zip(self.ids, self.sequences, self.headers, strict=True):
            yield Record(rec_id, sequence, header)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Records, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def lengths(self, dtype: type = np.int64) -> np.ndarray:
        """Residues per protein, int64 or `dtype`."""
        return sequence_lengths(self.sequences, dtype)


def sequence_lengths(sequences: Sequence[str], dtype: type = np.int64) -> np.ndarray:
    """Residues per protein (int64, or `dtype`: a worker planning a proteome keeps int32) of any column of sequences;
    packed ones (Strings, FileStrings, utils.inputs.unique's SharedSequences) give theirs without making a string
    each."""
    if hasattr(sequences, "byte_lengths"):
        return sequences.byte_lengths(dtype)
    return np.array([len(s) for s in sequences], dtype=dtype)


def _read_text(path: Path) -> str:
    """The whole file as text, diagnosing binary or undecodable content (the slow path, for refusals)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{path}: cannot be read ({reason}); check the file's permissions") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"{path}: gzip data is damaged ({exc}); download or compress the file again") from None
    for magic, what in _OTHER_FORMATS.items():
        if raw.startswith(magic):
            raise UserError(f"{path}: this is {what}, not FASTA; give the plain or gzip-compressed FASTA file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: byte 0x{raw[exc.start]:02x} is not UTF-8 text; this is a binary file, not FASTA, "
            "or a text file in another encoding (save it as UTF-8)"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise UserError(f"{path}:{line}: contains NUL bytes; this is a binary file, not FASTA")
    return text


def _shown(rec_id: str, limit: int = 80) -> str:
    """The id as a quoted literal (escapes make invisible characters visible), shortened to keep one line short."""
    text = repr(rec_id)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _first_bad_residue(pieces: list[tuple[int, str]]) -> tuple[int, int, str, int] | None:
    """(residue position, line, character, how many more bad characters) of the first non-letter, or None."""
    position, first, more = 0, None, 0
    for line, piece in pieces:
        for char in piece:
            position += 1
            if char not in _LETTERS:
                if first is None:
                    first = (position, line, char)
                else:
                    more += 1
    return None if first is None else (*first, more)


def parse_fasta(text: str, source: str) -> Records:
    """Parse FASTA text; raise UserError listing every problem (see module docstring for what is accepted)."""
    return parse_lines(_LINE_BREAK.split(text), source)


def parse_lines(lines: Iterable[str], source: str) -> Records:
    """Parse FASTA lines (without their line ends) into packed records, one record in flight at a time."""
    problems: list[str] = []
    ids, sequences, headers = StringsBuilder(), StringsBuilder(), StringsBuilder()
    # Duplicate ids are found after the reading, from these two compact columns, not from a dict of every id.
    id_hashes, header_lines = array("q"), array("q")
    for rec_id, sequence, header, header_line in iter_records(lines, source, problems):
        ids.append(rec_id)
        sequences.append_bytes(sequence)
        headers.append(header)
        id_hashes.append(hash(rec_id))
        header_lines.append(header_line)
    records = Records(ids.build(), sequences.build(), headers.build())
    problems += _duplicate_ids(records.ids, id_hashes, header_lines, source)
    if not records and not problems:
        problems.append(no_records(source))
    if problems:
        raise UserError(problems)
    return records


def no_records(source: str) -> str:
    return f"{source}: no FASTA records found; check that the path names the right file"


def iter_records(lines: Iterable[str], source: str, problems: list[str]) -> Iterator[tuple[str, bytes, str, int]]:
    """(id, upper-case residues as ASCII bytes, whole header line, its line number) for every record, in order, one
    record in flight at a time; each problem found (see the module docstring) is appended to `problems` as one line
    naming the file, the line and the protein, and the record is still given (so that every problem is listed)."""
    header: str | None = None
    header_line = 0
    pieces: list[tuple[int, str]] = []  # (line number, residues on that line)

    def finish() -> tuple[str, bytes, str, int] | None:
        if header is None:
            return None
        words = header.split(maxsplit=1)
        if not words:
            problems.append(f"{source}:{header_line}: header has no id; write an id right after '>'")
            return None
        rec_id = words[0]
        hidden = None
        if not rec_id.isprintable():  # printable text has no control or format character: the common case
            hidden = next((c for c in rec_id if unicodedata.category(c) in _HIDDEN_CATEGORIES), None)
        if hidden is not None:
            problems.append(
                f"{source}:{header_line}: protein id {_shown(rec_id)} contains the control or invisible character "
                f"U+{ord(hidden):04X}; ids must be visible text: remove it from the header"
            )
        if pieces and pieces[-1][1].endswith(STOP):  # one trailing stop codon is not a residue
            pieces[-1] = (pieces[-1][0], pieces[-1][1][:-1])
        sequence = "".join(piece for _, piece in pieces)
        if not sequence:
            problems.append(
                f"{source}:{header_line}: protein {_shown(rec_id)} has an empty sequence; remove the record"
            )
        bad = _first_bad_residue(pieces) if not _LETTERS.issuperset(sequence) else None
        if bad is not None:
            position, line, char, more = bad
            if char == STOP:
                what, fix = "a stop '*'", "'*' may only end a sequence: split the record or remove it"
            else:
                what = f"character {char!r}"
                fix = _HINTS.get(char, f"only the letters {_ALPHABET_TEXT} are residues: remove or replace it")
            also = f" (and {more} more bad character(s) after it)" if more else ""
            problems.append(f"{source}:{line}: protein {_shown(rec_id)} has {what} at residue {position}{also}; {fix}")
        return rec_id, sequence.upper().encode("ascii", "replace"), header, header_line

    for number, line in enumerate(lines, start=1):
        stripped = line.strip(_BLANKS)
        if not stripped:
            continue
        if stripped.startswith(">"):
            record = finish()
            if record is not None:
                yield record
            header, header_line, pieces = stripped[1:].lstrip(_BLANKS), number, []
        elif header is None:
            problems.append(
                f"{source}:{number}: text before the first '>' header; this does not look like FASTA "
                "(each record starts with a line '>id description')"
            )
            return
        else:
            pieces.append((number, stripped.translate(_DROP_BLANKS)))
    record = finish()
    if record is not None:
        yield record


def repeated_ids(ids: Strings, hashes: np.ndarray | None = None) -> list[tuple[int, int]]:
    """(first index, later index) for every id an earlier one already has, in input order. Only ids whose hash
    (`hashes`, else computed here) collides with another's are compared as text, so no dict of every id is built
    for a proteome."""
    if hashes is None:
        hashes = np.fromiter((hash(rec_id) for rec_id in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(hashes, kind="stable")
    same = hashes[order[1:]] == hashes[order[:-1]]
    first: dict[str, int] = {}
    pairs = []
    for index in np.union1d(order[1:][same], order[:-1][same]).tolist():  # sorted: input order
        earlier = first.setdefault(ids[index], index)
        if earlier != index:
            pairs.append((earlier, index))
    return pairs


def _duplicate_ids(ids: Strings, id_hashes: array, header_lines: array, source: str) -> list[str]:
    """One problem per record whose id an earlier record has, naming both header lines."""
    hashes = np.frombuffer(id_hashes, dtype=np.int64) if id_hashes else np.zeros(0, dtype=np.int64)
    return [
        duplicate_id(source, ids[later], header_lines[first], header_lines[later])
        for first, later in repeated_ids(ids, hashes)
    ]


def duplicate_id(source: str, rec_id: str, first_line: int, later_line: int) -> str:
    return (
        f"{source}:{later_line}: protein id {_shown(rec_id)} appears twice (lines {first_line} and {later_line}); "
        "ids must be unique: rename or remove one"
    )


class _NotText(Exception):
    """Raised while streaming a file that turns out not to be text (undecodable bytes, NUL bytes)."""


def _stream_lines(path: Path) -> Iterator[str]:
    """The file's lines, decoded and without line ends (LF, CRLF and CR alike), read a block at a time: a proteome's
    FASTA is never in memory whole. Plain or gzip by content. Raises UserError for an unreadable or damaged file and
    _NotText for bytes that are not UTF-8 text (the caller diagnoses those from the whole file)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below, after the generator is exhausted or closed)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); check the file's permissions"
        ) from None
    with handle:
        compressed = handle.read(2) == b"\x1f\x8b"
        handle.seek(0)
        raw: Any = gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle
        try:
            head = raw.read(8)
            for magic, what in _OTHER_FORMATS.items():
                if head.startswith(magic):
                    raise UserError(f"{path}: this is {what}, not FASTA; give the plain or gzip-compressed FASTA file")
            raw.seek(0)
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline=None)
            for line in text:
                if "\x00" in line:
                    raise _NotText
                yield line[:-1] if line.endswith("\n") else line
        except UnicodeDecodeError:
            raise _NotText from None
        except (OSError, EOFError, zlib.error) as exc:
            if compressed:
                raise UserError(f"{path}: gzip data is damaged ({exc}); download or compress the file again") from None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise UserError(f"{path}: cannot be read ({reason}); check the file's permissions") from None


def read_fasta(path: Path) -> Records:
    return parse_lines(fasta_lines(path), str(path))


def fasta_lines(path: Path) -> Iterator[str]:
    """A FASTA file's lines for iter_records, streamed; raises UserError for anything that is not a readable FASTA
    text file (a missing file, a directory or pipe, binary or undecodable content), one line naming it."""
    problem = input_file_problem(path)
    if problem:
        raise UserError(f"{path}: {problem}; name a FASTA file (plain or gzip) in the config")
    if not path.is_file():
        raise UserError(f"{path}: FASTA file not found; check paths.data_dir and the split's file name in the config")
    try:
        yield from _stream_lines(path)
    except _NotText:
        # Binary or not UTF-8: the whole file read at once says where and what, as one message
        parse_fasta(_read_text(path), str(path))
        raise UserError(f"{path}: not a FASTA text file") from None
