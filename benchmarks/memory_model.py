#!/usr/bin/env python
"""The memory model (utils/engine/limits.py) against a measured peak, and a run under a memory limit against one
without: a random-weight ESM2 in a real architecture, short proteins, fp32 on the CPU.

    python benchmarks/memory_model.py --arch esm2_t33_650M --proteins 60 --slurm-mem 3200
    python benchmarks/memory_model.py --arch esm2_t6_8M --proteins 60 --slurm-mem 150     # seconds, a quick look
    python benchmarks/memory_model.py --activations        # bytes per token: measured against the model, per family

Runs the real CLI twice on the same proteins: without a limit, and with SLURM_MEM_PER_NODE (MiB) set as SLURM sets it
for --mem. Prints, for each run, its exit code (and error line), the worker's peak RSS from run_summary.json and the
proteins embedded in windows; the memory model's estimate of the job's heaviest pass (weights + activations) and the
process's own baseline (Python, torch and transformers imported, before any model); and the lowest cosine between
the two runs' vectors. Memory never changes a vector: the limited run either gives the same vectors (cosine 1) or
fails the model in one line. Asserts nothing.

--activations: per family at real widths (ESM2-650M, ESM C 600M, ProtT5-XL; two layers: activations are freed layer
by layer, so depth does not change them), the peak RSS a packed pass adds over the process before it, at ~800 and
~3,600 tokens in fresh processes; the slope is the bytes per token the memory model's activation term must cover
(Architecture.activation_widths).
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


ACTIVATIONS = r"""
import json, random, sys
sys.path.insert(0, sys.argv[1])
from utils.engine.encode import Encoder, load_encoder
from utils.engine.families import FAMILIES
family, path, tokens = sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer, model = load_encoder(path, FAMILIES[family], "cpu", "fp32")
encoder = Encoder(tokenizer, model, FAMILIES[family], "cpu", None, 256, tokens_per_pass=1 << 20)
rng = random.Random(0)
proteins = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(400)) for _ in range(tokens // 402)]
encoder.embed(proteins[:1])
def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))
open("/proc/self/clear_refs", "w").write("5")  # the peak starts over here
before = status("VmRSS:")
encoder.embed(proteins)
print(json.dumps({"tokens": sum(len(p) + 2 for p in proteins), "added": status("VmHWM:") - before}))
"""
WIDTHS = {  # family: (builder, real widths with two layers)
    "esm2": ("build_esm2", {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20}),
    "esmc": ("build_esmc", {"hidden_size": 1152, "intermediate_size": 3072, "num_attention_heads": 18,
                            "num_key_value_heads": 18, "head_dim": 64}),
    "prot_t5": ("build_prot_t5", {"d_model": 1024, "d_ff": 16384, "num_heads": 32, "d_kv": 128}),
}  # fmt: skip


def activations() -> None:
    """Measured bytes per packed token (the slope between two pass sizes) against the memory model's."""
    from tests import tiny_checkpoints
    from utils.engine.families import architecture
    from utils.engine.limits import linear_bytes_per_token

    with tempfile.TemporaryDirectory() as tmp:
        for family, (builder, widths) in WIDTHS.items():
            layers = {"num_layers": 2} if family == "prot_t5" else {"num_hidden_layers": 2}
            path = getattr(tiny_checkpoints, builder)(Path(tmp) / family, sizes={**widths, **layers})
            runs = []
            for tokens in (800, 3600):
                command = [sys.executable, "-c", ACTIVATIONS, str(REPO), family, str(path), str(tokens)]
                runs.append(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))
            measured = (runs[1]["added"] - runs[0]["added"]) / (runs[1]["tokens"] - runs[0]["tokens"])
            import transformers

            modeled = linear_bytes_per_token(architecture(transformers.AutoConfig.from_pretrained(path)), 4)
            print(f"{family}: measured {measured / 1024:,.0f} KiB per token, modeled {modeled / 1024:,.0f} KiB "
                  f"({modeled / measured:.2f}×)")  # fmt: skip


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
    parser.add_argument("--activations", action="store_true", help="bytes per token per family, then exit")
    args = parser.parse_args()
    if args.activations:
        activations()
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        checkpoint = build_checkpoint(directory, args.arch)
        config = write_inputs(directory, checkpoint, args.proteins, args.seed)
        lengths = [len(line) for line in (directory / "train.fasta").read_text().splitlines()[1::2]]
        model = resolve_model(ModelConfig("esm2", str(checkpoint), ("cpu",), "esm2", "fp32", None, -1))
        baseline = int(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                                      cwd=REPO, check=True).stdout)  # fmt: skip
        print(f"{args.arch}: {model.arch.params / 1e6:,.0f} M parameters, {args.proteins} proteins of "
              f"{min(lengths)}-{max(lengths)} residues, fp32 on the CPU; process baseline before any model: "
              f"{size_text(baseline)}")  # fmt: skip
        estimates = {}
        for name, memory in (("no limit", None), ("limit", args.slurm_mem << 20)):
            limits = device_limits(model.arch, "cpu", "fp32", memory_bytes=memory)
            estimate, items, tokens = heaviest_pass(limits, model.arch, "fp32", lengths, model.family.special_tokens)
            estimates[name] = estimate + baseline
            print(f"memory model, {name}: heaviest pass {items} proteins, {tokens:,} tokens (budget "
                  f"{limits.max_tokens_per_batch:,}): {size_text(estimate)}, with the baseline "
                  f"{size_text(estimate + baseline)}")  # fmt: skip
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
        for figures, estimate in zip((free, limited), estimates.values(), strict=True):
            if figures.get("peak_rss"):
                print(f"measured peak / (model + baseline): {figures['peak_rss'] / estimate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
