"""Reading the splits at proteome scale (utils/inputs/reading.py, utils/inputs/spill.py): what a whole run, a shard
and --merge keep of the input, and that each refuses bad input exactly as strictly, every problem listed at once."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_protein, run_cli, write_config, write_fasta
from utils.errors import UserError
from utils.inputs.reading import Keep, read_fasta_splits
from utils.inputs.spill import FileStrings, HeaderLines, Spill
from utils.running.shards import Shard

RNG = random.Random(26)
TRAIN = [(f"sp|P{i:05d}|N{i}_HUMAN desc {i}", random_protein(RNG, RNG.randint(1, 90))) for i in range(60)]
TRAIN += [("sp|P99999|COPY_HUMAN another", TRAIN[3][1].lower() + "*")]  # a duplicate sequence, in lower case
TEST = [(f"Q{i}", random_protein(RNG, RNG.randint(5, 40))) for i in range(20)] + [("Q-dup", TRAIN[7][1])]


def _files(tmp_path: Path, train=TRAIN, test=TEST) -> dict[str, Path]:
    return {
        "train": write_fasta(tmp_path / "train.fa", train, width=25),
        "test": write_fasta(tmp_path / "test.fa", test),
    }


def _digest(sequence: str) -> str:
    return hashlib.sha1(sequence.upper().rstrip("*").encode()).hexdigest()


def _view(splits) -> dict[str, list[tuple[str, str, str]]]:
    return {name: list(zip(r.ids, r.sequences, list(r.headers), strict=True)) for name, r in splits.items()}


def test_a_run_with_residues_and_headers_on_disk_reads_what_memory_reads(tmp_path):
    in_memory, note = read_fasta_splits(_files(tmp_path), "uniprot")
    spill = Spill(tmp_path / "out")
    try:
        on_disk, _ = read_fasta_splits(_files(tmp_path), "uniprot", Keep(spill=spill))
        assert isinstance(on_disk["train"].headers, HeaderLines)
        assert isinstance(on_disk["train"].sequences.unique.sequences, FileStrings)
        assert _view(on_disk) == _view(in_memory)
        headers = on_disk["train"].headers
        assert headers[10:12] == [f"sp|P{i:05d}|N{i}_HUMAN desc {i}" for i in (10, 11)]
        assert headers[3] == "sp|P00003|N3_HUMAN desc 3"  # back to an earlier line: read again from its start
        assert on_disk["train"].ids[60] == "P99999"
        assert len(on_disk["train"].sequences.unique) == len(TRAIN) + len(TEST) - 2  # two duplicate sequences
    finally:
        spill.close()
    assert not list((tmp_path / "out").iterdir())  # the scratch files go with the run
    assert note is None


def test_a_shard_keeps_its_own_proteins_and_the_merge_no_residues(tmp_path):
    everything, _ = read_fasta_splits(_files(tmp_path), "first_word")
    seen = []
    for index in range(3):
        shard = Shard(index, 3)
        mine, _ = read_fasta_splits(_files(tmp_path), "first_word", Keep(belongs=shard.holds))
        for name, records in mine.items():
            assert all(shard.holds(_digest(sequence)) for sequence in records.sequences)
            seen += [(name, rec_id) for rec_id in records.ids]
    assert sorted(seen) == sorted((name, rec_id) for name, r in everything.items() for rec_id in r.ids)
    merge, _ = read_fasta_splits(_files(tmp_path), "first_word", Keep(residues=False))
    unique = merge["train"].sequences.unique
    assert np.array_equal(unique.digests, everything["train"].sequences.unique.digests)
    assert np.array_equal(unique.lengths(), everything["train"].sequences.unique.lengths())
    with pytest.raises(RuntimeError, match="released"):
        unique.sequences[0]  # noqa: B018 (no residues kept: only lengths)


BAD_TRAIN = [("a", "MKV"), ("b", "MK1V"), ("a", "MKT"), ("c", ""), ("sp|X1|A", "MKA"), ("tr|X1|B", "MKC")]


@pytest.mark.parametrize("shard", [None, Shard(0, 2), Shard(1, 2)], ids=["whole", "shard0", "shard1"])
def test_every_problem_is_listed_by_a_whole_run_and_by_every_shard(tmp_path, shard):
    files = _files(tmp_path, train=BAD_TRAIN, test=[("t", "MKV"), ("t", "MKW")])
    keep = Keep(belongs=shard.holds if shard else None, spill=Spill(tmp_path / "out"))
    with pytest.raises(UserError) as refused:
        read_fasta_splits(files, "uniprot", keep)
    keep.spill.close()
    problems = refused.value.problems
    assert len(problems) == 5, problems
    assert any("protein 'b' has character '1' at residue 3" in p for p in problems)
    assert any("protein 'c' has an empty sequence" in p for p in problems)
    assert any("protein id 'a' appears twice (lines 1 and 5)" in p for p in problems)
    assert any("headers 'sp|X1|A' and 'tr|X1|B' both give protein id 'X1'" in p for p in problems)
    assert any("test.fa:3: protein id 't' appears twice (lines 1 and 3)" in p for p in problems)


def test_a_shard_refuses_bad_input_before_any_work(checkpoints, tmp_path):
    write_fasta(tmp_path / "train.fasta", BAD_TRAIN)
    write_fasta(tmp_path / "test.fasta", [("t", "MKV")])
    config = write_config(tmp_path, {"esm": {"name": checkpoints["esm2"]}}, extra_paths={"id_format": "uniprot"})
    result = run_cli("generate_embeddings_t5.py", "--config", str(config), "--shard", "1/4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 4, result.stderr
    assert not (tmp_path / "out").exists()  # nothing written: no lock, no scratch file, no chunk


def test_a_shard_removes_the_scratch_files_of_a_killed_shard_of_this_machine_only(tmp_path):
    from utils.files import HOST, OutputLock

    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".sequences.tmp-999999-{HOST}"  # a shard of this machine killed with -9
    alive = out / f".headers.tmp-{os.getpid()}-{HOST}"
    elsewhere = out / ".sequences.tmp-999998-0badc0de"  # another node's shard: it may run for days, reading it
    for path in (dead, alive, elsewhere):
        path.write_bytes(b"MKV")
    os.utime(elsewhere, (time.time() - 3 * 24 * 3600,) * 2)
    with OutputLock(out, shared=True):
        assert not dead.exists() and alive.exists() and elsewhere.exists()
    with OutputLock(out):  # alone (a whole run, the merge): every leftover goes
        assert not alive.exists() and not elsewhere.exists()
