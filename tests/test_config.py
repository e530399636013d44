"""Config and pre-flight checks in-process: every mistake is one line naming the key (or path, device, model) and
what to do, all mistakes are reported together, and nothing on disk is touched."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from utils.checks import preflight, resolve
from utils.errors import UserError
from utils.inputs.config import load_config
from utils.inputs.fasta import Record
from utils.inputs.keys import normalise_device


def _base(tmp_path: Path) -> dict:
    return {
        "paths": {
            "data_dir": str(tmp_path),
            "raw_train_sequences": "train.fasta",
            "raw_test_sequences": "test.fasta",
            "output_dir": str(tmp_path / "out"),
            "log_dir": str(tmp_path / "logs"),
        },
        "run_params": {"batch_size": 8, "save_every_n_batches": 2, "seed": 42, "precision": "auto"},
        "models": {"prot_t5_xl": {"name": "Rostlab/prot_t5_xl_half_uniref50-enc", "device": 0, "output_key": "t5"}},
    }


def _write(tmp_path: Path, config: dict | str) -> Path:
    path = tmp_path / "config_t5.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


def _problems(tmp_path: Path, config: dict | str) -> list[str]:
    with pytest.raises(UserError) as caught:
        load_config(_write(tmp_path, config))
    return caught.value.problems


def test_valid_config_is_typed(tmp_path):
    config = _base(tmp_path)
    config["paths"]["splits"] = {"valid": "/abs/valid.fa"}
    config["run_params"].update(max_tokens_per_batch="auto", max_residues=2000, window_overlap=100)
    config["models"]["esm"] = {"name": "./esm", "device": ["cuda:0", "1"], "precision": "bf16"}
    loaded = load_config(_write(tmp_path, config))
    assert loaded.splits == {
        "train": tmp_path / "train.fasta",
        "test": tmp_path / "test.fasta",
        "valid": Path("/abs/valid.fa"),
    }
    assert loaded.run.batch_size == 8 and loaded.run.max_tokens_per_batch is None and loaded.run.max_residues == 2000
    t5, esm = loaded.models
    assert (t5.devices, t5.output_key, t5.precision) == (("cuda:0",), "t5", "auto")
    assert (esm.devices, esm.output_key, esm.precision) == (("cuda:0", "cuda:1"), "esm", "bf16")
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("where", "key", "hint"),
    [
        ((), "run_param", "did you mean 'run_params'?"),
        (("paths",), "ouput_dir", "did you mean 'output_dir'?"),
        (("run_params",), "batchsize", "did you mean 'batch_size'?"),
        (("run_params",), "Save_Every_N_Batches", "did you mean 'save_every_n_batches'?"),
        (("run_params",), "presicion", "did you mean 'precision'?"),
        (("models", "prot_t5_xl"), "devices", "did you mean 'device'?"),
        (("models", "prot_t5_xl"), "colour", "known keys: name, device"),
    ],
)
def test_unknown_key_gets_did_you_mean(tmp_path, where, key, hint):
    config = _base(tmp_path)
    table = config
    for part in where:
        table = table[part]
    table[key] = 1
    problems = _problems(tmp_path, config)
    dotted = ".".join((*where, key))
    assert any(f": {dotted}: unknown key" in p and hint in p for p in problems), problems


@pytest.mark.parametrize(
    ("edit", "culprit", "says"),
    [
        (lambda c: c["run_params"].update(batch_size="32"), "run_params.batch_size", "integer ≥ 1, got '32'"),
        (lambda c: c["run_params"].update(batch_size=0), "run_params.batch_size", "integer ≥ 1, got 0"),
        (lambda c: c["run_params"].update(batch_size=True), "run_params.batch_size", "got True"),
        (lambda c: c["run_params"].update(batch_size=None), "run_params.batch_size", "got no value"),
        (lambda c: c["run_params"].update(save_every_n_batches=2.5), "run_params.save_every_n_batches", "2.5"),
        (lambda c: c["run_params"].update(seed=-1), "run_params.seed", "integer ≥ 0"),
        (lambda c: c["run_params"].update(precision="FP16"), "run_params.precision", "did you mean 'fp16'?"),
        (lambda c: c["run_params"].update(precision="half"), "run_params.precision", "one of auto, fp16, bf16, fp32"),
        (lambda c: c["run_params"].update(output_format="hdf5"), "run_params.output_format", "one of pt, h5, parquet"),
        (lambda c: c["run_params"].update(concatenate="yes"), "run_params.concatenate", "true or false"),
        (lambda c: c["run_params"].update(max_tokens_per_batch=8), "run_params.max_tokens_per_batch", "≥ 16"),
        (lambda c: c["run_params"].update(max_residues=100, window_overlap=60), "run_params.window_overlap", "half"),
        (lambda c: c["run_params"].update(per_residue=True), "run_params.per_residue", "output_format: h5"),
        (lambda c: c["paths"].pop("output_dir"), "paths.output_dir", "missing"),
        (lambda c: c["paths"].update(output_dir=3), "paths.output_dir", "must be a path"),
        (lambda c: c["paths"].update(splits={"bad name!": "x.fa"}), "paths.splits.bad name!", "letters, digits"),
        (lambda c: c["paths"].update(splits={"train": "x.fa"}), "paths.splits.train", "already named"),
        (lambda c: c["paths"].update(splits={"extra": ""}), "paths.splits.extra", "FASTA path"),
        (
            lambda c: [c["paths"].pop(k) for k in ("raw_train_sequences", "raw_test_sequences")],
            "paths",
            "no FASTA split",
        ),
        (lambda c: c.pop("paths"), "paths", "missing; add this section"),
        (lambda c: c.update(paths=["a"]), "paths", "must be a mapping"),
        (lambda c: c.pop("models"), "models", "missing; add this section"),
        (lambda c: c.update(models={}), "models", "missing"),
        (lambda c: c["models"].update(prot_t5_xl="Rostlab/x"), "models.prot_t5_xl", "must be a mapping"),
        (lambda c: c["models"]["prot_t5_xl"].pop("name"), "models.prot_t5_xl.name", "missing; give a hub id"),
        (lambda c: c["models"]["prot_t5_xl"].update(name=7), "models.prot_t5_xl.name", "must be text, got 7"),
        (lambda c: c["models"]["prot_t5_xl"].update(device="gpu"), "models.prot_t5_xl.device", "'cuda:N', 'cpu'"),
        (lambda c: c["models"]["prot_t5_xl"].update(device=-1), "models.prot_t5_xl.device", "got -1"),
        (lambda c: c["models"]["prot_t5_xl"].update(device=[]), "models.prot_t5_xl.device", "got []"),
        (lambda c: c["models"]["prot_t5_xl"].update(device=[0, "cuda:0"]), "models.prot_t5_xl.device", "twice"),
        (lambda c: c["models"]["prot_t5_xl"].update(output_key="a/b"), "models.prot_t5_xl.output_key", "file names"),
        (lambda c: c["models"]["prot_t5_xl"].update(output_key="concat"), "models.prot_t5_xl.output_key", "own"),
        (
            lambda c: c["models"].update(other={"name": "x/y", "output_key": "t5"}),
            "models.other.output_key",
            "'t5' is already used (by models.prot_t5_xl)",
        ),
        (lambda c: c["models"]["prot_t5_xl"].update(precision="f16"), "models.prot_t5_xl.precision", "fp16"),
        (
            lambda c: c["models"]["prot_t5_xl"].update(max_tokens_per_batch="lots"),
            "models.prot_t5_xl.max_tokens_per_batch",
            "or auto",
        ),
    ],
)
def test_wrong_or_missing_value_names_the_key(tmp_path, edit, culprit, says):
    config = copy.deepcopy(_base(tmp_path))
    edit(config)
    problems = _problems(tmp_path, config)
    assert any(f"config_t5.yaml: {culprit}: " in p and says in p for p in problems), problems


def test_all_problems_are_reported_together(tmp_path):
    config = _base(tmp_path)
    config["run_params"].update(batch_size=0, precision="fp8", batchsize=3)
    config["models"]["prot_t5_xl"].update(device="tpu")
    problems = _problems(tmp_path, config)
    assert len(problems) == 4, problems
    for key in ("batch_size:", "precision:", "batchsize:", "device:"):
        assert any(key in p for p in problems), (key, problems)


def test_empty_values_mean_auto_where_auto_exists(tmp_path):
    config = _base(tmp_path)
    config["run_params"].update(max_tokens_per_batch=None, max_residues="auto")
    loaded = load_config(_write(tmp_path, config))
    assert loaded.run.max_tokens_per_batch is None and loaded.run.max_residues is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("paths:\n  output_dir: out\n   log_dir: logs\n", "not valid YAML at line 3"),
        ("paths: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("", "must be a YAML mapping"),
        (
            "paths:\n  output_dir: a\nmodels:\n  m: {name: x/y}\nmodels:\n  n: {name: x/z}\n",
            "line 5: key 'models' is given twice (also on line 3)",
        ),
        ("models:\n  m:\n    name: x/y\n    name: x/z\n", "line 4: key 'name' is given twice"),
        ("models: {m: {name: x/y, name: x/z}}\n", "line 1: key 'name' is given twice (also on line 1)"),
    ],
)
def test_broken_yaml_names_the_line(tmp_path, text, says):
    problems = _problems(tmp_path, text)
    assert len(problems) == 1 and says in problems[0], problems


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = yaml.safe_dump(_base(tmp_path), sort_keys=False)
    assert "    device: 0\n" in text
    text = "x-defaults: &d {device: cpu}\n" + text.replace("    device: 0\n", "    <<: *d\n    device: 0\n")
    problems = _problems(tmp_path, text)  # the merge itself is fine; only the unknown top-level key is reported
    assert len(problems) == 1 and "x-defaults: unknown key" in problems[0], problems


def test_missing_or_directory_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found; pass --config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0, "cuda:0"), (3, "cuda:3"), ("2", "cuda:2"), ("cuda", "cuda:0"), (" CUDA:1 ", "cuda:1"), ("cpu", "cpu")]
    + [(bad, None) for bad in (True, -1, 1.0, "gpu", "cuda:-1", "cuda:x", None, "mps")],
)
def test_normalise_device(given, expected):
    assert normalise_device(given) == expected


# -- pre-flight: devices, paths, disk, models ----------------------------------------------------------------------
def test_missing_gpu_is_named(tmp_path, monkeypatch):
    config = _base(tmp_path)
    config["models"]["prot_t5_xl"]["device"] = "cuda:7"
    config["models"]["esm"] = {"name": "x/y", "device": ["cpu", 1]}
    loaded = load_config(_write(tmp_path, config))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    problems = preflight.check_devices(loaded)
    assert problems == [
        "models.prot_t5_xl.device: cuda:7 does not exist, this machine has no usable GPU; "
        "set device to an existing GPU or to cpu",
        "models.esm.device: cuda:1 does not exist, this machine has no usable GPU; "
        "set device to an existing GPU or to cpu",
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    problems = preflight.check_devices(loaded)
    assert len(problems) == 2 and "cuda:7 does not exist, this machine has 1 GPU(s) (cuda:0..cuda:0)" in problems[0]


def test_output_and_log_dir_must_be_directories(tmp_path):
    config = _base(tmp_path)
    (tmp_path / "a_file").write_text("x")
    config["paths"].update(output_dir=str(tmp_path / "a_file"), log_dir=str(tmp_path / "a_file" / "sub" / "logs"))
    problems = preflight.check_paths(load_config(_write(tmp_path, config)))
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"paths.output_dir: {tmp_path / 'a_file'} is a file, not a directory")
    assert problems[1].startswith("paths.log_dir: ") and f"because {tmp_path / 'a_file'} is a file" in problems[1]
    config["paths"].update(output_dir=str(tmp_path / "new" / "deeper"), log_dir=str(tmp_path))
    assert preflight.check_paths(load_config(_write(tmp_path, config))) == []
    assert not (tmp_path / "new").exists()


def _resolved(dim: int) -> resolve.ResolvedModel:
    from utils.engine.families import PROT_T5, Architecture
    from utils.inputs.keys import ModelConfig

    arch = Architecture(dim, 24, 32, 16384, 1_200_000_000, True, None)
    model = ModelConfig("prot_t5_xl", "x", ("cpu",), "prot_t5_xl", "auto", None)
    return resolve.ResolvedModel(model, "x", PROT_T5, arch, "sha256:0")


def test_disk_too_small_is_refused(tmp_path, monkeypatch):
    from utils.units import size_text

    config = load_config(_write(tmp_path, _base(tmp_path)))
    splits = {"train": [Record(f"p{i}", "M" * 300) for i in range(100_000)], "test": [Record("t", "MK")]}
    needed = preflight.estimate_output_bytes(config, splits, [_resolved(1024)])
    assert needed > 100_001 * 1024 * 2  # at least the float16 final file
    usage = shutil.disk_usage(tmp_path)
    seen = []

    def fake_usage(path):
        seen.append(Path(path))
        return usage._replace(free=needed - 1)

    monkeypatch.setattr(shutil, "disk_usage", fake_usage)
    problems = preflight.check_disk(config, splits, [_resolved(1024)])
    assert len(problems) == 1 and problems[0].startswith(f"paths.output_dir: {tmp_path / 'out'} has ")
    assert f"needs about {size_text(needed)} more" in problems[0] and "free some space" in problems[0]
    assert seen == [tmp_path.resolve()]  # the nearest existing directory of output_dir, which is not created
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=needed))
    assert preflight.check_disk(config, splits, [_resolved(1024)]) == []
    assert not (tmp_path / "out").exists()


def _model_config(tmp_path: Path, name: str):
    config = _base(tmp_path)
    config["models"]["prot_t5_xl"]["name"] = name
    return load_config(_write(tmp_path, config))


def test_uncached_hub_id_says_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, problems = resolve.resolve_models(_model_config(tmp_path, "no-such-org/no-such-model-7f3a"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("models.prot_t5_xl.name: no-such-org/no-such-model-7f3a is not a local directory")
    assert "offline (HF_HUB_OFFLINE is set)" in problems[0] and "local checkpoint directory" in problems[0]


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d / "does" / "not" / "exist", "does not exist"),
        (lambda d: d, "is not a model directory (no config.json)"),
        (lambda d: [(d / "config.json").write_text("{}"), d][1], "has no weights"),
    ],
)
def test_bad_local_checkpoint_is_named(tmp_path, make, says):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    name = str(make(directory))
    _, problems = resolve.resolve_models(_model_config(tmp_path, name))
    assert len(problems) == 1 and problems[0].startswith(f"models.prot_t5_xl.name: {name} ") and says in problems[0]


def test_unreadable_checkpoint_is_named(tmp_path, checkpoints):
    directory = tmp_path / "broken"
    shutil.copytree(checkpoints["prot_t5"], directory)
    (directory / "config.json").write_text('{"model_type": "t5", "d_model": ')
    _, problems = resolve.resolve_models(_model_config(tmp_path, str(directory)))
    assert len(problems) == 1 and "models.prot_t5_xl.name: " in problems[0] and "could not be read" in problems[0]


def test_good_checkpoint_resolves(tmp_path, checkpoints):
    resolved, problems = resolve.resolve_models(_model_config(tmp_path, str(checkpoints["prost_t5"])))
    assert problems == [] and resolved[0].family.name == "prost_t5" and resolved[0].dim == 32


def test_cpu_may_be_listed_twice_to_shard_on_one_machine(tmp_path):
    config = _base(tmp_path)
    config["models"]["prot_t5_xl"]["device"] = ["cpu", "cpu"]
    assert load_config(_write(tmp_path, config)).models[0].devices == ("cpu", "cpu")


def test_output_key_may_not_collide_with_per_residue_files(tmp_path):
    config = _base(tmp_path)
    config["models"]["prot_t5_xl"]["output_key"] = "t5.per_residue"
    assert any("models.prot_t5_xl.output_key" in p for p in _problems(tmp_path, config))
