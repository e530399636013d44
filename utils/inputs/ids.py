"""Protein ids from FASTA headers, as the config's `paths.id_format` asks (a pure mapping over parsed records).

- `first_word` (default): the header's first word, verbatim (what utils/inputs/fasta.py already gives).
- `uniprot`: UniProt headers `sp|ACC|NAME …` and `tr|ACC|NAME …` give `ACC` (isoforms keep their suffix:
  `sp|P12345-2|…` → `P12345-2`); any other header, a bare accession included, keeps its first word. This is what
  labels join on: CAFA's training FASTA has Swiss-Prot headers, its test FASTA bare accessions, GO annotations and
  ProtSpace use the accession.

A header that looks like UniProt's but is not (`SP|…` in upper case, `sp|Q11111` without the entry name, `tr||X`
with no accession) keeps its first word, and the job says so in one line with the count and an example
(`uniprot_lookalikes`): such an id will not join with UniProt annotations.

The whole header line stays on the record (`Record.header`) and goes into the outputs, so nothing is lost.
Ids must be unique within a file after mapping: `sp|P1|A` and `tr|P1|B` (or `sp|P1|A` and a bare `P1`) are refused,
naming both headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from utils.errors import UserError
from utils.inputs.fasta import Record, Records, repeated_ids
from utils.inputs.strings import Strings

ID_FORMATS = ("first_word", "uniprot")
# The database tag, the accession, then the entry name: the layout of every UniProtKB FASTA header.
_UNIPROT_HEADER = re.compile(r"^(?:sp|tr)\|([^|]+)\|")


# What a user meant as a UniProt header: a database tag in any case, then a bar.
_UNIPROT_LIKE = re.compile(r"^(?:sp|tr)\|", re.IGNORECASE)


def protein_id(first_word: str, id_format: str) -> str:
    """The id of one record whose header starts with `first_word`."""
    if id_format == "uniprot":
        match = _UNIPROT_HEADER.match(first_word)
        if match:
            return match.group(1)
        return first_word
    if id_format == "first_word":
        return first_word
    raise ValueError(f"unknown id_format {id_format!r}")  # the config refuses it before this


def _shown(header: str, limit: int = 70) -> str:
    text = repr(header)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def apply_id_format(records: Sequence[Record], id_format: str, source: str) -> Records:
    """Records with ids mapped by `id_format`; raise UserError for every id that two headers now share."""
    records = Records.of(records)
    if id_format == "first_word":
        return records
    mapped = replace(records, ids=Strings.of(protein_id(rec_id, id_format) for rec_id in records.ids))
    problems = [
        shared_id(source, mapped.headers[first], mapped.headers[later], mapped.ids[later], id_format)
        for first, later in repeated_ids(mapped.ids)
    ]
    if problems:
        raise UserError(problems)
    return mapped


def shared_id(source: str, first_header: str, later_header: str, rec_id: str, id_format: str) -> str:
    """The problem of two headers that `id_format` maps to one id."""
    return (
        f"{source}: headers {_shown(first_header)} and {_shown(later_header)} both give protein id {rec_id!r} under "
        f"paths.id_format: {id_format}; ids must be unique: remove one of the two proteins, or set id_format: "
        "first_word"
    )


def looks_like_uniprot(first_word: str) -> bool:
    """A header's first word that starts like a UniProt header but is not one (it keeps its first word as id)."""
    return bool(_UNIPROT_LIKE.match(first_word)) and not _UNIPROT_HEADER.match(first_word)


def uniprot_lookalikes(files: Iterable[Records], id_format: str) -> str | None:
    """Under id_format uniprot: one line counting the headers that start like a UniProt header but are not one (so
    they kept their first word), with an example; None when there are none (or another id_format)."""
    if id_format != "uniprot":
        return None
    count, example = 0, None
    for records in files:
        for first_word in records.ids:
            if looks_like_uniprot(first_word):
                count += 1
                example = example or first_word
    return lookalike_note(count, example)


def lookalike_note(count: int, example: str | None) -> str | None:
    """The note on `count` UniProt look-alike headers (looks_like_uniprot), or None when there are none."""
    if not count:
        return None
    return (
        f"paths.id_format: uniprot: {count} header(s) start like a UniProt header but are not 'sp|ACC|NAME' or "
        f"'tr|ACC|NAME' (e.g. {_shown(example or '')}); they keep their first word as the id"
    )
