"""Pre-flight checks of one model on a sample of the job's proteins, through the job's own code path.

Each check returns a `Check` (passed, the measured figure, a detail line). The sample is embedded exactly as a
worker would embed it (utils.engine.limits, utils.engine.embedder.embed_in_batches, utils.engine.encode.Encoder.embed);
the checks then recompute what they test independently (own slicing of last_hidden_state, own vocabulary goldens,
an unpadded one-protein-at-a-time reference) so that a fault in the pipeline shows instead of agreeing with itself.
"""

from __future__ import annotations

import logging
import math
import random
import re
import resource
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from utils.engine.encode import Encoder
from utils.engine.families import Architecture, Family
from utils.engine.limits import Limits, heaviest_pass
from utils.engine.tokens import TokenLayoutError, build_table

# Every residue letter a FASTA may carry (utils.inputs.fasta.ALPHABET), in a fixed order for reports.
ALL_RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBZUO"


# -- tolerances ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    invariance_cosine: float  # same protein, different batch companions: at least this cosine ...
    invariance_max_abs: float  # ... and at most this largest element difference
    reference_cosine: float  # the job's vectors against an unpadded fp32 one-at-a-time reference

    def describe(self) -> str:
        return f"cos ≥ {self.invariance_cosine:g}, max |Δ| ≤ {self.invariance_max_abs:g}"


TOLERANCES = {
    "fp32": Tolerance(0.99999, 1e-4, 0.9999),
    "fp16": Tolerance(0.999, 2e-2, 0.999),
    "bf16": Tolerance(0.999, 2e-2, 0.999),
}
CROSS_MODEL_MAX_COSINE = 0.999  # ProstT5 vs ProtT5: a mean cosine above this means the two are the same encoder
POOLING_CLEAN_RELATIVE = 1e-5  # own slicing vs the job's pooling, relative to the vectors' largest element


# -- results ------------------------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    passed: bool
    figure: str  # the measured value, short, for the terminal line
    detail: str = ""  # what was compared and against what (printed under a failure)
    values: dict[str, Any] = field(default_factory=dict)  # numbers for the JSON report
    note: str = ""  # printed under the line even when it passed: something the user should know

    def as_json(self) -> dict[str, Any]:
        note = {"note": self.note} if self.note and self.note != self.detail else {}
        return {"passed": self.passed, "figure": self.figure, "detail": self.detail, **note, **self.values}


def crashed(name: str, exc: BaseException) -> Check:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Check(name, False, f"crashed: {type(exc).__name__}", message)


def guarded(name: str, check: Callable[..., Check], *args: Any) -> Check:
    """A check that crashes (NaN weights, a tokenizer error, out of memory) is a failed check, never a traceback."""
    try:
        return check(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of the model under test is a finding, not a crash
        return crashed(name, exc)


# -- the sample ---------------------------------------------------------------------------------------------------
def stratified_sample(lengths: Sequence[int], count: int, seed: int, strata: int = 10) -> list[int]:
    """Indices of `count` proteins spread over length strata (equal-sized bins of the length order), always
    including the longest; deterministic for a given seed. Returned in input order."""
    if count >= len(lengths):
        return list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    longest, rest = order[-1], order[:-1]
    wanted = count - 1
    bins = max(1, min(strata, wanted))
    rng = random.Random(seed)
    chosen = [longest]
    for b in range(bins):
        members = rest[b * len(rest) // bins : (b + 1) * len(rest) // bins]
        quota = wanted // bins + (1 if b >= bins - wanted % bins else 0)  # extras go to the longer bins
        chosen += rng.sample(members, min(quota, len(members)))
    return sorted(chosen)


def spread(items: Sequence[int], count: int) -> list[int]:
    """`count` items evenly spaced over `items` (which are sorted by the caller), first included."""
    if len(items) <= count:
        return list(items)
    return [items[k * len(items) // count] for k in range(count)]


# -- load ---------------------------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MISSING_ROW = re.compile(r"^\s*(\S+)\s*\|\s*MISSING\b")


@contextmanager
def transformers_warnings() -> Iterator[list[str]]:
    """Collect transformers' warnings (its load report among them) instead of printing them."""
    from transformers.utils import logging as hf_logging

    collected: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.append(_ANSI.sub("", record.getMessage()))

    library = logging.getLogger("transformers")
    handler = Collect(level=logging.WARNING)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_logging.disable_default_handler()
    library.addHandler(handler)
    try:
        yield collected
    finally:
        library.removeHandler(handler)
        hf_logging.enable_default_handler()
        hf_logging.set_verbosity(previous)


def newly_initialised(warnings: list[str]) -> list[str]:
    """Weights the load report lists as MISSING: transformers filled them with random values."""
    return [m.group(1) for text in warnings for line in text.splitlines() if (m := _MISSING_ROW.match(line))]


def checkpoint_kind(model_config: Any) -> str:
    """What the checkpoint holds, from config.json's `architectures` (then `is_encoder_decoder`)."""
    architectures = list(getattr(model_config, "architectures", None) or [])
    names = ", ".join(architectures)
    if any(a.endswith("ForConditionalGeneration") or "Seq2Seq" in a for a in architectures):
        return f"full encoder-decoder ({names}; decoder not loaded)"
    if any(a.endswith("EncoderModel") for a in architectures):
        return f"encoder-only ({names})"
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return f"encoder with masked-LM head ({names}; head not loaded)"
    if architectures:
        return f"encoder ({names})"
    if getattr(model_config, "is_encoder_decoder", False):
        return "full encoder-decoder (is_encoder_decoder; decoder not loaded)"
    return "encoder (config.json names no architecture)"


def check_load(
    seconds: float, family: Family, model: torch.nn.Module, warnings: list[str], arch: Architecture, precision: str
) -> Check:
    config = model.config
    kind = checkpoint_kind(config)
    params = sum(p.numel() for p in model.parameters())
    hidden = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
    problems = []
    missing = newly_initialised(warnings)
    if missing:
        problems.append(
            f"{len(missing)} weight(s) missing from the checkpoint and randomly initialised, e.g. {missing[0]}"
        )
    if hasattr(model, "decoder"):
        problems.append("a decoder was loaded; the job needs the encoder alone")
    if hidden != arch.hidden:
        problems.append(f"hidden size {hidden} differs from the config's {arch.hidden}")
    device = next(model.parameters()).device
    figure = f"{seconds:.2f} s; {family.label}; {kind}"
    detail = f"{params:,} encoder parameters, hidden size {hidden}, {precision} on {device}"
    if problems:
        return Check("load", False, figure, "; ".join(problems), {"seconds": seconds, "parameters": params})
    values = {"seconds": seconds, "parameters": params, "kind": kind}
    return Check("load", True, figure, detail, values, note=family.licence)


# -- token layout -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenGolden:
    """The real hub vocabularies (the published tokenizer files' ids), written out independently of
    utils.engine.families."""

    leading: tuple[tuple[str, int], ...]  # tokens before the first residue
    trailing: tuple[tuple[str, int], ...]  # tokens after the last residue
    piece: str  # how a residue letter is spelled in the vocabulary
    residue_ids: dict[str, int]


_T5_IDS = {r: 3 + i for i, r in enumerate("A L G V S R E D T I P K F Q N Y M H W C X B O U Z".split())}
_ESM_IDS = {r: 4 + i for i, r in enumerate("L A G V S E R T I D P K Q N F Y M H W C X B U Z O".split())}
_ESM_GOLDEN = TokenGolden((("<cls>", 0),), (("<eos>", 2),), "{}", _ESM_IDS)
GOLDEN = {
    "prot_t5": TokenGolden((), (("</s>", 1),), "\u2581{}", _T5_IDS),
    "prost_t5": TokenGolden((("<AA2fold>", 149),), (("</s>", 1),), "\u2581{}", _T5_IDS),
    "esm2": _ESM_GOLDEN,
    "esm1b": _ESM_GOLDEN,
    "esmc": _ESM_GOLDEN,
}


def check_token_layout(tokenizer: Any, family: Family) -> Check:
    """Tokenize the family's own model text for all 25 residue letters and compare every id with the goldens."""
    golden = GOLDEN[family.name]
    vocabulary = tokenizer.get_vocab()
    ids = tokenizer([family.model_text(ALL_RESIDUES)], add_special_tokens=True)["input_ids"][0]
    problems = []
    lead, trail = len(golden.leading), len(golden.trailing)
    if family.residue_offset != lead or family.special_tokens != lead + trail:
        problems.append(
            f"family data says residues start at {family.residue_offset} with {family.special_tokens} special tokens; "
            f"the {family.label} layout has {lead} before and {trail} after"
        )
    if len(ids) != len(ALL_RESIDUES) + lead + trail:
        expected = len(ALL_RESIDUES) + lead + trail
        problems.append(f"{len(ALL_RESIDUES)} residues became {len(ids)} tokens (expected {expected})")
    for (token, expected), found in zip(golden.leading, ids[:lead], strict=True):
        if found != expected or vocabulary.get(token) != expected:
            problems.append(f"first token is {found}, expected {token}={expected}")
    for (token, expected), found in zip(golden.trailing, ids[len(ids) - trail :], strict=True):
        if found != expected:
            problems.append(f"last token is {found}, expected {token}={expected}")
    if not golden.leading and ids and ids[0] in (vocabulary.get("<AA2fold>"), vocabulary.get("<cls>")):
        problems.append(f"the text starts with a prefix token ({ids[0]}) that {family.label} does not use")
    residues = ids[lead : lead + len(ALL_RESIDUES)]
    unknown = [r for r, i in zip(ALL_RESIDUES, residues, strict=False) if i == tokenizer.unk_token_id]
    if unknown:
        problems.append(f"<unk> for residue(s) {''.join(unknown)}: the tokenizer does not match the model text")
    wrong = []
    for letter, found in zip(ALL_RESIDUES, residues, strict=False):
        fed = family.model_text(letter)[len(family.prefix) :]  # U/Z/O/B → X where the family does that
        expected = golden.residue_ids[fed]
        in_vocabulary = vocabulary.get(golden.piece.format(fed))
        if found != expected or in_vocabulary != expected:
            wrong.append(f"{letter}→{found} (expected {expected}, vocabulary {in_vocabulary})")
    if wrong and not unknown:
        problems.append(f"residue ids differ from the {family.label} vocabulary: " + ", ".join(wrong[:4]))
    try:
        build_table(tokenizer, family).encode([ALL_RESIDUES])  # the job's own lookup must accept what it will feed
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the job's tokenization refuses it: {exc}")
    problems += silent_unknown_guards(tokenizer, family)
    prefix = ", ".join(f"{t}={i}" for t, i in golden.leading) if golden.leading else "no prefix"
    end = ", ".join(f"{t}={i}" for t, i in golden.trailing)
    correct = len(ALL_RESIDUES) - len(wrong)
    figure = f"{prefix}; {correct}/{len(ALL_RESIDUES)} residues → own ids (M→{golden.residue_ids['M']}); {end} last"
    values = {"ids": ids, "unknown_residues": "".join(unknown)}
    if problems:
        return Check("token layout", False, figure, "; ".join(problems), values)
    detail = f"model text {family.model_text('MKT')!r}; unspaced or lower-case text is refused, never silent <unk>"
    return Check("token layout", True, figure, detail, values)


def silent_unknown_guards(tokenizer: Any, family: Family) -> list[str]:
    """Text without the separator, or in lower case, must never become <unk> silently: wherever the tokenizer
    gives <unk> for it, the job's token table must refuse that layout; lower case must not reach it at all (FASTA
    reader)."""
    from utils.inputs.fasta import parse_fasta

    problems = []
    if parse_fasta(">guard\nmkt\n", "guard")[0].sequence != "MKT":
        problems.append("the FASTA reader does not upper-case residues (lower case is <unk>, or 3Di for ProstT5)")
    sample = "MKTAYIAKQR"
    variants = {"lower case": (family, sample.lower())}
    if family.separator:
        variants["no separator"] = (replace(family, separator=""), sample)
    for what, (variant, text) in variants.items():
        ids = tokenizer([variant.model_text(text)], add_special_tokens=True)["input_ids"][0]
        gives_unknown = tokenizer.unk_token_id in ids or len(ids) != len(text) + family.special_tokens
        if not gives_unknown:
            continue
        try:
            build_table(tokenizer, variant).encode([text])
            problems.append(f"{what} text becomes <unk> and the job's tokenization lets it through")
        except TokenLayoutError:
            pass
    return problems


# -- embeddings of the sample -------------------------------------------------------------------------------------
def check_embeddings(vectors: torch.Tensor, hidden: int, windowed: int) -> Check:
    finite_rows = torch.isfinite(vectors).all(dim=1)
    bad = int((~finite_rows).sum())
    notes = f"; {windowed} embedded in windows" if windowed else ""
    figure = f"shape [{vectors.shape[0]}, {vectors.shape[1]}]; {bad} non-finite{notes}"
    values = {"shape": list(vectors.shape), "non_finite_rows": bad, "windowed": windowed}
    if vectors.dim() != 2 or vectors.shape[1] != hidden:
        return Check("embeddings", False, figure, f"expected [N, {hidden}] (the model's hidden size)", values)
    if bad:
        return Check("embeddings", False, figure, f"{bad} of {vectors.shape[0]} vectors contain NaN or inf", values)
    return Check("embeddings", True, figure, f"[N, D] with D = hidden size {hidden}, all finite", values)


def check_pooling(encoder: Encoder, sequences: list[str]) -> Check:
    """One batch through the job's forward; recompute each mean with own slicing of its hidden rows."""
    if not sequences:
        return Check("pooling clean", True, "not applicable", "no sample protein within max_residues")
    offset, specials = encoder.family.residue_offset, encoder.family.special_tokens
    tokens = encoder.tokenize(sequences)
    pooled, hidden = encoder.forward(tokens)
    pooled, hidden = pooled.double().cpu(), hidden.double().cpu()
    rows = protein_rows(hidden, [len(s) + specials for s in sequences])
    own = torch.stack([r[offset : offset + len(s)].mean(dim=0) for r, s in zip(rows, sequences, strict=True)])
    with_specials = torch.stack([r[: len(s) + specials].mean(dim=0) for r, s in zip(rows, sequences, strict=True)])
    # tensor reductions, not Python's max/min: a NaN must propagate and fail the check
    clean = float((pooled - own).abs().amax())
    contamination = float((pooled - with_specials).abs().amax(dim=1).min())
    scale = float(own.abs().amax())
    tolerance = POOLING_CLEAN_RELATIVE * max(1.0, scale) if math.isfinite(scale) else 0.0
    figure = f"max |Δ| {clean:.1e} vs own residue mean; {contamination:.1e} vs mean with specials"
    detail = (
        f"{len(sequences)} proteins ({min(map(len, sequences))}-{max(map(len, sequences))} residues) in one "
        f"batch; residue rows [{offset}, {offset}+L); must be ≤ {tolerance:.0e} and differ from the "
        f"with-specials mean by > 10× that"
    )
    values = {"max_abs_vs_own": clean, "min_max_abs_vs_with_specials": contamination, "tolerance": tolerance}
    passed = clean <= tolerance and contamination > 10 * tolerance  # False for NaN too
    return Check("pooling clean", passed, figure, detail, values)


def protein_rows(hidden: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Each protein's token rows, sliced here from the sizes alone: packed hidden [N, D] holds them end to end, padded
    hidden [B, T, D] (transformers' forward) one per row."""
    if hidden.dim() == 3:
        return [hidden[i, :size] for i, size in enumerate(sizes)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [hidden[start : start + size] for start, size in zip(starts, sizes, strict=True)]


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(min cosine over rows, max |Δ|) of two [N, D] stacks."""
    cosine = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    return float(cosine.min()), float((a.double() - b.double()).abs().max())


def check_batch_invariance(encoder: Encoder, sequences: list[str], tolerance: Tolerance, seed: int) -> Check:
    """All together, shuffled pairs and one at a time must give the same vectors (padding masked)."""
    if len(sequences) < 2:
        return Check("batch invariance", True, "not applicable", "fewer than 2 proteins within max_residues")
    alone = torch.stack([encoder.embed([s])[0].pooled for s in sequences])
    together = torch.stack([e.pooled for e in encoder.embed(sequences)])
    order = list(range(len(sequences)))
    random.Random(seed).shuffle(order)
    paired = [None] * len(sequences)
    for k in range(0, len(order), 2):
        group = order[k : k + 2]
        for i, embedded in zip(group, encoder.embed([sequences[i] for i in group]), strict=True):
            paired[i] = embedded.pooled
    cos_a, abs_a = _compare(together, alone)
    cos_b, abs_b = _compare(torch.stack(paired), alone)
    cos, worst = min(cos_a, cos_b), max(abs_a, abs_b)
    passed = cos >= tolerance.invariance_cosine and worst <= tolerance.invariance_max_abs
    figure = f"min cos {cos:.7f}, max |Δ| {worst:.1e} (tol {tolerance.describe()})"
    lengths = sorted(map(len, sequences))
    detail = (
        f"{len(sequences)} proteins ({lengths[0]}-{lengths[-1]} residues): all in one batch and shuffled pairs "
        "vs one at a time"
    )
    return Check("batch invariance", passed, figure, detail, {"min_cosine": cos, "max_abs": worst})


@torch.inference_mode()
def reference_vector(tokenizer: Any, model: torch.nn.Module, family: Family, sequence: str) -> torch.Tensor:
    """Unpadded, alone, no attention mask, own slicing, float64 mean: independent of Encoder and
    utils.engine.pooling."""
    device = next(model.parameters()).device
    ids = tokenizer(family.model_text(sequence), return_tensors="pt")["input_ids"].to(device)
    hidden = model(input_ids=ids).last_hidden_state[0].double()
    return hidden[family.residue_offset : family.residue_offset + len(sequence)].mean(dim=0).cpu()


def check_reference(job: torch.Tensor, reference: torch.Tensor, precision: str, where: str) -> Check:
    threshold = TOLERANCES[precision].reference_cosine
    cos, worst = _compare(job, reference)
    passed = cos >= threshold
    figure = f"min cos {cos:.7f} (tol ≥ {threshold:g}), max |Δ| {worst:.1e}"
    detail = (
        f"{job.shape[0]} proteins: the job's batched {precision} vectors vs an fp32 reference on {where}, "
        "one protein at a time, unpadded"
    )
    return Check("fp32 reference", passed, figure, detail, {"min_cosine": cos, "max_abs": worst})


def check_cross_model(prost: torch.Tensor, prot: torch.Tensor, other_key: str) -> Check:
    name = f"differs from {other_key}"
    if prost.shape != prot.shape:
        return Check(name, True, f"dims {prost.shape[1]} vs {prot.shape[1]}", "different sizes: different encoders")
    cosine = torch.nn.functional.cosine_similarity(prost.double(), prot.double(), dim=1)
    mean = float(cosine.mean())
    passed = mean < CROSS_MODEL_MAX_COSINE
    figure = f"mean cos {mean:.4f} over {prost.shape[0]} proteins (must be < {CROSS_MODEL_MAX_COSINE})"
    detail = "ProstT5 and ProtT5 on the same proteins; near-identical vectors mean the same encoder twice"
    return Check(name, passed, figure, detail, {"mean_cosine": mean})


# -- memory -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Projection:
    peak_bytes: int  # the heaviest forward pass of the job
    items: int  # its batch
    tokens: int
    longest: int  # residues of the job's longest protein
    windowed: bool  # the longest goes through windows of max_residues
    window: int
    overlap: int


def project_peak(
    limits: Limits, arch: Architecture, precision: str, lengths: Sequence[int], family: Family, window_overlap: int
) -> Projection:
    """The job's batch plan over its lengths (utils.engine.limits, as the worker plans it), and the estimated peak of
    its heaviest forward pass."""
    peak, items, tokens = heaviest_pass(limits, arch, precision, lengths, family.special_tokens, window_overlap)
    longest = max(lengths)
    max_residues = limits.max_residues
    overlap = min(window_overlap, max_residues // 4)
    return Projection(peak, items, tokens, longest, longest > max_residues, max_residues, overlap)


def measured_peak_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "GPU peak allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS peak"  # Linux: kB


def check_memory(
    measured: int, measured_what: str, sample_estimate: int, job: Projection, capacity: int, device: torch.device
) -> Check:
    projected = job.peak_bytes
    notes = []
    if device.type == "cuda" and sample_estimate and measured > sample_estimate:
        # The estimator is meant to over-estimate; where the sample shows otherwise, scale the projection up.
        ratio = measured / sample_estimate
        projected = int(projected * ratio)
        notes.append(f"estimator was {ratio:.2f}× low on the sample; projection scaled")
    if job.windowed:
        plan = (
            f"longest protein {job.longest:,} residues > max_residues {job.window:,}: embedded in windows of "
            f"{job.window:,} (overlap {job.overlap}), projected for the window"
        )
    else:
        plan = f"longest protein {job.longest:,} residues in one pass"
    fraction = projected / capacity if capacity else math.inf
    figure = (
        f"sample {measured_what} {gb(measured)}; job peak projected {gb(projected)} "
        f"({job.items} × {job.tokens:,} tokens) of {gb(capacity)} ({fraction:.0%})"
    )
    detail = plan + "".join(f"; {n}" for n in notes)
    passed = projected <= capacity
    if not passed:
        detail += (
            f"; does not fit the {gb(capacity)} of {device}: lower run_params.max_tokens_per_batch / batch_size or "
            "set a lower run_params.max_residues (longer proteins then go through windows)"
        )
    elif fraction > 0.8:
        detail += "; close to the device's capacity"
    values = {
        "measured_bytes": measured,
        "measured": measured_what,
        "projected_peak_bytes": projected,
        "capacity_bytes": capacity,
        "heaviest_batch": {"items": job.items, "tokens": job.tokens},
        "longest_residues": job.longest,
        "windowed": job.windowed,
        "window_residues": job.window if job.windowed else None,
    }
    return Check("memory", passed, figure, detail, values, note=detail)


# -- time ---------------------------------------------------------------------------------------------------------
def check_throughput(residues: int, seconds: float, job_residues: int, devices: int, where: str) -> Check:
    rate = residues / seconds if seconds > 0 else math.inf
    projected = job_residues / rate / devices if rate else math.inf
    shards = f" over {devices} devices" if devices > 1 else ""
    figure = f"{rate:,.0f} residues/s on {where}; full job {job_residues:,} residues ≈ {duration(projected)}{shards}"
    detail = f"{residues:,} sample residues in {seconds:.2f} s (model load excluded)"
    values = {"residues_per_second": rate, "projected_seconds": projected, "job_residues": job_residues}
    return Check("throughput", math.isfinite(rate) and rate > 0, figure, detail, values)


# -- formatting ---------------------------------------------------------------------------------------------------
def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
