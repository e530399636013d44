"""The engine's side of benchmarks/throughput.py: the engine built as utils.Embedder builds it, its warm-up timed,
the job's own batch loop over the unique proteins (utils.engine.embedder.embed_in_batches), compiles and steady
batches told apart; its variants (transformers' padded forward, batches of 128); a profile of a few batches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.archs import ARCHS, FlopModel, protein_flops
from benchmarks.device_profile import profile_run
from benchmarks.measure import PeakMemory, compile_state, cpu_seconds, release, sync


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
    sync(device)
    load_seconds = time.perf_counter() - started

    def build(loaded: tuple[Any, torch.nn.Module]) -> Encoder:
        return Encoder(
            *loaded, family, device, limits.max_residues, WINDOW_OVERLAP, attention=attention,
            tokens_per_pass=limits.max_tokens_per_batch,
        )  # fmt: skip

    compiled_before = compile_state()
    warmup_started = time.perf_counter()
    encoder = build((tokenizer, net))  # the token table and the kernel's self-check (FlexAttention compiles here)
    sync(device)
    warmup_seconds = time.perf_counter() - warmup_started
    compiled_in_warmup = compile_state()["compiles"]
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
        compiles = compile_state()["compiles"]
        batch_log.append((time.perf_counter(), sum(len(unique[i]) for i in indices), useful, compiles))

    encode_started = time.perf_counter()
    results = embed_in_batches(encoder, unique, limits, on_batch, precision=precision, fp32=fp32)
    sync(device)
    encode_seconds = time.perf_counter() - encode_started
    cpu_used = cpu_seconds() - cpu_started
    peak = memory.stop()
    compiled_after = compile_state()

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
        attention_padding = 1 - sum(real) / sum(flex_row_length(t, encoder.flex_row_floor) for t in real)

    profile = None
    if args.profile and variant_name == "current":
        profile = profile_engine(encoder, unique, batches, precision, fp32, device, args.profile_batches)
    path, out_of_memory = encoder.path, encoder.out_of_memory_events
    vectors = [r.pooled for r in results]
    encoder.close()
    if fp32 is not None:
        fp32.close()
    del encoder, fp32, net, tokenizer, results
    release(device)

    useful = sum(protein_flops(flops, len(s), notes.get(s), special) for s in unique)
    return {
        "load_seconds": load_seconds,
        "warmup_seconds": warmup_seconds,
        "first_batch_seconds": batch_seconds[0] if batch_seconds else 0.0,
        "encode_seconds": encode_seconds,
        "wall_with_warmup_seconds": warmup_seconds + encode_seconds,
        "total_seconds": load_seconds + warmup_seconds + encode_seconds,
        "encode_cpu_seconds": cpu_used,
        "compiles": compiled_after["compiles"] - compiled_before["compiles"],
        "compiles_in_warmup": compiled_in_warmup - compiled_before["compiles"],
        "compile_seconds": compiled_after["compile_seconds"] - compiled_before["compile_seconds"],
        "compiled_anew": compiled_after["compiled_anew"] - compiled_before["compiled_anew"],
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
