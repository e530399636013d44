"""The pre-flight checks that run the encoder on the sample: embeddings, clean pooling, batch invariance, agreement
with an unpadded fp32 reference and between models, the memory peak projected to the whole job, and throughput.
What a check is, the tolerances, the sample and the checkpoint's own checks (load, token layout) are in
utils/checks/validation.py.
"""

from __future__ import annotations

import math
import random
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils.checks.validation import CROSS_MODEL_MAX_COSINE, POOLING_CLEAN_RELATIVE, TOLERANCES, Check, Tolerance
from utils.engine.batching import window_spans
from utils.engine.encode import Encoder
from utils.engine.families import Architecture, Family
from utils.engine.limits import Limits, heaviest_pass


# -- embeddings of the sample -------------------------------------------------------------------------------------
def check_embeddings(vectors: torch.Tensor, hidden: int, windowed: int) -> Check:
    finite_rows = torch.isfinite(vectors).all(dim=1)
    bad = int((~finite_rows).sum())
    notes = f"; {windowed} embedded in windows" if windowed else ""
    figure = f"shape [{vectors.shape[0]}, {vectors.shape[1]}]; {bad} non-finite{notes}"
    values = {"shape": list(vectors.shape), "non_finite_rows": bad, "windowed": windowed}
    if vectors.dim() != 2 or vectors.shape[1] != hidden:
        return Check("embeddings", False, figure, f"expected [N, {hidden}] (the model's hidden size)", values)
    if bad:
        return Check("embeddings", False, figure, f"{bad} of {vectors.shape[0]} vectors contain NaN or inf", values)
    return Check("embeddings", True, figure, f"[N, D] with D = hidden size {hidden}, all finite", values)


def check_pooling(encoder: Encoder, sequences: list[str]) -> Check:
    """One batch through the job's forward; recompute each mean with own slicing of its hidden rows."""
    if not sequences:
        return Check("pooling clean", True, "not applicable", "no sample protein within max_residues")
    offset, specials = encoder.family.residue_offset, encoder.family.special_tokens
    tokens = encoder.tokenize(sequences)
    pooled, hidden = encoder.forward(tokens)
    pooled, hidden = pooled.double().cpu(), hidden.double().cpu()
    rows = protein_rows(hidden, [len(s) + specials for s in sequences])
    own = torch.stack([r[offset : offset + len(s)].mean(dim=0) for r, s in zip(rows, sequences, strict=True)])
    with_specials = torch.stack([r[: len(s) + specials].mean(dim=0) for r, s in zip(rows, sequences, strict=True)])
    # tensor reductions, not Python's max/min: a NaN must propagate and fail the check
    clean = float((pooled - own).abs().amax())
    contamination = float((pooled - with_specials).abs().amax(dim=1).min())
    scale = float(own.abs().amax())
    tolerance = POOLING_CLEAN_RELATIVE * max(1.0, scale) if math.isfinite(scale) else 0.0
    figure = f"max |Δ| {clean:.1e} vs own residue mean; {contamination:.1e} vs mean with specials"
    detail = (
        f"{len(sequences)} proteins ({min(map(len, sequences))}-{max(map(len, sequences))} residues) in one "
        f"batch; residue rows [{offset}, {offset}+L); must be ≤ {tolerance:.0e} and differ from the "
        f"with-specials mean by > 10× that"
    )
    values = {"max_abs_vs_own": clean, "min_max_abs_vs_with_specials": contamination, "tolerance": tolerance}
    passed = clean <= tolerance and contamination > 10 * tolerance  # False for NaN too
    return Check("pooling clean", passed, figure, detail, values)


def protein_rows(hidden: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Each protein's token rows, sliced here from the sizes alone: packed hidden [N, D] holds them end to end, padded
    hidden [B, T, D] (transformers' forward) one per row."""
    if hidden.dim() == 3:
        return [hidden[i, :size] for i, size in enumerate(sizes)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [hidden[start : start + size] for start, size in zip(starts, sizes, strict=True)]


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(min cosine over rows, max |Δ|) of two [N, D] stacks."""
    cosine = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    return float(cosine.min()), float((a.double() - b.double()).abs().max())


def check_batch_invariance(encoder: Encoder, sequences: list[str], tolerance: Tolerance, seed: int) -> Check:
    """All together, shuffled pairs and one at a time must give the same vectors (padding masked)."""
    if len(sequences) < 2:
        return Check("batch invariance", True, "not applicable", "fewer than 2 proteins within max_residues")
    alone = torch.stack([encoder.embed([s])[0].pooled for s in sequences])
    together = torch.stack([e.pooled for e in encoder.embed(sequences)])
    order = list(range(len(sequences)))
    random.Random(seed).shuffle(order)
    paired = [None] * len(sequences)
    for k in range(0, len(order), 2):
        group = order[k : k + 2]
        for i, embedded in zip(group, encoder.embed([sequences[i] for i in group]), strict=True):
            paired[i] = embedded.pooled
    cos_a, abs_a = _compare(together, alone)
    cos_b, abs_b = _compare(torch.stack(paired), alone)
    cos, worst = min(cos_a, cos_b), max(abs_a, abs_b)
    passed = cos >= tolerance.invariance_cosine and worst <= tolerance.invariance_max_abs
    figure = f"min cos {cos:.7f}, max |Δ| {worst:.1e} (tol {tolerance.describe()})"
    lengths = sorted(map(len, sequences))
    detail = (
        f"{len(sequences)} proteins ({lengths[0]}-{lengths[-1]} residues): all in one batch and shuffled pairs "
        "vs one at a time"
    )
    return Check("batch invariance", passed, figure, detail, {"min_cosine": cos, "max_abs": worst})


@torch.inference_mode()
def reference_vector(
    tokenizer: Any, model: torch.nn.Module, family: Family, sequence: str, window: int | None = None, overlap: int = 0
) -> torch.Tensor:
    """Unpadded, alone, no attention mask, own slicing, float64 mean: independent of Encoder and
    utils.engine.pooling. Past `window` residues, window by window as the job lays them (utils.engine.batching.
    window_spans, overlap at most a quarter of the window), each residue's rows averaged over the windows that
    hold it, then the mean."""
    device = next(model.parameters()).device
    spans = [(0, len(sequence))]
    if window is not None and len(sequence) > window:
        spans = window_spans(len(sequence), window, min(overlap, window // 4))
    total, count = None, torch.zeros(len(sequence), 1, dtype=torch.float64)
    for start, end in spans:
        ids = tokenizer(family.model_text(sequence[start:end]), return_tensors="pt")["input_ids"].to(device)
        hidden = model(input_ids=ids).last_hidden_state[0].double().cpu()
        rows = hidden[family.residue_offset : family.residue_offset + end - start]
        if total is None:
            total = torch.zeros(len(sequence), rows.shape[1], dtype=torch.float64)
        total[start:end] += rows
        count[start:end] += 1
    return (total / count).mean(dim=0)


def check_reference(job: torch.Tensor, reference: torch.Tensor, precision: str, where: str, windowed: int = 0) -> Check:
    threshold = TOLERANCES[precision].reference_cosine
    cos, worst = _compare(job, reference)
    passed = cos >= threshold
    figure = f"min cos {cos:.7f} (tol ≥ {threshold:g}), max |Δ| {worst:.1e}"
    windows = f" ({windowed} in windows, the reference window by window)" if windowed else ""
    figure += windows
    detail = (
        f"{job.shape[0]} proteins{windows}: the job's batched {precision} vectors vs an fp32 reference on {where}, "
        "one protein at a time, unpadded"
    )
    values = {"min_cosine": cos, "max_abs": worst, "windowed": windowed}
    return Check("fp32 reference", passed, figure, detail, values)


def check_cross_model(prost: torch.Tensor, prot: torch.Tensor, other_key: str) -> Check:
    name = f"differs from {other_key}"
    if prost.shape != prot.shape:
        return Check(name, True, f"dims {prost.shape[1]} vs {prot.shape[1]}", "different sizes: different encoders")
    cosine = torch.nn.functional.cosine_similarity(prost.double(), prot.double(), dim=1)
    mean = float(cosine.mean())
    passed = mean < CROSS_MODEL_MAX_COSINE
    figure = f"mean cos {mean:.4f} over {prost.shape[0]} proteins (must be < {CROSS_MODEL_MAX_COSINE})"
    detail = "ProstT5 and ProtT5 on the same proteins; near-identical vectors mean the same encoder twice"
    return Check(name, passed, figure, detail, {"mean_cosine": mean})


# -- memory -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Projection:
    peak_bytes: int  # the heaviest forward pass of the job
    items: int  # its batch
    tokens: int
    longest: int  # residues of the job's longest protein
    windowed: bool  # the longest goes through windows of max_residues
    window: int
    overlap: int


def project_peak(
    limits: Limits, arch: Architecture, precision: str, lengths: Sequence[int], family: Family, window_overlap: int
) -> Projection:
    """The job's batch plan over its lengths (utils.engine.limits, as the worker plans it), and the estimated peak of
    its heaviest forward pass."""
    peak, items, tokens = heaviest_pass(limits, arch, precision, lengths, family.special_tokens, window_overlap)
    longest = max(lengths)
    window = limits.max_residues
    overlap = 0 if window is None else min(window_overlap, window // 4)
    windowed = window is not None and longest > window
    return Projection(peak, items, tokens, longest, windowed, window or longest, overlap)


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak over (GPU: the allocator's; CPU: the process's peak RSS, Linux ≥ 4.0), so that a model's figure
    is its own and not an earlier model's in the same process."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak stays the process's since it started, an over-estimate


def measured_peak_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "GPU peak allocated"
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")), "process RSS peak"
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS peak"  # Linux: kB


def check_memory(
    measured: int,
    measured_what: str,
    sample_estimate: int,
    job: Projection,
    limits: Limits,
    device: torch.device,
    unfit: str | None = None,
) -> Check:
    """The job's heaviest pass against the memory the model may use, the job's longest protein whole (`unfit`: why
    it does not fit, utils.engine.limits.Limits.does_not_fit), and on the CPU the sample's own process peak against
    the limit itself: a worker over it is killed."""
    capacity, source, usable = limits.memory_bytes, limits.memory_source, limits.usable_bytes
    projected = job.peak_bytes
    notes = []
    if device.type == "cuda" and sample_estimate and measured > sample_estimate:
        # The estimator is meant to over-estimate; where the sample shows otherwise, scale the projection up.
        ratio = measured / sample_estimate
        projected = int(projected * ratio)
        notes.append(f"estimator was {ratio:.2f}× low on the sample; projection scaled")
    if job.windowed:
        plan = (
            f"longest protein {job.longest:,} residues > max_residues {job.window:,}: embedded in windows of "
            f"{job.window:,} (overlap {job.overlap}), projected for the window"
        )
    else:
        plan = f"longest protein {job.longest:,} residues in one pass"
    fraction = projected / capacity if capacity else math.inf
    figure = (
        f"sample {measured_what} {gb(measured)}; job peak projected {gb(projected)} "
        f"({job.items} × {job.tokens:,} tokens) of {gb(capacity)} ({fraction:.0%}, {source})"
    )
    problems = []
    if unfit:
        problems.append(unfit)
    elif projected > usable:
        problems.append(
            f"the heaviest batch does not fit the {gb(usable)} of {gb(capacity)} ({source}) the model may use on "
            f"{device}: lower run_params.max_tokens_per_batch / batch_size"
        )
    if device.type == "cpu" and measured > capacity:
        problems.append(
            f"this process peaked at {gb(measured)} on the sample, above the {gb(capacity)} that {source} allows: "
            "the job's workers would be killed; give the job more memory"
        )
    detail = "; ".join([plan, *notes, *problems])
    if not problems and projected > 0.9 * usable:
        detail += "; close to the memory the model may use"
    values = {
        "measured_bytes": measured,
        "measured": measured_what,
        "projected_peak_bytes": projected,
        "capacity_bytes": capacity,
        "capacity_source": source,
        "heaviest_batch": {"items": job.items, "tokens": job.tokens},
        "longest_residues": job.longest,
        "windowed": job.windowed,
        "window_residues": job.window if job.windowed else None,
    }
    return Check("memory", not problems, figure, detail, values, note=detail)


# -- time ---------------------------------------------------------------------------------------------------------
def check_throughput(residues: int, seconds: float, job_residues: int, devices: int, where: str) -> Check:
    rate = residues / seconds if seconds > 0 else math.inf
    projected = job_residues / rate / devices if rate else math.inf
    shards = f" over {devices} devices" if devices > 1 else ""
    figure = f"{rate:,.0f} residues/s on {where}; full job {job_residues:,} residues ≈ {duration(projected)}{shards}"
    detail = f"{residues:,} sample residues in {seconds:.2f} s (model load excluded)"
    values = {"residues_per_second": rate, "projected_seconds": projected, "job_residues": job_residues}
    return Check("throughput", math.isfinite(rate) and rate > 0, figure, detail, values)


# -- formatting ---------------------------------------------------------------------------------------------------
def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
