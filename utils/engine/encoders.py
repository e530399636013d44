"""Our own forward pass per family, over the loaded checkpoint's weights: packed token ids [N] → hidden rows [N, D].

transformers' modules are loaded as always (from_pretrained, the layer cut, the precision); these functions read
their parameters by the checkpoint's own names and run the same arithmetic on packed rows (no padding, positions
restarting at every protein), with the attention of utils.engine.attention. transformers' forward stays the reference
(tests/test_packed_forward.py compares every family and layer against it) and the fallback: `build_forward` says why
not for a layout it does not implement. Each forward lists the config fields that change the arithmetic beyond what
it reads from the modules (`unsupported`: causal attention, other position embeddings, rotary frequencies that
transformers recomputes in ways not done here), and utils.engine.encode checks a probe batch against transformers'
forward at load. Deliberate differences: no per-sublayer inf clamp in fp16 T5 (an overflow shows as a non-finite
vector, which the fp32 redo of utils.engine.finite catches and records), and ESM's rotary tables are computed in
float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from utils.engine.attention import PackedAttention, RelativeBias

# One forward: (ids [N], in-protein positions [N], attention for this batch) → hidden [N, D]
Forward = Callable[[torch.Tensor, torch.Tensor, PackedAttention], torch.Tensor]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """T5's layer norm: no mean, no bias, variance in float32."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps)).to(weight.dtype)


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, head_dim)


class T5Forward:
    """T5EncoderModel (ProtT5, ProstT5): embedding (no scaling) → blocks of [RMS norm → attention with layer 0's
    relative bias, q·kᵀ unscaled → residual; RMS norm → ReLU (or gated) feed-forward → residual] → final RMS norm."""

    # Config fields that change the arithmetic beyond what is read from the modules, and the values implemented here
    # (T5EncoderModel builds its encoder non-causal whatever the config says; buckets, distance, d_kv, the activation
    # and its gate are read from the checkpoint)
    LAYOUT: dict[str, tuple] = {}

    def __init__(self, model: Any):
        encoder = model.encoder
        self.embed = encoder.embed_tokens.weight
        self.blocks = list(encoder.block)
        self.final_norm = encoder.final_layer_norm  # Identity when the layer cut dropped it
        config = model.config
        self.eps = config.layer_norm_epsilon
        self.head_dim = config.d_kv
        self.act = _activation(config.dense_act_fn)
        self.gated = bool(getattr(config, "is_gated_act", False))
        self.bias = RelativeBias(self.blocks[0].layer[0].SelfAttention) if self.blocks else None

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, attend: PackedAttention) -> torch.Tensor:
        h = F.embedding(ids, self.embed)
        for block in self.blocks:
            attention, feed_forward = block.layer[0], block.layer[1]
            sa = attention.SelfAttention
            x = rms_norm(h, attention.layer_norm.weight, self.eps)
            q, k, v = (heads(F.linear(x, w.weight), self.head_dim) for w in (sa.q, sa.k, sa.v))
            h = h + F.linear(attend(q, k, v, 1.0).flatten(1), sa.o.weight)
            x = rms_norm(h, feed_forward.layer_norm.weight, self.eps)
            ff = feed_forward.DenseReluDense
            if self.gated:
                x = self.act(F.linear(x, ff.wi_0.weight)) * F.linear(x, ff.wi_1.weight)
            else:
                x = self.act(F.linear(x, ff.wi.weight))
            h = h + F.linear(x, ff.wo.weight)
        if isinstance(self.final_norm, torch.nn.Identity):
            return h
        return rms_norm(h, self.final_norm.weight, self.eps)


def esm_gelu(x: torch.Tensor) -> torch.Tensor:
    """ESM's exact (erf) GELU."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, d] rotated by per-token cos/sin [N, 1, d] (computed in float32, returned in x's dtype)."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions[:, None].float() * inv_freq.float()[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return angles.cos(), angles.sin()


class EsmForward:
    """EsmModel (ESM2, ESM-1b): embedding × token-dropout scale (0.88 per protein without <mask>; we never emit
    <mask>) + learned positions from padding_idx + 1 (ESM-1b) → layer norm before (ESM-1b) → pre-LN layers of
    [attention, q scaled by 1/√d before rotary (ESM2), + residual; GELU feed-forward + residual] → final layer norm."""

    # is_decoder makes transformers' attention causal; position types other than these two have no packed form here
    LAYOUT = {"is_decoder": (False, None), "position_embedding_type": ("absolute", "rotary", None)}

    def __init__(self, model: Any):
        config = model.config
        embeddings = model.embeddings
        self.embed = embeddings.word_embeddings.weight
        self.token_dropout = bool(config.token_dropout)
        self.positions = getattr(embeddings, "position_embeddings", None)
        self.position_offset = config.pad_token_id + 1  # learned positions start after the padding index
        self.norm_before = embeddings.layer_norm
        self.layers = list(model.encoder.layer)
        self.norm_after = model.encoder.emb_layer_norm_after
        self.inv_freq = model.rotary_embeddings.inv_freq if model.rotary_embeddings is not None else None
        self.head_dim = config.hidden_size // config.num_attention_heads

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, attend: PackedAttention) -> torch.Tensor:
        h = F.embedding(ids, self.embed)
        if self.token_dropout:
            h = (h * (1 - 0.15 * 0.8)).to(h.dtype)  # mask ratio observed: 0 (no <mask> in our inputs)
        if self.positions is not None:
            h = h + self.positions(positions + self.position_offset)
        if self.norm_before is not None:
            h = self.norm_before(h)
        cos_sin = rotary_tables(positions, self.inv_freq) if self.inv_freq is not None else None
        scale = self.head_dim**-0.5
        for layer in self.layers:
            sa = layer.attention.self
            x = layer.attention.LayerNorm(h)
            q, k, v = (heads(w(x), self.head_dim) for w in (sa.query, sa.key, sa.value))
            if cos_sin is not None:
                q, k = rotary(q, *cos_sin), rotary(k, *cos_sin)
            h = h + layer.attention.output.dense(attend(q, k, v, scale).flatten(1))
            x = esm_gelu(layer.intermediate.dense(layer.LayerNorm(h)))
            h = h + layer.output.dense(x)
        return self.norm_after(h)


class EsmcForward:
    """EsmcModel (ESM C): embedding → layers of [LN → q, k projections layer-normed over the full width → rotary →
    attention (1/√d) → out projection / √(layers / 36) + residual; LN → SwiGLU / √(layers / 36) + residual] → norm.
    The residual scale uses the checkpoint's own layer count, also when the layer cut runs fewer.

    Rotary frequencies: the module's own where transformers keeps them fixed (default, linear, yarn, llama3 scaling);
    for dynamic scaling transformers recomputes them for a sequence past max_position_embeddings, so a protein that
    long gets its own, as transformers' forward gives that protein alone."""

    LAYOUT = {
        "rope_parameters.rope_type": ("default", "linear", "yarn", "llama3", "dynamic", None),
        "rope_parameters.partial_rotary_factor": (1, 1.0, None),
    }

    def __init__(self, model: Any):
        config = model.config
        self.embed = model.embed_tokens.weight
        self.layers = list(model.layers)
        self.norm = model.norm
        rotary = model.rotary_emb
        self.config = config
        self.inv_freq = getattr(rotary, "original_inv_freq", rotary.inv_freq)  # as loaded, before any dynamic update
        self.attention_scaling = getattr(rotary, "attention_scaling", 1.0)
        self.rope_type = str(getattr(rotary, "rope_type", "default"))
        self.fixed_length = getattr(rotary, "original_max_seq_len", config.max_position_embeddings)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.kv_repeat = config.num_attention_heads // config.num_key_value_heads

    def frequencies(self, tokens: int, device: torch.device) -> tuple[torch.Tensor, float]:
        """(inverse frequencies, attention scaling) for a protein of `tokens` tokens: the module's, or under dynamic
        scaling past max_position_embeddings those transformers computes for a sequence that long."""
        if "dynamic" not in self.rope_type or tokens <= self.fixed_length:
            return self.inv_freq, self.attention_scaling
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        return ROPE_INIT_FUNCTIONS[self.rope_type](self.config, device, seq_len=tokens)

    def rotary(self, positions: torch.Tensor, attend: PackedAttention) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cos/sin [N, 1, d], each protein with its own frequencies (the same for all but dynamic)."""
        layout = attend.layout
        if "dynamic" not in self.rope_type or layout.longest <= self.fixed_length:
            cos, sin = rotary_tables(positions, self.inv_freq)
            return cos * self.attention_scaling, sin * self.attention_scaling
        tables = []
        for start, size in zip(layout.starts, layout.sizes, strict=True):
            inv_freq, scaling = self.frequencies(size, positions.device)
            cos, sin = rotary_tables(positions[start : start + size], inv_freq)
            tables.append((cos * scaling, sin * scaling))
        return torch.cat([c for c, _ in tables]), torch.cat([s for _, s in tables])

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, attend: PackedAttention) -> torch.Tensor:
        h = F.embedding(ids, self.embed)
        cos, sin = self.rotary(positions, attend)
        for layer in self.layers:
            sa = layer.self_attn
            x = layer.input_layernorm(h)
            q = heads(sa.q_norm(sa.q_proj(x)).to(x.dtype), self.head_dim)
            k = heads(sa.k_norm(sa.k_proj(x)).to(x.dtype), self.head_dim)
            v = heads(sa.v_proj(x), self.head_dim)
            q, k = rotary(q, cos, sin), rotary(k, cos, sin)
            if self.kv_repeat > 1:
                k, v = k.repeat_interleave(self.kv_repeat, dim=1), v.repeat_interleave(self.kv_repeat, dim=1)
            h = h + sa.o_proj(attend(q, k, v, sa.scaling).flatten(1)) / layer.scaling_factor
            h = h + layer.mlp(layer.post_attention_layernorm(h)) / layer.scaling_factor
        return self.norm(h)


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from transformers.activations import ACT2FN

    return ACT2FN[name]


# By utils.engine.families.Family.forward
FORWARDS: dict[str, type] = {"t5": T5Forward, "esm": EsmForward, "esmc": EsmcForward}


def build_forward(model: Any, kind: str) -> tuple[Any | None, str]:
    """(our forward pass over `model`'s weights, "") or (None, why not): a layout it does not implement, then
    transformers' forward runs (utils.engine.encode says so in the log and the run summary)."""
    forward = FORWARDS.get(kind)
    if forward is None:
        return None, f"no packed forward for {kind!r} checkpoints"
    unsupported = layout_problems(model.config, forward.LAYOUT)
    if unsupported:
        return None, f"the packed forward does not implement {', '.join(unsupported)}"
    try:
        return forward(model), ""
    except (AttributeError, KeyError, TypeError) as exc:
        return None, f"the packed forward does not know this layout ({type(exc).__name__}: {exc})"


def layout_problems(config: Any, accepted: dict[str, tuple]) -> list[str]:
    """`field=value` for each config field (dotted: a key of a dict field) whose value is not among `accepted`."""
    problems = []
    for name, values in accepted.items():
        value: Any = config
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value not in values:
            problems.append(f"{name}={value!r}")
    return problems


def relative_bias(forward: Any) -> RelativeBias | None:
    return getattr(forward, "bias", None)
