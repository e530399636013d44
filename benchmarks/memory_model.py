#!/usr/bin/env python
"""The memory model (utils/engine/limits.py) against a measured peak, and a run under a memory limit against one
without: a random-weight ESM2 in a real architecture, short proteins, fp32 on the CPU.

    python benchmarks/memory_model.py --arch esm2_t33_650M --proteins 60 --slurm-mem 3200
    python benchmarks/memory_model.py --arch esm2_t6_8M --proteins 60 --slurm-mem 150     # seconds, a quick look

Runs the real CLI twice on the same proteins: without a limit, and with SLURM_MEM_PER_NODE (MiB) set as SLURM sets it
for --mem. Prints, for each run, its exit code (and error line), the worker's peak RSS from run_summary.json and the
proteins embedded in windows; the memory model's estimate of the job's heaviest pass (weights + activations) and the
process's own baseline (Python, torch and transformers imported, before any model); and the lowest cosine between
the two runs' vectors. Memory never changes a vector: the limited run either gives the same vectors (cosine 1) or
fails the model in one line. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BASELINE = (
    "import torch, transformers, transformers.modeling_utils, utils.running.worker\n"
    "print(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')))"
)


def write_inputs(directory: Path, checkpoint: Path, proteins: int, seed: int) -> Path:
    rng = random.Random(seed)
    amino = "ACDEFGHIKLMNPQRSTVWY"
    lengths = [rng.randint(7, 192) for _ in range(proteins)]
    records = "".join(f">P{i:04d}\n{''.join(rng.choice(amino) for _ in range(n))}\n" for i, n in enumerate(lengths))
    (directory / "train.fasta").write_text(records)
    config = {
        "paths": {"data_dir": str(directory), "raw_train_sequences": "train.fasta", "output_dir": "OUT",
                  "log_dir": "LOGS"},
        "run_params": {"report": True},
        "models": {"esm2": {"name": str(checkpoint), "device": "cpu"}},
    }  # fmt: skip
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(directory: Path, config: Path, name: str, slurm_mib: int | None) -> dict:
    text = config.read_text().replace("OUT", str(directory / name)).replace("LOGS", str(directory / f"{name}_logs"))
    own = directory / f"{name}.yaml"
    own.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    if slurm_mib is not None:
        env["SLURM_MEM_PER_NODE"] = str(slurm_mib)
    command = [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(own)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    figures = {"exit": result.returncode, "error": errors[0] if errors else ""}
    summary = directory / name / "run_summary.json"
    if summary.exists():
        (worker,) = json.loads(summary.read_text())["workers"]
        figures["peak_rss"] = worker.get("peak_memory_bytes", 0)
    output = directory / name / "train_embeddings_esm2.pt"
    if output.exists():
        import torch

        data = torch.load(output, weights_only=True)
        figures["embeddings"] = data["embeddings"].float()
        figures["windowed"] = len(data["meta"]["windowed"])
    return figures


def main() -> int:
    from benchmarks.dry_run_check import ARCHS, build_checkpoint
    from utils.checks.resolve import resolve_model
    from utils.engine.limits import device_limits, heaviest_pass
    from utils.inputs.keys import ModelConfig
    from utils.units import size_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="esm2_t33_650M")
    parser.add_argument("--proteins", type=int, default=60)
    parser.add_argument("--slurm-mem", type=int, default=3200, help="MiB, as SLURM_MEM_PER_NODE")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        checkpoint = build_checkpoint(directory, args.arch)
        config = write_inputs(directory, checkpoint, args.proteins, args.seed)
        lengths = [len(line) for line in (directory / "train.fasta").read_text().splitlines()[1::2]]
        model = resolve_model(ModelConfig("esm2", str(checkpoint), ("cpu",), "esm2", "fp32", None, -1))
        limits = device_limits(model.arch, "cpu", "fp32")
        estimate, items, tokens = heaviest_pass(limits, model.arch, "fp32", lengths, model.family.special_tokens)
        baseline = int(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                                      cwd=REPO, check=True).stdout)  # fmt: skip
        print(f"{args.arch}: {model.arch.params / 1e6:,.0f} M parameters, {args.proteins} proteins of "
              f"{min(lengths)}-{max(lengths)} residues, fp32 on the CPU")  # fmt: skip
        print(
            f"memory model, heaviest pass ({items} proteins, {tokens:,} tokens): {size_text(estimate)}; "
            f"process baseline before any model: {size_text(baseline)}; sum {size_text(estimate + baseline)}"
        )
        runs = {"no limit": run(directory, config, "free", None),
                f"SLURM --mem {args.slurm_mem}M": run(directory, config, "limited", args.slurm_mem)}  # fmt: skip
        for name, figures in runs.items():
            peak = size_text(figures["peak_rss"]) if figures.get("peak_rss") else "-"
            windowed = figures.get("windowed", "-")
            print(f"{name}: exit {figures['exit']}, worker peak RSS {peak}, windowed {windowed} {figures['error']}")
        free, limited = runs.values()
        if "embeddings" in free and "embeddings" in limited:
            import torch

            cosine = torch.nn.functional.cosine_similarity(free["embeddings"], limited["embeddings"], dim=1)
            print(f"lowest cosine between the two runs: {float(cosine.min()):.6f}")
        if free.get("peak_rss"):
            print(f"measured peak / (model + baseline): {free['peak_rss'] / (estimate + baseline):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
