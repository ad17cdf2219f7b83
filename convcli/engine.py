"""The convolution engine: all numba code lives here.

Public wrappers validate, cast to float32 C-contiguous arrays (one signature, one compile),
pad the input by the border mode and allocate the output; the private jitted kernel only
loops. Semantics are those of ``torch.nn.functional.conv2d`` (cross-correlation, no flip):

    out[f, y, x] = act(bias[f] + sum_c sum_i sum_j w[f, c, i, j] * in[c, y*sy + i*dy - pt, x*sx + j*dx - pl])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import geometry
from .errors import InputError, UsageError
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
# types, so exactly one specialisation is compiled (and cached).
_JIT = dict(nogil=True, cache=_CACHE_DIR is not None, error_model="numpy",
            boundscheck=False)

BORDER_MODES = {"zero": "constant", "reflect": "reflect", "replicate": "edge", "wrap": "wrap"}
ACTIVATIONS = {"none": 0, "relu": 1, "abs": 2}


@numba.njit(parallel=True, **_JIT)
def _correlate(x, tap_c, tap_i, tap_j, tap_w, ntaps, b, sy, sx, dy, dx, act, out):
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


def _taps(w: np.ndarray, skip_zeros: bool):
    """Per-filter tap lists (channel, row, column, weight) for the kernel; zero weights are
    left out when that is exact (see the caller)."""
    F = w.shape[0]
    flat = w.reshape(F, -1)
    keep = (flat != 0) if skip_zeros else np.ones(flat.shape, bool)
    ntaps = keep.sum(axis=1).astype(np.int64)
    T = max(1, int(ntaps.max()))
    c, i, j = np.unravel_index(np.arange(flat.shape[1]), w.shape[1:])
    tap_c = np.zeros((F, T), np.int64)
    tap_i = np.zeros((F, T), np.int64)
    tap_j = np.zeros((F, T), np.int64)
    tap_w = np.zeros((F, T), np.float32)
    for f in range(F):
        idx = np.flatnonzero(keep[f])
        n = len(idx)
        tap_c[f, :n], tap_i[f, :n], tap_j[f, :n], tap_w[f, :n] = c[idx], i[idx], j[idx], flat[f, idx]
    return tap_c, tap_i, tap_j, tap_w, ntaps


def conv2d(image: Any, weights: Any, bias: Any = None, *, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, border: str = "zero", activation: str = "relu") -> np.ndarray:
    """Apply a bank of F filters to one image, as one CNN conv layer.

    image (C, H, W) or (H, W); weights (F, C, KH, KW) or (KH, KW); bias (F,) or None.
    stride, dilation: int or (y, x). padding: int, (y, x), (top, bottom, left, right),
    "same" (TensorFlow-style, output = ceil(input / stride)) or "valid".
    border: zero | reflect | replicate | wrap. activation: relu | none | abs.
    Returns float32 (F, H', W').
    """
    x = _image(image)
    w = _weights(weights)
    if w.shape[1] != x.shape[0]:
        raise InputError(f"the kernels have {w.shape[1]} channels but the image has "
                         f"{x.shape[0]}; they must match")
    return _run(x, w, bias, stride, padding, dilation, border, activation)[0]


def conv2d_depthwise(image: Any, weights: Any, bias: Any = None, *, stride: Any = 1,
                     padding: Any = 0, dilation: Any = 1, border: str = "zero",
                     activation: str = "relu") -> np.ndarray:
    """Filter every channel of ``image`` (C, H, W) on its own with each 2-D kernel of
    ``weights`` (F, KH, KW) or (F, 1, KH, KW). Returns float32 (F, C, H', W')."""
    x = _image(image)
    w = np.asarray(weights)
    if w.ndim == 3:
        w = w[:, None]
    w = _weights(w)
    if w.shape[1] != 1:
        raise InputError(f"depthwise kernels must be 2-D, got {w.shape[1]} channels")
    out = _run(x, w, bias, stride, padding, dilation, border, activation)
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3))


def _run(x: np.ndarray, w: np.ndarray, bias: Any, stride: Any, padding: Any, dilation: Any,
         border: str, activation: str) -> np.ndarray:
    """Shared by both wrappers: validate settings, pad, allocate (G, F, Ho, Wo), run."""
    try:
        s = geometry.pair(stride, "stride")
        d = geometry.pair(dilation, "dilation")
        spec = geometry.padding(padding)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if border not in BORDER_MODES:
        raise UsageError(f"border must be one of {', '.join(BORDER_MODES)}, got {border!r}")
    if activation not in ACTIVATIONS:
        raise UsageError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    F, Cw, KH, KW = w.shape
    b = np.zeros(F, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32).reshape(-1)
    if b.shape != (F,):
        raise UsageError(f"bias must hold one value per filter ({F}), got {b.size}")

    hw = (x.shape[1], x.shape[2])
    pads = geometry.resolve_pads(spec, hw, (KH, KW), s, d)
    ho, wo = geometry.output_hw(hw, (KH, KW), s, d, pads)
    if ho < 1 or wo < 1:
        foot = ((KH - 1) * d[0] + 1, (KW - 1) * d[1] + 1)
        raise InputError(f"the image ({hw[0]}x{hw[1]}) is smaller than the kernel's footprint "
                         f"({foot[0]}x{foot[1]}) with padding {padding!r}; use padding 'same' "
                         "or a smaller kernel")
    xp = _pad(x, pads, border)
    groups = x.shape[0] // Cw
    out = np.empty((groups, F, ho, wo), np.float32)
    # Skipping zero taps is exact only when 0 * x == 0 for every pixel, i.e. x is finite.
    taps = _taps(w, skip_zeros=bool(np.isfinite(xp).all()))
    _correlate(xp, *taps, b, s[0], s[1], d[0], d[1], ACTIVATIONS[activation], out)
    return out


def _image(image: Any) -> np.ndarray:
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or 0 in x.shape:
        raise InputError(f"image must be (C, H, W) or (H, W) and non-empty, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _weights(weights: Any) -> np.ndarray:
    w = np.asarray(weights)
    if w.ndim == 2:
        w = w[None, None]
    if w.ndim != 4 or 0 in w.shape:
        raise InputError(f"weights must be (F, C, KH, KW) or (KH, KW), got shape {w.shape}")
    return np.ascontiguousarray(w, dtype=np.float32)


def _pad(x: np.ndarray, pads: geometry.Pads, border: str) -> np.ndarray:
    t, b, l, r = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (t, b), (l, r)), mode=BORDER_MODES[border])


def set_threads(n: int) -> None:
    """Limit the engine's threads (e.g. when several worker processes share a machine)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def prepare() -> None:
    """Compile (or load from the cache) every kernel without running it, so no engine
    threads start: safe right before forking worker processes."""
    x = np.zeros((1, 3, 3), np.float32)
    taps = _taps(np.ones((1, 1, 1, 1), np.float32), skip_zeros=True)
    example = (x, *taps, np.zeros(1, np.float32), 1, 1, 1, 1, 0, np.zeros((1, 1, 3, 3), np.float32))
    _correlate.compile(tuple(numba.typeof(a) for a in example))
