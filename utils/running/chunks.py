"""One checkpoint chunk: a finished group of batches as one file, its checksum, its checks, and how it is written.

A chunk holds the digests of the sequences it embedded, the settings that produced them (what determines a vector:
checkpoint identity, family, precision, layer, preparation, long-protein settings) and their fingerprint, the pooled
vectors (float32 [N, D]), residue rows when the run keeps them, notes (windows, fp32 redos) and a sha256 checksum
over all of it. A chunk is never changed once written: it is published under a name made from its digests only if
no chunk of that name exists (`write_chunk`), so readers never see a partial or a replaced file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from utils.files import publish_new, temporary_path

CHUNK_SUFFIX = ".chk"
CHUNK_FORMAT = 2  # 1: no settings, no checksum


def sequence_digest(sequence: str) -> str:
    return hashlib.sha1(sequence.encode("ascii")).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()[:32]


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return f"{tuple(tensor.shape)}{tensor.dtype}".encode() + flat.view(torch.uint8).numpy().tobytes()


def chunk_checksum(chunk: dict[str, Any]) -> str:
    """sha256 over everything a chunk says: settings, fingerprint, digests, notes and every tensor's shape, dtype
    and bytes. torch.load does not check the zip's CRCs, so without this a flipped bit would be read as data."""
    digest = hashlib.sha256()
    for key in ("format", "fingerprint", "settings", "digests", "notes"):
        digest.update(_canonical(chunk.get(key)).encode())
    digest.update(_tensor_bytes(chunk["pooled"]))
    for rows in chunk["residues"] or ():
        digest.update(_tensor_bytes(rows))
    return digest.hexdigest()


def chunk_problem(chunk: Any, dim: int | None = None) -> str | None:
    """Why a loaded chunk cannot be trusted (damaged or malformed), or None."""
    if not isinstance(chunk, dict):
        return f"not a chunk (a {type(chunk).__name__})"
    if chunk.get("format") != CHUNK_FORMAT:
        return f"chunk format {chunk.get('format', 1)!r}, not {CHUNK_FORMAT}"
    digests, pooled, residues, notes = (chunk.get(k) for k in ("digests", "pooled", "residues", "notes"))
    if not isinstance(digests, list) or not digests or not all(isinstance(d, str) for d in digests):
        return "no list of sequence digests"
    if not isinstance(pooled, torch.Tensor) or pooled.dtype != torch.float32 or pooled.dim() != 2:
        return "pooled embeddings are not a float32 [N, D] tensor"
    if pooled.shape[0] != len(digests) or (dim is not None and pooled.shape[1] != dim):
        return f"pooled embeddings have shape {tuple(pooled.shape)}, expected ({len(digests)}, {dim or 'D'})"
    if residues is not None:
        if not isinstance(residues, list) or len(residues) != len(digests):
            return "residue rows are not a list with one entry per protein"
        for rows in residues:
            if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != pooled.shape[1]:
                return "residue rows are not [L, D] tensors"
    settings = chunk.get("settings")
    if not isinstance(notes, dict) or not isinstance(settings, dict):
        return "no notes or settings"
    if chunk.get("checksum") != chunk_checksum(chunk):
        return "checksum mismatch: its bytes changed after it was written"
    if chunk.get("fingerprint") != fingerprint(settings):
        return "its fingerprint does not match its settings"
    if (residues is not None) != bool(settings.get("per_residue", residues is not None)):
        return "residue rows present or absent against its settings"
    if not bool(torch.isfinite(pooled).all()) or not all(bool(torch.isfinite(r).all()) for r in residues or ()):
        return "non-finite values"
    return None


def read_chunk(path: Path, dim: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(chunk, None) when every check passes, else (None, why not). Raises FileNotFoundError when the file is gone
    (another process moved it); any other failure to read is a reason, never an exception."""
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        return None, f"unreadable: {reason}"
    problem = chunk_problem(chunk, dim)
    return (None, problem) if problem else (chunk, None)


def read_header(path: Path) -> tuple[str, dict[str, Any], list[str]] | None:
    """(fingerprint, settings, digests) of a chunk, read cheaply (its tensors memory-mapped, nothing checked): what
    a chunk claims to hold, for indexing. None when it cannot be read so (the full check then names the damage).
    Raises FileNotFoundError when the file is gone."""
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        stamp, settings, digests = chunk["fingerprint"], chunk["settings"], chunk["digests"]
    except FileNotFoundError:
        raise
    except Exception:
        return None
    if not (isinstance(stamp, str) and isinstance(settings, dict) and isinstance(digests, list)):
        return None
    if not all(isinstance(d, str) and len(d) == 40 for d in digests):
        return None
    return stamp, settings, digests


def chunk_name(digests: list[str]) -> str:
    """A chunk's file name, from the digests it holds: the same batch computed twice gets the same name."""
    return hashlib.sha1("".join(digests).encode()).hexdigest()[:20] + CHUNK_SUFFIX


def new_chunk(settings: dict[str, Any], digests: list[str], embedded: list[Any], per_residue: bool) -> dict[str, Any]:
    """A chunk of `embedded` (utils.engine.encode.Embedded, one per digest), checksum included."""
    chunk: dict[str, Any] = {
        "format": CHUNK_FORMAT,
        "fingerprint": fingerprint(settings),
        "settings": settings,
        "digests": digests,
        "pooled": torch.stack([e.pooled for e in embedded]).float(),
        "residues": [e.residues for e in embedded] if per_residue else None,
        "notes": {d: e.note for d, e in zip(digests, embedded, strict=True) if e.note},
    }
    chunk["checksum"] = chunk_checksum(chunk)
    return chunk


def write_chunk(chunk: dict[str, Any], path: Path) -> bool:
    """Publish `chunk` at `path` unless a chunk of that name is there already (another run computed the same batch:
    its file stays as it is, and readers never see one replaced). → whether this call wrote it."""
    import io

    buffer = io.BytesIO()
    torch.save(chunk, buffer)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
        return publish_new(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
