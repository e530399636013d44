"""Layouts the packed forward does not implement (utils/engine/encoders.py) never run silently: ESM C with dynamic
rotary scaling gets, protein by protein, the frequencies transformers computes for it; ESM2 with `is_decoder: true`
(causal attention) runs transformers' own forward, and the worker's log and the console say why; a layout the config
check misses is caught by the probe batch at load; a checkpoint transformers itself cannot run fails its model in one
line."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from tests.conftest import Reference, cosine, load_output, random_protein, run_cli, write_config, write_fasta
from utils.engine.encode import Encoder, load_encoder
from utils.engine.families import FAMILIES

LENGTHS = [300, 7, 90, 40, 150]


def _variant(checkpoints, tmp_path, family: str, **fields):
    """A copy of a tiny checkpoint with config.json fields changed (the weights stay valid for them)."""
    directory = tmp_path / f"{family}_variant"
    shutil.copytree(checkpoints[family], directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(fields)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _proteins(seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [random_protein(rng, n) for n in LENGTHS]


def _encoder(directory, family: str, **options) -> Encoder:
    tokenizer, model = load_encoder(str(directory), FAMILIES[family], "cpu", "fp32")
    return Encoder(tokenizer, model, FAMILIES[family], "cpu", None, 64, **options)


def _min_cosine(encoder: Encoder, sequences: list[str], reference) -> float:
    got = [e.pooled for e in encoder.embed(sequences)]  # one packed batch
    return min(cosine(vector, reference(sequence)) for vector, sequence in zip(got, sequences, strict=True))


def test_esmc_with_dynamic_rotary_scaling_matches_transformers_protein_by_protein(checkpoints, tmp_path):
    # The case: 64 positions, dynamic scaling; the packed forward used the fixed frequencies (cos 0.9978).
    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    directory = _variant(checkpoints, tmp_path, "esmc", rope_parameters=rope, max_position_embeddings=64)
    encoder = _encoder(directory, "esmc")
    assert encoder.path == "packed, segments attention"

    def fresh_transformers(sequence: str) -> torch.Tensor:  # its rotary state grows with what it saw: a fresh one
        return Reference(directory, "esmc")(sequence)

    assert _min_cosine(encoder, _proteins(), fresh_transformers) >= 0.9999


def test_esm2_as_a_decoder_runs_transformers_forward_and_says_why(checkpoints, tmp_path):
    directory = _variant(checkpoints, tmp_path, "esm2", is_decoder=True)
    encoder = _encoder(directory, "esm2")
    assert encoder.packed is None
    assert encoder.path == "transformers (sdpa_key_padding; the packed forward does not implement is_decoder=True)"
    assert _min_cosine(encoder, _proteins(), Reference(directory, "esm2")) >= 0.9999  # the packed one gave 0.784


def test_a_layout_the_config_check_misses_is_caught_by_the_probe(checkpoints, tmp_path, monkeypatch):
    from utils.engine import encoders

    monkeypatch.setattr(encoders.EsmForward, "LAYOUT", {})  # as if is_decoder were not known to matter
    directory = _variant(checkpoints, tmp_path, "esm2", is_decoder=True)
    encoder = _encoder(directory, "esm2")
    assert encoder.packed is None and "disagreed with transformers' on a probe (cosine 0." in encoder.path
    assert _min_cosine(encoder, _proteins(4), Reference(directory, "esm2")) >= 0.9999


def test_through_the_cli_the_log_and_console_name_the_fallback(checkpoints, tmp_path):
    directory = _variant(checkpoints, tmp_path, "esm2", is_decoder=True)
    sequences = _proteins(5)
    write_fasta(tmp_path / "train.fasta", [(f"P{i}", s) for i, s in enumerate(sequences)])
    config = write_config(tmp_path, {"causal": {"name": directory}}, test=None)
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "note: causal: transformers' own forward runs (the packed forward does not implement is_decoder=True)" in (
        result.stderr
    )
    log = (tmp_path / "logs" / "causal.log").read_text()
    assert "forward: transformers (sdpa_key_padding; the packed forward does not implement is_decoder=True)" in log
    data = load_output(tmp_path / "out" / "train_embeddings_causal.pt")
    reference = Reference(directory, "esm2")
    for row, sequence in zip(data["embeddings"], sequences, strict=True):
        assert cosine(row, reference(sequence)) >= 0.9999


@pytest.mark.parametrize("attention", ["auto", "transformers"])
def test_a_checkpoint_transformers_cannot_run_fails_in_one_line(tmp_path, attention):
    from tests.tiny_checkpoints import build_esmc

    # 4 heads × head_dim 16 = 64 against hidden 32: q_norm (over the hidden size) cannot take q
    directory = build_esmc(tmp_path / "esmc_head_dim_16", sizes={"head_dim": 16})
    write_fasta(tmp_path / "train.fasta", [("P0", "MKTAYIAKQRQISFVKSHFSRQ")])
    config = write_config(tmp_path, {"esmc": {"name": directory}}, test=None, run_params={"attention": attention})
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith("error: model esmc: ") and "normalized_shape=[32]" in errors[0], errors
    if attention == "auto":  # caught at load by the probe, before any protein
        assert "transformers' own forward fails on this checkpoint" in errors[0]
    else:  # transformers' forward from the first batch: one line, the traceback in the log
        assert "the traceback is in" in errors[0] and "Traceback" in (tmp_path / "logs" / "esmc.log").read_text()
