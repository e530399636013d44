"""Shared fixtures: tiny checkpoints in the real hub layouts, FASTA and config writers, the real CLI as a subprocess,
and an independent one-protein-at-a-time fp32 reference computed with transformers directly."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from tests.tiny_checkpoints import build_all

    return build_all(tmp_path_factory.mktemp("checkpoints"))


def random_protein(rng: random.Random, length: int, alphabet: str = AMINO) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def write_fasta(path: Path, records: list[tuple[str, str]], width: int | None = None) -> Path:
    lines = []
    for rec_id, sequence in records:
        lines.append(f">{rec_id}")
        if width:
            lines += [sequence[i : i + width] for i in range(0, len(sequence), width)]
        else:
            lines.append(sequence)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(
    directory: Path,
    models: dict[str, dict],
    train: str | None = "train.fasta",
    test: str | None = "test.fasta",
    run_params: dict | None = None,
    extra_paths: dict | None = None,
) -> Path:
    paths = {"data_dir": str(directory), "output_dir": str(directory / "out"), "log_dir": str(directory / "logs")}
    if train:
        paths["raw_train_sequences"] = train
    if test:
        paths["raw_test_sequences"] = test
    paths.update(extra_paths or {})
    config = {
        "paths": paths,
        # No run report unless a test asks for it (tests/test_report.py does).
        "run_params": {"batch_size": 8, "save_every_n_batches": 2, "seed": 42, "report": False, **(run_params or {})},
        "models": {
            key: {
                "name": str(spec["name"]),
                "device": spec.get("device", "cpu"),
                "output_key": spec.get("output_key", key),
            }
            | {k: v for k, v in spec.items() if k not in ("name", "device", "output_key")}
            for key, spec in models.items()
        },
    }
    path = directory / "config_t5.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# The tail of every sitecustomize module that injects a fault into the commands (put on PYTHONPATH, it is imported by
# the main process and by every worker): the text before it defines PATCHES, {module name: function(module)}, and
# each function runs right after that module's first import. The product code has no test hooks.
_PATCH_ON_IMPORT = """

import importlib.abc as _abc, importlib.util as _util, sys as _sys


class _PatchOnImport(_abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        _sys.meta_path.remove(self)
        try:
            spec = _util.find_spec(name)
        finally:
            _sys.meta_path.insert(0, self)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            PATCHES.pop(name)(module)

        spec.loader.exec_module = exec_module
        return spec


if PATCHES:
    _sys.meta_path.insert(0, _PatchOnImport())
"""


def patching_sitecustomize(source: str) -> str:
    """A sitecustomize module's text: `source`, which defines PATCHES, and what applies them (_PATCH_ON_IMPORT)."""
    return source + _PATCH_ON_IMPORT


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"})
    return env


def run_cli(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one of the project's commands exactly as a user would."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_job(
    directory: Path,
    models: dict[str, dict],
    train: list[tuple[str, str]],
    test: list[tuple[str, str]],
    run_params: dict | None = None,
    width: int | None = 60,
) -> subprocess.CompletedProcess:
    """Write the two splits (train wrapped at `width`) and a config, run the main job, insist that it succeeded."""
    write_fasta(directory / "train.fasta", train, width=width)
    write_fasta(directory / "test.fasta", test)
    config = write_config(directory, models, run_params=run_params)
    result = run_cli("generate_embeddings_t5.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return result


def chunk_files(output_dir: Path) -> list[Path]:
    """Every chunk of the default chunk store ({output_dir}/.chunks), all partitions."""
    return sorted((output_dir / ".chunks").glob("*/*.chk"))


def partition_dir(output_dir: Path, family: str = "") -> Path:
    """The one partition of the default chunk store (of `family`, where several models share it)."""
    (found,) = [p for p in (output_dir / ".chunks").glob(f"{family}*.*") if p.is_dir()]
    return found


def load_output(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


# -- the reference: written from the README's model table, independent of utils/ ---------------------------------------
REFERENCE_LAYOUT = {
    # model_type-based family: (model text, first residue row, encoder class)
    "prot_t5": (lambda s: " ".join(s.translate(str.maketrans("UZOB", "XXXX"))), 0, "T5EncoderModel"),
    "prost_t5": (lambda s: "<AA2fold> " + " ".join(s.translate(str.maketrans("UZOB", "XXXX"))), 1, "T5EncoderModel"),
    "esm2": (lambda s: s, 1, "EsmModel"),
    "esm1b": (lambda s: s, 1, "EsmModel"),
    "esmc": (lambda s: s, 1, "EsmcModel"),
}


class Reference:
    """fp32, one protein at a time, no padding, the mean of the residue rows only."""

    def __init__(self, checkpoint: Path, layout: str):
        import transformers

        self.text, self.offset, model_class = REFERENCE_LAYOUT[layout]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
        self.model = getattr(transformers, model_class).from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.model.float()

    @torch.no_grad()
    def __call__(self, sequence: str) -> torch.Tensor:
        tokens = self.tokenizer(self.text(sequence), return_tensors="pt")
        hidden = self.model(**tokens).last_hidden_state[0]
        assert hidden.shape[0] == len(sequence) + (2 if self.offset else 1)
        return hidden[self.offset : self.offset + len(sequence)].mean(dim=0)
