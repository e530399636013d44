"""Pre-flight checks of one model on a sample of the job's proteins, through the job's own code path.

Each check returns a `Check` (passed, the measured figure, a detail line). The sample is embedded exactly as a
worker would embed it (utils.engine.limits, utils.engine.embedder.embed_in_batches,
utils.engine.encode.Encoder.embed); the checks then recompute what they test independently (own slicing of
last_hidden_state, own vocabulary goldens, an unpadded one-protein-at-a-time reference) so that a fault in the pipeline
shows instead of agreeing with itself. Here: what a check is, the tolerances, the sample, and the checks of the
checkpoint itself (load, token layout); the checks that run the encoder are in utils/checks/encoder_checks.py.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from utils.engine.families import Architecture, Family
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
