"""The cluster engine (run_params.engine: ray): the same work orders as the local engine, run by a Ray Data actor pool.

    unique sequences not yet in the chunk store (resume) ─► Ray Data blocks of rows (digest, sequence)
        ─► map_batches(EmbedActor): one actor per GPU, each the local engine's encoder, token-budget batches,
           OOM split and windows ─► (digest, fp32 vector, note) per row
        ─► the driver writes each returned block as one chunk of the content-addressed store ─► the local merge

The job joins the Ray cluster that RAY_ADDRESS names (Ray's own convention), else starts a local Ray. Actors get
the model's name and settings, never weights, and the `utils` package through the job's runtime environment, so
worker nodes need the same Python environment but not this checkout. (A caller that initialised Ray itself makes
`utils` importable on the workers, e.g. runtime_env={"py_modules": [utils_dir]} or PYTHONPATH.) Chunks are written
by the driver, so the output directory need not be visible from the worker nodes.

Faults: Ray Data restarts an actor that dies and retries its block (max_restarts/max_task_retries -1 are its
defaults for actor pools); a block's output reaches the driver once, and a chunk is named by the digests it holds, so
every protein is stored exactly once. A driver killed mid-run loses only the blocks not yet written; the next run
finds the chunks and sends only the missing sequences.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils import exits

if TYPE_CHECKING:
    import pyarrow as pa

    from utils.running.plan import Job, WorkOrder

UTILS_DIR = Path(__file__).resolve().parent.parent  # the whole `utils` package travels to the actors
_RAISED = re.compile(r"^[\w.]*(Error|Exception)\b.*: ")  # "utils.engine.encode.ModelError: …", "FileNotFoundError: …"


def connect() -> None:
    """Join the cluster RAY_ADDRESS names, or start a local Ray; a Ray already initialised here (tests, or a user's
    own driver) is used as it is."""
    import ray

    if not ray.is_initialized():
        # ray.init reads RAY_ADDRESS itself. The `utils` package travels with the job (Ray uploads local modules only
        # at this level); actors log to Ray's session logs, not to this terminal.
        ray.init(runtime_env={"py_modules": [str(UTILS_DIR)]}, log_to_driver=False)
    context = _data_context()
    context.enable_progress_bars = False  # the driver prints its own progress line per block


def _data_context() -> Any:
    import ray.data

    return ray.data.DataContext.get_current()


def actor_count(order: WorkOrder, devices: Sequence[str]) -> int:
    """One actor per GPU in the cluster for a GPU model; for a CPU model, one per device listed in the config."""
    import ray

    if order.device == "cpu":
        return len(devices)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus == 0:
        raise RuntimeError("the Ray cluster has no GPU; give the model device: cpu, or join a cluster with GPUs")
    return gpus


def rows_per_block(order: WorkOrder) -> int:
    """A block is one chunk: batch_size × save_every_n_batches proteins, as many as one local chunk at most."""
    return order.run.batch_size * order.run.save_every_n_batches


class EmbedActor:
    """One model on one device (Ray assigns the GPU), loaded once; each call embeds one block of rows exactly as
    the local worker embeds its sequences (utils.engine.embedder.embed_in_batches) and returns one row per protein."""

    def __init__(self, order: WorkOrder):
        from utils.engine.encode import Encoder, load_encoder
        from utils.engine.finite import Fp32Redo

        self.order = order
        self.limits = order.limits()
        family, layer = order.model.family, order.model.layer_index

        def encoder_in(precision: str) -> Encoder:  # as the local worker builds it: the configured layer
            tokenizer, model = load_encoder(order.model.source, family, order.device, precision, layer_index=layer)
            return Encoder(
                tokenizer, model, family, order.device, self.limits.max_residues, order.run.window_overlap,
                tokens_per_pass=self.limits.max_tokens_per_batch, attention=order.run.attention,
            )  # fmt: skip

        self.encoder = encoder_in(order.precision)
        # As the worker: proteins that overflow fp16/bf16 are redone in fp32, that copy loaded on first need.
        self.fp32 = Fp32Redo(lambda: encoder_in("fp32")) if order.precision != "fp32" else None

    def __call__(self, block: pa.Table) -> pa.Table:
        import pyarrow as pa
        import torch

        from utils.engine.embedder import embed_in_batches

        sequences = block.column("sequence").to_pylist()
        embedded = embed_in_batches(
            self.encoder, sequences, self.limits, precision=self.order.precision, fp32=self.fp32
        )
        pooled = torch.stack([e.pooled for e in embedded]).float().numpy()
        return pa.table(
            {
                "digest": block.column("digest"),
                # An explicit fixed-size list: a 2-D numpy column would become Ray's tensor extension type.
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(pooled.reshape(-1)), pooled.shape[1]),
                "note": pa.array([json.dumps(e.note) if e.note else None for e in embedded], pa.string()),
            }
        )


class RayRunner:
    """The local Runner's interface (run_all, stop, jobs' exit codes) over Ray: one Ray Data pass per model."""

    def __init__(self, jobs: list[Job], actor_class: type = EmbedActor):
        self.jobs = jobs
        self.actor_class = actor_class
        self.stopping = threading.Event()

    def stop(self, signum: int, _frame: object) -> None:
        if not self.stopping.is_set():
            print("\nstopping: the blocks already returned are kept as chunks", file=sys.stderr)
        self.stopping.set()

    def run_all(self) -> None:
        connect()
        for job in self.jobs:
            if self.stopping.is_set():
                code = exits.INTERRUPTED
            else:
                try:
                    code = self.run_model(job)
                except Exception as exc:  # a model that fails on the cluster must not stop the other models
                    print(f"error: model {job.model.config.key} on Ray: {_summary(exc)}", file=sys.stderr)
                    code = exits.FAILED
            job.exit_codes = [code] * len(job.orders)  # Job.finished counts one code per order

    def run_model(self, job: Job) -> int:
        import pyarrow as pa
        import ray.data
        import torch

        from utils.engine.encode import Embedded
        from utils.running.store import ChunkStore, sequence_digest

        store = ChunkStore(job.chunk_dir, job.chunk_settings, job.model.dim)
        done, set_aside = store.load(set_aside=all(order.owns_store for order in job.orders))  # never in a shard
        for message in set_aside.lines(job.model.config.key):
            print(f"note: {message}", file=sys.stderr)
        sequences = dict.fromkeys(s for order in job.orders for s in order.sequences)
        pending = sorted((s for s in sequences if sequence_digest(s) not in done), key=len, reverse=True)
        label = job.model.config.key
        print(f"ray: {label}: {len(sequences) - len(pending)} sequences already in chunks, computing {len(pending)}",
              file=sys.stderr)  # fmt: skip
        if not pending:
            return exits.OK
        order = replace(job.orders[0], sequences=())
        if order.device != "cpu":
            order = replace(order, device="cuda:0")  # the one GPU Ray makes visible to each actor
        actors = actor_count(order, job.model.config.devices)
        table = pa.table({"digest": [sequence_digest(s) for s in pending], "sequence": pending})
        # Ray sizes blocks by bytes (thousands of short sequences would make one block for one actor): cut by rows.
        dataset = ray.data.from_arrow(table).repartition(target_num_rows_per_block=rows_per_block(order))
        embedded = dataset.map_batches(
            self.actor_class,
            fn_constructor_kwargs={"order": order},
            batch_size=None,  # one call per block: a block becomes one chunk
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,  # leaves the rest of a node's CPUs to reading and repartitioning (ray issue #44687)
            num_gpus=0 if order.device == "cpu" else 1,
        )
        started, written = time.perf_counter(), 0
        for block in embedded.iter_batches(batch_size=None, batch_format="pyarrow"):
            digests = block.column("digest").to_pylist()
            column = block.column("embedding").combine_chunks()
            vectors = torch.from_numpy(column.values.to_numpy().reshape(len(digests), column.type.list_size).copy())
            notes = [json.loads(n) if n else None for n in block.column("note").to_pylist()]
            store.write(digests, [Embedded(v, None, n) for v, n in zip(vectors, notes, strict=True)], False)
            written += len(digests)
            rate = written / (time.perf_counter() - started)
            print(f"ray: {label}: {written}/{len(pending)} sequences ({rate:.1f}/s)", file=sys.stderr)
            if self.stopping.is_set():
                return exits.INTERRUPTED
        return exits.OK


def _summary(exc: BaseException) -> str:
    """A Ray task error's text is the remote traceback followed by Ray's own advice: keep the user-side exception."""
    lines = [line.strip() for line in str(exc).splitlines()]
    raised = [line for line in lines if _RAISED.match(line) and not line.startswith("ray.")]
    return raised[-1] if raised else (lines[-1] if lines else type(exc).__name__)
