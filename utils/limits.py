"""Device policy in one place: how many tokens a batch may hold, how long a protein one pass may take, and the
memory model both come from. The worker, the Python API, the pre-flight check and the dry run all ask here.

Memory model (a deliberate over-estimate, per forward pass of `items` rows of `tokens` tokens):
  weights                      parameters × bytes per value
  linear activations           items × tokens × bytes × (8 × hidden + 2 × ffn)
  square (attention) tensors   items × tokens² × (bytes × 12 × heads + 64)  for T5, which materialises its position
                               bias (heads × T × T, built through a T × T × heads lookup and a permuted copy), the
                               padding-masked copy the attention kernel reads, the attention kernel's own copies, and
                               the int64/float32 bucket arithmetic (T × T). Measured bound: on an 80 GB H100 one
                               10,002-token ProtT5-XL pass in fp16 ran out of memory, so the true figure is above
                               ~800 bytes per token pair there (12 × 32 × 2 + 64 = 832);
                               items × tokens² × bytes × 2                 for the other families (the T × T mask)
A batch fits when its linear activations use at most half of the activation memory (80 % of the device, less the
weights) and its square tensors the other half. The quadratic term is what decides for long proteins: a batch padded
to 10,000 tokens costs as much attention memory as a hundred batches of 1,000, so a linear token budget alone would
pack long proteins into batches that run out of memory (and then split, again and again).

A protein is embedded at full length whenever one pass over it fits; only longer ones (or `max_residues` from the
config, or a model's own positional limit: ESM-1b sees at most 1,022 residues) go through overlapping windows.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.batching import batch_views, plan_batch_bounds
from utils.families import Architecture

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
# On CPU, bigger batches only add padding and cache misses, smaller ones add per-batch host work: in paired runs of
# the whole job (benchmarks/cpu_whole_process.py) 2,048 and 4,096 tokens were within 2 % of each other, and 4,096
# does half the batches on the host path (benchmarks/host_overhead.py); small batches keep a laptop's memory low.
CPU_TOKENS_PER_BATCH = 4096
# The largest GPU batch in tokens: past it, a batch takes long enough that larger ones gain nothing.
GPU_MAX_TOKENS_PER_BATCH = 131072
DEVICE_MEMORY_FRACTION = 0.8  # of the device's memory, for weights and activations; the rest is allocator slack


@dataclass(frozen=True)
class Limits:
    """What one device allows one model: the batch plan's budgets and the longest protein in one pass."""

    max_tokens_per_batch: int  # padded tokens per batch (items × (longest + special tokens))
    max_square_tokens: int  # items × (longest + special tokens)² per batch: attention's T × T tensors
    batch_size: int  # most proteins in one batch
    max_residues: int  # longer proteins go through overlapping windows
    memory_bytes: int  # the device memory these limits were derived from

    def plan_batches(self, lengths: Sequence[int], special_tokens: int) -> list[list[int]]:
        """Indices into `lengths` grouped into batches, longest first; over-long proteins count at max_residues
        (they are embedded window by window)."""
        order, bounds = self.plan_batch_bounds(lengths, special_tokens)
        return [batch.tolist() for batch in batch_views(order, bounds)]

    def plan_batch_bounds(
        self, lengths: Sequence[int] | np.ndarray, special_tokens: int
    ) -> tuple[np.ndarray, list[int]]:
        """plan_batches packed: (indices longest first, batch boundaries), see utils.batching.plan_batch_bounds."""
        clipped = np.minimum(np.asarray(lengths, dtype=np.int64), self.max_residues)
        return plan_batch_bounds(
            clipped,
            self.max_tokens_per_batch,
            self.batch_size,
            special_tokens,
            max_square_tokens=self.max_square_tokens,
        )


def device_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(device).total_memory
    return min(cpu_memory_sources().values())


def cpu_memory_sources(
    root: Path = Path("/"), env: Mapping[str, str] | None = None, address_space: int | None = None
) -> dict[str, int]:
    """What bounds this process's CPU memory, in bytes, by source: the machine's memory, and each lower limit set on
    it: the memory cgroup (v2 memory.max, v1 memory.limit_in_bytes, on its own group and every group above it), the
    address-space rlimit (`ulimit -v`) and SLURM's allocation (--mem, or --mem-per-cpu × the CPUs on this node).
    A container or a batch job is usually given far less than the machine has, and its limit is the one that kills.

    `root` (where /proc and /sys are read), `env` (os.environ) and `address_space` (RLIMIT_AS's soft limit) are
    the sources, injectable for tests."""
    env = os.environ if env is None else env
    sources = {"machine": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    cgroup = _cgroup_memory_limit(root)
    if address_space is None:
        address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
    slurm = _slurm_memory(env)
    for name, limit in (("cgroup", cgroup), ("ulimit -v", address_space), ("SLURM", slurm)):
        if limit is not None and 0 < limit < sources["machine"]:
            sources[name] = limit
    return sources


def _cgroup_memory_limit(root: Path) -> int | None:
    """The lowest memory limit on this process's cgroup and the groups above it, v2 or v1; None when unlimited."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    files = []
    for line in lines:  # "0::/path" (v2), "4:memory:/path" (v1)
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, name = root / "sys/fs/cgroup", "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "sys/fs/cgroup/memory", "memory.limit_in_bytes"
        else:
            continue
        # Without a cgroup namespace the group's path is the host's; the mount may show only the container's own
        # group at its root, so the mount's root file is read as well.
        group_dir = base / group.strip("/")
        files += [directory / name for directory in (group_dir, *group_dir.parents) if directory.is_relative_to(base)]
    limits = []
    for file in dict.fromkeys(files):
        try:
            text = file.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means no limit; v1's "no limit" is a huge number, which min() passes over
            limits.append(int(text))
    return min(limits) if limits else None


def _slurm_memory(env: Mapping[str, str]) -> int | None:
    """SLURM's allocation on this node in bytes (its variables count MiB); None outside SLURM or without --mem."""
    mib = 1 << 20
    try:
        if env.get("SLURM_MEM_PER_NODE"):
            return int(env["SLURM_MEM_PER_NODE"]) * mib
        if env.get("SLURM_MEM_PER_CPU"):
            cpus = env.get("SLURM_CPUS_ON_NODE") or env.get("SLURM_CPUS_PER_TASK") or "1"
            return int(env["SLURM_MEM_PER_CPU"]) * int(cpus) * mib
    except ValueError:  # not a number: SLURM did not write it, so it says nothing
        return None
    return None


def weight_bytes(arch: Architecture, dtype_bytes: int) -> int:
    return arch.params * dtype_bytes


def linear_bytes_per_token(arch: Architecture, dtype_bytes: int) -> int:
    return dtype_bytes * (8 * arch.hidden + 2 * arch.ffn)


def square_bytes_per_token_pair(arch: Architecture, dtype_bytes: int) -> int:
    return dtype_bytes * 12 * arch.heads + 64 if arch.position_bias else dtype_bytes * 2


def estimate_peak_bytes(arch: Architecture, dtype_bytes: int, items: int, tokens: int) -> int:
    """Weights + activations of one forward pass over `items` rows of `tokens` tokens (see the module docstring)."""
    per_item = tokens * linear_bytes_per_token(arch, dtype_bytes) + tokens * tokens * square_bytes_per_token_pair(
        arch, dtype_bytes
    )
    return weight_bytes(arch, dtype_bytes) + items * per_item


def activation_bytes(arch: Architecture, dtype_bytes: int, memory_bytes: int) -> int:
    return max(0, int(DEVICE_MEMORY_FRACTION * memory_bytes) - weight_bytes(arch, dtype_bytes))


def auto_max_residues(arch: Architecture, dtype_bytes: int, memory_bytes: int, special_tokens: int = 2) -> int:
    """Longest protein whose one pass fits the device (weights + activations ≤ 80 % of its memory)."""
    budget = int(DEVICE_MEMORY_FRACTION * memory_bytes)
    low, high = 16, 1 << 20
    while low < high:
        mid = (low + high + 1) // 2
        if estimate_peak_bytes(arch, dtype_bytes, 1, mid + special_tokens) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def device_limits(
    arch: Architecture,
    device: str,
    precision: str,
    *,
    batch_size: int = 32,
    max_tokens_per_batch: int | None = None,
    max_residues: int | None = None,
    memory_bytes: int | None = None,
) -> Limits:
    """The limits for one model on one device; None means auto. `memory_bytes` stands in for the device's memory
    (the pre-flight check's --assume-device-memory-gb, and tests)."""
    dtype_bytes = DTYPE_BYTES[precision]
    memory = memory_bytes or device_memory_bytes(device)
    activations = activation_bytes(arch, dtype_bytes, memory)
    if max_tokens_per_batch is None:
        if device == "cpu":
            max_tokens_per_batch = CPU_TOKENS_PER_BATCH
        else:
            linear = activations // 2 // linear_bytes_per_token(arch, dtype_bytes)
            max_tokens_per_batch = int(max(1024, min(GPU_MAX_TOKENS_PER_BATCH, linear)))
    max_square_tokens = max(1, activations // 2 // square_bytes_per_token_pair(arch, dtype_bytes))
    longest = max_residues or auto_max_residues(arch, dtype_bytes, memory)
    if arch.max_residues is not None:
        longest = min(longest, arch.max_residues)
    return Limits(max_tokens_per_batch, max_square_tokens, batch_size, longest, memory)


def heaviest_pass(
    limits: Limits, arch: Architecture, precision: str, lengths: Sequence[int], special_tokens: int
) -> tuple[int, int, int]:
    """(estimated peak bytes, items, tokens) of the heaviest forward pass the batch plan over `lengths` makes.

    A batch holding a protein longer than max_residues runs as separate passes (utils.encode.Encoder.embed): windows
    of max_residues residues, one at a time, and the batch's other proteins together.
    """
    dtype_bytes = DTYPE_BYTES[precision]
    peak, items, tokens = 0, 0, 0
    for batch in limits.plan_batches(lengths, special_tokens):
        windowed = any(lengths[i] > limits.max_residues for i in batch)
        passes = [(1, limits.max_residues + special_tokens)] if windowed else []
        rest = [lengths[i] for i in batch if lengths[i] <= limits.max_residues]
        if rest:
            passes.append((len(rest), max(rest) + special_tokens))
        for n, t in passes:
            estimate = estimate_peak_bytes(arch, dtype_bytes, n, t)
            if estimate > peak:
                peak, items, tokens = estimate, n, t
    return peak, items, tokens
