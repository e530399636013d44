"""Per model family: how a sequence becomes model text, where its residues sit among the tokens, how to load it.

All family differences live here, as data. The family is detected from the checkpoint (config `model_type`,
tokenizer vocabulary), never from the config key's name (README.md, Models, has the per-family table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from utils.errors import UserError

RARE_TO_X = str.maketrans({"U": "X", "Z": "X", "O": "X", "B": "X"})


@dataclass(frozen=True)
class Family:
    name: str  # stable identifier written into outputs
    label: str  # what users call it
    prefix: str  # model text before the first residue
    separator: str  # between residues
    rare_to_x: bool  # U/Z/O/B → X before tokenizing (ProtT5's training convention)
    residue_offset: int  # token index of the first residue
    special_tokens: int  # tokens besides residues (prefix and end markers)
    model_class: str  # transformers class that loads the encoder alone
    attention: str = (
        "sdpa_key_padding"  # attention implementation to load with (utils/engine/encode.py registers these)
    )
    licence: str = ""
    # Where the loaded encoder keeps its transformer layers (a ModuleList) and the norm applied after the last one:
    # a `models.<key>.layer` other than the last keeps only the layers up to it and drops that norm
    # (utils/engine/encode.py). Left out of the repr, which the resume fingerprint hashes: chunks made before these
    # fields existed stay valid.
    layer_stack: str = field(default="encoder.layer", repr=False)
    final_norm: str = field(default="encoder.emb_layer_norm_after", repr=False)
    # Our packed forward pass over the checkpoint's weights (utils.engine.encoders.FORWARDS); out of the repr as above.
    forward: str = field(default="esm", repr=False)

    def model_text(self, sequence: str) -> str:
        residues = sequence.translate(RARE_TO_X) if self.rare_to_x else sequence
        return self.prefix + self.separator.join(residues)

    def residue_slice(self, n_residues: int) -> slice:
        return slice(self.residue_offset, self.residue_offset + n_residues)


_T5_LAYERS = {"layer_stack": "encoder.block", "final_norm": "encoder.final_layer_norm", "forward": "t5"}
PROT_T5 = Family("prot_t5", "ProtT5", "", " ", True, 0, 1, "T5EncoderModel", "t5_sdpa_shared_mask", **_T5_LAYERS)
PROST_T5 = Family(
    "prost_t5", "ProstT5", "<AA2fold> ", " ", True, 1, 2, "T5EncoderModel", "t5_sdpa_shared_mask", **_T5_LAYERS
)
ESM2 = Family("esm2", "ESM2", "", "", False, 1, 2, "EsmModel")
ESM1B = Family("esm1b", "ESM-1b", "", "", False, 1, 2, "EsmModel")
ESMC = Family(
    "esmc",
    "ESM C",
    "",
    "",
    False,
    1,
    2,
    "EsmcModel",
    licence=(
        "ESM C: check the licence on the model card of the checkpoint you use. Biohub releases the transformers "
        "checkpoints biohub/ESMC-300M, biohub/ESMC-600M and biohub/ESMC-6B under the MIT license "
        "(github.com/Biohub/esm); the 2024 EvolutionaryScale releases were under the Cambrian Open License "
        "(esmc-300m-2024-12) and the Cambrian Non-Commercial License (esmc-600m-2024-12)"
    ),
    layer_stack="layers",
    final_norm="norm",
    forward="esmc",
)
FAMILIES = {family.name: family for family in (PROT_T5, PROST_T5, ESM2, ESM1B, ESMC)}


@dataclass(frozen=True)
class Architecture:
    """What memory and FLOP estimates need to know about an encoder."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    params: int  # encoder parameters (approximate, from shapes)
    position_bias: bool  # T5 materialises a heads × L × L bias tensor
    max_residues: int | None  # learned absolute positions cap the length
    attention_width: int = 0  # heads × head dimension (T5: 4,096 at d_model 1,024); 0: the hidden size
    # Values alive per packed token at our forward's peak (utils.engine.encoders), per hidden unit and per
    # feed-forward unit: the residual stream, q/k/v and ESM's float32 rotary copies, and the feed-forward's
    # temporaries (ESM's erf GELU and ESM C's SwiGLU hold several of the inner width at once, T5's ReLU fewer).
    # From the peak RSS per token at real widths (benchmarks/memory_model.py --activations), rounded up.
    activation_widths: tuple[float, float] = (11.0, 7.0)

    def matmul_flops(self, tokens: int, layers: int | None = None) -> float:
        """Forward FLOPs of one sequence of `tokens` tokens through the first `layers` layers (all by default): two per
        weight per token for the projections and feed-forward, plus QKᵀ and AV, 2 × T × width each per token."""
        used = self.layers if layers is None else layers
        per_layer_weights = self.params / self.layers  # the embedding table is a lookup, < 0.1 % of params here
        width = self.attention_width or self.hidden
        return used * (2.0 * per_layer_weights * tokens + 4.0 * width * tokens * tokens)


def detect_family(model_config: Any, vocabulary: dict[str, int], model_name: str) -> Family:
    model_type = getattr(model_config, "model_type", None)
    if model_type in ("t5", "mt5"):
        return PROST_T5 if "<AA2fold>" in vocabulary else PROT_T5
    if model_type == "esm":
        # ESM-1b (and ESM-1v) learn absolute positions; ESM2 uses rotary embeddings.
        if getattr(model_config, "position_embedding_type", "absolute") == "absolute":
            return ESM1B
        return ESM2
    if model_type == "esmc":
        return ESMC
    raise UserError(
        f"model {model_name}: checkpoint type {model_type!r} is not supported; "
        "use a ProtT5, ProstT5, ESM2, ESM-1b or ESM C checkpoint"
    )


def architecture(model_config: Any) -> Architecture:
    c = model_config
    if getattr(c, "model_type", None) in ("t5", "mt5"):
        layers, hidden, heads, ffn = c.num_layers, c.d_model, c.num_heads, c.d_ff
        inner = c.num_heads * c.d_kv
        gated = 3 if "gated" in str(getattr(c, "feed_forward_proj", "")) else 2
        params = layers * (4 * hidden * inner + gated * hidden * ffn) + c.vocab_size * hidden
        return Architecture(hidden, layers, heads, ffn, params, True, None, inner, activation_widths=(10.0, 2.6))
    layers, hidden, heads = c.num_hidden_layers, c.hidden_size, c.num_attention_heads
    ffn = getattr(c, "intermediate_size", 4 * hidden)
    gated = 3 if getattr(c, "model_type", None) == "esmc" else 2
    params = layers * (4 * hidden * hidden + gated * hidden * ffn) + c.vocab_size * hidden
    max_residues = None
    if getattr(c, "model_type", None) == "esm" and getattr(c, "position_embedding_type", None) == "absolute":
        # positions start after the padding index, and <cls>/<eos> take two of them: 1026 → 1022 for ESM-1b
        max_residues = c.max_position_embeddings - (c.pad_token_id + 1) - 2
    return Architecture(hidden, layers, heads, ffn, params, False, max_residues)


# The short model names ProtSpace (protspace 4.x) and its peers use, e.g. in the HDF5 "model_name" attribute that
# `protspace prepare` requires: keyed by family and the checkpoint's architecture (layers, hidden size), so a
# checkpoint gets its name from what it is, whatever its hub id or config key. ESM2-15B, ESM-1b and ESM C 6B have
# no ProtSpace name; they follow the same pattern.
TOOL_MODEL_NAMES = {
    ("prot_t5", 24, 1024): "prot_t5",
    ("prost_t5", 24, 1024): "prost_t5",
    ("esm2", 6, 320): "esm2_8m",
    ("esm2", 12, 480): "esm2_35m",
    ("esm2", 30, 640): "esm2_150m",
    ("esm2", 33, 1280): "esm2_650m",
    ("esm2", 36, 2560): "esm2_3b",
    ("esm2", 48, 5120): "esm2_15b",
    ("esm1b", 33, 1280): "esm1b",
    ("esmc", 30, 960): "esmc_300m",
    ("esmc", 36, 1152): "esmc_600m",
    ("esmc", 80, 2560): "esmc_6b",
}


def tool_model_name(family: Family, arch: Architecture, layer_index: int | None = None) -> str:
    """ProtSpace's name for this checkpoint; one of another size gets `{family}_{layers}x{hidden}` (e.g. a tiny
    test checkpoint: `esm2_2x32`), so two different architectures never share a name. Vectors of a hidden state
    other than the last get `_layer{index}` (e.g. `esm2_3b_layer20`): they are not what the plain name means."""
    known = TOOL_MODEL_NAMES.get((family.name, arch.layers, arch.hidden))
    name = known or f"{family.name}_{arch.layers}x{arch.hidden}"
    return name if layer_index is None or layer_index == arch.layers else f"{name}_layer{layer_index}"


def hidden_state_index(layer: int, layers: int) -> int | None:
    """`models.<key>.layer` → its index in transformers' `hidden_states` (0 … layers), or None when out of range.

    Counted as transformers' `hidden_states` and fair-esm's `repr_layers` count: 0 is the embedding output (before any
    transformer layer), i the output of layer i, and `layers` (= -1) the last layer's output after the final norm,
    which is `last_hidden_state`; -2 is the output of the layer before the last, without that norm. In every family
    here the final norm follows only the last layer (T5 `final_layer_norm`, ESM `emb_layer_norm_after`, ESM C `norm`),
    so layers before the last come as the residual stream leaves them, exactly as `hidden_states[i]` gives them.
    """
    index = layer if layer >= 0 else layers + 1 + layer
    return index if 0 <= index <= layers else None
