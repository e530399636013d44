"""Packed records and the unique-sequence stage (utils.inputs.fasta.Strings/Records, utils.inputs.unique) and the
merge's index."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.inputs.fasta import Record, Records, parse_fasta, read_fasta
from utils.inputs.strings import Strings
from utils.inputs.unique import digest_hex, hex_to_digests, share_sequences, shared_splits, split_digests, unique_of
from utils.running.store import ChunkStore, sequence_digest


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=12), max_size=30))
def test_strings_round_trip_any_text(items):
    packed = Strings.of(items)
    assert list(packed) == items
    assert [packed[i] for i in range(len(items))] == items
    assert packed[1:4] == items[1:4]
    assert packed.byte_lengths().tolist() == [len(s.encode()) for s in items]


def test_streamed_file_equals_parsed_text_across_block_boundaries(tmp_path):
    # Records far past the text reader's block size, CRLF line ends, gzip: the streaming reader must see every line
    text = "".join(f">p{i} desc {i}\r\n{'MKV' * (i % 50 + 1)}\r\n{'W' * (i % 7)}\r\n" for i in range(5000))
    (tmp_path / "in.fa.gz").write_bytes(gzip.compress(text.encode()))
    streamed = read_fasta(tmp_path / "in.fa.gz")
    assert streamed == parse_fasta(text, "in.fa")
    assert streamed[4999] == Record("p4999", "MKV" * 50 + "W" * 1, "p4999 desc 4999")
    assert streamed[4999].header == "p4999 desc 4999"


def test_duplicate_ids_name_both_lines():
    with pytest.raises(Exception, match=r"in.fa:5: protein id 'a' appears twice \(lines 1 and 5\)"):
        parse_fasta(">a\nMK\n>b\nMK\n>a\nMV\n", "in.fa")


def test_shared_sequences_index_the_unique_set_in_first_appearance_order():
    train = parse_fasta(">a\nMKV\n>b\nMKA\n>c\nMKV\n", "train")
    test = parse_fasta(">x\nMKA\n>y\nWWW\n", "test")
    splits, unique = share_sequences({"train": train, "test": test})
    assert list(unique.sequences) == ["MKV", "MKA", "WWW"]
    assert [r.sequence for r in splits["train"]] == ["MKV", "MKA", "MKV"]
    assert [r.id for r in splits["test"]] == ["x", "y"]
    assert unique_of(splits) is unique and shared_splits(splits) is splits
    assert [digest_hex(d) for d in unique.digests] == [sequence_digest(s) for s in ["MKV", "MKA", "WWW"]]
    assert [digest_hex(d) for d in split_digests(splits["train"])] == [
        sequence_digest(s) for s in "MKV MKA MKV".split()
    ]
    unique.sequences.release()  # what the job does once the workers have the residues
    assert splits["train"].lengths().tolist() == [3, 3, 3]
    with pytest.raises(RuntimeError, match="released"):
        splits["train"][0]


def test_digest_with_trailing_nul_bytes_keeps_its_hex():
    # numpy drops the trailing NUL bytes of an "S20" element: the hex must still be the whole digest
    digests = np.array([bytes(19) + b"\x01", b"\x01" + bytes(19)], dtype="S20")
    assert digest_hex(digests[1]) == "01" + "00" * 19


def test_lists_of_records_are_accepted_where_records_are():
    records = [Record("a", "MK", "a x"), Record("b", "MKV", "b")]
    shared = shared_splits({"s": records})
    assert list(shared["s"]) == records and shared["s"].headers[0] == "a x"
    assert Records.of(records).lengths().tolist() == [2, 3]


def test_unique_vectors_scatter_by_unique_index_mark_missing_and_take_each_sequence_once(tmp_path):
    from utils.engine.encode import Embedded
    from utils.outputs.gather import UniqueVectors

    store = ChunkStore(tmp_path, {"s": 1}, dim=2)

    def embedded(value: float) -> Embedded:
        return Embedded(torch.full((2,), value), None, {"windows": 2} if value == 4 else None)

    store.write([sequence_digest("AA"), sequence_digest("CC")], [embedded(1), embedded(2)], per_residue=False)
    store.write([sequence_digest("CC"), sequence_digest("DD")], [embedded(3), embedded(4)], per_residue=False)
    splits, unique = share_sequences({"s": parse_fasta(">a\nDD\n>b\nCC\n>c\nAA\n>d\nEE\n>e\nAA\n", "s")})
    vectors = UniqueVectors.scatter([store], unique, tmp_path / "scratch")
    assert vectors.filled.tolist() == [True, True, True, False]  # unique order: DD, CC, AA, EE
    assert vectors.notes == {sequence_digest("DD"): {"windows": 2}}
    rows = vectors.rows(splits["s"].sequences.index)
    # CC is in both chunks (two runs computed it): taken once, from the first chunk the store lists that holds it
    first = next(store.chunks_holding(hex_to_digests([sequence_digest("CC")])))
    cc = first["pooled"][first["digests"].index(sequence_digest("CC"))][0].item()
    assert rows.block(0, 3)[:, 0].tolist() == [4, cc, 1]
    assert rows.block(4, 5)[:, 0].tolist() == [1]
    assert rows.shape == (5, 2) and rows.whole().dtype == torch.float16
    assert store.held(unique.digests).sum() == 3


def test_store_marks_are_aligned_with_the_digests_in_any_order_and_with_repeats():
    from utils.running.store import Marks

    wanted = hex_to_digests(["c" * 40, "a" * 40, "b" * 40, "a" * 40, "d" * 40, "a" * 40])
    marks = Marks(wanted)
    marks.mark(hex_to_digests(["a" * 40, "d" * 40, "e" * 40]))
    marks.mark(hex_to_digests([]))
    assert marks.result().tolist() == [False, True, False, True, True, True]
    ordered = Marks(np.sort(wanted[[0, 1, 2, 4]]))  # sorted: no copy, no order
    ordered.mark(hex_to_digests(["b" * 40]))
    assert ordered.order is None and ordered.result().tolist() == [False, True, False, False]
    assert Marks(hex_to_digests([])).result().tolist() == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=40), st.integers(1, 5))
def test_dedupe_numbers_digests_by_first_appearance_across_comparison_blocks(values, block):
    import utils.inputs.unique as unique_module

    digests = np.array([bytes([v]) * 20 for v in values], dtype=unique_module.DIGEST)
    saved, unique_module.DEDUPE_BLOCK = unique_module.DEDUPE_BLOCK, block  # blocks of a few: every boundary tried
    try:
        first, index = unique_module.dedupe(digests)
    finally:
        unique_module.DEDUPE_BLOCK = saved
    distinct = list(dict.fromkeys(values))
    assert first.tolist() == [values.index(v) for v in distinct]
    assert index.tolist() == [distinct.index(v) for v in values]
