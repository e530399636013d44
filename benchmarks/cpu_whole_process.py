#!/usr/bin/env python
"""The main job against the seed's loop on the CPU, whole process against whole process, as a user would time them.

    python benchmarks/cpu_whole_process.py --rounds 2 --json benchmarks/results/cpu_whole_process.json

One model in the ProtT5 layout (4 layers, d_model 256, 8 heads × 32, d_ff 1,024, random weights, the real tokenizer
files), 500 unique proteins with CAFA-like lengths (log-normal, median 380, clipped to [30, 1,500]: nothing the seed
would truncate), one FASTA. Sides, each a fresh `python` process timed from start to exit:
  seed_sdpa   benchmarks/seed_loop.py as a script: length-sorted batches of 32 padded to the longest, transformers'
              default attention today (SDPA); imports, model load, loop, torch.save
  seed_eager  the same with eager attention (the seed's era; a weaker, historical baseline)
  engine      python generate_embeddings_t5.py --config ... (pre-checks, worker process, chunks, final .pt)
  engine_*    the engine with extra run_params (--engine-variants, e.g. precision=bf16)
Rounds alternate the sides; each side's fastest round is kept. Wall-clock and CPU seconds (user + sys of every
process of the run, benchmarks/process_tree.py) are both reported: on a shared machine CPU seconds move less.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.process_tree import run_measured  # noqa: E402

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def proteins(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < count:
        length = min(1500, max(30, round(rng.lognormvariate(math.log(380), 0.75))))
        seen.add("".join(rng.choices(AMINO, k=length)))
    return sorted(seen, key=lambda _: rng.random())


def timed(command: list[str], env: dict) -> dict:
    try:
        return run_measured(command, cwd=REPO, env=env)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{command[1]} failed:\n{exc.stderr.decode()[-2000:]}") from None


def agreement_with_fp32(workdir: Path, names: list[str]) -> dict:
    """Per engine variant (e.g. bf16), how close its vectors are to the fp32 engine's, protein by protein."""
    import torch

    if not names or not (workdir / "engine.pt").exists():
        return {}
    reference = torch.load(workdir / "engine.pt", weights_only=True)["embeddings"].float()
    figures = {}
    for name in names:
        vectors = torch.load(workdir / f"{name}.pt", weights_only=True)["embeddings"].float()
        cosine = torch.nn.functional.cosine_similarity(vectors.double(), reference.double(), dim=1)
        figures[name] = {
            "min_cosine": float(cosine.min()), "median_cosine": float(cosine.median()),
            "max_abs_difference": float((vectors - reference).abs().max()),
        }  # fmt: skip
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=500)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-variants", default="", help="name:key=value[,key=value];... extra engine sides")
    parser.add_argument("--skip", default="", help="sides to leave out, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from benchmarks.archs import build_checkpoint

    workdir = Path(tempfile.mkdtemp(prefix="cpu-whole-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    try:
        checkpoint = build_checkpoint("t5_cpu", workdir, "cpu", args.layers)
        sequences = proteins(args.proteins, args.seed)
        fasta = workdir / "proteins.fasta"
        fasta.write_text("".join(f">P{i:05d}\n{s}\n" for i, s in enumerate(sequences)))
        sides: dict[str, list[str] | dict] = {
            "seed_sdpa": ["--attention", "sdpa"],
            "seed_eager": ["--attention", "eager"],
            "engine": {},
        }
        for variant in filter(None, args.engine_variants.split(";")):
            name, _, settings = variant.partition(":")
            sides[f"engine_{name}"] = dict(item.split("=", 1) for item in settings.split(",") if item)
        for name in filter(None, args.skip.split(",")):
            sides.pop(name, None)
        results: dict[str, list[dict]] = {name: [] for name in sides}
        for round_index in range(args.rounds):
            for name, side in sides.items():
                out = workdir / f"{name}-{round_index}"
                out.mkdir()
                if isinstance(side, list):
                    script = str(REPO / "benchmarks" / "seed_loop.py")
                    command = [sys.executable, script, "--checkpoint", str(checkpoint), "--fasta", str(fasta),
                               "--out", str(out / "seed.pt"), *side]  # fmt: skip
                else:
                    run_params = {"batch_size": 32, **{k: yaml.safe_load(v) for k, v in side.items()}}
                    config = {
                        "paths": {"data_dir": str(workdir), "raw_train_sequences": fasta.name,
                                  "output_dir": str(out / "out"), "log_dir": str(out / "logs")},
                        "run_params": run_params,
                        "models": {"m": {"name": str(checkpoint), "device": "cpu"}},
                    }  # fmt: skip
                    (out / "config.yaml").write_text(yaml.safe_dump(config))
                    command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config",
                               str(out / "config.yaml")]  # fmt: skip
                result = timed(command, env)
                result["load_average"] = round(os.getloadavg()[0], 2)
                results[name].append(result)
                if not isinstance(side, list):
                    shutil.copy(out / "out" / "train_embeddings_m.pt", workdir / f"{name}.pt")
                shutil.rmtree(out, ignore_errors=True)
                print(f"round {round_index} {name}: {result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU",
                      file=sys.stderr, flush=True)  # fmt: skip
        fidelity = agreement_with_fp32(workdir, [name for name in sides if name.startswith("engine_")])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    best = {name: min(runs, key=lambda r: r["seconds"]) for name, runs in results.items()}
    lengths = sorted(map(len, sequences))
    report = {
        "proteins": len(sequences), "residues": sum(lengths), "median_length": lengths[len(lengths) // 2],
        "max_length": lengths[-1], "layers": args.layers, "cpus": os.cpu_count(), "rounds": args.rounds,
        "best": best, "all": results, "agreement_with_engine_fp32": fidelity,
    }  # fmt: skip
    base = best.get("seed_sdpa")
    print(f"{'side':<16} {'wall s':>8} {'CPU s':>8} {'vs seed_sdpa (wall)':>20} {'peak RSS GiB':>13}")
    for name, r in best.items():
        speedup = f"{base['seconds'] / r['seconds']:.2f}x" if base else "-"
        peak = r["peak_rss_bytes"] / 2**30
        print(f"{name:<16} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} {speedup:>20} {peak:>13.2f}")
    for name, figures in fidelity.items():
        print(f"{name} against the fp32 engine: min cosine {figures['min_cosine']:.6f}, "
              f"median {figures['median_cosine']:.6f}, max |Δ| {figures['max_abs_difference']:.2e}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
