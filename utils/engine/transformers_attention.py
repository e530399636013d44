"""transformers' own forward, made cheaper: the attention implementations the reference and fallback path loads with.

The packed forward of utils.engine.encoders is what runs; transformers' forward is what tests compare it against, and
what runs where ours cannot (`attention: transformers`, or a checkpoint layout utils.engine.encoders does not know). For
that path these registrations keep the padding mask at batch × 1 × 1 × T instead of batch × T × T, and T5's bias built
once per forward pass instead of once per layer.
"""

from __future__ import annotations

from typing import Any

import torch


def key_padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    allow_is_bidirectional_skip: bool = False,
    use_vmap: bool = False,
    **kwargs: Any,
) -> torch.Tensor | None:
    """An encoder's padding mask as SDPA takes it: [batch, 1, 1, keys], True at real tokens, broadcast over heads and
    queries instead of materialised as batch × T × T (transformers' sdpa_mask builds the full square: most of the host
    time of a small model, and T² memory per protein on a long one). Queries at padding positions still see the real
    keys, so their rows stay finite; they are never pooled. Anything but a plain bidirectional mask goes to sdpa_mask.
    """
    from transformers.masking_utils import bidirectional_mask_function, sdpa_mask

    if use_vmap or mask_function is not bidirectional_mask_function or q_offset or kv_offset:
        return sdpa_mask(
            batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
            allow_is_bidirectional_skip=allow_is_bidirectional_skip, use_vmap=use_vmap, **kwargs,
        )  # fmt: skip
    if attention_mask is None:
        return None
    mask = attention_mask[:, None, None, :kv_length].bool()
    if allow_is_bidirectional_skip and bool(mask.all()):
        return None  # no padding: SDPA may pick its fastest kernel
    return mask


def register_sdpa_key_padding() -> str:
    """transformers' SDPA attention with key_padding_mask as its mask; "sdpa" where transformers lacks the pieces."""
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, bidirectional_mask_function, sdpa_mask
    except ImportError:
        return "sdpa"
    del bidirectional_mask_function, sdpa_mask  # key_padding_mask needs them: present in this transformers
    AttentionInterface.register("sdpa_key_padding", sdpa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa_key_padding", key_padding_mask)
    return "sdpa_key_padding"


def position_bias_mask(
    position_bias: torch.Tensor, attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    """T5's position bias with the padding folded in, as one additive SDPA mask [batch, heads, T, T].

    transformers builds it with where(padding, bias, min); adding a [batch, 1, 1, T] row of 0 / min instead gives
    the same softmax (real keys: bias + 0 is the bias; padded keys: bias + min is min or -inf, either weighs 0, and
    every row has real keys) and is several times cheaper on CPU, where with a few layers where() was a visible part
    of the forward pass (benchmarks/cpu_whole_process.py).
    """
    from transformers.integrations.sdpa_attention import create_position_bias_mask

    if attention_mask is None or attention_mask.dtype != torch.bool:
        return create_position_bias_mask(position_bias, attention_mask, False, query, key)
    padding = torch.zeros(attention_mask.shape, dtype=position_bias.dtype, device=position_bias.device)
    padding.masked_fill_(~attention_mask, torch.finfo(position_bias.dtype).min)
    return (position_bias + padding).contiguous()


def register_t5_sdpa_shared_mask() -> str:
    """SDPA for T5 with the padding mask folded into the position bias once per forward pass, not once per layer.

    T5 hands one position-bias tensor (1 × heads × T × T) from layer to layer; transformers' sdpa path rebuilds
    where(padding, bias, min).contiguous(), a batch × heads × T × T tensor, in every layer. Here it is built once,
    cached on the bias tensor (which lives exactly one forward pass), and passed to SDPA as its mask: the same
    numbers (bitwise), 1.4× faster on CPU batches and 2.4× on one long protein (benchmarks/throughput.py).
    The mask function must be registered under the same name, or masking_utils silently drops the padding mask;
    it is key_padding_mask, so the padding mask is never built as batch × T × T.
    Returns the name to load with, or "sdpa" where this transformers lacks the pieces.
    """
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import create_position_bias_mask, sdpa_attention_forward
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, bidirectional_mask_function, sdpa_mask
    except ImportError:
        return "sdpa"
    # key_padding_mask and position_bias_mask need these: present in this transformers
    del bidirectional_mask_function, sdpa_mask, create_position_bias_mask

    def t5_sdpa_shared_mask(module, query, key, value, attention_mask, position_bias=None, **kwargs):
        if position_bias is not None:
            cached = getattr(position_bias, "_sdpa_mask", None)
            if cached is None or cached[0] is not attention_mask:
                cached = (attention_mask, position_bias_mask(position_bias, attention_mask, query, key))
                position_bias._sdpa_mask = cached
            attention_mask, position_bias = cached[1], None
        return sdpa_attention_forward(module, query, key, value, attention_mask, position_bias=position_bias, **kwargs)

    AttentionInterface.register("t5_sdpa_shared_mask", t5_sdpa_shared_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register("t5_sdpa_shared_mask", key_padding_mask)
    return "t5_sdpa_shared_mask"


# Custom attention implementations a Family may name: registering returns the name to load with.
CUSTOM_ATTENTION = {
    "t5_sdpa_shared_mask": register_t5_sdpa_shared_mask,
    "sdpa_key_padding": register_sdpa_key_padding,
}

# The most memory the kept T5 position bias may take (utils.engine.encode.SlicedPositionBias): a few per cent of a
# device.
POSITION_BIAS_KEPT_BYTES = 128 << 20


class SlicedPositionBias:
    """T5's relative position bias, computed once for the longest length and sliced for the shorter ones.

    Entry (i, j) of the bias depends only on j − i, so the bias for T tokens is the top-left T × T corner of the
    bias for any longer length; batches come longest first, so the first one is kept (up to POSITION_BIAS_KEPT_BYTES)
    and later batches slice it instead of recomputing the buckets, the embedding lookup and the permuted copy each
    forward pass (a few per cent of a small T5's forward on CPU). Each call returns a new view, so nothing a forward
    pass attaches to the bias (the shared SDPA mask) outlives it. Only self-attention in inference mode is served
    from it; anything else goes to transformers' compute_bias.
    """

    def __init__(self, compute: Any):
        self.compute = compute
        self.kept: torch.Tensor | None = None

    def __call__(self, query_length: int, key_length: int, device: Any = None, **kwargs: Any) -> torch.Tensor:
        if query_length != key_length or any(kwargs.values()) or not torch.is_inference_mode_enabled():
            return self.compute(query_length, key_length, device=device, **kwargs)
        kept = self.kept
        if kept is None or kept.shape[-1] < key_length or (device is not None and kept.device != torch.device(device)):
            kept = self.compute(key_length, key_length, device=device, **kwargs)
            if kept.numel() * kept.element_size() <= POSITION_BIAS_KEPT_BYTES:
                self.kept = kept
        return kept[:, :, :query_length, :key_length]


def reuse_position_bias(model: torch.nn.Module) -> None:
    """Serve every T5 encoder self-attention's position bias from a SlicedPositionBias."""
    for module in model.modules():
        if getattr(module, "has_relative_attention_bias", False) and not getattr(module, "is_decoder", True):
            module.compute_bias = SlicedPositionBias(module.compute_bias)


# What a custom attention needs done to each loaded model, by the name the Family gives.
PREPARE_MODEL = {"t5_sdpa_shared_mask": reuse_position_bias}
