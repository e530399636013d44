"""--help on both commands: works without torch, and lists every config key with its default from the same table
the config validator reads (utils.inputs.keys.CONFIG_KEYS), which the README's config table must match."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from utils.inputs.keys import CONFIG_KEYS, MODEL_KEYS, PATH_KEYS, RUN_KEYS, RunParams

BLOCK_TORCH = "import runpy, sys; sys.modules['torch'] = None; sys.argv = [sys.argv[1], '--help']; "
BLOCK_TORCH += "runpy.run_path(sys.argv[0], run_name='__main__')"


@pytest.mark.parametrize("script", ["generate_embeddings_t5.py", "validate_t5_embeddings.py"])
def test_help_needs_no_torch_and_lists_every_key_with_its_default(script):
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
    for key in CONFIG_KEYS:
        assert re.search(rf"^\s+{re.escape(key.key)}\s+{re.escape(key.default)}\s", result.stdout, re.M), key.key


def test_the_validator_knows_exactly_the_keys_of_the_table():
    assert set(RUN_KEYS) == set(RunParams.__dataclass_fields__)
    dotted = {f"paths.{k}" for k in PATH_KEYS} | {f"run_params.{k}" for k in RUN_KEYS}
    dotted |= {f"models.<key>.{k}" for k in MODEL_KEYS}
    assert dotted == {key.key for key in CONFIG_KEYS}
    assert next(k for k in CONFIG_KEYS if k.key == "run_params.batch_size").default == str(RunParams().batch_size)


def test_readme_config_table_matches_the_key_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", section, re.M)
    documented = {key: default.strip().strip("`") for key, default in rows}
    assert documented == {key.key: key.default for key in CONFIG_KEYS}
