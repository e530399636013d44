"""The pre-flight check behind validate_t5_embeddings.py: every model of a config on a sample of the job's proteins.

Reads the config, the FASTA splits and the models exactly as the job does (utils.running.plan.prepare: same errors, exit
2), draws a sample stratified by length that always holds the job's longest protein (deterministic from
run_params.seed), and embeds it in this process through the job's own code (the work order's limits, the embedding
loop of utils.engine.embedder, utils.engine.encode.Encoder). Then, per model, the checks of utils.checks.validation:
load, token layout, embeddings, pooling, batch invariance, agreement with an fp32 one-at-a-time reference, memory
(measured, and projected for the whole job) and throughput; and ProstT5 against ProtT5 when both are configured. One
line per check; the report goes to {log_dir}/validation_report.json.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils import exits
from utils.checks import validation as v
from utils.checks.encoder_checks import (
    Projection,
    check_batch_invariance,
    check_cross_model,
    check_embeddings,
    check_memory,
    check_pooling,
    check_reference,
    check_throughput,
    measured_peak_bytes,
    project_peak,
    reference_vector,
    reset_peak_memory,
)
from utils.checks.validation import TOLERANCES, Check, guarded, stratified_sample
from utils.engine.embedder import embed_in_batches
from utils.engine.encode import Encoder, load_encoder
from utils.engine.limits import Limits, device_memory_bytes, protein_name, windows_text
from utils.errors import UserError
from utils.running.plan import Job, plan_jobs, prepare, unique_sequences

NAME_WIDTH = 16


@dataclass
class ModelReport:
    key: str
    name: str
    family: str
    device: str
    precision: str
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    vectors: dict[str, object] = field(default_factory=dict)  # sequence → the job's vector, for cross-model checks

    def as_json(self) -> dict:
        return {
            "model": self.name,
            "family": self.family,
            "device": self.device,
            "precision": self.precision,
            "passed": all(c.passed for c in self.checks),
            "checks": {c.name: c.as_json() for c in self.checks},
            "skipped": self.skipped,
        }


class Printer:
    """One line per check: mark, model key, check name, figure; the detail under a failure or a note."""

    def __init__(self, key_width: int):
        self.key_width = key_width

    def __call__(self, key: str, check: Check) -> None:
        mark = "✓" if check.passed else "✗"
        print(f"{mark} {key:<{self.key_width}}  {check.name:<{NAME_WIDTH}}  {check.figure}", flush=True)
        below = check.detail if not check.passed else check.note
        if below:
            print(f"  {'':<{self.key_width}}  {'':<{NAME_WIDTH}}  ↳ {below}", flush=True)


def describe_tolerances() -> str:
    groups: dict = {}
    for precision, tolerance in TOLERANCES.items():
        groups.setdefault(tolerance, []).append(precision)
    invariance = "; ".join(f"{'/'.join(p)} {t.describe()}" for t, p in groups.items())
    reference = ", ".join(f"≥ {t.reference_cosine:g} ({'/'.join(p)})" for t, p in groups.items())
    return f"batch invariance {invariance}; fp32 reference cos {reference}"


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def embed_sample(encoder: Encoder, sample: list[str], limits: Limits) -> tuple[torch.Tensor, float, int]:
    """Embed the sample as a worker would (utils.engine.embedder's loop) → (vectors, seconds, windowed)."""

    encoder.embed([min(sample, key=len)])  # warm-up (kernels, allocator) outside the timing
    started = time.perf_counter()
    embedded = embed_in_batches(encoder, sample, limits)
    seconds = time.perf_counter() - started  # pooled vectors are on the host already: the device has finished
    windowed = sum(e.note is not None for e in embedded)
    return torch.stack([e.pooled for e in embedded]), seconds, windowed


def validate_model(
    job: Job, sample: list[str], job_lengths: list[int], assumed_gb: float | None, show: Callable
) -> ModelReport:

    model, order = job.model, job.orders[0]
    report = ModelReport(model.config.key, model.config.name, model.family.label, order.device, order.precision)

    def emit(name: str, check, *args) -> Check:
        result = v.guarded(name, check, *args)
        report.checks.append(result)
        show(report.key, result)
        return result

    limits = order.limits(int(assumed_gb * 1e9) if assumed_gb is not None else None)
    device = torch.device(order.device)
    shards = f", {len(job.orders)} shards (checked on {order.device})" if len(job.orders) > 1 else ""
    print(
        f"{model.config.key}: {model.config.name} on {order.device}{shards}, {order.precision}; "
        f"token budget {limits.max_tokens_per_batch:,}, batch ≤ {limits.batch_size}, "
        f"{windows_text(limits.max_residues)}",
        flush=True,
    )
    torch.manual_seed(order.run.seed)
    reset_peak_memory(device)  # this model's peak, not an earlier model's

    started = time.perf_counter()
    try:
        with v.transformers_warnings() as warnings:
            tokenizer, net = load_encoder(
                model.source, model.family, order.device, order.precision, layer_index=model.layer_index
            )
    except Exception as exc:  # noqa: BLE001 - a checkpoint that does not load is a failed check
        emit("load", _raise, exc)
        report.skipped = ["every other check (the model did not load)"]
        return report
    seconds = time.perf_counter() - started
    emit("load", v.check_load, seconds, model.family, net, warnings, model.arch, order.precision)
    emit("token layout", v.check_token_layout, tokenizer, model.family)
    try:
        encoder = Encoder(
            tokenizer, net, model.family, order.device, limits.max_residues, order.run.window_overlap,
            tokens_per_pass=limits.max_tokens_per_batch, attention=order.run.attention, limits=limits,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the job refuses this tokenizer when the model loads
        emit("embeddings", _raise, exc)
        report.skipped += ["every other check (the job refuses this tokenizer)"]
        return report
    net = None  # the encoder holds the weights; the fp32 reference may swap them for an fp32 copy
    try:
        try:
            vectors, sample_seconds, windowed = embed_sample(encoder, sample, limits)
            measured = measured_peak_bytes(device)  # weights + the sample's batches, as the job would run them
        except Exception as exc:  # noqa: BLE001
            emit("embeddings", _raise, exc)
            vectors = None
            report.skipped += ["memory", "throughput", "fp32 reference"]
        if vectors is not None:
            report.vectors = dict(zip(sample, vectors, strict=True))
            emit("embeddings", check_embeddings, vectors, model.dim, windowed)

        # Proteins the job embeds in one pass; for invariance, eight that fit one batch under the token budget.
        within = sorted((s for s in sample if not encoder.over_limit(s)), key=len)
        short = [s for s in within if len(s) <= 512] or within
        emit("pooling clean", check_pooling, encoder, v.spread(short, 4))
        fit = [s for s in within if 8 * (len(s) + model.family.special_tokens) <= limits.max_tokens_per_batch]
        subset = v.spread(fit if len(fit) >= 2 else within, 8)
        tolerance = v.TOLERANCES[order.precision]
        emit("batch invariance", check_batch_invariance, encoder, subset, tolerance, order.run.seed)

        if vectors is not None:
            emit("memory", _memory, model, order, limits, measured, sample, job_lengths)
            where = f"{order.device} ({order.precision})"
            residues = sum(len(s) for s in sample)
            emit("throughput", check_throughput, residues, sample_seconds, sum(job_lengths), len(job.orders), where)
            # Never skipped: with every sampled protein past max_residues, the shortest go through windows
            compared = subset or sorted(sample, key=len)[:8]
            emit("fp32 reference", _reference, encoder, order, model, compared, report.vectors)
    finally:
        encoder.close()
        encoder.model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def _raise(exc: Exception) -> Check:
    raise exc


def _memory(model, order, limits, measured: tuple[int, str], sample: list[str], job_lengths: list[int]) -> Check:
    def project(lengths: list[int]) -> Projection:
        return project_peak(limits, model.arch, order.precision, lengths, model.family, order.run.window_overlap)

    sample_estimate = project([len(s) for s in sample]).peak_bytes
    peak, what = measured
    unfit = limits.first_unfit(job_lengths)
    longest = max(sample, key=len)  # the job's longest is in the sample (stratified_sample)
    problem = None if unfit is None else limits.does_not_fit(protein_name(longest), len(longest))
    device = torch.device(order.device)
    return check_memory(peak, what, sample_estimate, project(job_lengths), limits, device, problem)


def _reference(encoder, order, model, sequences: list[str], job_vectors: dict) -> Check:
    """fp32, one protein at a time, unpadded (proteins past max_residues: window by window, as the job's windows
    lie); on GPU after a half-precision run, a fresh fp32 copy of the weights."""
    if order.precision == "fp32":
        tokenizer, net, where = encoder.tokenizer, encoder.model, order.device
    else:
        encoder.model = None  # the half-precision weights go before the fp32 copy comes
        gc.collect()
        if torch.device(order.device).type == "cuda":
            torch.cuda.empty_cache()
        fits = model.arch.params * 4 <= 0.8 * device_memory_bytes(order.device)
        where = order.device if fits else "cpu"
        tokenizer, net = load_encoder(model.source, model.family, where, "fp32", layer_index=model.layer_index)
    job = torch.stack([job_vectors[s] for s in sequences])
    window, overlap = encoder.max_residues, order.run.window_overlap
    reference = torch.stack([reference_vector(tokenizer, net, model.family, s, window, overlap) for s in sequences])
    windowed = sum(encoder.over_limit(s) for s in sequences)
    return check_reference(job, reference, order.precision, where, windowed)


def cross_model_checks(reports: list[ModelReport], families: dict[str, str], show: Callable) -> None:
    """ProstT5 vs ProtT5 on the same sample: recorded under the ProstT5 model's key."""

    prost = [r for r in reports if families[r.key] == "prost_t5" and r.vectors]
    prot = [r for r in reports if families[r.key] == "prot_t5" and r.vectors]
    for a in prost:
        for b in prot:
            common = [s for s in a.vectors if s in b.vectors]
            check = guarded(
                f"differs from {b.key}",
                check_cross_model,
                torch.stack([a.vectors[s] for s in common]),
                torch.stack([b.vectors[s] for s in common]),
                b.key,
            )
            a.checks.append(check)
            show(a.key, check)


def _strict_json(value):
    """NaN and inf (a NaN model's figures) as text: strict JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def write_report(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(_strict_json(document), indent=2, default=str, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_preflight_check(
    config_path: Path, num_proteins: int = 100, assume_device_memory_gb: float | None = None
) -> int:
    """The whole pre-flight check: prepare the job (the same checks, exit 2), sample, check every model, report.
    Returns an exit code: exits.OK when every check passed, exits.FAILED otherwise."""
    quiet_transformers()
    try:
        config, splits, models = prepare(config_path)
    except UserError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return exits.BAD_INPUT

    sequences = unique_sequences(splits)
    job_lengths = [len(s) for s in sequences]
    sample = [sequences[i] for i in stratified_sample(job_lengths, num_proteins, config.run.seed)]
    print(
        f"sample: {len(sample)} of {len(sequences):,} unique proteins (stratified by length, seed {config.run.seed}), "
        f"{sum(map(len, sample)):,} residues, {min(map(len, sample))}-{max(map(len, sample)):,} per protein "
        f"(the job's longest included)"
    )
    print(f"tolerances: {describe_tolerances()}")
    if assume_device_memory_gb is not None:
        print(f"assuming {assume_device_memory_gb:g} GB of device memory (--assume-device-memory-gb)")

    show = Printer(max(len(m.config.key) for m in models))
    reports = []
    for job in plan_jobs(config, splits, models):
        reports.append(validate_model(job, sample, job_lengths, assume_device_memory_gb, show))
    cross_model_checks(reports, {m.config.key: m.family.name for m in models}, show)

    failures = [f"{r.key}: {c.name}: {c.figure}; {c.detail}" for r in reports for c in r.checks if not c.passed]
    passed = not failures
    path = config.log_dir / "validation_report.json"
    write_report(
        path,
        {
            "config": str(config.path),
            "passed": passed,
            "failures": failures,
            "sample": {"proteins": len(sample), "residues": sum(map(len, sample)), "seed": config.run.seed},
            "assumed_device_memory_gb": assume_device_memory_gb,
            "tolerances": {p: vars(t) for p, t in TOLERANCES.items()},
            "models": {r.key: r.as_json() for r in reports},
        },
    )
    if passed:
        print("ALL VALIDATIONS PASSED")
    else:
        print("VALIDATION FAILED")
        for line in failures:
            print(f"  ✗ {line}")
    print(f"report: {path}")
    return exits.OK if passed else exits.FAILED
