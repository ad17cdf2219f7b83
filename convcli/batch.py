"""Many inputs: a local process pool, and the per-filter contact sheets. Never prints.

With more than one worker, the parent compiles (or loads from the cache) the engine once
before any worker starts, so workers never race on the JIT cache; on Linux the workers are
forked and inherit the compiled code. Each worker runs the engine with cores / workers
threads, so the machine is not oversubscribed; one worker (or one input) runs in this process
with every core. Workers ignore Ctrl-C: the parent stops handing out work, lets running
inputs finish their (atomic) writes, and reports what was done.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from . import images, pipeline, render, storage, workers
from .bank import KernelBank
from .network import Network
from .engine import EngineConfig
from .errors import EXIT_ERROR, UsageError
from .inputs import SHEETS_FOLDER, Source
from .pipeline import Options, Result

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_engine(sources: list[Source], bank: KernelBank | Network, method: str = "auto",
                  threads: int | None = None) -> EngineConfig:
    """The engine's configuration for a whole batch: with ``auto``, "jit" or "numpy" from
    the first image's size (read from its header) times the number of inputs, so a small
    job never starts numba. A single input stays "auto": the engine decides per call."""
    from . import engine

    if method != "auto" or len(sources) == 1:
        return engine.plan_for_job(None, method, threads)
    size = (512, 512)  # a guess when the first input cannot be measured
    try:
        size = images.image_size(sources[0].content())
    except Exception:  # the input's own error is reported when it is processed
        pass
    work = pipeline.work_per_image(bank, *size)
    return engine.plan_for_job(None if work is None else work * len(sources), method, threads)


class Stream(Protocol):
    """Results of a batch as they complete, whatever runs it (this process, a process pool
    or a Dask cluster; see cluster.run). Iterate for Results. ``stop()``: start no new
    input, let running ones finish and be yielded. ``abort()``: also abandon running inputs;
    the ones whose files were already complete are still yielded, the others leave nothing.
    ``close()``: release the workers. An interrupt (KeyboardInterrupt) raised while
    iterating leaves the stream usable: call stop() or abort() and iterate on."""

    method: str  # the engine's method for the batch (see choose_engine)

    def __iter__(self) -> Iterator[Result]: ...
    def __next__(self) -> Result: ...
    def stop(self) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    """Where a batch runs. ``scheduler``: a Dask scheduler's address, or "local" for a
    LocalCluster; else this machine, with ``jobs`` worker processes (None: one per core;
    one runs in this process). ``engine``: the engine's method (auto, jit, numpy, fft)."""

    jobs: int | None = None
    scheduler: str | None = None
    engine: str = "auto"
    fail_fast: bool = False
    verbose: bool = False  # a local Dask cluster's own log on stderr
    ship: bool = False  # send inputs' bytes to the Dask workers and write outputs here


def apply(sources: list[Source], bank: KernelBank | Network, options: Options,
          backend: Backend = Backend()) -> Stream:
    """Run a bank over many inputs on a back-end; the one entry point for batches. Returns
    a Stream of Results (see Stream), whose ``method`` says which engine method it took."""
    config = choose_engine(sources, bank, backend.engine)
    options = replace(options, engine=config, out=storage.local_path(options.out))
    if options.thumbnails and storage.is_remote(options.out):
        raise UsageError("contact sheets across inputs are written to a local output folder, "
                         f"not to {options.out}")
    if backend.scheduler is not None:
        from . import cluster

        stream: Stream = cluster.run(backend.scheduler, sources, bank, options,
                                     backend.fail_fast, backend.verbose, backend.ship)
    else:
        if backend.ship:
            raise UsageError("shipping inputs to workers needs a cluster",
                             settings=("ship", "scheduler"))
        stream = run(sources, bank, options, backend.jobs, backend.fail_fast)
    stream.method = config.method
    return stream


def run(sources: list[Source], bank: KernelBank | Network, options: Options,
        jobs: int | None = None, fail_fast: bool = False) -> Stream:
    """Process every source here (one worker) or in a local process pool, with the engine
    as ``options.engine`` says. With ``fail_fast``, stop handing out work after the first
    failure."""
    from . import engine

    workers = max(1, min(jobs or cpu_count(), len(sources)))
    if workers == 1:
        options = replace(options, engine=replace(options.engine, threads=cpu_count()))
        return _InProcess(sources, bank, options, fail_fast)
    if options.engine.method == "jit":
        engine.prepare(options.engine)  # compile or load once, before any worker exists
    # Each worker's engine gets its share of the cores, so the machine is not oversubscribed.
    threads = max(1, cpu_count() // workers)
    options = replace(options, engine=replace(options.engine, threads=threads))
    return _Pool(sources, bank, options, workers, fail_fast)


class _InProcess:
    """Inputs one after another in this process. A stop signal interrupts the input being
    processed (its outputs are then absent), unless its files were already moved into
    place: then it is yielded after the interrupt."""

    method = "auto"  # set by apply()

    def __init__(self, sources, bank, options, fail_fast):
        self.todo = list(reversed(sources))
        self.bank, self.options, self.fail_fast = bank, options, fail_fast
        self.finished: Result | None = None
        self.stopped = False

    def __iter__(self):
        return self

    def __next__(self) -> Result:
        if self.finished is not None:
            result, self.finished = self.finished, None
            return result
        if self.stopped or not self.todo:
            raise StopIteration
        source = self.todo.pop()
        result = Result(input=source.label, status="pending")
        try:
            storage.process(source, self.bank, self.options, result)
        except BaseException:
            self.stopped = True
            if result.status in ("ok", "skipped"):
                self.finished = result
            raise
        if self.fail_fast and result.status == "error":
            self.stopped = True
        return result

    def stop(self) -> None:
        self.stopped = True

    abort = stop

    def close(self) -> None:
        self.stopped = True
        self.todo.clear()


class _Pool:
    """Inputs spread over forked worker processes. Workers ignore Ctrl-C and SIGTERM (the
    terminal and service managers signal the whole process group; this parent decides),
    abandon their input on SIGUSR1 (abort), and get SIGUSR1 from the kernel when this
    process dies, so none outlives it. A worker that dies costs its inputs one retry."""

    method = "auto"  # set by apply()

    def __init__(self, sources, bank, options, workers, fail_fast):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.bank, self.options, self.workers, self.fail_fast = bank, options, workers, fail_fast
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        self.new_pool = lambda: ProcessPoolExecutor(
            workers, mp_context=context, initializer=_worker_init,
            initargs=(bank, options, os.getpid()))
        self.pool = self.new_pool()
        self.queue = [(s, 0) for s in reversed(sources)]  # (source, earlier tries), from the end
        self.running: dict = {}  # future -> (source, tries)
        self.ready: deque[Result] = deque()
        self.stopping = self.aborted = False
        self.started_ns = time.time_ns()

    def __iter__(self):
        return self

    def __next__(self) -> Result:
        while not self.ready:
            if not self._step():
                raise StopIteration
        return self.ready.popleft()

    def _step(self) -> bool:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        while not self.stopping and self.queue and len(self.running) < 2 * self.workers:
            source, tries = self.queue.pop()
            try:
                with _stops_deferred():  # a stop between the two would lose a running input
                    self.running[self.pool.submit(_worker_process, source)] = (source, tries)
            except BrokenProcessPool:
                # A worker died since the last collection: this input never ran. The
                # inputs in flight fail with the pool and are collected below; with none,
                # a fresh pool takes over at once.
                self.queue.append((source, tries))
                if self.running:
                    break
                self._renew_pool()
                continue
        if not self.running:
            return False
        done, _ = wait(self.running, return_when=FIRST_COMPLETED)
        with pipeline.signals_held():  # the bookkeeping must not be cut in half
            self._collect(done)
        return True

    def _collect(self, done) -> None:
        from concurrent.futures.process import BrokenProcessPool

        broken = False
        for future in done:
            source, tries = self.running.pop(future)
            if future.cancelled():
                continue
            try:
                result = future.result()
            except BrokenProcessPool:
                # A worker died (killed, out of memory). Any input in flight may be the
                # cause: each gets one more try in a fresh pool before it counts as failed.
                broken = True
                if self.aborted:
                    self._from_disk(source)
                    continue
                if tries == 0:
                    self.queue.append((source, 1))
                    continue
                result = Result(input=source.label, status="error", exit_code=EXIT_ERROR,
                                error=f"{source.label}: the worker process died while "
                                      "processing it (killed, or out of memory?)")
            except BaseException:  # the worker was aborted while idle, or a pickling fault
                self._from_disk(source)
                continue
            if result.status == "pending":  # abandoned by abort(): outputs absent
                continue
            if self.fail_fast and result.status == "error":
                self.stop()
            self.ready.append(result)
        if broken and not self.aborted:
            self._renew_pool()

    def _renew_pool(self) -> None:
        """A fresh pool after a worker died; the inputs in flight go back to the queue."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        pipeline.sweep_staging(self.options.out)  # what the dead worker had begun
        for source, tries in self.running.values():  # all of them failed with the pool
            self.queue.append((source, tries))
        self.running.clear()
        self.pool = self.new_pool()

    def _from_disk(self, source: Source) -> None:
        """After an abort: an input whose files were moved into place during this run is
        done, whatever became of its worker."""
        outputs = pipeline.done_before(source, self.bank, self.options, self.started_ns)
        if outputs is not None:
            self.ready.append(Result(input=source.label, outputs=outputs))

    def stop(self) -> None:
        """Start nothing more: queued inputs are dropped, submitted ones that have not
        started are cancelled, running ones finish."""
        self.stopping = True
        self.queue.clear()
        for future in list(self.running):
            if future.cancel():
                del self.running[future]

    def abort(self) -> None:
        """Stop, and make the workers abandon their current input."""
        self.stop()
        self.aborted = True
        for process in list(getattr(self.pool, "_processes", {}).values()):
            try:
                os.kill(process.pid, signal.SIGUSR1)
            except (OSError, AttributeError):
                pass

    def close(self) -> None:
        self.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.options.out != pipeline.STDOUT:
            pipeline.sweep_staging(self.options.out)


_WORKER: dict = {}  # this worker process's bank and options (set once, by _worker_init)


class _Aborted(BaseException):
    """SIGUSR1 in a worker: abandon the input (its staged files are removed)."""


def _abort(signum, frame) -> None:
    if _WORKER.get("busy"):
        raise _Aborted()
    os._exit(0)  # idle: nothing to abandon


def _worker_init(bank: KernelBank, options: Options, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _abort)
    _die_with(parent)
    workers.set_up(options.engine)
    _WORKER.update(bank=bank, options=options, parent=parent)


def _die_with(parent: int) -> None:
    """Ask Linux to send SIGUSR1 when the parent dies (prctl PR_SET_PDEATHSIG), so that a
    worker never outlives a parent killed with SIGKILL; it then abandons its input."""
    if sys.platform != "linux":
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGUSR1), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


@contextlib.contextmanager
def _stops_deferred():
    """Ctrl-C and SIGTERM held until the block ends, then delivered to the handlers they
    would have met. Done by swapping the handlers in the main thread rather than by masking
    the signals (pipeline.signals_held): a worker the pool forks inside the block must not
    inherit blocked signals (its own set-up installs its handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    stops = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in stops}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


def _worker_process(source: Source) -> Result:
    result = Result(input=source.label, status="pending")
    _WORKER["busy"] = True
    try:
        return storage.process(source, _WORKER["bank"], _WORKER["options"], result)
    except _Aborted:
        if os.getppid() != _WORKER["parent"]:  # orphaned: nobody to report to
            os._exit(1)
        return result  # "ok" if its files were moved into place before the abort
    finally:
        _WORKER["busy"] = False


# --- contact sheets: one per filter, across all inputs --------------------------------------

def write_filter_sheets(results: list[Result], sources: list[Source],
                        bank: KernelBank | Network,
                        options: Options) -> list[str]:
    """For each filter, one labelled PNG of that filter's map for every input that has one,
    written to OUT/by-filter/<filter>.png, from the small pictures the Results carry (run
    with Options.thumbnails); an input skipped by --resume brings its pictures from its
    files. Returns the paths written."""
    by_label = {r.input: r for r in results if r.status in ("ok", "skipped")}
    done = [(s, by_label[s.label]) for s in sources if s.label in by_label]
    if not done:
        return []
    folder = Path(options.out) / SHEETS_FOLDER
    bank = pipeline.output_bank(bank)
    names = pipeline.safe_names([f.name for f in bank.filters])
    written = []
    for k, (filt, safe) in enumerate(zip(bank.filters, names)):
        tiles = [(s.rel, r.thumbnails[filt.name] if r.thumbnails else
                  render.thumbnail(_map_pixels(s, k, safe, filt.scale, options)))
                 for s, r in done]
        pixels, boxes = render.stack(tiles)
        meta = {"filter": filt.name, "bank": bank.name, "tiles": boxes}
        target = folder / f"{safe}.png"
        images.write_atomic(target, images.encode_png(pixels, {"convcli": json.dumps(meta)},
                                                      options.compression))
        written.append(str(target))
    return written


def _map_pixels(source: Source, index: int, safe: str, scale: str, options: Options) -> np.ndarray:
    """The picture of one map of an input done in an earlier run, from its files: the
    arrays (npy, tiff) drawn again, else the map's picture, else (with --no-maps) its tile
    in the stack."""
    folder = pipeline.output_folder(source, options)
    if options.format in ("npy", "tiff"):
        if options.format == "npy":
            data = np.load(folder / "maps.npy", mmap_mode="r", allow_pickle=False)[index]
        else:
            from . import features

            shape = json.loads((folder / "maps.json").read_bytes()[:1 << 20])["shape"]
            planes = features.read_input(folder / "maps.tif", source.label, options.max_pixels)
            data = planes.data.reshape(shape)[index]
        # as the thumbnails of a fresh run are drawn (pipeline._map_files)
        return render.to_pixels(np.asarray(data), "minmax" if scale == "global" else scale,
                                options.bits).pixels
    ext = pipeline.PICTURES[options.format]
    picture = folder / f"{safe}.{ext}"
    if picture.is_file():
        return _as_drawn(images.read_image(picture).pixels, options)
    stack = folder / f"stack.{ext}"
    if ext == "png":
        meta = json.loads(pipeline.png_text(stack).get("convcli", "{}"))
    else:
        meta = json.loads((folder / "maps.json").read_bytes()[:1 << 20])["pictures"][
            f"stack.{ext}"]
    x, y, w, h = meta["tiles"][index]["box"]
    return _as_drawn(images.read_image(stack).pixels[:, y:y + h, x:x + w], options)


def _as_drawn(pixels: np.ndarray, options: Options) -> np.ndarray:
    """A picture read back as the pixels it was drawn from: WebP keeps gray as three equal
    channels (near equal, when lossy), so those become gray again."""
    if len(pixels) == 3 and np.abs(pixels - pixels.mean(axis=0)).max() <= 2 / 255:
        pixels = pixels.mean(axis=0, keepdims=True)
    return render.to_pixels(pixels, "clip", options.bits).pixels
