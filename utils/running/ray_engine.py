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
finds the chunks and sends only the missing sequences. A local Ray that this driver started goes with it, even after
a kill -9 (reap_local_ray).

Resources: Ray Data starts an actor pool before any task, so actors that hold every CPU leave none for a task and the
dataset hangs (ray issue #44687). The blocks are therefore cut here, in the driver (no read or repartition task at
all), and a pool that needs more CPUs or GPUs than the cluster has is refused before it starts. Whatever else keeps
blocks from coming back (a node lost, an autoscaler that never delivers) fails the model after
run_params.stall_timeout_s without a block, instead of waiting for ever.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils import exits
from utils.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

    from utils.inputs.keys import RunParams
    from utils.running.plan import Job, WorkOrder

UTILS_DIR = Path(__file__).resolve().parent.parent  # the whole `utils` package travels to the actors
_RAISED = re.compile(r"^[\w.]*(Error|Exception)\b.*: ")  # "utils.engine.encode.ModelError: …", "FileNotFoundError: …"
ACTOR_CPUS = 1  # logical CPUs per actor: a CPU actor's torch threads (Ray sets OMP_NUM_THREADS from it)


def connect() -> None:
    """Join the cluster RAY_ADDRESS names, or start a local Ray; a Ray already initialised here (tests, or a user's
    own driver) is used as it is. An address where no Ray answers is a UserError, one line."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS", "").strip()
        check_address(address)
        # ray.init puts its own SIGTERM handler in place of the job's (which stops cleanly, exit 130): keep ours.
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # ray.init reads RAY_ADDRESS itself. The `utils` package travels with the job (Ray uploads local modules
            # only at this level); actors log to Ray's session logs, not to this terminal.
            ray.init(runtime_env={"py_modules": [str(UTILS_DIR)]}, log_to_driver=False)
        except ConnectionError as exc:
            if not address:  # a local Ray that did not start: not the user's address, so Ray's own error
                raise
            raise UserError(f"RAY_ADDRESS={address}: {_no_cluster(address, str(exc))}") from None
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        if not address:
            reap_local_ray()
    context = _data_context()
    context.enable_progress_bars = False  # the driver prints its own progress line per block


def _no_cluster(address: str, reason: str) -> str:
    if address in ("auto", "localhost"):
        what = "no Ray is running on this machine"
    else:
        what = f"no Ray cluster answers there ({reason.strip().splitlines()[0] if reason.strip() else 'no reply'})"
    return f"{what}; start one (ray start --head) or unset RAY_ADDRESS to let the job start a local Ray"


def check_address(address: str, timeout_s: float = 5) -> None:
    """A host:port RAY_ADDRESS that refuses or ignores a connection: refused at once. ray.init itself would retry
    for minutes, printing a warning every few seconds."""
    if address in ("", "auto", "local", "localhost"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port (e.g. a Ray Client URL with a path): ray.init judges it
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or "timed out"
        raise UserError(f"RAY_ADDRESS={address}: {_no_cluster(address, reason)}") from None


# Run by a process of its own (reap_local_ray); argv: the pids of the processes ray.init started, the raylet's first.
# It notes them and the raylet's children (the agents; actors and idle workers die with the raylet anyway) with their
# start times, so that a pid taken by another process since is left alone; then it waits for the driver to end,
# however it ends, and kills those still there.
_REAPER = """
import os, signal, sys
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), fields[19]  # parent pid, start time
    except (OSError, IndexError, ValueError):
        return None, None
def family(pids):
    stats = {int(p): stat(p) for p in os.listdir("/proc") if p.isdigit()}
    found = {pid: stats[pid][1] for pid in pids if pid in stats and stats[pid][1] is not None}
    found.update({pid: start for pid, (parent, start) in stats.items() if parent == pids[0] and start})
    return found
node = [int(pid) for pid in sys.argv[1:]]
noted = family(node)
sys.stdin.buffer.read()  # end of file: the driver is gone
noted.update(family(node))
for pid, start in noted.items():
    if stat(pid)[1] == start and pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""
_reaper: subprocess.Popen | None = None  # held for the driver's lifetime: its pipe closes when the driver ends


def reap_local_ray() -> None:
    """Make the local Ray that ray.init just started go when this driver goes. Ray stops its GCS and raylet with the
    driver, but its agents (dashboard and runtime-env agent, ~170 MB) wait about a minute for a GCS that is gone;
    after a kill -9 nothing else stops them. A small process of its own session (so a Ctrl-C meant for the job
    does not reach it) holds a pipe from this driver, and kills them when the pipe closes. Linux only (/proc)."""
    global _reaper
    if not sys.platform.startswith("linux"):
        return
    try:
        from ray._private import worker  # the only handle on the processes ray.init started

        processes = worker._global_node.all_processes
        raylet = processes["raylet"][0].process.pid
        others = [info.process.pid for infos in processes.values() for info in infos]
        pids = [raylet, *(pid for pid in others if pid != raylet)]
    except (AttributeError, KeyError, IndexError):  # another Ray version's layout: Ray's own cleanup only
        return
    _reaper = subprocess.Popen(
        [sys.executable, "-c", _REAPER, *map(str, pids)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


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
        raise UserError("the Ray cluster has no GPU; give the model device: cpu, or join a cluster with GPUs")
    return gpus


def pool_problem(key: str, actors: int, cluster_cpus: float) -> str | None:
    """Why an actor pool cannot start on the cluster (each actor takes ACTOR_CPUS), or None. Ray Data would wait
    for ever for actors that do not fit."""
    needed = actors * ACTOR_CPUS
    if needed <= cluster_cpus:
        return None
    return (
        f"models.{key}: {actors} Ray actor(s) need {needed:g} CPU(s) but the Ray cluster has {cluster_cpus:g}; "
        f"list at most {int(cluster_cpus // ACTOR_CPUS)} cpu device(s), or join a cluster with more CPUs"
    )


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
                tokens_per_pass=self.limits.max_tokens_per_batch, attention=order.run.attention, limits=self.limits,
            )  # fmt: skip

        self.encoder = encoder_in(order.precision)
        # As the worker: proteins that overflow fp16/bf16 are redone in fp32, that copy loaded on first need.
        self.fp32 = Fp32Redo(lambda: encoder_in("fp32")) if order.precision != "fp32" else None

    def __call__(self, block: pa.Table) -> pa.Table:
        import pyarrow as pa
        import torch

        from utils.engine.embedder import embed_in_batches
        from utils.engine.limits import protein_name
        from utils.errors import ModelError

        sequences = block.column("sequence").to_pylist()
        unfit = self.limits.first_unfit([len(s) for s in sequences])
        if unfit is not None:  # as the local worker: the model fails rather than windows chosen by the memory
            raise ModelError(self.limits.does_not_fit(protein_name(sequences[unfit]), len(sequences[unfit])))
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


class _GiveUp(BaseException):
    """Raised by a signal handler into the driver's wait for the next block: stop waiting now. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` inside Ray Data keeps it."""


class RayRunner:
    """The local Runner's interface (run_all, stop, jobs' exit codes) over Ray: one Ray Data pass per model.

    Stopping (SIGINT / SIGTERM): the blocks already returned are kept; the block in flight is waited for up to
    run.stop_grace_s, or not at all after a second signal. No block for run.stall_timeout_s fails the model.
    """

    def __init__(self, jobs: list[Job], run: RunParams, actor_class: type = EmbedActor):
        self.jobs = jobs
        self.run = run
        self.actor_class = actor_class
        self.stopping = threading.Event()
        self.abandon = False  # a second signal, or the grace after the first one is over
        self.waiting = False  # the driver is blocked in Ray Data for the next block: a handler may break in
        self.deadline = 0.0  # of the current wait: run.stall_timeout_s after the last block, or the stop's grace
        self.stop_deadline = float("inf")

    def stop(self, signum: int, _frame: object) -> None:
        if self.stopping.is_set():
            print("\nstopping: second signal; not waiting for the blocks in flight", file=sys.stderr)
            self.abandon = True
        else:
            print("\nstopping: the blocks already returned are kept as chunks", file=sys.stderr)
            self.stop_deadline = time.monotonic() + self.run.stop_grace_s
            self.stopping.set()
        if self.waiting:  # else the loop sees the flag after the block it is writing, or at its next wait
            if self.abandon:
                raise _GiveUp
            self._arm(min(self.deadline, self.stop_deadline))

    def _alarm(self, _signum: int, _frame: object) -> None:
        if self.waiting:
            raise _GiveUp

    def _arm(self, deadline: float) -> None:
        """The timer that breaks into the wait for a block at `deadline` (time.monotonic)."""
        self.deadline = deadline
        signal.setitimer(signal.ITIMER_REAL, max(0.01, deadline - time.monotonic()))

    def run_all(self) -> None:
        connect()
        problems = [p for job in self.jobs for p in [self.check_pool(job)] if p]
        if problems:
            raise UserError(problems)
        previous = signal.signal(signal.SIGALRM, self._alarm)
        try:
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
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def check_pool(self, job: Job) -> str | None:
        import ray

        order = job.orders[0]
        actors = actor_count(order, job.model.config.devices)
        return pool_problem(job.model.config.key, actors, ray.cluster_resources().get("CPU", 0))

    def blocks(self, embedded: Any) -> Iterator[pa.Table | None]:
        """The blocks as they come back; None when the wait was given up (a stop, or run.stall_timeout_s without
        one). Ray Data's own wait is interruptible, so a signal or the timer breaks into it (_GiveUp)."""
        iterator = iter(embedded.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            while True:
                self._arm(min(time.monotonic() + self.run.stall_timeout_s, self.stop_deadline))
                try:
                    self.waiting = True
                    if self.abandon:
                        raise _GiveUp
                    block = next(iterator)
                except StopIteration:
                    return
                except _GiveUp:
                    yield None
                    return
                finally:
                    self.waiting = False
                    signal.setitimer(signal.ITIMER_REAL, 0)
                yield block
        finally:
            iterator.close()  # shuts the dataset's executor down: its actors go

    def run_model(self, job: Job) -> int:
        import numpy as np
        import pyarrow as pa
        import ray.data
        import torch

        from utils.engine.encode import Embedded
        from utils.inputs.unique import hex_to_digests
        from utils.running.store import ChunkStore, sequence_digest

        # One pool for the model: its first order's partition (a Ray model's devices are all GPUs, or all CPUs)
        store = ChunkStore(job.store_dir, job.orders[0].chunk_settings, job.model.dim)
        sequences = list(dict.fromkeys(s for order in job.orders for s in order.sequences))
        digests = [sequence_digest(s) for s in sequences]
        wanted = hex_to_digests(digests)
        todo = np.flatnonzero(~store.held(wanted)).tolist()  # digests only, no vector kept
        for message in store.damaged.lines(job.model.config.key):
            print(f"note: {message}", file=sys.stderr)
        todo.sort(key=lambda i: len(sequences[i]), reverse=True)
        label = job.model.config.key
        print(f"ray: {label}: {len(sequences) - len(todo)} sequences already in the store, computing {len(todo)}",
              file=sys.stderr)  # fmt: skip
        if not todo:
            return exits.OK
        order = replace(job.orders[0], sequences=())
        if order.device != "cpu":
            order = replace(order, device="cuda:0")  # the one GPU Ray makes visible to each actor
        actors = actor_count(order, job.model.config.devices)
        # One table per block, cut here: Ray sizes blocks by bytes (thousands of short sequences would make one block
        # for one actor), and a repartition task would need a CPU that the actors may hold (ray issue #44687).
        size = rows_per_block(order)
        tables = [
            pa.table({"digest": [digests[i] for i in part], "sequence": [sequences[i] for i in part]})
            for part in (todo[k : k + size] for k in range(0, len(todo), size))
        ]
        embedded = ray.data.from_arrow(tables).map_batches(
            self.actor_class,
            fn_constructor_kwargs={"order": order},
            batch_size=None,  # one call per block: a block becomes one chunk
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=ACTOR_CPUS,
            num_gpus=0 if order.device == "cpu" else 1,
        )
        del tables  # in Ray's object store now
        started, written = time.perf_counter(), 0
        for block in self.blocks(embedded):
            if block is None:
                if self.stopping.is_set():
                    return exits.INTERRUPTED
                print(
                    f"error: model {label} on Ray: no block came back for {self.run.stall_timeout_s} s "
                    f"(run_params.stall_timeout_s); the cluster has {_resources(ray.available_resources())} free of "
                    f"{_resources(ray.cluster_resources())}: `ray status` shows what waits for resources",
                    file=sys.stderr,
                )
                return exits.FAILED
            block_digests = block.column("digest").to_pylist()
            column = block.column("embedding").combine_chunks()
            width = column.type.list_size
            vectors = torch.from_numpy(column.values.to_numpy().reshape(len(block_digests), width).copy())
            notes = [json.loads(n) if n else None for n in block.column("note").to_pylist()]
            store.write(block_digests, [Embedded(v, None, n) for v, n in zip(vectors, notes, strict=True)], False)
            written += len(block_digests)
            rate = written / (time.perf_counter() - started)
            print(f"ray: {label}: {written}/{len(todo)} sequences ({rate:.1f}/s)", file=sys.stderr)
            if self.stopping.is_set():
                return exits.INTERRUPTED
        return exits.OK


def _resources(resources: dict) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def _summary(exc: BaseException) -> str:
    """A Ray task error's text is the remote traceback followed by Ray's own advice: keep the user-side exception."""
    lines = [line.strip() for line in str(exc).splitlines()]
    raised = [line for line in lines if _RAISED.match(line) and not line.startswith("ray.")]
    return raised[-1] if raised else (lines[-1] if lines else type(exc).__name__)
