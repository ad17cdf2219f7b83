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
import tempfile
from pathlib import Path
from typing import Iterator

from .bank import KernelBank
from .errors import OutputError, UsageError
from .inputs import Source
from .pipeline import Options, Result


def connect(address: str):
    """A distributed Client for an address, or for a new LocalCluster when it is 'local'."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'convcli[dask]'") from None
    if address == "local":
        import dask

        # Dask makes glibc return freed memory to the system at once (MALLOC_TRIM_THRESHOLD_),
        # so every map would be allocated on fresh pages that the kernel must zero first (the
        # cost the edge workload of benchmarks/engine.py shows); convcli frees its maps as it
        # goes, so the workers of a local cluster keep glibc's default.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(processes=True, threads_per_worker=1, dashboard_address=":0")
        return Client(cluster)
    try:
        return Client(address, timeout="10s")
    except OSError as e:
        raise UsageError(f"--scheduler {address}: cannot reach the Dask scheduler ({e})") from None


def _prepare_worker(out: str, path: str, threads: int | None = None) -> str:
    """On each worker: engine threads, JIT loaded, the output folder writable."""
    from . import engine

    engine.plan(method=path if path in ("jit", "numpy", "fft") else "auto",
                threads=threads or 1)
    if path == "jit":
        engine.prepare()
    if out != "-":
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".convcli-probe-"):
            pass
    return os.uname().nodename if hasattr(os, "uname") else "worker"


def _task(source: Source, bank: KernelBank, options: Options) -> Result:
    from . import pipeline

    if source.data is None and source.path is not None and not source.path.exists():
        return Result(input=source.label, status="error", exit_code=1,
                      error=f"{source.label}: not found on the worker (inputs must be on "
                            "storage every worker sees)")
    return pipeline.process(source, bank, options)


def run(client, sources: list[Source], bank: KernelBank, options: Options, fail_fast: bool,
        path: str) -> Iterator[Result]:
    """Submit every input; yield Results as they complete. Closing the iterator (Ctrl-C)
    cancels what has not finished."""
    from distributed import as_completed

    if any(s.data is not None for s in sources):
        raise UsageError("- (an image on stdin) cannot go to a cluster; give a path")
    given_out = options.out  # reports name outputs as the local pool does, from the -o given
    sources = [s if s.path is None else Source(s.label, s.rel, Path(os.path.abspath(s.path)),
                                               s.data, s.problem) for s in sources]
    options = Options(**{**options.__dict__, "out": os.path.abspath(options.out)})
    workers = client.scheduler_info().get("workers", {})
    threads = {addr: info.get("nthreads", 1) for addr, info in workers.items()}
    try:
        for addr, t in threads.items():
            client.run(_prepare_worker, options.out, path, t, workers=[addr])
    except OSError as e:
        raise OutputError(f"{options.out}: a worker cannot write there ({e}); the output "
                          "folder must be on storage every worker sees") from None
    bank_f = client.scatter(bank, broadcast=True)
    options_f = client.scatter(options, broadcast=True)
    futures = {client.submit(_task, s, bank_f, options_f, pure=False, retries=1): s
               for s in sources}
    try:
        for future in as_completed(list(futures)):
            try:
                result = future.result()
            except Exception as e:  # failed on every try (e.g. it killed two workers)
                label = futures[future].label
                result = Result(input=label, status="error", exit_code=1,
                                error=f"{label}: failed on the cluster: {e}")
            result.outputs = [os.path.join(given_out, os.path.relpath(p, options.out))
                              for p in result.outputs]
            yield result
            if fail_fast and result.status == "error":
                return
    finally:
        client.cancel([f for f in futures if not f.done()])

