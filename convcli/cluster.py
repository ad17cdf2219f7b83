"""Batches on a Dask cluster (``--scheduler tcp://HOST:8786`` or ``local``). Never prints.

Workers receive paths, not pixels: each one reads, convolves and writes by itself, so inputs
and the output folder must be on storage every worker sees (a shared file system). Before
any task, every worker limits the engine's threads to its own Dask threads, compiles or loads
the JIT (so workers never race on the cache), and proves it can write into the output folder.
A worker that dies costs a retry of its tasks (Dask reschedules them); since every file is
written atomically, nothing partial is left. Results come back as they complete, exactly as
from the local pool, so reports, --fail-fast and --resume behave the same.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .bank import KernelBank
from .errors import OutputError, UsageError
from .inputs import Source
from .pipeline import Options, Result


def connect(address: str, path: str = "auto", verbose: bool = False):
    """A distributed Client for an address, or for a new LocalCluster when it is 'local'.

    ``path`` is the engine path the batch will take (see batch.plan_engine). On Linux a
    local cluster's workers are forked from this process rather than started afresh, so they
    begin with convcli, Dask, NumPy and numba already imported instead of spending about a
    second of CPU each on imports. A local cluster's scheduler and workers would log to our
    stderr; the report already says what went wrong with which input, so their log shows
    only with ``verbose`` (and then from warnings up)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'convcli[dask]'") from None
    if address == "local":
        import logging

        import dask

        # Set before the workers are forked, so that they inherit it.
        logging.getLogger("distributed").setLevel(logging.WARNING if verbose
                                                  else logging.CRITICAL)

        from . import engine

        if path == "jit":
            engine.import_compiler()
        # Dask makes glibc return freed memory to the system at once (MALLOC_TRIM_THRESHOLD_),
        # so every map would be allocated on fresh pages that the kernel must zero first (the
        # cost the edge workload of benchmarks/engine.py shows); convcli frees its maps as it
        # goes, so the workers of a local cluster keep glibc's default.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        settings = {"distributed.nanny.pre-spawn-environ": environ}
        if sys.platform == "linux":
            settings["distributed.worker.multiprocessing-method"] = "fork"
        with dask.config.set(settings):
            cluster = LocalCluster(processes=True, threads_per_worker=1, dashboard_address=":0")
        return Client(cluster)
    try:
        return Client(address, timeout="10s")
    except OSError as e:
        raise UsageError(f"--scheduler {address}: cannot reach the Dask scheduler ({e})") from None


def _prepare_worker(out: str, path: str, dask_worker=None) -> str:
    """On each worker: engine threads, JIT loaded, the output folder writable."""
    from . import engine

    engine.plan(method=path if path in ("jit", "numpy", "fft") else "auto",
                threads=dask_worker.state.nthreads if dask_worker is not None else 1)
    if path == "jit":
        engine.prepare()
    if out != "-":
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".convcli-probe-"):
            pass
    return os.uname().nodename if hasattr(os, "uname") else "worker"


def _task(sources: list[Source], bank: KernelBank, options: Options, fail_fast: bool
          ) -> list[Result]:
    """One task: a few inputs, processed in order (stops after a failure with fail_fast)."""
    from . import pipeline

    results = []
    for source in sources:
        if source.data is None and source.path is not None and not source.path.exists():
            result = Result(input=source.label, status="error", exit_code=1,
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
# about 40 ms on one core: so a task carries several inputs. Tasks stay small enough that
# every worker thread gets about TASKS_PER_THREAD of them (the load stays balanced and the
# progress bar moves) and never more than MAX_PER_TASK inputs (what a killed worker costs).
TASKS_PER_THREAD = 8
MAX_PER_TASK = 16


def inputs_per_task(inputs: int, threads: int) -> int:
    return max(1, min(MAX_PER_TASK, inputs // (max(1, threads) * TASKS_PER_THREAD)))


def run(client, sources: list[Source], bank: KernelBank, options: Options, fail_fast: bool,
        path: str) -> Iterator[Result]:
    """Submit every input; yield Results as they complete. Closing the iterator (Ctrl-C)
    cancels what has not finished."""
    from distributed import KilledWorker, as_completed

    if any(s.data is not None for s in sources):
        raise UsageError("- (an image on stdin) cannot go to a cluster; give a path")
    given_out = options.out  # reports name outputs as the local pool does, from the -o given
    sources = [s if s.path is None else Source(s.label, s.rel, Path(os.path.abspath(s.path)),
                                               s.data, s.problem) for s in sources]
    options = Options(**{**options.__dict__, "out": os.path.abspath(options.out)})
    try:
        client.run(_prepare_worker, options.out, path)
    except OSError as e:
        raise OutputError(f"{options.out}: a worker cannot write there ({e}); the output "
                          "folder must be on storage every worker sees") from None
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    tasks: dict = {}  # future -> its inputs

    def submit(chunk: list[Source]):
        # The bank travels inside every task (a few kB; it is not scattered once, because
        # scattered data dies with the workers holding it, and its tasks with it).
        future = client.submit(_task, chunk, bank, options, fail_fast, pure=False, retries=1)
        tasks[future] = chunk
        return future

    size = inputs_per_task(len(sources), threads)
    done = as_completed([submit(sources[i:i + size]) for i in range(0, len(sources), size)],
                        with_results=True, raise_errors=False)
    try:
        for future, results in done:
            # Let go of finished tasks, or a worker that dies later holding their (tiny)
            # results would make Dask compute them again.
            chunk = tasks.pop(future)
            why = future.exception() if future.status == "error" else None
            future.release()
            if why is not None:  # it failed on every try, e.g. it killed its workers
                if len(chunk) > 1:  # find the input to blame: one task each
                    for source in chunk:
                        done.add(submit([source]))
                    continue
                label = chunk[0].label
                if isinstance(why, KilledWorker):
                    why = "every worker that ran it died (see the workers' logs)"
                results = [Result(input=label, status="error", exit_code=1,
                                  error=f"{label}: failed on the cluster: {why}")]
            for result in results:
                result.outputs = [os.path.join(given_out, os.path.relpath(p, options.out))
                                  for p in result.outputs]
                yield result
                if fail_fast and result.status == "error":
                    return
    finally:
        client.cancel([f for f in tasks if not f.done()])
