"""All numba code: the JIT cache set-up, decorator options and the compiled kernels.

Imported only when a convolution takes the compiled path (see convcli.engine), so commands
that do not convolve, and small jobs, never pay numba's start-up (about half a second).
"""

from __future__ import annotations

import os

import numpy as np

from .jitcache import usable_cache_dir

# The cache folder must be known before numba is imported (numba reads it at import).
_CACHE_DIR, CACHE_STATUS = usable_cache_dir()
if _CACHE_DIR is not None:
    os.environ["NUMBA_CACHE_DIR"] = str(_CACHE_DIR)


def _preload_tbb() -> None:
    """Make numba's TBB threading layer loadable from pip's ``tbb`` wheel.

    Starting a parallel loop costs about 2 us with TBB and 100-150 us with numba's fallback
    (workqueue) on our 2-core machines, which on a 256x256 image is a third of the whole
    call. The wheel puts libtbb in <prefix>/lib, which the dynamic loader does not search
    (a virtual environment is not on its path), so numba's load by file name fails; loading
    it by full path first satisfies that lookup, because the loader matches the names of
    libraries already loaded. Without the wheel numba simply falls back to workqueue.
    """
    import ctypes
    import site
    import sys

    name = {"win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}.get(sys.platform, "libtbb.so.12")
    for prefix in (sys.prefix, site.getuserbase()):
        for folder in ("lib", os.path.join("Library", "bin")):
            path = os.path.join(prefix, folder, name)
            if os.path.exists(path):
                try:
                    ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
                    return
                except OSError:
                    pass


if "NUMBA_THREADING_LAYER" not in os.environ:
    _preload_tbb()

import numba  # noqa: E402  (after the cache folder is set)

if _CACHE_DIR is not None:
    numba.config.CACHE_DIR = str(_CACHE_DIR)  # in case numba was imported before us
if "NUMBA_THREADING_LAYER" not in os.environ:
    # Batches fork worker processes after compiling here; GNU OpenMP cannot survive a fork,
    # so take a fork-safe layer: TBB when it can be loaded (see _preload_tbb), else numba's
    # own workqueue.
    numba.config.THREADING_LAYER = "forksafe"

# Decorator options in one place. No eager signatures: the wrappers always pass the same
# types, so exactly one specialisation is compiled (and cached). No fastmath: the kernel
# must round exactly like the NumPy path (no reassociation, no fused multiply-add).
_JIT = dict(nogil=True, cache=_CACHE_DIR is not None, error_model="numpy", boundscheck=False)


@numba.njit(inline="always", **_JIT)
def _finish(dst, k, value, base, fresh, act):
    """dst[k] = act((base if fresh else dst[k]) + value): the first pass over a row starts
    from ``base`` instead of a separate fill, the last applies the activation, so a 3x3
    kernel costs two passes along the row instead of four (same arithmetic as fill, add,
    activate)."""
    v = (base if fresh else dst[k]) + value
    if act == 1:
        if v < 0.0:
            v = 0.0
    elif act == 2:
        v = abs(v)
    dst[k] = v


@numba.njit(inline="always", **_JIT)
def _apply_taps(dst, src, rows, cols, ws, start, stop, shift, fresh, base, act):
    """dst = act((base if fresh else dst) + sum over taps t in [start, stop) of
    ws[t] * src[rows[t] + shift, cols[t]:][:n]), adding tap groups in order (see _finish).

    Taps go eight (then four, then one) at a time: one pass along dst does eight
    multiply-adds per load and store of dst. Each source is sliced before the loop: indexing
    src[r, c + x] with a signed offset would make numba check for negative indices on every
    access, which blocks vectorisation; a step-less slice is a contiguous view.
    """
    n = dst.shape[0]
    if stop == start:
        if fresh or act != 0:
            for k in range(n):
                _finish(dst, k, 0.0, base, fresh, act)
        return
    t = start
    while t + 8 <= stop:
        a0 = src[rows[t] + shift, cols[t]:cols[t] + n]
        a1 = src[rows[t + 1] + shift, cols[t + 1]:cols[t + 1] + n]
        a2 = src[rows[t + 2] + shift, cols[t + 2]:cols[t + 2] + n]
        a3 = src[rows[t + 3] + shift, cols[t + 3]:cols[t + 3] + n]
        a4 = src[rows[t + 4] + shift, cols[t + 4]:cols[t + 4] + n]
        a5 = src[rows[t + 5] + shift, cols[t + 5]:cols[t + 5] + n]
        a6 = src[rows[t + 6] + shift, cols[t + 6]:cols[t + 6] + n]
        a7 = src[rows[t + 7] + shift, cols[t + 7]:cols[t + 7] + n]
        w0, w1, w2, w3 = ws[t], ws[t + 1], ws[t + 2], ws[t + 3]
        w4, w5, w6, w7 = ws[t + 4], ws[t + 5], ws[t + 6], ws[t + 7]
        first, last = fresh and t == start, t + 8 == stop
        a = act if last else 0
        for k in range(n):
            _finish(dst, k, (w0 * a0[k] + w1 * a1[k] + w2 * a2[k] + w3 * a3[k]
                             + w4 * a4[k] + w5 * a5[k] + w6 * a6[k] + w7 * a7[k]),
                    base, first, a)
        t += 8
    if t + 4 <= stop:
        a0 = src[rows[t] + shift, cols[t]:cols[t] + n]
        a1 = src[rows[t + 1] + shift, cols[t + 1]:cols[t + 1] + n]
        a2 = src[rows[t + 2] + shift, cols[t + 2]:cols[t + 2] + n]
        a3 = src[rows[t + 3] + shift, cols[t + 3]:cols[t + 3] + n]
        w0, w1, w2, w3 = ws[t], ws[t + 1], ws[t + 2], ws[t + 3]
        first, last = fresh and t == start, t + 4 == stop
        a = act if last else 0
        for k in range(n):
            _finish(dst, k, w0 * a0[k] + w1 * a1[k] + w2 * a2[k] + w3 * a3[k], base, first, a)
        t += 4
    while t < stop:
        a0 = src[rows[t] + shift, cols[t]:cols[t] + n]
        w0 = ws[t]
        first, last = fresh and t == start, t + 1 == stop
        a = act if last else 0
        for k in range(n):
            _finish(dst, k, w0 * a0[k], base, first, a)
        t += 1


@numba.njit(inline="always", **_JIT)
def _activate(row, act):
    if act == 1:
        for k in range(row.shape[0]):
            if row[k] < 0.0:
                row[k] = 0.0
    elif act == 2:
        for k in range(row.shape[0]):
            row[k] = abs(row[k])


@numba.njit(parallel=True, **_JIT)
def correlate(src, group_rows, sy, ptr, rows, cols, ws, b, act, out):
    """Dense cross-correlation. ``src`` (R, Wq) holds the padded input's rows (all phases
    and channels, see convcli.engine); filter f's taps are [ptr[f], ptr[f+1]): for output row
    y of channel group g, tap t reads src row rows[t] + g*group_rows + y*sy from column
    cols[t] and weighs ws[t]. out is (G, F, Ho, Wo).

    Parallel over (group, output row); each iteration writes only its own rows
    out[g, :, y, :], so writes are disjoint.
    """
    G, F, Ho, Wo = out.shape
    for gy in numba.prange(G * Ho):
        g = gy // Ho
        y = gy - g * Ho
        shift = g * group_rows + y * sy
        for f in range(F):
            _apply_taps(out[g, f, y], src, rows, cols, ws, ptr[f], ptr[f + 1], shift, True, b[f],
                        act)


@numba.njit(parallel=True, **_JIT)
def correlate_separable(src, group_rows, sy, term_ptr, vptr, vrows, vcols, vws, hptr, hphase,
                        hcols, hws, b, act, phases, out):
    """Cross-correlation with kernels given as sums of outer products (vertical x horizontal
    terms, see convcli.engine). Filter f's terms are [term_ptr[f], term_ptr[f+1]). For each
    output row, term k first sums its vertical taps into a row per column phase (taps
    [vptr[k*P+p], vptr[k*P+p+1]) for phase p, reading src as in ``correlate``), then adds its
    horizontal taps [hptr[k], hptr[k+1]) read from those phase rows. Parallel over (group,
    output row); each iteration writes only its own rows and its own scratch rows.
    """
    G, F, Ho, Wo = out.shape
    for gy in numba.prange(G * Ho):
        g = gy // Ho
        y = gy - g * Ho
        shift = g * group_rows + y * sy
        tmp = np.empty((phases, src.shape[1]), np.float32)
        zero = np.float32(0.0)
        for f in range(F):
            row = out[g, f, y]
            row[:] = b[f]
            for k in range(term_ptr[f], term_ptr[f + 1]):
                for p in range(phases):
                    lo, hi = vptr[k * phases + p], vptr[k * phases + p + 1]
                    _apply_taps(tmp[p], src, vrows, vcols, vws, lo, hi, shift, True, zero, 0)
                _apply_taps(row, tmp, hphase, hcols, hws, hptr[k], hptr[k + 1], 0, False, zero, 0)
            _activate(row, act)


def call(name: str, *args) -> None:
    """Run a kernel. If its first use fails while numba loads it from the on-disk cache
    (a corrupt or half-written cache file), the cache is cleared and the kernel compiled
    afresh, so a bad cache never fails a run."""
    kernel = globals()[name]
    try:
        return kernel(*args)
    except Exception:
        if kernel.signatures or _CACHE_DIR is None:
            raise  # compiled fine: the error is not the cache's
    _drop_cache(kernel)
    return kernel(*args)


def _drop_cache(kernel) -> None:
    """Delete the cache folder's numba files and compile this kernel in memory this time;
    the next run saves a fresh cache."""
    from numba.core.caching import NullCache

    from . import jitcache

    jitcache.clear()
    kernel._cache = NullCache()


def set_threads(n: int) -> None:
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def prepare(examples: dict) -> None:
    """Compile (or load from the cache) the kernels for these example arguments without
    running them, so no threads start: safe right before forking worker processes."""
    for name, args in examples.items():
        kernel = globals()[name]
        signature = tuple(numba.typeof(a) for a in args)
        try:
            kernel.compile(signature)
        except Exception:
            if _CACHE_DIR is None:
                raise
            _drop_cache(kernel)  # a corrupt cache file (see call)
            kernel.compile(signature)
