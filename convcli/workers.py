"""Setting up a process that runs inputs for a batch: one owner for what every worker needs,
whether it is a process of the local pool (convcli.batch) or a Dask worker (convcli.cluster).

A worker gets glibc's memory thresholds that suit convcli (see keep_freed_memory), and the
engine's compiled kernels loaded before its first input when the batch takes the JIT
(so workers never race on the cache and never compile in the middle of a task).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine (NumPy) is not imported for the command line's --help
    from .engine import EngineConfig

# glibc returns freed memory to the system once more than the trim threshold is free at the
# top of the heap, and serves allocations above the mmap threshold with fresh mappings.
# Every map of every input is such an allocation: with Dask's worker default
# (MALLOC_TRIM_THRESHOLD_=65536) each one lands on new pages the kernel must zero first,
# which made a real Dask cluster 1.7-1.9x slower than the local pool (and `apply -j 2`
# 8.1 s instead of 4.3 s with that variable set). Fixed thresholds keep freed maps for reuse.
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (see above); False where the
    C library is not glibc. Changes this process only: call it in processes convcli owns."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def set_up(config: EngineConfig) -> None:
    """What every worker process does before its first input."""
    from . import engine

    keep_freed_memory()
    if config.method == "jit":
        engine.prepare(config)  # compile or load now (no threads start)
