#!/usr/bin/env python
"""Pre-flight validation of every model in a config, on a sample of the config's own proteins, before the long job.

    python validate_t5_embeddings.py --config config_t5.yaml [--num-proteins 100]

Reads the config, the FASTA splits and the models exactly as generate_embeddings_t5.py does (same errors, exit 2),
draws a sample stratified by length that always holds the job's longest protein (deterministic from
run_params.seed), and embeds it in this process through the job's own code (the worker's limits and batch plan,
utils.engine.encode.Encoder). Then, per model: load, token layout, embeddings, pooling, batch invariance, agreement with
an fp32 one-at-a-time reference, memory (measured, and projected for the whole job) and throughput; and ProstT5
against ProtT5 when both are configured. One line per check; the report goes to {log_dir}/validation_report.json.
Exit codes: 0 every check passed, 1 a check failed, 2 bad input. The check itself is utils/checks/preflight_check.py.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from utils import exits
from utils.inputs.keys import describe_config_keys
from utils.requirements import require


def positive_gb(text: str) -> float:
    """argparse type: a finite number of gigabytes above zero (float() alone takes 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive, finite number of GB")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=describe_config_keys(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("config_t5.yaml"), help="YAML config (see README)")
    parser.add_argument(
        "--num-proteins", type=int, default=100, help="sample size, stratified by length; the job's longest protein is "
        "always in it (default 100)",
    )  # fmt: skip
    parser.add_argument(
        "--assume-device-memory-gb", type=positive_gb, default=None, metavar="GB",
        help="pretend each model's device has GB of memory: the automatic batch limits and the memory projection "
        "use it (to plan for another card, and for tests); default: the device's real memory",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.num_proteins < 2:
        parser.error("--num-proteins must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require()  # before torch is imported: a missing requirement is one line, not an import's traceback
    # Imported after parsing: --help must not need torch.
    from utils.checks.preflight_check import run_preflight_check

    return run_preflight_check(args.config, args.num_proteins, args.assume_device_memory_gb)


if __name__ == "__main__":
    sys.exit(exits.run_script(main, "interrupted: the pre-flight check stopped before its report; rerun it to check"))
