"""Device policy in one place: how many tokens a batch may hold, whether a protein's one pass fits, and the memory
model both come from. The worker, the Python API, the pre-flight check and the dry run all ask here.

The rule: memory never changes what a protein's vector is. Which proteins go through windows is decided by settings
that are the same on every machine: an explicit `max_residues`, else the model's own positional limit (1,022 residues
for ESM-1b), else none (`max_residues: auto`). The device's memory decides only how proteins are batched (the token
budget; an out-of-memory splits a batch, down to one protein). A protein whose one pass (or window) does not fit the
memory fails its model with one line (Limits.does_not_fit): the protein, what its pass needs, the limit and where the
limit comes from (SLURM's --mem, the memory cgroup, `ulimit -v`, the GPU), and the fix.

Batches are packed (utils.engine.tokens.TokenTable.pack): every protein's tokens end to end, no padding, and attention
stays within each protein without ever building a T × T tensor for the batch (utils.engine.attention). So memory is
linear in the batch's tokens. Memory model (per forward pass over `tokens` packed tokens whose longest protein has
`longest` tokens; benchmarks/memory_model.py measures it against a real-size checkpoint):
  weights              parameters × bytes per value
  activations          tokens × bytes × (a × hidden + b × ffn), the values alive at the forward's peak per token
                       (Architecture.activation_widths: measured per family, T5's ReLU keeps fewer than ESM's GELU)
  attention workspace  only where the family has a position bias (T5, Architecture.position_bias): the kept square
                       bias, one block of it and SDPA's scores for it, 3 × min(heads × longest² × 4 bytes,
                       ATTENTION_WORKSPACE_BYTES) (utils.engine.attention.segments_attention). Without a bias,
                       attention keeps O(T) state (SDPA's fused kernels, FlexAttention, FlashAttention), inside the
                       activations' term.
A pass fits when weights + activations + workspace fit what the model may use (usable_bytes): on a GPU 80 % of its
memory, on the CPU 95 % of the limit less the process's own ~400 MiB (Python, torch, transformers).
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
from utils.units import size_text

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
SPECIAL_TOKENS = 2  # the most any family adds to a protein (utils.engine.families.Family.special_tokens)
MIN_WINDOW = 16  # the least run_params.max_residues (utils.inputs.config.INT_SETTINGS)
# On CPU, bigger batches only add cache misses, smaller ones add per-batch host work: in paired runs of
# the whole job (benchmarks/cpu_whole_process.py) 2,048 and 4,096 tokens were within 2 % of each other, and 4,096
# does half the batches on the host path (benchmarks/host_overhead.py); small batches keep a laptop's memory low.
CPU_TOKENS_PER_BATCH = 4096
# The largest GPU batch in tokens: past it, a batch takes long enough that larger ones gain nothing.
GPU_MAX_TOKENS_PER_BATCH = 131072
# What one model's passes may use of the memory, by device kind: a share of it (the rest: the allocator's slack, and
# on a GPU the CUDA context), less what the process holds before any model loads. On the CPU that is the same memory:
# Python, torch and transformers imported took 383 MiB here (benchmarks/memory_model.py prints it), and with it counted
# the model's estimate came within 2 % of the worker's measured peak RSS (ESM2-650M, with and without a limit).
MEMORY_SHARE = {"cpu": 0.95, "cuda": 0.8}
PROCESS_BYTES = {"cpu": 400 << 20, "cuda": 0}
# How the sources of cpu_memory_sources read in a message: the limit that applies, named as the user set it.
MEMORY_SOURCES = {
    "machine": "this machine's memory",
    "cgroup": "the memory cgroup (the container's or the job's limit)",
    "ulimit -v": "ulimit -v",
    "SLURM": "SLURM's --mem",
}


@dataclass(frozen=True)
class Limits:
    """What one device allows one model: the batch plan's budgets, where windows start, and the memory behind them."""

    max_tokens_per_batch: int  # packed tokens per batch (every protein's residues + special tokens)
    batch_size: int  # most proteins in one batch
    # Longer proteins go through overlapping windows: run_params.max_residues, else the model's own positional limit;
    # None: no protein does (never the device's choice)
    max_residues: int | None
    memory_bytes: int  # the memory these limits were derived from
    memory_source: str = "the device's memory"  # where memory_bytes comes from, as a message names it
    usable_bytes: int = 0  # what one pass of the model may take of it (usable_bytes())
    arch: Architecture | None = None  # what the memory model needs to size one pass
    dtype_bytes: int = 4

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
        lengths = np.asarray(lengths)
        clipped = lengths if self.max_residues is None else np.minimum(lengths, self.max_residues)
        clipped = clipped.astype(np.int32, copy=False)  # a protein's length fits; a proteome's plan, 4 bytes each
        return plan_batch_bounds(clipped, self.max_tokens_per_batch, self.batch_size, special_tokens, packed=True)

    def pass_residues(self, length: int) -> int:
        """Residues in the longest pass a protein of `length` residues makes: itself, or one window."""
        return length if self.max_residues is None else min(length, self.max_residues)

    def pass_bytes(self, length: int) -> int:
        """The memory model's peak for the longest pass of a protein of `length` residues, alone in its batch."""
        assert self.arch is not None, "Limits without an architecture size no pass"
        return estimate_peak_bytes(self.arch, self.dtype_bytes, self.pass_residues(length) + SPECIAL_TOKENS)

    def fits(self, length: int) -> bool:
        return self.pass_bytes(length) <= self.usable_bytes

    def first_unfit(self, lengths: Sequence[int] | np.ndarray) -> int | None:
        """The index of the longest protein when its pass does not fit this memory (then it fails its model, before
        any work), else None. Windows count at max_residues."""
        if not len(lengths):
            return None
        longest = int(np.argmax(lengths))
        return None if self.fits(int(lengths[longest])) else longest

    def does_not_fit(self, protein: str, length: int, cause: str = "") -> str:
        """The one line for a protein that cannot be embedded within this memory: `protein` names it, `cause` is
        the out-of-memory error when one was seen (else the memory model decided, before any work)."""
        residues = self.pass_residues(length)
        what = "its one pass" if residues == length else f"its windows of {residues:,} residues"
        need = size_text(self.pass_bytes(length)) if self.arch is not None else "more"
        seen = f" ({cause})" if cause else ""
        fix = "give the job more memory"
        longest = self.longest_fitting()
        if longest >= MIN_WINDOW and (self.max_residues is None or longest < self.max_residues):
            fix += (
                f", or set run_params.max_residues: {longest} to embed longer proteins in windows of that many "
                "residues (recorded per protein in meta['windowed'])"
            )
        left = (
            f"of which {size_text(self.usable_bytes)} is left for the model"
            if self.usable_bytes > 0
            else "which leaves nothing for the model once the process itself is counted"
        )
        return (
            f"protein {protein} ({length:,} residues) does not fit in memory{seen}: {what} needs about {need}, "
            f"weights included, and {self.memory_source} allows {size_text(self.memory_bytes)}, {left} (the memory "
            f"model: utils/engine/limits.py); {fix}"
        )

    def longest_fitting(self) -> int:
        """The most residues one pass may hold within this memory by the memory model (0: not even the weights)."""
        if self.arch is None:
            return 0
        return longest_one_pass(self.arch, self.dtype_bytes, self.usable_bytes)


def windows_text(max_residues: int | None) -> str:
    return "no windows" if max_residues is None else f"windows past {max_residues:,} residues"


def protein_name(sequence: str) -> str:
    """How a message names a protein where its id is not at hand: the start of its sequence, which a FASTA search
    finds."""
    return sequence[:12] + ("…" if len(sequence) > 12 else "")


def device_memory(device: str) -> tuple[int, str]:
    """(bytes, where that figure comes from) of the memory a model on `device` may use: the GPU's own memory, or on
    the CPU the lowest of the machine's memory and the limits set on this process (cpu_memory_sources)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(device).total_memory, f"the memory of {device}"
    sources = cpu_memory_sources()
    lowest = min(sources, key=lambda name: sources[name])
    return sources[lowest], MEMORY_SOURCES[lowest]


def device_memory_bytes(device: str) -> int:
    return device_memory(device)[0]


def usable_bytes(device: str, memory_bytes: int) -> int:
    """What one model's passes (weights, activations, workspace) may take of `memory_bytes` on `device`."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return int(MEMORY_SHARE[kind] * memory_bytes) - PROCESS_BYTES[kind]


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
    per_hidden, per_ffn = arch.activation_widths
    return int(dtype_bytes * (per_hidden * arch.hidden + per_ffn * arch.ffn))


def attention_workspace_bytes(arch: Architecture, longest: int) -> int:
    """T5's bias workspace for a pass whose longest protein has `longest` tokens; none for the families without a
    position bias (their attention state is O(T), counted with the activations)."""
    if not arch.position_bias:
        return 0
    return 3 * min(arch.heads * longest * longest * 4, ATTENTION_WORKSPACE_BYTES)


def estimate_peak_bytes(arch: Architecture, dtype_bytes: int, tokens: int, longest: int | None = None) -> int:
    """Weights + activations + attention workspace of one forward pass over `tokens` packed tokens, the longest
    protein `longest` tokens long (default: one protein of `tokens`)."""
    return (
        weight_bytes(arch, dtype_bytes)
        + tokens * linear_bytes_per_token(arch, dtype_bytes)
        + attention_workspace_bytes(arch, tokens if longest is None else longest)
    )


def most_tokens(arch: Architecture, dtype_bytes: int, usable: int, cap: int = 1 << 30) -> int:
    """The most tokens one pass may hold (at most `cap`) with weights + activations + workspace within `usable`
    bytes; 0 when not even the weights fit. The estimate grows with the tokens: a bisection finds it."""
    low, high = 0, cap
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_peak_bytes(arch, dtype_bytes, middle) <= usable:
            low = middle
        else:
            high = middle - 1
    return low


def longest_one_pass(arch: Architecture, dtype_bytes: int, usable: int) -> int:
    """The most residues one protein's pass may hold within `usable` bytes; 0 when not even the weights fit. The
    does-not-fit message suggests it; which proteins go through windows never depends on it."""
    return max(0, most_tokens(arch, dtype_bytes, usable) - SPECIAL_TOKENS)


def resolved_max_residues(max_residues: int | None, arch: Architecture) -> int | None:
    """Where windows start, the same on every machine: the setting, never past the model's own positional limit
    (ESM-1b: 1,022), which alone applies under `max_residues: auto`; None: no windows."""
    limits = [limit for limit in (max_residues, arch.max_residues) if limit is not None]
    return min(limits) if limits else None


def device_limits(
    arch: Architecture,
    device: str,
    precision: str,
    *,
    batch_size: int = 32,
    max_tokens_per_batch: int | None = None,
    max_residues: int | None = None,
    memory_bytes: int | None = None,
    memory_source: str = "the memory assumed",
) -> Limits:
    """The limits for one model on one device; None means auto. `memory_bytes` stands in for the device's memory
    (the pre-flight check's --assume-device-memory-gb, and tests; `memory_source` then names it)."""
    dtype_bytes = DTYPE_BYTES[precision]
    if memory_bytes is None:
        memory_bytes, memory_source = device_memory(device)
    usable = usable_bytes(device, memory_bytes)
    if max_tokens_per_batch is None:
        if device == "cpu":  # the fixed CPU budget, unless the memory allows less (a batch job's --mem)
            max_tokens_per_batch = max(SPECIAL_TOKENS + 1, most_tokens(arch, dtype_bytes, usable, CPU_TOKENS_PER_BATCH))
        else:
            max_tokens_per_batch = max(1024, most_tokens(arch, dtype_bytes, usable, GPU_MAX_TOKENS_PER_BATCH))
    windows = resolved_max_residues(max_residues, arch)
    return Limits(max_tokens_per_batch, batch_size, windows, memory_bytes, memory_source, usable, arch, dtype_bytes)


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
    heaviest, items, heaviest_bytes = 0, 0, 0
    for batch in limits.plan_batches(lengths, special_tokens):
        rest = [lengths[i] + special_tokens for i in batch if window is None or lengths[i] <= window]
        passes = [(len(rest), sum(rest), max(rest))] if rest else []
        if window is not None:
            overlap = min(window_overlap, window // 4)
            windows = sum(len(window_spans(lengths[i], window, overlap)) for i in batch if lengths[i] > window)
            size = window + special_tokens
            per_pass = min(windows, max(1, limits.max_tokens_per_batch // size))
            passes += [(per_pass, per_pass * size, size)] if windows else []
        for n, tokens, longest in passes:
            peak = estimate_peak_bytes(arch, dtype_bytes, tokens, longest)
            if peak > heaviest_bytes:
                heaviest_bytes, heaviest, items = peak, tokens, n
    return heaviest_bytes or weight_bytes(arch, dtype_bytes), items, heaviest
