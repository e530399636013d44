"""config_t5.yaml, the first file a user edits, says what the code does: every key it names is a key of the key
table (utils/inputs/keys.py CONFIG_KEYS, which the validator, --help and the README's table read), each key's
comment is that table's meaning word for word, and a commented-out key shows the table's default. A meaning changed
in the table without the YAML (or the other way round) fails here, naming the line and the text it must have."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO
from utils.inputs.keys import CONFIG_KEYS

TABLE = {key.key: key for key in CONFIG_KEYS}
CONFIG = REPO / "config_t5.yaml"
SECTION = re.compile(r"^([a-z_]+):\s*(#.*)?$")
# `  key: value  # meaning` or `  # key: value  # meaning`, two spaces in: a key of paths or run_params
SETTING = re.compile(r"^  (?P<off># )?(?P<key>[a-z_]+):(?P<value>[^#]*?)\s*(?P<comment>#\s.*)?$")
MODEL_SETTING = re.compile(r"^    (?P<key>[a-z_]+):")  # a key of one model, under models.<key>
MODEL_KEY_LINE = re.compile(r"^#   (?P<key>[a-z_]+): (?P<meaning>.+)$")  # the list of a model's keys above models:


def described_keys(lines: list[str]) -> list[tuple[int, str, str | None, str | None, str]]:
    """(line number, dotted key, meaning as the YAML says it, value shown when commented out, the line) of every key
    that config_t5.yaml names, in file order; a meaning may go on over lines that continue its comment's column.
    A model's own keys carry no comment (None): the list above `models:` describes them."""
    found: list[tuple[int, str, str | None, str | None, str]] = []
    section = None
    for number, line in enumerate(lines, 1):
        if SECTION.match(line):
            section = SECTION.match(line).group(1)
            continue
        if match := MODEL_KEY_LINE.match(line):
            found.append((number, f"models.<key>.{match['key']}", match["meaning"], None, line))
        elif section in ("paths", "run_params") and (match := SETTING.match(line)):
            meaning = ""
            if match["comment"]:
                column = match.start("comment")
                parts = [match["comment"][1:].strip()]
                for following in lines[number:]:
                    if following[:column].strip() not in ("", "#") or not following[column:].startswith("# "):
                        break
                    parts.append(following[column + 1 :].strip())
                meaning = " ".join(parts)
            shown = match["value"].strip() if match["off"] else None
            found.append((number, f"{section}.{match['key']}", meaning, shown, line))
        elif section == "models" and (match := MODEL_SETTING.match(line)):  # described in the list above
            found.append((number, f"models.<key>.{match['key']}", None, None, line))
        elif section is not None and not line.startswith((" ", "#")) and line.strip():
            section = None
    return found


def test_every_key_config_t5_names_is_in_the_key_table_with_its_meaning():
    lines = CONFIG.read_text(encoding="utf-8").splitlines()
    found = described_keys(lines)
    problems = []
    for number, key, meaning, shown, line in found:
        if key not in TABLE:
            problems.append(f"config_t5.yaml:{number}: {key} is not a config key (utils/inputs/keys.py): {line!r}")
            continue
        if meaning is not None and meaning != TABLE[key].meaning:
            problems.append(f"config_t5.yaml:{number}: {key}'s comment must read {TABLE[key].meaning!r}")
        default = TABLE[key].default
        if shown is not None and default not in ("—", "required", "run's", "<key>") and shown != default:
            problems.append(f"config_t5.yaml:{number}: commented-out {key} must show its default {default!r}")
    assert not problems, "\n".join(problems)
    named = {key for _, key, *_ in found}
    # The walk saw every part of the file: the paths, run_params and model keys, and the list of a model's keys
    assert {"paths.output_dir", "run_params.batch_size", "run_params.max_tokens_per_batch"} <= named
    assert {"models.<key>.name", "models.<key>.layer"} <= named


def test_a_stale_comment_is_found(tmp_path: Path):
    """The checker reads continued comments and commented-out keys: a stale meaning, a stale default and a key the
    table does not have are each reported."""
    lines = [
        "run_params:",
        "  # max_tokens_per_batch: auto   # padded tokens per batch",
        "  # max_residues: auto           # longer proteins are embedded in overlapping windows, listed in",
        "  #                              # meta['windowed']; auto: only past the model's own limit (ESM-1b: 1,022),",
        "  #                              # never for memory",
        "  # window_overlap: 128          # residues shared by neighbouring windows (at most a quarter of the window)",
        "  padding: true                  # pad every batch",
    ]
    found = {key: (meaning, shown) for _, key, meaning, shown, _ in described_keys(lines)}
    assert found["run_params.max_tokens_per_batch"] == ("padded tokens per batch", "auto")
    assert found["run_params.max_residues"][0] == TABLE["run_params.max_residues"].meaning
    assert found["run_params.window_overlap"][1] == "128" != TABLE["run_params.window_overlap"].default
    assert "run_params.padding" in found and "run_params.padding" not in TABLE
