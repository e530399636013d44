"""Faults of the chunk store under array shards, --merge, shared log directories and the CLI: a shard of other
settings must neither block nor disturb the others; --merge must say why proteins are missing (a damaged chunk, the
same sequences under other settings) and read the partition the shards' machines chose; two runs sharing a log_dir
must keep their reports apart; the lock comes before reading the input; odd --shard values, --dry-run with --shard,
Ray not demanded where it is not used, UniProt-like headers counted. The SLURM script for a GPU config, merged on a
node without a GPU, is in test_cluster_cli.py; the store shared by runs and configs in test_store.py."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import generate_embeddings_t5
from tests.conftest import REPO, chunk_files, cli_env, random_protein, write_config, write_fasta
from tests.test_faults import FAULT_HOOK
from utils.checks import preflight, resolve
from utils.errors import UserError
from utils.files import OutputLock
from utils.inputs.config import load_config
from utils.running import local, merge, plan
from utils.running.shards import Shard

KEY = "esm"
RNG = random.Random(19)
TRAIN = [(f"p{i}", random_protein(RNG, RNG.randint(10, 50))) for i in range(10)]
TEST = [("t0", random_protein(RNG, 30))]
RUN_PARAMS = {"batch_size": 2, "save_every_n_batches": 1}  # one chunk per batch: several chunks per shard


def _config(directory: Path, checkpoint: Path, run_params: dict | None = None, **model) -> Path:
    write_fasta(directory / "train.fasta", TRAIN)
    write_fasta(directory / "test.fasta", TEST)
    return write_config(directory, {KEY: {"name": checkpoint, **model}}, run_params=RUN_PARAMS | (run_params or {}))


UNIQUE = {s for _, s in TRAIN + TEST}


def _merge_problems(config: Path) -> list[str]:
    loaded = load_config(config)
    splits, models = plan.prepare_inputs(loaded, devices=False)
    with pytest.raises(UserError) as refused:
        merge.merge_job(loaded, splits, models)
    return refused.value.problems


# -- 1: shards of other settings fill their own partitions and block nothing -----------------------------------------
def test_a_shard_of_other_settings_fills_its_own_partition_and_moves_nothing(checkpoints, tmp_path, capsys):
    fp32 = _config(tmp_path, checkpoints["esm2"])
    assert local.run_job(*plan.prepare(fp32), Shard(0, 2)) == 0
    shard0 = {p: p.stat().st_mtime_ns for p in chunk_files(tmp_path / "out")}
    assert shard0

    (tmp_path / "other").mkdir()
    bf16 = _config(tmp_path / "other", checkpoints["esm2"], run_params={"precision": "bf16"})
    loaded, splits, models = plan.prepare(bf16)
    loaded = dataclasses.replace(loaded, output_dir=tmp_path / "out")  # the same store, other settings
    assert local.run_job(loaded, splits, models, Shard(1, 2)) == 0  # not refused: a partition of its own
    assert {p: p.stat().st_mtime_ns for p in shard0} == shard0  # nothing of the fp32 partition moved or rewritten
    assert len({p.parent for p in chunk_files(tmp_path / "out")}) == 2

    # The fp32 merge names what is missing and where the same sequences are, under which settings
    problems = _merge_problems(fp32)
    assert any("of them are in the store under other settings (precisions: ['bf16'] → ['fp32']" in p for p in problems)
    assert "protein(s) have no embedding yet" in problems[-1]
    assert local.run_job(*plan.prepare(fp32), Shard(1, 2)) == 0
    assert merge.merge_job(*plan.prepare(fp32)) == 0
    assert (tmp_path / "out" / f"train_embeddings_{KEY}.pt").exists()


# -- 4: --merge needs no device and says why proteins are missing -----------------------------------------------------
@pytest.fixture(scope="module")
def whole_run(checkpoints, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("whole")
    assert local.run_job(*plan.prepare(_config(directory, checkpoints["esm2"]))) == 0
    return directory


def _copy(whole_run: Path, tmp_path: Path, checkpoint: Path, **model) -> Path:
    shutil.copytree(whole_run / "out" / ".chunks", tmp_path / "out" / ".chunks")
    return _config(tmp_path, checkpoint, **model)


def test_merge_names_a_damaged_chunk(whole_run, checkpoints, tmp_path):
    config = _copy(whole_run, tmp_path, checkpoints["esm2"])
    damaged = chunk_files(tmp_path / "out")[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    first, missing = _merge_problems(config)
    assert first.startswith(f"model {KEY}: chunk {damaged} is damaged or unreadable (") and "rerun the shard" in first
    assert "moved to quarantine/" in first and (damaged.parent / "quarantine" / damaged.name).is_file()
    assert "protein(s) have no embedding yet" in missing


def test_merge_names_the_settings_that_differ(whole_run, checkpoints, tmp_path):
    config = _copy(whole_run, tmp_path, checkpoints["esm2"], precision="bf16")
    other, missing = _merge_problems(config)
    assert f"{len(UNIQUE)} of them are in the store under other settings (precisions: ['fp32'] → ['bf16']" in other
    assert "protein(s) have no embedding yet" in missing


def test_a_renamed_output_key_shares_the_store(whole_run, checkpoints, tmp_path):
    """The output key names the output files, not the store: renamed, the merge finds every vector as it was."""
    config = _copy(whole_run, tmp_path, checkpoints["esm2"], output_key="esm_v2")
    assert merge.merge_job(*plan.prepare(config)) == 0
    renamed = torch.load(tmp_path / "out" / "train_embeddings_esm_v2.pt", weights_only=True)
    first = torch.load(whole_run / "out" / f"train_embeddings_{KEY}.pt", weights_only=True)
    assert renamed["ids"] == first["ids"] and torch.equal(renamed["embeddings"], first["embeddings"])


def test_merge_says_when_no_shard_has_run(checkpoints, tmp_path):
    (missing,) = _merge_problems(_config(tmp_path, checkpoints["esm2"]))
    assert "protein(s) have no embedding yet" in missing and "run the shards that have not finished" in missing


def test_merge_reads_the_partition_the_shards_machines_chose(whole_run, checkpoints, tmp_path):
    """`device: auto` with `precision: auto` is fp32 on the shards' CPU nodes and would be fp16 on a GPU merge node:
    the merge reads the partition that holds the job (here, on a CPU merge node, also when the config says GPU)."""
    config = _copy(whole_run, tmp_path, checkpoints["esm2"], device="auto")
    loaded, splits, models = plan.prepare(config)
    (model,) = loaded.models
    assert preflight.machine_decides_precision(model)
    gpu = dataclasses.replace(model, devices=("cuda:0",))  # as a GPU merge node resolves `auto`
    loaded = dataclasses.replace(loaded, models=(gpu,))
    models = [dataclasses.replace(models[0], config=gpu)]
    assert merge.merge_job(loaded, splits, models) == 0
    merged = torch.load(tmp_path / "out" / f"train_embeddings_{KEY}.pt", weights_only=True)
    assert merged["meta"]["precision"] == ["fp32"]


def test_max_residues_auto_is_resolved_the_same_on_every_machine(checkpoints, tmp_path):
    """Shards or a resume on nodes with different memory must not mix whole and windowed proteins. auto resolves to
    the model's own positional limit or to none, stored in the partition's settings as that value."""
    write_fasta(tmp_path / "train.fasta", TRAIN)
    models = {"esm1b": {"name": checkpoints["esm1b"]}, "esm2": {"name": checkpoints["esm2"]}}
    config = load_config(write_config(tmp_path, models, test=None))
    resolved = {m.key: resolve.resolve_model(m) for m in config.models}
    settings = {key: preflight.chunk_settings(config, model, "cpu") for key, model in resolved.items()}
    assert settings["esm1b"]["max_residues"] == resolved["esm1b"].arch.max_residues
    assert settings["esm2"]["max_residues"] is None
    from utils.engine.limits import device_limits

    for memory in (8 << 30, 512 << 30):  # a laptop and a large node: the same fingerprint, every protein whole
        limits = device_limits(resolved["esm2"].arch, "cpu", "fp32", memory_bytes=memory)
        assert limits.max_residues is None and limits.fits(35_000)


# -- 5: runs sharing a log_dir; the lock before the input -------------------------------------------------------------
def test_two_runs_sharing_a_log_dir_keep_their_own_reports(checkpoints, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT_HOOK)
    env = cli_env() | {"PYTHONPATH": str(hook), "TEST_EMBED_SLOW_S": "0.3"}  # the two runs overlap
    processes = []
    for name, proteins in (("a", TRAIN), ("b", TRAIN[:4])):
        directory = tmp_path / name
        directory.mkdir()
        write_fasta(directory / "train.fasta", proteins)
        config = write_config(
            directory, {KEY: {"name": checkpoints["esm2"]}}, test=None,
            run_params=RUN_PARAMS | {"report": True}, extra_paths={"log_dir": str(tmp_path / "logs")},
        )  # fmt: skip
        processes.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    for name, proteins in (("a", TRAIN), ("b", TRAIN[:4])):
        summary = json.loads((tmp_path / name / "out" / "run_summary.json").read_text())
        (worker,) = summary["workers"]
        assert (summary["status"], worker["status"], worker["computed"]) == ("done", "done", len(proteins)), name
    assert not list((tmp_path / "logs").glob("*.progress.jsonl"))  # read into the reports, then removed


def test_the_output_lock_comes_before_reading_the_input(tmp_path, capsys):
    """A second run on a busy output directory fails at once: before the FASTA (here missing) is even looked at."""
    config = write_config(tmp_path, {KEY: {"name": "nowhere"}}, train="absent.fasta", test=None)
    with OutputLock(tmp_path / "out"):
        code = generate_embeddings_t5.main(["--config", str(config)])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "another run (pid" in line and "is writing to this output directory" in line


# -- 10: the command line ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shard", "message"),
    [("0/0", "N, the number of shards, must be at least 1"), ("-1/2", "the shard index must be 0 to 1 for 2")],
)
def test_odd_shard_values_get_one_clear_line(tmp_path, capsys, shard, message):
    code = generate_embeddings_t5.main(["--config", str(tmp_path / "none.yaml"), "--shard", shard])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith(f"error: --shard {shard}: ") and message in line


def test_dry_run_plans_the_shard_it_is_given(checkpoints, tmp_path, capsys):
    config = _config(tmp_path, checkpoints["esm2"])
    assert generate_embeddings_t5.main(["--config", str(config), "--dry-run", "--shard", "1/2"]) == 0
    plan = capsys.readouterr().out
    shard = [line for line in plan.splitlines() if line.startswith("shard 1/2: ")]
    assert len(shard) == 1 and f"of the {len({s for _, s in TRAIN + TEST})} unique sequences" in shard[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        generate_embeddings_t5.main(["--config", str(config), "--dry-run", "--merge"])
    assert "drop --merge" in capsys.readouterr().err


def test_merge_and_dry_run_do_not_need_ray(checkpoints, tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None  # Ray not installed\n")
    config = _config(tmp_path, checkpoints["esm2"], run_params={"engine": "ray"})
    env = cli_env() | {"PYTHONPATH": str(hook)}
    for flag, code, said in (("--dry-run", 0, "projected wall time"), ("--merge", 2, "have no embedding yet")):
        result = subprocess.run(
            [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config), flag],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == code and said in result.stdout + result.stderr, result.stderr
        assert "Ray" not in result.stderr and "Traceback" not in result.stderr
    monkeypatch.setitem(sys.modules, "ray", None)
    (line,) = preflight.check_engine(load_config(config))
    assert "engine: ray needs Ray installed" in line  # a run that would use it still says so, in one line


def test_uniprot_lookalike_headers_are_counted_in_one_note(tmp_path, capsys):
    records = [("sp|P1|A_HUMAN", "MKV"), ("sp|Q11111", "MKA"), ("SP|Q2|B", "MKC"), ("tr||X", "MKD"), ("P3", "MKE")]
    write_fasta(tmp_path / "train.fasta", records)
    config = load_config(write_config(tmp_path, {"m": {"name": "x"}}, test=None, extra_paths={"id_format": "uniprot"}))
    splits = plan.read_splits(config)
    assert list(splits["train"].ids) == ["P1", "sp|Q11111", "SP|Q2|B", "tr||X", "P3"]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("note: paths.id_format: uniprot: 3 header(s) start like a UniProt header but are not")
    assert "e.g. 'sp|Q11111'" in line
