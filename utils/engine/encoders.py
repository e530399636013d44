"""Our own forward pass per family, over the loaded checkpoint's weights: packed token ids [N] → hidden rows [N, D].

transformers' modules are loaded as always (from_pretrained, the layer cut, the precision); these functions read
their parameters by the checkpoint's own names and run the same arithmetic on packed rows (no padding, positions
restarting at every protein), with the attention of utils.engine.attention. transformers' forward stays the reference
(tests/test_packed_forward.py compares every family and layer against it) and the fallback (`build_forward` returns
None for a layout it does not know). Deliberate differences: no per-sublayer inf clamp in fp16 T5 (an overflow shows
as a non-finite vector, which the fp32 redo of utils.engine.finite catches and records), and ESM's rotary tables are
computed in float32.
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
    The residual scale uses the checkpoint's own layer count, also when the layer cut runs fewer."""

    def __init__(self, model: Any):
        config = model.config
        self.embed = model.embed_tokens.weight
        self.layers = list(model.layers)
        self.norm = model.norm
        self.inv_freq = model.rotary_emb.inv_freq
        self.attention_scaling = getattr(model.rotary_emb, "attention_scaling", 1.0)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.kv_repeat = config.num_attention_heads // config.num_key_value_heads

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, attend: PackedAttention) -> torch.Tensor:
        h = F.embedding(ids, self.embed)
        cos, sin = rotary_tables(positions, self.inv_freq)
        cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
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


def build_forward(model: Any, kind: str) -> Any | None:
    """Our forward pass over `model`'s weights, or None where this layout is not one we know (then transformers'
    forward runs, and the log says so)."""
    forward = FORWARDS.get(kind)
    if forward is None:
        return None
    try:
        return forward(model)
    except (AttributeError, KeyError, TypeError):
        return None


def relative_bias(forward: Any) -> RelativeBias | None:
    return getattr(forward, "bias", None)
