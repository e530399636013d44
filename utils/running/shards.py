"""Array shards: which unique sequences one task of a SLURM array (or any set of independent runs) embeds.

A sequence belongs to shard `int(digest[:15], 16) % N`, from its SHA-1 digest alone: reordering the FASTA files or
adding proteins never moves a sequence from one shard to another, so a rerun of one array task redoes only its
own work, and every shard writes into the same content-addressed chunk store. `--merge` then writes the final files
from the store, once every shard has finished. It runs nothing, so it needs no device; when proteins have no vector
yet, it says why where the store can tell (`missing_problems`): a damaged chunk (named), or the same sequences
embedded under other settings (a shard whose `device: auto` landed on a CPU node, say: the settings named).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from utils.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from utils.running.store import ChunkStore

_SHARD = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")
# Digest digits read as the shard number: 60 bits, so `% N` is uniform for any N a cluster could run.
_DIGITS = 15


@dataclass(frozen=True)
class Shard:
    index: int  # 0 … count-1 (SLURM's $SLURM_ARRAY_TASK_ID with --array=0-(N-1))
    count: int

    def holds(self, digest: str) -> bool:
        return shard_of(digest, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(digest: str, count: int) -> int:
    """The shard (0 … count-1) of a sequence, from its hex digest (utils.running.store.sequence_digest)."""
    return int(digest[:_DIGITS], 16) % count


def parse_shard(text: str) -> Shard:
    """'I/N' from the command line → Shard; UserError naming the fix when it is not a shard of N."""
    match = _SHARD.match(text)
    if match is None:
        raise UserError(f"--shard {text!r}: give I/N, e.g. --shard 0/8 (shards are numbered 0 to N-1)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise UserError(f"--shard {text}: N, the number of shards, must be at least 1; give I/N, e.g. --shard 0/8")
    if not 0 <= index < count:
        raise UserError(
            f"--shard {text}: the shard index must be 0 to {count - 1} for {count} shard(s); "
            "with SLURM use --array=0-(N-1) and --shard $SLURM_ARRAY_TASK_ID/N"
        )
    return Shard(index, count)


def missing_report(missing_ids: Iterable[str], count: int, what: str, examples: int = 5) -> str:
    """One line: how many proteins have no embedding, a few of their ids, and what to do."""
    shown = []
    for protein_id in missing_ids:
        shown.append(repr(protein_id))
        if len(shown) == examples:
            break
    more = ", …" if count > len(shown) else ""
    return (
        f"{what}: {count} protein(s) have no embedding yet (e.g. {', '.join(shown)}{more}); "
        "run the shards that have not finished (--shard I/N with the same config), then --merge again"
    )


def missing_problems(label: str, stores: list[ChunkStore], missing: np.ndarray, config_path: Path) -> list[str]:
    """Why sequences (`missing`, DIGEST) have no vector in `stores` (the partitions the merge reads), one line per
    cause the store can name, the fix in each: damaged chunks (quarantined while looking), and other partitions of
    the same checkpoint that hold some of them, with the settings that differ."""
    from utils.running.store import NOTES_LISTED, ChunkStore, changed_settings, describe_changes

    lines = []
    for store in stores:
        for path, reason in store.damaged.found[:NOTES_LISTED]:
            lines.append(
                f"{label}: chunk {path} is damaged or unreadable ({reason}); it was moved to quarantine/: rerun the "
                "shard that wrote it (a shard redoes only its missing proteins), or run once without --shard"
            )
    seen: set[Path] = set()
    for store in stores:
        for directory, settings in store.others():
            if directory in seen:
                continue
            seen.add(directory)
            held = int(ChunkStore(store.root, settings, store.dim).claimed(missing).sum())
            if held:
                lines.append(
                    f"{label}: {held} of them are in the store under other settings "
                    f"({describe_changes(changed_settings(settings, store.settings))}; {directory}): set those in "
                    f"{config_path} to use them, or rerun the shards that made them with this config's settings"
                )
    return lines
