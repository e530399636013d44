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

import numpy as np

from utils.checks.resolve import ResolvedModel
from utils.engine.limits import heaviest_pass, protein_name
from utils.inputs.fasta import Record, Records, sequence_lengths
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


def length_line(lengths: Sequence[int] | np.ndarray) -> str:
    ordered = np.sort(np.asarray(lengths, dtype=np.int64)).tolist()
    marks = ", ".join(f"p{q} {percentile(ordered, q):,}" for q in PERCENTILES)
    return f"length min {ordered[0]:,}, {marks}, max {ordered[-1]:,}"


def split_lines(config: Config, splits: dict[str, Records]) -> list[str]:
    """Per split: proteins, distinct sequences, residues and length percentiles; then the job's distinct sequences
    and duplicates, from the positions of the splits' proteins in the job's unique set (no string per protein)."""
    from utils.inputs.unique import shared_splits, unique_of

    splits = shared_splits(splits)
    unique = unique_of(splits)
    lines = ["splits:"]
    within = distinct_per_split = 0
    for name, records in splits.items():
        distinct = records.sequences.distinct()  # type: ignore[attr-defined]  # shared_splits made them SharedSequences
        within += len(records) - distinct
        distinct_per_split += distinct
        lengths = records.lengths()
        lines.append(
            f"  {name}: {len(records):,} proteins, {distinct:,} unique, {int(lengths.sum()):,} residues; "
            f"{length_line(lengths)}  ({config.splits[name]})"
        )
    total = sum(len(records) for records in splits.values())
    across = distinct_per_split - len(unique)
    lines.append(
        f"  all: {total:,} proteins, {len(unique):,} unique sequences embedded once each ({total - len(unique):,} "
        f"duplicates: {within:,} within a split, {across:,} more across splits), {int(unique.lengths().sum()):,} "
        "unique residues"
    )
    return lines


def window_reason(model: ResolvedModel, max_residues: int | None) -> str:
    if max_residues is None:
        return ""
    if model.arch.max_residues is not None and max_residues == model.arch.max_residues:
        return f"longer than the {max_residues:,} residues the model's learned positions reach"
    return f"longer than run_params.max_residues ({max_residues:,})"


def plan_order(
    config: Config, order: WorkOrder, held: Sequence[bool] | None = None, name: Callable[[str], str] = protein_name
) -> OrderPlan:
    """What the worker of `order` will do: its device limits (utils.engine.limits, as the worker asks them), batch plan,
    windows, forward FLOPs, and whether its longest pass fits the memory, for the sequences its store partition does
    not hold yet (`held`, one flag each). `name(sequence)` names a protein that does not fit (the dry run: its id)."""
    from utils.engine.batching import window_spans

    model = order.model
    limits = order.limits()
    special = model.family.special_tokens
    todo = np.arange(len(order.sequences)) if held is None else np.flatnonzero(~np.asarray(held, dtype=bool))
    lengths = sequence_lengths(order.sequences)[todo].tolist()
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
        unfit=None if unfit is None else limits.does_not_fit(name(order.sequences[int(todo[unfit])]), lengths[unfit]),
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
    splits: dict[str, Records],
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
    total_residues = int(sequence_lengths(unique_sequences(splits)).sum())
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
            held = store_held(order)
            plan = plan_order(config, order, held, lambda sequence: first_id(splits, sequence))
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
            if held.any():
                lines.append(
                    f"      store: {int(held.sum()):,} of its {len(held):,} sequences already embedded with these "
                    f"settings (not computed again; the plan above is the rest) in {store_partition(order)}"
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
    lines.append(store_line(config, jobs))
    wall = max(device_seconds.values(), default=0.0)
    lines.append(
        f"projected wall time: {duration(wall)} (the busiest device; model loading not counted; assumed MFU "
        f"{ASSUMED_MFU['cuda']} on GPU, {ASSUMED_MFU['cpu']} on CPU of the measured matmul rate)"
    )
    return lines


def store_held(order: WorkOrder) -> np.ndarray:
    """Which of the order's sequences its partition of the chunk store holds (headers read, nothing moved)."""
    from utils.inputs.unique import digests_of
    from utils.running.store import ChunkStore

    digests = digests_of(order.sequences)
    return ChunkStore(order.store_dir, order.chunk_settings).claimed(digests)


def store_partition(order: WorkOrder) -> str:
    from utils.running.store import ChunkStore

    return str(ChunkStore(order.store_dir, order.chunk_settings).directory)


def store_line(config: Config, jobs: list) -> str:
    """The store as a whole: its partitions and size, and those this config does not use."""
    from utils.running.chunks import fingerprint
    from utils.running.store import partitions

    found = partitions(config.store)
    if not found:
        return f"store: {config.store}: empty; every vector computed goes there, for this run and any later one"
    used = {fingerprint(order.chunk_settings) for job in jobs for order in job.orders}
    earlier = [p for p in found if p.settings is None]
    unused = [p for p in found if p.settings is not None and p.fingerprint not in used]
    text = f"store: {config.store}: {len(found) - len(earlier)} partition(s)"
    if earlier:
        text += f" and {len(earlier)} directory(ies) of the earlier layout (read as they are; tidied by the next run)"
    text += f", {size_text(sum(p.bytes for p in found))}"
    if unused:
        text += (
            f"; {len(unused)} not used by this config ({size_text(sum(p.bytes for p in unused))}: other models or "
            "settings; `--prune-store --dry-run` lists them)"
        )
    return text
