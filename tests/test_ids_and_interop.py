"""Ids and the files other tools read: `paths.id_format` (UniProt headers → accessions, the whole header kept,
duplicates after mapping refused naming both headers), and HDF5 that ProtSpace's loader opens as written."""

from __future__ import annotations

import random
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import load_output, random_protein, run_cli, write_config, write_fasta
from utils.engine.families import ESM2, ESMC, PROT_T5, TOOL_MODEL_NAMES, Architecture, tool_model_name
from utils.errors import UserError
from utils.inputs.config import load_config
from utils.inputs.fasta import parse_fasta
from utils.inputs.ids import apply_id_format, protein_id

# CAFA's training FASTA (Swiss-Prot headers with descriptions), its test FASTA (bare accessions), TrEMBL, isoforms,
# and headers that are not UniProt's.
TRAIN = [
    ("sp|A0A0C5B5G6|MOTSC_HUMAN Mitochondrial-derived peptide MOTS-c OS=Homo sapiens OX=9606 GN=MT-RNR1 PE=1 SV=1", 16),
    ("tr|A0A024R1R8|A0A024R1R8_HUMAN HCG2014768, isoform CRA_a OS=Homo sapiens OX=9606 PE=4 SV=1", 120),
    ("sp|P12345-2|AATM_RABIT Isoform 2 of Aspartate aminotransferase", 80),
    ("P69905", 142),
    ("gene_17 some description", 40),
    ("ref|NP_000509.1| hemoglobin subunit beta", 60),
    ("sp|Q9Y6K9", 30),  # no entry name: not UniProt's layout, kept as the first word
]
TRAIN_IDS = ["A0A0C5B5G6", "A0A024R1R8", "P12345-2", "P69905", "gene_17", "ref|NP_000509.1|", "sp|Q9Y6K9"]
TEST = [("A0A0C5B5G6", 16), ("Q8N158 bare accession with a description", 50)]


# -- the mapping as a pure function --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first_word", "uniprot"),
    [
        ("sp|P04637|P53_HUMAN", "P04637"),
        ("tr|A0A024R1R8|A0A024R1R8_HUMAN", "A0A024R1R8"),
        ("sp|P12345-2|AATM_RABIT", "P12345-2"),
        ("P04637", "P04637"),
        ("sp|P04637", "sp|P04637"),
        ("SP|P04637|P53_HUMAN", "SP|P04637|P53_HUMAN"),
        ("gi|12345|ref|NP_1|", "gi|12345|ref|NP_1|"),
        ("sp||EMPTY", "sp||EMPTY"),
    ],
)
def test_uniprot_ids(first_word, uniprot):
    assert protein_id(first_word, "uniprot") == uniprot
    assert protein_id(first_word, "first_word") == first_word


def test_header_is_kept_whole_and_first_word_is_the_default():
    text = "".join(f">{header}\nMKV\n" for header, _ in TRAIN)
    records = parse_fasta(text, "train.fa")
    assert [r.header for r in records] == [header for header, _ in TRAIN]
    assert apply_id_format(records, "first_word", "train.fa") == records
    assert [r.id for r in apply_id_format(records, "uniprot", "train.fa")] == TRAIN_IDS


@pytest.mark.parametrize(
    "headers",
    [
        ("sp|P04637|P53_HUMAN Cellular tumor antigen p53", "tr|P04637|X_HUMAN other entry"),
        ("sp|P04637|P53_HUMAN Cellular tumor antigen p53", "P04637 the same accession, bare"),
    ],
)
def test_ids_that_collide_after_mapping_are_refused_naming_both_headers(headers):
    records = parse_fasta("".join(f">{header}\nMKV\n" for header in headers), "train.fa")
    assert len({r.id for r in records}) == 2  # distinct as first words
    with pytest.raises(UserError) as caught:
        apply_id_format(records, "uniprot", "train.fa")
    (line,) = caught.value.problems
    assert line.startswith("train.fa: ")
    assert all(header in line for header in headers)
    assert "'P04637'" in line and "id_format: first_word" in line


def test_config_accepts_the_two_formats_and_refuses_others(tmp_path, checkpoints):
    models = {"m": {"name": checkpoints["esm2"]}}
    config = write_config(tmp_path, models, extra_paths={"id_format": "uniprot"})
    assert load_config(config).id_format == "uniprot"
    assert load_config(write_config(tmp_path, models)).id_format == "first_word"
    with pytest.raises(UserError) as caught:
        load_config(write_config(tmp_path, models, extra_paths={"id_format": "Uniprot"}))
    assert "paths.id_format" in str(caught.value) and "did you mean 'uniprot'" in str(caught.value)


def test_cli_refuses_a_collision_in_one_line(tmp_path, checkpoints):
    write_fasta(tmp_path / "train.fasta", [("sp|P1|A_HUMAN", "MKV"), ("P1", "MKVL")])
    write_fasta(tmp_path / "test.fasta", [("x", "MK")])
    config = write_config(tmp_path, {"m": {"name": checkpoints["esm2"]}}, extra_paths={"id_format": "uniprot"})
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"headers 'sp\|P1\|A_HUMAN' and 'P1' both give protein id 'P1'", result.stderr)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.pt"))


# -- ProtSpace's names, from the architecture --------------------------------------------------------------------
def _arch(layers: int, hidden: int) -> Architecture:
    return Architecture(hidden, layers, 1, 4 * hidden, 0, False, None)


def test_tool_names_come_from_the_architecture_not_the_name():
    assert tool_model_name(ESM2, _arch(36, 2560)) == "esm2_3b"
    assert tool_model_name(ESM2, _arch(6, 320)) == "esm2_8m"
    assert tool_model_name(ESMC, _arch(36, 1152)) == "esmc_600m"
    assert tool_model_name(PROT_T5, _arch(24, 1024)) == "prot_t5"
    assert tool_model_name(ESM2, _arch(2, 32)) == "esm2_2x32"  # not a released size: no ProtSpace name
    # protspace 4.x's own short names (its EMBEDDER_MODELS), where a family here has the model
    protspace = {"prot_t5", "prost_t5", "esm2_8m", "esm2_35m", "esm2_150m", "esm2_650m", "esm2_3b", "esmc_300m",
                 "esmc_600m"}  # fmt: skip
    assert protspace <= set(TOOL_MODEL_NAMES.values())


# -- end to end: CLI with id_format uniprot and HDF5 output, then read as ProtSpace reads ----------------------------
@pytest.fixture(scope="module")
def uniprot_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("uniprot_run")
    rng = random.Random(5)
    train = [(header, random_protein(rng, length)) for header, length in TRAIN]
    test = [(header, random_protein(rng, length)) for header, length in TEST]
    write_fasta(directory / "train.fasta", train)
    write_fasta(directory / "test.fasta", test)
    models = {"prot_t5_xl": {"name": checkpoints["prot_t5"]}, "esm2": {"name": checkpoints["esm2"]}}
    config = write_config(
        directory,
        models,
        run_params={"output_format": "both", "concatenate": True},
        extra_paths={"id_format": "uniprot"},
    )
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return directory / "out", train, test


def test_outputs_carry_accessions_and_whole_headers(uniprot_run):
    out, train, test = uniprot_run
    data = load_output(out / "train_embeddings_esm2.pt")
    assert data["ids"] == TRAIN_IDS
    assert data["meta"]["headers"] == [header for header, _ in train]
    assert load_output(out / "test_embeddings_esm2.pt")["ids"] == ["A0A0C5B5G6", "Q8N158"]
    with h5py.File(out / "train_embeddings_prot_t5_xl.h5") as handle:
        assert [handle[name].attrs["original_id"] for name in handle] == TRAIN_IDS
        assert [handle[name].attrs["header"] for name in handle] == [header for header, _ in train]
        assert "headers" not in handle.attrs  # per protein, not one file attribute that grows with the job


def load_like_protspace(paths: list[Path]) -> tuple[str, list[str], np.ndarray]:
    """What protspace 4.x's HDF5 loader does with a file (re-implemented from reading its code, not copied): the
    datasets at the root (or one group down) are the proteins, keyed by their raw dataset names; each must be one
    per-protein vector ([D] or [1, D]) of one common dimension; float16 is read as float32; the model's name comes
    from the root attribute "model_name", and without it the file is refused (unless a name is given by hand)."""
    vectors, keys, names = [], [], set()
    for path in paths:
        with h5py.File(path, "r") as handle:
            if "model_name" in handle.attrs:
                names.add(str(handle.attrs["model_name"]))
            items = []
            for key, item in handle.items():
                if isinstance(item, h5py.Group):
                    items += [(k, v) for k, v in item.items() if not isinstance(v, h5py.Group)]
                else:
                    items.append((key, item))
            assert items, f"no datasets in {path}"
            for key, dataset in items:
                vector = np.array(dataset)
                if vector.ndim == 2 and vector.shape[0] == 1:
                    vector = vector[0]
                assert vector.ndim == 1, f"{key}: shape {vector.shape} looks per-residue"
                vectors.append(vector)
                keys.append(key)
    if not names:
        raise ValueError("HDF5 file has no 'model_name' attribute")
    matrix = np.array(vectors)
    assert len({v.shape[0] for v in vectors}) == 1
    if matrix.dtype == np.float16:
        matrix = matrix.astype(np.float32)
    assert not np.isnan(matrix).any()
    return names.pop(), keys, matrix


def test_protspace_opens_the_files_as_written(uniprot_run):
    out, train, test = uniprot_run
    esm = load_output(out / "train_embeddings_esm2.pt")
    name, keys, matrix = load_like_protspace([out / "train_embeddings_esm2.h5"])
    assert name == "esm2_2x32"  # the tiny checkpoint's architecture; a real 3B checkpoint gives esm2_3b
    assert keys == TRAIN_IDS  # ProtSpace joins annotations on these raw names: accessions, as asked
    assert np.array_equal(matrix, esm["embeddings"].float().numpy())
    assert load_like_protspace([out / "train_embeddings_prot_t5_xl.h5"])[0] == "prot_t5_2x32"
    # train and test of one model open together as one set; the concatenated file names all its models
    name, keys, _ = load_like_protspace([out / "train_embeddings_esm2.h5", out / "test_embeddings_esm2.h5"])
    assert name == "esm2_2x32" and len(keys) == len(TRAIN_IDS) + 2
    assert load_like_protspace([out / "train_embeddings_concat.h5"])[0] == "prot_t5_2x32+esm2_2x32"
    assert load_output(out / "train_embeddings_esm2.pt")["meta"]["model_name"] == "esm2_2x32"


def test_the_reader_in_this_test_refuses_what_protspace_refuses(tmp_path):
    """The check above can fail: a file written without model_name (as before this change) is refused."""
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as handle:
        handle["P1"] = np.zeros(4, dtype=np.float16)
    with pytest.raises(ValueError, match="model_name"):
        load_like_protspace([path])


def test_parquet_keeps_headers_as_a_column(tmp_path):
    import pyarrow.parquet as pq
    import torch

    from utils.outputs.writers import ParquetWriter

    headers = ["sp|P1|A_HUMAN first", "P2", "tr|Q3|B third"]
    path = tmp_path / "x.parquet"
    with ParquetWriter(path, 4, {"model_name": "esm2_8m", "headers": headers}) as writer:
        writer.write(["P1", "P2"], torch.ones(2, 4))
        writer.write(["Q3"], torch.zeros(1, 4))  # rows written in two blocks keep their headers aligned
    table = pq.read_table(path)
    assert table.column("header").to_pylist() == headers and table.column("id").to_pylist() == ["P1", "P2", "Q3"]
    assert b"headers" not in table.schema.metadata and table.schema.metadata[b"model_name"] == b"esm2_8m"
