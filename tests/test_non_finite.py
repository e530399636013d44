"""Never a NaN row in an output (issue 13, case 2), through the real command on CPU.

An ESM C checkpoint whose token embeddings are scaled by 1e7: in fp16 they overflow (max 65,504) and every vector is
NaN; in fp32 the layer norms bring them back and the vectors are finite. The job must redo those proteins in fp32,
record it in meta, and write only finite rows. A checkpoint that is NaN in fp32 too must fail the model, naming the
proteins, and write no final file."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import cosine, load_output, random_protein, run_cli, write_config, write_fasta
from utils.engine.encode import Embedded
from utils.engine.finite import Fp32Redo, NonFiniteError, redo_non_finite

RNG = random.Random(8)
TRAIN = [(f"p{i}", random_protein(RNG, RNG.randint(8, 40))) for i in range(6)]
TEST = [("t0", random_protein(RNG, 20))]


def _overflowing_esmc(source: Path, target: Path, scale: float) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    weights["esmc.embed_tokens.weight"] = weights["esmc.embed_tokens.weight"] * scale
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def _run(directory: Path, checkpoint: Path, precision: str):
    directory.mkdir(exist_ok=True)
    write_fasta(directory / "train.fasta", TRAIN)
    write_fasta(directory / "test.fasta", TEST)
    config = write_config(
        directory, {"esmc": {"name": checkpoint, "precision": precision}}, run_params={"batch_size": 4, "report": True}
    )
    return run_cli("generate_embeddings_t5.py", "--config", str(config))


def test_fp16_overflow_is_redone_in_fp32_and_recorded(checkpoints, tmp_path):
    checkpoint = _overflowing_esmc(checkpoints["esmc"], tmp_path / "ckpt", 1e7)
    fp16 = _run(tmp_path / "fp16", checkpoint, "fp16")
    assert fp16.returncode == 0, fp16.stderr
    fp32 = _run(tmp_path / "fp32", checkpoint, "fp32")
    assert fp32.returncode == 0, fp32.stderr
    for split, records in (("train", TRAIN), ("test", TEST)):
        got = load_output(tmp_path / "fp16" / "out" / f"{split}_embeddings_esmc.pt")
        reference = load_output(tmp_path / "fp32" / "out" / f"{split}_embeddings_esmc.pt")
        assert torch.isfinite(got["embeddings"]).all(), split
        assert got["meta"]["redone_in_fp32"] == {rec_id: "in fp32: non-finite in fp16" for rec_id, _ in records}
        assert got["meta"]["windowed"] == {}
        for row, expected in zip(got["embeddings"], reference["embeddings"], strict=True):
            assert cosine(row, expected) >= 0.999
    assert "redone in fp32" in fp16.stdout
    # The run summary counts them as redone, not as windowed (each was one pass), with the worker's peak memory
    (worker,) = json.loads((tmp_path / "fp16" / "out" / "run_summary.json").read_text())["workers"]
    assert worker["redone_in_fp32"] == len({s for _, s in TRAIN + TEST}) and worker["windowed_lengths"] == []
    assert worker["peak_memory_bytes"] > 0 and worker["peak_memory_kind"] == "process RSS"
    assert worker["out_of_memory_retries"] == 0


def test_non_finite_in_fp32_too_fails_naming_the_proteins(checkpoints, tmp_path):
    from tests.tiny_checkpoints import build_esmc

    checkpoint = build_esmc(tmp_path / "nan", nan_weights=True)
    result = _run(tmp_path, checkpoint, "fp16")
    assert result.returncode == 1, result.stderr
    assert "non-finite embeddings (NaN or inf) in fp16 and again in fp32" in result.stderr
    assert "residues starting" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*_embeddings_*"))


def test_redo_non_finite_unit():
    good, bad = Embedded(torch.ones(3), None, None), Embedded(torch.tensor([1.0, float("nan"), 0]), None, None)
    assert redo_non_finite([good, good], ["MK", "MV"], "fp16", None) == ([good, good], [])
    with pytest.raises(NonFiniteError, match="1 protein\\(s\\) \\(2 residues starting MV\\).* in fp32;"):
        redo_non_finite([good, bad], ["MK", "MV"], "fp32", None)
    calls = []

    class Fixed:
        def embed(self, sequences):
            calls.append(sequences)
            return [Embedded(torch.full((3,), 2.0), None, None) for _ in sequences]

        def close(self):
            pass

    fixed, redone = redo_non_finite([good, bad], ["MK", "MV"], "bf16", Fp32Redo(Fixed))
    assert redone == [1] and calls == [["MV"]] and torch.equal(fixed[1].pooled, torch.full((3,), 2.0))
    assert fixed[1].note == {"redone": "in fp32: non-finite in bf16"} and fixed[0] is good
