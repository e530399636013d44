#!/usr/bin/env python
"""Protein language-model embeddings for every FASTA split and model in a config.

    python generate_embeddings_t5.py --config config_t5.yaml
    python generate_embeddings_t5.py --config config_t5.yaml --shard 3/8   # one of 8 array tasks (0..7)
    python generate_embeddings_t5.py --config config_t5.yaml --merge       # when all 8 have finished

Plans model × split jobs, runs one worker process per model (or per shard) on its device, merges the workers'
checkpoint chunks into one file per split and model, in input order, keyed by protein id. Rerun the same command
after a crash or Ctrl-C to resume. Exit codes: 0 done, 1 a model failed, 2 bad input, 130 interrupted.
The engine is utils/job.py; this script only reads the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils import exits
from utils.config import describe_config_keys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=describe_config_keys(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("config_t5.yaml"), help="YAML config (see README)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and inputs, print the plan (proteins, duplicates, lengths, windows, batches, disk, "
        "projected time per model) and exit; reads checkpoints' config and tokenizer files only, writes nothing",
    )
    array = parser.add_mutually_exclusive_group()
    array.add_argument(
        "--shard",
        metavar="I/N",
        help="embed only shard I of N (0 ≤ I < N) of the unique sequences into the chunk store, e.g. a SLURM array "
        "task's --shard $SLURM_ARRAY_TASK_ID/N; shards of one job may run at once on one output directory",
    )
    array.add_argument(
        "--merge",
        action="store_true",
        help="write the final files from the chunk store once every shard has finished; refuses, naming missing "
        "proteins, if one has not",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after parsing: --help must not need torch.
    from utils.errors import UserError
    from utils.job import merge_job, prepare, run_job, start_worker_server
    from utils.shards import parse_shard

    start_worker_server()
    from utils.store import OutputLock

    try:
        shard = parse_shard(args.shard) if args.shard is not None else None
        config, splits, models = prepare(args.config)
        if args.dry_run:
            from utils.dryrun import dry_run

            print("\n".join(dry_run(config, splits, models)))
            return exits.OK
        with OutputLock(config.output_dir, shared=shard is not None):
            if args.merge:
                return merge_job(config, splits, models)
            return run_job(config, splits, models, shard)
    except UserError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return exits.BAD_INPUT
    except KeyboardInterrupt:  # during the checks, before any worker started: nothing was written
        print("\ninterrupted before any work started; rerun the same command to start", file=sys.stderr)
        return exits.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
