"""Shared measuring helpers of the benchmarks: peak memory (GPU allocator or CPU RSS), CPU seconds, the device's
dense matmul rate (what MFU is quoted against), the device's name, the synthetic CAFA-like proteins and the
compiler's counters."""

from __future__ import annotations

import gc
import math
import os
import platform
import random
import resource
import threading
import time
from pathlib import Path

import torch

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def synthetic_proteins(
    count: int, seed: int, max_length: int, long_lengths: list[int], duplicate_fraction: float = 0.05
) -> list[str]:
    """`count` proteins in random order: the long ones, ~duplicate_fraction copies of others, the rest log-normal."""
    rng = random.Random(seed)
    n_duplicates = round(count * duplicate_fraction)
    n_fresh = max(0, count - len(long_lengths) - n_duplicates)
    lengths = [min(max_length, max(30, round(rng.lognormvariate(math.log(380), 0.75)))) for _ in range(n_fresh)]
    proteins = ["".join(rng.choices(AMINO, k=n)) for n in lengths + list(long_lengths)]
    proteins += [rng.choice(proteins[:n_fresh] or proteins) for _ in range(n_duplicates)]
    rng.shuffle(proteins)
    return proteins


def matmul_rate(device: str, quick: bool = False) -> tuple[float, str]:
    """Dense matmul FLOP/s measured here: fp16 8192² on GPU (the rate MFU is quoted against), fp32 2048² on CPU;
    `quick`: 512² (a dry run's MFU means nothing; ~15 s less on two CPU cores)."""
    if device == "cpu":
        n, dtype, repeats = 2048, torch.float32, 10
    else:
        n, dtype, repeats = 8192, torch.float16, 50
    if quick:
        n = 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):  # the best of three timings: other jobs on a shared machine only slow a timing down
        a @ b
        sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, repeats * 2.0 * n**3 / (time.perf_counter() - started))
    del a, b
    release(device)
    return best, f"{str(dtype).removeprefix('torch.')} {n}x{n} matmul"


class PeakMemory:
    """GPU: max_memory_allocated since start(). CPU: peak RSS since start() (VmHWM after clear_refs, else sampled)."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeakMemory:
        if self.device != "cpu":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.peak = rss_bytes("VmRSS")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_bytes("VmRSS"))

    def stop(self) -> int:
        if self.device != "cpu":
            sync(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._hwm_reset:
            self.peak = max(self.peak, rss_bytes("VmHWM"))
        return self.peak


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared CPU, less sensitive to other jobs than wall-clock."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize(device)


def release(device: str) -> None:
    gc.collect()
    if device != "cpu":
        torch.cuda.empty_cache()


def device_name(device: str) -> str:
    if device != "cpu":
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    return f"{model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def compile_state() -> dict[str, float]:
    """The compiler's work in this process so far (utils.engine.attention.compile_stats: graphs compiled, seconds,
    kernels built because the cache did not hold them), as the job's workers record it."""
    from utils.engine.attention import compile_stats

    return compile_stats()
