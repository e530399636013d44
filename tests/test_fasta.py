"""FASTA parsing in-process: every accepted variant gives exactly the clean records, every refused case names the
file, the protein and the position, and no input at all (random text, random bytes) raises anything but UserError."""

from __future__ import annotations

import bz2
import gzip
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.errors import MAX_LISTED, UserError
from utils.inputs.fasta import ALPHABET, Record, parse_fasta, read_fasta

CLEAN = [("sp|P12345|ABC_HUMAN", "MKVLAAGIVX"), ("chr1:100-200/+", "ACDEFGHIKLMNPQRSTVWYUOBZ"), ("x", "M")]
CLEAN_TEXT = "".join(f">{rec_id}\n{sequence}\n" for rec_id, sequence in CLEAN)
EXPECTED = [Record(rec_id, sequence) for rec_id, sequence in CLEAN]


def _refusal(text: str) -> str:
    with pytest.raises(UserError) as caught:
        parse_fasta(text, "in.fa")
    message = str(caught.value)
    assert all(line.startswith("in.fa") for line in caught.value.problems), message
    return message


# -- accepted as they are ------------------------------------------------------------------------------------------
def _wrapped(width: int) -> str:
    return "".join(f">{i}\n" + "\n".join(s[k : k + width] for k in range(0, len(s), width)) + "\n" for i, s in CLEAN)


ACCEPTED = {
    "lower case": CLEAN_TEXT.lower().replace(">sp|p12345|abc_human", ">sp|P12345|ABC_HUMAN"),
    "mixed case": "".join(f">{i}\n{s[:3].lower()}{s[3:]}\n" for i, s in CLEAN),
    "wrapped at 3": _wrapped(3),
    "wrapped at 1": _wrapped(1),
    "CRLF": CLEAN_TEXT.replace("\n", "\r\n"),
    "CR only": CLEAN_TEXT.replace("\n", "\r"),
    "no final newline": CLEAN_TEXT.rstrip("\n"),
    "trailing stars": "".join(f">{i}\n{s}*\n" for i, s in CLEAN),
    "star on its own line": "".join(f">{i}\n{s}\n*\n" for i, s in CLEAN),
    "descriptions": "".join(f">{i} some description\twith|tabs / and:colons >\n{s}\n" for i, s in CLEAN),
    "blank lines and spaces": "\n\n" + "".join(f"  >{i}  \n\n{s[:2]} {s[2:]}\t\n \n" for i, s in CLEAN),
    "space after >": "".join(f"> {i}\n{s}\n" for i, s in CLEAN),
}


@pytest.mark.parametrize("variant", sorted(ACCEPTED))
def test_accepted_variant_gives_the_clean_records(variant):
    assert parse_fasta(ACCEPTED[variant], "in.fa") == EXPECTED


def test_bom_gzip_and_plain_read_the_same(tmp_path):
    variants = {
        "plain.fa": CLEAN_TEXT.encode(),
        "bom.fa": "\ufeff".encode() + CLEAN_TEXT.encode(),
        "all.fa.gz": gzip.compress(ACCEPTED["CRLF"].lower().encode(), mtime=0),
        "gzip_without_suffix.fa": gzip.compress(CLEAN_TEXT.encode(), mtime=0),
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        records = read_fasta(tmp_path / name)
        assert [r.sequence for r in records] == [r.sequence for r in EXPECTED], name


def test_header_characters_are_kept_verbatim():
    odd = ["a/b", "a|b|c", "x:1-2", "é_ü", "tab>in", "%2F", "\\back", "日本", "ß€"]
    text = "".join(f">{rec_id} description\nMK\n" for rec_id in odd)
    assert [r.id for r in parse_fasta(text, "in.fa")] == odd


@pytest.mark.parametrize("space", ["\xa0", "\u2000", "\u3000", "\x85", "\u2028", "\x1c", "\u202f", "\t"])
def test_id_ends_at_any_unicode_whitespace_like_biopython(space):
    # Biopython: record.id = title.split(None, 1)[0]
    text = f">P1{space}desc one\nMK\n>{space}P2{space}\nMKV\n"
    assert [r.id for r in parse_fasta(text, "in.fa")] == ["P1", "P2"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (">\xa0", ["in.fa:3", "header has no id"]),  # only a no-break space
        (">\u3000\u2003\u2028", ["in.fa:3", "header has no id"]),
        (">a\x07b", ["in.fa:3", "'a\\x07b'", "U+0007", "control or invisible"]),
        (">a\x1bb desc", ["in.fa:3", "U+001B"]),
        (">a\u200bb", ["in.fa:3", "U+200B"]),  # zero-width space: a format character, not whitespace
        (">\x7f", ["in.fa:3", "U+007F"]),
    ],
)
def test_empty_or_control_character_ids_are_refused_with_their_line(header, expected):
    message = _refusal(f">ok\nMKV\n{header}\nMKV\n")
    for part in expected:
        assert part in message, (part, message)


# -- refused, each naming the culprit --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (">p1\nMKV\n>p2\nMKBJV\n", ["in.fa:4", "'p2'", "'J'", "residue 4"]),
        (">p1\nMKV\n>p2\nMK\nV1V\n", ["in.fa:5", "'p2'", "'1'", "residue 4"]),
        (">gap\nMK-V.\n", ["'gap'", "'-'", "residue 3", "1 more", "unaligned"]),
        (">dotless\nMKıV\n", ["'dotless'", "'ı'", "residue 3"]),  # 'ı'.upper() == 'I': must not slip through
        (">long_s\nſ\n", ["'long_s'", "'ſ'", "residue 1"]),  # 'ſ'.upper() == 'S'
        (">nbsp\nMK\xa0V\n", ["'nbsp'", "'\\xa0'"]),
        (">p1\nMK*V\n", ["'p1'", "stop '*'", "residue 3"]),
        (">p1\nMKV**\n", ["'p1'", "stop '*'", "residue 4"]),
        (">p1\n*MKV\n", ["'p1'", "stop '*'", "residue 1"]),
        (">p1\nMKV\n>empty\n>p3\nMK\n", ["in.fa:3", "'empty'", "empty sequence"]),
        (">p1\nMKV\n>only_star\n*\n", ["'only_star'", "empty sequence"]),
        (">p1\nMKV\n>p2\nMK\n>p1\nMM\n", ["'p1'", "twice", "lines 1 and 5"]),
        (">p1\nMKV\n>\nMK\n", ["in.fa:3", "no id"]),
        (">  \t\nMK\n", ["in.fa:1", "no id"]),
        ("", ["no FASTA records"]),
        ("\n \r\n\t\n", ["no FASTA records"]),
        ("MKVLA\nMKV\n", ["in.fa:1", "before the first '>'"]),
        ("# comment\n>p1\nMKV\n", ["in.fa:1", "before the first '>'"]),
        ("id\tvalue\nP1\t3\n", ["in.fa:1", "does not look like FASTA"]),
    ],
)
def test_refused_record_names_culprit(text, expected):
    message = _refusal(text)
    for part in expected:
        assert part in message, (part, message)


def test_every_problem_is_listed_then_capped():
    text = "".join(f">p{i}\nMK{i % 10}V\n" for i in range(50)) + ">p0\nMK\n"
    with pytest.raises(UserError) as caught:
        parse_fasta(text, "in.fa")
    assert len(caught.value.problems) == 51  # 50 bad characters and one duplicate id
    lines = caught.value.lines()
    assert len(lines) == MAX_LISTED + 1 and "31 more problem(s)" in lines[-1]


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("junk.bin", bytes(range(256)) * 4, ["junk.bin", "not UTF-8"]),
        ("zeros.fa", b">p1\nMKV\n" + b"\x00" * 64, ["zeros.fa:3", "NUL", "binary"]),
        ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(100), ["image.png", "not UTF-8"]),
        ("latin1.fa", ">p1 Proteín\nMKV\n".encode("latin-1"), ["latin1.fa:1", "0xed", "UTF-8"]),
        ("seqs.fa.bz2", bz2.compress(CLEAN_TEXT.encode()), ["bzip2", "not FASTA"]),
        ("seqs.zip", b"PK\x03\x04" + bytes(40), ["zip archive"]),
        ("cut.fa.gz", gzip.compress(CLEAN_TEXT.encode() * 20, mtime=0)[:40], ["cut.fa.gz", "gzip data is damaged"]),
        ("text.fa.gz", gzip.compress(b"hello world\n", mtime=0), ["text.fa.gz:1", "before the first '>'"]),
        ("empty.fa", b"", ["empty.fa", "no FASTA records"]),
    ],
)
def test_refused_file_names_culprit(tmp_path, name, data, expected):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError) as caught:
        read_fasta(tmp_path / name)
    for part in expected:
        assert part in str(caught.value), (part, str(caught.value))


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_fasta(tmp_path / "nope.fa")
    with pytest.raises(UserError, match="is a directory"):
        read_fasta(tmp_path)


# -- property: random FASTA-like text parses to exactly what it encodes, or is refused with UserError ----------------
LETTERS = sorted(ALPHABET | {c.lower() for c in ALPHABET})
BLANKS = " \t\v\f"
# Anything that is not a residue letter, a blank, a line break, '>' (a header at a line's start) or '*' (drawn apart).
JUNK = st.one_of(
    st.sampled_from(list("ıſ-.0123456789#?_&\x00\x1c\x85\xa0\u2028é日")),
    st.characters(
        exclude_characters="".join(LETTERS) + BLANKS + "\r\n>*",
        exclude_categories=("Cs",),  # lone surrogates cannot occur in decoded text
    ),
)
# Ids end at any whitespace (Zs, Zl, Zp and the Cc blanks) and may not hold control (Cc) or format (Cf) characters.
ID_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc", "Cf", "Zs", "Zl", "Zp")), min_size=1, max_size=8)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def fasta_texts(draw) -> tuple[str, list[Record] | None, set[str]]:
    """(text, the records it encodes or None when it must be refused, ids a refusal must name)."""
    end = draw(LINE_ENDS) if draw(st.booleans()) else None  # one line end for the file, or mixed
    lines: list[str] = []
    records: list[Record] = []
    culprits: set[str] = set()
    refused = draw(st.integers(0, 9)) == 0
    if refused:  # text before the first header: refused before any record is read
        lines.append(draw(st.sampled_from(["junk", "ID\tSEQ", "#x", "*MKV"])))
    for _ in range(draw(st.integers(0, 5))):
        if records and draw(st.integers(0, 6)) == 0:
            rec_id = draw(st.sampled_from([r.id for r in records]))
        else:
            rec_id = draw(ID_TEXT)
        residues = draw(st.text(st.sampled_from(LETTERS), max_size=40))
        fault = draw(st.sampled_from(["none"] * 5 + ["junk", "star", "double star"]))
        body = residues
        if fault == "junk":
            at = draw(st.integers(0, len(residues)))
            body = residues[:at] + draw(JUNK) + residues[at:]
        elif fault == "star":
            at = draw(st.integers(0, max(0, len(residues) - 1)))
            body = residues[:at] + "*" + residues[at:]
        elif fault == "double star":
            body = residues + "**"
        if fault == "none" and draw(st.booleans()):
            body += "*"
        bad = fault != "none" or not residues or rec_id in {r.id for r in records}
        if bad:
            culprits.add(rec_id)
        refused = refused or bad
        records.append(Record(rec_id, residues.upper()))
        description = draw(st.sampled_from(["", " desc", "\tx|y/z", " >a b"]))
        lines.append(draw(st.sampled_from(["", " "])) + ">" + rec_id + description)
        width = draw(st.integers(1, 50))
        for k in range(0, len(body), width):
            piece = body[k : k + width]
            if draw(st.integers(0, 4)) == 0:
                piece = piece[: len(piece) // 2] + draw(st.sampled_from(BLANKS)) + piece[len(piece) // 2 :]
            lines.append(piece)
            if draw(st.integers(0, 6)) == 0:
                lines.append(draw(st.sampled_from(["", "  ", "\t"])))
    refused = refused or not records
    ends = [end or draw(LINE_ENDS) for _ in lines]
    text = "".join(line + e for line, e in zip(lines, ends, strict=True))
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    return text, None if refused else records, culprits


@settings(max_examples=400, deadline=None)
@given(fasta_texts())
def test_random_fasta_parses_exactly_or_is_refused(case):
    text, expected, culprits = case
    if expected is not None:
        assert parse_fasta(text, "in.fa") == expected
        return
    with pytest.raises(UserError) as caught:
        parse_fasta(text, "in.fa")
    message = str(caught.value)
    if "before the first '>'" not in message:  # that problem stops the reading: later records are not looked at
        for rec_id in culprits:
            assert repr(rec_id) in message, (rec_id, message)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), fasta_texts().map(lambda case: case[0].encode())), st.booleans())
def test_any_bytes_plain_or_gzip_give_records_or_user_error(data, compress):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "in.fa"
        path.write_bytes(gzip.compress(data) if compress else data)
        try:
            records = read_fasta(path)
        except UserError as exc:
            assert exc.problems and all(str(path) in line for line in exc.problems)
            return
    assert records and all(set(r.sequence) <= ALPHABET for r in records)
