"""Batches on a Dask cluster (``--scheduler tcp://HOST:8786`` or ``local``). Never prints.

Workers receive paths or URLs, not pixels: each one reads, convolves and writes by itself,
so inputs and the output folder must be on storage every worker sees (a shared file system,
or fsspec URLs such as s3://, see convcli.storage). Or, with ``ship``, the client sends each
input's bytes with its task and writes the files that come back (for workers that see
none of the client's storage). Before any task, every worker limits the engine's threads to
its own Dask threads, compiles or loads the JIT (so workers never race on the cache), and
proves it can write into the output folder (_WorkerSetup). Tasks carry several inputs
(task_sizes). A worker that dies costs a retry of its tasks (Dask reschedules them), and
only an input that keeps killing workers is reported failed (_Stream); since every file is
written atomically, nothing partial is left. Results
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
from typing import TYPE_CHECKING, Any

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
    # "distributed" loggers of this process (Dask's configuration gives some of them, such
    # as distributed.client, a level of their own).
    level = logging.WARNING if verbose else logging.CRITICAL
    for name in ["distributed", *(n for n in list(logging.root.manager.loggerDict)
                                  if n.startswith("distributed."))]:
        logging.getLogger(name).setLevel(level)
    try:
        return Client(address, timeout="10s")
    except OSError as e:
        # Not a usage error: the address may be right and the scheduler down (exit 1).
        raise ConvcliError(f"{address}: cannot reach the Dask scheduler ({_one_line(e)}); "
                           "is it running?", settings=("scheduler",)) from None


def _stale_plugins(dask_scheduler) -> list[str]:
    """Run on the scheduler: set-up plugins of convcli runs whose client is gone (its
    connection was cut before it could unregister them). Self-contained, so that it is
    sent by value to a scheduler that has no convcli installed."""
    prefix = "convcli-setup-"
    return [name for name in dask_scheduler.worker_plugins if name.startswith(prefix)
            and name[len(prefix):].rsplit("-", 1)[0] not in dask_scheduler.clients]


def _forget_stale_plugins(client) -> None:
    """Unregister what earlier runs cut off from this scheduler left (see _stale_plugins)."""
    import types

    try:  # a copy of the function, so that cloudpickle sends its code rather than its name
        here = types.FunctionType(_stale_plugins.__code__, {}, "_stale_plugins")
        for name in client.run_on_scheduler(here):
            client.unregister_worker_plugin(name)
    except Exception:  # noqa: BLE001  an older scheduler, or one going away: nothing to do
        pass


class _WorkerSetup(WorkerPlugin):
    """Run on every worker before its first task, including workers that join or are
    restarted later: what every worker needs (convcli.workers: memory thresholds, the JIT
    loaded so workers never race on the cache), and the output folder proven writable. A
    local cluster's workers also ignore Ctrl-C, which the terminal sends to the whole process
    group: the client decides how to stop (see _Stream.stop). Each task runs the engine on
    its worker's own number of Dask threads (see _task). The folder is not created here:
    the client made it, and a worker that does not see it cannot write there (nor re-create
    a folder the user has deleted since). ``out`` is None when the outputs come back to the
    client (ship)."""

    def __init__(self, out: str | None, config: EngineConfig, local: bool):
        self.out, self.config, self.local = out, config, local

    def setup(self, worker) -> None:
        from . import storage, workers

        if self.local and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        workers.set_up(self.config)
        if self.out is None:
            return
        if storage.is_remote(self.out):
            storage.check_folder(self.out)
            return
        with tempfile.NamedTemporaryFile(dir=self.out, prefix=".convcli-probe-"):
            pass


# A running task checks whether the batch is being stopped before each input, but at most
# this often: each check is a round trip to the scheduler (about 1 ms).
STOP_CHECK_SECONDS = 0.25


def _task(sources: list[Source], bank: KernelBank, options: Options, fail_fast: bool,
          stop_event: str, ship: bool = False) -> list:
    """One task: a few inputs in order. Ends early after a failure with fail_fast, or when
    the batch is being stopped (then before its next input): the client has set the batch's
    stop event, or the scheduler no longer wants this task (the client is gone), or the
    scheduler cannot be asked. Returns Results; with ``ship``, (Result, files) pairs, the
    files as (name, bytes) for the client to write (see storage.make_files)."""
    from distributed import Event, get_worker

    from . import storage

    worker = get_worker()
    key = worker.get_current_task()
    # The engine gets this worker's own threads (workers of one cluster may differ).
    options = replace(options, engine=replace(options.engine, threads=worker.state.nthreads))
    stop, checked = Event(stop_event), None
    results: list = []
    for source in sources:
        if checked is None or time.monotonic() - checked > STOP_CHECK_SECONDS:
            if _stopping(worker, key, stop):
                break
            checked = time.monotonic()
        if ship:
            results.append(storage.make_files(source, bank, options))
            result = results[-1][0]
        else:
            if source.data is None and source.path is not None and not source.path.exists():
                result = Result(input=source.label, status="error", exit_code=EXIT_ERROR,
                                error=f"{source.label}: not found on the worker (inputs must "
                                      "be on storage every worker sees, or shipped)")
            else:
                result = storage.process(source, bank, options)
            results.append(result)
        if fail_fast and result.status == "error":
            break
    return results


def _stopping(worker, key, stop) -> bool:
    task = worker.state.tasks.get(key)
    if task is None or task.state not in ("executing", "long-running"):
        return True  # released by the scheduler: nobody waits for its results
    try:
        return bool(stop.is_set())
    except Exception:  # noqa: BLE001  the scheduler is unreachable: the client has lost it too
        return True


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
        fail_fast: bool, verbose: bool = False, ship: bool = False) -> "_Stream":
    """Connect to the scheduler at ``address`` (or start a LocalCluster for "local"), submit
    every input, and return the stream of Results as they complete (see batch.Stream). The
    stream owns the connection: its close() ends it, and the cluster if it started one.
    ``ship``: send each input's bytes with its task and write the outputs here."""
    from . import storage

    if any(s.data is not None for s in sources) and not ship:
        raise UsageError("an image on stdin cannot go to a cluster's workers unless its bytes "
                         "are sent with the task; give a path, or ship the inputs",
                         settings=("ship",))
    if options.out == "-":
        raise UsageError("a cluster writes to an output folder, not to stdout")
    if ship and storage.is_remote(options.out):
        raise UsageError(f"{options.out}: shipped outputs are written by this machine into "
                         "a local folder; workers write to a URL themselves, without "
                         "shipping", settings=("ship",))
    client = connect(address, options.engine.method, verbose)
    # Named after the client, so that a later run can tell it stale (_stale_plugins).
    plugin = f"convcli-setup-{client.id}-{uuid.uuid4().hex[:8]}"
    try:
        return _Stream(client, sources, bank, options, fail_fast, address == "local", ship,
                       plugin)
    except BaseException:  # e.g. Ctrl-C while waiting for workers: nothing of ours stays
        try:
            client.unregister_worker_plugin(plugin)
        except Exception:  # noqa: BLE001  not registered yet, or the scheduler is gone
            pass
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

    def __init__(self, client, sources, bank, options, fail_fast, local, ship=False,
                 plugin=""):
        from . import storage

        self.client, self.fail_fast, self.local, self.ship = client, fail_fast, local, ship
        # Reports name outputs as the local pool does, from the -o given.
        self.remote = storage.is_remote(options.out)
        self.given_out = options.out
        self.out = options.out if self.remote else os.path.abspath(options.out)
        sources = [s if s.path is None else replace(s, path=Path(os.path.abspath(s.path)))
                   for s in sources]
        self.options = replace(options, out=self.out)
        self.bank, self.stop_event = bank, f"convcli-stop-{uuid.uuid4().hex}"
        self.plugin: str | None = plugin or f"convcli-setup-{client.id}-{uuid.uuid4().hex}"
        self.sources, self.started_ns = sources, time.time_ns()
        self.by_label = {s.label: s for s in sources}
        self.scheduler_address = str(getattr(client.scheduler, "address", None) or "the scheduler")
        self.reported: set[str] = set()
        _forget_stale_plugins(client)
        _wait_for_workers(client, self.address(), NO_WORKERS_SECONDS)
        try:
            client.register_plugin(_WorkerSetup(None if ship else self.out, options.engine,
                                                local), name=self.plugin)
        except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                OutputError) as e:
            try:  # nothing of this run stays on the scheduler
                client.unregister_worker_plugin(self.plugin)
            except Exception:  # noqa: BLE001
                pass
            why = str(e) if isinstance(e, OutputError) else \
                f"{self.out}: a worker cannot write there ({e})"
            raise OutputError(f"{why}; the output folder must be on storage every worker "
                              "sees, or the data shipped", settings=("ship",)) from None
        except Exception:  # noqa: BLE001  a worker that died during its set-up: Dask
            pass           # restarts it, and the plugin (registered) sets up the new one
        self.tasks: dict = {}  # future -> its inputs
        self.ready: list[Result] = []
        self.suspects: list[Source] = []  # inputs whose own task failed, to try alone
        self.tried_alone: set[str] = set()
        self.stopping = False
        if ship and options.resume:  # the outputs are here: so is what --resume skips
            from . import pipeline

            todo = []
            for source in sources:
                done = pipeline.done_before(source, bank, self.options)
                if done is None:
                    todo.append(source)
                else:
                    self.ready.append(Result(input=source.label, status="skipped",
                                             outputs=[self._given(p) for p in done]))
            sources = todo
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        self.pending: list[list[Source]] = []  # chunks not submitted yet (ship)
        start = 0
        for size in task_sizes(len(sources), threads):
            self.pending.append(sources[start:start + size])
            start += size
        self.pending.reverse()
        # Shipped inputs travel in their tasks: only a few tasks' worth of bytes is read
        # and held at a time. Paths cost nothing, so every task is submitted at once.
        self.window = 2 * max(1, threads) if ship else len(self.pending)
        self.done: Any = None  # as_completed, from the first next(): see _start

    def _start(self) -> None:
        """Submit the first tasks. Not done before the caller iterates, so that nothing
        runs on the cluster until someone is there to report it and to stop it."""
        from distributed import as_completed

        futures = [self._submit(self.pending.pop())
                   for _ in range(min(self.window, len(self.pending)))]
        self.done = as_completed(futures, with_results=True, raise_errors=False)

    def _submit(self, chunk: list[Source]):
        # The bank travels inside every task (a few kB; it is not scattered once, because
        # scattered data dies with the workers holding it, and its tasks with it).
        sent = [_with_bytes(s) for s in chunk] if self.ship else chunk
        future = self.client.submit(_task, sent, self.bank, self.options, self.fail_fast,
                                    self.stop_event, self.ship, pure=False, retries=1)
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
        if self.done is None:
            self._start()
        while not self.done.has_ready():
            if self.client.status not in ("running", "connecting", "newly-created"):
                self._lost()
            if self.done.is_empty():
                raise StopIteration
            time.sleep(0.05)
        return next(self.done)

    def _commit(self, pairs: list) -> list[Result]:
        """Shipped outputs: write each input's files into the output folder here, all of
        them moved into place together (pipeline's staging), as a local run does."""
        from . import pipeline

        results = []
        root = Path(self.out)
        for result, files in pairs:
            if result.status == "ok":
                source = self.by_label[result.input]
                staging = pipeline._Staging(root, pipeline.output_folder(source, self.options))
                try:
                    for name, data in files:
                        staging.write(name, data)
                    staging.commit(root, result)
                except OutputError as e:
                    result.status, result.error, result.exit_code = "error", str(e), EXIT_ERROR
                    result.outputs = []
                finally:
                    staging.discard()
            results.append(result)
        return results

    def _lost(self) -> None:
        from . import pipeline

        for source in self.sources:
            if source.label in self.reported:
                continue
            outputs = pipeline.done_before(source, self.bank, self.options, self.started_ns)
            if outputs is not None:
                self.ready.append(Result(input=source.label,
                                         outputs=[self._given(p) for p in outputs]))
                self.reported.add(source.label)
        self.lost = True
        if not self.ready:
            if self.stopping:  # asked to stop anyway: that is how the run ends
                raise StopIteration
            raise self._lost_error()
        raise _Drain()

    def _lost_error(self) -> SchedulerLost:
        return SchedulerLost(f"{self.address()}: lost the connection to the Dask scheduler; "
                             "the inputs whose files were complete are reported, resuming "
                             "does the rest", settings=("scheduler", "resume"))

    def _given(self, path: str) -> str:
        """An output as reports name it: below the output folder as it was given."""
        if self.remote:
            return path
        return os.path.join(self.given_out, os.path.relpath(path, self.out))

    def __next__(self) -> Result:
        from distributed import KilledWorker

        if getattr(self, "lost", False):
            if self.ready:
                return self._take(self.ready.pop(0))
            if self.stopping:  # asked to stop anyway: that is how the run ends
                raise StopIteration
            raise self._lost_error()
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
            if self.pending and not self.stopping:
                self.done.add(self._submit(self.pending.pop()))
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
            elif self.ship:
                from . import pipeline

                with pipeline.signals_held():  # the files and their report go together
                    results = self._commit(results)
            for result in results:
                result.outputs = [self._given(p) for p in result.outputs]
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
        self.pending.clear()
        if self.client.status != "running":  # reconnecting to a lost scheduler: the
            return                            # stream ends with what is on disk
        try:
            Event(self.stop_event, client=self.client).set()
            running = {key for keys in self.client.processing().values() for key in keys}
            self.client.cancel([f for f in self.tasks if f.key not in running])
        except Exception:  # noqa: BLE001  the scheduler went away meanwhile (see _next_done)
            pass

    def abort(self) -> None:
        """Asked twice to stop: as stop(); inputs that tasks have begun still finish (a
        Dask task cannot be interrupted), and close() cancels the rest."""
        self.stop()

    def close(self) -> None:
        if self.plugin is None:  # closed already
            return
        from distributed import Event

        try:
            self.client.cancel(list(self.tasks))
            self.client.unregister_worker_plugin(self.plugin)
            if self.stopping:  # a set event stays on the scheduler until it is cleared
                Event(self.stop_event, client=self.client).clear()
        except Exception:  # noqa: BLE001  e.g. the scheduler is gone: nothing is left to tidy
            pass
        self.plugin = None
        _disconnect(self.client, self.local)
        from . import pipeline

        if not self.remote:
            pipeline.sweep_staging(self.out)  # what workers of this machine that died began


def _with_bytes(source: Source) -> Source:
    """A source to ship: its bytes read here (a file, or a URL this machine can read); one
    that cannot be read goes as a known problem, reported by the worker like any other."""
    if source.data is not None or source.problem is not None:
        return source
    try:
        data = source.content()
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
    except ConvcliError as e:
        return replace(source, problem=str(e))
    except OSError as e:
        return replace(source, problem=f"{source.label}: cannot read: {e.strerror or e}")
    return replace(source, data=data, path=None, url=None)
