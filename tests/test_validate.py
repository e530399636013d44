"""validate_t5_embeddings.py through the real CLI on tiny checkpoints: passes on sound ones, names the model key on
NaN weights, a tokenizer that gives <unk>, and a job that would not fit the device; plus its pure helpers."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import random_protein, run_cli, write_config, write_fasta
from utils.checks.encoder_checks import project_peak
from utils.checks.validation import Check, checkpoint_kind, guarded, newly_initialised, stratified_sample
from utils.engine.families import PROT_T5

LONGEST = 300
CHECKS = {
    "load", "token layout", "embeddings", "pooling clean", "batch invariance", "memory", "throughput", "fp32 reference",
}  # fmt: skip


def _fasta(directory):
    rng = random.Random(5)
    train = [(f"P{i}", random_protein(rng, rng.randint(8, 120))) for i in range(14)]
    train.append(("LONGEST", random_protein(rng, LONGEST)))
    test = [(f"T{i}", random_protein(rng, rng.randint(8, 100))) for i in range(5)]
    write_fasta(directory / "train.fasta", train, width=60)
    write_fasta(directory / "test.fasta", test)


def _no_constants(name):
    raise AssertionError(f"the report is not strict JSON: {name}")


def _validate(directory, models, *extra, run_params=None):
    _fasta(directory)
    config = write_config(directory, models, run_params=run_params)
    result = run_cli("validate_t5_embeddings.py", "--config", str(config), "--num-proteins", "12", *extra)
    report_path = directory / "logs" / "validation_report.json"
    report = json.loads(report_path.read_text(), parse_constant=_no_constants) if report_path.exists() else None
    return result, report


def _lines(result, key):
    return [line for line in result.stdout.splitlines() if line[:1] in "✓✗" and line.split()[1] == key]


@pytest.fixture(scope="module")
def sound(checkpoints, tmp_path_factory):
    models = {"prot_t5_xl": {"name": checkpoints["prot_t5"]}, "structure": {"name": checkpoints["prost_t5"]}}
    return _validate(tmp_path_factory.mktemp("sound"), models)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    from tests.tiny_checkpoints import build_prot_t5

    root = tmp_path_factory.mktemp("broken_checkpoints")
    models = {
        "nan_model": {"name": build_prot_t5(root / "nan", nan_weights=True)},
        "bad_tok": {"name": build_prot_t5(root / "unk", broken_tokenizer=True)},
    }
    return _validate(tmp_path_factory.mktemp("broken"), models)


def test_sound_checkpoints_pass(sound):
    result, report = sound
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL VALIDATIONS PASSED" in result.stdout
    assert report["passed"] is True and report["failures"] == []
    assert report["sample"]["proteins"] == 12
    for key in ("prot_t5_xl", "structure"):
        checks = report["models"][key]["checks"]
        assert CHECKS <= set(checks), set(checks)
        assert all(c["passed"] for c in checks.values()), checks
        lines = _lines(result, key)
        assert len(lines) == len(checks) and all(line.startswith("✓") for line in lines)
        assert checks["memory"]["longest_residues"] == LONGEST  # the job's longest protein is in the sample
        assert checks["embeddings"]["shape"] == [12, 32]
        assert checks["fp32 reference"]["min_cosine"] >= 0.9999
    assert "differs from prot_t5_xl" in report["models"]["structure"]["checks"]
    assert report["models"]["structure"]["family"] == "ProstT5"  # detected from the checkpoint, not the key


def test_sound_output_states_figures_and_layout(sound):
    result, report = sound
    out = result.stdout
    assert "<AA2fold>=149" in out and "no prefix" in out
    assert "full encoder-decoder (T5ForConditionalGeneration" in out and "encoder-only (T5EncoderModel)" in out
    assert "tol cos ≥ 0.99999, max |Δ| ≤ 0.0001" in out  # the fp32 tolerance is stated
    assert "residues/s" in out and "≈" in out
    assert report["models"]["prot_t5_xl"]["checks"]["pooling clean"]["max_abs_vs_own"] < 1e-5


def test_nan_weights_and_unk_tokenizer_fail_naming_the_model(broken):
    result, report = broken
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "VALIDATION FAILED" in result.stdout
    failures = result.stdout.split("VALIDATION FAILED", 1)[1]
    assert "✗ nan_model: embeddings" in failures
    assert "✗ bad_tok: token layout" in failures and "<unk>" in failures
    nan_checks, unk_checks = report["models"]["nan_model"]["checks"], report["models"]["bad_tok"]["checks"]
    assert nan_checks["embeddings"]["non_finite_rows"] == 12
    assert not nan_checks["pooling clean"]["passed"] and not nan_checks["fp32 reference"]["passed"]
    assert nan_checks["fp32 reference"]["min_cosine"] == "nan"
    assert nan_checks["token layout"]["passed"]  # the tokenizer is sound: the failure points at the weights
    # The main job's prepare() let this checkpoint through, so the validation could refuse it.
    assert unk_checks["load"]["passed"] and not unk_checks["token layout"]["passed"]
    assert unk_checks["token layout"]["unknown_residues"] == "ACDEFGHIKLMNPQRSTVWYXBZUO"
    assert unk_checks["embeddings"]["figure"] == "crashed: TokenLayoutError"


def test_projected_memory_beyond_device_fails(checkpoints, tmp_path):
    result, report = _validate(
        tmp_path,
        {"prot_t5_xl": {"name": checkpoints["prot_t5"]}},
        "--assume-device-memory-gb", "0.002", "--num-proteins", "3",  # the last --num-proteins wins: a quick run
        run_params={"max_residues": 4000},  # set, not chosen from the (assumed) memory: the job would try it
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "✗ prot_t5_xl: memory" in result.stdout and "does not fit" in result.stdout
    checks = report["models"]["prot_t5_xl"]["checks"]
    assert checks["memory"]["capacity_bytes"] == 2_000_000
    assert checks["memory"]["projected_peak_bytes"] > 2_000_000
    assert [name for name, c in checks.items() if not c["passed"]] == ["memory"]


def test_esm_families_pass(checkpoints, tmp_path):
    result, report = _validate(tmp_path, {"esm2": {"name": checkpoints["esm2"]}, "esmc": {"name": checkpoints["esmc"]}})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL VALIDATIONS PASSED" in result.stdout
    assert report["models"]["esm2"]["family"] == "ESM2" and report["models"]["esmc"]["family"] == "ESM C"
    assert "<cls>=0" in report["models"]["esmc"]["checks"]["token layout"]["figure"]
    assert "Non-Commercial" in report["models"]["esmc"]["checks"]["load"]["note"]


def test_bad_config_is_a_user_error(checkpoints, tmp_path):
    _fasta(tmp_path)
    config = write_config(tmp_path, {"m": {"name": tmp_path / "no_such_model"}}, run_params={"batch_sise": 4})
    result = run_cli("validate_t5_embeddings.py", "--config", str(config))
    assert result.returncode == 2
    assert "did you mean 'batch_size'" in result.stderr
    assert all(line.startswith("error: ") for line in result.stderr.strip().splitlines())
    assert "Traceback" not in result.stderr


# -- pure helpers ---------------------------------------------------------------------------------------------------
def test_stratified_sample_is_deterministic_spread_and_keeps_the_longest():
    rng = random.Random(1)
    lengths = [rng.randint(10, 1000) for _ in range(500)]
    picked = stratified_sample(lengths, 20, seed=42)
    assert picked == stratified_sample(lengths, 20, seed=42) != stratified_sample(lengths, 20, seed=43)
    assert len(set(picked)) == 20 and picked == sorted(picked)
    assert lengths.index(max(lengths)) in picked
    ranks = sorted(range(500), key=lambda i: (lengths[i], i))
    deciles = {ranks.index(i) * 10 // 500 for i in picked}
    assert deciles == set(range(10))  # every length stratum is represented
    assert stratified_sample([5, 3, 9], 10, seed=0) == [0, 1, 2]


def test_projection_uses_windows_for_proteins_beyond_max_residues():
    from utils.engine.families import Architecture
    from utils.engine.limits import device_limits

    arch = Architecture(hidden=32, layers=2, heads=4, ffn=64, params=20_000, position_bias=True, max_residues=None)

    def limits(max_residues: int, budget: int = 8192):
        return device_limits(
            arch, "cpu", "fp32", batch_size=8, max_tokens_per_batch=budget, max_residues=max_residues,
            memory_bytes=2**40,
        )  # fmt: skip

    one_pass = project_peak(limits(4000), arch, "fp32", [100, 3000], PROT_T5, 256)
    windowed = project_peak(limits(1000), arch, "fp32", [100, 3000], PROT_T5, 256)
    assert not one_pass.windowed and one_pass.tokens == 3001 + 101  # packed together, no padding
    # the four windows of the 3,000-residue protein (overlap 250) are packed into one pass under the budget
    assert windowed.windowed and windowed.window == 1000 and windowed.tokens == 4 * 1001 and windowed.items == 4
    two_at_a_time = project_peak(limits(1000, budget=2048), arch, "fp32", [100, 3000], PROT_T5, 256)
    assert two_at_a_time.tokens == 2 * 1001 and two_at_a_time.peak_bytes < one_pass.peak_bytes


def test_load_report_missing_weights_and_checkpoint_kind():
    report = "T5EncoderModel LOAD REPORT from: x\nKey | Status |\n---+---\nencoder.block.1.wi.weight | MISSING |\n"
    assert newly_initialised([report]) == ["encoder.block.1.wi.weight"]
    assert newly_initialised(["lm_head.bias | UNEXPECTED |"]) == []

    class Config:
        architectures = ["T5ForConditionalGeneration"]

    assert checkpoint_kind(Config()).startswith("full encoder-decoder")
    Config.architectures = ["T5EncoderModel"]
    assert checkpoint_kind(Config()).startswith("encoder-only")


def test_guards_report_a_job_that_lets_unk_through(checkpoints, monkeypatch):
    import transformers

    from utils.checks import validation

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints["prot_t5"])
    assert validation.silent_unknown_guards(tokenizer, PROT_T5) == []

    class Lenient:  # a job whose token table forgot the <unk> check: it takes whatever the tokenizer gives
        def __init__(self, tokenizer, family):
            self.tokenizer, self.family = tokenizer, family

        def encode(self, sequences):
            return self.tokenizer([self.family.model_text(s) for s in sequences], padding=True, return_tensors="pt")

    monkeypatch.setattr(validation, "build_table", Lenient)
    problems = validation.silent_unknown_guards(tokenizer, PROT_T5)
    assert any("lower case" in p for p in problems) and any("no separator" in p for p in problems)


def test_a_crashing_check_is_a_failed_check():
    def explode() -> Check:
        raise ValueError("weights are NaN\nsecond line")

    check = guarded("embeddings", explode)
    assert not check.passed and check.figure == "crashed: ValueError" and check.detail == "weights are NaN"


def test_max_residues_below_every_sample_protein_still_validates(checkpoints, tmp_path):
    """max_residues: 16 (the config's least): every sampled protein goes through windows; the fp32 reference is then
    computed window by window, never skipped as "not applicable" with a pass (issue 19, case 8; issue 24, item 1)."""
    rng = random.Random(16)
    write_fasta(tmp_path / "train.fasta", [(f"P{i}", random_protein(rng, rng.randint(20, 60))) for i in range(4)])
    write_fasta(tmp_path / "test.fasta", [("T0", random_protein(rng, 40))])
    run_params = {"max_residues": 16, "window_overlap": 4}
    config = write_config(tmp_path, {"esm2": {"name": checkpoints["esm2"]}}, run_params=run_params)
    result = run_cli("validate_t5_embeddings.py", "--config", str(config), "--num-proteins", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line[:1] in "✓✗" and "fp32 reference" in line]
    assert line.startswith("✓") and "not applicable" not in line and "3 in windows" in line
    report = json.loads((tmp_path / "logs" / "validation_report.json").read_text())
    assert report["models"]["esm2"]["checks"]["fp32 reference"]["min_cosine"] >= 0.9999
    assert "ALL VALIDATIONS PASSED" in result.stdout


def test_a_sample_that_does_not_fit_the_memory_limit_fails(checkpoints, tmp_path):
    """SLURM's --mem of 150 MiB: the validator's own process peaks far above it on the sample, so the job's workers
    would be killed; the memory check fails naming the limit (it passed at 0.38 GB measured against 0.16 GB)."""
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    _fasta(tmp_path)
    config = write_config(tmp_path, {"esm2": {"name": checkpoints["esm2"]}})
    command = [sys.executable, str(REPO / "validate_t5_embeddings.py"), "--config", str(config), "--num-proteins", "4"]
    env = {**cli_env(), "SLURM_MEM_PER_NODE": "150"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "VALIDATION FAILED" in result.stdout and "✗ esm2: memory" in result.stdout
    assert "that SLURM's --mem allows: the job's workers would be killed" in result.stdout
    report = json.loads((tmp_path / "logs" / "validation_report.json").read_text())
    memory = report["models"]["esm2"]["checks"]["memory"]
    assert not memory["passed"] and memory["capacity_bytes"] == 150 << 20
    assert memory["capacity_source"] == "SLURM's --mem"
    assert report["models"]["esm2"]["checks"]["fp32 reference"]["passed"]  # whole proteins, the same vectors
    assert report["models"]["esm2"]["checks"]["embeddings"]["windowed"] == 0
