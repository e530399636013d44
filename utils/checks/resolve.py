"""Models: each config model → a ResolvedModel (where its checkpoint is, its family and shape, its identity), read
from the checkpoint's config and tokenizer files only: no weights load here. Used by the run's checks and by the
Python API alike; each problem is one line naming the culprit and the fix.

A checkpoint's identity comes from its content, so that touching or copying its files does not throw away finished
chunks: a Hugging Face cache snapshot is named by its commit; any other directory is a sha256 over its files'
names and contents, with each file's hash cached (by resolved path, size, mtime and inode) in
$XDG_CACHE_HOME/protein-embeddings/file-hashes.json, so a rerun does not read gigabytes of weights again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from utils.engine.families import Architecture, Family, architecture, detect_family, hidden_state_index
from utils.errors import UserError
from utils.inputs.keys import Config, ModelConfig


@dataclass(frozen=True)
class ResolvedModel:
    config: ModelConfig
    source: str  # what from_pretrained gets: the resolved local directory or the hub id
    family: Family
    arch: Architecture
    identity: str  # changes when the checkpoint's content changes: 'hub:<commit>' or 'sha256:<files' hash>'

    @property
    def dim(self) -> int:
        return self.arch.hidden

    @property
    def layer_index(self) -> int:
        """The hidden state pooled, 0 … arch.layers (the last, the default); resolve_model checked the range."""
        index = hidden_state_index(self.config.layer, self.arch.layers)
        assert index is not None
        return index


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


def _hash_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "protein-embeddings" / "file-hashes.json"


def _read_hash_cache(path: Path) -> dict[str, str]:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_hash_cache(path: Path, cache: dict[str, str]) -> None:
    """Best effort: without a cache the next run hashes the files again, which is slow but correct."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cache, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


# Files that do not change what the model computes: editing a README must not throw away finished chunks.
_NOT_CHECKPOINT = re.compile(r"^(\..*|README.*|LICEN[CS]E.*|.*\.md)$", re.IGNORECASE)


def content_identity(directory: Path) -> str:
    """'hub:<commit>' for a Hugging Face cache snapshot, else 'sha256:' over the names and contents of the
    checkpoint's files (weights, tokenizer, config). Independent of mtimes and of how the path was written."""
    resolved = directory.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return "hub:" + resolved.name
    cache_path = _hash_cache_path()
    cache = _read_hash_cache(cache_path)
    digest = hashlib.sha256()
    changed = False
    for path in sorted(resolved.iterdir()):
        if _NOT_CHECKPOINT.match(path.name) or not path.is_file():
            continue
        info = path.stat()
        key = f"{path.resolve()}:{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"
        if key not in cache:
            cache[key] = _file_sha256(path)
            changed = True
        digest.update(f"{path.name}:{cache[key]}\n".encode())
    if changed:
        _write_hash_cache(cache_path, cache)
    return "sha256:" + digest.hexdigest()[:32]


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file whose size disagrees with its own header (a truncated download or copy)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"is {size} bytes, too short for a safetensors file"
            (header_bytes,) = struct.unpack("<Q", head)
            if header_bytes > min(size - 8, 100 << 20):
                return f"has a header of {header_bytes} bytes in a {size}-byte file"
            header = json.loads(handle.read(header_bytes))
    except (OSError, ValueError) as exc:
        return f"cannot be read as safetensors ({type(exc).__name__})"
    if not isinstance(header, dict):
        return "has no valid safetensors header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]  # fmt: skip
    expected = 8 + header_bytes + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size} bytes, its header says {expected})"
    return None


def _weights_problem(directory: Path) -> str | None:
    """The first weight file that is evidently incomplete, as 'name: why'; None when they look whole."""
    files = []
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
                files += sorted({str(shard) for shard in weight_map.values()})
            except (OSError, ValueError, AttributeError):
                return f"{name}: cannot be read as a weight index"
    files += [name for name in ("model.safetensors", "pytorch_model.bin") if (directory / name).is_file()]
    for name in files:
        path = directory / name
        if not path.is_file():
            return f"{name}: listed in the weight index but missing"
        if name.endswith(".safetensors"):
            problem = _safetensors_problem(path)
        else:
            problem = None if zipfile.is_zipfile(path) else "is not a whole torch archive (truncated?)"
        if problem:
            return f"{name}: {problem}"
    return None


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
        damaged = _weights_problem(local)
        if damaged:
            raise UserError(f"{where}: {model.name}/{damaged}; the checkpoint is damaged: copy or download it again")
        return str(local.resolve()), content_identity(local)
    from huggingface_hub import snapshot_download

    try:
        cached: Path | None = Path(snapshot_download(model.name, local_files_only=True))
    except Exception:  # not cached (or a partial download): the hub decides below
        cached = None
    if cached is not None and (cached / "config.json").is_file() and _has_weights(cached):
        damaged = _weights_problem(cached)
        if damaged:
            raise UserError(
                f"{where}: {model.name} in the Hugging Face cache: {damaged}; download it again "
                f"(hf download {model.name} --force-download)"
            )
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
