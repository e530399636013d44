"""Golden token layouts of the tiny hub-layout checkpoints built by tests/tiny_checkpoints.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests import tiny_checkpoints as tc  # noqa: E402


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return tc.build_all(tmp_path_factory.mktemp("tiny_checkpoints"))


@pytest.fixture(scope="session")
def tokenizers(ckpts):
    return {key: transformers.AutoTokenizer.from_pretrained(path) for key, path in ckpts.items()}


def ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


# --- ProtT5 ----------------------------------------------------------------------------------


def test_prot_t5_residue_ids(tokenizers):
    tok = tokenizers["prot_t5"]
    assert ids(tok, "M") == [19, 1]
    assert ids(tok, "M K T") == [19, 14, 11, 1]
    assert ids(tok, "M K T A") == [19, 14, 11, 3, 1]
    assert ids(tok, "U Z O B X") == [26, 27, 25, 24, 23, 1]
    assert ids(tok, " ".join(tc.PROT_T5_RESIDUES)) == list(range(3, 28)) + [1]


def test_prot_t5_special_and_sentinel_ids(tokenizers):
    tok = tokenizers["prot_t5"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == 128
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [127, 28]
    # residues are "▁X" pieces: unspaced text does not tokenize per residue
    assert ids(tok, "MKT") == [19, 2, 1]


def test_prot_t5_config(ckpts):
    config = transformers.AutoConfig.from_pretrained(ckpts["prot_t5"])
    assert config.model_type == "t5"
    assert config.architectures == ["T5EncoderModel"]
    assert config.is_encoder_decoder is True
    assert config.vocab_size == 128
    assert config.feed_forward_proj == "relu"


def test_prot_t5_broken_tokenizer_maps_residues_to_unk(tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(tc.build_prot_t5(tmp_path / "broken", broken_tokenizer=True))
    assert ids(tok, "M") == [2, 1]
    assert ids(tok, "M K T") == [2, 2, 2, 1]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, len(tok)) == (0, 1, 2, 128)


# --- ProstT5 ---------------------------------------------------------------------------------


def test_prost_t5_prefix_and_residue_ids(tokenizers):
    tok = tokenizers["prost_t5"]
    assert ids(tok, "<AA2fold> M") == [149, 19, 1]
    assert ids(tok, "<AA2fold> M K T") == [149, 19, 14, 11, 1]
    assert ids(tok, "M K T") == [19, 14, 11, 1]  # same first 128 ids as ProtT5
    assert len(tok) == 150


def test_prost_t5_3di_ids(tokenizers):
    tok = tokenizers["prost_t5"]
    assert ids(tok, "<fold2AA> " + " ".join(tc.PROST_T5_3DI)) == [148] + list(range(128, 148)) + [1]
    assert tok.convert_tokens_to_ids(["a", "l", "c", "<fold2AA>", "<AA2fold>"]) == [128, 129, 147, 148, 149]


def test_prost_t5_prefix_is_not_a_special_token(tokenizers):
    # as in the hub repo: the prefix lives in added_tokens.json only, so only </s> is flagged
    enc = tokenizers["prost_t5"]("<AA2fold> M K", return_special_tokens_mask=True)
    assert enc["special_tokens_mask"] == [0, 0, 0, 1]


# --- ESM-2 / ESM-1b --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["esm2", "esm1b"])
def test_esm_ids(tokenizers, key):
    tok = tokenizers[key]
    assert ids(tok, "MKT") == [0, 20, 15, 11, 2]
    assert tok.convert_ids_to_tokens(list(range(33))) == tc.ESM_VOCAB
    assert (tok.cls_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        0, 1, 2, 3, 32,
    )  # fmt: skip


def test_esm_configs(ckpts):
    esm2 = transformers.AutoConfig.from_pretrained(ckpts["esm2"])
    esm1b = transformers.AutoConfig.from_pretrained(ckpts["esm1b"])
    assert (esm2.model_type, esm2.architectures) == ("esm", ["EsmForMaskedLM"])
    assert (esm2.position_embedding_type, esm2.emb_layer_norm_before) == ("rotary", False)
    assert (esm1b.position_embedding_type, esm1b.emb_layer_norm_before) == ("absolute", True)
    assert esm1b.max_position_embeddings == 1026
    for config in (esm2, esm1b):
        assert (config.vocab_size, config.mask_token_id, config.pad_token_id, config.token_dropout) == (33, 32, 1, True)


# --- ESM C -----------------------------------------------------------------------------------


def test_esmc_layout(ckpts, tokenizers):
    from transformers.models.esmc.tokenization_esmc import SEQUENCE_VOCAB

    tok = tokenizers["esmc"]
    assert type(tok).__name__ == "EsmcTokenizer"
    assert ids(tok, "MKT") == [0, 20, 15, 11, 2]
    assert tok.convert_ids_to_tokens(list(range(len(SEQUENCE_VOCAB)))) == SEQUENCE_VOCAB
    assert tok.convert_tokens_to_ids(["|", "<mask>"]) == [31, 32]
    config = transformers.AutoConfig.from_pretrained(ckpts["esmc"])
    assert (config.model_type, config.architectures, config.vocab_size) == ("esmc", ["EsmcForMaskedLM"], 64)


# --- models ----------------------------------------------------------------------------------

_ENCODERS = {  # every text gives 5 tokens
    "prot_t5": ("T5EncoderModel", "M K T A", torch.float16),
    "prost_t5": ("T5EncoderModel", "<AA2fold> M K T", torch.float16),
    "esm2": ("EsmModel", "MKT", torch.float32),
    "esm1b": ("EsmModel", "MKT", torch.float32),
    "esmc": ("EsmcModel", "MKT", torch.float32),
}


@pytest.mark.parametrize("key", list(_ENCODERS))
def test_encoder_loads_and_runs(ckpts, tokenizers, key):
    cls_name, text, dtype = _ENCODERS[key]
    model, info = getattr(transformers, cls_name).from_pretrained(ckpts[key], output_loading_info=True)
    # only EsmModel's pooler is absent from the (masked-LM) checkpoints, as on the hub
    assert {k for k in info["missing_keys"] if not k.startswith("pooler.")} == set()
    assert model.get_input_embeddings().weight.dtype == dtype
    with torch.no_grad():
        out = model(**tokenizers[key]([text], return_tensors="pt")).last_hidden_state
    assert out.shape == (1, 5, 32)
    assert torch.isfinite(out).all()


def test_nan_weights_give_nan_embeddings(tmp_path, tokenizers):
    model = transformers.EsmModel.from_pretrained(tc.build_esm2(tmp_path / "nan", nan_weights=True))
    with torch.no_grad():
        out = model(**tokenizers["esm2"](["MKT"], return_tensors="pt")).last_hidden_state
    assert torch.isnan(out).all()


def test_build_is_deterministic_and_build_all_reuses(tmp_path, ckpts):
    again = tc.build_esm2(tmp_path / "esm2")
    assert (again / "model.safetensors").read_bytes() == (ckpts["esm2"] / "model.safetensors").read_bytes()
    before = (ckpts["prot_t5"] / "model.safetensors").stat().st_mtime_ns
    assert tc.build_all(ckpts["prot_t5"].parent) == ckpts
    assert (ckpts["prot_t5"] / "model.safetensors").stat().st_mtime_ns == before


def test_sizes_build_the_real_layout_at_other_sizes(tmp_path, ckpts):
    """sizes= (what the benchmarks use for real shapes) changes only the sizes: same files, dtype and tokenizer."""
    from safetensors import safe_open

    t5 = tc.build_prot_t5(tmp_path / "t5", sizes={"d_model": 48, "num_layers": 3})
    esm = tc.build_esm2(tmp_path / "esm", sizes={**tc.REAL_SIZES["esm2_650m"], "num_hidden_layers": 1})
    assert transformers.AutoConfig.from_pretrained(t5).to_dict()["d_model"] == 48
    assert transformers.AutoConfig.from_pretrained(esm).hidden_size == 1280
    with safe_open(t5 / "model.safetensors", "pt") as f:  # T5's wo too, which transformers keeps in fp32
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    for built, tiny in ((t5, "prot_t5"), (esm, "esm2")):
        assert {p.name for p in built.iterdir()} == {p.name for p in ckpts[tiny].iterdir()}
        for name in ("spiece.model", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (ckpts[tiny] / name).exists():
                assert (built / name).read_bytes() == (ckpts[tiny] / name).read_bytes()
