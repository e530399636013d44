"""The output side through the real CLI: the concatenated file, HDF5 (per protein and per residue) against the .pt
files, one model sharded over two devices against the same model on one, the shipped config; and the HDF5 naming
as a pure function."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import h5py
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import REPO, load_output, random_protein, run_cli, write_config, write_fasta
from utils.outputs.writers import (
    concatenate,
    h5_id,
    h5_name,
    read_h5,
    read_h5_attributes,
    residues_h5_path,
    write_h5,
)

# Config order is column order in the concatenated file.
MODELS = {
    "t5": {"layout": "prot_t5", "devices": ["cpu"]},
    "esm": {"layout": "esm2", "devices": ["cpu"]},
    "esm_sharded": {"layout": "esm2", "devices": ["cpu", "cpu"]},
}
DIM = 32
TRICKY_IDS = ["a/b", "a%2Fb", ".", "x/y/z", "%", "..", "sp|P1|Q/R.1"]


def _proteins() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(23)
    train = [(rec_id, random_protein(rng, rng.randint(3, 260))) for rec_id in TRICKY_IDS]
    train += [(f"P{i}", random_protein(rng, rng.randint(1, 300))) for i in range(10)]
    train.append(("stop_codon", random_protein(rng, 33) + "*"))
    test = [(f"T{i}", random_protein(rng, rng.randint(5, 200))) for i in range(6)]
    return train, test


def _models(checkpoints, keys) -> dict[str, dict]:
    return {key: {"name": checkpoints[MODELS[key]["layout"]], "device": "cpu"} for key in keys}


@pytest.fixture(scope="module")
def outputs_run(checkpoints, tmp_path_factory):
    """One run of the main job (prepare → run: workers, merge, concatenation), in this process so that one model can
    be given the device list [cpu, cpu], which utils.inputs.config refuses as a user setting: two shards of one model
    on one machine, planned and merged exactly as [cuda:0, cuda:1] would be."""
    from utils.files import OutputLock
    from utils.running.local import run_job
    from utils.running.plan import prepare

    directory = tmp_path_factory.mktemp("outputs_run")
    train, test = _proteins()
    write_fasta(directory / "train.fasta", train)
    write_fasta(directory / "test.fasta", test)
    config_path = write_config(
        directory,
        _models(checkpoints, MODELS),
        run_params={
            "batch_size": 5,
            "max_tokens_per_batch": 1200,
            "concatenate": True,
            "output_format": "both",
            "per_residue": True,
        },
    )
    config, splits, models = prepare(config_path)
    models = [
        replace(model, config=replace(model.config, devices=tuple(MODELS[model.config.key]["devices"])))
        for model in models
    ]
    with OutputLock(config.output_dir):
        assert run_job(config, splits, models) == 0
    return directory / "out", {"train": train, "test": test}


SPLITS = ("train", "test")


@pytest.mark.parametrize("split", SPLITS)
def test_concatenated_file_is_the_models_side_by_side(outputs_run, split):
    out, records = outputs_run
    concat = load_output(out / f"{split}_embeddings_concat.pt")
    parts = [load_output(out / f"{split}_embeddings_{key}.pt") for key in MODELS]
    assert concat["ids"] == [rec_id for rec_id, _ in records[split]]
    assert all(part["ids"] == concat["ids"] for part in parts)
    assert concat["embeddings"].dtype == torch.float16
    assert concat["embeddings"].shape == (len(records[split]), DIM * len(MODELS))
    assert torch.equal(concat["embeddings"], torch.cat([part["embeddings"] for part in parts], dim=1))
    assert concat["columns"] == {key: [i * DIM, (i + 1) * DIM] for i, key in enumerate(MODELS)}
    assert list(concat["columns"]) == list(MODELS)  # config order
    for part, (start, end) in zip(parts, concat["columns"].values(), strict=True):
        assert torch.equal(concat["embeddings"][:, start:end], part["embeddings"])


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("key", list(MODELS))
def test_h5_holds_the_pt_embeddings_one_dataset_per_id(outputs_run, split, key):
    out, records = outputs_run
    pt = load_output(out / f"{split}_embeddings_{key}.pt")
    path = out / f"{split}_embeddings_{key}.h5"
    stored = read_h5(path)
    assert list(stored) == pt["ids"]  # datasets iterate in input order
    assert all(vector.dtype == torch.float16 and vector.shape == (DIM,) for vector in stored.values())
    assert torch.equal(torch.stack(list(stored.values())), pt["embeddings"])
    with h5py.File(path, "r") as handle:
        # The layout peers read: every protein a top-level dataset, named by its id with '/' escaped.
        assert list(handle) == [h5_name(rec_id) for rec_id in pt["ids"]]
        assert all(isinstance(handle[name], h5py.Dataset) for name in handle)
        if split == "train":
            assert handle["a%2Fb"].attrs["original_id"] == "a/b"
            assert handle["a%252Fb"].attrs["original_id"] == "a%2Fb"
            assert handle["x%2Fy%2Fz"].attrs["original_id"] == "x/y/z"
            assert handle["%2E"].attrs["original_id"] == "."
    attributes = read_h5_attributes(path)
    assert attributes["output_key"] == key and attributes["dim"] == DIM and attributes["split"] == split
    assert attributes["family"] == pt["meta"]["family"]
    assert json.loads(attributes["windowed"]) == pt["meta"]["windowed"]


@pytest.mark.parametrize("key", ["t5", "esm"])
def test_per_residue_rows_average_to_the_pooled_embedding(outputs_run, key):
    out, records = outputs_run
    pooled_path = out / f"train_embeddings_{key}.h5"
    rows_by_id = read_h5(residues_h5_path(pooled_path))
    pooled = load_output(out / f"train_embeddings_{key}.pt")
    assert list(rows_by_id) == pooled["ids"]
    for (rec_id, sequence), vector in zip(records["train"], pooled["embeddings"], strict=True):
        rows = rows_by_id[rec_id]
        assert rows.dtype == torch.float16
        assert rows.shape == (len(sequence.rstrip("*")), DIM)  # residue rows only: no <cls>, </s>, <eos>, padding
        # Both sides were rounded to float16 once (2^-11 relative) from the same float32 rows.
        bound = 2.0**-11 * (rows.float().abs().max(dim=0).values + vector.float().abs()) + 1e-6
        assert bool(((rows.float().mean(dim=0) - vector.float()).abs() <= bound).all()), rec_id
    attributes = read_h5_attributes(residues_h5_path(pooled_path))
    assert attributes["output_key"] == key and "residue rows" in attributes["rows"]


@pytest.mark.parametrize("split", SPLITS)
def test_one_model_on_two_devices_equals_one_device(outputs_run, split):
    out, _ = outputs_run
    one = load_output(out / f"{split}_embeddings_esm.pt")
    two = load_output(out / f"{split}_embeddings_esm_sharded.pt")
    assert two["ids"] == one["ids"]
    difference = (two["embeddings"].float() - one["embeddings"].float()).abs().max().item()
    assert torch.equal(two["embeddings"], one["embeddings"]) or difference <= 1e-6, difference
    assert two["meta"]["devices"] == ["cpu", "cpu"]
    print(f"\n{split}: sharded [cpu, cpu] vs one device: max |Δ| = {difference:.1e}")


def test_both_shards_did_part_of_the_work(outputs_run):
    """Each device's worker is given part of the sequences (here it finds them all in the store already: the
    unsharded `esm`, the same checkpoint and settings, computed them first)."""
    out, records = outputs_run
    logs = out.parent / "logs"
    counts = []
    for shard in (0, 1):
        text = (logs / f"esm_sharded.shard{shard}.log").read_text()
        counts.append(int(re.search(r"(\d+) unique sequences, \1 already in chunks", text).group(1)))
    unique = {sequence for split in records.values() for _, sequence in split}
    assert min(counts) > 0 and sum(counts) == len(unique)


def test_h5_only_run_with_concatenate_writes_the_concatenation_as_hdf5(checkpoints, tmp_path):
    """output_format: h5 writes no .pt; the concatenation comes from the merged matrices, so it is written as HDF5
    (the config must not refuse the combination)."""
    train, _ = _proteins()
    write_fasta(tmp_path / "train.fasta", train[:8])
    config = write_config(
        tmp_path,
        _models(checkpoints, ["t5", "esm"]),
        test=None,
        run_params={"concatenate": True, "output_format": "h5"},
    )
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    out = tmp_path / "out"
    assert result.returncode == 0, result.stderr
    assert not list(out.glob("*.pt"))
    concat = read_h5(out / "train_embeddings_concat.h5")
    parts = [read_h5(out / f"train_embeddings_{key}.h5") for key in ("t5", "esm")]
    assert list(concat) == [rec_id for rec_id, _ in train[:8]]
    for rec_id, vector in concat.items():
        assert torch.equal(vector, torch.cat([part[rec_id] for part in parts]))
    columns = json.loads(read_h5_attributes(out / "train_embeddings_concat.h5")["columns"])
    assert columns == {"t5": [0, DIM], "esm": [DIM, 2 * DIM]} and list(columns) == ["t5", "esm"]


# -- HDF5 naming and writing, without a model -------------------------------------------------------------------------
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1))
def test_h5_names_are_reversible_and_never_groups(protein_id):
    name = h5_name(protein_id)
    assert "/" not in name and name != "."
    assert h5_id(name) == protein_id


def test_h5_names_of_distinct_ids_differ():
    names = [h5_name(rec_id) for rec_id in TRICKY_IDS + ["%2E", "a%252Fb"]]
    assert len(set(names)) == len(names)


def test_write_h5_is_atomic(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(ValueError):
        write_h5(path, ["a", "b"], torch.zeros(1, 4, dtype=torch.float16), {"dim": 4})  # one vector short
    assert list(tmp_path.iterdir()) == []
    write_h5(path, TRICKY_IDS, torch.arange(len(TRICKY_IDS) * 4, dtype=torch.float16).view(-1, 4), {"dim": 4})
    assert list(read_h5(path)) == TRICKY_IDS
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]


def test_read_h5_reads_files_written_by_other_tools(tmp_path):
    """ProtTrans' prott5_embedder.py writes datasets named by id and no attributes."""
    with h5py.File(tmp_path / "prottrans.h5", "w") as handle:
        handle.create_dataset("sp|P12345|X_HUMAN", data=torch.ones(4).numpy())
    assert list(read_h5(tmp_path / "prottrans.h5")) == ["sp|P12345|X_HUMAN"]


def test_concatenate_columns_follow_the_given_order():
    embeddings, columns = concatenate([("b", torch.ones(3, 2)), ("a", torch.zeros(3, 5))])
    assert embeddings.dtype == torch.float16 and embeddings.shape == (3, 7)
    assert columns == {"b": [0, 2], "a": [2, 7]}
    with pytest.raises(ValueError):
        concatenate([("b", torch.ones(3, 2)), ("a", torch.zeros(4, 5))])


# -- the shipped config ----------------------------------------------------------------------------------------------
SHIPPED_MODELS = {
    "prot_t5_xl": "Rostlab/prot_t5_xl_half_uniref50-enc",
    "prost_t5": "Rostlab/ProstT5_fp16",
    "esm1b": "facebook/esm1b_t33_650M_UR50S",
    "esm2": "facebook/esm2_t36_3B_UR50D",
    "esmc": "biohub/ESMC-600M",
}


def test_shipped_config_loads_with_the_users_layout():
    from utils.inputs.config import load_config

    config = load_config(REPO / "config_t5.yaml")
    assert config.splits == {"train": Path("data/train_sequences.fasta"), "test": Path("data/testsuperset.fasta")}
    assert (config.output_dir, config.log_dir) == (Path("embeddings"), Path("logs"))
    run = config.run
    assert (run.batch_size, run.save_every_n_batches, run.seed) == (32, 100, 42)
    assert {m.key: m.name for m in config.models} == SHIPPED_MODELS
    assert {m.output_key for m in config.models} == set(SHIPPED_MODELS)
    assert {d for m in config.models for d in m.devices} == {"cuda:0", "cuda:1"}


def test_shipped_config_commented_settings_are_valid_when_uncommented(tmp_path):
    from utils.inputs.config import load_config
    from utils.inputs.keys import RunParams

    lines = (REPO / "config_t5.yaml").read_text().splitlines()
    uncommented, keys = [], set()
    for line in lines:
        match = re.match(r"^  # (\w+): (\S+)", line)
        if match and match.group(1) in RunParams.__dataclass_fields__:
            line = f"  {match.group(1)}: {match.group(2)}"
            keys.add(match.group(1))
        uncommented.append(line)
    # every run_params key but the three the config sets
    assert keys == set(RunParams.__dataclass_fields__) - {"batch_size", "save_every_n_batches", "seed"}
    path = tmp_path / "config_t5.yaml"
    path.write_text("\n".join(uncommented) + "\n")
    config = load_config(path)
    assert config.run.window_overlap == 256 and config.run.output_format == "pt"
