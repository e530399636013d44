"""The whole-job check's summary (benchmarks/gpu_job.py summary): one row per worker of the main run, one PASS/FAIL
line per check, from whatever the steps left, so a failed step costs only its own rows."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.job_outputs import outputs, read_pt
from benchmarks.results_io import read_json, read_steps

RESUME_TOLERANCE = 2e-3  # |Δ| between float16 vectors of a resumed and an uninterrupted run: a few float16 ulps


def flops_per_residue(checkpoint: str, lengths: list[int], max_residues: int, overlap: int = 256) -> float:
    """Forward FLOPs per input residue of one model over the job's unique proteins, windows as the job runs them
    (utils.engine.families.Architecture.matmul_flops; special tokens left out)."""
    import transformers

    from utils.engine.families import architecture

    arch = architecture(transformers.AutoConfig.from_pretrained(checkpoint))
    total = 0.0
    for length in lengths:
        if length <= max_residues or max_residues <= 0:
            total += arch.matmul_flops(length)
        else:
            step = max(1, max_residues - min(overlap, max_residues // 4))
            windows = math.ceil((length - max_residues) / step) + 1
            total += windows * arch.matmul_flops(max_residues)
    return total / max(1, sum(lengths))


def unique_lengths(data: Path) -> list[int]:
    sequences: set[str] = set()
    for path in data.glob("*.fasta"):
        current: list[str] = []
        for line in path.read_text().splitlines() + [">"]:
            if line.startswith(">"):
                if current:
                    sequences.add("".join(current))
                current = []
            else:
                current.append(line.strip())
    return [len(s) for s in sequences]


def planned_peaks(config_path: Path) -> dict[str, int]:
    """Worker label → the memory model's estimated peak (utils.engine.limits.heaviest_pass) over the job's own batch
    plan, on the work order's device, as the worker plans it."""
    from utils.engine.limits import heaviest_pass
    from utils.running.plan import plan_jobs, prepare

    config, splits, models = prepare(config_path)
    peaks = {}
    for job in plan_jobs(config, splits, models):
        for order in job.orders:
            lengths = [len(s) for s in order.sequences]
            family = job.model.family
            peaks[order.label] = heaviest_pass(
                order.limits(), job.model.arch, order.precision, lengths, family.special_tokens
            )[0]
    return peaks


def model_of(label: str) -> str:
    return label.split("[")[0]


def summary_rows(
    run: dict[str, Any],
    validation: dict[str, Any],
    resume: dict[str, Any],
    build: dict[str, Any],
    work: Path,
    plans: dict[str, int],
) -> list[dict[str, Any]]:
    """One row per worker of the main run (a model sharded over two GPUs has two); `plans`: label → planned peak."""
    rate = build.get("matmul_rate_flops") or 0.0
    lengths = unique_lengths(work / "data")
    checkpoints = {m: c["path"] for m, c in build.get("checkpoints", {}).items()}
    resumed: dict[str, list[bool]] = {}
    for name, c in resume.get("files", {}).items():
        equal = bool(c.get("same_order")) and c.get("max_abs_delta", math.inf) <= RESUME_TOLERANCE
        resumed.setdefault(name.split("_embeddings_", 1)[1], []).append(equal)
    rows = []
    for worker in run.get("workers", []):
        model = model_of(worker["label"])
        checks = validation.get("models", {}).get(model, {}).get("checks", {})
        memory = checks.get("memory", {})  # a check's values sit beside its figure (utils.checks.validation.Check)
        projected = checks.get("throughput", {}).get("projected_seconds")
        computing = worker["residues_computed"] / worker["residues_per_second"] if worker["residues_per_second"] else 0
        mfu = None
        if rate and computing and model in checkpoints and lengths:
            try:
                per_residue = flops_per_residue(checkpoints[model], lengths, worker.get("max_residues", 0))
                mfu = per_residue * worker["residues_computed"] / computing / rate
            except Exception:  # noqa: BLE001 - a missing checkpoint costs the MFU column only
                mfu = None
        rows.append({
            "model": worker["label"], "device": worker["device"], "precision": worker["precision"],
            "status": worker["status"], "proteins": worker["computed"],
            "proteins_per_s": worker["computed"] / computing if computing else 0.0,
            "residues_per_s": worker["residues_per_second"], "seconds": round(computing, 2),
            "projected_seconds": projected, "mfu": mfu,
            "peak_gib": worker.get("peak_memory_bytes", 0) / 2**30, "peak_kind": worker.get("peak_memory_kind", ""),
            "plan_gib": plans[worker["label"]] / 2**30 if worker["label"] in plans else None,
            "validator_plan_gib": memory["projected_peak_bytes"] / 2**30 if "projected_peak_bytes" in memory else None,
            "oom_retries": worker.get("out_of_memory_retries"), "fp32_redos": worker.get("redone_in_fp32"),
            "windows": len(worker.get("windowed_lengths", [])),
            "resume_equal": ("yes" if all(resumed[model]) else "no") if model in resumed else "-",
            "compiles": worker.get("compiles", 0), "compiled_anew": worker.get("compiled_anew", 0),
            "compile_seconds": worker.get("compile_seconds", 0.0), "forward": worker.get("forward") or "-",
        })  # fmt: skip
    return rows


def window_reasons(directory: Path) -> dict[str, dict[str, int]]:
    """model → {reason: proteins}, from the main run's .pt meta (the out-of-memory ones are what must be explained)."""
    reasons: dict[str, dict[str, int]] = {}
    for name, path in outputs(directory, ".pt").items():
        try:
            _, _, meta = read_pt(path)
        except Exception:  # noqa: BLE001
            continue
        model = name.split("_embeddings_", 1)[1]
        for note in meta.get("windowed", {}).values():
            counts = reasons.setdefault(model, {})
            counts[note["reason"]] = counts.get(note["reason"], 0) + 1
    return reasons


def findings(
    steps: dict, build: dict, run: dict, validation: dict, readback: dict, resume: dict, rows: list, reasons: dict
) -> list[tuple[str, bool | None, str]]:
    """(check, passed (None: not run), what was seen), one per item of the issue."""

    def step_ok(name: str) -> bool | None:
        return None if name not in steps else steps[name]["exit"] == 0

    out = [("build", step_ok("build"), f"{steps.get('build', {}).get('seconds', '-')} s")]
    out.append(("validate", step_ok("validate"), f"exit {steps.get('validate', {}).get('exit', '-')}; "
                f"failures: {'; '.join(validation.get('failures', [])) or 'none'}"))  # fmt: skip
    main_seconds = steps.get("main", {}).get("seconds")
    out.append(("main command", step_ok("main"), f"exit {steps.get('main', {}).get('exit', '-')}, wall {main_seconds}"
                f" s (run report: {run.get('wall_seconds', '-')} s, status {run.get('status', '-')})"))  # fmt: skip
    auto = [w["device"] for w in run.get("workers", []) if model_of(w["label"]) == "esmc"]
    expected = build.get("expected_auto")
    out.append(
        ("device: auto", (auto == [expected]) if auto else None, f"esmc ran on {auto or '-'}, expected {expected}")
    )
    out.append(("pt / HDF5 / Parquet read back", readback.get("equal") if readback else None,
                ", ".join(f"{n}: " + "/".join(f"{k} Δ{c.get('max_abs_delta', c.get('error'))}" for k, c in e.items())
                          for n, e in readback.get("files", {}).items()) or "-"))  # fmt: skip
    rates = [w["residues_per_second"] for w in run.get("workers", [])]
    out.append(("run report: device throughput per model", bool(rates) and all(r > 0 for r in rates) if rates else None,
                f"{len(rates)} worker(s), residues/s {[round(r) for r in rates]}"))  # fmt: skip
    if resume:
        killed = resume.get("killed")
        out.append(("kill -9 mid-run", bool(killed) and resume.get("chunks_before_kill", 0) > 0,
                    f"after {resume.get('killed_after_s')} s, {resume.get('chunks_before_kill')} chunk(s) written"
                    if killed else f"the run ended before the kill (exit {resume.get('exit')})"))  # fmt: skip
        left = resume.get("left_processes", [])
        gpu = resume.get("gpu_processes_after_kill", [])
        out.append(("no worker left after the kill", (not left and not gpu) if killed else None,
                    f"processes: {left or 'none'}; nvidia-smi compute apps: {gpu or 'none'}"))  # fmt: skip
        files = resume.get("files", {})
        equal = bool(files) and all(c.get("same_order") and c.get("max_abs_delta", math.inf) <= RESUME_TOLERANCE
                                    for c in files.values())  # fmt: skip
        reused = resume.get("reused", {})
        out.append(("resume equals the uninterrupted run", equal,
                    f"rerun exit {resume.get('rerun', {}).get('exit')}, reused {reused}; max |Δ| "
                    f"{ {n: c.get('max_abs_delta', c.get('error')) for n, c in files.items()} }"))  # fmt: skip
    else:
        out.append(("kill -9 and resume", None, "not run"))
    oom = sum(r["oom_retries"] or 0 for r in rows)
    device_rows = [r for r in rows if r["peak_kind"] == "device allocated"]  # a CPU's RSS is no device peak

    def plan(row: dict[str, Any]) -> float | None:
        return row["plan_gib"] if row["plan_gib"] is not None else row["validator_plan_gib"]

    over = [r["model"] for r in device_rows if plan(r) is not None and r["peak_gib"] > plan(r)]
    out.append(("no out-of-memory retry", (oom == 0) if rows else None,
                f"{oom} retr{'y' if oom == 1 else 'ies'}; windows by reason: {reasons or 'none'}"))  # fmt: skip
    out.append(("peak memory within the plan", (not over) if device_rows else None,
                f"over the plan: {over or 'none'}" if device_rows else "no device peak (CPU run)"))  # fmt: skip
    return out


COLUMNS = (("model", "model", "{}"), ("device", "device", "{}"), ("proteins/s", "proteins_per_s", "{:,.1f}"),
           ("residues/s", "residues_per_s", "{:,.0f}"), ("s (proj.)", None, ""), ("MFU", "mfu", "{:.3f}"),
           ("peak GiB", "peak_gib", "{:.2f}"), ("plan GiB", "plan_gib", "{:.2f}"), ("OOM retries", "oom_retries", "{}"),
           ("fp32 redos", "fp32_redos", "{}"), ("windows", "windows", "{}"),
           ("resume equal", "resume_equal", "{}"), ("compiles (new, s)", "compiles", "{}"),
           ("forward", "forward", "{}"))  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str | None, fmt: str) -> str:
        if key == "compiles":
            return f"{row['compiles']} ({row['compiled_anew']} new, {row['compile_seconds']:.1f} s)"
        if key is None:  # measured seconds with the validator's projection beside them
            projected = row["projected_seconds"]
            return f"{row['seconds']:.1f} ({projected:.1f})" if projected is not None else f"{row['seconds']:.1f} (-)"
        value = row.get(key)
        return "-" if value is None else fmt.format(value)

    lines = [[name for name, _, _ in COLUMNS]] + [[cell(r, key, fmt) for _, key, fmt in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)


def summary(work: Path, out: Path, steps_log: Path | None = None) -> dict[str, Any]:
    """The `summary` step: out/summary.txt (the table, the checks, the steps) and the document for summary.json.
    `steps_log`: the steps' records (benchmarks/steps.sh; default W/results/steps.jsonl), where the whole job's steps
    may be named with a `job_` prefix among a longer script's (gpu_first_call.sh)."""
    results = work / "results"
    if steps_log is None:
        steps = read_steps(results / "steps.jsonl")
    else:
        recorded = read_steps(steps_log).items()
        steps = {name.removeprefix("job_"): r for name, r in recorded if name.startswith("job_")}
        steps.pop("summary", None)
    build, readback, resume = (read_json(results / f"{n}.json") for n in ("build", "readback", "kill_resume"))
    run = read_json(work / "main" / "embeddings" / "run_summary.json")
    validation = read_json(work / "main" / "logs" / "validation_report.json")
    try:
        plans = planned_peaks(work / "config_main.yaml")
    except Exception as exc:  # noqa: BLE001 - without the plan the table says "-" there
        print(f"note: no memory plan ({type(exc).__name__}: {exc})", file=sys.stderr)
        plans = {}
    rows = summary_rows(run, validation, resume, build, work, plans)
    reasons = window_reasons(work / "main" / "embeddings")
    checks = findings(steps, build, run, validation, readback, resume, rows, reasons)
    mark = {True: "PASS", False: "FAIL", None: "----"}
    device = build.get("device_name", "?")
    data = build.get("data", {})
    text = [
        f"gpu_job_check on {device} ({build.get('device', '?')}, {build.get('gpus', 0)} GPU(s)), scale "
        f"{build.get('scale', '?')}, ESM2 {build.get('esm2', '?')}; torch {build.get('torch', '?')}",
        f"proteins: train {data.get('train', '-')}, test {data.get('test', '-')} ({data.get('across_splits', '-')} "
        f"in both), {data.get('unique', '-')} unique, {data.get('residues', '-')} residues, "
        f"long {data.get('long', '-')}",
        f"matmul rate {build.get('matmul_rate_flops', 0) / 1e12:.3f} TFLOP/s ({build.get('matmul_rate_kind', '-')});"
        " s (proj.) = measured seconds from model loaded to last chunk (the validator's projection); plan = the "
        "memory model's peak (utils.engine.limits) over the job's batch plan (the validator's, which it scales to its "
        "sample's measured peak, is in summary.json)",
        "",
        table(rows) if rows else "(no run summary: the main command did not finish; see job.log)",
        "",
        *(f"{mark[ok]}  {name}: {seen}" for name, ok, seen in checks),
        "",
        "steps: "
        + ", ".join(f"{n} exit {s['exit']} in {s['seconds']} s (limit {s['limit']})" for n, s in steps.items()),
    ]
    document = {"rows": rows, "checks": [{"check": n, "passed": ok, "seen": s} for n, ok, s in checks],
                "steps": steps, "build": build, "validation": validation, "run_summary": run, "readback": readback,
                "kill_resume": resume, "window_reasons": reasons, "text": "\n".join(text)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text(document["text"] + "\n")
    print(document["text"])
    return document
