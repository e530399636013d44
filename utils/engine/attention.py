"""Attention over packed batches: each protein attends only to itself, and nothing is ever T × T for a whole batch.

A packed batch is every protein's tokens laid end to end ([N, heads, head_dim], no padding), with `starts` the
offset of each protein's first token. Three kernels compute the same thing:

  segments  one SDPA call per protein, on its own rows. For T5 the relative-position bias of a long protein is built
            a block of queries at a time (heads × block × L, at most ATTENTION_WORKSPACE_BYTES), so memory stays
            linear in the protein's length. No compiler; the path on CPU, and the fallback everywhere.
  flex      FlexAttention over the whole packed row, compiled: a document block mask built from the proteins'
            boundaries (blocks of two proteins are skipped, never computed), T5's bias read inside the kernel from a
            per-offset table (heads × 2T values, not heads × T²). GPU, T5 and ESM where varlen is missing.
  varlen    torch.nn.attention.varlen.varlen_attn (FlashAttention-2 over cumulative lengths; CUDA, torch ≥ 2.9, no
            bias): the ESM families on GPU.

T5's bias depends only on key − query position, and inside one protein's contiguous rows that difference is already
the in-protein offset: the packed kernels need the same-protein mask and nothing else about positions.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# Most memory the segments kernel's per-block bias (and SDPA's scores for it) may take, per call. Larger blocks gain
# nothing on CPU: a 20,000-residue T5 pass took ~15 s at 64 MB and 16-60 s at 128-256 MB (cache misses), 41 s at 16.
ATTENTION_WORKSPACE_BYTES = 64 << 20
FLEX_BLOCK = 128  # FlexAttention's tile: the block mask is (N / 128)², not N²


@dataclass
class PackedLayout:
    """Where each protein's tokens sit in a packed batch. Host lists for the segment loop, device tensors for the
    kernels; built once per batch and shared by every layer."""

    starts: list[int]  # first token of each protein
    sizes: list[int]  # tokens of each protein (residues + special tokens)
    cu_seqlens: torch.Tensor  # int32 [B + 1] on the device: starts and the total
    total: int  # N

    @property
    def longest(self) -> int:
        return max(self.sizes, default=0)


class RelativeBias:
    """T5's bucketed relative-position bias as a per-offset table: table[h, o + T − 1] is the bias of key − query = o.

    Built with the checkpoint's own bucket function and embedding (layer 0's `relative_attention_bias`), so the
    numbers are exactly transformers' `compute_bias`; only their layout differs. Lives as long as the model: the
    square bias of the longest protein that fits the workspace is kept, and every shorter protein reads its top-left
    corner (entry i, j depends only on j − i), so short proteins cost no bias arithmetic at all."""

    def __init__(self, attention_module: Any):
        self.module = attention_module
        self.kept: torch.Tensor | None = None

    def table(self, longest: int, device: torch.device) -> torch.Tensor:
        """[heads, 2 × longest − 1] float32, offsets −(longest − 1) … longest − 1."""
        m = self.module
        offsets = torch.arange(-(longest - 1), longest, device=device)
        buckets = m._relative_position_bucket(
            offsets, bidirectional=True, num_buckets=m.relative_attention_num_buckets,
            max_distance=m.relative_attention_max_distance,
        )  # fmt: skip
        return m.relative_attention_bias(buckets).float().t().contiguous()

    def square(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """[heads, length, length] (a view into the kept square), or None when it would not fit the workspace."""
        heads = self.module.relative_attention_bias.weight.shape[1]
        if heads * length * length * 4 > ATTENTION_WORKSPACE_BYTES:
            return None
        kept = self.kept
        if kept is None or kept.shape[-1] < length or kept.device != device or kept.dtype != dtype:
            kept = bias_rows(self.table(length, device), length - 1, 0, length, length).to(dtype)
            self.kept = kept
        return kept[:, :length, :length]


def bias_rows(table: torch.Tensor, centre: int, q_start: int, q_end: int, length: int) -> torch.Tensor:
    """The bias of one protein's queries [q_start, q_end) against its keys [0, length): [heads, rows, length],
    gathered from a per-offset table whose offset 0 sits at `centre`."""
    rows = torch.arange(q_start, q_end, device=table.device)[:, None]
    index = centre + torch.arange(length, device=table.device)[None, :] - rows
    return table[:, index]


def bias_rows_keys_reversed(reversed_table: torch.Tensor, centre: int, q_start: int, q_end: int, length: int):
    """bias_rows against the protein's keys in reverse order (key j' is key length − 1 − j'), as a strided view of
    the reversed table: no copy. In query order each row of the bias starts one offset before the last, which no
    strided view expresses; with the keys (and values) reversed it starts one after. Attention does not depend on
    the order of its keys."""
    first = (reversed_table.shape[1] - 1 - centre) - (length - 1) + q_start
    return reversed_table.unfold(1, length, 1)[:, first : first + (q_end - q_start)]


def segments_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PackedLayout,
    scale: float,
    bias: RelativeBias | None = None,
    bias_table: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """q, k, v [N, heads, d] → [N, heads, d], one protein at a time. With T5's bias: a protein whose square bias fits
    the workspace reads it whole (kept across batches); a longer one gets it a block of queries at a time from
    `bias_table()` (RelativeBias.table(layout.longest), made once per batch)."""
    out = torch.empty_like(q)
    heads = q.shape[1]
    for start, size in zip(layout.starts, layout.sizes, strict=True):
        end = start + size
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, L, d]
        square = bias.square(size, q.device, q.dtype) if bias is not None else None
        if bias is None or square is not None:
            mask = square.unsqueeze(0) if square is not None else None
            rows = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)
            out[start:end] = rows[0].transpose(0, 1)
            continue
        assert bias_table is not None
        reversed_table = bias_table().flip(1)
        ks, vs = ks.flip(2), vs.flip(2)  # see bias_rows_keys_reversed: once per protein, O(L)
        # The bias block and SDPA's float scores for it: heads × block × L values of 4 bytes, twice
        block = max(16, min(size, ATTENTION_WORKSPACE_BYTES // (8 * heads * size)))
        for q0 in range(0, size, block):
            q1 = min(size, q0 + block)
            mask = bias_rows_keys_reversed(reversed_table, layout.longest - 1, q0, q1, size)
            mask = mask.to(q.dtype).unsqueeze(0)
            rows = F.scaled_dot_product_attention(qs[:, :, q0:q1], ks, vs, attn_mask=mask, scale=scale)
            out[start + q0 : start + q1] = rows[0].transpose(0, 1)
    return out


# -- FlexAttention ------------------------------------------------------------------------------------------------

_compiled_flex: Any = None
# Rows of up to this many tokens are padded to one length at least this long (or the token budget, when smaller):
# every ordinary batch of a run, and the kernel's self-check at load, then share one compiled kernel. Padding tokens
# cost little (each attends only within its own 128-token block, and the linear layers never see them), but a GPU
# batch of 32 short proteins padded to a 131,072-token budget would copy q, k and v ten times over: hence the cap.
FLEX_SHORTEST_ROW = 8192


def inductor_cache_dir() -> Path:
    """Where compiled kernels persist: `$TORCHINDUCTOR_CACHE_DIR` when the user set it, else
    `$XDG_CACHE_HOME/torchinductor` (`~/.cache/torchinductor`), which, unlike torch's default under /tmp, survives a
    reboot and a cluster job's scratch being wiped, so a rerun, another lane or shard on the machine, and the next
    split skip the compiler."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torchinductor"
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None:
        return default
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # Importing torch._dynamo (transformers does, at import) writes torch's default into the environment: that one
    # is no choice of the user's. Torch reads the variable again at every cache lookup, so setting it later works.
    return default if os.path.abspath(current) == os.path.abspath(default_cache_dir()) else Path(current)


def compiled_flex() -> Any:
    """flex_attention compiled once per process. Uncompiled it materialises the scores (T² memory) and is slow."""
    global _compiled_flex
    if _compiled_flex is None:
        import torch._dynamo

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())
        from torch.nn.attention.flex_attention import flex_attention

        # One compiled kernel per padded row length (flex_row_length gives a few); past Dynamo's default limit of 8
        # it would silently fall back to the uncompiled, T²-memory path.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, 256)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def compile_stats() -> dict[str, float]:
    """This process's compiler work so far, from torch's own counters: `compiles` (graphs Dynamo compiled, each
    FlexAttention row length once), `compile_seconds` (Dynamo's timer; 0 where its key is not found),
    `compiled_anew` (kernels Inductor built because its cache did not hold them; 0 when every one came from
    inductor_cache_dir). Nothing is imported that the process has not imported already."""
    if "torch._dynamo" not in sys.modules:
        return {"compiles": 0, "compile_seconds": 0.0, "compiled_anew": 0}
    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = sum(sum(v) for k, v in compilation_time_metrics.items() if k.endswith("compile_inner"))
    inductor = counters["inductor"]
    return {
        "compiles": int(counters["stats"]["unique_graphs"]),
        "compile_seconds": round(float(seconds), 3),
        "compiled_anew": int(inductor["fxgraph_cache_miss"] + inductor["fxgraph_cache_bypass"]),
    }


def flex_row_length(total: int, floor: int = 0) -> int:
    """A packed row is padded to the next power of two, at least `floor` (Encoder: min(token budget,
    FLEX_SHORTEST_ROW)) and one block, so the kernel compiles a few times per model (once per length, then from
    the cache): one length for every row up to the floor, one per power of two above it."""
    n = FLEX_BLOCK
    while n < max(total, floor):
        n *= 2
    return n


@dataclass
class FlexPlan:
    """One packed batch as FlexAttention sees it: padded length, per-token protein index, and the block mask."""

    length: int
    document: torch.Tensor  # int32 [length]: protein index per token; padding tokens get a negative id per block
    block_mask: Any


def flex_plan(layout: PackedLayout, device: torch.device, floor: int = 0) -> FlexPlan:
    """The document block mask from the proteins' boundaries, without evaluating a T × T mask.

    Proteins are contiguous, so the keys a block of queries may see form one contiguous range of key blocks: from the
    block holding the first token of its first protein to the block holding the last token of its last protein. Key
    blocks strictly inside a protein that also holds the whole query block are full (no mask evaluated); the others
    are partial (the mask_mod compares protein ids). Padding tokens see only their own block."""
    from torch.nn.attention.flex_attention import BlockMask

    length = flex_row_length(layout.total, floor)
    blocks = length // FLEX_BLOCK
    sizes = torch.tensor(layout.sizes, dtype=torch.int64)
    document = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32), sizes)
    pad = length - layout.total
    if pad:
        pad_ids = -1 - torch.arange(layout.total, length, dtype=torch.int32) // FLEX_BLOCK
        document = torch.cat([document, pad_ids])
    starts = torch.tensor(layout.starts + [layout.total], dtype=torch.int64)
    token = torch.arange(length, dtype=torch.int64)
    doc64 = document.to(torch.int64)
    real = doc64 >= 0
    # Per token: the first and one-past-last token its protein's keys span (padding: its own block)
    lo = torch.where(real, starts[doc64.clamp(min=0)], token // FLEX_BLOCK * FLEX_BLOCK)
    hi = torch.where(real, starts[(doc64 + 1).clamp(min=0, max=len(sizes))], (token // FLEX_BLOCK + 1) * FLEX_BLOCK)
    lo_block = lo.view(blocks, FLEX_BLOCK).min(dim=1).values // FLEX_BLOCK
    hi_block = (hi.view(blocks, FLEX_BLOCK).max(dim=1).values + FLEX_BLOCK - 1) // FLEX_BLOCK
    # A query block wholly inside one protein: its full key blocks are those wholly inside the same protein
    first_doc = document.view(blocks, FLEX_BLOCK)[:, 0]
    one_doc = (document.view(blocks, FLEX_BLOCK) == first_doc[:, None]).all(dim=1) & (first_doc >= 0)
    full_lo = torch.where(one_doc, (lo.view(blocks, FLEX_BLOCK)[:, 0] + FLEX_BLOCK - 1) // FLEX_BLOCK, 0)
    full_hi = torch.where(one_doc, hi.view(blocks, FLEX_BLOCK)[:, 0] // FLEX_BLOCK, 0)
    full_hi = torch.maximum(full_hi, full_lo)
    column = torch.arange(blocks, dtype=torch.int64)[None, :]
    in_range = (column >= lo_block[:, None]) & (column < hi_block[:, None])
    full = (column >= full_lo[:, None]) & (column < full_hi[:, None]) & in_range
    partial = in_range & ~full
    kv_num, kv_idx = _block_indices(partial)
    full_num, full_idx = _block_indices(full)
    doc_device = document.to(device)

    def same_protein(b, h, q_idx, kv_idx):
        return doc_device[q_idx] == doc_device[kv_idx]

    block_mask = BlockMask.from_kv_blocks(
        kv_num.to(device), kv_idx.to(device), full_num.to(device), full_idx.to(device),
        BLOCK_SIZE=FLEX_BLOCK, mask_mod=same_protein, seq_lengths=(length, length),
    )  # fmt: skip
    return FlexPlan(length, doc_device, block_mask)


def _block_indices(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A [q_blocks, kv_blocks] selection → BlockMask's (counts [1, 1, q], indices [1, 1, q, kv]), selected first."""
    counts = selected.sum(dim=1).to(torch.int32)
    order = torch.argsort((~selected).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return counts[None, None], order[None, None]


def flex_attention_packed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: FlexPlan,
    scale: float,
    bias_table: torch.Tensor | None = None,
    compiled: bool = True,
) -> torch.Tensor:
    """q, k, v [N, heads, d] → [N, heads, d] through FlexAttention over one padded row. `bias_table` spans offsets
    ± (plan.length − 1) (RelativeBias.table(plan.length))."""
    from torch.nn.attention.flex_attention import flex_attention

    total = q.shape[0]
    pad = plan.length - total

    def row(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, 0, 0, 0, 0, pad)).transpose(0, 1).unsqueeze(0)  # [1, heads, length, d]

    score_mod = None
    if bias_table is not None:
        centre = plan.length - 1

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias_table[h, kv_idx - q_idx + centre]

    kernel = compiled_flex() if compiled else flex_attention
    out = kernel(row(q), row(k), row(v), score_mod=score_mod, block_mask=plan.block_mask, scale=scale)
    return out[0, :, :total].transpose(0, 1)


# -- varlen (FlashAttention-2) -------------------------------------------------------------------------------------


def varlen_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, scale: float
) -> torch.Tensor:
    """q, k, v [N, heads, d] (fp16/bf16, CUDA) → [N, heads, d]."""
    from torch.nn.attention.varlen import varlen_attn

    longest = layout.longest
    if not math.isclose(scale, q.shape[-1] ** -0.5):
        q = q * (scale / q.shape[-1] ** -0.5)  # the kernel scales by 1/√d; older signatures take no `scale`
    return varlen_attn(q, k, v, layout.cu_seqlens, layout.cu_seqlens, longest, longest)


# -- one entry point per batch ---------------------------------------------------------------------------------------


class PackedAttention:
    """The attention kernel for one packed batch; everything per batch (block mask, bias table) is built once here
    and shared by every layer."""

    def __init__(
        self,
        kernel: str,
        layout: PackedLayout,
        device: torch.device,
        bias: RelativeBias | None,
        compiled: bool = True,
        row_floor: int = 0,
    ):
        self.kernel = kernel
        self.layout = layout
        self.compiled = compiled
        self.device = device
        self.plan = flex_plan(layout, device, row_floor) if kernel == "flex" else None
        self.bias = bias
        self._table: torch.Tensor | None = None

    def bias_table(self) -> torch.Tensor:
        """The per-offset table over this batch's offsets (over the padded row for flex), made on first use."""
        if self._table is None:
            assert self.bias is not None
            self._table = self.bias.table(self.plan.length if self.plan else self.layout.longest, self.device)
        return self._table

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if self.kernel == "varlen":
            return varlen_attention(q, k, v, self.layout, scale)
        if self.plan is not None:
            table = self.bias_table() if self.bias is not None else None
            return flex_attention_packed(q, k, v, self.plan, scale, table, self.compiled)
        return segments_attention(q, k, v, self.layout, scale, self.bias, self.bias_table)
