"""`--dry-run`: what a config means before anything runs. Reads the config, the FASTA files and each checkpoint's
config and tokenizer files (no weights), plans exactly as the job would (the same unique sequences, shards, device
limits from utils.engine.limits and batch plan), and prints: proteins, unique sequences and duplicates, residues and
length percentiles per split; per model and device the proteins that will go through windows and why, the batches under
the token budget, the memory the worker will have and whether its longest protein fits it (else the model would fail:
the line says which protein and the fix), and the projected time; the disk the outputs and chunks need. Nothing is
loaded or written.

Projected time = forward FLOPs / (the device's matmul rate × an assumed model FLOP utilisation):
- FLOPs per protein: `Architecture.matmul_flops` (two per weight per token, plus attention's QKᵀ and AV), over the
  tokens each protein really runs (its windows, for proteins past the one-pass limit), through the layers the
  configured `layer` keeps;
- the matmul rate is measured here, on each device, in the run's precision (a short dense matmul: ~0.2 s);
- the utilisation is an assumption (ASSUMED_MFU), from what the engine reached in this repository's benchmarks
  (benchmarks/results: the engine's MFU against the same matmul rate). Model loading and the merge are not counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from utils.checks.resolve import ResolvedModel
from utils.engine.limits import heaviest_pass, protein_name
from utils.inputs.fasta import Record
from utils.inputs.keys import Config
from utils.units import size_text

if TYPE_CHECKING:
    from utils.running.plan import WorkOrder
    from utils.running.shards import Shard

# The share of the measured matmul rate the engine's forward passes reach. GPU: 0.07 (ProtT5-XL) to 0.16 (ESM2-3B)
# on an H100 (benchmarks/results/gpu/*.txt); CPU: 0.59 on 2 cores (benchmarks/results/cpu_throughput.json). Rerun
# those benchmarks on your hardware to replace the assumption with a measurement.
ASSUMED_MFU = {"cuda": 0.10, "cpu": 0.5}
PERCENTILES = (50, 90, 99)
SHOWN = 5  # example proteins listed per model


@dataclass(frozen=True)
class OrderPlan:
    """One work order as the job would run it."""

    label: str
    device: str
    precision: str
    proteins: int
    residues: int
    batches: int
    windowed: list[tuple[int, int]]  # (length, windows) per protein past max_residues
    window_reason: str
    max_tokens_per_batch: int
    max_residues: int | None  # None: no windows
    flops: float
    memory: str  # the memory the order runs in, and what its heaviest pass needs
    unfit: str | None  # the one line of a protein that does not fit that memory (the model would fail), or None


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def length_line(lengths: Sequence[int]) -> str:
    ordered = sorted(lengths)
    marks = ", ".join(f"p{q} {percentile(ordered, q):,}" for q in PERCENTILES)
    return f"length min {ordered[0]:,}, {marks}, max {ordered[-1]:,}"


def split_lines(config: Config, splits: dict[str, list[Record]]) -> list[str]:
    lines = ["splits:"]
    seen: Counter[str] = Counter()
    within = 0
    for name, records in splits.items():
        here = Counter(r.sequence for r in records)
        within += sum(count - 1 for count in here.values())
        residues = sum(len(r.sequence) for r in records)
        lines.append(
            f"  {name}: {len(records):,} proteins, {len(here):,} unique, {residues:,} residues; "
            f"{length_line([len(r.sequence) for r in records])}  ({config.splits[name]})"
        )
        seen.update(here.keys())
    unique = len(seen)
    total = sum(len(records) for records in splits.values())
    across = sum(count - 1 for count in seen.values())
    residues = sum(len(s) for s in seen)
    lines.append(
        f"  all: {total:,} proteins, {unique:,} unique sequences embedded once each ({total - unique:,} duplicates: "
        f"{within:,} within a split, {across:,} more across splits), {residues:,} unique residues"
    )
    return lines


def window_reason(model: ResolvedModel, max_residues: int | None) -> str:
    if max_residues is None:
        return ""
    if model.arch.max_residues is not None and max_residues == model.arch.max_residues:
        return f"longer than the {max_residues:,} residues the model's learned positions reach"
    return f"longer than run_params.max_residues ({max_residues:,})"


def plan_order(config: Config, order: WorkOrder, name: Callable[[str], str] = protein_name) -> OrderPlan:
    """What the worker of `order` will do: its device limits (utils.engine.limits, as the worker asks them), batch plan,
    windows, forward FLOPs, and whether its longest pass fits the memory. `name(sequence)` names a protein that does
    not fit (the dry run: its id)."""
    from utils.engine.batching import window_spans

    model = order.model
    limits = order.limits()
    special = model.family.special_tokens
    lengths = [len(s) for s in order.sequences]
    batches = limits.plan_batches(lengths, special)
    window = limits.max_residues
    windowed, flops = [], 0.0
    for n in lengths:
        over = window is not None and n > window
        # the overlap as utils.engine.encode.Encoder.embed_windows takes it
        spans = window_spans(n, window, min(config.run.window_overlap, window // 4)) if over else [(0, n)]
        if len(spans) > 1:
            windowed.append((n, len(spans)))
        flops += sum(model.arch.matmul_flops(end - start + special, model.layer_index) for start, end in spans)
    peak = heaviest_pass(limits, model.arch, order.precision, lengths, special, config.run.window_overlap)[0]
    unfit = limits.first_unfit(lengths)
    return OrderPlan(
        label=order.label,
        device=order.device,
        precision=order.precision,
        proteins=len(lengths),
        residues=sum(lengths),
        batches=len(batches),
        windowed=windowed,
        window_reason=window_reason(model, window),
        max_tokens_per_batch=limits.max_tokens_per_batch,
        max_residues=window,
        flops=flops,
        memory=f"{size_text(limits.memory_bytes)} ({limits.memory_source}), {size_text(max(0, limits.usable_bytes))} "
        f"of it for the model; the heaviest pass needs about {size_text(peak)}",
        unfit=None if unfit is None else limits.does_not_fit(name(order.sequences[unfit]), lengths[unfit]),
    )


def first_id(splits: dict[str, list[Record]], sequence: str) -> str:
    """The id of the first protein with this sequence, in split order."""
    return next(r.id for records in splits.values() for r in records if r.sequence == sequence)


def matmul_rate(device: str, precision: str) -> float:
    """Dense matmul FLOP/s on `device` in `precision`, the best of three short timings."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    n, repeats = (1024, 4) if device == "cpu" else (4096, 20)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):
        a @ b
        if device != "cpu":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize(device)
        best = max(best, repeats * 2.0 * n**3 / (time.perf_counter() - started))
    return best


def flop_text(value: float, per_second: bool = False) -> str:
    """FLOPs with an SI prefix: 2.4 GFLOP, 33.1 TFLOP (/s when a rate)."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:,.1f} {prefix}FLOP" + ("/s" if per_second else "")
    return f"{value:,.0f} FLOP" + ("/s" if per_second else "")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run(
    config: Config,
    splits: dict[str, list[Record]],
    models: list[ResolvedModel],
    rate: dict[tuple[str, str], float] | None = None,
    shard: Shard | None = None,
) -> list[str]:
    """The plan as lines of text. `rate`: (device, precision) → matmul FLOP/s, measured where not given; `shard`
    (--shard I/N): the plan of that array task alone."""
    from utils.checks.preflight import estimate_output_bytes
    from utils.engine.families import tool_model_name
    from utils.running.plan import plan_jobs, unique_sequences

    rates = dict(rate or {})
    total_residues = sum(len(s) for s in unique_sequences(splits))
    lines = [f"dry run of {config.path}: nothing is loaded or written", *split_lines(config, splits), "models:"]
    device_seconds: Counter[str] = Counter()
    device_flop_per_residue: Counter[str] = Counter()
    jobs = plan_jobs(config, splits, models, shard)  # the job's own plan: shards, precisions, work orders
    if shard is not None and jobs:
        mine = sum(len(order.sequences) for order in jobs[0].orders)
        lines.insert(
            1, f"shard {shard}: {mine:,} of the {len(unique_sequences(splits)):,} unique sequences (the plan below is "
            "this shard's; the disk line is the whole job's)",
        )  # fmt: skip
    for job in jobs:
        model = job.model
        layer = model.layer_index
        layer_text = "last layer" if layer == model.arch.layers else f"hidden state {layer} of {model.arch.layers}"
        lines.append(
            f"  {model.config.key}: {model.config.name}: {model.family.label} "
            f"({tool_model_name(model.family, model.arch, layer)}), {model.arch.layers} layers × {model.arch.hidden}, "
            f"{model.arch.params / 1e6:,.1f} M parameters, {layer_text}"
        )
        for order in job.orders:
            plan = plan_order(config, order, lambda sequence: first_id(splits, sequence))
            device, precision = order.device, order.precision
            if (device, precision) not in rates:
                rates[(device, precision)] = matmul_rate(device, precision)
            speed = rates[(device, precision)] * ASSUMED_MFU["cpu" if device == "cpu" else "cuda"]
            seconds = plan.flops / speed
            device_seconds[device] += seconds
            share = plan.residues / max(total_residues, 1)
            device_flop_per_residue[device] += 2 * model.arch.params * layer / model.arch.layers * share
            lines.append(
                f"    {plan.label} on {device} ({precision}): {plan.proteins:,} proteins, {plan.residues:,} residues "
                f"in {plan.batches:,} batches (packed, ≤ {plan.max_tokens_per_batch:,} tokens, "
                f"≤ {config.run.batch_size} proteins; no padding)"
            )
            if plan.windowed:
                examples = ", ".join(f"{n:,} residues → {w} windows" for n, w in sorted(plan.windowed)[-SHOWN:][::-1])
                lines.append(f"      windows: {len(plan.windowed):,} protein(s), {plan.window_reason}: {examples}")
            else:
                lines.append("      windows: none (every protein in one pass)")
            lines.append(f"      memory: {plan.memory}")
            if plan.unfit:
                lines.append(f"      will fail: {plan.unfit}")
            lines.append(
                f"      work: {flop_text(plan.flops)} → projected {duration(seconds)} (measured "
                f"{flop_text(rates[(device, precision)], per_second=True)} matmul × assumed MFU "
                f"{speed / rates[(device, precision)]:g})"
            )
    lines.append("devices (models on one device run one after another; devices at the same time):")
    for device, seconds in device_seconds.items():
        lines.append(
            f"  {device}: {flop_text(device_flop_per_residue[device])} per residue (2 × the parameters of its models "
            f"and shards), projected {duration(seconds)}"
        )
    needed = estimate_output_bytes(config, splits, models)
    lines.append(f"disk: about {size_text(needed)} for the outputs and checkpoint chunks in {config.output_dir}")
    wall = max(device_seconds.values(), default=0.0)
    lines.append(
        f"projected wall time: {duration(wall)} (the busiest device; model loading not counted; assumed MFU "
        f"{ASSUMED_MFU['cuda']} on GPU, {ASSUMED_MFU['cpu']} on CPU of the measured matmul rate)"
    )
    return lines
