"""The chunk store as a cache shared by every run (utils/running/store.py), through the real command: two configs
with other output directories and output keys share one store; settings go back and forth without moving a file;
two runs start at once on one new store; a store of the earlier layout is reused as it is; a refused run changes
nothing; --dry-run, the report and --prune-store show and trim the store; the Python API reads and fills it too."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import (
    REPO,
    chunk_files,
    cli_env,
    load_output,
    random_protein,
    run_cli,
    write_config,
    write_fasta,
)
from tests.test_faults import FAULT_HOOK

RNG = random.Random(25)
TRAIN = [(f"p{i}", random_protein(RNG, RNG.randint(8, 60))) for i in range(14)]
TEST = [("t0", random_protein(RNG, 40)), ("t1", TRAIN[3][1])]
UNIQUE = len({s for _, s in TRAIN + TEST})
RUN_PARAMS = {"batch_size": 2, "save_every_n_batches": 1}  # one chunk per batch: several chunks


def _config(directory: Path, checkpoint: Path, store: Path | None = None, key: str = "esm", **run_params) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_fasta(directory / "train.fasta", TRAIN)
    write_fasta(directory / "test.fasta", TEST)
    extra = {"store_dir": str(store)} if store is not None else None
    return write_config(directory, {key: {"name": checkpoint}}, run_params=RUN_PARAMS | run_params, extra_paths=extra)


def _run(config: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_cli("generate_embeddings_t5.py", "--config", str(config), *args)
    assert result.returncode == 0, result.stderr
    return result


def _counts(directory: Path, key: str = "esm") -> tuple[int, int]:
    """(unique sequences, already in the store) of the last worker start in the model's log."""
    log = (directory / "logs" / f"{key}.log").read_text()
    found = re.findall(r"(\d+) unique sequences, (\d+) already in chunks", log)
    return int(found[-1][0]), int(found[-1][1])


def _files(root: Path) -> dict[Path, tuple[int, int, int]]:
    """Every file of a store but its lock: path → (inode, size, mtime)."""
    return {
        p: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def _same_outputs(a: Path, b: Path, key_a: str = "esm", key_b: str = "esm") -> None:
    for split in ("train", "test"):
        first = load_output(a / f"{split}_embeddings_{key_a}.pt")
        second = load_output(b / f"{split}_embeddings_{key_b}.pt")
        assert first["ids"] == second["ids"] and torch.equal(first["embeddings"], second["embeddings"]), split


@pytest.fixture(scope="module")
def alone(checkpoints, tmp_path_factory) -> Path:
    """A run alone, in a store of its own: the vectors every other run must reproduce."""
    directory = tmp_path_factory.mktemp("alone")
    _run(_config(directory, checkpoints["esm2"]))
    return directory


def test_two_configs_with_other_outputs_share_one_store(alone, checkpoints, tmp_path):
    store = tmp_path / "store"
    _run(_config(tmp_path / "a", checkpoints["esm2"], store))
    assert _counts(tmp_path / "a") == (UNIQUE, 0)
    _run(_config(tmp_path / "b", checkpoints["esm2"], store, key="esm_v2"))
    assert _counts(tmp_path / "b", "esm_v2") == (UNIQUE, UNIQUE)  # computes nothing
    assert not (tmp_path / "a" / "out" / ".chunks").exists()  # the store is where paths.store_dir says
    _same_outputs(tmp_path / "a" / "out", tmp_path / "b" / "out", "esm", "esm_v2")
    _same_outputs(alone / "out", tmp_path / "b" / "out", "esm", "esm_v2")


def _set(config: Path, **run_params) -> Path:
    """The same config file with other run_params, as a user edits it between two runs."""
    settings = yaml.safe_load(config.read_text())
    settings["run_params"].update(run_params)
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return config


def test_going_back_to_earlier_settings_moves_nothing_and_computes_nothing(alone, checkpoints, tmp_path):
    """fp32 → bf16 → fp32 with one config file: each precision has its partition; nothing is moved or removed, and
    the way back computes nothing (earlier versions recomputed every sequence on the way back)."""
    config = _config(tmp_path, checkpoints["esm2"])
    _run(config)
    before = _files(tmp_path / "out" / ".chunks")
    _run(_set(config, precision="bf16"))
    assert _counts(tmp_path) == (UNIQUE, 0)
    after_bf16 = _files(tmp_path / "out" / ".chunks")
    assert {p: after_bf16.get(p) for p in before} == before  # every fp32 file where it was, as it was
    _run(_set(config, precision="fp32"))
    assert _counts(tmp_path) == (UNIQUE, UNIQUE)
    assert _files(tmp_path / "out" / ".chunks") == after_bf16  # nothing written, moved or removed
    _same_outputs(alone / "out", tmp_path / "out")


def test_two_runs_started_at_once_on_a_new_store(alone, checkpoints, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT_HOOK)
    store = tmp_path / "store"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "generate_embeddings_t5.py"),
                "--config",
                str(_config(tmp_path / name, checkpoints["esm2"], store)),
            ],
            cwd=REPO,
            env=cli_env() | {"PYTHONPATH": str(hook), "TEST_EMBED_SLOW_S": "0.2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("first", "second")
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr and "damaged" not in stderr
    for name in ("first", "second"):
        _same_outputs(alone / "out", tmp_path / name / "out")
    digests = [d for path in store.glob("*/*.chk") for d in torch.load(path, weights_only=True)["digests"]]
    assert len(set(digests)) == UNIQUE  # every sequence stored, some perhaps by both runs, none lost


def _to_earlier_layout(out: Path, key: str) -> None:
    """The store as the earlier versions wrote it: {output_dir}/.chunks/{output_key}/*.chk with a settings.json claim,
    and chunks of other settings in set_aside/ (the same chunk files: their format did not change)."""
    root = out / ".chunks"
    partitions = sorted(p for p in root.iterdir() if p.is_dir())
    legacy = root / key
    (legacy / "set_aside").mkdir(parents=True)
    claim = json.loads((partitions[0] / "partition.json").read_text())
    (legacy / "settings.json").write_text(json.dumps(claim))
    for path in partitions[0].glob("*.chk"):
        path.rename(legacy / path.name)
    for path in (p for partition in partitions[1:] for p in partition.glob("*.chk")):
        path.rename(legacy / "set_aside" / path.name)
    for partition in partitions:
        shutil.rmtree(partition)


def test_a_store_of_the_earlier_layout_is_reused_without_recomputing(alone, checkpoints, tmp_path):
    bf16 = _config(tmp_path / "bf16", checkpoints["esm2"], tmp_path / "out" / ".chunks", precision="bf16")
    _run(bf16)  # a bf16 partition, which the earlier layout kept in set_aside/
    shutil.copytree(alone / "out" / ".chunks", tmp_path / "out" / ".chunks", dirs_exist_ok=True)
    _to_earlier_layout(tmp_path / "out", "esm")
    fp32 = _config(tmp_path, checkpoints["esm2"])
    plan = _run(fp32, "--dry-run").stdout
    assert f"store: {UNIQUE} of its {UNIQUE} sequences already embedded with these settings" in plan
    result = _run(fp32)
    assert _counts(tmp_path) == (UNIQUE, UNIQUE)
    assert "chunk(s) of the earlier store layout moved into the partitions of" in result.stderr
    assert not (tmp_path / "out" / ".chunks" / "esm").exists()  # tidied: claim gone, chunks in their partitions
    assert len([p for p in (tmp_path / "out" / ".chunks").iterdir() if p.is_dir()]) == 2
    _run(bf16)
    assert _counts(tmp_path / "bf16") == (UNIQUE, UNIQUE)  # the set-aside bf16 chunks are found in their partition
    _same_outputs(alone / "out", tmp_path / "out")


def test_a_refused_run_changes_nothing_in_the_store(alone, checkpoints, tmp_path):
    """A bf16 config with engine: ray and no Ray cluster at RAY_ADDRESS is refused in one line, exit 2, and leaves
    the store (here in the earlier layout, which a run that works would tidy) exactly as it was."""
    pytest.importorskip("ray")
    shutil.copytree(alone / "out" / ".chunks", tmp_path / "out" / ".chunks")
    _to_earlier_layout(tmp_path / "out", "esm")
    before = {**_files(tmp_path / "out"), **{p: None for p in (tmp_path / "out").rglob("*") if p.is_dir()}}
    config = _config(tmp_path, checkpoints["esm2"], precision="bf16", engine="ray")
    result = subprocess.run(
        [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)],
        cwd=REPO, env=cli_env() | {"RAY_ADDRESS": "127.0.0.1:9"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "RAY_ADDRESS=127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr
    after = {**_files(tmp_path / "out"), **{p: None for p in (tmp_path / "out").rglob("*") if p.is_dir()}}
    assert {p: v for p, v in after.items() if p.name != ".lock"} == {p: v for p, v in before.items()}


def test_dry_run_report_and_prune_show_and_trim_the_store(alone, checkpoints, tmp_path):
    shutil.copytree(alone / "out" / ".chunks", tmp_path / "out" / ".chunks")
    bf16 = _config(tmp_path / "bf16", checkpoints["esm2"], tmp_path / "out" / ".chunks", precision="bf16")
    _run(bf16)
    config = _config(tmp_path, checkpoints["esm2"], report=True)
    plan = _run(config, "--dry-run").stdout
    assert f"store: {UNIQUE} of its {UNIQUE} sequences already embedded with these settings" in plan
    assert "store: " in plan and "2 partition(s)" in plan and "1 not used by this config" in plan
    _run(config)
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    used = {p["directory"].split(".")[1]: p["used_by_this_run"] for p in summary["store"]["partitions"]}
    assert used == {"fp32": True, "bf16": False}
    assert (summary["workers"][0]["reused"], summary["workers"][0]["computed"]) == (UNIQUE, 0)
    assert "Chunk store" in (tmp_path / "out" / "run_report.html").read_text()

    listing = _run(config, "--prune-store", "--dry-run").stdout
    assert "bf16" in next(line for line in listing.splitlines() if "would be removed" in line)
    assert len(list((tmp_path / "out" / ".chunks").glob("esm2.bf16.*"))) == 1  # a listing removes nothing
    from utils.files import StoreLock

    with StoreLock(tmp_path / "out" / ".chunks", shared=True):  # a run at work on the store
        refused = run_cli("generate_embeddings_t5.py", "--config", str(config), "--prune-store")
    assert refused.returncode == 2 and "runs are using this chunk store" in refused.stderr
    pruned = _run(config, "--prune-store")
    assert "removed" in pruned.stdout and "bf16" in pruned.stdout
    assert [p.name.split(".")[1] for p in (tmp_path / "out" / ".chunks").iterdir() if p.is_dir()] == ["fp32"]
    _run(config)
    assert _counts(tmp_path) == (UNIQUE, UNIQUE)


def test_a_shard_names_another_shards_damaged_chunk_without_promising_to_redo_it(checkpoints, tmp_path):
    config = _config(tmp_path, checkpoints["esm2"])
    _run(config, "--shard", "0/2")
    damaged = chunk_files(tmp_path / "out")[0]
    damaged.write_bytes(damaged.read_bytes()[:50])
    result = _run(config, "--shard", "1/2")
    (note,) = [line for line in result.stderr.splitlines() if "damaged or unreadable" in line]
    assert "computed again by the run or shard they belong to" in note and "its proteins are redone" not in note
    _run(config, "--shard", "0/2")  # the shard it belonged to redoes its part
    _run(config, "--merge")


def test_the_python_api_and_the_command_share_the_store(alone, checkpoints, tmp_path):
    from utils import Embedder

    shutil.copytree(alone / "out" / ".chunks", tmp_path / "store")
    sequences = [s for _, s in TRAIN[:5]] + [random_protein(RNG, 30)]
    with Embedder(str(checkpoints["esm2"]), store_dir=tmp_path / "store") as embedder:
        vectors = embedder.embed(sequences)
        assert embedder.reused == 5  # the command's; the sixth is new and goes into the store
    with Embedder(str(checkpoints["esm2"])) as plain:
        assert torch.equal(torch.from_numpy(vectors[5]), torch.from_numpy(plain.embed(sequences[5:])[0]))
    stored = load_output(alone / "out" / "train_embeddings_esm.pt")
    assert torch.equal(torch.from_numpy(vectors[:5]).half(), stored["embeddings"][:5])
    write_fasta(tmp_path / "new.fasta", [("new", sequences[5])])
    config = write_config(
        tmp_path, {"esm": {"name": checkpoints["esm2"]}}, train="new.fasta", test=None,
        extra_paths={"store_dir": str(tmp_path / "store")},
    )  # fmt: skip
    _run(config)
    assert _counts(tmp_path) == (1, 1)  # the notebook's vector, reused by the command
