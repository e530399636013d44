"""Run a command and measure it whole: wall time, CPU seconds and peak memory of every process it starts.

The job's workers are forked from a server process that the job's main process never waits for, so the kernel's
child rusage (wait4, /usr/bin/time) misses them. Instead the command runs in a session of its own and /proc is
sampled: CPU = the sum over the session's processes of their own user + system time (last seen), peak RSS = the
largest sum of the session's resident memory at one sample (sampled every 50 ms, so brief spikes can be missed).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def session_processes(session: int) -> dict[int, tuple[float, int]]:
    """pid → (own CPU seconds, resident bytes) for every process of `session`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) != session:  # field 6 of stat: session id
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        found[int(entry.name)] = (cpu, int(fields[21]) * _PAGE)  # rss in pages
    return found


def run_measured(command: list[str], **popen: object) -> dict:
    """Run `command` to its end; raise CalledProcessError (with stderr) if it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    cpu: dict[int, float] = {}
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            processes = session_processes(process.pid)
            for pid, (seconds, _) in processes.items():
                cpu[pid] = max(cpu.get(pid, 0.0), seconds)
            peak = max(peak, sum(rss for _, rss in processes.values()))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    time.sleep(0.2)  # the worker server exits once the main process has: let the sampler see its last figures
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command, stdout, stderr)
    return {"seconds": seconds, "cpu_seconds": sum(cpu.values()), "peak_rss_bytes": peak}
