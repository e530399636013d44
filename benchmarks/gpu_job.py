#!/usr/bin/env python
"""The steps of benchmarks/gpu_job_check.sh that are more than one command: the user's whole job on a device.

    python benchmarks/gpu_job.py build   --work W --device cuda:0 [--scale real|tiny] [--esm2 650m|3b] [--proteins N]
    python benchmarks/gpu_job.py readback    --work W          # pt, HDF5 and Parquet of the main run agree
    python benchmarks/gpu_job.py kill-resume --work W          # kill -9 mid-run, leftovers, rerun, compare
    python benchmarks/gpu_job.py summary     --work W --out O  # everything in O/summary.json and O/summary.txt

build: random-weight checkpoints in the hub layouts (tests/tiny_checkpoints.py's builders; `--scale real`: ProtT5-XL
encoder fp16, ProstT5 encoder-decoder fp16, ESM2 650M or 3B, ESM C 600M, weights created on the device), a CAFA-like
FASTA pair (log-normal lengths, the --long proteins, duplicates within and across the splits, UniProt headers in
train, bare accessions with a taxon in test, as CAFA 5's files have them) and two configs: config_main.yaml mirrors
config_t5.yaml (ProtT5 on GPU 0, ProstT5 on GPU 1, ESM2 over both, ESM C on `device: auto`; every GPU index is 0
on a one-GPU machine, and `cpu` for the CPU dry run) and writes pt, HDF5 and Parquet; config_resume.yaml is the same
job for --resume-models, into a directory of its own, with a chunk every batch so that a kill lands between chunks.
Each step writes W/results/<step>.json; `summary` reads whatever is there, so a failed step costs only its rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODELS = ("prot_t5_xl", "prost_t5", "esm2", "esmc")
BUILDER_KEY = {"prot_t5_xl": "prot_t5", "prost_t5": "prost_t5", "esm2": "esm2", "esmc": "esmc"}
SPECIES = [
    ("Homo sapiens", 9606, "HUMAN"),
    ("Mus musculus", 10090, "MOUSE"),
    ("Arabidopsis thaliana", 3702, "ARATH"),
    ("Escherichia coli (strain K12)", 83333, "ECOLI"),
    ("Saccharomyces cerevisiae", 559292, "YEAST"),
]
RESUME_TOLERANCE = 2e-3  # |Δ| between float16 vectors of a resumed and an uninterrupted run: a few float16 ulps


# -- build ------------------------------------------------------------------------------------------------------------
def real_sizes(model: str, esm2: str) -> dict[str, Any]:
    from tests.tiny_checkpoints import REAL_SIZES

    return REAL_SIZES[{"prot_t5_xl": "prot_t5_xl", "prost_t5": "prost_t5", "esm2": f"esm2_{esm2}",
                       "esmc": "esmc_600m"}[model]]  # fmt: skip


def build_checkpoints(root: Path, device: str, scale: str, esm2: str) -> dict[str, dict[str, Any]]:
    """Each model's checkpoint under root/<model>; → {model: {path, seconds, bytes}}."""
    import torch

    from tests.tiny_checkpoints import BUILDERS

    built = {}
    for model in MODELS:
        started = time.perf_counter()
        sizes = real_sizes(model, esm2) if scale == "real" else None
        path = BUILDERS[BUILDER_KEY[model]](root / model, sizes=sizes, device=device if sizes else "cpu")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        built[model] = {"path": str(path), "seconds": round(time.perf_counter() - started, 2), "bytes": weights}
        print(f"built {model}: {weights / 1e9:.2f} GB in {built[model]['seconds']} s", flush=True)
    return built


def accession(rng: random.Random, index: int) -> str:
    """A UniProt-shaped accession, unique by `index`: [OPQ][0-9][A-Z0-9]{3}[0-9], or A0A + 7 for TrEMBL-style."""
    if index % 4 == 3:
        return f"A0A{index:07d}"
    return f"{'OPQ'[index % 3]}{index % 10}{rng.choice('ABCDEFGHIJ')}{index // 10 % 1000:03d}{index % 7}"


def cafa_like_fasta(
    data: Path, proteins: int, test_share: float, max_length: int, long_lengths: list[int], seed: int
) -> dict[str, Any]:
    """train_sequences.fasta and testsuperset.fasta: → counts. Both long proteins in train, duplicates of train
    proteins (same accession) in test, ~5% repeated sequences under other accessions within each file."""
    from benchmarks.throughput import synthetic_proteins

    rng = random.Random(seed)
    sequences = synthetic_proteins(proteins, seed, max_length, long_lengths)
    long = [s for s in sequences if len(s) in long_lengths][: len(long_lengths)]
    rest = [s for s in sequences if not any(s is x for x in long)]
    n_test = round(len(rest) * test_share)
    train_seqs, test_seqs = rest[n_test:] + long, rest[:n_test]
    rng.shuffle(train_seqs)
    data.mkdir(parents=True, exist_ok=True)
    train = []
    for i, sequence in enumerate(train_seqs):
        species, taxon, code = rng.choice(SPECIES)
        acc = accession(rng, i)
        kind = "tr" if acc.startswith("A0A") else "sp"
        header = (f"{kind}|{acc}|{acc if kind == 'tr' else f'P{i}'}_{code} Protein {i} OS={species} OX={taxon} "
                  f"GN=G{i} PE={rng.randint(1, 5)} SV={rng.randint(1, 3)}")  # fmt: skip
        train.append((acc, header, sequence, taxon))
    across = rng.sample(train, min(len(train), max(1, n_test // 5)))  # CAFA's test superset holds train proteins
    test = [(acc, f"{acc} {taxon}", sequence) for acc, _, sequence, taxon in across]
    test += [(a, f"{a} {rng.choice(SPECIES)[1]}", s) for a, s in
             ((accession(rng, len(train) + i), s) for i, s in enumerate(test_seqs))]  # fmt: skip
    rng.shuffle(test)
    write_fasta(data / "train_sequences.fasta", [(h, s) for _, h, s, _ in train])
    write_fasta(data / "testsuperset.fasta", [(h, s) for _, h, s in test])
    residues = sum(len(s) for _, _, s, _ in train) + sum(len(s) for _, _, s in test)
    unique = len({s for _, _, s, _ in train} | {s for _, _, s in test})
    return {"train": len(train), "test": len(test), "across_splits": len(across), "unique": unique,
            "residues": residues, "longest": max(map(len, sequences)), "long": sorted(map(len, long))}  # fmt: skip


def write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    with open(path, "w") as handle:
        for header, sequence in records:
            handle.write(f">{header}\n")
            handle.writelines(sequence[i : i + 60] + "\n" for i in range(0, len(sequence), 60))


def model_devices(device: str, gpus: int) -> dict[str, Any]:
    """config_t5.yaml's placement on this machine: two GPUs as there, one GPU twice, or the CPU."""
    if device == "cpu":
        return {"prot_t5_xl": "cpu", "prost_t5": "cpu", "esm2": "cpu", "esmc": "auto"}
    second = 1 if gpus >= 2 else 0
    return {"prot_t5_xl": 0, "prost_t5": second, "esm2": [0, 1] if gpus >= 2 else 0, "esmc": "auto"}


def job_config(
    work: Path, name: str, models: dict[str, str], devices: dict[str, Any], run_params: dict[str, Any]
) -> Path:
    import yaml

    config = {
        "paths": {
            "data_dir": str(work / "data"), "raw_train_sequences": "train_sequences.fasta",
            "raw_test_sequences": "testsuperset.fasta", "output_dir": str(work / name / "embeddings"),
            "log_dir": str(work / name / "logs"), "id_format": "uniprot",
        },
        "run_params": {"batch_size": 32, "save_every_n_batches": 100, "seed": 42, **run_params},
        "models": {key: {"name": path, "device": devices[key], "output_key": key} for key, path in models.items()},
    }  # fmt: skip
    path = work / f"config_{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.throughput import device_name, matmul_rate

    work = args.work
    gpus = torch.cuda.device_count() if args.device != "cpu" else 0
    if args.device != "cpu" and not gpus:
        raise SystemExit("no GPU visible to torch (DEVICE=cpu for a dry run)")
    started = time.perf_counter()
    data = cafa_like_fasta(work / "data", args.proteins, args.test_share, args.max_length, args.long, args.seed)
    built = build_checkpoints(work / "checkpoints", args.device, args.scale, args.esm2)
    rate, kind = matmul_rate(args.device)
    paths = {model: built[model]["path"] for model in MODELS}
    devices = model_devices(args.device, gpus)
    job_config(work, "main", paths, devices, {"output_format": ["pt", "h5", "parquet"]})
    resume = {m: paths[m] for m in args.resume_models}
    job_config(work, "resume", resume, devices, {"output_format": "pt", "save_every_n_batches": 1})
    return {
        "device": args.device, "device_name": device_name(args.device if args.device != "cpu" else "cpu"),
        "gpus": gpus, "scale": args.scale, "esm2": args.esm2, "data": data, "checkpoints": built,
        "matmul_rate_flops": rate, "matmul_rate_kind": kind, "devices": devices,
        "expected_auto": "cuda:0" if gpus else "cpu", "resume_models": list(args.resume_models),
        "seconds": round(time.perf_counter() - started, 2), "torch": torch.__version__,
    }  # fmt: skip


# -- outputs ----------------------------------------------------------------------------------------------------------
def read_pt(path: Path) -> tuple[list[str], np.ndarray, dict]:
    import torch

    data = torch.load(path, weights_only=True)
    return list(data["ids"]), data["embeddings"].float().numpy(), data["meta"]


def read_h5(path: Path) -> tuple[list[str], np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        ids = [str(f[name].attrs["original_id"]) for name in f]
        return ids, np.stack([f[name][()] for name in f]).astype(np.float32)


def read_parquet(path: Path) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "embedding"])
    ids = table.column("id").to_pylist()
    return ids, table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(ids), -1).astype(np.float32)


def compare(reference: tuple[list[str], np.ndarray], other: tuple[list[str], np.ndarray]) -> dict[str, Any]:
    """Same ids in the same order, and the largest |Δ| between rows; by id when the order differs."""
    ids_a, a = reference
    ids_b, b = other
    same_ids = sorted(ids_a) == sorted(ids_b)
    same_order = ids_a == ids_b
    if same_order:
        delta = float(np.abs(a - b).max()) if len(a) else 0.0
    elif same_ids:
        index = {pid: i for i, pid in enumerate(ids_b)}
        delta = float(np.abs(a - b[[index[pid] for pid in ids_a]]).max()) if len(a) else 0.0
    else:
        delta = math.inf
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    return {"proteins": len(ids_a), "same_ids": same_ids, "same_order": same_order, "max_abs_delta": delta,
            "finite": finite}  # fmt: skip


def outputs(directory: Path, extension: str) -> dict[str, Path]:
    """'{split}_embeddings_{key}' → path, for the run's files of one format."""
    return {p.name.removesuffix(p.suffix): p for p in sorted(directory.glob(f"*_embeddings_*{extension}"))}


def cmd_readback(args: argparse.Namespace) -> dict[str, Any]:
    directory = args.work / "main" / "embeddings"
    files = {}
    for name, path in outputs(directory, ".pt").items():
        ids, vectors, _ = read_pt(path)
        entry: dict[str, Any] = {}
        for extension, reader in ((".h5", read_h5), (".parquet", read_parquet)):
            other = directory / f"{name}{extension}"
            try:
                entry[extension.lstrip(".")] = compare((ids, vectors), reader(other))
            except Exception as exc:  # noqa: BLE001 - a file that does not read back is this step's finding
                entry[extension.lstrip(".")] = {"error": f"{type(exc).__name__}: {exc}"}
        files[name] = entry
    equal = bool(files) and all(
        c.get("same_order") and c.get("max_abs_delta") == 0.0 for entry in files.values() for c in entry.values()
    )
    return {"files": files, "equal": equal}


# -- kill -9 and resume -----------------------------------------------------------------------------------------------
def gpu_processes() -> list[str]:
    """nvidia-smi's compute processes (pid, name, memory), or [] where there is no nvidia-smi."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def progress(log_dir: Path) -> tuple[int, bool]:
    """(chunks written, whether some worker has embedded half of its sequences) from the workers' progress files."""
    chunks, half = 0, False
    for path in log_dir.glob("*.progress.jsonl"):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        total = done = 0
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                break  # a line being written
            if event["event"] == "start":
                total = event.get("sequences", 0)
            elif event["event"] == "chunk":
                chunks += 1
                done += event.get("proteins", 0)
        half = half or (total > 0 and done >= total / 2)
    return chunks, half


def kill_mid_run(command: list[str], log_dir: Path, deadline_s: float, grace_s: float = 5.0) -> dict[str, Any]:
    """Start the job in a session of its own, kill -9 its main process once a worker has embedded half of its
    sequences (or at the deadline, if a chunk was written by then), then look for what outlived it: the session's
    processes and, on a GPU, nvidia-smi's compute processes."""
    from benchmarks.process_tree import session_processes

    started = time.monotonic()
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks, half = 0, False
    while process.poll() is None and not half and not (chunks and time.monotonic() - started > deadline_s):
        time.sleep(0.005)
        chunks, half = progress(log_dir)
    result: dict[str, Any] = {"chunks_before_kill": chunks}
    if process.poll() is not None:
        result.update(killed=False, exit=process.returncode, stderr=process.stderr.read().decode()[-2000:])
        return result
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    result.update(killed=True, killed_after_s=round(time.monotonic() - started, 2))
    # Workers watch the main process (pidfd) and die with it; give them a moment, then see who is left
    seen = {pid: _command_line(pid) for pid in session_processes(process.pid)}
    result["seen_right_after_kill"] = [f"{pid} {cmd}" for pid, cmd in seen.items()]
    left = seen
    for _ in range(round(grace_s / 0.1)):
        if not left:
            break
        time.sleep(0.1)
        left = {pid: _command_line(pid) for pid in session_processes(process.pid)}
    result["gone_after_s"] = round(time.monotonic() - started - result["killed_after_s"], 2)
    result["left_processes"] = [f"{pid} {cmd}" for pid, cmd in left.items()]
    result["gpu_processes_after_kill"] = gpu_processes()
    for pid in left:  # ours; leaving them would hold the device for the rerun
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return result


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def cmd_kill_resume(args: argparse.Namespace) -> dict[str, Any]:
    config = args.work / "config_resume.yaml"
    command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)]
    result = kill_mid_run(command, args.work / "resume" / "logs", args.kill_deadline)
    save(args.work, "kill_resume", result)  # what the kill showed stays, whatever the rerun does
    started = time.perf_counter()
    try:
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=args.rerun_timeout)
        result["rerun"] = {"exit": rerun.returncode, "seconds": round(time.perf_counter() - started, 2),
                           "stderr": rerun.stderr[-2000:] if rerun.returncode else ""}  # fmt: skip
    except subprocess.TimeoutExpired:
        result["rerun"] = {"exit": "timeout", "seconds": args.rerun_timeout}
        return result
    summary = _json(args.work / "resume" / "embeddings" / "run_summary.json")
    result["reused"] = {w["label"]: w["reused"] for w in summary.get("workers", [])}
    main, resumed = args.work / "main" / "embeddings", args.work / "resume" / "embeddings"
    result["files"] = {}
    for name, path in outputs(resumed, ".pt").items():
        try:
            ids, vectors, _ = read_pt(path)
            reference_ids, reference, _ = read_pt(main / path.name)
            result["files"][name] = compare((reference_ids, reference), (ids, vectors))
        except Exception as exc:  # noqa: BLE001
            result["files"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def save(work: Path, step: str, result: dict[str, Any]) -> None:
    path = work / "results" / f"{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")


# -- summary ----------------------------------------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_steps(path: Path) -> dict[str, dict[str, Any]]:
    steps = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return steps
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        steps[record["step"]] = record
    return steps


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
           ("resume equal", "resume_equal", "{}"))  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str | None, fmt: str) -> str:
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


def cmd_summary(args: argparse.Namespace) -> dict[str, Any]:
    work, results = args.work, args.work / "results"
    steps = read_steps(results / "steps.jsonl")
    build, readback, resume = (_json(results / f"{n}.json") for n in ("build", "readback", "kill_resume"))
    run = _json(work / "main" / "embeddings" / "run_summary.json")
    validation = _json(work / "main" / "logs" / "validation_report.json")
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.txt").write_text(document["text"] + "\n")
    print(document["text"])
    return document


# -- command line ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("build", "readback", "kill-resume", "summary"))
    parser.add_argument("--work", type=Path, required=True, help="checkpoints, data, configs, runs and results")
    parser.add_argument("--out", type=Path, help="summary: where summary.json and summary.txt go")
    parser.add_argument("--device", default="cuda:0", help="build: cuda:0 or cpu")
    parser.add_argument("--scale", choices=("real", "tiny"), help="build: real sizes (default on GPU) or tiny")
    parser.add_argument("--esm2", choices=("650m", "3b"), default="650m")
    parser.add_argument("--proteins", type=int, default=1500, help="build: proteins over both splits")
    parser.add_argument("--test-share", type=float, default=0.25)
    parser.add_argument("--max-length", type=int, default=35000, help="build: log-normal lengths clipped here")
    parser.add_argument("--long", default="10000,35000", help="build: the long proteins, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume-models", default="prot_t5_xl,esm2", help="models of the kill -9 / resume run")
    parser.add_argument("--kill-deadline", type=float, default=120, help="kill -9 by then if a chunk is written")
    parser.add_argument("--rerun-timeout", type=float, default=300)
    args = parser.parse_args(argv)
    args.scale = args.scale or ("tiny" if args.device == "cpu" else "real")
    args.long = [int(x) for x in args.long.split(",") if x]
    args.resume_models = [m for m in args.resume_models.split(",") if m]
    unknown = set(args.resume_models) - set(MODELS)
    if unknown:
        parser.error(f"--resume-models: unknown {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    step = {"build": cmd_build, "readback": cmd_readback, "kill-resume": cmd_kill_resume, "summary": cmd_summary}
    result = step[args.step](args)
    if args.step == "summary":
        (args.out / "summary.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    else:
        save(args.work, args.step.replace("-", "_"), result)
    if args.step == "readback":
        print(json.dumps(result, indent=1, default=str))
    if args.step == "kill-resume":
        print(json.dumps({k: v for k, v in result.items() if k != "files"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
