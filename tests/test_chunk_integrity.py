"""Chunks that cannot be trusted, and chunks that must not be thrown away, through the real command (issue 13,
cases 1, 3, 4, 5 and 8).

Damage is injected into finished chunks the way a disk or a hand would: a flipped exponent bit inside the tensor
payload (torch.load does not check the zip CRCs), a truncated file, an empty file, a well-formed chunk of the right
settings with a wrong shape or dtype, and a directory under a chunk's name. Every one must be quarantined (kept, not
trusted, not fatal), named in one note as damaged, and its proteins recomputed to exactly the first run's numbers.
The checkpoint's identity must survive `touch`, a copy without -p and `./` in the path, and change with its content.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import generate_embeddings_t5
import validate_t5_embeddings
from tests.conftest import load_output, partition_dir, random_protein, run_cli, write_config, write_fasta
from utils.checks import preflight, resolve
from utils.inputs.unique import hex_to_digests
from utils.running import plan
from utils.running.chunks import chunk_checksum
from utils.running.store import ChunkStore

KEY = "esm"
RNG = random.Random(21)
TRAIN = [(f"p{i}", random_protein(RNG, RNG.randint(10, 60))) for i in range(12)]
TEST = [("t0", random_protein(RNG, 33)), ("t1", TRAIN[0][1])]
UNIQUE = len({s for _, s in TRAIN + TEST})
RUN_PARAMS = {"batch_size": 2, "save_every_n_batches": 1}  # one chunk per batch: seven chunks


def _setup(directory: Path, checkpoint: Path | str) -> Path:
    write_fasta(directory / "train.fasta", TRAIN)
    write_fasta(directory / "test.fasta", TEST)
    return write_config(directory, {KEY: {"name": checkpoint}}, run_params=RUN_PARAMS)


def _run(config: Path):
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return result


def _counts(directory: Path) -> tuple[int, int]:
    found = re.findall(
        r"(\d+) unique sequences, (\d+) already in chunks", (directory / "logs" / f"{KEY}.log").read_text()
    )
    return int(found[-1][0]), int(found[-1][1])


def _payload_offset(path: Path, size: int) -> int:
    """Byte offset, inside a torch zip file, of the first stored tensor of `size` bytes."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size == size)
    raw = path.read_bytes()
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length


def _flip_exponent_bit(path: Path) -> None:
    chunk = torch.load(path, weights_only=True)
    pooled = chunk["pooled"]
    offset = _payload_offset(path, pooled.numel() * 4)
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x40  # high byte of the first float32 (little-endian): an exponent bit
    path.write_bytes(bytes(data))
    flipped = torch.load(path, weights_only=True)["pooled"]  # still loads: nothing but the checksum can tell
    assert not torch.equal(flipped, pooled)


def _resave(path: Path, edit) -> None:
    """A chunk of the right settings and a valid checksum, but malformed: as a buggy writer would leave it."""
    chunk = torch.load(path, weights_only=True)
    edit(chunk)
    chunk["checksum"] = chunk_checksum(chunk)
    torch.save(chunk, path)


@pytest.fixture(scope="module")
def first_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("integrity")
    config = _setup(directory, checkpoints["esm2"])
    _run(config)
    return (
        directory,
        config,
        {split: load_output(directory / "out" / f"{split}_embeddings_{KEY}.pt") for split in ("train", "test")},
    )


def test_damaged_and_malformed_chunks_are_quarantined_named_and_redone(first_run):
    directory, config, before = first_run
    chunks = partition_dir(directory / "out")
    files = sorted(chunks.glob("*.chk"))
    assert len(files) >= 6
    flipped, truncated, empty, wrong_shape, wrong_dtype = files[:5]
    damaged_proteins = sum(len(torch.load(p, weights_only=True)["digests"]) for p in files[:5])
    _flip_exponent_bit(flipped)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    empty.write_bytes(b"")
    _resave(wrong_shape, lambda c: c.update(pooled=torch.cat([c["pooled"], c["pooled"][:, :1]], dim=1)))
    _resave(wrong_dtype, lambda c: c.update(pooled=c["pooled"].double()))
    (chunks / "0000000000.chk").mkdir()
    (chunks / "0000000000.chk" / "inside").write_text("x")

    result = _run(config)
    assert "Traceback" not in result.stderr
    notes = [line for line in result.stderr.splitlines() if "damaged or unreadable" in line]
    assert len(notes) == 6, result.stderr
    for path in (*files[:5], chunks / "0000000000.chk"):
        assert sum(path.name in note for note in notes) == 1, (path.name, result.stderr)
    assert "checksum mismatch" in next(n for n in notes if flipped.name in n)
    assert "shape" in next(n for n in notes if wrong_shape.name in n)
    assert "other settings" not in result.stderr
    assert all("moved to its partition's quarantine/" in note for note in notes)
    aside = sorted(p.name for p in (chunks / "quarantine").iterdir())
    assert aside == sorted(p.name for p in (*files[:5], chunks / "0000000000.chk"))  # kept, not deleted
    assert _counts(directory) == (UNIQUE, UNIQUE - damaged_proteins)
    for split, expected in before.items():
        got = load_output(directory / "out" / f"{split}_embeddings_{KEY}.pt")
        assert got["ids"] == expected["ids"]
        assert torch.isfinite(got["embeddings"]).all()
        assert torch.equal(got["embeddings"], expected["embeddings"]), split  # recomputed, same batches, same numbers


def test_resume_that_fits_is_not_refused_by_the_disk_check(first_run, monkeypatch):
    directory, config, _ = first_run
    config_, splits, models = plan.prepare(config)
    fresh = preflight.estimate_output_bytes(config_, splits, models)
    usage = shutil.disk_usage(directory)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=fresh - 1))
    assert preflight.check_disk(config_, splits, models) == []  # every chunk is present: only the finals are left
    chunks = partition_dir(directory / "out")
    moved = directory / "chunks_elsewhere"
    shutil.move(chunks, moved)
    try:
        problems = preflight.check_disk(config_, splits, models)
        assert len(problems) == 1 and "free but this job needs about" in problems[0]
    finally:
        shutil.move(moved, chunks)


# -- 4: the checkpoint's identity is its content ----------------------------------------------------------------------
def test_touch_copy_and_dot_path_keep_chunks_content_change_makes_a_new_partition(checkpoints, tmp_path, monkeypatch):
    from tests.tiny_checkpoints import build_esm2

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(checkpoints["esm2"], checkpoint, copy_function=shutil.copy)  # cp -r: new mtimes
    config = _setup(tmp_path, checkpoint)
    _run(config)
    assert (tmp_path / "cache" / "protein-embeddings" / "file-hashes.json").is_file()

    os.utime(checkpoint / "config.json")  # touch
    shutil.rmtree(checkpoint)
    shutil.copytree(checkpoints["esm2"], checkpoint, copy_function=shutil.copy)  # copied again without -p
    config = _setup(tmp_path, f"{tmp_path}/./ckpt")
    os.utime(checkpoint / "config.json", (1, 1))
    result = _run(config)
    assert _counts(tmp_path) == (UNIQUE, UNIQUE), result.stderr  # every chunk reused
    assert "note:" not in result.stderr
    first = partition_dir(tmp_path / "out")
    kept = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    shutil.rmtree(checkpoint)
    build_esm2(checkpoint, seed=99)  # other weights, same family and shape
    result = _run(config)
    assert _counts(tmp_path) == (UNIQUE, 0)  # the new content is another checkpoint: its own partition
    partitions = sorted(p for p in (tmp_path / "out" / ".chunks").iterdir() if p.is_dir())
    assert len(partitions) == 2 and {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == kept


def test_identity_is_cached_and_reads_the_hub_snapshot_commit(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(checkpoints["esm2"], checkpoint)
    hashed = []
    real = resolve._file_sha256
    monkeypatch.setattr(resolve, "_file_sha256", lambda path: hashed.append(path.name) or real(path))
    first = resolve.content_identity(checkpoint)
    assert "model.safetensors" in hashed
    hashed.clear()
    assert resolve.content_identity(Path(f"{tmp_path}/./ckpt")) == first and hashed == []  # cached: no re-hash
    os.utime(checkpoint / "config.json")
    assert resolve.content_identity(checkpoint) == first and hashed == ["config.json"]
    (checkpoint / "README.md").write_text("notes")
    assert resolve.content_identity(checkpoint) == first

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123456789abcdef"
    shutil.copytree(checkpoints["esm2"], snapshot)
    assert resolve.content_identity(snapshot) == "hub:0123456789abcdef"


# -- 3: two outputs on one file name, through both commands -----------------------------------------------------------
def test_colliding_output_names_are_refused_by_the_job_and_the_preflight_check(checkpoints, tmp_path, capsys):
    write_fasta(tmp_path / "s.fasta", TRAIN[:3])
    write_fasta(tmp_path / "t.fasta", TRAIN[3:6])
    config = write_config(
        tmp_path,
        {
            "a": {"name": checkpoints["esm2"], "output_key": "embeddings_k"},
            "b": {"name": checkpoints["esm2"], "output_key": "k"},
        },
        train=None,
        test=None,
        extra_paths={"splits": {"s": "s.fasta", "s_embeddings": "t.fasta"}},
    )
    for main in (generate_embeddings_t5.main, validate_t5_embeddings.main):
        assert main(["--config", str(config)]) == 2
        stderr = capsys.readouterr().err
        assert "s_embeddings_embeddings_k.pt" in stderr and "'embeddings_k'" in stderr and "'k'" in stderr, stderr
        assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_store_reads_nothing_untrusted(tmp_path):
    """Unit level: a chunk written by the store passes; each kind of damage is reported, never raised; a partition
    holds only its own settings' chunks."""
    from utils.engine.encode import Embedded

    settings = {"checkpoint": "sha256:0", "family": "esm2", "precisions": ["fp32"], "layer": 6, "per_residue": False}
    store = ChunkStore(tmp_path, settings, dim=4)
    keys = ["a" * 40, "b" * 40]
    good = store.write(keys, [Embedded(torch.ones(4), None, None), Embedded(torch.zeros(4), None, None)], False)
    assert good.parent == store.directory and store.directory.name.startswith("esm2.fp32.layer6.")
    wanted = hex_to_digests(keys)
    assert ChunkStore(tmp_path, settings, dim=4).held(wanted).sum() == 2
    _resave(good, lambda c: c["pooled"].__setitem__((0, 0), float("nan")))
    fresh = ChunkStore(tmp_path, settings, dim=4)
    assert not fresh.held(wanted).any() and fresh.damaged.found == [(good, "non-finite values")]
    assert (store.directory / "quarantine" / good.name).is_file() and not good.exists()
    other = ChunkStore(tmp_path, {**settings, "precisions": ["bf16"]}, dim=4)
    other.write(["c" * 40], [Embedded(torch.ones(4), None, None)], False)
    assert other.directory != store.directory
    assert not ChunkStore(tmp_path, settings, dim=4).held(hex_to_digests(["c" * 40])).any()
    assert [d for d, _ in ChunkStore(tmp_path, settings).others()] == [other.directory]
