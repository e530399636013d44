"""Array shards: which unique sequences one task of a SLURM array (or any set of independent runs) embeds.

A sequence belongs to shard `int(digest[:15], 16) % N`, from its SHA-1 digest alone: reordering the FASTA files or
adding proteins never moves a sequence from one shard to another, so a rerun of one array task redoes only its
own work, and every shard writes into the same content-addressed chunk store. `--merge` then writes the final files
from the chunks, once every shard has finished. It runs nothing, so it needs no device: it reads the settings from the
chunks (`merged_settings`) and, when proteins have no embedding, says why (`store_problems`): a damaged chunk (named),
chunks of other settings (the settings named), an output_key renamed, or shards that have not run.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import UserError

if TYPE_CHECKING:
    from utils.running.store import ChunkStore, SetAside

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


def merged_settings(
    expected: dict[str, Any], machine_keys: Collection[str], survey: dict[str, tuple[dict[str, Any], int]]
) -> dict[str, Any]:
    """The settings --merge reads a store with: those of the store's chunks (the most common, `survey` as
    ChunkStore.survey gives it) when they agree with the config's `expected` on every setting but `machine_keys`
    (utils.checks.preflight.machine_settings: what the shards' machines decided); else the config's own."""
    keys = set(expected)
    agreeing = [
        (count, settings)
        for settings, count in survey.values()
        if all(settings.get(key) == expected.get(key) for key in keys | set(settings) if key not in machine_keys)
    ]
    return max(agreeing, key=lambda entry: entry[0])[1] if agreeing else expected


def stores_of_checkpoint(chunks_root: Path, settings: dict[str, Any], used: Collection[str]) -> list[Path]:
    """Chunk directories under `chunks_root` that no configured model uses but that hold chunks of the same
    checkpoint and layer as `settings`: where a model's chunks went before its output_key was renamed."""
    from utils.running.store import ChunkStore

    found = []
    for directory in sorted(chunks_root.iterdir()) if chunks_root.is_dir() else []:
        if directory.name in used or not directory.is_dir():
            continue
        for other, _ in ChunkStore(directory, {}).survey().values():
            if all(other.get(key) == settings.get(key) for key in ("checkpoint", "family", "layer")):
                found.append(directory)
                break
    return found


def store_problems(
    label: str, store: ChunkStore, report: SetAside, renamed_from: list[Path], config_path: Path
) -> list[str]:
    """Why a model's proteins are missing from its store, one line per cause, the fix in each: no chunk at all
    (perhaps the output_key was renamed), a damaged chunk (named), chunks of other settings (the settings named)."""
    from utils.running.store import NOTES_LISTED, describe_changes

    lines = []
    if not store.chunk_files():
        if renamed_from:
            names = ", ".join(str(path) for path in renamed_from)
            lines.append(
                f"{label}: no chunks in {store.directory}, but {names} holds chunks of this checkpoint: was its "
                f"output_key renamed? set output_key back to '{renamed_from[0].name}' in {config_path}, or rename "
                f"that directory to {store.directory.name}"
            )
        else:
            lines.append(f"{label}: no chunks in {store.directory}: no shard has written any yet")
    for name, reason in report.damaged[:NOTES_LISTED]:
        lines.append(
            f"{label}: chunk {store.directory / name} is damaged or unreadable ({reason}); rerun the shard that "
            "wrote it (a shard redoes only its missing proteins), or run once without --shard"
        )
    if len(report.damaged) > NOTES_LISTED:
        lines.append(f"{label}: {len(report.damaged) - NOTES_LISTED} more damaged chunk(s) in {store.directory}")
    if report.other_settings:
        lines.append(
            f"{label}: {report.other_settings} chunk(s) in {store.directory} were made with other settings "
            f"({describe_changes(report.changed)}); set those back in {config_path}, or start over with these "
            "settings: --set-aside, then the shards"
        )
    return lines
