"""`models.<key>.layer`: the pooled hidden state is transformers' `hidden_states[layer]` (0 the embedding output, -1
the last, after the final norm), in all five families, batched with padding, against a reference that runs the whole
model one protein at a time; the layer is part of the resume fingerprint; out-of-range layers are refused."""

from __future__ import annotations

import random
import re

import pytest
import torch

from tests.conftest import (
    REFERENCE_LAYOUT,
    cosine,
    load_output,
    random_protein,
    run_cli,
    write_config,
    write_fasta,
)
from utils.engine.encode import Encoder, load_encoder
from utils.engine.families import FAMILIES, hidden_state_index
from utils.errors import UserError
from utils.inputs.config import load_config

LAYOUTS = ("prot_t5", "prost_t5", "esm2", "esm1b", "esmc")
TINY_LAYERS = 2  # every tiny checkpoint has two transformer layers: hidden states 0, 1, 2


class LayerReference:
    """fp32, one protein at a time, no padding, the whole model with output_hidden_states; the mean of the residue
    rows of hidden_states[layer]."""

    def __init__(self, checkpoint, layout: str):
        import transformers

        self.text, self.offset, model_class = REFERENCE_LAYOUT[layout]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
        self.model = getattr(transformers, model_class).from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.model.float()

    @torch.no_grad()
    def __call__(self, sequence: str, layer: int) -> torch.Tensor:
        tokens = self.tokenizer(self.text(sequence), return_tensors="pt")
        output = self.model(**tokens, output_hidden_states=True)
        assert len(output.hidden_states) == TINY_LAYERS + 1
        assert torch.equal(output.hidden_states[-1], output.last_hidden_state)  # -1 is after the final norm
        hidden = output.hidden_states[layer][0]
        return hidden[self.offset : self.offset + len(sequence)].mean(dim=0)


def test_layer_numbering():
    assert [hidden_state_index(layer, 2) for layer in (0, 1, 2, -1, -2, -3)] == [0, 1, 2, 2, 1, 0]
    assert hidden_state_index(3, 2) is None and hidden_state_index(-4, 2) is None
    assert hidden_state_index(-1, 36) == 36 and hidden_state_index(20, 36) == 20


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layer_equals_hidden_states_of_that_layer(checkpoints, layout):
    family = FAMILIES[layout]
    rng = random.Random(11)
    sequences = [random_protein(rng, n) for n in (1, 7, 40, 95)]  # one padded batch
    reference = LayerReference(checkpoints[layout], layout)
    seen = []
    for layer in (0, 1, -2, -1):
        index = hidden_state_index(layer, TINY_LAYERS)
        tokenizer, model = load_encoder(str(checkpoints[layout]), family, "cpu", "fp32", layer_index=index)
        encoder = Encoder(tokenizer, model, family, "cpu", 10_000, 8)
        try:
            pooled = [e.pooled for e in encoder.embed(sequences)]
        finally:
            encoder.close()
        for vector, sequence in zip(pooled, sequences, strict=True):
            expected = reference(sequence, layer)
            assert cosine(vector, expected) > 0.99999, (layout, layer)
            assert torch.allclose(vector, expected, atol=1e-5), (layout, layer)
        seen.append(torch.stack(pooled))
    # the layers differ from each other (the test would not notice a layer that is ignored otherwise)
    assert not torch.allclose(seen[0], seen[1], atol=1e-3) and not torch.allclose(seen[1], seen[3], atol=1e-3)
    assert torch.equal(seen[1], seen[2])  # 1 and -2 are the same hidden state of a two-layer model


def test_layers_past_the_one_asked_for_are_dropped(checkpoints):
    family = FAMILIES["esm2"]
    _, model = load_encoder(str(checkpoints["esm2"]), family, "cpu", "fp32", layer_index=1)
    assert len(model.encoder.layer) == 1 and isinstance(model.encoder.emb_layer_norm_after, torch.nn.Identity)
    _, whole = load_encoder(str(checkpoints["esm2"]), family, "cpu", "fp32", layer_index=TINY_LAYERS)
    assert len(whole.encoder.layer) == TINY_LAYERS
    assert not isinstance(whole.encoder.emb_layer_norm_after, torch.nn.Identity)


def test_config_layer_type_and_range(tmp_path, checkpoints):
    from utils.checks.resolve import resolve_model

    write_fasta(tmp_path / "train.fasta", [("a", "MKV")])
    write_fasta(tmp_path / "test.fasta", [("b", "MKV")])
    models = {"m": {"name": checkpoints["esm2"], "layer": -2}}
    config = load_config(write_config(tmp_path, models))
    assert config.models[0].layer == -2
    assert resolve_model(config.models[0]).layer_index == 1
    with pytest.raises(UserError, match=r"models\.m\.layer: must be an integer"):
        load_config(write_config(tmp_path, {"m": {"name": checkpoints["esm2"], "layer": "last"}}))
    for layer in (3, -4):
        config = load_config(write_config(tmp_path, {"m": {"name": checkpoints["esm2"], "layer": layer}}))
        with pytest.raises(UserError) as caught:
            resolve_model(config.models[0])
        assert f"models.m.layer: {layer} is out of range" in str(caught.value) and "has 2 layers" in str(caught.value)


# -- through the CLI: wiring, meta, names, the resume fingerprint ---------------------------------------------------
def test_cli_layers_meta_names_and_fingerprint(tmp_path, checkpoints):
    rng = random.Random(3)
    train = [(f"p{i}", random_protein(rng, rng.randint(5, 120))) for i in range(8)]
    test = [("t0", random_protein(rng, 60))]
    write_fasta(tmp_path / "train.fasta", train)
    write_fasta(tmp_path / "test.fasta", test)
    references = {layout: LayerReference(checkpoints[layout], layout) for layout in ("prost_t5", "esm1b")}

    def run(layers: dict[str, int]) -> str:
        models = {key: {"name": checkpoints[key], "layer": layer} for key, layer in layers.items()}
        config = write_config(tmp_path, models, run_params={"output_format": "both"})
        result = run_cli("generate_embeddings_t5.py", "--config", str(config))
        assert result.returncode == 0, result.stderr
        return result.stderr

    def check(key: str, layer: int) -> None:
        data = load_output(tmp_path / "out" / f"train_embeddings_{key}.pt")
        index = hidden_state_index(layer, TINY_LAYERS)
        assert (data["meta"]["layer"], data["meta"]["layers"]) == (index, TINY_LAYERS)
        suffix = "" if index == TINY_LAYERS else f"_layer{index}"
        assert data["meta"]["model_name"] == f"{key}_2x32{suffix}"
        for row, (rec_id, sequence) in zip(data["embeddings"], train, strict=True):
            assert cosine(row, references[key](sequence, layer)) > 0.9999, (key, layer, rec_id)

    run({"prost_t5": 1, "esm1b": 0})
    check("prost_t5", 1)
    check("esm1b", 0)
    # -2 is hidden state 1 again: its chunks are reused; ESM-1b's layer changed: its chunks are redone
    run({"prost_t5": -2, "esm1b": -1})
    check("prost_t5", -2)
    check("esm1b", -1)
    pattern = r"(\d+) unique sequences, (\d+) already in chunks"
    starts = {key: re.findall(pattern, (tmp_path / "logs" / f"{key}.log").read_text()) for key in ("prost_t5", "esm1b")}
    assert starts == {"prost_t5": [("9", "0"), ("9", "9")], "esm1b": [("9", "0"), ("9", "0")]}
    note = next(line for line in (tmp_path / "logs" / "esm1b.log").read_text().splitlines() if "other settings" in line)
    assert "layer: 0" in note and "2" in note.split("layer: 0")[1][:10]  # the changed setting is named
