"""Checkpoint chunks: finished batches on disk, written atomically, checked when read, found again on a rerun.

Chunks are content-addressed: each holds the digests of the sequences it embedded, the settings that produced them
(checkpoint identity, family, precision, preparation, long-protein settings) and their fingerprint, and a sha256
checksum over all of that and the tensors' bytes. A rerun reuses every chunk that passes every check (checksum,
structure, shape, dtype, finite values) and whose fingerprint matches. Anything else is never mixed in: a run over
the whole store sets it aside (moved into `set_aside/` beside the chunks, never deleted, named in one note, its proteins
recomputed); an array shard (--shard I/N) only skips it, since it may be another shard's work. A damaged or
unreadable chunk (a flipped bit, a truncated file, a directory where a chunk should be) is told apart from a chunk
made with other settings, and for those the note names the settings that changed.

One store holds one fingerprint. The first run into it writes the settings to `settings.json` (a shard creates it
exclusively, so two shards started at once with different settings cannot both start); a shard refuses a store of
other settings before any work (`claim`). Set-aside chunks whose settings match a run's again are brought back by it.
A kill -9 at any moment leaves each chunk whole or absent (write to a temporary file, fsync, rename).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError

CHUNK_SUFFIX = ".chk"
CHUNK_FORMAT = 2  # 1: no settings, no checksum
SET_ASIDE = "set_aside"
SETTINGS_FILE = "settings.json"  # the store's claim: the fingerprint and settings of the chunks it holds
NOTES_LISTED = 10  # damaged chunks named one per line; past this many, counted


def sequence_digest(sequence: str) -> str:
    return hashlib.sha1(sequence.encode("ascii")).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers (and crashes) see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path) -> None:
    """Put a finished temporary file in place: fsync it, rename it over `path`, fsync the directory. Every writer
    of a final file or chunk ends here, so a kill -9 leaves the old file or the whole new one."""
    descriptor = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
    """Why a loaded chunk cannot be trusted (damaged or malformed), or None. The fingerprint is not compared here."""
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
    if not isinstance(notes, dict) or not isinstance(chunk.get("settings"), dict):
        return "no notes or settings"
    if chunk.get("checksum") != chunk_checksum(chunk):
        return "checksum mismatch: its bytes changed after it was written"
    if not bool(torch.isfinite(pooled).all()) or not all(bool(torch.isfinite(r).all()) for r in residues or ()):
        return "non-finite values"
    return None


def _changed_settings(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    """setting → 'old → new' for every setting that differs."""
    changed = {}
    for key in sorted(set(old) | set(new), key=str):
        if old.get(key) != new.get(key):
            changed[str(key)] = f"{old.get(key, 'unset')} → {new.get(key, 'unset')}"
    return changed


def describe_changes(changed: dict[str, str]) -> str:
    """'precisions: ['bf16'] → ['fp32']; layer: 6 → 4', cut to a line's worth."""
    what = "; ".join(f"{key}: {change}" for key, change in changed.items()) or "unknown settings"
    return what if len(what) <= 300 else what[:297] + "..."


@dataclass
class StoredEmbedding:
    pooled: torch.Tensor  # [D] float32
    note: dict[str, Any] | None


@dataclass
class SetAside:
    """What one pass over the chunks did not trust: damaged chunks by name with the reason, chunks of other settings
    with the settings that differ."""

    directory: Path
    damaged: list[tuple[str, str]] = field(default_factory=list)
    other_settings: int = 0
    changed: dict[str, str] = field(default_factory=dict)
    moved: bool = True  # set aside; False: only skipped (an array shard leaves other shards' chunks alone)

    def __bool__(self) -> bool:
        return bool(self.damaged or self.other_settings)

    def lines(self, label: str) -> list[str]:
        """One note per damaged chunk (the first few, then a count) and one for the chunks of other settings."""
        where = self.directory / SET_ASIDE
        fate = f"moved to {where}" if self.moved else "skipped (left in place for a run without --shard)"
        lines = [
            f"{label}: chunk {name} is damaged or unreadable ({reason}); {fate}, its proteins are redone"
            for name, reason in self.damaged[:NOTES_LISTED]
        ]
        if len(self.damaged) > NOTES_LISTED:
            lines.append(f"{label}: {len(self.damaged) - NOTES_LISTED} more damaged chunk(s) {fate}")
        if self.other_settings:
            lines.append(
                f"{label}: {self.other_settings} chunk(s) made with other settings ({describe_changes(self.changed)}) "
                f"were {fate}; their proteins are redone"
            )
        return lines


class ChunkStore:
    """The chunks of one model in one directory. `settings` is what produced them (stored in every chunk, so a
    chunk of other settings can say what changed); `dim` is the embedding width, checked on every chunk read."""

    def __init__(self, directory: Path, settings: dict[str, Any], dim: int | None = None):
        self.directory = directory
        self.settings = settings
        self.fingerprint = fingerprint(settings)
        self.dim = dim

    def chunk_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{CHUNK_SUFFIX}")) if self.directory.is_dir() else []

    def _read(self, path: Path) -> tuple[dict | None, str | None, bool]:
        """→ (chunk if trusted and of these settings, why not trusted, whether it is of other settings)."""
        try:
            chunk = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable file is set aside, never fatal
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            return None, f"unreadable: {reason}", False
        problem = chunk_problem(chunk, self.dim)
        if problem is not None:
            return None, problem, False
        if chunk["fingerprint"] != self.fingerprint or fingerprint(chunk["settings"]) != chunk["fingerprint"]:
            return chunk, None, True
        if (chunk["residues"] is not None) != bool(self.settings.get("per_residue", chunk["residues"] is not None)):
            return None, "residue rows present or absent against its settings", False
        return chunk, None, False

    def set_aside(self, path: Path) -> Path:
        """Move a chunk (or whatever sits under a chunk's name) out of the way, keeping it for inspection."""
        target_dir = self.directory / SET_ASIDE
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / path.name
        n = 1
        while target.exists() or target.is_symlink():
            target, n = target_dir / f"{path.name}.{n}", n + 1
        os.replace(path, target)
        return target

    def load(self, set_aside: bool = False) -> tuple[dict[str, StoredEmbedding], SetAside]:
        """Pooled embeddings of trusted chunks of these settings, by sequence digest; and what was not trusted
        (moved into set_aside/ when `set_aside`, else only skipped).

        Residue rows are left on disk (residue_rows streams them): all of a job's would not fit in memory.
        """
        found: dict[str, StoredEmbedding] = {}
        report = SetAside(self.directory, moved=set_aside)
        for chunk in self.trusted(report, set_aside):
            for i, digest in enumerate(chunk["digests"]):
                found[digest] = StoredEmbedding(chunk["pooled"][i], chunk["notes"].get(digest))
        return found, report

    def trusted(self, report: SetAside, set_aside: bool = False) -> Iterator[dict[str, Any]]:
        """Each trusted chunk of these settings in turn; the others are noted in `report` (and set aside)."""
        for path in self.chunk_files():
            chunk, problem, other = self._read(path)
            if problem is not None or other:
                if problem is not None:
                    report.damaged.append((path.name, problem))
                else:
                    report.other_settings += 1
                    for key, change in _changed_settings(chunk["settings"], self.settings).items():
                        report.changed.setdefault(key, change)
                if set_aside:
                    self.set_aside(path)
                continue
            yield chunk

    def done_digests(self, set_aside: bool = False) -> tuple[np.ndarray, SetAside]:
        """Digests (utils.unique.DIGEST, sorted) of the sequences in trusted chunks of these settings, and what was
        not trusted (moved into set_aside/ when `set_aside`): a worker's view of what a previous run finished,
        without a tensor per protein."""
        from utils.unique import hex_to_digests

        report = SetAside(self.directory, moved=set_aside)
        parts = [hex_to_digests(chunk["digests"]) for chunk in self.trusted(report, set_aside)]
        return np.unique(np.concatenate(parts) if parts else hex_to_digests([])), report

    def survey(self) -> dict[str, tuple[dict[str, Any], int]]:
        """fingerprint → (settings, number of chunks) of the chunks here, read cheaply (tensors memory-mapped, not
        checked); a chunk that cannot be read this way is left to the full check."""
        found: dict[str, tuple[dict[str, Any], int]] = {}
        for path in self.chunk_files():
            try:
                chunk = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                stamp, settings = chunk["fingerprint"], chunk["settings"]
            except Exception:  # damaged: the full check names it
                continue
            if isinstance(stamp, str) and isinstance(settings, dict):
                found[stamp] = (settings, found.get(stamp, ({}, 0))[1] + 1)
        return found

    def claimed(self) -> dict[str, Any] | None:
        """The settings settings.json claims the store for, or None when there is none (or it is unreadable)."""
        try:
            claim = json.loads((self.directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        settings = claim.get("settings") if isinstance(claim, dict) else None
        return settings if isinstance(settings, dict) else None

    def claim(self, shard: str | None, reconcile: str) -> list[str]:
        """Before any work: make the store this run's. A whole-store run (`shard` None) claims it outright (its
        workers set aside chunks of other settings); a shard refuses (UserError naming the settings that differ and
        `reconcile`, the commands that settle it) a store claimed for, or holding chunks of, other settings, and
        else claims it exclusively, so that of two shards started at once with different settings one refuses.
        Then brings back set-aside chunks of these settings. Returns notes for the user."""
        if shard is not None:
            self._refuse_other_settings(shard, reconcile)
        record = json.dumps({"fingerprint": self.fingerprint, "settings": self.settings}, default=str).encode()
        path = self.directory / SETTINGS_FILE
        if shard is None:
            atomic_write_bytes(path, record)
        elif self.claimed() is None:
            self._create_exclusively(path, record)
            self._refuse_other_settings(shard, reconcile)  # another shard may have claimed it first
        restored = self.restore_set_aside()
        if not restored:
            return []
        return [f"{restored} chunk(s) of these settings brought back from {self.directory / SET_ASIDE}"]

    def _refuse_other_settings(self, shard: str, reconcile: str) -> None:
        claimed = self.claimed()
        others = {fp: entry for fp, entry in self.survey().items() if fp != self.fingerprint}
        if claimed is not None and fingerprint(claimed) != self.fingerprint:
            others.setdefault(fingerprint(claimed), (claimed, 0))
        if not others:
            return
        chunks = sum(count for _, count in others.values())
        settings = max(others.values(), key=lambda entry: entry[1])[0]
        held = f"holds {chunks} chunk(s) made" if chunks else "was started by another run"
        raise UserError(
            f"--shard {shard}: {self.directory} {held} with other settings "
            f"({describe_changes(_changed_settings(settings, self.settings))}); a shard adds only to a store of its "
            f"own settings and sets nothing aside. {reconcile}"
        )

    @staticmethod
    def _create_exclusively(path: Path, data: bytes) -> None:
        """Write `path` only if it does not exist (a hard link publishes the whole file or fails)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)

    def restore_set_aside(self) -> int:
        """Move chunks of these settings that pass every check back from set_aside/ (e.g. after a change of
        settings was undone); returns how many. A chunk whose name is taken again stays where it is."""
        aside = self.directory / SET_ASIDE
        if not aside.is_dir():
            return 0
        restored = 0
        for path in sorted(aside.iterdir()):
            name = re.sub(r"(\.chk)\.\d+$", r"\1", path.name)  # set_aside() numbers a name it met before
            target = self.directory / name
            if not name.endswith(CHUNK_SUFFIX) or not path.is_file() or target.exists() or target.is_symlink():
                continue
            chunk, problem, other = self._read(path)
            if chunk is None or problem is not None or other:
                continue
            try:
                os.replace(path, target)
            except FileNotFoundError:  # another shard brought it back first
                continue
            restored += 1
        return restored

    def present_digests(self) -> set[str]:
        """Digests in chunks of these settings, read cheaply (tensors memory-mapped, not checked): for estimates."""
        present: set[str] = set()
        for path in self.chunk_files():
            try:
                chunk = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if chunk.get("fingerprint") == self.fingerprint:
                    present.update(d for d in chunk["digests"] if isinstance(d, str))
            except Exception:  # damaged: it will be set aside and redone, so it counts as not present
                continue
        return present

    def residue_rows(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(digest, [L, D] float16) for every protein in trusted chunks of these settings, one chunk at a time."""
        for path in self.chunk_files():
            chunk, problem, other = self._read(path)
            if chunk is not None and problem is None and not other and chunk["residues"] is not None:
                yield from zip(chunk["digests"], chunk["residues"], strict=True)

    def write(self, digests: list[str], embedded: list[Any], per_residue: bool) -> Path:
        name = hashlib.sha1("".join(digests).encode()).hexdigest()[:20] + CHUNK_SUFFIX
        chunk: dict[str, Any] = {
            "format": CHUNK_FORMAT,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "digests": digests,
            "pooled": torch.stack([e.pooled for e in embedded]).float(),
            "residues": [e.residues for e in embedded] if per_residue else None,
            "notes": {d: e.note for d, e in zip(digests, embedded, strict=True) if e.note},
        }
        chunk["checksum"] = chunk_checksum(chunk)
        path = self.directory / name
        if path.is_dir() and not path.is_symlink():  # something else under this chunk's name: keep it, out of the way
            self.set_aside(path)
        atomic_torch_save(chunk, path)
        return path


_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")  # atomic_write_bytes' and H5Writer's names: .{name}.tmp-{pid}


def remove_temporary_files(output_dir: Path) -> list[Path]:
    """Temporary files a killed run left behind (in the output directory and the chunk directories); only call this
    holding the exclusive lock, when no other writer can be using them. Returns what was removed."""
    removed = []
    for directory in [output_dir, *sorted((output_dir / ".chunks").glob("*"))]:
        if not directory.is_dir() or directory.is_symlink():
            continue
        for path in directory.iterdir():
            if _TEMPORARY.match(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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
        # What the lock itself creates, so that a run refused for its input leaves nothing behind (see __exit__)
        self.created = [p for p in (self.path, *self.path.parents) if not p.exists()][::-1]
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
        self.previous = self.handle.read()
        self.handle.seek(0)
        self.handle.truncate()
        if not self.shared:  # shards leave the file empty: a blocked run then knows it waits for shards
            self.handle.write(str(os.getpid()))
        self.handle.flush()
        if not self.shared:  # alone in the directory: no temporary file here can belong to a live writer
            remove_temporary_files(self.path.parent)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and issubclass(exc_type, UserError):
            # Refused before any work: bad input leaves the output side as it was, the lock's file and directories
            # included (removed while still held, so no other run can have taken them meanwhile)
            for path in reversed(self.created):
                try:
                    path.unlink() if path == self.path else path.rmdir()
                except OSError:
                    break  # something else is in it now: leave it
            if self.path not in self.created:  # the lock of an earlier run: its content back as it was
                self.handle.seek(0)
                self.handle.truncate()
                self.handle.write(self.previous)
                self.handle.flush()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
