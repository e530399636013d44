"""The model shapes the benchmarks run, with random weights (no download): the real hub architectures
(tests/tiny_checkpoints.REAL_SIZES), t5_cpu (ProtT5's proportions at a size two CPU cores run in minutes), and each
one's tiny shape (the CPU dry runs of the GPU scripts: the same code path in seconds); their FLOPs per protein."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.tiny_checkpoints import REAL_SIZES

# Real hub shapes: tests/tiny_checkpoints.REAL_SIZES (ProtT5-XL, ESM2 3B, ESM C 600M). t5_cpu keeps ProtT5's
# proportions (d_ff = 4 × heads × d_kv, relu, 32 relative buckets) at a size two CPU cores run in minutes.
ARCHS: dict[str, dict[str, Any]] = {
    "t5_cpu": {
        "family": "prot_t5",
        "layers_key": "num_layers",
        "config": {"d_model": 256, "d_kv": 32, "num_heads": 8, "d_ff": 1024, "num_layers": 6},
    },
    "prot_t5_xl": {"family": "prot_t5", "layers_key": "num_layers", "config": REAL_SIZES["prot_t5_xl"]},
    "esm2_3b": {"family": "esm2", "layers_key": "num_hidden_layers", "config": REAL_SIZES["esm2_3b"]},
    "esmc_600m": {"family": "esmc", "layers_key": "num_hidden_layers", "config": REAL_SIZES["esmc_600m"]},
}


# --tiny: the same architectures at the width of the test suite's checkpoints (one layer unless --layers says)
TINY = {
    "num_layers": {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128, "num_layers": 1},
    "num_hidden_layers": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
    },
}


def arch_config(arch: str, layers: int | None = None, tiny: bool = False) -> dict[str, Any]:
    key = ARCHS[arch]["layers_key"]
    config = {**ARCHS[arch]["config"], **(TINY[key] if tiny else {})}
    if layers:
        config[key] = layers  # smoke tests of the GPU shapes on CPU
    return config


def build_checkpoint(arch: str, directory: Path, device: str, layers: int | None = None, tiny: bool = False) -> Path:
    """Random weights in the real layout and the family's real tokenizer files (tests/tiny_checkpoints.py's builder
    with these sizes); on a GPU the weights are created on the device: seconds, not minutes."""
    from benchmarks.measure import release
    from tests import tiny_checkpoints

    path = tiny_checkpoints.BUILDERS[ARCHS[arch]["family"]](
        directory / arch, seed=0, sizes=arch_config(arch, layers, tiny), device=device
    )
    release(device)
    return path


@dataclass(frozen=True)
class FlopModel:
    layers: int
    matmul_params: int  # per layer, the weights every token multiplies (attention projections + feed-forward)
    attention_width: int  # heads × head dimension: QKᵀ and AV cost 2 × T × width each, per token and layer

    def protein(self, tokens: int) -> float:
        return self.layers * (2.0 * self.matmul_params * tokens + 4.0 * self.attention_width * tokens * tokens)


def flop_model(arch: str, layers: int | None = None, tiny: bool = False) -> FlopModel:
    c = arch_config(arch, layers, tiny)
    if ARCHS[arch]["family"] == "prot_t5":
        width = c["num_heads"] * c["d_kv"]
        return FlopModel(c["num_layers"], 4 * c["d_model"] * width + 2 * c["d_model"] * c["d_ff"], width)
    hidden, ffn = c["hidden_size"], c["intermediate_size"]
    gated = 3 if ARCHS[arch]["family"] == "esmc" else 2
    return FlopModel(c["num_hidden_layers"], 4 * hidden * hidden + gated * hidden * ffn, hidden)


def protein_flops(flops: FlopModel, length: int, note: dict | None, special_tokens: int) -> float:
    """Useful FLOPs of one protein as the engine ran it: whole, or window by window."""
    from utils.engine.batching import window_spans

    spans = [(0, length)]
    if note and "windows" in note:
        spans = window_spans(length, note["window_residues"], note["overlap"])
    return sum(flops.protein(end - start + special_tokens) for start, end in spans)
