"""Parquet output: the streaming writer as a unit (row groups, atomic rename, schema), the config's format lists,
and one run of the real CLI whose Parquet files read back equal to its .pt files (pyarrow, pyarrow.dataset, and
polars when it is installed)."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import load_output, random_protein, run_job, write_config
from utils.errors import UserError
from utils.inputs.config import load_config
from utils.inputs.keys import output_formats
from utils.outputs import writers
from utils.outputs.writers import ParquetWriter, parquet_path, pt_path, read_parquet


def test_writer_streams_row_groups_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "PARQUET_ROWS_PER_GROUP", 4)
    path = tmp_path / "x.parquet"
    vectors = torch.randn(11, 6)
    ids = [f"p{i}" for i in range(11)]
    with ParquetWriter(path, 6, {"model": "m", "dim": 6, "windowed": {"p1": {"windows": 2}}}) as writer:
        writer.write(ids[:3], vectors[:3])
        writer.write(ids[3:], vectors[3:].numpy())
    metadata = pq.read_metadata(path)
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [3, 4, 4]
    schema = pq.read_schema(path)
    assert schema.field("embedding").type == pa.list_(pa.float16(), 6)
    assert str(schema.field("embedding").type) == "fixed_size_list<element: halffloat>[6]"
    read_ids, read_vectors, meta = read_parquet(path)
    assert read_ids == ids
    assert torch.equal(read_vectors, vectors.half())
    assert meta["model"] == "m" and json.loads(meta["dim"]) == 6 and json.loads(meta["windowed"])["p1"]["windows"] == 2


def test_writer_leaves_no_file_when_interrupted(tmp_path):
    path = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError), ParquetWriter(path, 3, {}) as writer:
        writer.write(["a"], torch.zeros(1, 3))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="dimension 3"), ParquetWriter(tmp_path / "x.parquet", 3, {}) as writer:
        writer.write(["a", "b"], torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("value", "formats"),
    [
        ("parquet", ("parquet",)),
        ("all", ("pt", "h5", "parquet")),
        ("both", ("pt", "h5")),
        (["parquet", "pt", "parquet"], ("parquet", "pt")),
    ],
)
def test_config_accepts_formats(tmp_path, value, formats):
    config = load_config(write_config(tmp_path, {"m": {"name": "x"}}, run_params={"output_format": value}))
    assert output_formats(config.run.output_format) == formats


@pytest.mark.parametrize(
    ("run_params", "message"),
    [
        ({"output_format": ["pt", "csv"]}, "a list must name formats among pt, h5, parquet"),
        ({"output_format": []}, "a list must name formats"),
        ({"output_format": "parquett"}, "did you mean 'parquet'"),
        ({"output_format": ["parquet"], "per_residue": True}, "run_params.per_residue"),
    ],
)
def test_config_refuses_formats(tmp_path, run_params, message):
    with pytest.raises(UserError, match=message):
        load_config(write_config(tmp_path, {"m": {"name": "x"}}, run_params=run_params))


@pytest.fixture(scope="module")
def parquet_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("parquet_run")
    rng = random.Random(5)
    train = [(f"tr|{i}|x", random_protein(rng, rng.randint(1, 90))) for i in range(13)]
    test = [(f"te{i}", random_protein(rng, rng.randint(1, 90))) for i in range(4)]
    models = {"t5": {"name": checkpoints["prot_t5"]}, "esm": {"name": checkpoints["esm2"]}}
    run_job(directory, models, train, test, run_params={"output_format": ["pt", "parquet"], "concatenate": True})
    return directory / "out"


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("key", ["t5", "esm", "concat"])
def test_parquet_equals_pt(parquet_run, split, key):
    expected = load_output(pt_path(parquet_run, split, key))
    ids, vectors, meta = read_parquet(parquet_path(parquet_run, split, key))
    assert ids == expected["ids"]
    assert torch.equal(vectors, expected["embeddings"])
    if key == "concat":
        assert json.loads(meta["columns"]) == expected["columns"]
    else:
        assert meta["model"] == expected["meta"]["model"] and json.loads(meta["dim"]) == expected["meta"]["dim"]


def test_parquet_reads_in_pieces(parquet_run):
    """pyarrow.dataset streams record batches; the rows keep input order and the vector type survives."""
    expected = load_output(pt_path(parquet_run, "train", "esm"))
    dataset = ds.dataset(parquet_path(parquet_run, "train", "esm"), format="parquet")
    ids, rows = [], []
    for batch in dataset.to_batches(batch_size=5):
        ids += batch.column("id").to_pylist()
        rows += batch.column("embedding").to_pylist()
    assert ids == expected["ids"]
    assert torch.equal(torch.tensor(rows, dtype=torch.float16), expected["embeddings"])


def test_polars_scans_parquet(parquet_run):
    pl = pytest.importorskip("polars")
    expected = load_output(pt_path(parquet_run, "test", "t5"))
    frame = pl.scan_parquet(parquet_path(parquet_run, "test", "t5")).select("id", "embedding").collect()
    assert frame["id"].to_list() == expected["ids"]
    vectors = torch.tensor(frame["embedding"].to_list(), dtype=torch.float16)
    assert torch.equal(vectors, expected["embeddings"])
