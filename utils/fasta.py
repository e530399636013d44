"""FASTA file → records. The id is the header's first word, kept verbatim; the sequence is upper-case residues.

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
import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError
from utils.paths import input_file_problem

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


def _read_text(path: Path) -> str:
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


def parse_fasta(text: str, source: str) -> list[Record]:
    """Parse FASTA text; raise UserError listing every problem (see module docstring for what is accepted)."""
    problems: list[str] = []
    records: list[Record] = []
    seen: dict[str, int] = {}
    header: str | None = None
    header_line = 0
    pieces: list[tuple[int, str]] = []  # (line number, residues on that line)

    def finish() -> None:
        if header is None:
            return
        words = header.split(maxsplit=1)
        if not words:
            problems.append(f"{source}:{header_line}: header has no id; write an id right after '>'")
            return
        rec_id = words[0]
        shown = _shown(rec_id)
        hidden = next((c for c in rec_id if unicodedata.category(c) in _HIDDEN_CATEGORIES), None)
        if hidden is not None:
            problems.append(
                f"{source}:{header_line}: protein id {shown} contains the control or invisible character "
                f"U+{ord(hidden):04X}; ids must be visible text: remove it from the header"
            )
        if pieces and pieces[-1][1].endswith(STOP):  # one trailing stop codon is not a residue
            pieces[-1] = (pieces[-1][0], pieces[-1][1][:-1])
        sequence = "".join(piece for _, piece in pieces)
        if not sequence:
            problems.append(f"{source}:{header_line}: protein {shown} has an empty sequence; remove the record")
        bad = _first_bad_residue(pieces) if not _LETTERS.issuperset(sequence) else None
        if bad is not None:
            position, line, char, more = bad
            if char == STOP:
                what, fix = "a stop '*'", "'*' may only end a sequence: split the record or remove it"
            else:
                what = f"character {char!r}"
                fix = _HINTS.get(char, f"only the letters {_ALPHABET_TEXT} are residues: remove or replace it")
            also = f" (and {more} more bad character(s) after it)" if more else ""
            problems.append(f"{source}:{line}: protein {shown} has {what} at residue {position}{also}; {fix}")
        if rec_id in seen:
            problems.append(
                f"{source}:{header_line}: protein id {shown} appears twice (lines {seen[rec_id]} and "
                f"{header_line}); ids must be unique: rename or remove one"
            )
        else:
            seen[rec_id] = header_line
        records.append(Record(rec_id, sequence.upper(), header))

    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        stripped = line.strip(_BLANKS)
        if not stripped:
            continue
        if stripped.startswith(">"):
            finish()
            header, header_line, pieces = stripped[1:].lstrip(_BLANKS), number, []
        elif header is None:
            problems.append(
                f"{source}:{number}: text before the first '>' header; this does not look like FASTA "
                "(each record starts with a line '>id description')"
            )
            break
        else:
            pieces.append((number, stripped.translate(_DROP_BLANKS)))
    finish()
    if not records and not problems:
        problems.append(f"{source}: no FASTA records found; check that the path names the right file")
    if problems:
        raise UserError(problems)
    return records


def read_fasta(path: Path) -> list[Record]:
    problem = input_file_problem(path)
    if problem:
        raise UserError(f"{path}: {problem}; name a FASTA file (plain or gzip) in the config")
    if not path.is_file():
        raise UserError(f"{path}: FASTA file not found; check paths.data_dir and the split's file name in the config")
    return parse_fasta(_read_text(path), str(path))
