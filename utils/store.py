"""Checkpoint chunks: finished batches on disk, written atomically, found again on a rerun.

Chunks are content-addressed: each holds the digests of the sequences it embedded and the fingerprint of what
produced them (model, family, precision, preparation, long-protein settings). A rerun reuses every chunk whose
fingerprint matches, whatever the FASTA order; chunks from other settings are reported and deleted, never mixed in.
A kill -9 at any moment leaves each chunk whole or absent (write to a temporary file, fsync, rename).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError

CHUNK_SUFFIX = ".chk"


def sequence_digest(sequence: str) -> str:
    return hashlib.sha1(sequence.encode("ascii")).hexdigest()


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers (and crashes) see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class StoredEmbedding:
    pooled: torch.Tensor  # [D] float32
    note: dict[str, Any] | None


class ChunkStore:
    def __init__(self, directory: Path, fingerprint: str):
        self.directory = directory
        self.fingerprint = fingerprint

    def chunk_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{CHUNK_SUFFIX}")) if self.directory.is_dir() else []

    def _read(self, path: Path) -> dict | None:
        """The chunk at `path` if it is readable and of this fingerprint, else None."""
        try:
            chunk = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a chunk from another version or a damaged disk: recompute rather than fail
            return None
        return chunk if chunk.get("fingerprint") == self.fingerprint else None

    def load(self, remove_stale: bool = False) -> tuple[dict[str, StoredEmbedding], int]:
        """Pooled embeddings in chunks of this fingerprint, by sequence digest; and how many stale chunks were found.

        Residue rows are left on disk (residue_rows streams them): all of a job's would not fit in memory.
        """
        found: dict[str, StoredEmbedding] = {}
        stale = 0
        for path in self.chunk_files():
            chunk = self._read(path)
            if chunk is None:
                stale += 1
                if remove_stale:
                    path.unlink(missing_ok=True)
                continue
            for i, digest in enumerate(chunk["digests"]):
                found[digest] = StoredEmbedding(chunk["pooled"][i], chunk["notes"].get(digest))
        return found, stale

    def residue_rows(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(digest, [L, D] float16) for every protein in chunks of this fingerprint, one chunk in memory at a time."""
        for path in self.chunk_files():
            chunk = self._read(path)
            if chunk is not None and chunk["residues"] is not None:
                yield from zip(chunk["digests"], chunk["residues"], strict=True)

    def write(self, digests: list[str], embedded: list[Any], per_residue: bool) -> Path:
        name = hashlib.sha1("".join(digests).encode()).hexdigest()[:20] + CHUNK_SUFFIX
        chunk = {
            "fingerprint": self.fingerprint,
            "digests": digests,
            "pooled": torch.stack([e.pooled for e in embedded]),
            "residues": [e.residues for e in embedded] if per_residue else None,
            "notes": {d: e.note for d, e in zip(digests, embedded, strict=True) if e.note},
        }
        path = self.directory / name
        atomic_torch_save(chunk, path)
        return path


class OutputLock:
    """One run per output directory. flock is released by the kernel when the holder dies, even by kill -9.

    `shared`: array shards (--shard I/N) of one job write into one directory at once, each its own chunks; they
    share the lock with each other, and exclude a whole run or the --merge that writes the final files.
    """

    def __init__(self, output_dir: Path, shared: bool = False):
        self.path = output_dir / ".lock"
        self.shared = shared
        self.handle: Any = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            other = self.handle.read().strip()
            self.handle.close()
            who = f"another run (pid {other})" if other else "shard runs (--shard)"
            raise UserError(
                f"{self.path.parent}: {who} is writing to this output directory; "
                "wait for it to finish, or set paths.output_dir to another directory"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        if not self.shared:  # shards leave the file empty: a blocked run then knows it waits for shards
            self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
