"""The GPU scripts' result files, without torch (the collector runs after every step and must start in a blink):
JSON written whole or not at all, read back as {} when missing or cut, and the steps' records (benchmarks/steps.sh)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, document: Any) -> None:
    """`document` as JSON at `path`, through a temporary file renamed into place: a run killed mid-write leaves the
    previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=1, default=str) + "\n")
    partial.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_steps(path: Path) -> dict[str, dict[str, Any]]:
    """Step name → its record ({step, exit, seconds, limit}; exit "skipped" when the budget was spent)."""
    steps = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return steps
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        steps[record["step"]] = record
    return steps


def save(work: Path, step: str, result: dict[str, Any]) -> None:
    """A step's result as W/results/<step>.json."""
    write_json(work / "results" / f"{step}.json", result)
