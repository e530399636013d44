"""The config's shape: the typed settings a run reads (Config, RunParams, ModelConfig), the table of every key with
its default and meaning (the README's table and --help come from it, and the loader knows the keys from it), and the
small normalisers both the loader and the Python API use (devices, output formats). Reading the YAML and checking
its values is utils/inputs/config.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
ENGINES = ("local", "ray")
# Our packed forward with one of utils.engine.attention's kernels (auto picks per device), or transformers' own forward
ATTENTION_PATHS = ("auto", "segments", "flex", "varlen", "transformers")
# output_format names → the files they write; a YAML list names single formats.
FORMATS = {
    "pt": ("pt",),
    "h5": ("h5",),
    "parquet": ("parquet",),
    "both": ("pt", "h5"),
    "all": ("pt", "h5", "parquet"),
}
OUTPUT_FORMATS = tuple(FORMATS)
SINGLE_FORMATS = ("pt", "h5", "parquet")


@dataclass(frozen=True)
class ModelConfig:
    key: str
    name: str  # hub id or local directory
    devices: tuple[str, ...]  # 'cpu' or 'cuda:N'; several shard the model's proteins
    output_key: str
    precision: str
    max_tokens_per_batch: int | None  # None: the run's setting
    layer: int = -1  # hidden state to pool, counted as transformers' hidden_states (0 embeddings, -1 the last)
    device_auto: bool = False  # device: auto, resolved on this machine: another machine may resolve it otherwise


@dataclass(frozen=True)
class RunParams:
    batch_size: int = 32  # most proteins in one batch
    save_every_n_batches: int = 100  # batches per checkpoint chunk
    seed: int = 42
    precision: str = "auto"  # auto: fp16 on GPU, fp32 on CPU
    max_tokens_per_batch: int | None = None  # tokens per packed batch, specials included; None: chosen per device
    max_residues: int | None = None  # longer proteins are embedded in windows; None: only past the model's own limit
    window_overlap: int = 256
    concatenate: bool = False
    output_format: str = "pt"  # one of OUTPUT_FORMATS, or single formats joined by ',' (given as a YAML list)
    per_residue: bool = False
    stop_grace_s: int = 30  # after Ctrl-C / SIGTERM, seconds a worker may take to stop before it is killed
    stall_timeout_s: int = 3600  # engine: ray: a model fails when no block came back for this long
    # local: worker processes on this machine; ray: a Ray Data actor pool (utils/running/ray_engine.py)
    engine: str = "local"
    report: bool = True  # run_report.html and run_summary.json at the end of the run (utils/outputs/report.py)
    attention: str = "auto"  # the forward pass and attention kernel (utils/engine/encode.py ATTENTION_PATHS)


@dataclass(frozen=True)
class Config:
    path: Path
    splits: dict[str, Path]  # split name → FASTA, in config order
    output_dir: Path
    log_dir: Path
    run: RunParams
    models: tuple[ModelConfig, ...]
    id_format: str = "first_word"  # how a FASTA header becomes a protein id (utils/inputs/ids.py)
    store_dir: Path | None = None  # the chunk store (utils/running/store.py); None: {output_dir}/.chunks

    @property
    def store(self) -> Path:
        """Where the chunk store is: paths.store_dir, else {output_dir}/.chunks."""
        return self.store_dir if self.store_dir is not None else self.output_dir / ".chunks"


@dataclass(frozen=True)
class ConfigKey:
    """One config key as the README's table and --help show it; the validator knows the keys from this table."""

    key: str  # dotted: paths.data_dir, run_params.batch_size, models.<key>.name
    default: str
    meaning: str


def _shown_default(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


_RUN_MEANINGS = {  # in the README's order; defaults come from RunParams
    "batch_size": "most proteins in one batch (an upper bound; the token budget usually decides)",
    "max_tokens_per_batch": "tokens per packed batch, specials included; auto: chosen for the device",
    "save_every_n_batches": "batches per checkpoint chunk: at most this much work is lost to a kill -9",
    "seed": "seeds torch and the validation sample",
    "precision": "auto (fp16 on GPU, fp32 on CPU), fp16, bf16 or fp32",
    "max_residues": "longer proteins are embedded in overlapping windows, listed in meta['windowed']; auto: only past "
    "the model's own limit (ESM-1b: 1,022), never for memory",
    "window_overlap": "residues shared by neighbouring windows (at most a quarter of the window)",
    "concatenate": "also write {split}_embeddings_concat.*, all models side by side",
    "output_format": "pt, h5, parquet, both (pt + h5), all, or a list such as [pt, parquet]",
    "per_residue": "also write [L, D] residue rows to .per_residue.h5 (needs h5 in output_format)",
    "stop_grace_s": "after Ctrl-C or SIGTERM, seconds a worker may take to stop before it is killed",
    "engine": "local (worker processes here) or ray (a Ray Data actor pool; RAY_ADDRESS names the cluster)",
    "stall_timeout_s": "engine: ray: fail a model when no block has come back for this many seconds (a stuck cluster)",
    "report": "write run_report.html and run_summary.json into output_dir at the end of the run",
    "attention": "auto (ours: per-protein SDPA on CPU, FlexAttention/FlashAttention on GPU), segments, flex, "
    "varlen, or transformers (transformers' own padded forward)",
}
CONFIG_KEYS: tuple[ConfigKey, ...] = (
    ConfigKey("paths.data_dir", ".", "directory of the FASTA files"),
    ConfigKey("paths.raw_train_sequences", "—", "FASTA of split train (plain or .gz)"),
    ConfigKey("paths.raw_test_sequences", "—", "FASTA of split test"),
    ConfigKey("paths.splits", "—", "more splits: {name: file}"),
    ConfigKey("paths.output_dir", "required", "where the output files go"),
    ConfigKey(
        "paths.store_dir", "{output_dir}/.chunks", "the chunk store: every vector computed, shared by runs and configs"
    ),
    ConfigKey("paths.log_dir", "logs", "one log file per worker, and the validation report"),
    ConfigKey("paths.id_format", "first_word", "how a header becomes the protein id: first_word or uniprot"),
    *(ConfigKey(f"run_params.{k}", _shown_default(getattr(RunParams(), k)), m) for k, m in _RUN_MEANINGS.items()),
    ConfigKey("models.<key>.name", "required", "hub id or local checkpoint directory"),
    ConfigKey("models.<key>.device", "cpu", "CUDA index, cuda:N, cpu, auto, or a list to shard over devices"),
    ConfigKey("models.<key>.output_key", "<key>", "the name in output file names"),
    ConfigKey("models.<key>.precision", "run's", "per-model override of run_params.precision"),
    ConfigKey("models.<key>.max_tokens_per_batch", "run's", "per-model override of run_params.max_tokens_per_batch"),
    ConfigKey("models.<key>.layer", "-1", "hidden state to pool: 0 embedding output … -1 last layer"),
)


def _section_keys(prefix: str) -> tuple[str, ...]:
    return tuple(k.key.removeprefix(prefix) for k in CONFIG_KEYS if k.key.startswith(prefix))


PATH_KEYS = _section_keys("paths.")
RUN_KEYS = _section_keys("run_params.")
MODEL_KEYS = _section_keys("models.<key>.")


def describe_config_keys() -> str:
    """The config keys with their defaults, for --help."""
    width = max(len(k.key) for k in CONFIG_KEYS)
    lines = [f"  {k.key:<{width}}  {k.default:<10}  {k.meaning}" for k in CONFIG_KEYS]
    return "config keys (key, default, meaning; README.md has the details):\n" + "\n".join(lines)


def auto_device() -> str:
    """`device: auto`: the first GPU when torch sees one, else the CPU (so one config serves any machine)."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def normalise_device(value: Any) -> str | None:
    """0 / '0' / 'cuda' / 'cuda:1' / 'cpu' / 'auto' → canonical form ('auto' resolved here); None when unrecognised."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return f"cuda:{value}"
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "cpu":
            return "cpu"
        if text == "auto":
            return auto_device()
        if text == "cuda":
            return "cuda:0"
        match = re.fullmatch(r"(?:cuda:)?(\d+)", text)
        if match:
            return f"cuda:{int(match.group(1))}"
    return None


def output_formats(output_format: str) -> tuple[str, ...]:
    """run_params.output_format ('pt', 'both', 'all', … or formats joined by ',' from a YAML list) → the formats."""
    formats: list[str] = []
    for name in output_format.split(","):
        formats += [f for f in FORMATS[name] if f not in formats]
    return tuple(formats)
