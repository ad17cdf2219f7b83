"""Many inputs: a local process pool, and the per-filter contact sheets. Never prints.

With more than one worker, the parent compiles (or loads from the cache) the engine once
before any worker starts, so workers never race on the JIT cache; on Linux the workers are
forked and inherit the compiled code. Each worker runs the engine with cores / workers
threads, so the machine is not oversubscribed; one worker (or one input) runs in this process
with every core. Workers ignore Ctrl-C: the parent stops handing out work, lets running
inputs finish their (atomic) writes, and reports what was done.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from . import images, pipeline, render
from .bank import KernelBank
from .errors import EXIT_ERROR
from .inputs import SHEETS_FOLDER, Source
from .pipeline import Options, Result

SHEET_TILE = 256  # contact-sheet tiles are shrunk to at most this many pixels per side


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_engine(sources: list[Source], bank: KernelBank, method: str = "auto") -> str:
    """Choose the engine's path for the whole batch, from the first image's size (read from
    its header) times the number of inputs: "jit" or "numpy". A single input is left to
    the engine to decide from its real size ("auto")."""
    from . import engine

    if method != "auto":
        return engine.plan(method=method)
    if len(sources) == 1:
        engine.plan(None)
        return "auto"
    size = (512, 512)  # a guess when the first input cannot be measured
    for source in sources[:1]:
        try:
            size = images.image_size(source.data if source.data is not None else source.path)
        except Exception:  # the input's own error is reported when it is processed
            pass
    return engine.plan(pipeline.work_per_image(bank, *size) * len(sources))


def run(sources: list[Source], bank: KernelBank, options: Options, jobs: int | None = None,
        fail_fast: bool = False, path: str | None = None) -> Iterator[Result]:
    """Process every source; yield each Result as it completes. With ``fail_fast``, stop
    handing out work after the first failure. Closing the iterator (or Ctrl-C) stops the
    batch cleanly: no new inputs start, running ones finish their writes. ``path`` is what
    plan_engine chose (planned here when not given)."""
    from . import engine

    path = path or plan_engine(sources, bank)
    workers = max(1, min(jobs or cpu_count(), len(sources)))
    if workers == 1:
        engine.set_threads(cpu_count())
        for source in sources:
            result = pipeline.process(source, bank, options)
            yield result
            if fail_fast and result.status == "error":
                return
        return
    if path == "jit":
        engine.prepare()  # compile or load once, before any worker exists
    yield from _pool(sources, bank, options, workers, fail_fast)


def _pool(sources, bank, options, workers, fail_fast) -> Iterator[Result]:
    # Imported here: a single image (the shell-loop case) should not pay for them.
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, cpu_count() // workers)
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                   initargs=(bank, options, threads))

    pool = new_pool()
    queue = [(s, 0) for s in reversed(sources)]  # (source, earlier attempts), popped from the end
    running: dict[Future, tuple[Source, int]] = {}  # noqa: F821 (imported above)
    stopping = False
    try:
        while queue or running:
            while not stopping and queue and len(running) < 2 * workers:  # a bounded window
                source, attempts = queue.pop()
                running[pool.submit(_worker_process, source)] = (source, attempts)
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                source, attempts = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    # A worker died (killed, out of memory). Any input in flight may be the
                    # cause: each gets one more try in a fresh pool before it counts as failed.
                    broken = True
                    if attempts == 0:
                        queue.append((source, 1))
                        continue
                    result = Result(input=source.label, status="error", exit_code=EXIT_ERROR,
                                    error=f"{source.label}: the worker process died while "
                                          "processing it (killed, or out of memory?)")
                if fail_fast and result.status == "error":
                    stopping = True
                yield result
            if broken:
                pool.shutdown(wait=True, cancel_futures=True)
                for future, item in running.items():  # all of them failed with the pool
                    queue.append((item[0], item[1]))
                running.clear()
                pool = new_pool()
    finally:
        for future in running:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_WORKER: dict = {}


def _worker_init(bank: KernelBank, options: Options, threads: int) -> None:
    from . import engine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # Turn SIGTERM into an exception so atomic writes remove their temporary files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    engine.set_threads(threads)
    _WORKER.update(bank=bank, options=options)


def _worker_process(source: Source) -> Result:
    return pipeline.process(source, _WORKER["bank"], _WORKER["options"])


# --- contact sheets: one per filter, across all inputs --------------------------------------

def write_filter_sheets(results: list[Result], sources: list[Source], bank: KernelBank,
                        options: Options) -> list[str]:
    """For each filter, one labelled PNG of that filter's map for every input that has one,
    written to OUT/by-filter/<filter>.png. Built from the files on disk, so inputs skipped
    by --resume take part too. Returns the paths written."""
    ok = {r.input for r in results if r.status in ("ok", "skipped")}
    done = [s for s in sources if s.label in ok]
    if not done:
        return []
    folder = Path(options.out) / SHEETS_FOLDER
    names = pipeline.safe_names([f.name for f in bank.filters])
    written = []
    for k, (filt, safe) in enumerate(zip(bank.filters, names)):
        tiles = [(s.rel, _thumbnail(_map_pixels(s, k, safe, filt.scale, options))) for s in done]
        pixels, boxes = render.stack(tiles)
        meta = {"filter": filt.name, "bank": bank.name, "tiles": boxes}
        target = folder / f"{safe}.png"
        images.write_atomic(target, images.encode_png(pixels, {"convcli": json.dumps(meta)},
                                                      options.compression))
        written.append(str(target))
    return written


def _map_pixels(source: Source, index: int, safe: str, scale: str, options: Options) -> np.ndarray:
    folder = pipeline.output_folder(source, options)
    if options.format == "npy":
        data = np.load(folder / "maps.npy", mmap_mode="r")[index]
        return render.to_pixels(np.asarray(data), "auto" if scale == "global" else scale,
                                options.bits).pixels
    from PIL import Image

    with Image.open(folder / f"{safe}.png") as im:
        return np.asarray(im)


def _thumbnail(pixels: np.ndarray) -> np.ndarray:
    """Shrink by a whole factor (mean over blocks) so neither side exceeds SHEET_TILE."""
    factor = -(-max(pixels.shape[:2]) // SHEET_TILE)
    if factor <= 1:
        return pixels
    h, w = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    blocks = pixels[:h, :w].reshape(h // factor, factor, w // factor, factor, *pixels.shape[2:])
    return blocks.mean(axis=(1, 3)).round().astype(pixels.dtype)
