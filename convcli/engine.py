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
Large kernels that do not split into separable terms go through the FFT instead (``fft``,
float64 transforms; see FFT_MIN_TAPS), on either path.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import geometry
from .errors import InputError, UsageError

BORDER_MODES = {"zero": "constant", "reflect": "reflect", "replicate": "edge", "wrap": "wrap"}
ACTIVATIONS = {"none": 0, "relu": 1, "abs": 2}


METHODS = ("auto", "jit", "numpy", "fft")
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


# --- the plan both paths execute ---------------------------------------------------------
#
# The padded input (C, Hp, Wp) is laid out as rows of a 2-D array ``src`` (P*C*Hp, Wq): with
# a column stride sx > 1 it is split into P = sx column phases (phase p holds columns p,
# p + sx, ...), so that every tap reads a unit-stride run of columns whatever the stride
# (the polyphase form of a strided convolution). Row r of channel c in phase p is src row
# (p*C + c)*Hp + r. A tap at kernel row i, column j reads, for output row y of channel
# group g, src row (p*C + c)*Hp + i*dy + g*Cw*Hp + y*sy with p = (j*dx) % sx, starting at
# column (j*dx) // sx.


@dataclass(frozen=True)
class _Source:
    src: np.ndarray  # (P*C*Hp, Wq) float32
    phases: int
    channels: int
    height: int  # Hp

    def row(self, phase, channel, r):
        return (phase * self.channels + channel) * self.height + r


def _source(xp: np.ndarray, sx: int) -> _Source:
    C, Hp, Wp = xp.shape
    if sx == 1:
        return _Source(xp.reshape(C * Hp, Wp), 1, C, Hp)
    wq = -(-Wp // sx)
    ph = np.zeros((sx, C, Hp, wq), np.float32)
    for p in range(sx):
        cols = xp[:, :, p::sx]
        ph[p, :, :, :cols.shape[2]] = cols
    return _Source(ph.reshape(sx * C * Hp, wq), sx, C, Hp)


def _dense_plan(w: np.ndarray, source: _Source, sx: int, dy: int, dx: int, skip_zeros: bool):
    """CSR tap lists: filter f's taps are [ptr[f], ptr[f+1]) of (rows, cols, ws)."""
    F = w.shape[0]
    ptr, rows, cols, ws = [0], [], [], []
    for f in range(F):
        for c, i, j in zip(*np.nonzero(w[f] if skip_zeros else np.ones(w.shape[1:], bool))):
            rows.append(source.row((j * dx) % sx, c, i * dy))
            cols.append((j * dx) // sx)
            ws.append(w[f, c, i, j])
        ptr.append(len(rows))
    return (np.array(ptr, np.int64), np.array(rows, np.int64), np.array(cols, np.int64),
            np.array(ws, np.float32))


# A kernel plane of rank r costs r*(KH + KW) taps as vertical-then-horizontal passes instead
# of its non-zero count; take that path when it saves at least a third.
SEPARABLE_GAIN = 1.5


def _separable_terms(w: np.ndarray):
    """Each filter's planes as sums of outer products v (KH) x h (KW), from the SVD, keeping
    singular values above float32 resolution; None when that would not be cheaper."""
    kh, kw = w.shape[2:]
    if (kh + kw) * SEPARABLE_GAIN >= kh * kw:  # cannot pay off even at rank 1 (e.g. 3x3)
        return None
    terms = []
    dense_cost = sep_cost = 0
    for f in range(w.shape[0]):
        mine = []
        for c in range(w.shape[1]):
            plane = w[f, c].astype(np.float64)
            u, sv, vt = np.linalg.svd(plane)
            if sv[0] == 0:
                continue
            for k in range(int(np.sum(sv > sv[0] * 1e-7))):
                mine.append((c, (u[:, k] * sv[k]).astype(np.float32), vt[k].astype(np.float32)))
            dense_cost += np.count_nonzero(plane)
        sep_cost += sum(np.count_nonzero(v) + np.count_nonzero(h) for _, v, h in mine)
        terms.append(mine)
    if sep_cost * SEPARABLE_GAIN > dense_cost:
        return None
    return terms


def _separable_plan(terms, source: _Source, sx: int, dy: int, dx: int):
    P = source.phases
    term_ptr, vptr, vrows, vws, hptr, hphase, hcols, hws = [0], [0], [], [], [0], [], [], []
    for mine in terms:
        for c, v, h in mine:
            for p in range(P):
                for i in np.flatnonzero(v):
                    vrows.append(source.row(p, c, i * dy))
                    vws.append(v[i])
                vptr.append(len(vrows))
            for j in np.flatnonzero(h):
                hphase.append((j * dx) % sx)
                hcols.append((j * dx) // sx)
                hws.append(h[j])
            hptr.append(len(hws))
        term_ptr.append(term_ptr[-1] + len(mine))
    i64 = lambda a: np.array(a, np.int64)  # noqa: E731
    return (i64(term_ptr), i64(vptr), i64(vrows), np.zeros(len(vrows), np.int64),
            np.array(vws, np.float32), i64(hptr), i64(hphase), i64(hcols),
            np.array(hws, np.float32))


# --- large kernels: correlation through the FFT ---------------------------------------------

# Direct correlation costs ~KH*KW multiply-adds per output pixel; the FFT costs ~log(size)
# per pixel whatever the kernel. Measured on 2 cores, 1024x1024, two random kernels: 31x31
# direct 69 ms / FFT 75 ms; 41x41 68 / 66 ms; 63x63 175 / 71 ms. So from about 40x40 on.
FFT_MIN_TAPS = 1600


def _fast_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: sizes pocketfft transforms quickly."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _correlate_fft(xp, w, b, stride, dilation, act, out):
    """Every (group, filter) map as sum over channels of irfft(rfft(x) * conj(rfft(k))),
    in float64 (so the result is as close to the exact sums as the direct path), then
    strided, biased and activated. Circular correlation equals the linear one on the valid
    part because the transform is at least as large as the padded input."""
    G, F, Ho, Wo = out.shape
    Cw = w.shape[1]
    Hp, Wp = xp.shape[1:]
    (sy, sx), (dy, dx) = stride, dilation
    n0, n1 = _fast_len(Hp), _fast_len(Wp)
    # The input's spectra once (about 8x the float32 input), one kernel's at a time.
    xspec = np.fft.rfft2(xp.astype(np.float64), s=(n0, n1))
    for f in range(F):
        kd = np.zeros((Cw, (w.shape[2] - 1) * dy + 1, (w.shape[3] - 1) * dx + 1))
        kd[:, ::dy, ::dx] = w[f]
        kspec = np.conj(np.fft.rfft2(kd, s=(n0, n1)))
        for g in range(G):
            full = np.fft.irfft2((xspec[g * Cw:(g + 1) * Cw] * kspec).sum(axis=0), s=(n0, n1))
            out[g, f] = full[:(Ho - 1) * sy + 1:sy, :(Wo - 1) * sx + 1:sx] + b[f]
    _activate_numpy(out, act)


# --- the NumPy path: the jit kernels' arithmetic on whole planes, in the same order ---------

def _apply_taps_numpy(dst: np.ndarray, planes, ws: np.ndarray, start: int, stop: int) -> None:
    """dst += sum of ws[t] * planes(t), grouped 8, 4, 1 exactly like jit._apply_taps:
    dst += (((w0*a0 + w1*a1) + w2*a2) + ...), so float32 results are bitwise identical."""
    tmp = np.empty_like(dst)
    prod = np.empty_like(dst)
    groups = [8] * ((stop - start) // 8)
    groups += [4] * (((stop - start) % 8) // 4) + [1] * ((stop - start) % 4)
    t = start
    for size in groups:
        np.multiply(planes(t), ws[t], out=tmp)
        for k in range(1, size):
            np.multiply(planes(t + k), ws[t + k], out=prod)
            tmp += prod
        dst += tmp
        t += size


def _activate_numpy(out: np.ndarray, act: int) -> None:
    if act == 1:
        np.maximum(out, 0.0, out=out)
    elif act == 2:
        np.abs(out, out=out)


def _correlate_numpy(src, group_rows, sy, ptr, rows, cols, ws, b, act, out):
    G, F, Ho, Wo = out.shape
    for g in range(G):
        for f in range(F):
            acc = out[g, f]
            acc[...] = b[f]

            def plane(t):
                r = rows[t] + g * group_rows
                return src[r:r + (Ho - 1) * sy + 1:sy, cols[t]:cols[t] + Wo]
            _apply_taps_numpy(acc, plane, ws, ptr[f], ptr[f + 1])
    _activate_numpy(out, act)


def _correlate_separable_numpy(src, group_rows, sy, term_ptr, vptr, vrows, vcols, vws, hptr,
                               hphase, hcols, hws, b, act, phases, out):
    G, F, Ho, Wo = out.shape
    tmp = np.empty((phases, Ho, src.shape[1]), np.float32)
    for g in range(G):
        for f in range(F):
            acc = out[g, f]
            acc[...] = b[f]
            for k in range(term_ptr[f], term_ptr[f + 1]):
                for p in range(phases):
                    tmp[p] = 0.0

                    def vplane(t):
                        r = vrows[t] + g * group_rows
                        return src[r:r + (Ho - 1) * sy + 1:sy, :]
                    _apply_taps_numpy(tmp[p], vplane, vws, vptr[k * phases + p],
                                      vptr[k * phases + p + 1])
                _apply_taps_numpy(acc, lambda t: tmp[hphase[t], :, hcols[t]:hcols[t] + Wo],
                                  hws, hptr[k], hptr[k + 1])
    _activate_numpy(out, act)


def conv2d(image: Any, weights: Any, bias: Any = None, *, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, border: str = "zero", activation: str = "relu",
           method: str = "auto") -> np.ndarray:
    """Apply a bank of F filters to one image, as one CNN conv layer.

    image (C, H, W) or (H, W); weights (F, C, KH, KW) or (KH, KW); bias (F,) or None.
    stride, dilation: int or (y, x). padding: int, (y, x), (top, bottom, left, right),
    "same" (TensorFlow-style, output = ceil(input / stride)) or "valid".
    border: zero | reflect | replicate | wrap. activation: relu | none | abs.
    method: auto | jit | numpy | fft (see the module's docstring; fft agrees with the others
    to float32 rounding, jit and numpy agree bit for bit).
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
    # Skipping zero taps (and splitting kernels into separable terms, whose zeros fall
    # elsewhere) is exact only when 0 * x == 0 for every pixel, i.e. x is finite.
    finite = bool(np.isfinite(xp).all())
    act = ACTIVATIONS[activation]
    if method == "auto" and _plan["method"] == "fft":
        method = "fft"
    if method == "fft" or (method == "auto" and finite and _wants_fft(w)):
        _correlate_fft(xp, w, b, s, d, act, out)
        return out
    source = _source(xp, s[1])
    group_rows = Cw * source.height
    separable, plan_ = _plan_for(w, source, s[1], d[0], d[1], finite)
    if separable:
        name, args = "correlate_separable", (source.src, group_rows, s[0], *plan_, b, act,
                                              source.phases, out)
        work = (len(plan_[2]) + len(plan_[7])) * groups * ho * wo
    else:
        name, args = "correlate", (source.src, group_rows, s[0], *plan_, b, act, out)
        work = len(plan_[1]) * groups * ho * wo
    if method == "auto":
        method = _choose(float(work))
    if method == "jit":
        _jit().call(name, *args)
    else:
        (_correlate_separable_numpy if separable else _correlate_numpy)(*args)
    return out


def _wants_fft(w: np.ndarray) -> bool:
    """Large kernels that do not split into a few separable terms (see FFT_MIN_TAPS)."""
    dense = np.count_nonzero(w, axis=(2, 3))
    return bool(dense.min() >= FFT_MIN_TAPS) and _separable_terms(w) is None


_PLANS: dict = {}  # the same bank runs over many images: plan once per kernel and geometry


def _plan_for(w: np.ndarray, source: _Source, sx: int, dy: int, dx: int, finite: bool):
    """(separable?, tap plan) for these kernels on this source layout, memoised."""
    key = (w.shape, w.tobytes(), source.phases, source.channels, source.height, sx, dy, dx,
           finite)
    found = _PLANS.get(key)
    if found is None:
        terms = _separable_terms(w) if finite else None
        found = (True, _separable_plan(terms, source, sx, dy, dx)) if terms is not None \
            else (False, _dense_plan(w, source, sx, dy, dx, skip_zeros=finite))
        if len(_PLANS) >= 64:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[key] = found
    return found


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
    if border == "zero":  # the common case, without np.pad's general machinery
        C, H, W = x.shape
        xp = np.zeros((C, H + t + b, W + l + r), np.float32)
        xp[:, t:t + H, l:l + W] = x
        return xp
    return np.pad(x, ((0, 0), (t, b), (l, r)), mode=BORDER_MODES[border])


def set_threads(n: int) -> None:
    """Limit the compiled path's threads (e.g. when several worker processes share a machine);
    applies now if numba is loaded, else when it is."""
    _plan["threads"] = int(n)
    if "convcli.jit" in sys.modules:
        _jit()


def import_compiler() -> None:
    """Import numba (about 0.4 s) but load no kernel: numba's threading layer starts with the
    first kernel, and must not be inherited by a process forked from a thread other than
    the main one (Dask forks its local workers from a background thread)."""
    from . import jit  # noqa: F401


def prepare() -> None:
    """Compile (or load from the cache) the jit kernels without running them, so no threads
    start: safe right before forking worker processes."""
    source = _source(np.zeros((1, 5, 5), np.float32), 1)
    w = np.ones((1, 1, 5, 5), np.float32)  # rank 1: has a separable plan too
    b, out = np.zeros(1, np.float32), np.zeros((1, 1, 1, 1), np.float32)
    dense = _dense_plan(w, source, 1, 1, 1, skip_zeros=True)
    sep = _separable_plan(_separable_terms(w), source, 1, 1, 1)
    _jit().prepare({
        "correlate": (source.src, 5, 1, *dense, b, 1, out),
        "correlate_separable": (source.src, 5, 1, *sep, b, 1, 1, out),
    })
