"""The whole-job check's kill -9: the job in a session of its own, its main process killed once a worker has embedded
half of its sequences, whatever outlived it listed (the session's processes, nvidia-smi's compute processes) and
ended, then the same command again and its output against the uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.job_outputs import compare, outputs, read_pt
from benchmarks.results_io import read_json, save

REPO = Path(__file__).resolve().parent.parent


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


def kill_resume(work: Path, kill_deadline: float, rerun_timeout: float) -> dict[str, Any]:
    """The `kill-resume` step on config_resume.yaml; what the kill showed is saved before the rerun starts."""
    config = work / "config_resume.yaml"
    command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)]
    result = kill_mid_run(command, work / "resume" / "logs", kill_deadline)
    save(work, "kill_resume", result)  # what the kill showed stays, whatever the rerun does
    started = time.perf_counter()
    try:
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=rerun_timeout)
        result["rerun"] = {"exit": rerun.returncode, "seconds": round(time.perf_counter() - started, 2),
                           "stderr": rerun.stderr[-2000:] if rerun.returncode else ""}  # fmt: skip
    except subprocess.TimeoutExpired:
        result["rerun"] = {"exit": "timeout", "seconds": rerun_timeout}
        return result
    summary = read_json(work / "resume" / "embeddings" / "run_summary.json")
    result["reused"] = {w["label"]: w["reused"] for w in summary.get("workers", [])}
    main, resumed = work / "main" / "embeddings", work / "resume" / "embeddings"
    result["files"] = {}
    for name, path in outputs(resumed, ".pt").items():
        try:
            ids, vectors, _ = read_pt(path)
            reference_ids, reference, _ = read_pt(main / path.name)
            result["files"][name] = compare((reference_ids, reference), (ids, vectors))
        except Exception as exc:  # noqa: BLE001
            result["files"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    return result
