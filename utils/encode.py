"""Tokenizer + encoder on one device: sequences → per-protein vectors (and, on request, residue rows).

fp16 on GPU for the whole encoder (T5's `wo` layers included, which transformers would otherwise keep in fp32),
fp32 on CPU. Out of memory splits the batch and retries, down to one protein; one protein that still does not fit,
or that is longer than `max_residues`, is embedded in overlapping windows, and the output records it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from utils.batching import padded_tokens, window_spans
from utils.errors import ModelError
from utils.families import Family
from utils.pooling import mean_over_residues, merge_windows, residue_rows
from utils.tokens import TokenLayoutError, build_table

__all__ = ["Embedded", "Encoder", "ModelError", "TokenLayoutError", "load_encoder"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MODEL_LOAD_OPTIONS = {"EsmModel": {"add_pooling_layer": False}}


@dataclass
class Embedded:
    pooled: torch.Tensor  # [D] float32
    residues: torch.Tensor | None  # [L, D] float16, when per-residue output is asked for
    note: dict[str, Any] | None  # anything done to the protein that the user should know


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "fp32" if device == "cpu" else "fp16"
    return precision


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

# The most memory the kept T5 position bias may take (utils.encode.SlicedPositionBias): a few per cent of a device.
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


def keep_layers(model: torch.nn.Module, family: Family, index: int) -> None:
    """Cut the encoder so that its output is `hidden_states[index]` of the whole model (utils.families.
    hidden_state_index): the first `index` layers run, the final norm only if all of them do. Layers past the one
    asked for are neither computed nor kept in memory."""
    parent_name, _, stack_name = family.layer_stack.rpartition(".")
    parent = model.get_submodule(parent_name)
    stack = getattr(parent, stack_name)
    if index >= len(stack):
        return
    setattr(parent, stack_name, torch.nn.ModuleList(list(stack)[:index]))
    norm_parent, _, norm_name = family.final_norm.rpartition(".")
    setattr(model.get_submodule(norm_parent), norm_name, torch.nn.Identity())


def load_encoder(
    name: str, family: Family, device: str, precision: str, layer_index: int | None = None
) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and encoder on `device`; with `layer_index`, the encoder cut after that hidden state (keep_layers)."""
    import transformers

    # The job draws its own progress bar; transformers' per-load bars and warnings would interleave with it.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    dtype = DTYPES[precision]
    tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    model_class = getattr(transformers, family.model_class)
    options = MODEL_LOAD_OPTIONS.get(family.model_class, {})
    register = CUSTOM_ATTENTION.get(family.attention)
    attention = register() if register else family.attention
    model, loading = model_class.from_pretrained(
        name, dtype=dtype, attn_implementation=attention, output_loading_info=True, **options
    )
    if loading["missing_keys"]:
        # transformers would fill these with random values and only log a warning: embeddings would be noise.
        missing = sorted(loading["missing_keys"])
        raise ModelError(
            f"checkpoint {name} lacks {len(missing)} encoder weight(s) (e.g. {missing[0]}); it is incomplete or "
            f"not a {family.label} checkpoint: download it again"
        )
    if layer_index is not None:
        keep_layers(model, family, layer_index)  # before the move: dropped layers never reach the device
    # from_pretrained keeps T5's `wo` in fp32 (_keep_in_fp32_modules); cast everything so the encoder runs in one dtype.
    model = model.to(device=torch.device(device), dtype=dtype).eval()
    prepare = PREPARE_MODEL.get(family.attention)
    if prepare is not None:
        prepare(model)
    return tokenizer, model


class Encoder:
    """One model on one device; `embed` takes a batch of sequences and returns one Embedded per sequence."""

    def __init__(
        self,
        tokenizer: Any,
        model: torch.nn.Module,
        family: Family,
        device: str,
        max_residues: int,
        window_overlap: int,
        per_residue: bool = False,
    ):
        self.tokenizer = tokenizer
        self.model = model
        self.family = family
        self.device = torch.device(device)
        self.max_residues = max_residues
        self.window_overlap = window_overlap
        self.per_residue = per_residue
        self.table = build_table(tokenizer, family)  # raises TokenLayoutError when the tokenizer is not the family's
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.out_of_memory_events = 0
        self.smallest_failed_square = float("inf")  # items × tokens² of the smallest batch that ran out of memory

    # -- tokenization -------------------------------------------------------------------------------------------
    def tokenize(self, sequences: list[str]) -> dict[str, torch.Tensor]:
        """Residue strings → padded ids, mask and lengths, by the table checked against this model's tokenizer."""
        return self.table.encode(sequences)

    def tokenize_ahead(self, sequences: list[str]):
        """Start tokenizing the next batch on a CPU thread while the device runs the current one."""
        return self._prefetch.submit(self.tokenize, sequences)

    # -- forward ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (pooled [B, D] float32 on the device, hidden [B, T, D] on the device)."""
        pin = self.device.type == "cuda"
        input_ids = tokens["input_ids"].pin_memory() if pin else tokens["input_ids"]
        mask = tokens["attention_mask"].pin_memory() if pin else tokens["attention_mask"]
        input_ids = input_ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        lengths = tokens["lengths"].to(self.device, non_blocking=True)
        return mean_over_residues(hidden, lengths, self.family.residue_offset), hidden

    def _embed_whole_batch(self, sequences: list[str], tokens: dict[str, torch.Tensor] | None) -> list[Embedded]:
        tokens = tokens if tokens is not None else self.tokenize(sequences)
        pooled, hidden = self.forward(tokens)
        pooled = pooled.cpu()  # the one device-to-host copy per batch
        residues: list[torch.Tensor | None] = [None] * len(sequences)
        if self.per_residue:
            lengths = [len(s) for s in sequences]
            residues = [r.half().cpu() for r in residue_rows(hidden, lengths, self.family.residue_offset)]
        return [Embedded(pooled[i], residues[i], None) for i in range(len(sequences))]

    def embed(self, sequences: list[str], tokens: dict[str, torch.Tensor] | None = None) -> list[Embedded]:
        """Embed one batch; over-long proteins go through windows; out of memory halves the batch and retries."""
        long = [i for i, s in enumerate(sequences) if len(s) > self.max_residues]
        if long:
            reason = f"longer than {self.max_residues} residues"
            windowed = {i: self.embed_windows(sequences[i], self.max_residues, reason) for i in long}
            rest = [i for i in range(len(sequences)) if i not in windowed]
            done = dict(zip(rest, self.embed([sequences[i] for i in rest]) if rest else [], strict=True))
            return [windowed[i] if i in windowed else done[i] for i in range(len(sequences))]
        square = len(sequences) * (max(map(len, sequences)) + self.family.special_tokens) ** 2
        if len(sequences) == 1 or square < self.smallest_failed_square:
            try:
                return self._embed_whole_batch(sequences, tokens)
            except torch.OutOfMemoryError:
                pass  # leave the except block first, so the failed pass's tensors can be freed
            # A failed pass costs its partial forward and the allocator's cache: later batches at least this large
            # are split before they are tried, not after.
            self.out_of_memory_events += 1
            self.smallest_failed_square = min(self.smallest_failed_square, square)
            self._release_memory()
        if len(sequences) == 1:
            window = max(16, min(self.max_residues, len(sequences[0])) // 2)
            return [self.embed_windows(sequences[0], window, "out of memory at full length")]
        half = len(sequences) // 2
        return self.embed(sequences[:half]) + self.embed(sequences[half:])

    def embed_windows(self, sequence: str, window: int, reason: str) -> Embedded:
        """Overlapping windows, each encoded as a protein of its own; residue rows averaged where windows overlap."""
        overlap = min(self.window_overlap, window // 4)
        while True:
            spans = window_spans(len(sequence), window, overlap)
            try:
                rows = []
                for start, end in spans:
                    piece = sequence[start:end]
                    _, hidden = self.forward(self.tokenize([piece]))
                    rows.append(residue_rows(hidden, [len(piece)], self.family.residue_offset)[0].float().cpu())
                break
            except torch.OutOfMemoryError:
                pass
            self._release_memory()
            if window <= 16:
                raise RuntimeError(f"a {len(sequence)}-residue protein does not fit even in 16-residue windows")
            window, overlap = window // 2, min(overlap, window // 8)
        merged = merge_windows(rows, spans, len(sequence))
        note = {"windows": len(spans), "window_residues": window, "overlap": overlap, "reason": reason}
        return Embedded(merged.mean(dim=0), merged.half() if self.per_residue else None, note)

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        self._prefetch.shutdown(wait=False)


def padding_fraction(batches_lengths: list[list[int]], special_tokens: int) -> float:
    real = sum(sum(lengths) + special_tokens * len(lengths) for lengths in batches_lengths)
    padded = sum(padded_tokens(lengths, special_tokens) for lengths in batches_lengths)
    return 1 - real / padded if padded else 0.0
