"""The config's FASTA splits → what a run keeps of them, each file streamed once, every problem listed at once.

    splits, note = read_fasta_splits(config.splits, config.id_format)                     # all of it, in memory
    splits, note = read_fasta_splits(config.splits, config.id_format, Keep(spill=spill))  # residues, headers on disk
    splits, note = read_fasta_splits(..., Keep(belongs=in_shard, spill=spill))           # one array shard's share

Each record is checked as it is read (utils/inputs/fasta.py), its id made (utils/inputs/ids.py), its sequence hashed;
then only what the run needs is kept, packed: the id, the sequence's digest, the residues (in memory, or appended to
a scratch file: utils/inputs/spill.py), the header line (likewise). An array shard keeps only the proteins whose
sequence falls in its shard (`belongs`), so each of N tasks holds about 1/N of the input; --merge keeps no residues
(`residues=False`). Duplicate ids are found from an 8-byte hash per protein, and named by reading the file again
(only when there are some). Each distinct sequence is then kept once (utils.inputs.unique.dedupe), and every split's
proteins point into that set (SharedSequences).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import UserError
from utils.inputs.fasta import Records, duplicate_id, fasta_lines, iter_records, no_records
from utils.inputs.ids import lookalike_note, looks_like_uniprot, protein_id, shared_id
from utils.inputs.spill import FileStrings, HeaderLines, Spill
from utils.inputs.strings import Strings, StringsBuilder
from utils.inputs.unique import DIGEST, SharedSequences, UniqueSequences, dedupe


@dataclass(frozen=True)
class Keep:
    """What a run keeps of its input; the defaults keep everything, in memory (the dry run, the pre-flight check)."""

    belongs: Callable[[str], bool] | None = None  # a protein is kept only if its sequence's hex digest belongs
    residues: bool = True  # False: digests and lengths only (--merge embeds nothing)
    spill: Spill | None = None  # where residues and headers go instead of memory


class _Kept:
    """The packed columns of the proteins kept so far, across splits."""

    def __init__(self, keep: Keep):
        self.keep = keep
        self.digests = bytearray()
        self.lengths = array("I")
        self.starts = array("q")  # residues in the spill file
        self.residues = StringsBuilder()  # residues in memory

    def add(self, digest: bytes, residues: bytes) -> None:
        self.digests += digest
        self.lengths.append(len(residues))
        if not self.keep.residues:
            return
        if self.keep.spill is not None:
            self.starts.append(self.keep.spill.add_residues(residues))
        else:
            self.residues.append_bytes(residues)

    def unique(self) -> tuple[UniqueSequences, np.ndarray]:
        """Each distinct sequence once, in order of first appearance, and every kept protein's position in it."""
        digests = np.frombuffer(self.digests, dtype=DIGEST) if self.digests else np.zeros(0, dtype=DIGEST)
        first, index = dedupe(digests)
        lengths = np.frombuffer(self.lengths, dtype=np.uint32)[first] if self.lengths else np.zeros(0, np.uint32)
        spill = self.keep.spill
        if not self.keep.residues:  # lengths alone: a released Strings
            ends = np.cumsum(lengths, dtype=np.int64)
            sequences = Strings(None, ends.astype(np.uint32) if len(ends) and ends[-1] < 2**32 else ends)
        elif spill is not None:
            assert spill.residues_path is not None
            spill.finish()
            sequences = FileStrings(spill.residues_path, np.frombuffer(self.starts, dtype=np.int64)[first], lengths)
        else:
            sequences = self.residues.build().take(first.tolist())
        return UniqueSequences(sequences, digests[first]), index


def read_fasta_splits(
    files: dict[str, Path], id_format: str, keep: Keep | None = None
) -> tuple[dict[str, Records], str | None]:
    """Every split's kept records, their sequences pointing into one UniqueSequences, and a note for the user (the
    UniProt look-alike headers under id_format uniprot, utils.inputs.ids) or None; raises UserError listing every
    problem of every file."""
    keep = keep or Keep()
    kept = _Kept(keep)
    problems: list[str] = []
    columns: dict[str, tuple[Strings, Strings | HeaderLines]] = {}
    lookalikes = [0, None]
    for name, path in files.items():
        try:
            columns[name] = _read_split(path, id_format, keep, kept, problems, lookalikes)
        except UserError as exc:
            problems += exc.problems
        except OSError as exc:  # the scratch files: FASTA files' own read errors are UserErrors already
            where = exc.filename or (keep.spill.residues_path if keep.spill else "")
            raise UserError(
                f"paths.output_dir: writing the input's scratch file {where} failed ({exc.strerror or exc}); free "
                "some space or choose another output_dir"
            ) from None
    if problems:
        raise UserError(problems)
    unique, index = kept.unique()
    splits, start = {}, 0
    for name, (ids, headers) in columns.items():
        rows = SharedSequences(unique, index[start : start + len(ids)])
        splits[name] = Records(ids, rows, headers)  # type: ignore[arg-type]
        start += len(ids)
    return splits, lookalike_note(*lookalikes) if id_format == "uniprot" else None


def _read_split(
    path: Path, id_format: str, keep: Keep, kept: _Kept, problems: list[str], lookalikes: list
) -> tuple[Strings, Strings | HeaderLines]:
    """One FASTA file: its kept proteins' ids and headers (the rest goes into `kept`); its problems into `problems`."""
    source = str(path)
    ids, headers = StringsBuilder(), StringsBuilder()
    spill = keep.spill if keep.spill is not None and keep.spill.headers_path is not None else None
    offset = spill.headers_offset() if spill is not None else 0
    hashes = array("q")  # of every protein's id, kept or not: duplicates are refused in a shard too
    found = len(problems)
    count = 0
    for first_word, residues, header, _ in iter_records(fasta_lines(path), source, problems):
        rec_id = protein_id(first_word, id_format)
        hashes.append(hash(rec_id))
        count += 1
        if id_format == "uniprot" and looks_like_uniprot(first_word):
            lookalikes[0] += 1
            lookalikes[1] = lookalikes[1] or first_word
        digest = hashlib.sha1(residues).digest()
        if keep.belongs is not None and not keep.belongs(digest.hex()):
            continue
        kept.add(digest, residues)
        ids.append(rec_id)
        if spill is not None:
            spill.add_header(header)
        else:
            headers.append(header)
    if not count and len(problems) == found:
        problems.append(no_records(source))
    problems += _duplicates(path, id_format, np.frombuffer(hashes, dtype=np.int64) if hashes else None)
    packed = ids.build()
    if spill is not None:
        spill.finish()
        return packed, HeaderLines(spill.headers_path, offset, len(packed), spill.headers_offset())  # type: ignore[arg-type]
    return packed, headers.build()


def _duplicates(path: Path, id_format: str, hashes: np.ndarray | None) -> list[str]:
    """One problem per protein whose id an earlier one of the file has. Only ids whose hash collides with another's
    are looked at, by reading the file again: none in a file without duplicates."""
    if hashes is None or len(hashes) < 2:
        return []
    ordered = np.sort(hashes)
    colliding = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not colliding:
        return []
    source = str(path)
    first: dict[str, tuple[str, str, int]] = {}
    problems = []
    for first_word, _, header, line in iter_records(fasta_lines(path), source, []):
        rec_id = protein_id(first_word, id_format)
        if hash(rec_id) not in colliding:
            continue
        if rec_id not in first:
            first[rec_id] = (first_word, header, line)
            continue
        earlier_word, earlier_header, earlier_line = first[rec_id]
        if earlier_word == first_word:
            problems.append(duplicate_id(source, rec_id, earlier_line, line))
        else:
            problems.append(shared_id(source, earlier_header, header, rec_id, id_format))
    return problems
