"""Token lookup tables (utils/engine/tokens.py) against transformers' own tokenizers, for all five families' real
tokenizer files: byte-identical ids and masks for any protein, and refusal of a tokenizer whose layout differs."""

from __future__ import annotations

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.engine.families import ESM1B, ESM2, ESMC, PROST_T5, PROT_T5
from utils.engine.tokens import TokenLayoutError, build_table

FAMILIES = {"prot_t5": PROT_T5, "prost_t5": PROST_T5, "esm2": ESM2, "esm1b": ESM1B, "esmc": ESMC}
RESIDUES = "ACDEFGHIKLMNPQRSTVWY" + "XUZOB" * 3  # the rare letters weighted up: they are where layouts differ
proteins = st.lists(st.text(alphabet=RESIDUES, min_size=1, max_size=300), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def tokenizers(checkpoints) -> dict:
    return {key: transformers.AutoTokenizer.from_pretrained(str(checkpoints[key])) for key in FAMILIES}


@pytest.mark.parametrize("key", list(FAMILIES))
def test_table_gives_the_tokenizers_ids_for_any_batch(tokenizers, key):
    tokenizer, family = tokenizers[key], FAMILIES[key]
    table = build_table(tokenizer, family)

    @settings(max_examples=60, deadline=None)
    @given(proteins)
    def check(batch):
        expected = tokenizer([family.model_text(s) for s in batch], add_special_tokens=True, padding=True)
        found = table.encode(batch)
        assert found["input_ids"].tolist() == expected["input_ids"]
        assert found["attention_mask"].tolist() == expected["attention_mask"]
        assert found["lengths"].tolist() == [len(s) for s in batch]

    check()


def test_golden_ids(tokenizers):
    # ProtT5: M → 19, </s> = 1; ProstT5: <AA2fold> = 149 first; ESM: <cls> = 0, M → 20, <eos> = 2.
    assert build_table(tokenizers["prot_t5"], PROT_T5).encode(["M"])["input_ids"].tolist() == [[19, 1]]
    assert build_table(tokenizers["prost_t5"], PROST_T5).encode(["M"])["input_ids"].tolist() == [[149, 19, 1]]
    assert build_table(tokenizers["esm2"], ESM2).encode(["M"])["input_ids"].tolist() == [[0, 20, 2]]


def test_a_tokenizer_of_another_layout_is_refused(tokenizers):
    with pytest.raises(TokenLayoutError, match="ProstT5 layout"):
        build_table(tokenizers["prot_t5"], PROST_T5)  # no <AA2fold> in ProtT5's vocabulary: <unk> or wrong ids
    with pytest.raises(TokenLayoutError, match="ProtT5 layout"):
        build_table(tokenizers["esm2"], PROT_T5)


def test_a_letter_outside_the_table_is_refused(tokenizers):
    table = build_table(tokenizers["esm2"], ESM2)
    with pytest.raises(TokenLayoutError, match="'j'"):
        table.encode(["MKj"])
