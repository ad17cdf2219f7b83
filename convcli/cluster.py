"""Batches on a Dask cluster (``--scheduler tcp://HOST:8786`` or ``local``). Never prints.

Workers receive paths, not pixels: each one reads, convolves and writes by itself, so inputs
and the output folder must be on storage every worker sees (a shared file system). Before
any task, every worker limits the engine's threads to its own Dask threads, compiles or loads
the JIT (so workers never race on the cache), and proves it can write into the output folder
(_WorkerSetup). Tasks carry several inputs (task_sizes). A worker that dies costs a retry of
its tasks (Dask reschedules them), and only an input that keeps killing workers is reported
failed (_Stream); since every file is written atomically, nothing partial is left. Results
come back as they complete, exactly as from the local pool, so reports, --fail-fast and
--resume behave the same; stopping (Ctrl-C) lets running inputs finish (_Stream.stop).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .bank import KernelBank
from .engine import EngineConfig
from .network import Network
from .errors import EXIT_ERROR, ConvcliError, OutputError, UsageError
from .inputs import Source
from .pipeline import Options, Result

if TYPE_CHECKING:
    from distributed import WorkerPlugin
else:
    try:
        from distributed import WorkerPlugin
    except ImportError:  # connect() says how to install Dask
        WorkerPlugin = object


def connect(address: str, method: str = "auto", verbose: bool = False):
    """A distributed Client for an address, or for a new LocalCluster when it is 'local'.

    ``method`` is the engine method the batch will take (see batch.choose_engine). On Linux a
    local cluster's workers are forked from this process rather than started afresh, so they
    begin with convcli, Dask, NumPy and numba already imported instead of spending about a
    second of CPU each on imports. A local cluster's scheduler and workers would log to our
    stderr; the report already says what went wrong with which input, so their log shows
    only with ``verbose`` (and then from warnings up)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("running on a cluster needs Dask: pip install 'convcli[dask]'",
                         settings=("scheduler",)) from None
    if address == "local":
        import logging

        import dask

        from . import engine

        if method == "jit":
            engine.import_compiler()
        # Dask makes glibc return freed memory to the system at once (MALLOC_TRIM_THRESHOLD_),
        # so every map would be allocated on fresh pages that the kernel must zero first (the
        # cost the edge workload of benchmarks/engine.py shows); convcli frees its maps as it
        # goes, so the workers of a local cluster keep glibc's default.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        settings = {
            "distributed.nanny.pre-spawn-environ": environ,
            # Nobody watches this cluster's dashboard: no statistical profiler sampling every
            # worker's stack every 10 ms, and system and event-loop monitors at a slower
            # pace (about 0.4 s of CPU less over 200 photos, measured).
            "distributed.worker.profile.enabled": False,
            "distributed.admin.system-monitor.interval": "2s",
            "distributed.admin.tick.interval": "500ms",
        }
        if sys.platform == "linux":
            settings["distributed.worker.multiprocessing-method"] = "fork"
        with dask.config.set(settings):
            cluster = LocalCluster(processes=True, threads_per_worker=1, dashboard_address=":0",
                                   silence_logs=logging.WARNING if verbose else logging.CRITICAL)
        return Client(cluster)
    import logging

    # Dask's client logs to stderr (a lost scheduler, say); convcli reports such failures
    # in its own words, so the log shows only with ``verbose``. This sets the level of the
    # "distributed" loggers of this process.
    logging.getLogger("distributed").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    try:
        return Client(address, timeout="10s")
    except OSError as e:
        # Not a usage error: the address may be right and the scheduler down (exit 1).
        raise ConvcliError(f"{address}: cannot reach the Dask scheduler ({_one_line(e)}); "
                           "is it running?", settings=("scheduler",)) from None


class _WorkerSetup(WorkerPlugin):
    """Run on every worker before its first task, including workers that join or are
    restarted later: what every worker needs (convcli.workers: memory thresholds, the JIT
    loaded so workers never race on the cache), and the output folder proven writable. A
    local cluster's workers also ignore Ctrl-C, which the terminal sends to the whole process
    group: the client decides how to stop (see _Stream.stop). Each task runs the engine on
    its worker's own number of Dask threads (see _task)."""

    def __init__(self, out: str, config: EngineConfig, local: bool):
        self.out, self.config, self.local = out, config, local

    def setup(self, worker) -> None:
        from . import workers

        if self.local and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        workers.set_up(self.config)
        Path(self.out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.out, prefix=".convcli-probe-"):
            pass


# A running task checks whether the batch is being stopped before each input, but at most
# this often: each check is a round trip to the scheduler (about 1 ms).
STOP_CHECK_SECONDS = 0.25


def _task(sources: list[Source], bank: KernelBank, options: Options, fail_fast: bool,
          stop_event: str) -> list[Result]:
    """One task: a few inputs in order. Ends early after a failure with fail_fast, or when
    the client has set the batch's stop event (then before its next input)."""
    from distributed import Event, get_worker

    from . import pipeline

    # The engine gets this worker's own threads (workers of one cluster may differ).
    options = replace(options, engine=replace(options.engine,
                                              threads=get_worker().state.nthreads))
    stop, checked = Event(stop_event), None
    results = []
    for source in sources:
        if checked is None or time.monotonic() - checked > STOP_CHECK_SECONDS:
            if stop.is_set():
                break
            checked = time.monotonic()
        if source.data is None and source.path is not None and not source.path.exists():
            result = Result(input=source.label, status="error", exit_code=EXIT_ERROR,
                            error=f"{source.label}: not found on the worker (inputs must be "
                                  "on storage every worker sees)")
        else:
            result = pipeline.process(source, bank, options)
        results.append(result)
        if fail_fast and result.status == "error":
            break
    return results


# Every Dask task costs a few milliseconds of scheduler, network and event-loop time on top
# of its work (Dask's own advice is tasks of at least ~100 ms), and a 512x512 photo takes
# about 40 ms on one core: so a task carries several inputs. Sizes are "guided" (as in
# OpenMP's schedule of that name): each task takes 1 / (TASK_SHARE x threads) of the inputs
# still unassigned, at most MAX_PER_TASK (what a killed worker costs), so tasks shrink to
# single inputs towards the end and no thread is left idle while another finishes a long
# one. Dask runs independent tasks in the order they were submitted.
TASK_SHARE = 4
MAX_PER_TASK = 16


def task_sizes(inputs: int, threads: int) -> list[int]:
    sizes, left = [], inputs
    while left > 0:
        size = max(1, min(MAX_PER_TASK, -(-left // (max(1, threads) * TASK_SHARE))))
        sizes.append(size)
        left -= size
    return sizes


def run(address: str, sources: list[Source], bank: KernelBank | Network, options: Options,
        fail_fast: bool, verbose: bool = False) -> "_Stream":
    """Connect to the scheduler at ``address`` (or start a LocalCluster for "local"), submit
    every input, and return the stream of Results as they complete (see batch.Stream). The
    stream owns the connection: its close() ends it, and the cluster if it started one."""
    if any(s.data is not None for s in sources):
        raise UsageError("an image on stdin cannot go to a cluster; give a path")
    if options.out == "-":
        raise UsageError("a cluster writes to an output folder, not to stdout")
    client = connect(address, options.engine.method, verbose)
    try:
        return _Stream(client, sources, bank, options, fail_fast, address == "local")
    except BaseException:
        _disconnect(client, address == "local")
        raise


class SchedulerLost(ConvcliError):
    """The client lost its scheduler in the middle of a batch."""


class _Drain(Exception):
    """Internal: results recovered from disk are ready to be yielded."""


# How long a batch waits for a scheduler that has no workers before it says so and stops.
NO_WORKERS_SECONDS = 10.0


def _wait_for_workers(client, address: str, seconds: float) -> None:
    try:
        client.wait_for_workers(1, timeout=seconds)
    except Exception:  # noqa: BLE001  TimeoutError, or the scheduler going away meanwhile
        if not client.scheduler_info().get("workers"):
            raise ConvcliError(f"{address}: the Dask scheduler has no workers (waited "
                               f"{seconds:.0f} s); start some with: dask worker {address}",
                               settings=("scheduler",)) from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _disconnect(client, local: bool) -> None:
    cluster = client.cluster if local else None
    client.close()
    if cluster is not None:
        cluster.close()


class _Stream:
    """Results in order of completion. ``stop()`` (Ctrl-C) lets tasks that are running
    finish their current input and report it, and drops the rest: keep iterating to
    collect what finishes. ``close()`` cancels whatever is left at once."""

    method = "auto"  # set by batch.apply

    def __init__(self, client, sources, bank, options, fail_fast, local):
        from distributed import as_completed

        self.client, self.fail_fast, self.local = client, fail_fast, local
        # Reports name outputs as the local pool does, from the -o given.
        self.given_out, self.out = options.out, os.path.abspath(options.out)
        sources = [s if s.path is None else replace(s, path=Path(os.path.abspath(s.path)))
                   for s in sources]
        self.options = replace(options, out=self.out)
        self.bank, self.stop_event = bank, f"convcli-stop-{uuid.uuid4().hex}"
        self.plugin: str | None = f"convcli-setup-{uuid.uuid4().hex}"
        self.sources, self.started_ns = sources, time.time_ns()
        self.scheduler_address = str(getattr(client.scheduler, "address", None) or "the scheduler")
        self.reported: set[str] = set()
        _wait_for_workers(client, self.address(), NO_WORKERS_SECONDS)
        try:
            client.register_plugin(_WorkerSetup(self.out, options.engine, local),
                                   name=self.plugin)
        except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            try:  # nothing of this run stays on the scheduler
                client.unregister_worker_plugin(self.plugin)
            except Exception:  # noqa: BLE001
                pass
            raise OutputError(f"{self.out}: a worker cannot write there ({e}); the output "
                              "folder must be on storage every worker sees") from None
        except Exception:  # noqa: BLE001  a worker that died during its set-up: Dask
            pass           # restarts it, and the plugin (registered) sets up the new one
        self.tasks: dict = {}  # future -> its inputs
        self.ready: list[Result] = []
        self.suspects: list[Source] = []  # inputs whose own task failed, to try alone
        self.tried_alone: set[str] = set()
        self.stopping = False
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        futures, start = [], 0
        for size in task_sizes(len(sources), threads):
            futures.append(self._submit(sources[start:start + size]))
            start += size
        self.done = as_completed(futures, with_results=True, raise_errors=False)

    def _submit(self, chunk: list[Source]):
        # The bank travels inside every task (a few kB; it is not scattered once, because
        # scattered data dies with the workers holding it, and its tasks with it).
        future = self.client.submit(_task, chunk, self.bank, self.options, self.fail_fast,
                                    self.stop_event, pure=False, retries=1)
        self.tasks[future] = chunk
        return future

    def __iter__(self):
        return self

    def address(self) -> str:
        return self.scheduler_address

    def _next_done(self):
        """The next finished task, waiting for it; when the scheduler is lost instead, the
        inputs whose files are complete on disk are reported and the run ends with one
        error (a lost scheduler would otherwise leave Dask waiting forever)."""
        while not self.done.has_ready():
            if self.client.status not in ("running", "connecting", "newly-created"):
                self._lost()
            if self.done.is_empty():
                raise StopIteration
            time.sleep(0.05)
        return next(self.done)

    def _lost(self) -> None:
        from . import pipeline

        for source in self.sources:
            if source.label in self.reported:
                continue
            outputs = pipeline.done_before(source, self.bank, self.options, self.started_ns)
            if outputs is not None:
                self.ready.append(Result(input=source.label, outputs=[
                    os.path.join(self.given_out, os.path.relpath(p, self.out))
                    for p in outputs]))
                self.reported.add(source.label)
        self.lost = True
        if not self.ready:
            raise SchedulerLost(f"{self.address()}: lost the Dask scheduler; the inputs whose "
                                "files were complete are reported, resuming does the rest",
                                settings=("scheduler", "resume"))
        raise _Drain()

    def __next__(self) -> Result:
        from distributed import KilledWorker

        if getattr(self, "lost", False):
            if self.ready:
                return self._take(self.ready.pop(0))
            raise SchedulerLost(f"{self.address()}: lost the Dask scheduler; the inputs whose "
                                "files were complete are reported, resuming does the rest",
                                settings=("scheduler", "resume"))
        while not self.ready:
            try:
                future, results = self._next_done()
            except _Drain:
                return self._take(self.ready.pop(0))
            except StopIteration:
                if self.client.status not in ("running", "connecting", "newly-created"):
                    try:
                        self._lost()
                    except _Drain:
                        return self._take(self.ready.pop(0))
                if self.stopping or not self.suspects:
                    raise
                # Dask blames every task on a worker that dies, not only the one that killed
                # it: so a suspect runs once more when nothing else does, before it is blamed.
                source = self.suspects.pop(0)
                self.tried_alone.add(source.label)
                self.done.add(self._submit([source]))
                continue
            # Let go of finished tasks, or a worker that dies later holding their (tiny)
            # results would make Dask compute them again.
            chunk = self.tasks.pop(future)
            future.release()
            if not isinstance(results, list):  # an error, as (type, value, traceback), or
                if self.stopping:              # cancelled by stop()
                    continue
                # It failed on every try, e.g. it killed its workers: find the input to blame.
                if len(chunk) > 1:
                    for source in chunk:
                        self.done.add(self._submit([source]))
                    continue
                if chunk[0].label not in self.tried_alone:
                    self.suspects.append(chunk[0])
                    continue
                why = results[1] if isinstance(results, tuple) else results
                if isinstance(why, KilledWorker):
                    why = "every worker that ran it died (see the workers' logs)"
                results = [Result(input=chunk[0].label, status="error", exit_code=EXIT_ERROR,
                                  error=f"{chunk[0].label}: failed on the cluster: {why}")]
            for result in results:
                result.outputs = [os.path.join(self.given_out, os.path.relpath(p, self.out))
                                  for p in result.outputs]
            self.ready.extend(results)
        return self._take(self.ready.pop(0))

    def _take(self, result: Result) -> Result:
        self.reported.add(result.input)
        if self.fail_fast and result.status == "error":
            self.stop()
        return result

    def stop(self) -> None:
        """Tasks not yet started are cancelled; running ones end after their current
        input. The event is set first, so a task that starts anyway does nothing."""
        from distributed import Event

        if self.stopping or getattr(self, "lost", False):
            return
        self.stopping = True
        Event(self.stop_event, client=self.client).set()
        running = {key for keys in self.client.processing().values() for key in keys}
        self.client.cancel([f for f in self.tasks if f.key not in running])

    def abort(self) -> None:
        """Asked twice to stop: as stop(); inputs that tasks have begun still finish (a
        Dask task cannot be interrupted), and close() cancels the rest."""
        self.stop()

    def close(self) -> None:
        if self.plugin is None:  # closed already
            return
        try:
            self.client.cancel(list(self.tasks))
            self.client.unregister_worker_plugin(self.plugin)
        except Exception:  # e.g. the scheduler is gone: nothing is left to tidy
            pass
        self.plugin = None
        _disconnect(self.client, self.local)
        from . import pipeline

        pipeline.sweep_staging(self.out)  # what workers of this machine that died had begun
