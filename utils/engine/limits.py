"""Device policy in one place: how many tokens a batch may hold, how long a protein one pass may take, and the
memory model both come from. The worker, the Python API, the pre-flight check and the dry run all ask here.

Batches are packed (utils.engine.tokens.TokenTable.pack): every protein's tokens end to end, no padding, and attention
stays within each protein without ever building a T × T tensor for the batch (utils.engine.attention). So memory is
linear
in the batch's tokens. Memory model (a deliberate over-estimate, per forward pass over `tokens` packed tokens):
  weights              parameters × bytes per value
  activations          tokens × bytes × (8 × hidden + 2 × ffn): the residual stream, q/k/v/out, the feed-forward's
                       inner width and the float32 pooling block
  attention workspace  ATTENTION_WORKSPACE_BYTES × 2: T5's position bias for one block of queries and its scores
                       (utils.engine.attention.segments_attention); FlexAttention and FlashAttention keep O(T) state,
                       inside the activations' term
A batch fits when weights + its activations + the workspace fit 80 % of the device. The longest protein one pass
takes follows from the same model: hundreds of thousands of residues on a GPU, so `max_residues: auto` leaves every
real protein whole (windows remain for ESM-1b's 1,022 positions, an explicit max_residues, and a device far too
small, each recorded in the output).

"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.engine.attention import ATTENTION_WORKSPACE_BYTES
from utils.engine.batching import batch_views, plan_batch_bounds, window_spans
from utils.engine.families import Architecture

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
# On CPU, bigger batches only add cache misses, smaller ones add per-batch host work: in paired runs of
# the whole job (benchmarks/cpu_whole_process.py) 2,048 and 4,096 tokens were within 2 % of each other, and 4,096
# does half the batches on the host path (benchmarks/host_overhead.py); small batches keep a laptop's memory low.
CPU_TOKENS_PER_BATCH = 4096
# The largest GPU batch in tokens: past it, a batch takes long enough that larger ones gain nothing.
GPU_MAX_TOKENS_PER_BATCH = 131072
DEVICE_MEMORY_FRACTION = 0.8  # of the device's memory, for weights and activations; the rest is allocator slack


@dataclass(frozen=True)
class Limits:
    """What one device allows one model: the batch plan's budgets and the longest protein in one pass."""

    max_tokens_per_batch: int  # packed tokens per batch (every protein's residues + special tokens)
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
        """plan_batches packed: (indices longest first, batch boundaries), see
        utils.engine.batching.plan_batch_bounds."""
        clipped = np.minimum(np.asarray(lengths), self.max_residues).astype(np.int32, copy=False)
        return plan_batch_bounds(clipped, self.max_tokens_per_batch, self.batch_size, special_tokens, packed=True)


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


def estimate_peak_bytes(arch: Architecture, dtype_bytes: int, tokens: int) -> int:
    """Weights + activations + attention workspace of one forward pass over `tokens` packed tokens."""
    return (
        weight_bytes(arch, dtype_bytes)
        + tokens * linear_bytes_per_token(arch, dtype_bytes)
        + 2 * (ATTENTION_WORKSPACE_BYTES)
    )


def activation_bytes(arch: Architecture, dtype_bytes: int, memory_bytes: int) -> int:
    """What a pass's activations may take: 80 % of the device, less the weights and the attention workspace."""
    budget = int(DEVICE_MEMORY_FRACTION * memory_bytes) - weight_bytes(arch, dtype_bytes)
    return max(0, budget - 2 * ATTENTION_WORKSPACE_BYTES)


def auto_max_residues(arch: Architecture, dtype_bytes: int, memory_bytes: int, special_tokens: int = 2) -> int:
    """Longest protein whose one pass fits the device (weights + activations ≤ 80 % of its memory)."""
    tokens = activation_bytes(arch, dtype_bytes, memory_bytes) // linear_bytes_per_token(arch, dtype_bytes)
    return max(16, tokens - special_tokens)


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
            linear = activations // linear_bytes_per_token(arch, dtype_bytes)
            max_tokens_per_batch = int(max(1024, min(GPU_MAX_TOKENS_PER_BATCH, linear)))
    longest = max_residues or auto_max_residues(arch, dtype_bytes, memory)
    if arch.max_residues is not None:
        longest = min(longest, arch.max_residues)
    return Limits(max_tokens_per_batch, batch_size, longest, memory)


def heaviest_pass(
    limits: Limits,
    arch: Architecture,
    precision: str,
    lengths: Sequence[int],
    special_tokens: int,
    window_overlap: int = 256,
) -> tuple[int, int, int]:
    """(estimated peak bytes, proteins, tokens) of the heaviest forward pass the batch plan over `lengths` makes.

    A protein longer than max_residues runs as windows of max_residues residues, packed into passes of at most the
    token budget (utils.engine.encode.Encoder.embed_windows); the batch's other proteins run together.
    """
    dtype_bytes = DTYPE_BYTES[precision]
    window = limits.max_residues
    overlap = min(window_overlap, window // 4)
    heaviest, items = 0, 0
    for batch in limits.plan_batches(lengths, special_tokens):
        windows = sum(len(window_spans(lengths[i], window, overlap)) for i in batch if lengths[i] > window)
        rest = [lengths[i] + special_tokens for i in batch if lengths[i] <= window]
        passes = [(len(rest), sum(rest))] if rest else []
        if windows:
            per_pass = min(windows, max(1, limits.max_tokens_per_batch // (window + special_tokens)))
            passes.append((per_pass, per_pass * (window + special_tokens)))
        for n, tokens in passes:
            if tokens > heaviest:
                heaviest, items = tokens, n
    return estimate_peak_bytes(arch, dtype_bytes, heaviest), items, heaviest
