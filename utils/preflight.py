"""Checks that need the machine (devices, models, disk) and turn the config into per-model facts, before any
model's weights load. Each problem is one line naming the culprit and the fix."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from utils.config import Config, ModelConfig, output_formats
from utils.errors import UserError
from utils.families import Architecture, Family, architecture, detect_family, hidden_state_index
from utils.fasta import Record


@dataclass(frozen=True)
class ResolvedModel:
    config: ModelConfig
    source: str  # what from_pretrained gets: the local directory or the hub id
    family: Family
    arch: Architecture
    identity: str  # changes when the checkpoint's files change (hub revision, or local files' sizes and times)

    @property
    def dim(self) -> int:
        return self.arch.hidden

    @property
    def layer_index(self) -> int:
        """The hidden state pooled, 0 … arch.layers (the last, the default); resolve_model checked the range."""
        index = hidden_state_index(self.config.layer, self.arch.layers)
        assert index is not None
        return index


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


def _directory_problem(key: str, path: Path) -> str | None:
    """Why `path` cannot be used (or created) as a directory this process writes to; None when it can."""
    where = f"paths.{key}: {path}"
    if path.exists():
        if not path.is_dir():
            return f"{where} is a file, not a directory; choose a directory path"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{where} is not writable by this user; fix its permissions or choose another directory"
        return None
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{where} cannot be created because {ancestor} is a file; choose another path"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{where} cannot be created: {ancestor} is not writable by this user; choose another path"
    return None


def check_paths(config: Config) -> list[str]:
    """The directories the run writes to exist as directories or can be created (FASTA paths: utils.fasta)."""
    problems = [_directory_problem("output_dir", config.output_dir), _directory_problem("log_dir", config.log_dir)]
    return [problem for problem in problems if problem]


# What from_pretrained loads weights from; a directory without any of them is not a usable checkpoint.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
EXAMPLE_HUB_ID = "Rostlab/prot_t5_xl_half_uniref50-enc"


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) set now, or when huggingface_hub was imported (it reads it
    once, then refuses every request)."""
    from huggingface_hub import constants

    values = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(value in ("1", "true", "yes", "on") for value in values) or bool(constants.HF_HUB_OFFLINE)


def _local_identity(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return "local:" + digest.hexdigest()[:16]


def _locate(model: ModelConfig) -> tuple[str, str]:
    """→ (source for from_pretrained, identity); raises UserError when neither local nor on the hub."""
    where = f"models.{model.key}.name"
    local = Path(model.name).expanduser()
    if local.exists() or model.name.startswith((".", "/", "~")) or not HUB_ID.match(model.name):
        if not local.exists():
            raise UserError(
                f"{where}: {model.name} does not exist (and is not a hub id); "
                f"set name to a checkpoint directory or a hub id such as {EXAMPLE_HUB_ID}"
            )
        if not (local / "config.json").is_file():
            raise UserError(
                f"{where}: {model.name} is not a model directory (no config.json); point it at a checkpoint directory"
            )
        if not _has_weights(local):
            raise UserError(
                f"{where}: {model.name} has no weights ({' or '.join(WEIGHT_FILES[::2])}); the checkpoint is "
                "incomplete: copy or download it again"
            )
        return str(local), _local_identity(local)
    from huggingface_hub import snapshot_download

    try:
        cached: Path | None = Path(snapshot_download(model.name, local_files_only=True))
    except Exception:  # not cached (or a partial download): the hub decides below
        cached = None
    if cached is not None and (cached / "config.json").is_file() and _has_weights(cached):
        return model.name, "hub:" + cached.name
    if hub_offline():
        state = "is not a local directory and not in the local Hugging Face cache"
        if cached is not None:
            state = "is only partly in the local Hugging Face cache (no weights)"
        raise UserError(
            f"{where}: {model.name} {state}, and this machine is offline (HF_HUB_OFFLINE is set), so the hub was "
            f"not asked; download it once with network access (hf download {model.name}), "
            "or set name to a local checkpoint directory"
        )
    try:
        from huggingface_hub import model_info

        info = model_info(model.name, timeout=15)
        return model.name, "hub:" + str(info.sha)
    except Exception as exc:
        reason = type(exc).__name__
        raise UserError(
            f"{where}: {model.name} is neither a local directory nor in the Hugging Face cache, and the hub "
            f"could not be reached ({reason}); check the id and your network, or set name to a local directory"
        ) from None


def resolve_model(model: ModelConfig) -> ResolvedModel:
    source, identity = _locate(model)
    from transformers import AutoConfig, AutoTokenizer

    where = f"models.{model.key}.name"
    try:
        model_config = AutoConfig.from_pretrained(source)
        vocabulary = AutoTokenizer.from_pretrained(source).get_vocab()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: {model.name} could not be read as a checkpoint ({first})") from None
    try:
        family = detect_family(model_config, vocabulary, model.name)
    except UserError as exc:
        raise UserError([f"{where}: {problem}" for problem in exc.problems]) from None
    arch = architecture(model_config)
    if hidden_state_index(model.layer, arch.layers) is None:
        raise UserError(
            f"models.{model.key}.layer: {model.layer} is out of range for {model.name}, which has {arch.layers} "
            f"layers; use 0 (embedding output) … {arch.layers} (last), or -1 (last) … -{arch.layers + 1}"
        )
    return ResolvedModel(model, source, family, arch, identity)


def resolve_models(config: Config) -> tuple[list[ResolvedModel], list[str]]:
    resolved, problems = [], []
    for model in config.models:
        try:
            resolved.append(resolve_model(model))
        except UserError as exc:
            problems += exc.problems
    return resolved, problems


def estimate_output_bytes(config: Config, splits: dict[str, list[Record]], models: list[ResolvedModel]) -> int:
    """Final files plus chunks (with a margin for containers)."""
    proteins = sum(len(records) for records in splits.values())
    residues = sum(len(r.sequence) for records in splits.values() for r in records)
    files = len(output_formats(config.run.output_format))
    total = 0
    for model in models:
        total += proteins * model.dim * (2 * files + 4)  # float16 finals + float32 chunk rows
        if config.run.per_residue:
            total += residues * model.dim * 2 * 2  # per-residue HDF5 + chunks
    if config.run.concatenate:
        total += proteins * sum(m.dim for m in models) * 2
    return int(total * 1.1) + (1 << 20)


def check_disk(config: Config, splits: dict[str, list[Record]], models: list[ResolvedModel]) -> list[str]:
    needed = estimate_output_bytes(config, splits, models)
    existing = config.output_dir.resolve()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        return [
            f"paths.output_dir: {config.output_dir} has {free / 1e9:.2f} GB free but this job needs about "
            f"{needed / 1e9:.2f} GB; free some space or choose another output_dir"
        ]
    return []
