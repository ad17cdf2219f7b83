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

import numba  # noqa: E402  (after the cache folder is set)

if _CACHE_DIR is not None:
    numba.config.CACHE_DIR = str(_CACHE_DIR)  # in case numba was imported before us
if "NUMBA_THREADING_LAYER" not in os.environ:
    # Batches fork worker processes after compiling here; GNU OpenMP cannot survive a fork,
    # so take a fork-safe layer (non-GNU OpenMP, or numba's own workqueue).
    numba.config.THREADING_LAYER = "forksafe"

# Decorator options in one place. No eager signatures: the wrappers always pass the same
# types, so exactly one specialisation is compiled (and cached). No fastmath: the kernel
# must round exactly like the NumPy path (no reassociation, no fused multiply-add).
_JIT = dict(nogil=True, cache=_CACHE_DIR is not None, error_model="numpy", boundscheck=False)


@numba.njit(parallel=True, **_JIT)
def correlate(x, tap_c, tap_i, tap_j, tap_w, ntaps, b, sy, sx, dy, dx, act, out):
    """Valid cross-correlation of padded ``x`` (G*Cw, Hp, Wp) with filters given as tap
    lists: filter f has ntaps[f] taps, tap t weighing tap_w[f, t] at channel tap_c[f, t],
    kernel row tap_i[f, t] and column tap_j[f, t].

    Channel group g reads input channels [g*Cw, (g+1)*Cw) and writes out[g] (F, Ho, Wo):
    G = 1 is a dense conv layer, Cw = 1 with G = C is depthwise. Parallel over (group, output
    row); each iteration writes only its own rows out[g, :, y, :], so writes are disjoint.
    Taps are applied four at a time, so each pass along an output row does four multiply-adds
    per load and store of the row; the innermost loops have unit stride when sx == 1, which
    LLVM vectorises.
    """
    G, F, Ho, Wo = out.shape
    Cw = x.shape[0] // G
    for gy in numba.prange(G * Ho):
        g = gy // Ho
        y = gy - g * Ho
        c0 = g * Cw
        for f in range(F):
            row = out[g, f, y]
            bf = b[f]
            for xo in range(Wo):
                row[xo] = bf
            n = ntaps[f]
            t = 0
            r = y * sy
            while t + 4 <= n:
                # Slicing first matters: indexing a[o + xo] with a signed offset makes numba
                # check for negative indices on every access, which blocks vectorisation;
                # a slice without a step keeps the view contiguous.
                p0, p1 = x[c0 + tap_c[f, t], r + tap_i[f, t] * dy], x[c0 + tap_c[f, t + 1], r + tap_i[f, t + 1] * dy]
                p2, p3 = x[c0 + tap_c[f, t + 2], r + tap_i[f, t + 2] * dy], x[c0 + tap_c[f, t + 3], r + tap_i[f, t + 3] * dy]
                o0, o1, o2, o3 = tap_j[f, t] * dx, tap_j[f, t + 1] * dx, tap_j[f, t + 2] * dx, tap_j[f, t + 3] * dx
                w0, w1, w2, w3 = tap_w[f, t], tap_w[f, t + 1], tap_w[f, t + 2], tap_w[f, t + 3]
                if sx == 1:
                    a0, a1, a2, a3 = p0[o0:o0 + Wo], p1[o1:o1 + Wo], p2[o2:o2 + Wo], p3[o3:o3 + Wo]
                    for xo in range(Wo):
                        row[xo] += w0 * a0[xo] + w1 * a1[xo] + w2 * a2[xo] + w3 * a3[xo]
                else:
                    b0, b1, b2, b3 = p0[o0::sx], p1[o1::sx], p2[o2::sx], p3[o3::sx]
                    for xo in range(Wo):
                        row[xo] += w0 * b0[xo] + w1 * b1[xo] + w2 * b2[xo] + w3 * b3[xo]
                t += 4
            while t < n:
                p0 = x[c0 + tap_c[f, t], r + tap_i[f, t] * dy]
                o0 = tap_j[f, t] * dx
                w0 = tap_w[f, t]
                if sx == 1:
                    a0 = p0[o0:o0 + Wo]
                    for xo in range(Wo):
                        row[xo] += w0 * a0[xo]
                else:
                    b0 = p0[o0::sx]
                    for xo in range(Wo):
                        row[xo] += w0 * b0[xo]
                t += 1
            if act == 1:
                for xo in range(Wo):
                    if row[xo] < 0.0:
                        row[xo] = 0.0
            elif act == 2:
                for xo in range(Wo):
                    row[xo] = abs(row[xo])



def set_threads(n: int) -> None:
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def prepare(example: tuple) -> None:
    """Compile (or load from the cache) the kernel for these argument types without running
    it, so no threads start: safe right before forking worker processes."""
    correlate.compile(tuple(numba.typeof(a) for a in example))
