"""FASTA file → records. The id is the header's first word, kept verbatim; the sequence is upper-case residues.

Accepted as they are: plain or gzip (detected by content, not by name), wrapped lines, CRLF, blank lines,
lower-case residues (upper-cased: for ProstT5 lower case would silently mean 3Di), one trailing `*`.
Everything else that is not a protein is refused, each problem naming the file, the id and the position.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError

# The 20 standard amino acids plus the ambiguity/rare codes every supported family has in its vocabulary.
ALPHABET = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
STOP = "*"


@dataclass(frozen=True)
class Record:
    id: str
    sequence: str


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: gzip data is damaged ({exc}); download or compress the file again") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: byte {exc.start} is not UTF-8 text; this does not look like a FASTA file"
        ) from None


def parse_fasta(text: str, source: str) -> list[Record]:
    """Parse FASTA text; raise UserError listing every problem (see module docstring for what is accepted)."""
    problems: list[str] = []
    records: list[Record] = []
    seen: dict[str, int] = {}
    header: str | None = None
    header_line = 0
    parts: list[str] = []

    def finish() -> None:
        if header is None:
            return
        words = header.split()
        if not words:
            problems.append(f"{source}:{header_line}: header has no id; write an id right after '>'")
            return
        rec_id = words[0]
        sequence = "".join(parts).upper()
        if sequence.endswith(STOP):
            sequence = sequence[:-1]
        if not sequence:
            problems.append(f"{source}: protein {rec_id!r} (line {header_line}) has an empty sequence; remove it")
        for pos, char in enumerate(sequence, start=1):
            if char not in ALPHABET:
                what = "a stop '*' before the end" if char == STOP else f"character {char!r}"
                problems.append(
                    f"{source}: protein {rec_id!r} has {what} at residue {pos}; "
                    f"only amino-acid letters {''.join(sorted(ALPHABET))} (and one final '*') are allowed"
                )
                break
        if rec_id in seen:
            problems.append(
                f"{source}: protein id {rec_id!r} appears twice (lines {seen[rec_id]} and {header_line}); ids must be unique"
            )
        else:
            seen[rec_id] = header_line
        records.append(Record(rec_id, sequence))

    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(">"):
            finish()
            header, header_line, parts = stripped[1:], number, []
        elif header is None:
            problems.append(f"{source}:{number}: text before the first '>' header; this does not look like FASTA")
            break
        else:
            parts.append("".join(stripped.split()))
    finish()
    if not records and not problems:
        problems.append(f"{source}: no FASTA records found; check that the path names the right file")
    if problems:
        raise UserError(problems)
    return records


def read_fasta(path: Path) -> list[Record]:
    if not path.is_file():
        raise UserError(f"{path}: FASTA file not found; check paths.data_dir and the split's file name in the config")
    return parse_fasta(_read_text(path), str(path))
