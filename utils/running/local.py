"""Run: work orders → one worker process per order, in a lane per device → chunks; then the merge.

    with OutputLock(config.output_dir):
        code = run_job(config, splits, models)      # plan, run the workers, merge, report → an exit code

Orders on one device run one after another (a lane); lanes run at once. Workers are forked from a server process
started first thing (start_worker_server). SIGINT / SIGTERM ask every worker to finish its batch; a second signal,
or `stop_grace_s` later, kills them (finished chunks are kept). With `run_params.engine: ray` the orders go to Ray
actors instead (utils/running/ray_engine.py). The finished models' chunks become files in utils/running/merge.py.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from utils import exits
from utils.checks.resolve import ResolvedModel
from utils.inputs.fasta import Records
from utils.inputs.keys import Config
from utils.inputs.strings import Strings
from utils.inputs.unique import shared_splits, shared_unique
from utils.malloc import give_back_free_memory
from utils.outputs.progress import ProgressHold
from utils.running.merge import finish_jobs
from utils.running.plan import Job, WorkOrder, new_run_id, plan_jobs
from utils.running.shards import Shard


# -- the whole run -----------------------------------------------------------------------------------------------------
def run_job(
    config: Config,
    splits: dict[str, Records],
    models: list[ResolvedModel],
    shard: Shard | None = None,
    actor_class: type | None = None,
) -> int:
    """Plan, run every worker (run_params.engine: local processes, or a Ray actor pool), merge each finished model,
    report. Returns an exit code (utils.exits). The caller holds the output directory's lock (shared for a shard).

    `shard`: embed only that shard's sequences into the chunk store and write no final file (`merge_job` does, once
    every shard has finished). `actor_class`: the Ray engine's actor (tests give one that fails on purpose)."""
    from utils.files import StoreLock
    from utils.running.store import tidy

    splits = shared_splits(splits)
    jobs = plan_jobs(config, splits, models, shard, run_id=new_run_id())
    # This run's progress files held until its report is written; those of runs killed with -9 go
    progress = ProgressHold(config.log_dir, [o.progress_path for job in jobs for o in job.orders if o.progress_path])
    if config.run.engine == "ray":
        from utils.running.ray_engine import EmbedActor, RayRunner

        runner: Runner | RayRunner = RayRunner(jobs, config.run, actor_class or EmbedActor)
    else:
        runner = Runner(jobs, config.run.stop_grace_s, on_all_started=lambda: release_residues(splits, jobs))
    # Handled until the last final file is in place: a signal during the merge stops it between two files.
    previous = {s: signal.signal(s, runner.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    started_at = time.time()  # the run report keeps the workers' progress records from this moment on
    try:
        # Shared: any number of runs use one store at once; only --prune-store excludes them
        with StoreLock(config.store, shared=True):
            runner.run_all()
            release_residues(splits, jobs)  # the workers had them; from here on only lengths and digests are needed
            for note in tidy(config.store):  # after the work: a run refused on the way (Ray) changes nothing
                print(f"note: {note}", file=sys.stderr)
            if shard is not None:
                return report_shard(config, jobs, shard, started)
            return finish_jobs(config, splits, jobs, started, started_at, runner.stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        progress.release()


def release_residues(splits: dict[str, Records], jobs: list[Job]) -> None:
    """Let the job's residues go (lengths and digests stay): once every worker has its copy, the main process
    needs them no more, and at a proteome's size they are a good part of its memory."""
    unique = shared_unique(splits)
    if unique is not None:
        unique.sequences.release()
    for job in jobs:
        for order in job.orders:
            if isinstance(order.sequences, Strings):  # a shard's own copy when a model runs on several devices
                order.sequences.release()
    give_back_free_memory()


def report_shard(config: Config, jobs: list[Job], shard: Shard, started: float) -> int:
    failed = [job for job in jobs if job.failed]
    for job in failed:
        print(f"error: model {job.model.config.key} failed in shard {shard}; see {config.log_dir}", file=sys.stderr)
    if failed:
        return exits.FAILED
    if not all(job.finished for job in jobs):
        print(f"interrupted: shard {shard}'s finished chunks are kept; rerun the same command", file=sys.stderr)
        return exits.INTERRUPTED
    embedded = sum(len(order.sequences) for order in jobs[0].orders) if jobs else 0
    print(
        f"shard {shard}: {embedded} unique sequences in the chunk store in {time.perf_counter() - started:.1f} s; "
        "when every shard has finished, run the same command with --merge instead of --shard",
        file=sys.stderr,
    )
    return exits.OK


# -- worker processes: a lane per device, signals, escalation ----------------------------------------------------------
# Workers are forked from a server process that has imported these once. A spawned worker would import torch and
# transformers afresh (seconds of CPU per model); the server is started first thing (start_worker_server), so its
# imports run while this process still reads the config and the FASTA files. It never touches a GPU, so forking
# from it is safe for CUDA. Each worker watches this process and dies with it (utils.running.worker._die_with_main).
WORKER_PRELOAD = [
    "torch",
    "transformers",
    "transformers.modeling_utils",  # from_pretrained's machinery: seconds on first use, even for a tiny model
    "utils.running.worker",
    "utils.running.worker_server",  # a worker orphaned while it reads its order exits without a traceback
]


def worker_context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def start_worker_server() -> None:
    """Start the process workers are forked from now, so that its imports overlap this process's checks."""
    from multiprocessing import forkserver

    # The server runs `python -c`: its sys.path is the working directory's, and Python 3.11's forkserver does not
    # pass this process's on; without this, run from another directory, the preload would fail silently.
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    worker_context()
    # The server starts with SIGINT ignored (a disposition a child inherits): a Ctrl-C in the terminal reaches the
    # whole process group, and during the server's imports (seconds) it would kill the server with a traceback and
    # fail every model after it. This process handles Ctrl-C and stops the workers itself.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_process(order: WorkOrder, main_pid: int) -> None:
    from utils.running.worker import run_work_order

    sys.exit(run_work_order(order, main_pid))


def note_in_log(order: WorkOrder, message: str) -> None:
    """A line the main process adds to a worker's log: how the worker ended, which the worker cannot write itself
    when a signal killed it."""
    try:
        order.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(order.log_path, "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} run {order.run_id or '-'} main: {message}\n")
    except OSError:
        pass  # the log is a convenience; never fail the run for it


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Runner:
    """Runs work orders as processes: one lane per device, orders on the same device one after another.

    Stopping (SIGINT / SIGTERM): each worker is asked to finish its current batch and write its chunk. A worker that
    has not stopped after `grace_s` seconds, or any worker when a second signal comes, is killed (its current chunk is
    lost; finished chunks are kept). The handlers stay installed until the last final file is in place: a signal
    during the merge stops it between two files (run_job checks `stopping`).
    """

    def __init__(self, jobs: list[Job], grace_s: float = 30, on_all_started: Callable[[], None] | None = None):
        self.jobs = jobs
        self.grace_s = grace_s
        # Called once every order has its worker (each has a copy of its sequences): the job lets its own go then
        self.on_all_started = on_all_started
        self.unstarted = sum(len(job.orders) for job in jobs)
        self.context = worker_context()
        self.stopping = threading.Event()
        self.stop_requested_at: float | None = None
        self.killed = False
        self.running: set = set()
        self.lock = threading.Lock()

    def lanes(self) -> dict[str, list[tuple[Job, WorkOrder]]]:
        lanes: dict[str, list[tuple[Job, WorkOrder]]] = {}
        for job in self.jobs:
            for order in job.orders:
                lanes.setdefault(order.device, []).append((job, order))
        return lanes

    def _run_lane(self, position: int, items: list[tuple[Job, WorkOrder]]) -> None:
        for job, order in items:
            if self.stopping.is_set():
                job.exit_codes.append(exits.INTERRUPTED)
                continue
            worker_order = replace(order, bar_position=position)
            process = self.context.Process(target=_worker_process, args=(worker_order, os.getpid()))
            try:
                with self.lock:
                    process.start()
                    self.running.add(process)
                    self.unstarted -= 1
                    all_started = self.unstarted == 0
                if all_started and self.on_all_started is not None:
                    self.on_all_started()
            except (OSError, EOFError) as exc:  # EMFILE (RLIMIT_NOFILE), a worker server gone: this order fails
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                emfile = getattr(exc, "errno", None) == errno.EMFILE
                hint = "; raise the open-file limit (ulimit -n) and rerun" if emfile else ""
                job.problems.append(f"{order.label}: could not start a worker process ({reason}){hint}")
                note_in_log(order, f"could not start the worker process: {reason}")
                job.exit_codes.append(exits.FAILED)
                continue
            process.join()
            with self.lock:
                self.running.discard(process)
            if process.exitcode != exits.OK:
                note_in_log(order, f"worker {describe_exit(process.exitcode)}")
            job.exit_codes.append(process.exitcode)

    def stop(self, signum: int, _frame: object) -> None:
        if self.stopping.is_set():  # a second Ctrl-C: do not wait for anyone
            print("\nstopping: second signal; killed the workers (finished chunks are kept)", file=sys.stderr)
            self.kill_workers()
            return
        print("\nstopping: each worker finishes its current batch and keeps its finished chunks", file=sys.stderr)
        self.stop_requested_at = time.monotonic()
        self.stopping.set()
        with self.lock:
            for process in self.running:
                if process.pid is not None:
                    try:
                        process.terminate()
                    except (OSError, AttributeError):
                        pass

    def kill_workers(self) -> None:
        with self.lock:
            for process in self.running:
                if process.pid is not None:
                    try:
                        process.kill()
                        self.killed = True
                    except (OSError, AttributeError):
                        pass

    def _escalate_if_overdue(self) -> None:
        started = self.stop_requested_at
        if started is None or self.killed or time.monotonic() - started < self.grace_s:
            return
        with self.lock:
            waiting = bool(self.running)
        if waiting:
            print(
                f"\nstopping: workers did not stop within {self.grace_s:g} s; killed them (finished chunks are kept)",
                file=sys.stderr,
            )
            self.kill_workers()

    def run_all(self) -> None:
        """Every lane on a thread of its own; returns when every lane has ended (or was stopped)."""
        threads = [
            threading.Thread(target=self._run_lane, args=(position, items), daemon=True)
            for position, items in enumerate(self.lanes().values())
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # short waits keep the main thread responsive to signals
                self._escalate_if_overdue()
        if self.stopping.is_set():
            # A worker the stop request reached while it was still starting (before it installed its own handler)
            # dies of the signal, and one that did not stop in time was killed: an interruption, not a failure.
            stopped = (-signal.SIGTERM, -signal.SIGINT) + ((-signal.SIGKILL,) if self.killed else ())
            for job in self.jobs:
                job.exit_codes = [exits.INTERRUPTED if code in stopped else code for code in job.exit_codes]
