"""ESM2, ESM-1b and ESM C end to end through the real CLI on tiny checkpoints, each protein against an independent
one-at-a-time fp32 reference; ESM-1b's 1,022-residue limit (windows, recorded in meta); and the real checkpoints'
facts (family, dimensions, parameter counts, length limit) from their published configs."""

from __future__ import annotations

import random

import pytest
import torch

from tests.conftest import Reference, cosine, load_output, random_protein, run_job

# Config keys that do not name the family: the family must come from the checkpoint.
MODELS = {"plm_a": "esm2", "plm_b": "esm1b", "plm_c": "esmc"}
LABELS = {"esm2": "ESM2", "esm1b": "ESM-1b", "esmc": "ESM C"}
ESM1B_RESIDUES = 1022  # max_position_embeddings 1026 − (padding index 1 + 1) − <cls> − <eos>
OVERLAP = 200  # below a quarter of 1022, so it is used as configured


def _proteins() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(11)
    train = [(f"sp|Q{i:05d}|ESM_{i}", random_protein(rng, rng.randint(2, 350))) for i in range(14)]
    train += [
        ("exactly_1022", random_protein(rng, 1022)),  # the longest ESM-1b sees whole
        ("just_over_1023", random_protein(rng, 1023)),  # two windows, almost entirely overlapping
        ("long_1300", random_protein(rng, 1300)),
        ("long/1900|x", random_protein(rng, 1900)),  # three windows
        ("rare_residues", "MKXUZOBAXXLUU" + random_protein(rng, 25)),  # the ESM alphabet keeps X B U Z O
        ("stop_codon", random_protein(rng, 45) + "*"),
        ("single", "W"),
    ]
    test = [(f"T{i}", random_protein(rng, rng.randint(5, 250))) for i in range(7)]
    test.append(("copy_of_train_2", train[2][1]))
    return train, test


@pytest.fixture(scope="module")
def esm_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("esm_run")
    train, test = _proteins()
    models = {key: {"name": checkpoints[layout]} for key, layout in MODELS.items()}
    run_params = {"batch_size": 6, "max_tokens_per_batch": 2200, "window_overlap": OVERLAP}
    result = run_job(directory, models, train, test, run_params=run_params)
    return directory, train, test, result


# -- an independent reference for ESM-1b's windows --------------------------------------------------------------------
def reference_spans(n_residues: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of `window` residues, each starting `window - overlap` after the previous; the last ends at the end."""
    if n_residues <= window:
        return [(0, n_residues)]
    step = window - overlap
    starts = []
    start = 0
    while start < n_residues - window:
        starts.append(start)
        start += step
    starts.append(n_residues - window)
    return [(s, s + window) for s in starts]


@torch.no_grad()
def residue_rows(reference: Reference, sequence: str) -> torch.Tensor:
    tokens = reference.tokenizer(reference.text(sequence), return_tensors="pt")
    hidden = reference.model(**tokens).last_hidden_state[0]
    assert hidden.shape[0] == len(sequence) + 2  # <cls> residues <eos>
    return hidden[reference.offset : reference.offset + len(sequence)]


def windowed_reference(reference: Reference, sequence: str, window: int, overlap: int) -> torch.Tensor:
    """Each window embedded as a protein of its own; a residue seen by several windows gets their average row."""
    total = torch.zeros(len(sequence), reference.model.config.hidden_size, dtype=torch.float64)
    seen = torch.zeros(len(sequence), 1, dtype=torch.float64)
    for start, end in reference_spans(len(sequence), window, overlap):
        total[start:end] += residue_rows(reference, sequence[start:end]).double()
        seen[start:end] += 1
    assert bool((seen > 0).all())
    return (total / seen).mean(dim=0)


def test_reference_spans_cover_each_residue():
    assert reference_spans(1022, 1022, 200) == [(0, 1022)]
    assert reference_spans(1023, 1022, 200) == [(0, 1022), (1, 1023)]
    assert reference_spans(1900, 1022, 200) == [(0, 1022), (822, 1844), (878, 1900)]


# -- end to end ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("output_key", "layout"), list(MODELS.items()))
def test_every_protein_matches_one_at_a_time_reference(esm_run, checkpoints, output_key, layout):
    directory, train, test, _ = esm_run
    reference = Reference(checkpoints[layout], layout)
    worst, worst_windowed = 1.0, 1.0
    for split, records in (("train", train), ("test", test)):
        data = load_output(directory / "out" / f"{split}_embeddings_{output_key}.pt")
        assert data["ids"] == [rec_id for rec_id, _ in records]
        assert data["embeddings"].dtype == torch.float16
        assert data["embeddings"].shape == (len(records), 32)
        for row, (rec_id, sequence) in zip(data["embeddings"], records, strict=True):
            sequence = sequence.rstrip("*")
            if layout == "esm1b" and len(sequence) > ESM1B_RESIDUES:
                expected = windowed_reference(reference, sequence, ESM1B_RESIDUES, OVERLAP)
                similarity = cosine(row, expected)
                worst_windowed = min(worst_windowed, similarity)
                # Other window plans (no averaging of overlaps, another overlap, truncation) differ from this one
                # by 1e-5 or more in 1 - cos; float16 rounding of the output costs ~1e-7.
                assert 1 - similarity <= 1e-6, (rec_id, similarity)
            else:
                similarity = cosine(row, reference(sequence))
                worst = min(worst, similarity)
            assert similarity >= 0.9999, (rec_id, similarity)
    print(f"\n{LABELS[layout]}: worst cosine vs the one-at-a-time fp32 reference {worst:.8f} (1 - cos {1 - worst:.1e})")
    if layout == "esm1b":
        print(f"{LABELS[layout]} windowed (>1022 residues): worst cosine {worst_windowed:.8f}")


def test_esm1b_windows_are_recorded_and_only_past_1022(esm_run):
    directory, train, *_ = esm_run
    meta = load_output(directory / "out" / "train_embeddings_plm_b.pt")["meta"]
    longer = {rec_id: len(seq) for rec_id, seq in train if len(seq.rstrip("*")) > ESM1B_RESIDUES}
    assert set(longer) == {"just_over_1023", "long_1300", "long/1900|x"}
    assert set(meta["windowed"]) == set(longer)
    for rec_id, length in longer.items():
        note = meta["windowed"][rec_id]
        assert note["window_residues"] == ESM1B_RESIDUES
        assert note["overlap"] == OVERLAP
        assert note["windows"] == len(reference_spans(length, ESM1B_RESIDUES, OVERLAP))


def test_rotary_families_run_long_proteins_whole(esm_run):
    directory, *_ = esm_run
    for key in ("plm_a", "plm_c"):
        assert load_output(directory / "out" / f"train_embeddings_{key}.pt")["meta"]["windowed"] == {}


def test_meta_names_the_family_from_the_checkpoint(esm_run):
    directory, *_ = esm_run
    for key, layout in MODELS.items():
        meta = load_output(directory / "out" / f"test_embeddings_{key}.pt")["meta"]
        assert meta["family"] == LABELS[layout]
        assert meta["dim"] == 32 and meta["precision"] == ["fp32"]
        assert "[1, 1+L)" in meta["pooling"]
        assert ("licence" in meta) == (layout == "esmc")
    licence = load_output(directory / "out" / "test_embeddings_plm_c.pt")["meta"]["licence"]
    assert "biohub/ESMC-600M" in licence and "Non-Commercial" in licence


def test_the_three_families_give_different_embeddings(esm_run):
    directory, *_ = esm_run
    rows = [load_output(directory / "out" / f"test_embeddings_{key}.pt")["embeddings"].float() for key in MODELS]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            assert not torch.allclose(rows[i], rows[j], atol=1e-2)


# -- the real checkpoints' facts ---------------------------------------------------------------------------------------
ESM_COMMON = {  # fields every facebook/esm* config.json shares
    "attention_probs_dropout_prob": 0.0,
    "hidden_dropout_prob": 0.0,
    "layer_norm_eps": 1e-05,
    "mask_token_id": 32,
    "max_position_embeddings": 1026,
    "pad_token_id": 1,
    "vocab_size": 33,
}
REAL_CONFIGS = {
    # facebook/esm2_t36_3B_UR50D/config.json
    "esm2_3b": ("esm", dict(ESM_COMMON, hidden_size=2560, intermediate_size=10240, num_hidden_layers=36,
                            num_attention_heads=40, position_embedding_type="rotary", token_dropout=True)),
    # facebook/esm2_t6_8M_UR50D/config.json
    "esm2_8m": ("esm", dict(ESM_COMMON, hidden_size=320, intermediate_size=1280, num_hidden_layers=6,
                            num_attention_heads=20, position_embedding_type="rotary", token_dropout=True)),
    # facebook/esm1b_t33_650M_UR50S/config.json
    "esm1b": ("esm", dict(ESM_COMMON, hidden_size=1280, intermediate_size=5120, num_hidden_layers=33,
                          num_attention_heads=20, position_embedding_type="absolute", emb_layer_norm_before=True)),
    # biohub/ESMC-600M and -300M: 36 × 1152 (18 heads) and 30 × 960 (15 heads); SwiGLU width 8/3 × d rounded up to 256
    "esmc_600m": ("esmc", dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=36, num_attention_heads=18)),
    "esmc_300m": ("esmc", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=30, num_attention_heads=15)),
}  # fmt: skip


def _config(name: str):
    import transformers

    model_type, fields = REAL_CONFIGS[name]
    return (transformers.EsmConfig if model_type == "esm" else transformers.EsmcConfig)(**fields)


@pytest.mark.parametrize(
    ("name", "family", "dim", "params_billion", "max_residues"),
    [
        ("esm2_3b", "esm2", 2560, 2.83, None),  # fp16 weights ≈ 5.7 GB
        ("esm2_8m", "esm2", 320, 0.0075, None),
        ("esm1b", "esm1b", 1280, 0.65, 1022),  # ≈ 1.3 GB
        ("esmc_600m", "esmc", 1152, 0.575, None),  # ≈ 1.2 GB
        ("esmc_300m", "esmc", 960, 0.33, None),
    ],
)
def test_real_checkpoint_facts(name, family, dim, params_billion, max_residues):
    from utils.engine.families import architecture, detect_family

    config = _config(name)
    assert detect_family(config, {}, name).name == family
    arch = architecture(config)
    assert arch.hidden == dim
    assert arch.max_residues == max_residues
    assert arch.params == pytest.approx(params_billion * 1e9, rel=0.02)


def test_esm_and_esmc_token_layout(checkpoints):
    """<cls>=0 residues <eos>=2 in both vocabularies; the residues sit at [1, L+1) and X B U Z O are tokens."""
    import transformers

    from utils.engine.families import ESM2, ESMC

    for layout, family in (("esm2", ESM2), ("esm1b", ESM2), ("esmc", ESMC)):
        tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints[layout])
        input_ids = tokenizer(family.model_text("MKXBUZO"))["input_ids"]
        assert input_ids == [0, 20, 15, 24, 25, 26, 27, 28, 2], layout
        assert input_ids[family.residue_slice(7)] == input_ids[1:8]
