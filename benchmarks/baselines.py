"""The baselines of benchmarks/throughput.py, each timed on the same proteins as the engine: the seed's loop
(benchmarks/seed_loop.py) and, for ESM2, a fair-esm-style loop (benchmarks/fair_esm_loop.py). No warm-up: a baseline's
wall is its loop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.archs import ARCHS, FlopModel
from benchmarks.fair_esm_loop import FAIR_ESM_TRUNCATION, run_fair_esm_loop
from benchmarks.measure import PeakMemory, cpu_seconds, release, sync
from benchmarks.seed_loop import SEED_MAX_TOKENS, load_seed_model, run_seed_loop


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
    sync(device)
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
    release(device)
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
    sync(device)
    load_seconds = time.perf_counter() - started
    cpu_started = cpu_seconds()
    result = run_fair_esm_loop(tokenizer, model, proteins, device)
    cpu_used = cpu_seconds() - cpu_started
    peak = memory.stop()
    path = f"transformers ({model.config._attn_implementation}), padded"
    del model
    release(device)
    useful = sum(flops.protein(min(len(p), FAIR_ESM_TRUNCATION) + 2) for p in proteins)
    what = (
        "fair-esm extract.py emulated on EsmModel (sdpa): length-sorted batches of up to 4,096 tokens, truncation "
        "at 1,022 residues, fp16 on GPU / fp32 on CPU, every protein"
    )
    return {**baseline_result(result, load_seconds, cpu_used, peak, useful, proteins, what), "path": path}
