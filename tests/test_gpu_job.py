"""benchmarks/gpu_job.py, the logic of the prepared whole-job check (benchmarks/gpu_job_check.sh) without a device:
the CAFA-like FASTA pair, the output comparison, the kill -9 and leftover search, and the summary from whatever steps
left results. The scripts' CPU dry runs themselves are tests/test_gpu_scripts.py."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_job
from benchmarks.job_build import cafa_like_fasta
from benchmarks.job_outputs import compare
from benchmarks.kill_resume import kill_mid_run
from tests.conftest import REPO


def test_cafa_like_fasta_pair(tmp_path):
    from utils.inputs.fasta import read_fasta
    from utils.inputs.ids import apply_id_format

    counts = cafa_like_fasta(tmp_path, 40, 0.25, 300, [900, 1200], seed=3)
    train = apply_id_format(read_fasta(tmp_path / "train_sequences.fasta"), "uniprot", "train")
    test = apply_id_format(read_fasta(tmp_path / "testsuperset.fasta"), "uniprot", "test")
    assert (len(train), len(test)) == (counts["train"], counts["test"])
    assert {900, 1200} <= {len(s) for s in train.sequences} and max(map(len, test.sequences)) <= 300
    assert train.headers[0].startswith(("sp|", "tr|")) and " OS=" in train.headers[0]
    assert all(" " in h and "|" not in h for h in test.headers)  # CAFA 5's test: accession and taxon
    # duplicates across the splits keep their accession; uniprot ids are the accessions
    shared = set(train.ids) & set(test.ids)
    assert len(shared) == counts["across_splits"] >= 1
    by_id = dict(zip(train.ids, train.sequences, strict=True))
    assert all(by_id[i] == s for i, s in zip(test.ids, test.sequences, strict=True) if i in shared)
    assert len(set(train.ids)) == len(train)


def test_compare_ids_order_and_delta():
    a = (["x", "y", "z"], np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32))
    same = compare(a, (list(a[0]), a[1] + np.float32(0.5)))
    assert same["same_order"] and same["max_abs_delta"] == 0.5
    swapped = compare(a, (["y", "x", "z"], a[1][[1, 0, 2]]))
    assert swapped["same_ids"] and not swapped["same_order"] and swapped["max_abs_delta"] == 0.0
    missing = compare(a, (["x", "y"], a[1][:2]))
    assert not missing["same_ids"] and missing["max_abs_delta"] == float("inf")


LINGERING_JOB = """
import json, os, subprocess, sys, time
from pathlib import Path
logs = Path(sys.argv[1])
# a 'worker' that does not die with its main process, in the main process's session
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
(logs / "w.progress.jsonl").write_text(
    json.dumps({"event": "start", "sequences": 4}) + "\\n" + json.dumps({"event": "chunk", "proteins": 2}) + "\\n"
)
time.sleep(60)
"""


def test_kill_mid_run_finds_and_ends_what_outlives_the_main_process(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(LINGERING_JOB)
    started = time.monotonic()
    result = kill_mid_run([sys.executable, str(script), str(tmp_path)], tmp_path, deadline_s=30, grace_s=0.5)
    assert result["killed"] and result["chunks_before_kill"] == 1
    assert len(result["left_processes"]) == 1 and "time.sleep(60)" in result["left_processes"][0]
    pid = int(result["left_processes"][0].split()[0])
    for _ in range(50):  # it was killed after being listed: it is gone (a zombie at most, until init reaps it)
        status = Path(f"/proc/{pid}/stat")
        if not status.exists() or status.read_text().split(")")[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid} outlived the check")
    assert time.monotonic() - started < 20


def write_results(
    work: Path, *, auto_device: str = "cuda:0", oom: int = 0, resume_delta: float = 0.0, peak_gib: int = 30
) -> None:
    """What the steps leave in a GPU run: two workers of the main run, the validator's report, the kill-resume."""
    (work / "results").mkdir(parents=True)
    (work / "main" / "embeddings").mkdir(parents=True)
    (work / "main" / "logs").mkdir(parents=True)
    steps = [{"step": "build", "exit": 0, "seconds": 40.0, "limit": 150},
             {"step": "main", "exit": 0, "seconds": 120.5, "limit": 200}]  # fmt: skip
    (work / "results" / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    build = {"device": "cuda:0", "device_name": "H100", "gpus": 1, "expected_auto": "cuda:0", "matmul_rate_flops": 7e14}
    (work / "results" / "build.json").write_text(json.dumps(build))
    worker = {"precision": "fp16", "status": "done", "computed": 1000, "residues_computed": 500_000,
              "forward": "packed, flex attention", "compiles": 4, "compiled_anew": 0, "compile_seconds": 9.5,
              "residues_per_second": 25_000.0, "windowed_lengths": [35000], "redone_in_fp32": 0,
              "peak_memory_bytes": peak_gib * 2**30, "peak_memory_kind": "device allocated",
              "out_of_memory_retries": 0}  # fmt: skip
    run = {"wall_seconds": 118.0, "status": "done", "workers": [
        {**worker, "label": "prot_t5_xl", "device": "cuda:0"},
        {**worker, "label": "esmc", "device": auto_device, "out_of_memory_retries": oom, "windowed_lengths": []},
    ]}  # fmt: skip
    (work / "main" / "embeddings" / "run_summary.json").write_text(json.dumps(run))
    checks = {"memory": {"projected_peak_bytes": 40 * 2**30}, "throughput": {"projected_seconds": 18.0}}
    validation = {"passed": True, "failures": [], "models": {"prot_t5_xl": {"checks": checks}}}
    (work / "main" / "logs" / "validation_report.json").write_text(json.dumps(validation))
    same = {"proteins": 10, "same_ids": True, "same_order": True, "max_abs_delta": resume_delta, "finite": True}
    resume = {"killed": True, "killed_after_s": 30.0, "chunks_before_kill": 12, "left_processes": [],
              "gpu_processes_after_kill": [], "rerun": {"exit": 0}, "reused": {"prot_t5_xl": 400},
              "files": {"train_embeddings_prot_t5_xl": same, "test_embeddings_prot_t5_xl": same}}  # fmt: skip
    (work / "results" / "kill_resume.json").write_text(json.dumps(resume))


def summary(work: Path, out: Path, code: int = 0) -> tuple[str, dict]:
    assert gpu_job.main(["summary", "--work", str(work), "--out", str(out)]) == code  # 1 when a check failed
    return (out / "summary.txt").read_text(), json.loads((out / "summary.json").read_text())


def test_summary_table_and_checks(tmp_path):
    write_results(tmp_path / "work")
    text, document = summary(tmp_path / "work", tmp_path / "out")
    header = text.splitlines()[4]
    for column in ("model", "device", "proteins/s", "residues/s", "MFU", "peak GiB", "plan GiB", "OOM retries",
                   "fp32 redos", "windows", "resume equal", "compiles (new, s)", "forward"):  # fmt: skip
        assert column in header
    rows = {r["model"]: r for r in document["rows"]}
    assert rows["prot_t5_xl"]["proteins_per_s"] == pytest.approx(50.0) and rows["prot_t5_xl"]["resume_equal"] == "yes"
    assert rows["prot_t5_xl"]["validator_plan_gib"] == 40 and rows["prot_t5_xl"]["windows"] == 1
    assert rows["esmc"]["resume_equal"] == "-" and rows["esmc"]["validator_plan_gib"] is None
    assert "| prot_t5_xl | cuda:0 | 50.0" in text and "20.0 (18.0)" in text  # measured s (validator's projection)
    assert "| 4 (0 new, 9.5 s)  | packed, flex attention |" in text
    checks = {c["check"]: c["passed"] for c in document["checks"]}
    assert checks["device: auto"] and checks["resume equals the uninterrupted run"] and checks["no out-of-memory retry"]
    assert checks["peak memory within the plan"]  # 30 GiB against the validator's 40 (no config here to plan from)
    assert checks["kill -9 mid-run"] and checks["no worker left after the kill"] and checks["main command"]
    assert checks["validate"] is None and checks["pt / HDF5 / Parquet read back"] is None  # not run: neither way


def test_summary_flags_what_went_wrong(tmp_path):
    write_results(tmp_path / "work", auto_device="cpu", oom=2, resume_delta=0.5, peak_gib=41)
    text, document = summary(tmp_path / "work", tmp_path / "out", code=1)
    checks = {c["check"]: c["passed"] for c in document["checks"]}
    assert checks["peak memory within the plan"] is False
    assert checks["device: auto"] is False and checks["no out-of-memory retry"] is False
    assert checks["resume equals the uninterrupted run"] is False
    assert {r["model"]: r["resume_equal"] for r in document["rows"]}["prot_t5_xl"] == "no"
    assert "FAIL  device: auto: esmc ran on ['cpu'], expected cuda:0" in text


def test_summary_is_written_when_every_step_failed(tmp_path):
    (tmp_path / "work").mkdir()
    text, document = summary(tmp_path / "work", tmp_path / "out")
    assert "no run summary" in text and document["rows"] == []


def test_the_script_documents_its_cpu_dry_run():
    script = (REPO / "benchmarks" / "gpu_job_check.sh").read_text()
    assert "DEVICE=cpu" in script and "benchmarks/gpu_job.py summary" in script
    assert "DEVICE=cpu" in (REPO / "benchmarks" / "README.md").read_text()
