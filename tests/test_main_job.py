"""End to end through the real CLI on tiny ProtT5 / ProstT5 checkpoints: every protein against an independent
one-at-a-time fp32 reference, input order, ids verbatim, output format."""

from __future__ import annotations

import random

import pytest
import torch

from tests.conftest import Reference, cosine, load_output, random_protein, run_job


def _proteins() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(7)
    train = [(f"sp|P{i:05d}|PROT_{i}", random_protein(rng, rng.randint(2, 400))) for i in range(40)]
    train += [
        ("long_1300", random_protein(rng, 1300)),
        ("long_2100/with:odd|chars", random_protein(rng, 2100)),
        ("rare_residues", "MKXUZOBAXXLUU" + random_protein(rng, 30)),
        ("stop_codon", random_protein(rng, 57) + "*"),
        ("single", "M"),
    ]
    test = [(f"T{i}", random_protein(rng, rng.randint(10, 300))) for i in range(15)]
    test.append(("test_copy_of_train", train[3][1]))
    return train, test


@pytest.fixture(scope="module")
def t5_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("t5_run")
    train, test = _proteins()
    # The ProstT5 checkpoint sits under a key that does not say so: the prefix must come from the checkpoint.
    models = {"prot_t5_xl": {"name": checkpoints["prot_t5"]}, "structure": {"name": checkpoints["prost_t5"]}}
    result = run_job(directory, models, train, test, run_params={"batch_size": 6, "max_tokens_per_batch": 1200})
    return directory, train, test, result


@pytest.mark.parametrize(("output_key", "layout"), [("prot_t5_xl", "prot_t5"), ("structure", "prost_t5")])
def test_every_protein_matches_one_at_a_time_reference(t5_run, checkpoints, output_key, layout):
    directory, train, test, _ = t5_run
    reference = Reference(checkpoints[layout], layout)
    worst = 1.0
    for split, records in (("train", train), ("test", test)):
        data = load_output(directory / "out" / f"{split}_embeddings_{output_key}.pt")
        assert data["ids"] == [rec_id for rec_id, _ in records]
        assert data["embeddings"].dtype == torch.float16
        assert data["embeddings"].shape == (len(records), 32)
        for row, (rec_id, sequence) in zip(data["embeddings"], records, strict=True):
            similarity = cosine(row, reference(sequence.rstrip("*")))
            worst = min(worst, similarity)
            assert similarity >= 0.9999, (rec_id, similarity)
    print(
        f"\n{output_key}: worst cosine against the fp32 one-at-a-time reference {worst:.8f} (1 - cos = {1 - worst:.2e})"
    )


def test_meta_describes_model_and_pooling(t5_run):
    directory, *_ = t5_run
    prot = load_output(directory / "out" / "train_embeddings_prot_t5_xl.pt")["meta"]
    prost = load_output(directory / "out" / "train_embeddings_structure.pt")["meta"]
    assert prot["family"] == "ProtT5" and prost["family"] == "ProstT5"
    assert prot["precision"] == ["fp32"] and prot["dim"] == 32
    assert "[0, 0+L)" in prot["pooling"] and "[1, 1+L)" in prost["pooling"]
    assert prot["windowed"] == {}  # no max_residues set: every protein runs whole


def test_prost_differs_from_prot(t5_run):
    directory, *_ = t5_run
    prot = load_output(directory / "out" / "train_embeddings_prot_t5_xl.pt")["embeddings"]
    prost = load_output(directory / "out" / "train_embeddings_structure.pt")["embeddings"]
    assert not torch.allclose(prot.float(), prost.float(), atol=1e-2)


def test_duplicates_across_splits_get_identical_rows(t5_run):
    directory, train, test, _ = t5_run
    a = load_output(directory / "out" / "train_embeddings_prot_t5_xl.pt")
    b = load_output(directory / "out" / "test_embeddings_prot_t5_xl.pt")
    assert torch.equal(a["embeddings"][3], b["embeddings"][b["ids"].index("test_copy_of_train")])


def test_logs_one_file_per_worker(t5_run):
    directory, *_ = t5_run
    logs = sorted(p.name for p in (directory / "logs").iterdir())
    # a log per worker; the progress records were the run report's, and went once it was written
    assert logs == ["prot_t5_xl.log", "structure.log"]
    assert "done:" in (directory / "logs" / "structure.log").read_text()


def test_long_protein_on_cpu_is_embedded_whole_by_default(checkpoints, tmp_path):
    # A protein's vector must not depend on the device: on CPU too, a 4,560-residue protein is embedded at full
    # length (no speed cap), not in windows, and matches the full-length one-at-a-time fp32 reference.
    rng = random.Random(11)
    long_protein = random_protein(rng, 4560)
    train = [("long_4560", long_protein), ("short", random_protein(rng, 80))]
    run_job(tmp_path, {"prot_t5_xl": {"name": checkpoints["prot_t5"]}}, train, [("t", random_protein(rng, 50))])
    output = load_output(tmp_path / "out" / "train_embeddings_prot_t5_xl.pt")
    assert output["meta"]["windowed"] == {}
    reference = Reference(checkpoints["prot_t5"], "prot_t5")(long_protein)
    assert cosine(output["embeddings"][0].float(), reference) >= 0.9999
