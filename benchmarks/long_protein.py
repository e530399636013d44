#!/usr/bin/env python
"""One long protein through a T5 at real attention width, in one pass: time and peak memory.

    python benchmarks/long_protein.py --json benchmarks/results/cpu_long_protein.json
    python benchmarks/long_protein.py --device cuda:0 --lengths 10000,35000 --layers 24 --attention flex

A ProtT5-layout encoder with random weights at ProtT5-XL's attention width (d_model 1,024, 32 heads × 128, d_ff 16,384)
and --layers layers (ProtT5-XL has 24), the real tokenizer files, loaded by the job's own code
(utils.engine.encode.load_encoder, Encoder). Each length runs in a fresh process, so peak memory is that protein's
alone: peak RSS on CPU, the allocator's peak on GPU. transformers' forward would build the position bias as heads × L ×
L (32 × 20,000² × 4 bytes = 51 GB in fp32 at 20,000 residues) before attention even starts; the packed engine keeps
attention linear in L (utils/engine/attention.py). Reported per length: seconds (model loaded, first pass included),
peak memory, windows (none expected), and the estimate of the memory model (utils/engine/limits.py) for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ONE = r"""
import json, random, resource, sys, time
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[1])
from tests.tiny_checkpoints import build_prot_t5
from utils.engine.encode import Encoder, load_encoder
from utils.engine.families import PROT_T5, architecture
from utils.engine.limits import DTYPE_BYTES, estimate_peak_bytes

length, layers, device, precision, attention, directory = (
    int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], Path(sys.argv[7])
)
if not (directory / "config.json").exists():
    shape = {"d_model": 1024, "num_heads": 32, "d_kv": 128, "d_ff": 16384, "num_layers": layers}
    build_prot_t5(directory, sizes=shape, device=device)  # on a GPU the weights are made there: seconds
tokenizer, model = load_encoder(str(directory), PROT_T5, device, precision)
encoder = Encoder(tokenizer, model, PROT_T5, device, 10**6, 256, attention=attention)
sequence = "".join(random.Random(length).choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(length))
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
started = time.perf_counter()
embedded = encoder.embed([sequence])[0]
if device.startswith("cuda"):
    torch.cuda.synchronize()
seconds = time.perf_counter() - started
if device.startswith("cuda"):
    peak = torch.cuda.max_memory_allocated()
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
estimate = estimate_peak_bytes(architecture(model.config), DTYPE_BYTES[precision], length + 1)
print(json.dumps({
    "residues": length, "seconds": seconds, "peak_bytes": peak, "estimated_peak_bytes": estimate,
    "windows": (embedded.note or {}).get("windows", 0), "finite": bool(torch.isfinite(embedded.pooled).all()),
    "path": encoder.path,
}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="20000", help="comma-separated residues, one process each")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="default: fp32 on CPU, fp16 on GPU")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    precision = args.precision or ("fp32" if args.device == "cpu" else "fp16")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "prot_t5_wide"
        for length in (int(x) for x in args.lengths.split(",")):
            command = [sys.executable, "-c", ONE, str(REPO), str(length), str(args.layers), args.device, precision]
            result = subprocess.run(
                [*command, args.attention, str(checkpoint)], capture_output=True, text=True, cwd=REPO
            )
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
                return 1
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{row['residues']:>7,} residues, {args.layers} layer(s) of 32 heads × 128 on {args.device} "
                f"({precision}): {row['seconds']:.1f} s, peak {row['peak_bytes'] / 2**30:.2f} GiB (memory model: "
                f"{row['estimated_peak_bytes'] / 2**30:.2f} GiB), windows {row['windows']}, {row['path']}"
            )
    if args.json:
        report = {"device": args.device, "precision": precision, "layers": args.layers, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
