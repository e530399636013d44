#!/usr/bin/env python
"""Protein language-model embeddings for every FASTA split and model in a config.

    python generate_embeddings_t5.py --config config_t5.yaml
    python generate_embeddings_t5.py --config config_t5.yaml --shard 3/8   # one of 8 array tasks (0..7)
    python generate_embeddings_t5.py --config config_t5.yaml --merge       # when all 8 have finished
    python generate_embeddings_t5.py --config config_t5.yaml --prune-store # remove what this config does not use

Plans model × split jobs, runs one worker process per model (or per shard) on its device, merges the workers'
checkpoint chunks into one file per split and model, in input order, keyed by protein id. Every vector goes into the
chunk store (paths.store_dir), a cache that every run and config sharing it reuses: rerun the same command after a
crash or Ctrl-C to resume. Exit codes: 0 done, 1 a model failed, 2 bad input, 130 interrupted.
The run is utils/running/ (plan.py → local.py → merge.py); this script only reads the command line.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from utils import exits
from utils.inputs.keys import describe_config_keys
from utils.requirements import require


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=describe_config_keys(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("config_t5.yaml"), help="YAML config (see README)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and inputs, print the plan (proteins, duplicates, lengths, windows, batches, disk, "
        "projected time per model) and exit; reads checkpoints' config and tokenizer files only, writes nothing; "
        "with --shard, the plan of that shard",
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
        help="write the final files from the chunk store once every shard has finished (needs no GPU); refuses, "
        "naming missing proteins and why, if one has not",
    )
    array.add_argument(
        "--prune-store",
        action="store_true",
        help="remove the chunk store's partitions that this config's models do not use (other checkpoints, "
        "precisions, layers …), embedding nothing; with --dry-run, only list them. Refused while a run uses the store",
    )
    # Earlier versions set chunks of other settings aside; the store now keeps every setting in its own partition.
    array.add_argument("--set-aside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(_shard_value_attached(sys.argv[1:] if argv is None else argv))
    if args.dry_run and args.merge:
        parser.error("--dry-run plans a run or a shard (--shard); drop --merge")
    return args


def _shard_value_attached(argv: list[str]) -> list[str]:
    """`--shard -1/2` → `--shard=-1/2`: argparse takes a value that starts with '-' for an option and says only
    "expected one argument"; attached, the value reaches parse_shard, which says what is wrong with it."""
    fixed = list(argv)
    for i, arg in enumerate(fixed[:-1]):
        if arg == "--shard" and fixed[i + 1].startswith("-") and not fixed[i + 1].startswith("--"):
            fixed[i : i + 2] = [f"--shard={fixed[i + 1]}"]
            break
    return fixed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require()  # before torch is imported: a missing requirement is one line, not an import's traceback
    from utils.malloc import one_arena

    one_arena()  # before any thread: what the main process frees goes back to the system (utils/malloc.py)
    # Imported after parsing: --help must not need torch.
    from utils.errors import UserError
    from utils.running.local import run_job, start_worker_server
    from utils.running.merge import merge_job
    from utils.running.plan import input_spill, prepare_inputs
    from utils.running.shards import parse_shard

    if args.set_aside:
        print(
            "note: --set-aside is no longer needed: the chunk store keeps the vectors of every setting in a partition "
            "of its own, so a change of settings moves nothing and going back reuses what is there; "
            "--prune-store removes the partitions a config does not use",
            file=sys.stderr,
        )
        return exits.OK
    if not (args.dry_run or args.merge or args.prune_store):
        start_worker_server()
    from utils.checks.preflight import check_paths
    from utils.files import OutputLock
    from utils.inputs.config import load_config

    try:
        shard = parse_shard(args.shard) if args.shard is not None else None
        config = load_config(args.config)
        if args.prune_store:
            from utils.running.prune import prune_store

            return prune_store(config, remove=not args.dry_run)
        if args.dry_run:
            from utils.checks.dryrun import dry_run

            splits, models = prepare_inputs(config, engine=False)
            print("\n".join(dry_run(config, splits, models, shard=shard)))
            return exits.OK
        # The lock before the input is read: a second run on this output directory fails at once, not after the
        # FASTA and the checkpoints were read. With the directory unusable, prepare_inputs names that instead.
        lock = OutputLock(config.output_dir, shared=shard is not None) if not check_paths(config) else nullcontext()
        with lock, input_spill(config, shard, args.merge) as keep:
            runs_nothing = args.merge  # on a node without the configured GPU, or without Ray
            splits, models = prepare_inputs(config, devices=not runs_nothing, engine=not runs_nothing, keep=keep)
            if args.merge:
                return merge_job(config, splits, models)
            return run_job(config, splits, models, shard)
    except UserError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return exits.BAD_INPUT


if __name__ == "__main__":
    # Ctrl-C before the run's own handlers are in place (torch's import alone takes a second or more; then the
    # checks, before any worker started) ends here, in one line
    sys.exit(exits.run_script(main, "interrupted before any work started; rerun the same command to start"))
