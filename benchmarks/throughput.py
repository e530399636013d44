#!/usr/bin/env python
"""Throughput and memory: the seed's loop (and, for ESM2, a fair-esm-style loop) against the main job's engine, in one
process, same model, same proteins.

    python benchmarks/throughput.py --device cpu --json benchmarks/results/cpu_throughput.json
    python benchmarks/throughput.py --device cuda:0 --arch prot_t5_xl --proteins 2000 --json $OUT/prot_t5_xl.json
    python benchmarks/throughput.py --device cuda:0 --arch esm2_3b --attention flex --profile $OUT/esm2_3b.txt

Proteins: synthetic and CAFA-like, seeded: log-normal lengths (median 380, sigma 0.75) clipped to [30, --max-length],
plus the --long proteins, ~5% duplicates. GPU defaults: clipped at 35,000, long = one 10,000 and one 35,000.
CPU defaults (two cores must finish in minutes): clipped at 1,000 and long = one 10,000 only (no 35,000).
Models: the real architectures with random weights (no download), written to a temporary directory with the family's
real tokenizer files, then loaded by each side's own loading code.

Sides, on the same proteins:
  seed         benchmarks/seed_loop.py: batches of 32 by length, truncation to 1024 tokens (so the long proteins are
               cut to 1023 residues), eager attention, fp16 through from_pretrained (T5's `wo` in fp32) on GPU / fp32
               on CPU, empty_cache after each batch, every protein (duplicates included).
  fair_esm     (ESM2 only; --skip-fair-esm drops it) benchmarks/fair_esm_loop.py: fair-esm's extract.py emulated on
               transformers' EsmModel with sdpa, fp16 on GPU: length-sorted batches of up to 4,096 tokens, truncation
               at 1,022 residues (fair-esm itself is not installed).
  engine       the engine built as utils.Embedder builds it (utils.checks.resolve.resolve_model,
               utils.engine.limits.device_limits, utils.engine.encode.load_encoder, Encoder, the fp32 redo of
               utils.engine.finite), here with --attention passed to Encoder, which Embedder does not expose; then
               utils.engine.embedder.embed_in_batches, the job's own batch loop (plan batches, tokenize ahead,
               Encoder.embed, fp32 redo of non-finite proteins), duplicates once. Chunk writes, the final files and
               the worker process spawn are left out. Every residue is embedded; over-long proteins go to windows,
               which the result records.
  engine_sdpa  (--variants current,sdpa) transformers' forward (`attention="transformers"`), T5 loaded with plain
               "sdpa": the engine before its own packed forward.
  engine_b128  (--variants current,b128) the engine with batches of up to 128 proteins (the token budget still
               applies); run after `engine` in the same process, it reuses the kernels `engine` compiled.

Timing. Model load (weights to the device) is reported apart and left out of the rates. The engine's warm-up is not:
Encoder construction (the token table, the kernel's self-check against the segments kernel, so FlexAttention's first
compile) is `warmup_seconds`, the batch loop (whose first batches compile the other row lengths) `encode_seconds`,
and both together `wall_with_warmup_seconds`, which residues/s, MFU and the speed-ups use. The baselines have no
warm-up (their wall is their loop). `compile_seconds` is Dynamo's own compile time within a side; `steady_*` counts
only the batches during which nothing compiled. With --rounds N a later round of a side reuses the kernels the first
one compiled (torch.compile caches in-process): each round's warm-up is kept in the JSON.

Residues/s = input residues (the same number for every side) / wall with warm-up. The baselines reach it by
truncating; the report says how many proteins they cut. MFU = useful FLOPs (matmuls and attention over real tokens,
windows as run, no padding) / wall / the dense matmul rate measured in this run (fp16 8192² on GPU, fp32 2048² on
CPU). Padding: the share of padded tokens in the batches (0 for the engine's packed batches; FlexAttention pads the
row it attends over to one of a few lengths, reported as `attention_padding_fraction`). fp32 redone: proteins that
came out non-finite in fp16 and were embedded again in fp32 (utils.engine.finite). --profile PATH profiles a few of the
engine's batches after its timed run (benchmarks/device_profile.py: top device kernels, device idle share).
On a shared CPU, --rounds N alternates the sides N times and keeps each side's fastest round.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.device_profile import format_profile, profile_run  # noqa: E402
from benchmarks.fair_esm_loop import FAIR_ESM_TRUNCATION, run_fair_esm_loop  # noqa: E402
from benchmarks.seed_loop import SEED_MAX_TOKENS, load_seed_model, run_seed_loop  # noqa: E402
from tests.tiny_checkpoints import REAL_SIZES  # noqa: E402

AMINO = "ACDEFGHIKLMNPQRSTVWY"

# -- architectures ----------------------------------------------------------------------------------------------------
# Real hub shapes: tests/tiny_checkpoints.REAL_SIZES (ProtT5-XL, ESM2 3B, ESM C 600M). t5_cpu keeps ProtT5's
# proportions (d_ff = 4 × heads × d_kv, relu, 32 relative buckets) at a size two CPU cores run in minutes.
ARCHS: dict[str, dict[str, Any]] = {
    "t5_cpu": {
        "family": "prot_t5",
        "layers_key": "num_layers",
        "config": {"d_model": 256, "d_kv": 32, "num_heads": 8, "d_ff": 1024, "num_layers": 6},
    },
    "prot_t5_xl": {"family": "prot_t5", "layers_key": "num_layers", "config": REAL_SIZES["prot_t5_xl"]},
    "esm2_3b": {"family": "esm2", "layers_key": "num_hidden_layers", "config": REAL_SIZES["esm2_3b"]},
    "esmc_600m": {"family": "esmc", "layers_key": "num_hidden_layers", "config": REAL_SIZES["esmc_600m"]},
}


def arch_config(arch: str, layers: int | None) -> dict[str, Any]:
    config = dict(ARCHS[arch]["config"])
    if layers:
        config[ARCHS[arch]["layers_key"]] = layers  # smoke tests of the GPU shapes on CPU
    return config


def build_checkpoint(arch: str, directory: Path, device: str, layers: int | None = None) -> Path:
    """Random weights in the real layout and the family's real tokenizer files (tests/tiny_checkpoints.py's builder
    with the real sizes); on a GPU the weights are created on the device: seconds, not minutes."""
    from tests import tiny_checkpoints

    path = tiny_checkpoints.BUILDERS[ARCHS[arch]["family"]](
        directory / arch, seed=0, sizes=arch_config(arch, layers), device=device
    )
    _release(device)
    return path


# -- the protein set --------------------------------------------------------------------------------------------------
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


# -- FLOPs and the machine's matmul rate ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlopModel:
    layers: int
    matmul_params: int  # per layer, the weights every token multiplies (attention projections + feed-forward)
    attention_width: int  # heads × head dimension: QKᵀ and AV cost 2 × T × width each, per token and layer

    def protein(self, tokens: int) -> float:
        return self.layers * (2.0 * self.matmul_params * tokens + 4.0 * self.attention_width * tokens * tokens)


def flop_model(arch: str, layers: int | None = None) -> FlopModel:
    c = arch_config(arch, layers)
    if ARCHS[arch]["family"] == "prot_t5":
        width = c["num_heads"] * c["d_kv"]
        return FlopModel(c["num_layers"], 4 * c["d_model"] * width + 2 * c["d_model"] * c["d_ff"], width)
    hidden, ffn = c["hidden_size"], c["intermediate_size"]
    gated = 3 if ARCHS[arch]["family"] == "esmc" else 2
    return FlopModel(c["num_hidden_layers"], 4 * hidden * hidden + gated * hidden * ffn, hidden)


def matmul_rate(device: str) -> tuple[float, str]:
    """Dense matmul FLOP/s measured here: fp16 8192² on GPU (the rate MFU is quoted against), fp32 2048² on CPU."""
    if device == "cpu":
        n, dtype, repeats = 2048, torch.float32, 10
    else:
        n, dtype, repeats = 8192, torch.float16, 50
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):  # the best of three timings: other jobs on a shared machine only slow a timing down
        a @ b
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = max(best, repeats * 2.0 * n**3 / (time.perf_counter() - started))
    del a, b
    _release(device)
    return best, f"{str(dtype).removeprefix('torch.')} {n}x{n} matmul"


# -- memory and time --------------------------------------------------------------------------------------------------
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
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.peak = _rss_bytes("VmRSS")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_bytes("VmRSS"))

    def stop(self) -> int:
        if self.device != "cpu":
            _sync(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._hwm_reset:
            self.peak = max(self.peak, _rss_bytes("VmHWM"))
        return self.peak


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared CPU, less sensitive to other jobs than wall-clock."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize(device)


def _release(device: str) -> None:
    gc.collect()
    if device != "cpu":
        torch.cuda.empty_cache()


# -- the sides --------------------------------------------------------------------------------------------------------
def compile_state() -> tuple[int, float]:
    """(graphs Dynamo compiled, seconds it spent compiling) so far in this process: its own counter and timer (the
    timer's key has moved between torch versions; where it is not found the seconds read 0)."""
    from torch._dynamo.utils import counters

    seconds = 0.0
    try:
        from torch._dynamo.utils import compilation_time_metrics

        seconds = sum(sum(v) for k, v in compilation_time_metrics.items() if k.endswith("compile_inner"))
    except ImportError:
        pass
    return int(counters["stats"]["unique_graphs"]), seconds


def baseline_result(
    result: Any, load_seconds: float, cpu_used: float, peak: int, useful: float, proteins: list[str], what: str
) -> dict[str, Any]:
    """A baseline loop's figures (seed, fair_esm): no warm-up, so its wall is its loop."""
    return {
        "load_seconds": load_seconds,
        "warmup_seconds": 0.0,
        "encode_seconds": result.seconds,
        "wall_with_warmup_seconds": result.seconds,
        "total_seconds": load_seconds + result.seconds,
        "encode_cpu_seconds": cpu_used,
        "proteins_out": len(result.embeddings),
        "forward_rows": len(proteins),
        "residues_embedded": result.residues_seen,
        "truncated_proteins": len(result.truncated),
        "truncated_lengths": sorted({len(proteins[i]) for i in result.truncated}, reverse=True)[:10],
        "skipped_out_of_memory": len(result.skipped_oom),
        "padding_fraction": 1 - result.real_tokens / result.padded_tokens,
        "peak_memory_bytes": peak,
        "useful_flops": useful,
        "what_it_does": what,
    }


def run_seed(checkpoint: Path, arch: str, proteins: list[str], device: str, flops: FlopModel) -> dict[str, Any]:
    from utils.engine.families import FAMILIES

    family = FAMILIES[ARCHS[arch]["family"]]
    memory = PeakMemory(device).start()
    started = time.perf_counter()
    tokenizer, model = load_seed_model(str(checkpoint), family.model_class, device)
    _sync(device)
    load_seconds = time.perf_counter() - started
    texts = [family.model_text(p) for p in proteins]
    cpu_started = cpu_seconds()
    result = run_seed_loop(
        tokenizer, model, texts, [len(p) for p in proteins], device, special_tokens=family.special_tokens
    )
    cpu_used = cpu_seconds() - cpu_started
    peak = memory.stop()
    path = f"transformers ({model.config._attn_implementation}), padded"
    del model
    _release(device)
    kept = SEED_MAX_TOKENS - family.special_tokens
    useful = sum(flops.protein(min(len(p), kept) + family.special_tokens) for p in proteins)
    what = (
        f"batches of 32 by length, truncation to {SEED_MAX_TOKENS} tokens, eager attention, fp16 from_pretrained "
        "(T5 wo fp32) on GPU / fp32 on CPU, empty_cache per batch, every protein"
    )
    return {**baseline_result(result, load_seconds, cpu_used, peak, useful, proteins, what), "path": path}


def run_fair_esm(checkpoint: Path, proteins: list[str], device: str, flops: FlopModel) -> dict[str, Any]:
    memory = PeakMemory(device).start()
    started = time.perf_counter()
    tokenizer, model = load_seed_model(str(checkpoint), "EsmModel", device, attention="sdpa")
    _sync(device)
    load_seconds = time.perf_counter() - started
    cpu_started = cpu_seconds()
    result = run_fair_esm_loop(tokenizer, model, proteins, device)
    cpu_used = cpu_seconds() - cpu_started
    peak = memory.stop()
    path = f"transformers ({model.config._attn_implementation}), padded"
    del model
    _release(device)
    useful = sum(flops.protein(min(len(p), FAIR_ESM_TRUNCATION) + 2) for p in proteins)
    what = (
        "fair-esm extract.py emulated on EsmModel (sdpa): length-sorted batches of up to 4,096 tokens, truncation "
        "at 1,022 residues, fp16 on GPU / fp32 on CPU, every protein"
    )
    return {**baseline_result(result, load_seconds, cpu_used, peak, useful, proteins, what), "path": path}


@dataclass(frozen=True)
class Variant:
    """One engine side: what it changes against the command line's settings (None: as given)."""

    side: str
    attention: str | None = None  # Encoder's `attention`; None: --attention
    t5_attention: str | None = None  # transformers' attention implementation for T5 (its forward only)
    max_items: int | None = None  # None: --max-items


VARIANTS = {
    "current": Variant("engine"),
    "sdpa": Variant("engine_sdpa", attention="transformers", t5_attention="sdpa"),
    "b128": Variant("engine_b128", max_items=128),
}
WINDOW_OVERLAP = 256  # run_params.window_overlap's default, as Embedder's


def effective_settings(args: Any, variant: Variant) -> tuple[str, int]:
    """(attention path, max items) a variant runs with: two variants that agree measure the same thing."""
    from utils.engine.families import FAMILIES

    family = FAMILIES[ARCHS[args.arch]["family"]]
    attention = variant.attention or args.attention
    if attention == "transformers":
        loaded = variant.t5_attention if variant.t5_attention and family.forward == "t5" else family.attention
        attention = f"transformers:{loaded}"
    return attention, variant.max_items or args.max_items


def select_variants(args: Any) -> list[str]:
    """Drop variants that would measure the same engine settings as one before them; returns why, one line each."""
    kept, seen, skipped = [], set(), []
    for name in args.variants:
        settings = effective_settings(args, VARIANTS[name])
        if settings in seen:
            skipped.append(f"variant {name} skipped: attention {settings[0]} with max_items {settings[1]} is already "
                           "measured")  # fmt: skip
            continue
        seen.add(settings)
        kept.append(name)
    args.variants = kept
    return skipped


def protein_flops(flops: FlopModel, length: int, note: dict | None, special_tokens: int) -> float:
    """Useful FLOPs of one protein as the engine ran it: whole, or window by window."""
    from utils.engine.batching import window_spans

    spans = [(0, length)]
    if note and "windows" in note:
        spans = window_spans(length, note["window_residues"], note["overlap"])
    return sum(flops.protein(end - start + special_tokens) for start, end in spans)


def run_engine(
    checkpoint: Path, proteins: list[str], device: str, flops: FlopModel, args: Any, variant_name: str
) -> dict[str, Any]:
    """The engine as utils.Embedder builds it, with `attention` passed to Encoder; warm-up timed, then the job's
    batch loop over the unique proteins; with --profile (the `current` variant), a few batches profiled afterwards."""
    from utils.checks.resolve import resolve_model
    from utils.engine.attention import flex_row_length
    from utils.engine.embedder import embed_in_batches
    from utils.engine.encode import Encoder, load_encoder, padding_fraction, resolve_precision
    from utils.engine.finite import Fp32Redo
    from utils.engine.limits import device_limits
    from utils.inputs.keys import ModelConfig

    variant = VARIANTS[variant_name]
    attention, max_items = effective_settings(args, variant)
    attention = attention.partition(":")[0]
    memory = PeakMemory(device).start()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    model_config = ModelConfig("benchmark", str(checkpoint), (device,), "benchmark", "auto", args.token_budget)
    resolved = resolve_model(model_config)
    family, layer_index = resolved.family, resolved.layer_index
    precision = resolve_precision("auto", device)
    limits = device_limits(
        resolved.arch, device, precision, batch_size=max_items, max_tokens_per_batch=args.token_budget,
        max_residues=args.max_residues,
    )  # fmt: skip
    tokenizer, net = load_encoder(resolved.source, family, device, precision, layer_index=layer_index)
    if variant.t5_attention and net.config.model_type in ("t5", "mt5"):
        net.set_attn_implementation(variant.t5_attention)
    _sync(device)
    load_seconds = time.perf_counter() - started

    def build(loaded: tuple[Any, torch.nn.Module]) -> Encoder:
        return Encoder(
            *loaded, family, device, limits.max_residues, WINDOW_OVERLAP, attention=attention,
            tokens_per_pass=limits.max_tokens_per_batch,
        )  # fmt: skip

    compiled_before, compile_seconds_before = compile_state()
    warmup_started = time.perf_counter()
    encoder = build((tokenizer, net))  # the token table and the kernel's self-check (FlexAttention compiles here)
    _sync(device)
    warmup_seconds = time.perf_counter() - warmup_started
    compiled_in_warmup = compile_state()[0]
    # As Embedder: proteins non-finite in fp16 are embedded again in fp32, by a second encoder loaded on first need
    fp32 = None
    if precision != "fp32":
        fp32 = Fp32Redo(lambda: build(load_encoder(resolved.source, family, device, "fp32", layer_index=layer_index)))
    unique = list(dict.fromkeys(proteins))
    special = family.special_tokens
    batch_log: list[tuple[float, int, float, int]] = []  # (ended, residues, useful FLOPs, compiles so far)

    def on_batch(indices: Any, embedded: list[Any]) -> None:
        pairs = zip(indices, embedded, strict=True)
        useful = sum(protein_flops(flops, len(unique[i]), e.note, special) for i, e in pairs)
        batch_log.append((time.perf_counter(), sum(len(unique[i]) for i in indices), useful, compile_state()[0]))

    encode_started = time.perf_counter()
    results = embed_in_batches(encoder, unique, limits, on_batch, precision=precision, fp32=fp32)
    _sync(device)
    encode_seconds = time.perf_counter() - encode_started
    cpu_used = cpu_seconds() - cpu_started
    peak = memory.stop()
    compiled_after, compile_seconds_after = compile_state()

    steady_seconds = steady_residues = steady_flops = 0.0
    compile_batches, batch_seconds = [], []
    previous_end, previous_compiles = encode_started, compiled_in_warmup
    for k, (ended, residues, useful, compiles) in enumerate(batch_log):
        batch_seconds.append(round(ended - previous_end, 4))
        if compiles > previous_compiles:
            compile_batches.append(k)
        else:
            steady_seconds += ended - previous_end
            steady_residues += residues
            steady_flops += useful
        previous_end, previous_compiles = ended, compiles

    duplication = sum(map(len, proteins)) / sum(map(len, unique))  # input residues per embedded residue
    notes = {unique[i]: r.note for i, r in enumerate(results) if r.note}
    windowed = {f"{len(s)} residues": n for s, n in notes.items() if "windows" in n}
    redone = sum(1 for n in notes.values() if "redone" in n)
    lengths = [min(len(s), limits.max_residues or len(s)) for s in unique]
    batches = limits.plan_batches([len(s) for s in unique], special)
    batch_lengths = [[lengths[i] for i in b] for b in batches]
    padded = 0.0 if encoder.packed is not None else padding_fraction(batch_lengths, special)
    attention_padding = 0.0
    if encoder.kernel == "flex":
        real = [sum(n + special for n in b) for b in batch_lengths]
        attention_padding = 1 - sum(real) / sum(flex_row_length(t) for t in real)

    profile = None
    if args.profile and variant_name == "current":
        profile = profile_engine(encoder, unique, batches, precision, fp32, device, args.profile_batches)
    path, out_of_memory = encoder.path, encoder.out_of_memory_events
    vectors = [r.pooled for r in results]
    encoder.close()
    if fp32 is not None:
        fp32.close()
    del encoder, fp32, net, tokenizer, results
    _release(device)

    useful = sum(protein_flops(flops, len(s), notes.get(s), special) for s in unique)
    return {
        "load_seconds": load_seconds,
        "warmup_seconds": warmup_seconds,
        "first_batch_seconds": batch_seconds[0] if batch_seconds else 0.0,
        "encode_seconds": encode_seconds,
        "wall_with_warmup_seconds": warmup_seconds + encode_seconds,
        "total_seconds": load_seconds + warmup_seconds + encode_seconds,
        "encode_cpu_seconds": cpu_used,
        "compiles": compiled_after - compiled_before,
        "compiles_in_warmup": compiled_in_warmup - compiled_before,
        "compile_seconds": compile_seconds_after - compile_seconds_before,
        "compile_batches": compile_batches,
        "batch_seconds": batch_seconds,
        "steady_seconds": steady_seconds,
        # in input residues like the headline rate: duplicates, embedded once, count as often as they occur
        "steady_residues_per_s": steady_residues * duplication / steady_seconds if steady_seconds else None,
        "steady_flops": steady_flops,
        "proteins_out": len(proteins),
        "all_finite": all(bool(torch.isfinite(v).all()) for v in vectors),
        "forward_rows": len(unique),
        "residues_embedded": sum(len(p) for p in proteins),
        "truncated_proteins": 0,
        "path": path,
        "attention": path,
        "precision": precision,
        "fp32_redone": redone,
        "out_of_memory_events": out_of_memory,
        "token_budget": limits.max_tokens_per_batch,
        "max_residues": limits.max_residues,
        "max_items": limits.batch_size,
        "batches": len(batches),
        "padding_fraction": padded,
        "attention_padding_fraction": attention_padding,
        "windowed": windowed,
        "peak_memory_bytes": peak,
        "useful_flops": useful,
        "profile": profile,
        "what_it_does": "as utils.Embedder: resolve_model, device_limits, load_encoder, Encoder(attention=…), fp32 "
        "redo; utils.engine.embedder.embed_in_batches (the job's batch loop, duplicates once); no chunk writes or "
        "files",
    }


def profile_engine(
    encoder: Any, unique: list[str], batches: list[list[int]], precision: str, fp32: Any, device: str, count: int
) -> dict[str, Any]:
    """torch.profiler over `count` batches from the middle of the plan (typical lengths; every row length they need
    was compiled in the timed run), through the same loop (tokenize ahead, embed, fp32 redo)."""
    from utils.engine.embedder import embed_batches

    first = max(0, len(batches) // 2 - count // 2)
    chosen = batches[first : first + count]

    def run() -> None:
        for _ in embed_batches(encoder, unique, chosen, precision, fp32):
            pass

    try:
        summary = profile_run(run, device)
    except Exception as exc:  # noqa: BLE001  # a profiler failure must not cost the timed results
        summary = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
    return {
        **summary,
        "path": encoder.path,
        "batches": len(chosen),
        "first_batch": first,
        "proteins": sum(len(b) for b in chosen),
        "tokens": sum(len(unique[i]) + encoder.family.special_tokens for b in chosen for i in b),
    }


# -- report -----------------------------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    if device != "cpu":
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    return f"{model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def side_names(report: dict[str, Any]) -> list[str]:
    return [name for name in ("seed", "fair_esm", *(v.side for v in VARIANTS.values())) if name in report]


def finish(report: dict[str, Any], runs: dict[str, list[dict[str, Any]]], residues: int) -> None:
    """Each side's fastest round (by wall with warm-up), its rates, and the speed-ups, into `report`."""
    rate = report["matmul_rate_flops"]
    for name, results in runs.items():
        if not results:
            continue
        best = dict(min(results, key=lambda r: r["wall_with_warmup_seconds"]))
        wall = best["wall_with_warmup_seconds"]
        best["residues_per_s"] = residues / wall
        best["residues_per_s_without_warmup"] = residues / best["encode_seconds"]
        best["mfu"] = best["useful_flops"] / wall / rate
        if best.get("steady_seconds"):
            best["mfu_steady"] = best["steady_flops"] / best["steady_seconds"] / rate
        best["wall_with_warmup_seconds_all_rounds"] = [r["wall_with_warmup_seconds"] for r in results]
        best["warmup_seconds_all_rounds"] = [r["warmup_seconds"] for r in results]
        report[name] = best
    for name in side_names(report):
        for base in ("seed", "fair_esm"):
            if name == base or base not in report or (base == "fair_esm" and name == "seed"):
                continue
            b, s = report[base], report[name]
            key = f"speedup_{name}" if base == "seed" else f"speedup_{name}_vs_fair_esm"
            report[key] = {
                "wall_with_warmup": b["wall_with_warmup_seconds"] / s["wall_with_warmup_seconds"],
                "encode": b["encode_seconds"] / s["encode_seconds"],
                "total": b["total_seconds"] / s["total_seconds"],
                "cpu_time": b["encode_cpu_seconds"] / s["encode_cpu_seconds"],
            }


def summarize(report: dict[str, Any]) -> str:
    names = side_names(report)
    sides = [report[name] for name in names]
    gib = 2**30

    def row(label: str, key: str, fmt: str = "{:.1f}", scale: float = 1.0) -> tuple[str, ...]:
        cells = []
        for s in sides:
            value = s.get(key)
            cells.append("-" if value is None else fmt.format(value / scale if scale != 1 else value))
        return (label, *cells)

    rows = [
        ("", *names),
        row("model load seconds (not in the rates)", "load_seconds", "{:.2f}"),
        row("warm-up seconds (Encoder, self-check)", "warmup_seconds", "{:.2f}"),
        row("first batch seconds", "first_batch_seconds", "{:.2f}"),
        row("encode seconds (batch loop)", "encode_seconds"),
        row("wall with warm-up seconds", "wall_with_warmup_seconds"),
        row("compile seconds (Dynamo)", "compile_seconds", "{:.1f}"),
        row("compiles (frames)", "compiles", "{}"),
        row("encode CPU seconds (user+sys)", "encode_cpu_seconds"),
        row("input residues/s (wall with warm-up)", "residues_per_s", "{:.0f}"),
        row("residues/s, batches without compiling", "steady_residues_per_s", "{:.0f}"),
        row("forward rows (proteins)", "forward_rows", "{}"),
        row("residues embedded", "residues_embedded", "{}"),
        row("truncated proteins", "truncated_proteins", "{}"),
        ("windowed proteins", *(str(len(s["windowed"])) if "windowed" in s else "-" for s in sides)),
        row("fp32 redone proteins", "fp32_redone", "{}"),
        row("padding fraction", "padding_fraction", "{:.3f}"),
        row("attention row padding (flex)", "attention_padding_fraction", "{:.3f}"),
        row("peak memory GiB", "peak_memory_bytes", "{:.2f}", gib),
        row("MFU (wall with warm-up)", "mfu", "{:.3f}"),
        row("MFU, batches without compiling", "mfu_steady", "{:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    proteins = report["proteins"]
    lines = [
        f"device: {report['device_name']} ({report['device']}); arch {report['arch']}; "
        f"matmul rate {report['matmul_rate_flops'] / 1e12:.3f} TFLOP/s ({report['matmul_rate_kind']})",
        f"proteins: {proteins['count']} ({proteins['unique']} unique), {proteins['residues']} residues, lengths "
        f"{proteins['length_range']}, median {proteins['median_length']}; {proteins['note']}",
    ]
    lines += ["  ".join([f"{r[0]:<{width}}", *(f"{c:>16}" for c in r[1:])]) for r in rows]
    for name in names:
        for key, base in ((f"speedup_{name}", "seed"), (f"speedup_{name}_vs_fair_esm", "fair_esm")):
            if key in report:
                s = report[key]
                lines.append(
                    f"{name} vs {base}: wall with warm-up {s['wall_with_warmup']:.2f}x, batch loop alone "
                    f"{s['encode']:.2f}x, with model load {s['total']:.2f}x, CPU time {s['cpu_time']:.2f}x"
                )
    for name in names:
        side = report[name]
        if name in ("seed", "fair_esm"):
            lines.append(
                f"{name}: {side['path']}; truncated {side['truncated_proteins']} protein(s) (lengths "
                f"{side['truncated_lengths']}), lost {side['skipped_out_of_memory']} to out of memory"
            )
            continue
        lines.append(
            f"{name}: {side['path']}; {side['precision']}, token budget {side['token_budget']}, max_residues "
            f"{side['max_residues']}, max_items {side['max_items']}, {side['batches']} batches, compiled during "
            f"batches {side['compile_batches'][:12]}, {side['out_of_memory_events']} out-of-memory split(s), "
            f"{side['fp32_redone']} redone in fp32; windowed: {side['windowed'] or 'none'}"
        )
    lines.append(
        f"all sides saw the same proteins; rounds: {report['rounds']} (fastest kept); load average per round: "
        f"{report['load_average']}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from utils.engine.encode import ATTENTION_PATHS

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--arch", choices=sorted(ARCHS), help="default: t5_cpu on CPU, prot_t5_xl on GPU")
    parser.add_argument("--layers", type=int, help="override the layer count (smoke tests of GPU shapes on CPU)")
    parser.add_argument("--proteins", type=int, help="how many proteins (default 300 on CPU, 2000 on GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, help="log-normal lengths clipped here (default 1000 CPU, 35000 GPU)")
    parser.add_argument("--long", help="extra long proteins, comma-separated (default 10000 CPU, 10000,35000 GPU)")
    parser.add_argument("--max-items", type=int, default=32, help="engine: run_params.batch_size (default 32)")
    parser.add_argument("--token-budget", type=int, help="engine: max_tokens_per_batch (default: the engine's auto)")
    parser.add_argument("--max-residues", type=int, help="engine: run_params.max_residues (default: auto)")
    parser.add_argument(
        "--attention", default="auto", choices=ATTENTION_PATHS,
        help="engine: Encoder's attention (auto: segments on CPU, varlen for ESM / flex for T5 on GPU; transformers: "
        "transformers' padded forward)",
    )  # fmt: skip
    parser.add_argument("--variants", default="current", help=f"engine variants: {', '.join(VARIANTS)} (with commas)")
    parser.add_argument("--skip-seed", action="store_true", help="no seed side (parameter sweeps)")
    parser.add_argument("--skip-fair-esm", action="store_true", help="no fair-esm-style side (ESM2 only anyway)")
    parser.add_argument("--profile", type=Path, help="profile a few engine batches after its timed run; text here")
    parser.add_argument("--profile-batches", type=int, default=4, help="batches profiled (default 4)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the sides N times, keep each one's fastest")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, help="write all figures here (after every side, so a killed run keeps "
                        "what it finished)")  # fmt: skip
    args = parser.parse_args(argv)
    gpu = args.device != "cpu"
    args.arch = args.arch or ("prot_t5_xl" if gpu else "t5_cpu")
    args.proteins = args.proteins or (2000 if gpu else 300)
    args.max_length = args.max_length or (35000 if gpu else 1000)
    long_default = "10000,35000" if gpu else "10000"
    args.long_lengths = [int(x) for x in (args.long if args.long is not None else long_default).split(",") if x]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; use {', '.join(VARIANTS)}")
    return args


def write_outputs(args: Any, report: dict[str, Any]) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        partial = args.json.with_suffix(".partial")  # renamed into place: a run killed mid-write leaves the last one
        partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
        partial.replace(args.json)
    engine = report.get("engine")
    if args.profile and engine and engine.get("profile"):
        p = engine["profile"]
        title = (
            f"{report['arch']} engine on {report['device_name']}: {p['path']}; {p['batches']} batches from batch "
            f"{p['first_batch']} of {engine['batches']} ({p['proteins']} proteins, {p['tokens']} tokens), after the "
            "timed run"
        )
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        args.profile.write_text(format_profile(title, p) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if device != "cpu":
        torch.cuda.set_device(torch.device(device))
    proteins = synthetic_proteins(args.proteins, args.seed, args.max_length, args.long_lengths)
    lengths = sorted(len(p) for p in proteins)
    flops = flop_model(args.arch, args.layers)
    rate, rate_kind = matmul_rate(device)
    note = (
        f"log-normal(median 380, sigma 0.75) clipped to [30, {args.max_length}] plus {args.long_lengths}; "
        f"~5% duplicates; seed {args.seed}"
    )
    if device == "cpu" and max(lengths) < 35000:
        note += "; lengths clipped for CPU speed (no 35,000-residue protein on CPU)"
    report: dict[str, Any] = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "arch": args.arch,
        "arch_config": arch_config(args.arch, args.layers),
        "flops_per_token_matmul": 2.0 * flops.layers * flops.matmul_params,
        "matmul_rate_flops": rate,
        "matmul_rate_kind": rate_kind,
        "proteins": {
            "count": len(proteins),
            "unique": len(set(proteins)),
            "residues": sum(lengths),
            "median_length": lengths[len(lengths) // 2],
            "length_range": [lengths[0], lengths[-1]],
            "note": note,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "rounds": args.rounds,
        "load_average": [],  # other jobs on the machine skew wall-clock; CPU seconds are reported as well
    }
    report["skipped"] = skipped = select_variants(args)
    for line in skipped:
        print(f"note: {line}", file=sys.stderr)
    # The engine right after the seed: a run killed at its time limit still has the headline pair
    names = ([] if args.skip_seed else ["seed"]) + [VARIANTS[variant].side for variant in args.variants]
    if ARCHS[args.arch]["family"] == "esm2" and not args.skip_fair_esm:
        names.append("fair_esm")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    workdir = Path(tempfile.mkdtemp(prefix="throughput-"))
    try:
        started = time.perf_counter()
        checkpoint = build_checkpoint(args.arch, workdir, device, args.layers)
        report["build_seconds"] = time.perf_counter() - started
        for round_index in range(args.rounds):
            report["load_average"].append(round(os.getloadavg()[0], 2))
            for name in names:
                if name == "seed":
                    result = run_seed(checkpoint, args.arch, proteins, device, flops)
                elif name == "fair_esm":
                    result = run_fair_esm(checkpoint, proteins, device, flops)
                else:
                    variant = next(v for v, spec in VARIANTS.items() if spec.side == name)
                    result = run_engine(checkpoint, proteins, device, flops, args, variant)
                runs[name].append(result)
                print(
                    f"round {round_index} {name}: wall {result['wall_with_warmup_seconds']:.1f} s (warm-up "
                    f"{result['warmup_seconds']:.1f} s)", file=sys.stderr, flush=True,
                )  # fmt: skip
                finish(report, runs, sum(lengths))
                write_outputs(args, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(summarize(report), flush=True)
    return 0


if __name__ == "__main__":
    logging.getLogger("transformers").setLevel(logging.ERROR)
    sys.exit(main())
