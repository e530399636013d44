"""The chunk store: one cache of every vector computed, shared by every run, config, shard and output directory.

    {store_dir}/                               paths.store_dir (default {output_dir}/.chunks)
      {family}.{precision}.layer{N}.{hash}/    a partition: the chunks of one set of settings
        partition.json                         those settings, for people and for `partitions()`
        {name}.chk                             chunks (utils/running/chunks.py): immutable, published whole
        quarantine/                            damaged chunks: kept for inspection, never read again
      quarantine/                              unreadable chunks of the earlier layout
      .lock                                    held shared by every run; alone by --prune-store

A partition is keyed by what determines a vector (`vector_settings`): the checkpoint's identity (its content),
family, layer, precision, preparation and long-protein settings; not by the output key, the output directory or the
config, so two configs that embed one sequence with one model and settings share its vector. Going back to earlier
settings finds their partition as it was: nothing is moved when settings change.

No global lock: every chunk is written once under a name made from its digests and published only where no file of
that name exists, so any number of runs (shards, other configs, Ray drivers, notebooks) write into one partition at
once; two that compute the same sequence both keep a whole chunk, and readers take each digest once. Each run reads
a chunk's header cheaply to see what it holds and checks in full (checksum, shape, dtype, finite values) only the
chunks that hold sequences it needs; a damaged chunk is moved to quarantine/ and named, and its sequences count as
missing (recomputed by the run or shard they belong to).

The earlier layout (`{output_dir}/.chunks/{output_key}/`, with its settings.json claim and set_aside/) is read where
it is, chunk by chunk by their settings, and moved into partitions by the next run that embeds (`tidy`).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from utils.files import atomic_write_bytes, remove_dead_temporary_files, write_new_bytes
from utils.inputs.unique import hex_to_digests
from utils.running.chunks import (
    CHUNK_SUFFIX,
    chunk_name,
    fingerprint,
    new_chunk,
    read_chunk,
    read_header,
    sequence_digest,
)

if TYPE_CHECKING:
    from utils.checks.resolve import ResolvedModel

__all__ = ["ChunkStore", "sequence_digest", "vector_settings", "partitions", "prune", "tidy"]

PARTITION_FILE = "partition.json"
QUARANTINE = "quarantine"
LEGACY_SET_ASIDE = "set_aside"  # the earlier layout's chunks of other settings
LEGACY_CLAIM = "settings.json"  # the earlier layout's claim of a store for one set of settings
NOTES_LISTED = 10  # damaged chunks named one per line; past this many, counted
_PARTITION_NAME = re.compile(r"\.[0-9a-f]{16}$")


def vector_settings(
    model: ResolvedModel, precision: str, max_residues: int | None, window_overlap: int, per_residue: bool
) -> dict[str, Any]:
    """Everything that decides a chunk's numbers: the partition key, stored in every chunk. `max_residues`: the
    config's (None: auto), resolved here the same on every machine (the model's own positional limit, or none)."""
    from utils.engine.limits import resolved_max_residues

    return {
        "checkpoint": model.identity,
        "family": model.family.name,
        "precisions": [precision],  # a list, as the earlier layout kept it, so that its chunks keep their partition
        # Resolved here, the same on every machine (a device too small for a protein's pass fails the model)
        "max_residues": resolved_max_residues(max_residues, model.arch),
        "window_overlap": window_overlap,
        "per_residue": per_residue,
        "layer": model.layer_index,  # the hidden state pooled (models.<key>.layer)
        "format": 2,
    }


def partition_name(settings: dict[str, Any]) -> str:
    """family.precision.layerN.hash: readable in a listing, unique by the fingerprint."""
    precisions = "+".join(str(p) for p in settings.get("precisions") or ["any"])
    return f"{settings.get('family', 'model')}.{precisions}.layer{settings.get('layer')}.{fingerprint(settings)[:16]}"


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
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
class Damaged:
    """Chunks a pass found damaged or unreadable, by path, with the reason; each was moved to quarantine/."""

    found: list[tuple[Path, str]] = field(default_factory=list)

    def lines(self, label: str) -> list[str]:
        lines = [
            f"{label}: chunk {path} is damaged or unreadable ({reason}); moved to its partition's {QUARANTINE}/ (kept, "
            "never read); the sequences it held are computed again by the run or shard they belong to"
            for path, reason in self.found[:NOTES_LISTED]
        ]
        if len(self.found) > NOTES_LISTED:
            lines.append(f"{label}: {len(self.found) - NOTES_LISTED} more damaged chunk(s) moved to {QUARANTINE}/")
        return lines


class ChunkStore:
    """One partition of the store under `root`: the chunks of one set of `settings` (vector_settings); `dim`, the
    vector width, is checked on every chunk read. Many processes may use one partition at once."""

    def __init__(self, root: Path, settings: dict[str, Any], dim: int | None = None):
        self.root = root
        self.settings = settings
        self.fingerprint = fingerprint(settings)
        self.directory = root / partition_name(settings)
        self.dim = dim
        self.damaged = Damaged()
        self.chunks_read = 0  # trusted chunks that held sequences asked for
        self._seen: set[str] = set()  # chunk files looked at (chunks_holding's new_only)

    def chunk_files(self) -> list[Path]:
        """This partition's chunks, and those of the earlier layout made with these settings."""
        try:
            names = sorted(name for name in os.listdir(self.directory) if name.endswith(CHUNK_SUFFIX))
        except FileNotFoundError:
            names = []
        return [self.directory / name for name in names] + legacy_chunks(self.root).get(self.fingerprint, [])

    def chunks_holding(self, wanted: np.ndarray, new_only: bool = False) -> Iterator[dict[str, Any]]:
        """Each trusted chunk that holds any of `wanted` (DIGEST), checked in full as it is read; a damaged chunk is
        quarantined and added to self.damaged. Chunks that hold none of them are only glanced at (their header).
        `new_only`: only chunk files this ChunkStore has not looked at before (written meanwhile by another run)."""
        wanted = sorted_set(wanted)
        for path in self.chunk_files():
            if new_only and str(path) in self._seen:
                continue
            self._seen.add(str(path))
            try:
                header = read_header(path)
                if header is not None and header[0] != self.fingerprint:  # put here by hand, or a legacy mix-up
                    changed = describe_changes(changed_settings(header[1], self.settings))
                    self._quarantine(path, f"made with other settings ({changed})")
                    continue
                if header is not None and not contains(wanted, hex_to_digests(header[2])).any():
                    continue
                chunk, problem = read_chunk(path, self.dim)
            except FileNotFoundError:  # moved meanwhile: quarantined by another run, or tidied into a partition
                continue
            if problem is not None:
                self._quarantine(path, problem)
                continue
            self.chunks_read += 1
            yield chunk

    def held(self, wanted: np.ndarray, new_only: bool = False) -> np.ndarray:
        """Whether trusted chunks hold each of `wanted` (DIGEST), aligned with it; see chunks_holding."""
        marks = Marks(wanted)
        for chunk in self.chunks_holding(marks.ordered, new_only):
            marks.mark(hex_to_digests(chunk["digests"]))
        return marks.result()

    def claimed(self, wanted: np.ndarray) -> np.ndarray:
        """Whether chunk headers claim each of `wanted` (DIGEST), aligned with it: read cheaply and nothing checked (a
        damaged chunk counts until a run checks it), for estimates (--dry-run, the disk check, the merge's choice of
        partition), which must not move anything."""
        marks = Marks(wanted)
        for path in self.chunk_files():
            try:
                header = read_header(path)
            except FileNotFoundError:
                continue
            if header is not None and header[0] == self.fingerprint:
                marks.mark(hex_to_digests(header[2]))
        return marks.result()

    def residue_rows(self, wanted: np.ndarray) -> Iterator[tuple[str, torch.Tensor]]:
        """(digest, [L, D] float16) for every protein of trusted chunks that hold any of `wanted`, a chunk at a time."""
        for chunk in self.chunks_holding(wanted):
            if chunk["residues"] is not None:
                yield from zip(chunk["digests"], chunk["residues"], strict=True)

    def write(self, digests: list[str], embedded: list[Any], per_residue: bool) -> Path:
        """A new chunk of `embedded` (one per digest). Where another run published a chunk of the same batch first,
        its file stays and this one is dropped: the same sequences, embedded with the same settings."""
        self.make_partition()
        path = self.directory / chunk_name(digests)
        if path.is_dir() and not path.is_symlink():  # something else under this chunk's name: keep it, out of the way
            self._quarantine(path, "a directory under a chunk's name")
        buffer = io.BytesIO()
        torch.save(new_chunk(self.settings, digests, embedded, per_residue), buffer)
        write_new_bytes(path, buffer.getvalue())
        self._seen.add(str(path))  # its own: nothing to look up in it
        return path

    def make_partition(self) -> None:
        if not (self.directory / PARTITION_FILE).is_file():
            record = {"fingerprint": self.fingerprint, "settings": self.settings}
            atomic_write_bytes(self.directory / PARTITION_FILE, (json.dumps(record, indent=1) + "\n").encode())

    def _quarantine(self, path: Path, reason: str) -> None:
        self.damaged.found.append((path, reason))
        move_aside(path, self.directory / QUARANTINE)

    def others(self) -> list[tuple[Path, dict[str, Any]]]:
        """Other partitions of this checkpoint and family (other precision, layer, long-protein settings …): where a
        sequence missing here may have been embedded with other settings."""
        found = [(p.directory, p.settings) for p in partitions(self.root) if p.settings is not None]
        for stamp, paths in legacy_chunks(self.root).items():  # the earlier layout's, not yet tidied
            header = read_header(paths[0]) if stamp is not None and paths[0].exists() else None
            if header is not None:
                found.append((paths[0].parent, header[1]))
        return [
            (directory, settings)
            for directory, settings in found
            if fingerprint(settings) != self.fingerprint
            and all(settings.get(k) == self.settings.get(k) for k in ("checkpoint", "family"))
        ]


def sorted_set(digests: np.ndarray) -> np.ndarray:
    """`digests` sorted, each once (as given when they are already: a comparison, not a sort)."""
    if len(digests) < 2 or bool((digests[1:] > digests[:-1]).all()):
        return digests
    return np.unique(digests)


class Marks:
    """Which of many digests a store holds, marked chunk by chunk: a bool each and, unless they come sorted, their
    order (4 bytes) and a sorted copy (20 bytes) while it lives; no list of the digests found, which at a proteome's
    size cost more than the digests themselves."""

    def __init__(self, wanted: np.ndarray):
        self.order: np.ndarray | None = None
        if len(wanted) > 1 and not bool((wanted[1:] > wanted[:-1]).all()):
            order = np.argsort(wanted, kind="stable")
            self.order = order.astype(np.uint32) if len(order) < 2**32 else order
            del order
            wanted = wanted[self.order]
        self.ordered = wanted
        self.seen = np.zeros(len(wanted), dtype=bool)

    def mark(self, digests: np.ndarray) -> None:
        if len(self.ordered):
            at = np.minimum(np.searchsorted(self.ordered, digests), len(self.ordered) - 1)
            self.seen[at[self.ordered[at] == digests]] = True

    def result(self) -> np.ndarray:
        """A bool per wanted digest, in the order given (equal digests alike)."""
        seen = self.seen
        if len(seen) > 1 and not bool((self.ordered[1:] > self.ordered[:-1]).all()):
            same = self.ordered[1:] == self.ordered[:-1]  # searchsorted marked the first of each run of equals
            while True:
                spread = seen[:-1] & same & ~seen[1:]
                if not spread.any():
                    break
                seen[1:] |= spread
        if self.order is None:
            return seen
        aligned = np.empty_like(seen)
        aligned[self.order] = seen
        return aligned


def contains(ordered: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """Whether each of `digests` is in `ordered` (sorted): a binary search each, no sort of `ordered` again."""
    if not len(ordered):
        return np.zeros(len(digests), dtype=bool)
    return ordered[np.minimum(np.searchsorted(ordered, digests), len(ordered) - 1)] == digests


def move_aside(path: Path, directory: Path) -> Path | None:
    """Move `path` into `directory` under a free name (kept, never deleted). None when it was gone already."""
    directory.mkdir(parents=True, exist_ok=True)
    target, n = directory / path.name, 1
    while target.exists() or target.is_symlink():
        target, n = directory / f"{path.name}.{n}", n + 1
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


# -- the store as a whole: partitions, sizes, pruning, the earlier layout ----------------------------------------------
@dataclass(frozen=True)
class Partition:
    directory: Path
    settings: dict[str, Any] | None  # None: a directory of the earlier layout (its chunks' settings vary)
    chunks: int
    bytes: int
    quarantined: int

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.settings) if self.settings is not None else None


def partitions(root: Path) -> list[Partition]:
    """Every partition under `root` (and each directory of the earlier layout), with its chunks' count and size."""
    found = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        if not directory.is_dir() or directory.name.startswith(".") or directory.name == QUARANTINE:
            continue
        settings = _partition_settings(directory)
        if settings is None and not _PARTITION_NAME.search(directory.name) and not _legacy_files(directory):
            continue
        chunks = [p for p in directory.glob(f"*{CHUNK_SUFFIX}") if p.is_file()]
        chunks += _legacy_files(directory) if settings is None else []
        quarantine = directory / QUARANTINE
        found.append(
            Partition(
                directory,
                settings,
                len(chunks),
                sum(_size(p) for p in chunks),
                len(list(quarantine.iterdir())) if quarantine.is_dir() else 0,
            )
        )
    return found


def prune(root: Path, keep: set[str]) -> list[Partition]:
    """Remove every partition whose fingerprint is not in `keep` (quarantined chunks with it); the caller holds the
    store alone (utils.files.StoreLock). Directories of the earlier layout are tidied into partitions first."""
    tidy(root)
    removed = []
    for partition in partitions(root):
        if partition.settings is not None and partition.fingerprint not in keep:
            shutil.rmtree(partition.directory)
            removed.append(partition)
    return removed


def _partition_settings(directory: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((directory / PARTITION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    settings = record.get("settings") if isinstance(record, dict) else None
    return settings if isinstance(settings, dict) else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _legacy_files(directory: Path) -> list[Path]:
    """The chunk files of one directory of the earlier layout: its chunks and those it had set aside."""
    files = [p for p in directory.glob(f"*{CHUNK_SUFFIX}") if p.is_file()]
    aside = directory / LEGACY_SET_ASIDE
    if aside.is_dir():  # set_aside/ numbered a name it met twice: name.chk.1
        files += [p for p in aside.iterdir() if p.is_file() and re.search(r"\.chk(\.\d+)?$", p.name)]
    return sorted(files)


def _legacy_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [
        d for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and d.name != QUARANTINE and not _PARTITION_NAME.search(d.name)
    ]  # fmt: skip


_LEGACY: dict[Path, tuple[tuple, dict[str | None, list[Path]]]] = {}  # root → (directories' mtimes, index)


def legacy_chunks(root: Path) -> dict[str | None, list[Path]]:
    """fingerprint → chunk files of the earlier layout under `root` (None: unreadable ones), read once per process
    while those directories are unchanged."""
    directories = _legacy_dirs(root)
    stamp = tuple((d, d.stat().st_mtime_ns, _mtime(d / LEGACY_SET_ASIDE)) for d in directories)
    cached = _LEGACY.get(root)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    index: dict[str | None, list[Path]] = {}
    for directory in directories:
        for path in _legacy_files(directory):
            try:
                header = read_header(path)
            except FileNotFoundError:
                continue
            index.setdefault(header[0] if header else None, []).append(path)
    _LEGACY[root] = (stamp, index)
    return index


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def tidy(root: Path) -> list[str]:
    """Chunks of the earlier layout moved into the partitions of their settings (unreadable ones into
    {root}/quarantine/), its claims and empty directories removed, dead temporary files removed. Safe while other
    runs use the store: they find a moved chunk in its partition. → notes for the user."""
    moved = 0
    for stamp, paths in legacy_chunks(root).items():
        for path in paths:
            if stamp is None:
                move_aside(path, root / QUARANTINE)
                continue
            header = read_header(path) if path.exists() else None
            if header is None:
                continue
            store = ChunkStore(root, header[1])
            store.make_partition()
            name = re.sub(r"(\.chk)\.\d+$", r"\1", path.name)
            if (store.directory / name).exists():  # the same batch in both: keep both, under a free name
                name = f"{path.stem.split('.')[0]}.{os.getpid()}{CHUNK_SUFFIX}"
            try:
                os.replace(path, store.directory / name)
                moved += 1
            except FileNotFoundError:
                continue
    for directory in [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []:
        remove_dead_temporary_files(directory)
    for directory in _legacy_dirs(root):
        (directory / LEGACY_CLAIM).unlink(missing_ok=True)
        for empty in (directory / LEGACY_SET_ASIDE, directory):
            try:
                empty.rmdir()
            except OSError:
                pass
    _LEGACY.pop(root, None)
    return [f"{moved} chunk(s) of the earlier store layout moved into the partitions of {root}"] if moved else []
