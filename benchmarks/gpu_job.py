#!/usr/bin/env python
"""The steps of benchmarks/gpu_job_check.sh that are more than one command: the user's whole job on a device.

    python benchmarks/gpu_job.py build   --work W --device cuda:0 [--scale real|tiny] [--esm2 650m|3b] [--proteins N]
                                         [--models prot_t5_xl,esm2]   # a smaller job (the first GPU call's)
    python benchmarks/gpu_job.py readback    --work W          # pt, HDF5 and Parquet of the main run agree
    python benchmarks/gpu_job.py kill-resume --work W          # kill -9 mid-run, leftovers, rerun, compare
    python benchmarks/gpu_job.py summary     --work W --out O  # everything in O/summary.json and O/summary.txt;
                                                               # exit 1 when a check failed

build: random-weight checkpoints in the hub layouts (tests/tiny_checkpoints.py's builders; `--scale real`: ProtT5-XL
encoder fp16, ProstT5 encoder-decoder fp16, ESM2 650M or 3B, ESM C 600M, weights created on the device), a CAFA-like
FASTA pair (log-normal lengths, the --long proteins, duplicates within and across the splits, UniProt headers in
train, bare accessions with a taxon in test, as CAFA 5's files have them) and two configs: config_main.yaml mirrors
config_t5.yaml (ProtT5 on GPU 0, ProstT5 on GPU 1, ESM2 over both, ESM C on `device: auto`; every GPU index is 0
on a one-GPU machine, and `cpu` for the CPU dry run) and writes pt, HDF5 and Parquet; config_resume.yaml is the same
job for --resume-models, into a directory of its own, with a chunk every batch so that a kill lands between chunks.
Each step writes W/results/<step>.json; `summary` reads whatever is there, so a failed step costs only its rows.
The steps live in benchmarks/job_build.py, job_outputs.py (readback), kill_resume.py and job_summary.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.job_build import MODELS, build  # noqa: E402
from benchmarks.job_outputs import readback  # noqa: E402
from benchmarks.job_summary import summary  # noqa: E402
from benchmarks.kill_resume import kill_resume  # noqa: E402
from benchmarks.results_io import save  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("build", "readback", "kill-resume", "summary"))
    parser.add_argument("--work", type=Path, required=True, help="checkpoints, data, configs, runs and results")
    parser.add_argument("--out", type=Path, help="summary: where summary.json and summary.txt go")
    parser.add_argument("--steps", type=Path, help="summary: the steps' records (default: WORK/results/steps.jsonl)")
    parser.add_argument("--device", default="cuda:0", help="build: cuda:0 or cpu")
    parser.add_argument("--scale", choices=("real", "tiny"), help="build: real sizes (default on GPU) or tiny")
    parser.add_argument("--esm2", choices=("650m", "3b"), default="650m")
    parser.add_argument("--proteins", type=int, default=1500, help="build: proteins over both splits")
    parser.add_argument("--test-share", type=float, default=0.25)
    parser.add_argument("--max-length", type=int, default=35000, help="build: log-normal lengths clipped here")
    parser.add_argument("--long", default="10000,35000", help="build: the long proteins, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS), help="build: the main run's models (default: all four)")
    parser.add_argument("--resume-models", default="prot_t5_xl,esm2", help="models of the kill -9 / resume run")
    parser.add_argument("--kill-deadline", type=float, default=120, help="kill -9 by then if a chunk is written")
    parser.add_argument("--rerun-timeout", type=float, default=300)
    args = parser.parse_args(argv)
    args.scale = args.scale or ("tiny" if args.device == "cpu" else "real")
    args.long = [int(x) for x in args.long.split(",") if x]
    args.models = tuple(m for m in MODELS if m in args.models.split(","))
    args.resume_models = [m for m in args.resume_models.split(",") if m]
    unknown = set(args.resume_models) - set(args.models)
    if unknown:
        parser.error(f"--resume-models: {sorted(unknown)} not among the built models {', '.join(args.models)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step == "build":
        result = build(args)
    elif args.step == "readback":
        result = readback(args.work)
    elif args.step == "kill-resume":
        result = kill_resume(args.work, args.kill_deadline, args.rerun_timeout)
    else:
        result = summary(args.work, args.out, args.steps)
    if args.step == "summary":
        (args.out / "summary.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    else:
        save(args.work, args.step.replace("-", "_"), result)
    if args.step == "readback":
        print(json.dumps(result, indent=1, default=str))
    if args.step == "kill-resume":
        print(json.dumps({k: v for k, v in result.items() if k != "files"}, indent=1, default=str))
    if args.step == "summary" and any(check["passed"] is False for check in result["checks"]):
        return 1  # the script's verdict names this step; summary.txt says which check failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
