"""Hostile inputs around the config and the paths, in-process: each is refused in one line that says what the thing
really is (a pipe, a device, a symlink loop, a YAML date) and what to do, quickly, and before anything is written.

Run on today's code, each of these was "file not found", a misleading message, a hang or a traceback (issue 13,
cases 3, 8, 10 and 11)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from utils.checks import preflight, resolve
from utils.errors import UserError
from utils.inputs.config import load_config
from utils.inputs.fasta import read_fasta


def _base(tmp_path: Path) -> dict:
    return {
        "paths": {
            "data_dir": str(tmp_path),
            "raw_train_sequences": "train.fasta",
            "output_dir": str(tmp_path / "out"),
            "log_dir": str(tmp_path / "logs"),
        },
        "run_params": {"batch_size": 8},
        "models": {"prot_t5_xl": {"name": "Rostlab/prot_t5_xl_half_uniref50-enc", "device": "cpu"}},
    }


def _write(tmp_path: Path, config: dict | str) -> Path:
    path = tmp_path / "config_t5.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


def _refused(path: Path) -> str:
    with pytest.raises(UserError) as caught:
        load_config(path)
    return str(caught.value)


# -- 11: what a path really is -----------------------------------------------------------------------------------------
def test_fifo_config_is_called_a_pipe_without_blocking(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # reading it would block forever: no writer
    message = _refused(fifo)
    assert "is a pipe" in message and "not found" not in message, message


def test_process_substitution_config_is_called_a_pipe(tmp_path):
    read_end, write_end = os.pipe()
    try:
        message = _refused(Path(f"/dev/fd/{read_end}"))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert "is a pipe" in message and "<(...)" in message and "not found" not in message, message


def test_device_config_is_called_a_device():
    message = _refused(Path("/dev/zero"))
    assert "/dev/zero: is a device, not a file" in message, message


def test_symlink_loop_is_called_a_loop(tmp_path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    message = _refused(tmp_path / "a.yaml")
    assert "symbolic link that loops" in message and "not found" not in message, message


def test_fasta_fifo_and_device_are_named(tmp_path):
    os.mkfifo(tmp_path / "train.fasta")
    with pytest.raises(UserError, match="train.fasta: is a pipe"):
        read_fasta(tmp_path / "train.fasta")
    with pytest.raises(UserError, match="/dev/zero: is a device"):
        read_fasta(Path("/dev/zero"))


# -- 11: YAML typing ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "what"), [("2020-01-01", "a date"), ("yes", "true/false"), ("2024", "a number")])
def test_yaml_typed_split_names_are_told_to_quote(tmp_path, name, what):
    config = _base(tmp_path)
    config["paths"]["splits"] = {"PLACEHOLDER": "valid.fasta"}
    text = yaml.safe_dump(config, sort_keys=False).replace("PLACEHOLDER", name)
    message = _refused(_write(tmp_path, text))
    assert "paths.splits." in message and what in message and "put the name in quotes" in message, message
    assert "may use letters" not in message


def test_boolean_model_key_is_refused(tmp_path):
    config = _base(tmp_path)
    text = yaml.safe_dump(config, sort_keys=False).replace("  prot_t5_xl:", "  yes:")
    message = _refused(_write(tmp_path, text))
    assert "models.True" in message and "put the name in quotes" in message, message


def test_billion_laughs_alias_bomb_is_refused_quickly(tmp_path):
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        levels.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 9) + "]")
    config = _base(tmp_path)
    text = "\n".join(levels) + "\n" + yaml.safe_dump(config, sort_keys=False).replace("batch_size: 8", "batch_size: *i")
    path = _write(tmp_path, text)
    probe = (
        "from pathlib import Path; from utils.inputs.config import load_config; "
        "load_config(Path(__import__('sys').argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )  # a hang here fails the test by its timeout, not the whole suite
    assert result.returncode != 0 and "UserError" in result.stderr, result.stderr[-2000:]
    assert len(result.stderr) < 5000
    assert "run_params.batch_size" in result.stderr or "aliases" in result.stderr


# -- 10: values that only fail later ---------------------------------------------------------------------------------
def test_seed_beyond_torch_range_is_refused(tmp_path):
    config = _base(tmp_path)
    config["run_params"]["seed"] = 2**64
    message = _refused(_write(tmp_path, config))
    assert "run_params.seed" in message and "≤ 18446744073709551615" in message, message
    config["run_params"]["seed"] = 2**64 - 1
    assert load_config(_write(tmp_path, config)).run.seed == 2**64 - 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "x"])
def test_validate_refuses_non_finite_assumed_memory(value, capsys):
    import validate_t5_embeddings

    with pytest.raises(SystemExit) as caught:
        validate_t5_embeddings.parse_args(["--assume-device-memory-gb", value])
    assert caught.value.code == 2
    assert "--assume-device-memory-gb" in capsys.readouterr().err


# -- 3, 8, 10: paths the run will write ------------------------------------------------------------------------------
def test_output_dir_under_proc_cannot_be_created(tmp_path):
    config = _base(tmp_path)
    config["paths"]["output_dir"] = "/proc/x"
    problems = preflight.check_paths(load_config(_write(tmp_path, config)))
    assert problems and problems[0].startswith("paths.output_dir: /proc/x cannot be created"), problems
    assert not any("GB free" in problem for problem in problems)


def test_two_outputs_on_one_file_name_are_refused(tmp_path):
    config = _base(tmp_path)
    config["paths"]["splits"] = {"s": "s.fa", "s_embeddings": "t.fa"}
    config["models"] = {
        "a": {"name": "x/a", "output_key": "embeddings_k"},
        "b": {"name": "x/b", "output_key": "k"},
    }
    problems = preflight.check_paths(load_config(_write(tmp_path, config)))
    assert len(problems) == 1, problems
    assert "split 's' with output_key 'embeddings_k'" in problems[0]
    assert "split 's_embeddings' with output_key 'k'" in problems[0]
    assert "s_embeddings_embeddings_k.pt" in problems[0]


def test_concatenated_file_cannot_collide_with_a_model(tmp_path):
    config = _base(tmp_path)
    config["paths"]["splits"] = {"s": "s.fa", "s_embeddings_x": "t.fa"}
    config["run_params"]["concatenate"] = True
    config["models"] = {"a": {"name": "x/a", "output_key": "x_embeddings_concat"}, "b": {"name": "x/b"}}
    problems = preflight.check_paths(load_config(_write(tmp_path, config)))
    assert any("s_embeddings_x_embeddings_concat.pt" in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("obstacle", "culprit"),
    [
        (lambda out: (out / ".chunks").write_text("x"), ".chunks: is a file"),
        (lambda out: (out / ".lock").mkdir(), ".lock: is not a file"),
        (
            lambda out: (out / "train_embeddings_prot_t5_xl.pt").mkdir(),
            "train_embeddings_prot_t5_xl.pt: is a directory",
        ),
    ],
)
def test_filesystem_obstacles_are_found_before_the_run(tmp_path, obstacle, culprit):
    config = load_config(_write(tmp_path, _base(tmp_path)))
    (tmp_path / "out").mkdir()
    obstacle(tmp_path / "out")
    problems = preflight.check_paths(config)
    assert len(problems) == 1 and culprit in problems[0], problems


def test_h5_final_path_that_is_a_directory_is_found(tmp_path):
    config = _base(tmp_path)
    config["run_params"].update(output_format="h5", per_residue=True)
    (tmp_path / "out" / "train_embeddings_prot_t5_xl.per_residue.h5").mkdir(parents=True)
    problems = preflight.check_paths(load_config(_write(tmp_path, config)))
    assert len(problems) == 1 and "train_embeddings_prot_t5_xl.per_residue.h5: is a directory" in problems[0]


def test_truncated_safetensors_is_found_before_loading(checkpoints, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(checkpoints["esm2"], checkpoint)
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    config = _base(tmp_path)
    config["models"]["prot_t5_xl"]["name"] = str(checkpoint)
    loaded = load_config(_write(tmp_path, config))
    assert resolve.resolve_models(loaded)[1] == []
    weights.write_bytes(data[: len(data) - 1000])
    resolved, problems = resolve.resolve_models(loaded)
    assert resolved == [] and len(problems) == 1, problems
    assert "model.safetensors: is truncated" in problems[0] and "download it again" in problems[0]
