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
real tokenizer files, then loaded by each side's own loading code (benchmarks/archs.py; --tiny: the same
architectures at the test checkpoints' width, for the CPU dry runs of the GPU scripts).

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
warm-up (their wall is their loop). `compile_seconds` is Dynamo's own compile time within a side, `compiled_anew` the
kernels Inductor built because its on-disk cache (~/.cache/torchinductor, shared by every process on the machine) did
not hold them; `steady_*` counts only the batches during which nothing compiled. With --rounds N a later round of a
side reuses the kernels the first one compiled (torch.compile caches in-process): each round's warm-up is kept in the
JSON.

Residues/s = input residues (the same number for every side) / wall with warm-up. The baselines reach it by
truncating; the report says how many proteins they cut. MFU = useful FLOPs (matmuls and attention over real tokens,
windows as run, no padding) / wall / the dense matmul rate measured in this run (fp16 8192² on GPU, fp32 2048² on
CPU). Padding: the share of padded tokens in the batches (0 for the engine's packed batches; FlexAttention pads the
row it attends over to one of a few lengths, reported as `attention_padding_fraction`). fp32 redone: proteins that
came out non-finite in fp16 and were embedded again in fp32 (utils.engine.finite). --profile PATH profiles a few of the
engine's batches after its timed run (benchmarks/device_profile.py: top device kernels, device idle share).
On a shared CPU, --rounds N alternates the sides N times and keeps each side's fastest round.

The sides are benchmarks/baselines.py and benchmarks/engine_side.py, the figures and tables
benchmarks/throughput_report.py, the measuring helpers (memory, CPU time, matmul rate, proteins) benchmarks/measure.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.archs import ARCHS, arch_config, build_checkpoint, flop_model  # noqa: E402
from benchmarks.baselines import run_fair_esm, run_seed  # noqa: E402
from benchmarks.engine_side import VARIANTS, run_engine, select_variants  # noqa: E402
from benchmarks.measure import device_name, matmul_rate, synthetic_proteins  # noqa: E402
from benchmarks.throughput_report import finish, summarize, write_outputs  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from utils.inputs.keys import ATTENTION_PATHS

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--arch", choices=sorted(ARCHS), help="default: t5_cpu on CPU, prot_t5_xl on GPU")
    parser.add_argument("--layers", type=int, help="override the layer count (smoke tests of GPU shapes on CPU)")
    parser.add_argument("--tiny", action="store_true", help="the architecture at the test checkpoints' width (CPU "
                        "dry runs of the GPU scripts)")  # fmt: skip
    parser.add_argument("--proteins", type=int, help="how many proteins (default 300 on CPU, 2000 on GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, help="log-normal lengths clipped here (default 1000 CPU, 35000 GPU)")
    parser.add_argument("--long", help="extra long proteins, comma-separated, or none (default 10000 CPU, 10000,35000 "
                        "GPU)")  # fmt: skip
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
    long = args.long if args.long is not None else long_default
    args.long_lengths = [int(x) for x in long.split(",") if x and long != "none"]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; use {', '.join(VARIANTS)}")
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
    flops = flop_model(args.arch, args.layers, args.tiny)
    rate, rate_kind = matmul_rate(device, quick=args.tiny)
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
        "arch_config": arch_config(args.arch, args.layers, args.tiny),
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
        checkpoint = build_checkpoint(args.arch, workdir, device, args.layers, args.tiny)
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
