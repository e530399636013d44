"""Bad input end to end: every refusal exits 2 with one line per problem naming the culprit, no traceback, and no
file written; every accepted FASTA variant gives exactly the embeddings of the clean file.

The refusals run `main()` in-process (the same code path as the command, without a new interpreter each time);
a few run the real command to show what the user sees."""

from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import generate_embeddings_t5
from tests.conftest import load_output, random_protein, run_cli, write_config, write_fasta
from tests.test_fasta import fasta_texts
from utils.errors import UserError
from utils.inputs.fasta import read_fasta

RNG = random.Random(5)
TRAIN = [(f"sp|P{i:05d}|X_{i}/a:b", random_protein(RNG, RNG.randint(5, 90))) for i in range(10)]
TRAIN.append(("rare", "MUZOBX" + random_protein(RNG, 20)))
TEST = [(f"T{i}", random_protein(RNG, 40)) for i in range(3)]


def _setup(directory: Path, checkpoint: Path, **models: dict) -> Path:
    write_fasta(directory / "train.fasta", TRAIN)
    write_fasta(directory / "test.fasta", TEST)
    return write_config(directory, models or {"prot_t5_xl": {"name": checkpoint}})


def _edit_config(path: Path, edit) -> None:
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_refused(code: int, stderr: str, culprits: list[str]) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), stderr
    for culprit in culprits:
        assert culprit in stderr, (culprit, stderr)


# -- every refused case, in-process ----------------------------------------------------------------------------------
def _fasta(name: str, data: bytes):
    return lambda directory, monkeypatch: (directory / name).write_bytes(data)


def _config(edit):
    return lambda directory, monkeypatch: _edit_config(directory / "config_t5.yaml", edit)


def _model(**spec):
    return _config(lambda c: c["models"]["prot_t5_xl"].update(spec))


def _no_disk(directory, monkeypatch):
    usage = shutil.disk_usage(directory)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))


def _offline_hub_id(directory, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _edit_config(directory / "config_t5.yaml", lambda c: c["models"]["prot_t5_xl"].update(name="someorg/uncached-xyz"))


REFUSED = {
    "misspelt key": (_config(lambda c: c["run_params"].update(batchsize=4)), ["run_params.batchsize", "batch_size"]),
    "wrong type": (_config(lambda c: c["run_params"].update(batch_size="8")), ["run_params.batch_size", "'8'"]),
    "missing value": (_config(lambda c: c["paths"].pop("output_dir")), ["paths.output_dir: missing"]),
    "missing model name": (_config(lambda c: c["models"]["prot_t5_xl"].pop("name")), ["models.prot_t5_xl.name"]),
    "GPU that does not exist": (_model(device="cuda:7"), ["models.prot_t5_xl.device: cuda:7 does not exist"]),
    "missing checkpoint dir": (_model(name="/no/such/ckpt"), ["models.prot_t5_xl.name: /no/such/ckpt does not exist"]),
    "uncached hub id offline": (_offline_hub_id, ["models.prot_t5_xl.name: someorg/uncached-xyz", "offline"]),
    "bad character": (_fasta("train.fasta", b">p1\nMKV\n>p|2\nMKJV\n"), ["train.fasta:4", "'p|2'", "'J'", "residue 3"]),
    "empty sequence": (_fasta("train.fasta", b">p1\nMKV\n>p2\n>p3\nMK\n"), ["train.fasta:3", "'p2'", "empty"]),
    "duplicate id": (_fasta("test.fasta", b">p1\nMKV\n>p1\nMK\n"), ["test.fasta", "'p1'", "twice"]),
    "star inside": (_fasta("train.fasta", b">p1\nMK*V\n"), ["train.fasta", "'p1'", "'*'", "residue 3"]),
    "no records": (_fasta("train.fasta", b"\n\n"), ["train.fasta", "no FASTA records"]),
    "not FASTA": (_fasta("train.fasta", b"id,sequence\np1,MKV\n"), ["train.fasta:1", "does not look like FASTA"]),
    "binary junk": (_fasta("train.fasta", bytes(RNG.randrange(256) for _ in range(500))), ["train.fasta"]),
    "missing FASTA": (lambda d, m: (d / "test.fasta").unlink(), ["test.fasta: FASTA file not found"]),
    "output_dir is a file": (
        lambda d, m: (d / "out").write_text("not a directory"),
        ["paths.output_dir:", "is a file, not a directory"],
    ),
    "disk too small": (_no_disk, ["paths.output_dir:", "free but this job needs about"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_before_anything_is_written(case, checkpoints, tmp_path, monkeypatch, capsys):
    config = _setup(tmp_path, checkpoints["prot_t5"])
    make_bad, culprits = REFUSED[case]
    make_bad(tmp_path, monkeypatch)
    before = _files(tmp_path)
    code = generate_embeddings_t5.main(["--config", str(config)])
    _assert_refused(code, capsys.readouterr().err, culprits)
    assert _files(tmp_path) == before  # nothing created, changed or removed: no out/, no logs/
    assert not (tmp_path / "logs").exists()


def test_many_problems_are_listed_then_counted(checkpoints, tmp_path, capsys):
    config = _setup(tmp_path, checkpoints["prot_t5"])
    write_fasta(tmp_path / "train.fasta", [(f"p{i}", f"MK{i % 10}V") for i in range(60)])
    code = generate_embeddings_t5.main(["--config", str(config)])
    stderr = capsys.readouterr().err
    _assert_refused(code, stderr, ["'p0'", "'0'", "... and 40 more problem(s)"])
    assert len(stderr.splitlines()) == 21 and not (tmp_path / "out").exists()


# -- what the user sees: the real command ----------------------------------------------------------------------------
def test_command_lists_every_problem_at_once_without_traceback(checkpoints, tmp_path):
    config = _setup(
        tmp_path,
        checkpoints["prot_t5"],
        prot_t5_xl={"name": checkpoints["prot_t5"], "device": "cuda:7"},
        esm={"name": "someorg/not-in-cache", "device": "cpu"},
    )
    (tmp_path / "train.fasta").write_text(">ok\nMKV\n>bad/id:1\nMKV@L\n")
    (tmp_path / "test.fasta").write_bytes(gzip.compress(b">t1\nMK\n>t1\nMK\n"))
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    _assert_refused(
        result.returncode,
        result.stderr,
        [
            # run_cli's machine may have GPUs, just not eight of them
            "error: models.prot_t5_xl.device: cuda:7 does not exist, this machine has ",
            "error: models.esm.name: someorg/not-in-cache is not a local directory and not in the local Hugging Face "
            "cache, and this machine is offline",
            "protein 'bad/id:1' has character '@' at residue 4",
            "protein id 't1' appears twice",
        ],
    )
    assert len(result.stderr.strip().splitlines()) == 4, result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()


BAD_FASTA = st.one_of(
    fasta_texts().filter(lambda case: case[1] is None).map(lambda case: case[0].encode()),
    st.binary(min_size=1, max_size=400),
)


@settings(max_examples=2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=BAD_FASTA, compress=st.booleans())
def test_command_refuses_generated_bad_fasta(checkpoints, tmp_path_factory, data, compress):
    directory = tmp_path_factory.mktemp("generated")
    config = _setup(directory, checkpoints["prot_t5"])
    (directory / "train.fasta").write_bytes(gzip.compress(data) if compress else data)
    try:  # random bytes are occasionally a valid FASTA: then there is nothing to refuse
        read_fasta(directory / "train.fasta")
    except UserError:
        pass
    else:
        return
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    _assert_refused(result.returncode, result.stderr, [str(directory / "train.fasta")])
    assert not (directory / "out").exists()


# -- accepted variants: exactly the clean file's embeddings ----------------------------------------------------------
def _text(records, *, lower=False, width=None, star=False, describe=False, blank=False, end="\n") -> str:
    lines = []
    for rec_id, sequence in records:
        lines.append(f">{rec_id}" + (" desc with spaces | / : * > é" if describe else ""))
        body = (sequence.lower() if lower else sequence) + ("*" if star else "")
        width = width or len(body)
        lines += [body[k : k + width] for k in range(0, len(body), width)]
        if blank:
            lines.append("")
    return end.join(lines) + end


VARIANTS = {
    "clean": ("clean.fasta", _text(TRAIN).encode()),
    "lower": ("lower.fasta", _text(TRAIN, lower=True).encode()),
    "wrapped": ("wrapped.fasta", _text(TRAIN, width=7).encode()),
    "crlf": ("crlf.fasta", _text(TRAIN, end="\r\n").encode()),
    "gzip": ("clean.fasta.gz", gzip.compress(_text(TRAIN).encode(), mtime=0)),
    "star": ("star.fasta", _text(TRAIN, star=True).encode()),
    "headers": ("headers.fasta", _text(TRAIN, describe=True).encode()),
    "all": (
        "all.fa.gz",
        gzip.compress(
            "\ufeff\n".encode()
            + _text(TRAIN, lower=True, width=11, star=True, describe=True, blank=True, end="\r\n").encode(),
            mtime=0,  # parameters must be the same in every pytest-xdist process: no time stamp in them
        ),
    ),
}


@pytest.fixture(scope="module")
def variants_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("variants")
    for file_name, data in VARIANTS.values():
        (directory / file_name).write_bytes(data)
    config = write_config(
        directory,
        {"prot_t5_xl": {"name": checkpoints["prot_t5"]}},
        train=None,
        test=None,
        run_params={"batch_size": 4},
        extra_paths={"splits": {split: file_name for split, (file_name, _) in VARIANTS.items()}},
    )
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return directory


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "clean"])
def test_accepted_variant_gives_exactly_the_clean_embeddings(variants_run, variant):
    clean = load_output(variants_run / "out" / "clean_embeddings_prot_t5_xl.pt")
    other = load_output(variants_run / "out" / f"{variant}_embeddings_prot_t5_xl.pt")
    assert clean["ids"] == [rec_id for rec_id, _ in TRAIN]
    assert other["ids"] == clean["ids"]  # ids verbatim: '/', '|', ':' kept, descriptions dropped
    assert torch.equal(other["embeddings"], clean["embeddings"])
