"""The convolution engine: public wrappers, and the choice between its two paths.

Public wrappers validate, cast to float32 C-contiguous arrays (one signature, one compile),
pad the input by the border mode, turn the kernels into tap lists and allocate the output.
Semantics are those of ``torch.nn.functional.conv2d`` (cross-correlation, no flip):

    out[f, y, x] = act(bias[f] + sum_c sum_i sum_j w[f, c, i, j] * in[c, y*sy + i*dy - pt, x*sx + j*dx - pl])

Two paths compute exactly the same thing, in the same order of float32 operations:
``jit`` (the numba kernel in convcli.jit: parallel, vectorised) and ``numpy`` (whole-plane
NumPy operations, one tap group at a time). Importing and starting numba costs about half a
second per process, so small jobs take the NumPy path: ``auto`` picks it when the whole
job (see ``plan``) is under LEAN_MAX_WORK multiply-adds and numba is not loaded yet.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import geometry
from .errors import InputError, UsageError

BORDER_MODES = {"zero": "constant", "reflect": "reflect", "replicate": "edge", "wrap": "wrap"}
ACTIVATIONS = {"none": 0, "relu": 1, "abs": 2}


METHODS = ("auto", "jit", "numpy")
# Below this many multiply-adds for a whole job, NumPy finishes before numba has started.
# NumPy runs a tap over a 512x512 plane in ~0.3 ms (~1 per ns); numba costs ~0.6 s to load.
LEAN_MAX_WORK = 3e8
_plan = {"method": "auto", "work": None, "threads": None}


def plan(total_work: float | None = None, method: str = "auto", threads: int | None = None
         ) -> str:
    """Decide, for this process and the workers it forks, which path ``auto`` takes.

    total_work: multiply-adds the whole job will need (None: decide per call). Returns the
    path chosen for a job of that size.
    """
    if method not in METHODS:
        raise UsageError(f"engine must be one of {', '.join(METHODS)}, got {method!r}")
    _plan.update(method=method, work=total_work)
    if threads is not None:
        _plan["threads"] = threads
    return _choose(total_work or 0.0)


def _choose(work: float) -> str:
    method = _plan["method"]
    if method != "auto":
        return method
    if "convcli.jit" in sys.modules:  # already paid for
        return "jit"
    total = _plan["work"] if _plan["work"] is not None else work
    return "numpy" if total < LEAN_MAX_WORK else "jit"


def _jit():
    from . import jit

    if _plan["threads"] is not None:
        jit.set_threads(_plan["threads"])
    return jit


def cache_status() -> str:
    """Where the JIT cache is (or why there is none); loads numba."""
    return _jit().CACHE_STATUS


def _correlate_numpy(x, tap_c, tap_i, tap_j, tap_w, ntaps, b, sy, sx, dy, dx, act, out):
    """The jit kernel's arithmetic with whole-plane NumPy operations, in the same order:
    out = bias, then for each group of four taps out += ((w0*a0 + w1*a1) + w2*a2) + w3*a3,
    then single taps, then the activation. Float32 throughout, so results are identical."""
    G, F, Ho, Wo = out.shape
    Cw = x.shape[0] // G
    tmp = np.empty((Ho, Wo), np.float32)
    prod = np.empty((Ho, Wo), np.float32)

    def plane(g, f, t):
        i, j = tap_i[f, t] * dy, tap_j[f, t] * dx
        return x[g * Cw + tap_c[f, t], i:i + (Ho - 1) * sy + 1:sy, j:j + (Wo - 1) * sx + 1:sx]

    for g in range(G):
        for f in range(F):
            acc = out[g, f]
            acc[...] = b[f]
            n, t = ntaps[f], 0
            while t + 4 <= n:
                np.multiply(plane(g, f, t), tap_w[f, t], out=tmp)
                for k in (1, 2, 3):
                    np.multiply(plane(g, f, t + k), tap_w[f, t + k], out=prod)
                    tmp += prod
                acc += tmp
                t += 4
            while t < n:
                np.multiply(plane(g, f, t), tap_w[f, t], out=tmp)
                acc += tmp
                t += 1
    if act == 1:
        np.maximum(out, 0.0, out=out)
    elif act == 2:
        np.abs(out, out=out)


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
           dilation: Any = 1, border: str = "zero", activation: str = "relu",
           method: str = "auto") -> np.ndarray:
    """Apply a bank of F filters to one image, as one CNN conv layer.

    image (C, H, W) or (H, W); weights (F, C, KH, KW) or (KH, KW); bias (F,) or None.
    stride, dilation: int or (y, x). padding: int, (y, x), (top, bottom, left, right),
    "same" (TensorFlow-style, output = ceil(input / stride)) or "valid".
    border: zero | reflect | replicate | wrap. activation: relu | none | abs.
    method: auto | jit | numpy (the same results; see the module's docstring).
    Returns float32 (F, H', W').
    """
    x = _image(image)
    w = _weights(weights)
    if w.shape[1] != x.shape[0]:
        raise InputError(f"the kernels have {w.shape[1]} channels but the image has "
                         f"{x.shape[0]}; they must match")
    return _run(x, w, bias, stride, padding, dilation, border, activation, method)[0]


def conv2d_depthwise(image: Any, weights: Any, bias: Any = None, *, stride: Any = 1,
                     padding: Any = 0, dilation: Any = 1, border: str = "zero",
                     activation: str = "relu", method: str = "auto") -> np.ndarray:
    """Filter every channel of ``image`` (C, H, W) on its own with each 2-D kernel of
    ``weights`` (F, KH, KW) or (F, 1, KH, KW). Returns float32 (F, C, H', W')."""
    x = _image(image)
    w = np.asarray(weights)
    if w.ndim == 3:
        w = w[:, None]
    w = _weights(w)
    if w.shape[1] != 1:
        raise InputError(f"depthwise kernels must be 2-D, got {w.shape[1]} channels")
    out = _run(x, w, bias, stride, padding, dilation, border, activation, method)
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3))


def _run(x: np.ndarray, w: np.ndarray, bias: Any, stride: Any, padding: Any, dilation: Any,
         border: str, activation: str, method: str = "auto") -> np.ndarray:
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
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
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
    args = (xp, *taps, b, s[0], s[1], d[0], d[1], ACTIVATIONS[activation], out)
    if method == "auto":
        method = _choose(float(taps[4].sum()) * groups * ho * wo)
    if method == "jit":
        _jit().correlate(*args)
    else:
        _correlate_numpy(*args)
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
    """Limit the compiled path's threads (e.g. when several worker processes share a machine);
    applies now if numba is loaded, else when it is."""
    _plan["threads"] = int(n)
    if "convcli.jit" in sys.modules:
        _jit()


def prepare() -> None:
    """Compile (or load from the cache) the jit kernel without running it, so no threads
    start: safe right before forking worker processes."""
    x = np.zeros((1, 3, 3), np.float32)
    taps = _taps(np.ones((1, 1, 1, 1), np.float32), skip_zeros=True)
    _jit().prepare((x, *taps, np.zeros(1, np.float32), 1, 1, 1, 1, 0,
                    np.zeros((1, 1, 3, 3), np.float32)))
