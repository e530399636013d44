#!/usr/bin/env python
"""Throughput and memory: the seed's loop against the main job's engine, in one process, same model, same proteins.

    python benchmarks/throughput.py --device cpu --json benchmarks/results/cpu_throughput.json
    python benchmarks/throughput.py --device cuda:0 --arch prot_t5_xl --proteins 2000 --json $OUT/prot_t5_xl.json

Proteins: synthetic and CAFA-like, seeded: log-normal lengths (median 380, sigma 0.75) clipped to [30, --max-length],
plus the --long proteins, ~5% duplicates. GPU defaults: clipped at 35,000, long = one 10,000 and one 35,000.
CPU defaults (two cores must finish in minutes): clipped at 1,000 and long = one 10,000 only (no 35,000).
Models: the real architectures with random weights (no download), written to a temporary directory with the family's
real tokenizer files, then loaded by each side's own loading code.

Sides, on the same proteins:
  seed             benchmarks/seed_loop.py: batches of 32 by length, truncation to 1024 tokens (so the long
                   proteins are cut to 1023 residues), eager attention, fp16 through from_pretrained (T5's `wo` in
                   fp32) on GPU / fp32 on CPU, empty_cache after each batch, every protein (duplicates included).
  engine           the engine through its Python API, in this process: utils.Embedder (resolve_model, utils.limits,
                   load_encoder, Encoder) → Embedder.embed, the job's own batch loop (utils.embedder: plan batches,
                   tokenize ahead, Encoder.embed), duplicates once. Chunk writes, the final files and the worker
                   process spawn are left out. Every residue is embedded; over-long proteins go to windows, which the
                   result records.
  engine_sdpa      (--variants current,sdpa) the same with transformers' plain "sdpa" for T5 (the engine before its
                   shared-mask attention); dropped when it is what the engine loads anyway.

Residues/s = input residues (the same number for every side) / encode seconds (model loaded). The seed reaches it
by truncating; the report says how many proteins it cut. MFU = useful FLOPs (matmuls and attention over real tokens,
windows as run, no padding) / encode seconds / the dense matmul rate measured in this run (fp16 8192² on GPU,
fp32 2048² on CPU). On a shared CPU, --rounds N alternates the sides N times and keeps each side's fastest round.
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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
def run_seed(checkpoint: Path, arch: str, proteins: list[str], device: str, flops: FlopModel) -> dict[str, Any]:
    from utils.families import FAMILIES

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
    del model
    _release(device)
    kept = SEED_MAX_TOKENS - family.special_tokens
    useful = sum(flops.protein(min(len(p), kept) + family.special_tokens) for p in proteins)
    return {
        "load_seconds": load_seconds,
        "encode_seconds": result.seconds,
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
        "what_it_does": f"batches of 32 by length, truncation to {SEED_MAX_TOKENS} tokens, eager attention, "
        "fp16 from_pretrained (T5 wo fp32) on GPU / fp32 on CPU, empty_cache per batch, every protein",
    }


VARIANT_SIDES = {"current": "engine", "sdpa": "engine_sdpa"}
VARIANT_ATTENTION = {"current": None, "sdpa": "sdpa"}  # T5 attention override


def select_variants(args: Any) -> list[str]:
    """Drop variants that would measure the same T5 attention as one before them; returns why, one line each."""
    from utils.families import FAMILIES

    family = FAMILIES[ARCHS[args.arch]["family"]]
    loaded = family.attention if family.name == "prot_t5" else "sdpa"  # the override only touches T5
    effective = {"current": loaded, "sdpa": "sdpa"}
    kept, seen, skipped = [], set(), []
    for variant in args.variants:
        if effective[variant] in seen:
            skipped.append(f"variant {variant} skipped: {effective[variant]} attention is already measured")
            continue
        seen.add(effective[variant])
        kept.append(variant)
    args.variants = kept
    return skipped


def run_engine(
    checkpoint: Path, arch: str, proteins: list[str], device: str, flops: FlopModel, args: Any, variant: str
) -> dict[str, Any]:
    """The engine through its Python API in this process: build the Embedder (model load), then embed."""
    from utils import Embedder
    from utils.batching import window_spans
    from utils.encode import padding_fraction

    memory = PeakMemory(device).start()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    embedder = Embedder(
        str(checkpoint), device=device, batch_size=args.max_items, max_tokens_per_batch=args.token_budget,
        max_residues=args.max_residues,
    )  # fmt: skip
    override = VARIANT_ATTENTION[variant]
    model = embedder.encoder.model
    if override and model.config.model_type in ("t5", "mt5"):
        model.set_attn_implementation(override)
    _sync(device)
    load_seconds = time.perf_counter() - started
    load_cpu = cpu_seconds() - cpu_started
    vectors = embedder.embed(proteins)
    _sync(device)
    total = time.perf_counter() - started
    cpu_used = cpu_seconds() - cpu_started - load_cpu
    peak = memory.stop()
    attention = model.config._attn_implementation
    family, limits, windowed_by_index = embedder.model.family, embedder.limits, embedder.windowed
    embedder.close()
    del embedder, model
    _release(device)

    unique = list(dict.fromkeys(proteins))
    batches = limits.plan_batches([len(s) for s in unique], family.special_tokens)
    lengths = [min(len(s), limits.max_residues) for s in unique]
    notes = {proteins[i]: note for i, note in windowed_by_index.items()}
    useful = 0.0
    for sequence in unique:
        note = notes.get(sequence)
        spans = window_spans(len(sequence), note["window_residues"], note["overlap"]) if note else [(0, len(sequence))]
        useful += sum(flops.protein(end - start + family.special_tokens) for start, end in spans)
    return {
        "load_seconds": load_seconds,
        "encode_seconds": total - load_seconds,
        "total_seconds": total,
        "encode_cpu_seconds": cpu_used,
        "proteins_out": int(vectors.shape[0]),
        "all_finite": bool(np.isfinite(vectors).all()),
        "forward_rows": len(unique),
        "residues_embedded": sum(len(p) for p in proteins),
        "truncated_proteins": 0,
        "attention": attention,
        "token_budget": limits.max_tokens_per_batch,
        "max_residues": limits.max_residues,
        "max_items": limits.batch_size,
        "batches": len(batches),
        "padding_fraction": padding_fraction([[lengths[i] for i in b] for b in batches], family.special_tokens),
        "windowed": {f"{len(sequence)} residues": note for sequence, note in notes.items()},
        "peak_memory_bytes": peak,
        "useful_flops": useful,
        "what_it_does": "utils.Embedder in-process: resolve_model, utils.limits, load_encoder, Encoder; "
        "Embedder.embed (the job's batch loop, duplicates once); no chunk writes or final files",
    }


# -- report -----------------------------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    if device != "cpu":
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    return f"{model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def summarize(report: dict[str, Any]) -> str:
    names = [name for name in ("seed", *VARIANT_SIDES.values()) if name in report]
    sides = [report[name] for name in names]
    gib = 2**30

    def row(label: str, key: str, fmt: str = "{:.1f}", scale: float = 1.0) -> tuple[str, ...]:
        return (label, *(fmt.format(s[key] / scale if scale != 1 else s[key]) if key in s else "-" for s in sides))

    rows = [
        ("", *names),
        row("encode seconds", "encode_seconds"),
        row("model load seconds", "load_seconds", "{:.2f}"),
        row("total seconds", "total_seconds"),
        row("encode CPU seconds (user+sys)", "encode_cpu_seconds"),
        row("input residues/s (encode)", "residues_per_s", "{:.0f}"),
        row("forward rows (proteins)", "forward_rows", "{}"),
        row("residues embedded", "residues_embedded", "{}"),
        row("truncated proteins", "truncated_proteins", "{}"),
        ("windowed proteins", *(str(len(s["windowed"])) if "windowed" in s else "-" for s in sides)),
        row("padding fraction", "padding_fraction", "{:.3f}"),
        row("peak memory GiB", "peak_memory_bytes", "{:.2f}", gib),
        row("MFU", "mfu", "{:.3f}"),
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
    for name in names[1:]:
        if "seed" in report:
            s = report[f"speedup_{name}"]
            lines.append(
                f"{name} vs seed: encode {s['encode']:.2f}x, total wall (load included) {s['total']:.2f}x, "
                f"encode CPU time {s['cpu_time']:.2f}x"
            )
        engine = report[name]
        lines.append(
            f"{name}: attention {engine['attention']}, token budget {engine['token_budget']}, max_residues "
            f"{engine['max_residues']}, max_items {engine['max_items']}, {engine['batches']} batches; "
            f"windowed: {engine['windowed'] or 'none'}"
        )
    if "seed" in report:
        seed = report["seed"]
        lines.append(
            f"seed: truncated {seed['truncated_proteins']} protein(s) to {SEED_MAX_TOKENS} tokens (lengths "
            f"{seed['truncated_lengths']}), lost {seed['skipped_out_of_memory']} to out of memory; all sides saw "
            "the same proteins"
        )
    lines.append(f"rounds: {report['rounds']} (fastest kept); load average per round: {report['load_average']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--variants", default="current", help="engine variants: current, sdpa (with commas)")
    parser.add_argument("--skip-seed", action="store_true", help="engine side(s) only (parameter sweeps)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the sides N times, keep each one's fastest")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, help="write all figures here")
    args = parser.parse_args(argv)
    gpu = args.device != "cpu"
    args.arch = args.arch or ("prot_t5_xl" if gpu else "t5_cpu")
    args.proteins = args.proteins or (2000 if gpu else 300)
    args.max_length = args.max_length or (35000 if gpu else 1000)
    long_default = "10000,35000" if gpu else "10000"
    args.long_lengths = [int(x) for x in (args.long if args.long is not None else long_default).split(",") if x]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANT_SIDES)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; use {', '.join(VARIANT_SIDES)}")
    return args


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
    names = ([] if args.skip_seed else ["seed"]) + [VARIANT_SIDES[variant] for variant in args.variants]
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
                else:
                    variant = next(v for v, side in VARIANT_SIDES.items() if side == name)
                    result = run_engine(checkpoint, args.arch, proteins, device, flops, args, variant)
                runs[name].append(result)
                print(f"round {round_index} {name}: encode {result['encode_seconds']:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, results in runs.items():
        best = min(results, key=lambda r: r["encode_seconds"])
        best["residues_per_s"] = sum(lengths) / best["encode_seconds"]
        best["mfu"] = best["useful_flops"] / best["encode_seconds"] / rate
        best["encode_seconds_all_rounds"] = [r["encode_seconds"] for r in results]
        report[name] = best
    for name in names:
        if name != "seed" and "seed" in report:
            seed, engine = report["seed"], report[name]
            report[f"speedup_{name}"] = {
                "encode": seed["encode_seconds"] / engine["encode_seconds"],
                "total": seed["total_seconds"] / engine["total_seconds"],
                "cpu_time": seed["encode_cpu_seconds"] / engine["encode_cpu_seconds"],
            }
    print(summarize(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    logging.getLogger("transformers").setLevel(logging.ERROR)
    sys.exit(main())
