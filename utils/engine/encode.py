"""Tokenizer + encoder on one device: sequences → per-protein vectors (and, on request, residue rows).

A batch is packed (utils.engine.tokens.TokenTable.pack: every protein's tokens end to end, no padding) and runs through
our own forward pass over the checkpoint's weights (utils.engine.encoders) with attention that stays within each protein
(utils.engine.attention); pooling is a segment sum on the device and one device-to-host copy per batch. transformers'
padded forward is the fallback (`attention="transformers"`, or a layout utils.engine.encoders does not know);
`Encoder.path` says which ran, and the worker logs it.

fp16 on GPU for the whole encoder (T5's `wo` layers included, which transformers would otherwise keep in fp32),
fp32 on CPU. A protein longer than `max_residues` (a setting, or the model's positional limit: never the memory) is
embedded in overlapping windows, packed together like any other batch, and the output records it. Out of memory (the
device's, or the CPU allocator's) splits the batch and retries, down to one protein (windows: down to one window a
pass); a protein that still does not fit fails the model with one line (utils.engine.limits.Limits.does_not_fit),
never a vector computed differently.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from utils.engine.attention import FLEX_SHORTEST_ROW, PackedAttention, PackedLayout, varlen_available
from utils.engine.batching import padded_tokens, window_spans
from utils.engine.encoders import build_forward, relative_bias
from utils.engine.families import Family
from utils.engine.limits import Limits, protein_name
from utils.engine.pooling import mean_over_residues, merge_windows, residue_rows, segment_means
from utils.engine.tokens import TokenLayoutError, build_table
from utils.engine.transformers_attention import CUSTOM_ATTENTION, PREPARE_MODEL
from utils.errors import ModelError

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


def keep_layers(model: torch.nn.Module, family: Family, index: int) -> None:
    """Cut the encoder so that its output is `hidden_states[index]` of the whole model (utils.engine.families.
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


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"


def is_out_of_memory(exc: BaseException) -> bool:
    """The device ran out of memory, or the CPU allocator did (`ulimit -v`, a cgroup limit): both are survived the
    same way, by splitting the batch and then windows."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def kernel_choices(requested: str, device: torch.device, family: Family) -> list[str]:
    """The attention kernels to try, best first; the last is always segments (no compiler, no FlashAttention build).
    auto: segments on CPU; on GPU varlen FlashAttention for the families without a position bias where torch has it,
    then compiled FlexAttention."""
    if requested != "auto":
        chosen = [requested]
    elif device.type != "cuda":
        chosen = []
    elif family.forward != "t5" and varlen_available(device):
        chosen = ["varlen", "flex"]
    else:
        chosen = ["flex"]
    return [k for k in chosen if k != "segments"] + ["segments"]


class Encoder:
    """One model on one device; `embed` takes a batch of sequences and returns one Embedded per sequence."""

    def __init__(
        self,
        tokenizer: Any,
        model: torch.nn.Module,
        family: Family,
        device: str,
        max_residues: int | None,
        window_overlap: int,
        per_residue: bool = False,
        *,
        attention: str = "auto",
        tokens_per_pass: int = 4096,
        limits: Limits | None = None,
    ):
        self.tokenizer = tokenizer
        self.model = model
        self.family = family
        self.device = torch.device(device)
        self.max_residues = max_residues  # None: no windows
        self.limits = limits  # the memory behind this encoder, for the message when a protein does not fit
        self.window_overlap = window_overlap
        self.per_residue = per_residue
        self.tokens_per_pass = tokens_per_pass  # windows of long proteins are packed up to this many tokens a pass
        # FlexAttention pads every row up to this length to one length: one compiled kernel for all ordinary
        # batches (the token budget bounds them) and for the self-check below (utils.engine.attention)
        self.flex_row_floor = min(tokens_per_pass, FLEX_SHORTEST_ROW)
        self.table = build_table(tokenizer, family)  # raises TokenLayoutError when the tokenizer is not the family's
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.out_of_memory_events = 0
        self.smallest_failed_tokens = float("inf")  # tokens of the smallest batch that ran out of memory
        self.packed, self.layout_reason = None, ""  # why transformers' forward runs instead of ours, if it does
        if attention != "transformers":
            self.packed, self.layout_reason = build_forward(model, family.forward)
        self.kernels = ["transformers"] if self.packed is None else kernel_choices(attention, self.device, family)
        self.fallback_reason = ""
        if self.packed is not None and not self._layout_agrees():
            self.packed, self.kernels = None, ["transformers"]
        while len(self.kernels) > 1 and not self._kernel_agrees():
            self.kernels.pop(0)

    @property
    def kernel(self) -> str:
        return self.kernels[0]

    @property
    def path(self) -> str:
        """Which forward and attention kernel run, for the log and the report."""
        if self.packed is None:
            why = f"; {self.layout_reason}" if self.layout_reason else ""
            return f"transformers ({self.model.config._attn_implementation}{why})"
        note = f" ({self.fallback_reason})" if self.fallback_reason else ""
        return f"packed, {self.kernel} attention{note}"

    def _layout_agrees(self) -> bool:
        """Our forward (segments attention) against transformers' own, one protein at a time, on a probe batch: a
        layout the config check let through but the packed forward gets wrong runs transformers' forward instead
        (layout_reason says so). A checkpoint transformers itself cannot run is a ModelError, in one line."""
        probe = ["M" * 7, "MKTAYIAKQRQISFVKSHFSRQ" * 3]  # shortest first: dynamic rotary state only grows
        try:
            theirs = torch.stack([self._reference_pooled(sequence) for sequence in probe])
        except Exception as exc:  # noqa: BLE001  # the checkpoint itself is at fault: no forward can run it
            raise ModelError(
                f"transformers' own forward fails on this checkpoint ({_first_line(exc)}): its config.json does not "
                "match its weights, or it needs another transformers version"
            ) from None
        try:
            ours = self._pooled_with("segments", self.table.pack(probe)).to(theirs.device)
        except Exception as exc:  # noqa: BLE001  # a layout our forward cannot run: transformers' can
            self.layout_reason = f"the packed forward fails on this layout ({_first_line(exc)})"
            return False
        if not (torch.isfinite(ours).all() and torch.isfinite(theirs).all()):
            return True  # non-finite weights or overflow: no verdict here, the fp32 redo and its checks judge
        cosine = torch.nn.functional.cosine_similarity(ours.double(), theirs.double(), dim=-1).min().item()
        tolerance = 0.9999 if self.model.dtype == torch.float32 else 0.99
        if cosine < tolerance:
            self.layout_reason = f"the packed forward disagreed with transformers' on a probe (cosine {cosine:.4f})"
            return False
        return True

    @torch.inference_mode()
    def _reference_pooled(self, sequence: str) -> torch.Tensor:
        """transformers' forward on one protein, unpadded: the mean of its residue rows."""
        ids = self._to_device(self.table.encode([sequence])["input_ids"])
        hidden = self.model(input_ids=ids).last_hidden_state[0]
        return hidden[self.family.residue_slice(len(sequence))].float().mean(dim=0)

    def _kernel_agrees(self) -> bool:
        """Run the first kernel once against segments on a few proteins (compiling it, where it compiles); on an
        error or a disagreement record why, for the log."""
        sequences = ["MKTAYIAKQRQISFVKSHFSRQ" * 3, "M" * 7, "ACDEFGHIKLMNPQRSTVWY" * 9]
        tokens = self.tokenize(sequences)
        chosen = self.kernel
        if chosen == "varlen" and not varlen_available(self.device):
            self.fallback_reason = f"varlen needs a CUDA device and torch ≥ 2.9, not {self.device.type}"
            return False
        try:
            fast = self._pooled_with(chosen, tokens)
            slow = self._pooled_with("segments", tokens)
        except Exception as exc:  # noqa: BLE001  # any failure of an optional kernel means: try the next one
            self.fallback_reason = f"{chosen} unavailable: {_first_line(exc)}"
            return False
        cosine = torch.nn.functional.cosine_similarity(fast.float(), slow.float(), dim=-1).min().item()
        if not cosine > 0.999:
            self.fallback_reason = f"{chosen} disagreed with segments (cosine {cosine:.4f})"
            return False
        return True

    def _pooled_with(self, kernel: str, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        kernels, self.kernels = self.kernels, [kernel]
        try:
            return self.forward(tokens)[0]
        finally:
            self.kernels = kernels

    # -- tokenization -------------------------------------------------------------------------------------------
    def tokenize(self, sequences: list[str]) -> dict[str, torch.Tensor]:
        """Residue strings → ids by the table checked against this model's tokenizer: packed ({input_ids,
        positions [N], lengths, sizes [B]}) for our forward, padded ({input_ids, attention_mask [B, T], lengths})
        for transformers'."""
        return self.table.pack(sequences) if self.packed is not None else self.table.encode(sequences)

    def tokenize_ahead(self, sequences: list[str]):
        """Start tokenizing the next batch on a CPU thread while the device runs the current one."""
        return self._prefetch.submit(self.tokenize, sequences)

    # -- forward ------------------------------------------------------------------------------------------------
    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def forward(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (pooled [B, D] float32 on the device, hidden on the device: [N, D] packed, [B, T, D] padded)."""
        offset = self.family.residue_offset
        if self.packed is None:
            input_ids, mask = self._to_device(tokens["input_ids"]), self._to_device(tokens["attention_mask"])
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            lengths = tokens["lengths"].to(self.device, non_blocking=True)
            return mean_over_residues(hidden, lengths, offset), hidden
        sizes = tokens["sizes"].tolist()
        starts = [0] * len(sizes)
        for i in range(1, len(sizes)):
            starts[i] = starts[i - 1] + sizes[i - 1]
        total = starts[-1] + sizes[-1] if sizes else 0
        cu = torch.tensor([*starts, total], dtype=torch.int32)
        layout = PackedLayout(starts, sizes, self._to_device(cu), total)
        ids, positions = self._to_device(tokens["input_ids"]), self._to_device(tokens["positions"])
        while True:
            try:
                attend = PackedAttention(
                    self.kernel, layout, self.device, relative_bias(self.packed), row_floor=self.flex_row_floor
                )
                hidden = self.packed(ids, positions, attend)
                break
            except Exception as exc:
                # A kernel that passed its check can still fail at a new shape (a compiler error, say): the next
                # kernel takes over for this batch and the rest of the run, and the log says why.
                if is_out_of_memory(exc) or len(self.kernels) == 1:
                    raise
                self.fallback_reason = f"{self.kernels.pop(0)} failed on a {total}-token batch: {_first_line(exc)}"
        owner = self._to_device(tokens["owner"])
        lengths = self._to_device(tokens["lengths"])
        return segment_means(hidden, owner, lengths), hidden

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return tensor.cpu()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host

    def residue_rows(self, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per protein, its [L, D] residue rows (views into hidden)."""
        lengths = tokens["lengths"].tolist()
        offset = self.family.residue_offset
        if self.packed is None:
            return residue_rows(hidden, lengths, offset)
        rows, start = [], 0
        for length, size in zip(lengths, tokens["sizes"].tolist(), strict=True):
            rows.append(hidden[start + offset : start + offset + length])
            start += size
        return rows

    def _embed_whole_batch(self, sequences: list[str], tokens: dict[str, torch.Tensor] | None) -> list[Embedded]:
        tokens = tokens if tokens is not None else self.tokenize(sequences)
        pooled, hidden = self.forward(tokens)
        pooled = self._to_host(pooled)  # the one device-to-host copy per batch
        residues: list[torch.Tensor | None] = [None] * len(sequences)
        if self.per_residue:
            residues = [r.half().cpu() for r in self.residue_rows(hidden, tokens)]
        return [Embedded(pooled[i], residues[i], None) for i in range(len(sequences))]

    def over_limit(self, sequence: str) -> bool:
        """Whether `sequence` goes through windows (longer than max_residues)."""
        return self.max_residues is not None and len(sequence) > self.max_residues

    def embed(self, sequences: list[str], tokens: dict[str, torch.Tensor] | None = None) -> list[Embedded]:
        """Embed one batch; over-long proteins go through windows; out of memory halves the batch and retries."""
        window = self.max_residues
        long = [i for i, s in enumerate(sequences) if window is not None and len(s) > window]
        if long and window is not None:
            pieces = self.embed_windows([sequences[i] for i in long], window, f"longer than {window} residues")
            windowed = dict(zip(long, pieces, strict=True))
            rest = [i for i in range(len(sequences)) if i not in windowed]
            done = dict(zip(rest, self.embed([sequences[i] for i in rest]) if rest else [], strict=True))
            return [windowed[i] if i in windowed else done[i] for i in range(len(sequences))]
        size = self._pass_size(sequences)
        if len(sequences) == 1 or size < self.smallest_failed_tokens:
            try:
                return self._embed_whole_batch(sequences, tokens)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                cause = _first_line(exc)
            # (the except block is left first, so the failed pass's tensors can be freed)
            # A failed pass costs its partial forward and the allocator's cache: later batches at least this large
            # are split before they are tried, not after.
            self.out_of_memory_events += 1
            self.smallest_failed_tokens = min(self.smallest_failed_tokens, size)
            self._release_memory()
            if len(sequences) == 1:  # windows would change its vector: the model fails instead
                raise ModelError(self.does_not_fit(sequences[0], cause))
        half = len(sequences) // 2
        return self.embed(sequences[:half]) + self.embed(sequences[half:])

    def does_not_fit(self, sequence: str, cause: str) -> str:
        """The one line for a protein that ran out of memory alone (utils.engine.limits.Limits.does_not_fit)."""
        name = protein_name(sequence)
        if self.limits is not None:
            return self.limits.does_not_fit(name, len(sequence), cause)
        return (
            f"protein {name} ({len(sequence):,} residues) does not fit in memory ({cause}); give the job more "
            "memory, or set max_residues to embed longer proteins in windows"
        )

    def _pass_size(self, sequences: list[str]) -> int:
        """What one pass over `sequences` costs in memory, in tokens: packed, the sum of every protein's tokens;
        padded (transformers' forward), rows × longest and attention's square on top."""
        special = self.family.special_tokens
        if self.packed is not None:
            return sum(len(s) + special for s in sequences)
        return len(sequences) * (max(map(len, sequences)) + special) ** 2

    def embed_windows(self, sequences: list[str], window: int, reason: str) -> list[Embedded]:
        """Each protein in overlapping windows; the windows of all of them are embedded as proteins of their own,
        packed into passes of up to `tokens_per_pass` tokens (fewer after an out-of-memory, down to one window a
        pass); residue rows averaged where windows overlap."""
        overlap = min(self.window_overlap, window // 4)
        spans = [window_spans(len(s), window, overlap) for s in sequences]
        pieces = [s[a:b] for s, protein_spans in zip(sequences, spans, strict=True) for a, b in protein_spans]
        one_window = window + self.family.special_tokens
        budget = self.tokens_per_pass
        while True:
            try:
                rows = self._window_rows(pieces, budget)
                break
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                cause = _first_line(exc)
            self.out_of_memory_events += 1
            self._release_memory()
            if budget <= one_window:  # one window a pass did not fit: smaller windows would change the vectors
                raise ModelError(self.does_not_fit(max(sequences, key=len), cause))
            budget = max(one_window, budget // 2)
        out, k = [], 0
        for sequence, protein_spans in zip(sequences, spans, strict=True):
            merged = merge_windows(rows[k : k + len(protein_spans)], protein_spans, len(sequence))
            k += len(protein_spans)
            note = {"windows": len(protein_spans), "window_residues": window, "overlap": overlap, "reason": reason}
            out.append(Embedded(merged.mean(dim=0), merged.half() if self.per_residue else None, note))
        return out

    def _window_rows(self, pieces: list[str], budget: int) -> list[torch.Tensor]:
        """Residue rows (float32, on the host) of each piece, the pieces packed into passes of at most `budget`
        tokens (one piece at least)."""
        rows: list[torch.Tensor] = []
        special = self.family.special_tokens
        start = 0
        while start < len(pieces):
            end, tokens = start + 1, len(pieces[start]) + special
            while end < len(pieces) and tokens + len(pieces[end]) + special <= budget:
                tokens += len(pieces[end]) + special
                end += 1
            batch = self.tokenize(pieces[start:end])
            _, hidden = self.forward(batch)
            rows += [r.float().cpu() for r in self.residue_rows(hidden, batch)]
            start = end
        return rows

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        self._prefetch.shutdown(wait=False)


def padding_fraction(batches_lengths: list[list[int]], special_tokens: int) -> float:
    """Share of a padded plan's tokens that are padding (0 for packed batches, which have none)."""
    real = sum(sum(lengths) + special_tokens * len(lengths) for lengths in batches_lengths)
    padded = sum(padded_tokens(lengths, special_tokens) for lengths in batches_lengths)
    return 1 - real / padded if padded else 0.0
