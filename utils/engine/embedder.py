"""The one embedding loop, and the Python API built on it.

    plan batches (utils.engine.batching) → tokenize the next batch on the encoder's prefetch thread → Encoder.embed
    → one result per sequence, in the caller's order

The worker (utils/running/worker.py) wraps chunks and resume around `embed_batches`; the pre-flight check, the
benchmarks and `Embedder` call `embed_in_batches`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from utils.engine.encode import Embedded, Encoder
    from utils.engine.finite import Fp32Redo
    from utils.engine.limits import Limits


def embed_batches(
    encoder: Encoder,
    sequences: Sequence[str],
    batches: Sequence[Sequence[int]],
    precision: str | None = None,
    fp32: Fp32Redo | None = None,
) -> Iterator[tuple[Sequence[int], list[Embedded]]]:
    """(batch, one Embedded per index in it) for each batch in turn; the next batch is tokenized on a CPU thread
    while the device runs the current one. Stop iterating at any batch boundary (the worker does on a signal).

    With `precision` (the encoder's), every batch is checked for NaN/inf (utils.engine.finite): non-finite proteins are
    redone by `fp32`, or, without it (already fp32), raise NonFiniteError. Without it, the caller sees them as they
    are (the pre-flight check reports them)."""
    from utils.engine.finite import redo_non_finite

    if not batches:
        return
    ahead = encoder.tokenize_ahead([sequences[i] for i in batches[0]])
    for k, batch in enumerate(batches):
        batch_sequences = [sequences[i] for i in batch]
        tokens = ahead.result()  # a TokenLayoutError raised on the thread is raised here
        if any(encoder.over_limit(s) for s in batch_sequences):
            tokens = None  # windows tokenize each window themselves
        if k + 1 < len(batches):
            ahead = encoder.tokenize_ahead([sequences[i] for i in batches[k + 1]])
        embedded = encoder.embed(batch_sequences, tokens)
        if precision is not None:
            embedded, _ = redo_non_finite(embedded, batch_sequences, precision, fp32)
        yield batch, embedded


def embed_in_batches(
    encoder: Encoder,
    sequences: Sequence[str],
    limits: Limits,
    on_batch: Callable[[Sequence[int], list[Embedded]], None] | None = None,
    precision: str | None = None,
    fp32: Fp32Redo | None = None,
) -> list[Embedded]:
    """Every sequence through the encoder in planned batches → one Embedded per sequence, in the caller's order.
    `on_batch(indices, embedded)` is called after each batch (progress, timing); `precision` and `fp32` as for
    embed_batches."""
    batches = limits.plan_batches([len(s) for s in sequences], encoder.family.special_tokens)
    results: list[Embedded | None] = [None] * len(sequences)
    for batch, embedded in embed_batches(encoder, sequences, batches, precision, fp32):
        for i, item in zip(batch, embedded, strict=True):
            results[i] = item
        if on_batch is not None:
            on_batch(batch, embedded)
    return results  # type: ignore[return-value]  # every index is in exactly one batch


class Embedder:
    """Protein language-model embeddings from Python, through the same engine as generate_embeddings_t5.py.

        from utils import Embedder
        embedder = Embedder("Rostlab/prot_t5_xl_half_uniref50-enc", device="cuda:0")
        vectors = embedder.embed(["MKTAYIAKQR", "MSEQ"])   # numpy float32 [2, 1024], in the order given

    The arguments are the config's, with its defaults: `precision` as models.<key>.precision (auto: fp16 on GPU,
    fp32 on CPU), `layer` as models.<key>.layer (the hidden state pooled: 0 embedding output … -1 the last),
    `batch_size`, `max_tokens_per_batch`, `max_residues`, `window_overlap`, `attention` as run_params (None: chosen
    for the device, as the job does); `self.encoder.path` says which forward and attention kernel run. The family
    (ProtT5, ProstT5, ESM2, ESM-1b, ESM C) is read from the checkpoint. Same batch plan, out-of-memory split and
    windows as the job: for the same sequences in the same order, on the same device and precision, the vectors
    equal the job's (which stores them as float16).

    `store_dir`: a chunk store (the job's paths.store_dir, e.g. its output_dir/.chunks) that embed() reads first and
    adds to: vectors the job or another Embedder computed with these settings are not computed again, and those
    computed here are there for the next job or notebook (per-residue rows are not stored).
    """

    def __init__(
        self,
        name_or_path: str,
        device: str | int = "cpu",
        precision: str = "auto",
        batch_size: int = 32,
        max_tokens_per_batch: int | None = None,
        max_residues: int | None = None,
        window_overlap: int | None = None,
        layer: int = -1,
        attention: str = "auto",
        store_dir: str | Path | None = None,
    ):
        from utils.requirements import requirements_checked

        with requirements_checked():  # one that fails to import: an ImportError naming it, not a traceback into it
            from utils.checks.preflight import check_devices
            from utils.checks.resolve import resolve_model
            from utils.engine.encode import Encoder, load_encoder, resolve_precision
            from utils.engine.finite import Fp32Redo
            from utils.engine.limits import DTYPE_BYTES, device_limits
            from utils.errors import UserError
            from utils.inputs.config import setting_problems
            from utils.inputs.keys import ATTENTION_PATHS, PRECISIONS, Config, ModelConfig, RunParams, normalise_device

        where = normalise_device(device)
        problems = []
        if where is None:
            problems.append(f"device: must be 'cpu', 'cuda', 'cuda:N' or a GPU index, got {device!r}")
        if precision not in PRECISIONS:
            problems.append(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if attention not in ATTENTION_PATHS:
            problems.append(f"attention: must be one of {', '.join(ATTENTION_PATHS)}, got {attention!r}")
        # The config's own rules (utils.inputs.config.INT_SETTINGS), so the API refuses what a config file would.
        given = {"layer": layer, "batch_size": batch_size, "max_tokens_per_batch": max_tokens_per_batch}
        given["max_residues"] = max_residues
        if window_overlap is not None:  # the default is no choice of the caller's: never refused
            given["window_overlap"] = window_overlap
        settings, setting_lines = setting_problems(given)
        problems += setting_lines
        if problems:
            raise UserError(problems)
        layer, batch_size = settings["layer"], settings["batch_size"]
        window_overlap = settings.get("window_overlap", RunParams().window_overlap)  # the default: a quarter at most
        max_tokens_per_batch, max_residues = settings["max_tokens_per_batch"], settings["max_residues"]
        model_config = ModelConfig(
            _KEY,
            str(name_or_path),
            (where,),
            _KEY,
            precision,
            max_tokens_per_batch,  # type: ignore[arg-type]
            layer,
        )
        here = Path(".")
        problems = check_devices(Config(here, {}, here, here, RunParams(), (model_config,)))  # the job's own check
        if problems:
            raise UserError([p.removeprefix(f"models.{_KEY}.") for p in problems])
        try:
            self.model = resolve_model(model_config)
        except UserError as exc:
            raise UserError([p.removeprefix(f"models.{_KEY}.") for p in exc.problems]) from None
        self.device = where
        self.precision = resolve_precision(precision, where)
        self.limits = device_limits(
            self.model.arch,
            where,
            self.precision,
            batch_size=batch_size,
            max_tokens_per_batch=max_tokens_per_batch,
            max_residues=max_residues,
        )
        family, longest, layer_index = self.model.family, self.limits.max_residues, self.model.layer_index
        tokenizer, net = load_encoder(self.model.source, family, where, self.precision, layer_index=layer_index)
        budget, limits = self.limits.max_tokens_per_batch, self.limits
        self.encoder = Encoder(
            tokenizer, net, family, where, longest, window_overlap, tokens_per_pass=budget, attention=attention,
            limits=limits,
        )  # fmt: skip
        # As in the job: proteins that overflow fp16/bf16 (NaN/inf) are redone in fp32, loaded on first need.
        self.fp32 = None
        if self.precision != "fp32":
            self.fp32 = Fp32Redo(
                lambda: Encoder(
                    *load_encoder(self.model.source, family, where, "fp32", layer_index=layer_index), family, where,
                    longest, window_overlap, self.encoder.per_residue, tokens_per_pass=budget, attention=attention,
                    limits=replace(limits, dtype_bytes=DTYPE_BYTES["fp32"]),
                )
            )  # fmt: skip
        self.windowed: dict[int, dict] = {}  # of the last embed() call: index → how it was split into windows
        self.store = None
        if store_dir is not None:
            from utils.running.store import ChunkStore, vector_settings

            settings = vector_settings(self.model, self.precision, max_residues, window_overlap, per_residue=False)
            self.store = ChunkStore(Path(store_dir).expanduser(), settings, self.model.dim)
        self.reused = 0  # of the last embed() call: distinct sequences found in the store
        self.lock = threading.Lock()  # one embed() at a time: the encoder and its tokenizing thread are not shared
        self.closed = False

    @property
    def dim(self) -> int:
        return self.model.dim

    def embed(self, sequences: Iterable[str], per_residue: bool = False):
        """One vector per sequence → numpy float32 [N, D], in the order given; with `per_residue`, a list of
        [L, D] float32 arrays (the residue rows only, rounded through float16 as the job's HDF5 files store them).

        `sequences`: any iterable of str (a list, a generator, a numpy array of strings), read once. They are read
        as FASTA sequences are (upper-cased, one trailing '*' dropped, anything else that is not a residue refused
        with a UserError naming sequences[i]); each distinct sequence is embedded once. Proteins embedded in
        windows are listed in `self.windowed` (index → windows, window_residues, overlap, reason): only past
        max_residues or the model's own limit, never for memory; a protein whose pass does not fit the memory raises
        ModelError naming it, before any is embedded (utils.engine.limits). Calls from several threads run one after
        another."""
        import numpy as np

        from utils.errors import ModelError, UserError
        from utils.inputs.fasta import parse_fasta

        if isinstance(sequences, (str, bytes)):
            raise TypeError("embed() takes a list of sequences; for one protein, pass [sequence]")
        try:
            sequences = list(sequences)
        except TypeError:
            raise TypeError(f"embed() takes a list of sequences, got {type(sequences).__name__}") from None
        with self.lock:
            if self.closed:
                raise UserError("this Embedder is closed; create a new Embedder to embed more")
            if not sequences:
                return [] if per_residue else np.zeros((0, self.dim), dtype=np.float32)
            bad = [i for i, s in enumerate(sequences) if not isinstance(s, str) or ">" in s]
            if bad:
                what = "not a protein sequence (text of residue letters); fix or remove it"
                raise UserError(f"sequences[{bad[0]}]: {what}")
            # The FASTA reader's own rules, so the API accepts and refuses exactly what the job does; its problems
            # name the record (here: the index), not a line of a FASTA the caller never wrote.
            text = "".join(f">{i}\n{s}\n" for i, s in enumerate(sequences))
            try:
                cleaned = [record.sequence for record in parse_fasta(text, "sequences")]
            except UserError as exc:
                problems = [_RECORD_LINE.sub(r"sequences[\1] ", p).replace("the record", "it") for p in exc.problems]
                raise UserError(problems) from None
            unique = list(dict.fromkeys(cleaned))
            unfit = self.limits.first_unfit([len(s) for s in unique])
            if unfit is not None:  # decided before any work, as the job does (utils.engine.limits)
                index = cleaned.index(unique[unfit])
                raise ModelError(self.limits.does_not_fit(f"sequences[{index}]", len(unique[unfit])))
            self.encoder.per_residue = per_residue
            if self.fp32 is not None and self.fp32.encoder is not None:
                self.fp32.encoder.per_residue = per_residue
            if self.store is not None and not per_residue:
                results = self._through_store(unique)
            else:
                results = embed_in_batches(self.encoder, unique, self.limits, precision=self.precision, fp32=self.fp32)
            embedded = dict(zip(unique, results, strict=True))
            rows = [embedded[s] for s in cleaned]
            self.windowed = {i: row.note for i, row in enumerate(rows) if row.note}
            if per_residue:
                return [row.residues.float().numpy() for row in rows]
            return np.stack([row.pooled.float().numpy() for row in rows])

    def _through_store(self, unique: list[str]) -> list[Embedded]:
        """Each sequence's vector from the store where it holds one, else computed in the job's batches and added to
        the store a chunk (100 batches) at a time, as the job's workers do."""
        from utils.engine.batching import chunked
        from utils.engine.encode import Embedded
        from utils.files import StoreLock
        from utils.inputs.unique import digest_hex, digests_of

        store = self.store
        assert store is not None
        digests = digests_of(unique)
        keys = [digest_hex(d) for d in digests.tolist()]
        position = {key: i for i, key in enumerate(keys)}
        results: list[Embedded | None] = [None] * len(unique)
        with StoreLock(store.root, shared=True):
            for chunk in store.chunks_holding(digests):
                for row, key in enumerate(chunk["digests"]):
                    i = position.get(key)
                    if i is not None and results[i] is None:
                        results[i] = Embedded(chunk["pooled"][row], None, chunk["notes"].get(key))
            self.reused = sum(r is not None for r in results)
            todo = [i for i, r in enumerate(results) if r is None]
            batches = self.limits.plan_batches([len(unique[i]) for i in todo], self.encoder.family.special_tokens)
            for group in chunked([[todo[k] for k in batch] for batch in batches], 100):
                embedded_here = list(embed_batches(self.encoder, unique, group, self.precision, self.fp32))
                for batch, embedded in embedded_here:
                    for i, item in zip(batch, embedded, strict=True):
                        results[i] = item
                indices = [i for batch, _ in embedded_here for i in batch]
                store.write([keys[i] for i in indices], [results[i] for i in indices], per_residue=False)
        return results  # type: ignore[return-value]  # every index is found or computed

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.encoder.close()
            if self.fp32 is not None:
                self.fp32.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KEY = "embedder"
_RECORD_LINE = re.compile(r"^sequences:\d+: protein '?(\d+)'? ")  # the FASTA reader's file:line: protein 'id'
