"""The run report's words: the status block at the top of the page, which says in plain sentences what a reader must
know before using the embeddings (models that failed or did not finish, proteins that went through windows and why,
proteins redone in fp32), and sizes in the unit that fits.

Pure functions of run_summary.json's data (utils/outputs/report.py builds it); utils/outputs/report_html.py puts
the sentences on the page. "Done" is said only of a run in which every model finished and every protein it embedded
went through one pass at the model's precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SIZE_UNITS = ("B", "KB", "MB", "GB", "TB")


@dataclass
class Status:
    kind: str  # done, notes, interrupted, failed: how the page colours the block
    headline: str
    notes: list[str] = field(default_factory=list)  # "model, model: what is true of them", one thing each

    @property
    def word(self) -> str:
        """The status in a word or two, for the page's title."""
        return {"notes": "finished, with notes"}.get(self.kind, self.kind)


def window_reason(limit: int, max_residues: dict[str, int | None]) -> str:
    """Why a protein longer than `limit` residues went through windows (memory never decides it). `max_residues`: the
    model's entry in the summary, {"set": run_params.max_residues (None: auto), "model": the model's own limit
    (ESM-1b's learned positions) or None}."""
    if max_residues.get("model") == limit:
        return f"longer than the {limit:,} residues the model's learned positions reach"
    return f"longer than run_params.max_residues, {limit:,} residues"


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


# Each note is a model's sentence without its key: models in the same situation share one line
def _windows_note(model: dict[str, Any], workers: Sequence[dict[str, Any]]) -> str | None:
    lengths = [n for w in workers for n in w["windowed_lengths"]]
    if not lengths:
        return None
    limits = [w["max_residues"] for w in workers if w["max_residues"]]
    limit = min(limits) if limits else 0
    why = f"{window_reason(limit, model.get('max_residues') or {})} (the longest: {max(lengths):,})"
    computed = sum(w["computed"] for w in workers)
    return (
        f"{len(lengths):,} of {_plural(computed, 'protein')} went through overlapping windows, not one pass: {why}. "
        "Their ids are in each output's meta['windowed']."
    )


def _redone_note(workers: Sequence[dict[str, Any]]) -> str | None:
    redone = sum(w["redone_in_fp32"] for w in workers)
    if not redone:
        return None
    precisions = " / ".join(dict.fromkeys(w["precision"] for w in workers))
    return (
        f"{_plural(redone, 'protein')} came out NaN or infinite in {precisions} and "
        f"{'was' if redone == 1 else 'were'} embedded again in fp32. Their ids are in each output's "
        "meta['redone_in_fp32']."
    )


def _unfinished_note(model: dict[str, Any], workers: Sequence[dict[str, Any]]) -> str | None:
    if model["status"] == "failed":
        problems = "; ".join(model.get("problems") or []) or "its worker stopped with an error"
        log = f"; its log: {model['log']}" if model.get("log") else ""
        end = "" if problems.endswith((".", "!", "?")) else "."
        return f"failed: {problems}{end} No output file was written for it{log}."
    if model["status"] == "interrupted":
        todo = sum(w["unique_sequences"] - w["reused"] for w in workers)
        done = sum(w["computed"] for w in workers)
        progress = f"after {done:,} of {todo:,} sequences" if workers else "before its worker started"
        return f"interrupted {progress}; rerun the same command to resume (finished chunks are kept)."
    return None


def run_status(summary: dict[str, Any]) -> Status:
    """The status block of the run in `summary` (run_summary.json's data)."""
    models = summary["models"]
    workers = summary["workers"]
    keys_of: dict[str, list[str]] = {}  # note → the models it is true of, in config order
    for model in models:
        own = [w for w in workers if w["model"] == model["key"]]
        for note in (_unfinished_note(model, own), _windows_note(model, own), _redone_note(own)):
            if note:
                keys_of.setdefault(note, []).append(model["key"])
    notes = [f"{', '.join(keys)}: {note}" for note, keys in keys_of.items()]
    reused = sum(w["reused"] for w in workers)
    failed = [m["key"] for m in models if m["status"] == "failed"]
    unfinished = [m["key"] for m in models if m["status"] == "interrupted"]
    if failed or (summary["status"] == "failed" and not models):
        finished = len(models) - len(failed) - len(unfinished)
        written = "; the files of the models that finished are written" if finished else ""
        status = Status("failed", f"Failed: {len(failed)} of {_plural(len(models), 'model')} failed"
                        f"{' (' + ', '.join(failed) + ')' if failed else ''}{written}.", notes)  # fmt: skip
    elif unfinished or summary["status"] == "interrupted":
        status = Status("interrupted", "Interrupted: not every model finished; rerun the same command to resume "
                        "(finished chunks are kept).", notes)  # fmt: skip
    elif notes:
        status = Status(
            "notes",
            "Finished, with notes: every model wrote its files, but not every protein went through one pass at its "
            "model's precision. Read the notes below before using the embeddings.",
            notes,
        )
    elif any(w["computed"] for w in workers):
        status = Status("done", "Done: every model finished; every protein it embedded went through one pass at its "
                        "precision.")  # fmt: skip
    else:
        status = Status("done", "Done: every model's files are written; nothing needed computing in this run.")
    if reused:
        status.notes.append(
            f"{reused:,} unique sequences (all models together) came from chunks of earlier runs: what was done to "
            "them is in each output's meta['windowed'] and meta['redone_in_fp32'], not counted here."
        )
    return status
