"""The README's first command: examples/config_demo.yaml over the bundled example FASTA with real hub models and
`device: auto` (the first GPU if there is one, else the CPU). The hub is not reachable from the tests, so they check
what can be checked offline: the config, the files it names, and what `auto` resolves to."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, write_config, write_fasta
from utils.checks.resolve import HUB_ID
from utils.inputs.config import load_config
from utils.inputs.keys import normalise_device


def test_demo_config_names_bundled_files_and_hub_models(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "examples" / "config_demo.yaml")
    assert all(path.is_file() for path in config.splits.values()) and set(config.splits) == {"train", "test"}
    assert config.id_format == "uniprot"
    assert all(HUB_ID.match(model.name) and not (REPO / model.name).exists() for model in config.models)
    import torch

    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert all(model.devices == (expected,) for model in config.models)


@pytest.mark.parametrize(("gpu", "expected"), [(True, "cuda:0"), (False, "cpu")])
def test_auto_is_the_first_gpu_else_the_cpu(monkeypatch, gpu, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert normalise_device("auto") == normalise_device(" AUTO ") == expected


def test_auto_in_a_users_config(tmp_path, checkpoints):
    write_fasta(tmp_path / "train.fasta", [("a", "MKV")])
    write_fasta(tmp_path / "test.fasta", [("b", "MKV")])
    config = load_config(write_config(tmp_path, {"m": {"name": checkpoints["esm2"], "device": "auto"}}))
    assert config.models[0].devices in (("cpu",), ("cuda:0",))
