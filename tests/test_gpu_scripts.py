"""The GPU scripts' CPU dry runs, as CI runs them: tiny shapes through every step of benchmarks/gpu_first_call.sh (the
first command on a GPU machine), and through the steps of gpu_check.sh and gpu_job_check.sh that run something the
first call does not (batches of 128 and the fair-esm-style peer; all four models in one job): the other steps are
the same programs with the same options, which the first call's dry run already runs. Every step must pass, so a
moved name breaks CI instead of a GPU run; a step that fails or runs past its limit must make the script exit
non-zero and name the step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, cli_env

FIRST_CALL_STEPS = [
    "environment", "prot_t5_xl", "job_build", "job_validate", "job_main", "job_readback", "job_kill_resume",
    "job_summary", "esm2_3b", "long_35000", "profile", "esmc_600m", "host",
]  # fmt: skip


def run_script(script: str, tmp_path: Path, **settings: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    env = {**cli_env(), "DEVICE": "cpu", "OUT": str(out), "PYTHON": sys.executable, **settings}
    result = subprocess.run(
        ["bash", f"benchmarks/{script}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    return result, out


def explain(result: subprocess.CompletedProcess, out: Path) -> str:
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.glob("*.log")))
    return f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}{logs}"


def test_first_call_dry_run_passes_every_step_and_keeps_few_files(tmp_path):
    result, out = run_script("gpu_first_call.sh", tmp_path)
    assert result.returncode == 0, explain(result, out)
    document = json.loads((out / "results.json").read_text())
    assert list(document["steps"]) == FIRST_CALL_STEPS  # in the order the first call must answer them
    assert all(step["exit"] == 0 for step in document["steps"].values()), document["steps"]
    stages = document["stages"]
    engine = stages["prot_t5_xl"]["engine"]
    assert {"residues_per_s", "mfu", "padding_fraction", "peak_memory_bytes", "compiles", "compile_seconds",
            "compiled_anew", "path", "fp32_redone"} <= set(engine)  # fmt: skip
    checks = {c["check"]: c["passed"] for c in stages["job"]["checks"]}
    assert checks["kill -9 mid-run"] and checks["no worker left after the kill"], checks
    assert checks["resume equals the uninterrupted run"] and checks["validate"] and checks["main command"], checks
    assert stages["long_35000"]["rows"][0]["windows"] == 0
    # The device tool returns at most 8 files, 2 folders deep
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / name).is_file() for name in files), files
    assert {"summary.txt", "results.json", "profile.txt", "job.log", "run_report.html"} <= set(files)
    assert result.stdout.rstrip().splitlines()[-1].startswith("== PASSED")
    assert (out / "summary.txt").read_text() == result.stdout


def test_gpu_check_dry_run_passes(tmp_path):
    steps = "environment prot_t5_xl esm2_3b"
    result, out = run_script("gpu_check.sh", tmp_path, STEPS=steps)
    assert result.returncode == 0, explain(result, out)
    document = json.loads((out / "results.json").read_text())
    assert list(document["steps"]) == steps.split()
    assert all(step["exit"] == 0 for step in document["steps"].values()), document["steps"]
    assert {"seed", "engine", "engine_b128"} <= set(document["stages"]["prot_t5_xl"])
    assert "fair_esm" in document["stages"]["esm2_3b"]  # the second peer, which the first call skips
    assert "engine_b128" in (out / "summary.txt").read_text()


def test_gpu_job_check_dry_run_passes(tmp_path):
    steps = "build main summary"
    result, out = run_script("gpu_job_check.sh", tmp_path, STEPS=steps, WORK=str(tmp_path / "work"))
    assert result.returncode == 0, explain(result, out)
    document = json.loads((out / "summary.json").read_text())
    assert [s for s in document["steps"]] == steps.split()[:-1]  # the summary reads the steps before it
    assert all(step["exit"] == 0 for step in document["steps"].values()), document["steps"]
    checks = {c["check"]: c["passed"] for c in document["checks"]}
    assert checks["device: auto"] and checks["main command"], checks  # ESM C on `device: auto` went to the CPU
    assert {row["model"] for row in document["rows"]} == {"prot_t5_xl", "prost_t5", "esm2", "esmc"}


def test_a_failing_step_makes_each_script_exit_non_zero_and_is_named(tmp_path):
    # A bogus option for throughput.py: the step fails (exit 2), the script says which and exits 1
    for script in ("gpu_first_call.sh", "gpu_check.sh"):
        result, out = run_script(script, tmp_path / script, STEPS="prot_t5_xl", EXTRA="--no-such-option")
        assert result.returncode == 1, explain(result, out)
        assert result.stdout.rstrip().splitlines()[-1].startswith("== FAILED: prot_t5_xl (exit 2)"), result.stdout
        steps = json.loads((out / "results.json").read_text())["steps"]
        assert steps["prot_t5_xl"]["exit"] == 2  # the results are written all the same
    # A bogus ESM2 size: the build fails, and so does the summary, whose checks say why
    work = tmp_path / "job-work"
    result, out = run_script("gpu_job_check.sh", tmp_path / "job", STEPS="build summary", ESM2="9t", WORK=str(work))
    assert result.returncode == 1, explain(result, out)
    assert "== FAILED: build (exit 2), summary (exit 1)" in result.stdout
    assert "FAIL  build" in (out / "summary.txt").read_text()


def test_a_step_past_its_limit_fails_and_one_the_budget_cannot_hold_is_skipped(tmp_path):
    script = f"""
        set -u
        STEPS_LOG={tmp_path}/steps.jsonl BUDGET=60 RESERVE=0
        . benchmarks/steps.sh
        steps_start
        step slow 1 sleep 30
        step quick 5 true
        BUDGET=0
        step late 10 true
        steps_verdict
    """
    result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "== slow FAILED: ran past its limit of 1 s" in lines and "== quick: done in" in result.stdout
    assert lines[-1].startswith("== FAILED: slow (past its 1 s limit)")
    assert "skipped for want of time: late" in lines[-1]
    records = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["exit"]) for r in records] == [("slow", 124), ("quick", 0), ("late", "skipped")]
