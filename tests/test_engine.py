"""The encoder's robustness on the tiny ProtT5 checkpoint: injected out-of-memory errors split the batch without
losing or misplacing a protein; a protein that never fits at full length fails the model in one line (memory never
changes a vector: no windows it did not ask for); windows out of memory run fewer to a pass, never shorter; over-long
proteins are windowed, recorded, and equal an independent windowed reference; duplicates get identical rows."""

from __future__ import annotations

import random

import pytest
import torch

from tests.conftest import Reference, cosine, load_output, random_protein, run_job
from utils.engine.encode import Encoder, load_encoder
from utils.engine.families import PROT_T5


@pytest.fixture(scope="module")
def encoder_factory(checkpoints):
    tokenizer, model = load_encoder(str(checkpoints["prot_t5"]), PROT_T5, "cpu", "fp32")
    made = []

    def make(max_residues: int = 10_000, window_overlap: int = 8) -> Encoder:
        encoder = Encoder(tokenizer, model, PROT_T5, "cpu", max_residues, window_overlap)
        made.append(encoder)
        return encoder

    yield make
    for encoder in made:
        encoder.close()


@pytest.fixture(scope="module")
def reference(checkpoints) -> Reference:
    return Reference(checkpoints["prot_t5"], "prot_t5")


def _spans(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """The documented window layout, written out here: equal steps of window − overlap, the last window ends at n."""
    if n <= window:
        return [(0, n)]
    spans, start = [], 0
    while start + window < n:
        spans.append((start, start + window))
        start += window - overlap
    return spans + [(n - window, n)]


@torch.no_grad()
def windowed_reference(reference: Reference, sequence: str, window: int, overlap: int) -> torch.Tensor:
    """fp32, window by window through transformers directly; residues covered twice average their two rows."""
    total = torch.zeros(len(sequence), reference.model.config.d_model)
    count = torch.zeros(len(sequence), 1)
    for start, end in _spans(len(sequence), window, overlap):
        piece = sequence[start:end]
        tokens = reference.tokenizer(reference.text(piece), return_tensors="pt")
        rows = reference.model(**tokens).last_hidden_state[0, reference.offset : reference.offset + len(piece)]
        total[start:end] += rows
        count[start:end] += 1
    return (total / count).mean(dim=0)


class InjectedOOM:
    """Replaces Encoder.forward: raises torch.OutOfMemoryError when `too_big(rows, tokens)`, else runs the real one."""

    def __init__(self, monkeypatch, too_big):
        self.real = Encoder.forward
        self.too_big = too_big
        self.raised = 0
        self.shapes: list[tuple[int, int]] = []
        monkeypatch.setattr(Encoder, "forward", self)

    def __get__(self, encoder, owner=None):
        return lambda tokens: self(encoder, tokens)

    def __call__(self, encoder, tokens):
        # As a padded batch would be: rows × the longest protein's tokens (packed batches have no padding)
        rows, width = len(tokens["lengths"]), int(tokens["lengths"].max()) + encoder.family.special_tokens
        if self.too_big(rows, width):
            self.raised += 1
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        self.shapes.append((rows, width))
        return self.real(encoder, tokens)


def _proteins(seed: int, lengths: list[int]) -> list[str]:
    rng = random.Random(seed)
    return [random_protein(rng, n) for n in lengths]


def _assert_same_vectors(got, expected, sequences):
    assert len(got) == len(expected) == len(sequences)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a.pooled, b.pooled, rtol=1e-4, atol=1e-5, msg=f"protein {i} ({len(sequences[i])})")
        assert a.note is None


@pytest.mark.parametrize(
    ("label", "too_big"),
    [
        pytest.param("more than 2 rows", lambda rows, width: rows > 2, id="rows"),
        pytest.param("more than 300 padded tokens", lambda rows, width: rows * width > 300, id="tokens"),
    ],
)
def test_out_of_memory_splits_the_batch_without_losing_or_moving_a_protein(
    encoder_factory, monkeypatch, label, too_big
):
    encoder = encoder_factory()
    sequences = _proteins(1, [250, 120, 90, 60, 33, 10, 2, 1])
    expected = [encoder.embed([s])[0] for s in sequences]  # each protein alone, no OOM
    injected = InjectedOOM(monkeypatch, too_big)
    got = encoder.embed(sequences, encoder.tokenize(sequences))  # prefetched tokens, as the worker passes them
    assert injected.raised > 0, f"the injected OOM ({label}) never fired"
    assert all(not too_big(rows, width) for rows, width in injected.shapes)
    assert sum(rows for rows, _ in injected.shapes) == len(sequences)  # each protein ran exactly once
    _assert_same_vectors(got, expected, sequences)


def test_after_an_out_of_memory_larger_batches_are_split_before_they_are_tried(encoder_factory, monkeypatch):
    # A failed pass costs its partial forward and the allocator's cache: the GPU check lost much of its time to
    # repeated failures. Once a batch of items × tokens² ran out, no batch at least that large is tried whole.
    encoder = encoder_factory()
    first = _proteins(6, [120, 110, 100, 90])
    later = _proteins(7, [125, 110, 100, 90])
    injected = InjectedOOM(monkeypatch, lambda rows, width: rows > 2)
    encoder.embed(first)
    failures = injected.raised
    assert failures >= 1 and encoder.out_of_memory_events == failures
    encoder.embed(later)  # as large as the batch that failed: split first, never tried whole
    assert injected.raised == failures
    assert all(rows <= 2 for rows, _ in injected.shapes[-2:])


def test_protein_that_never_fits_fails_the_model_in_one_line_instead_of_windows(encoder_factory, monkeypatch):
    from utils.engine.families import Architecture
    from utils.engine.limits import device_limits
    from utils.errors import ModelError

    encoder = encoder_factory(max_residues=10_000, window_overlap=8)
    arch = Architecture(32, 2, 4, 64, 30_000, True, None)
    encoder.limits = device_limits(arch, "cpu", "fp32", memory_bytes=64 << 20, memory_source="ulimit -v")
    short_a, long, short_b = _proteins(2, [30, 100, 20])
    limit = 41  # tokens: at most 40 residues + </s> fit in "memory"
    injected = InjectedOOM(monkeypatch, lambda rows, width: width > limit)
    with pytest.raises(ModelError) as failed:
        encoder.embed([short_a, long, short_b])
    assert injected.raised > 0
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"protein {long[:12]}… (100 residues) does not fit in memory (OutOfMemoryError: ")
    assert "ulimit -v allows 64.0 MiB" in message and "give the job more memory" in message
    assert all(width <= limit for _, width in injected.shapes)  # no pass ever ran a piece of it


def test_windows_out_of_memory_run_fewer_to_a_pass_never_shorter(encoder_factory, reference, monkeypatch):
    encoder = encoder_factory(max_residues=64, window_overlap=16)
    long = _proteins(8, [200])[0]
    expected = encoder.embed([long])[0]
    injected = InjectedOOM(monkeypatch, lambda rows, width: rows > 1)  # one window a pass at most
    got = encoder.embed([long])[0]
    assert injected.raised > 0 and all(rows == 1 for rows, _ in injected.shapes)
    assert got.note == expected.note and got.note["window_residues"] == 64
    torch.testing.assert_close(got.pooled, expected.pooled, rtol=1e-5, atol=1e-6)


def test_longer_than_max_residues_is_windowed_and_equals_windowed_reference(encoder_factory, reference):
    encoder = encoder_factory(max_residues=64, window_overlap=16)
    long, short = _proteins(3, [200, 50])
    got = encoder.embed([short, long])
    assert got[0].note is None
    assert got[1].note is not None
    assert {k: got[1].note[k] for k in ("windows", "window_residues", "overlap")} == {
        "windows": 4,  # (0, 64) (48, 112) (96, 160) (136, 200)
        "window_residues": 64,
        "overlap": 16,
    }
    expected = windowed_reference(reference, long, 64, 16)
    torch.testing.assert_close(got[1].pooled, expected, rtol=1e-4, atol=1e-5)
    # windows change the vector: the full-length protein would have given something else
    assert not torch.allclose(got[1].pooled, reference(long), atol=1e-3)
    torch.testing.assert_close(got[0].pooled, reference(short), rtol=1e-4, atol=1e-5)


# -- through the real CLI: windows recorded in meta, duplicates within and across splits ------------------------------
@pytest.fixture(scope="module")
def cli_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("engine_cli")
    shared, long, other = _proteins(4, [64, 200, 45])  # max_residues 64: only `long` is over it
    rng = random.Random(5)
    train = [("shared", shared), ("long", long), ("t1", random_protein(rng, 60)), ("shared_again", shared)]
    train += [("long_again", long), ("other", other), ("t2", random_protein(rng, 33))]
    test = [("x1", random_protein(rng, 50)), ("other_in_test", other), ("long_in_test", long), ("shared_t", shared)]
    run_params = {"batch_size": 3, "save_every_n_batches": 1, "max_residues": 64, "window_overlap": 16}
    run_job(directory, {"prot": {"name": checkpoints["prot_t5"]}}, train, test, run_params=run_params, width=None)
    out = directory / "out"
    return load_output(out / "train_embeddings_prot.pt"), load_output(out / "test_embeddings_prot.pt"), long


def test_cli_records_windows_in_meta(cli_run, reference):
    train, test, long = cli_run
    assert set(train["meta"]["windowed"]) == {"long", "long_again"}
    assert set(test["meta"]["windowed"]) == {"long_in_test"}
    note = train["meta"]["windowed"]["long"]
    assert (note["windows"], note["window_residues"], note["overlap"]) == (4, 64, 16)
    row = train["embeddings"][train["ids"].index("long")]
    assert cosine(row, windowed_reference(reference, long, 64, 16)) >= 0.9999


def test_cli_duplicates_get_identical_rows_within_and_across_splits(cli_run):
    train, test, _ = cli_run

    def row(data, protein_id):
        return data["embeddings"][data["ids"].index(protein_id)]

    assert torch.equal(row(train, "shared"), row(train, "shared_again"))
    assert torch.equal(row(train, "shared"), row(test, "shared_t"))
    assert torch.equal(row(train, "long"), row(train, "long_again"))
    assert torch.equal(row(train, "long"), row(test, "long_in_test"))
    assert torch.equal(row(train, "other"), row(test, "other_in_test"))
    assert not torch.equal(row(train, "shared"), row(train, "other"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_t5_padding_folded_by_addition_gives_the_same_attention_bits_as_transformers_where(dtype):
    from transformers.integrations.sdpa_attention import create_position_bias_mask

    from utils.engine.transformers_attention import position_bias_mask

    generator = torch.Generator().manual_seed(0)
    batch, heads, tokens = 4, 8, 50
    bias = (torch.randn(1, heads, tokens, tokens, generator=generator) * 30).to(dtype)  # large, both signs
    mask = torch.ones(batch, 1, 1, tokens, dtype=torch.bool)
    mask[1, ..., 30:] = False
    mask[3, ..., 5:] = False
    q, k, v = (torch.randn(batch, heads, tokens, 16, generator=generator).to(dtype) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=create_position_bias_mask(bias, mask, False, q, k), scale=1.0
    )
    folded = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=position_bias_mask(bias, mask, q, k), scale=1.0
    )
    assert torch.equal(folded, expected)


def test_sliced_position_bias_equals_transformers_bias_at_every_length(checkpoints):
    from utils.engine.transformers_attention import SlicedPositionBias

    _, model = load_encoder(str(checkpoints["prot_t5"]), PROT_T5, "cpu", "fp32")
    sliced = [
        m.compute_bias for m in model.modules() if isinstance(getattr(m, "compute_bias", None), SlicedPositionBias)
    ]
    assert len(sliced) == 1  # the first layer's self-attention owns the bias; the others reuse it
    bias = sliced[0]
    with torch.inference_mode():
        for length in (300, 20, 300, 1, 450, 37):  # longest first, then shorter, then longer than the kept one
            assert torch.equal(bias(length, length), bias.compute(length, length))
        assert bias.kept is not None and bias.kept.shape[-1] == 450
        assert bias(5, 5) is not bias(5, 5)  # a new view each time: nothing attached to one outlives its forward
    assert torch.equal(bias(12, 12), bias.compute(12, 12))  # outside inference mode: transformers' own
