"""Checks that need the machine (devices, output paths, disk) and the per-model facts the chunk store is keyed by,
before any model's weights load. Each problem is one line naming the culprit and the fix. The models themselves are
resolved in utils/checks/resolve.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from utils.checks.resolve import ResolvedModel
from utils.inputs.fasta import Records
from utils.inputs.keys import Config, ModelConfig
from utils.units import size_text


def check_devices(config: Config) -> list[str]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = []
    for model in config.models:
        for device in model.devices:
            if device != "cpu" and int(device.split(":")[1]) >= count:
                have = f"{count} GPU(s) (cuda:0..cuda:{count - 1})" if count else "no usable GPU"
                problems.append(
                    f"models.{model.key}.device: {device} does not exist, this machine has {have}; "
                    "set device to an existing GPU or to cpu"
                )
    return problems


def check_engine(config: Config) -> list[str]:
    """engine: ray needs Ray where the job runs; --merge and --dry-run use no engine and do not ask."""
    import importlib.util

    if config.run.engine != "ray":
        return []
    try:
        installed = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a 'ray' in sys.modules without a spec, or one that cannot be imported
        installed = False
    if installed:
        return []
    return [
        f"{config.path}: run_params.engine: engine: ray needs Ray installed: pip install -r requirements_ray.txt "
        "(--merge and --dry-run do not need it)"
    ]


def _directory_problem(key: str, path: Path) -> str | None:
    """Why `path` cannot be used (or created) as a directory this process writes to; None when it can."""
    where = f"paths.{key}: {path}"
    if path.exists():
        if not path.is_dir():
            return f"{where} is a file, not a directory; choose a directory path"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{where} is not writable by this user; fix its permissions or choose another directory"
        return None
    if path.is_symlink():
        return f"{where} is a broken symbolic link (or a symlink loop); fix the link or choose another path"
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{where} cannot be created because {ancestor} is a file; choose another path"
    # os.access says yes to root everywhere, and /proc or a read-only mount say yes to a plain check too: try it.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=ancestor))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return f"{where} cannot be created: nothing can be created in {ancestor} ({reason}); choose another path"
    return None


def _not_a_file_problem(path: Path, what: str) -> str | None:
    """Something already at `path` that would stop a file being written there."""
    if path.is_dir():
        return f"{path}: is a directory, where the run writes {what}; move it away or choose another output_dir"
    return None


def _output_problems(config: Config) -> list[str]:
    """Two outputs mapped to one file name, and anything in the way of a file the run will write."""
    from utils.outputs.writers import planned_outputs

    problems = []
    planned = planned_outputs(
        config.output_dir, list(config.splits), [m.output_key for m in config.models], config.run.output_format,
        config.run.per_residue, config.run.concatenate,
    )  # fmt: skip
    owner: dict[Path, tuple[str, str]] = {}
    for path, split, key in planned:
        if path in owner and owner[path] != (split, key):
            first_split, first_key = owner[path]
            problems.append(
                f"paths.output_dir: split '{first_split}' with output_key '{first_key}' and split '{split}' with "
                f"output_key '{key}' would both write {path.name}; rename a split or an output_key"
            )
        owner.setdefault(path, (split, key))
        problem = _not_a_file_problem(path, f"split '{split}' of '{key}'")
        if problem:
            problems.append(problem)
    store = config.store
    if store.exists() and not store.is_dir():
        problems.append(f"{store}: is a file, where the run keeps its chunk store; move it away or set paths.store_dir")
    lock = config.output_dir / ".lock"
    if lock.exists() and not lock.is_file():
        problems.append(f"{lock}: is not a file (the run's lock file); remove it and rerun")
    for model in config.models:
        log = config.log_dir / f"{model.output_key}.log"
        if log.is_dir():
            problems.append(f"{log}: is a directory, where the log of '{model.key}' goes; move it away")
    return problems


def check_paths(config: Config) -> list[str]:
    """The directories the run writes to exist as directories or can be created, no two outputs share a file name,
    and nothing is in the way of a file the run writes (FASTA paths: utils.inputs.fasta)."""
    problems = [_directory_problem("output_dir", config.output_dir), _directory_problem("log_dir", config.log_dir)]
    if config.store_dir is not None:
        problems.append(_directory_problem("store_dir", config.store_dir))
    found = [problem for problem in problems if problem]
    return found + _output_problems(config)


def chunk_settings(config: Config, model: ResolvedModel, device: str) -> dict[str, Any]:
    """What decides the vectors `model` makes on `device` (utils.running.store.vector_settings): the partition of the
    chunk store its worker reads and writes."""
    from utils.engine.encode import resolve_precision
    from utils.running.store import vector_settings

    precision = resolve_precision(model.config.precision, device)
    return vector_settings(model, precision, config.run.max_residues, config.run.window_overlap, config.run.per_residue)


def machine_decides_precision(model: ModelConfig) -> bool:
    """`precision: auto` on `device: auto`: the machine a run lands on decides the precision (fp16 on a GPU node, fp32
    on a CPU node), not the config; --merge, which embeds nothing, finds it in the store instead."""
    return model.device_auto and model.precision == "auto"


def estimate_output_bytes(
    config: Config,
    splits: dict[str, Records],
    models: list[ResolvedModel],
    present: dict[str, np.ndarray] | None = None,
) -> int:
    """Final files (each format's own overhead included: HDF5's bytes per dataset, the ids and headers), plus chunks
    still to write (`present[output_key]`: which of the job's unique sequences the store holds already, not counted),
    with a margin for containers."""
    from utils.inputs.unique import unique_of
    from utils.outputs.writers import h5_file_bytes, output_bytes

    present = present or {}
    unique = unique_of(splits)
    lengths = unique.lengths(np.int32)  # int32 and sums in int64: a proteome's lengths are millions
    packed = {name: Records.of(records) for name, records in splits.items()}
    # per split: (proteins, residues, UTF-8 bytes of the ids, of the headers)
    sizes = [
        (len(r), int(r.lengths(np.int32).sum(dtype=np.int64)), r.ids.total_bytes(), r.headers.total_bytes())
        for r in packed.values()
    ]

    def finals(dim: int) -> int:
        return sum(output_bytes(config.run.output_format, n, dim, ids, headers) for n, _, ids, headers in sizes)

    total = 0
    for model in models:
        done = present.get(model.config.output_key)
        todo_lengths = lengths if done is None else lengths[~done]
        total += finals(model.dim)
        total += len(todo_lengths) * model.dim * 4  # float32 chunk rows
        if config.run.per_residue:
            total += sum(h5_file_bytes(n, res * model.dim * 2, 2 * ids + heads) for n, res, ids, heads in sizes)
            total += int(todo_lengths.sum(dtype=np.int64)) * model.dim * 2  # per-residue chunk rows
    if config.run.concatenate:
        total += finals(sum(m.dim for m in models))
    if models:  # the merge's scratch file of one model's unique vectors (utils.outputs.gather), one model at a time
        total += len(lengths) * max(m.dim for m in models) * 2
    return int(total * 1.1) + (1 << 20)


def check_disk(config: Config, splits: dict[str, Records], models: list[ResolvedModel]) -> list[str]:
    from utils.inputs.unique import unique_of
    from utils.running.store import ChunkStore

    unique = unique_of(splits).digests
    present = {}
    for m in models:
        held = np.zeros(len(unique), dtype=bool)
        for device in m.config.devices:
            held |= ChunkStore(config.store, chunk_settings(config, m, device)).claimed(unique)
        present[m.config.output_key] = held
    needed = estimate_output_bytes(config, splits, models, present)
    existing = config.output_dir.resolve()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        return [
            f"paths.output_dir: {config.output_dir} has {size_text(free)} free but this job needs about "
            f"{size_text(needed)} more; free some space or choose another output_dir"
        ]
    return []
