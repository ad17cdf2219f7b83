"""The convolution engine: public wrappers, their explicit configuration, and its routes.

Semantics are those of ``torch.nn.functional.conv2d`` (cross-correlation, no flip, torch's
``groups``):

    out[f, y, x] = act(bias[f] + sum_c sum_i sum_j w[f, c, i, j]
                                      * in[g(f)*Cg + c, y*sy + i*dy - pt, x*sx + j*dx - pl])

with Cg = C / groups input channels per group and g(f) = f // (F / groups).

Choices travel as a value: ``EngineConfig(method, algorithm, threads)`` (frozen), passed
with each call. Nothing a call does changes what a later call computes: the only state kept
between calls is memoised plans (pure functions of the weights and geometry) and, for the
library default, the time spent on the NumPy executor (which only picks between executors
that give the same bits, see below).

Algorithms (``EngineConfig.algorithm``; ``auto`` picks one from the layer alone: its
shapes, geometry, weights and whether the input is finite; never from the thread count,
the executor or earlier calls):

- ``direct``: taps applied to whole rows (convcli.jit's kernels); kernels whose SVD shows a
  low rank run as vertical-then-horizontal passes (separable). Small and sparse layers.
- ``gemm``: im2col + BLAS matrix products, band by band (convcli.gemm). Deep layers.
- ``winograd``: F(4x4, 3x3) for 3x3 kernels at stride 1 and dilation 1 (convcli.winograd);
  a non-finite input takes ``gemm`` instead (a tile's transform would spread one inf or
  NaN over all 16 of its outputs).
- ``fft``: large kernels that do not split into separable terms (FFT_MIN_TAPS), float64
  transforms.

Each algorithm sums in its own order, so they agree to float32 rounding, not bit for bit:
within 1e-5 of sum |w x| (plus |bias|) for direct, gemm and fft; for winograd 1e-4 of that
sum taken over the output's 4x4 tile with each filter's largest |w| (see convcli.winograd;
the test suite checks both bounds against a float64 oracle).

Executors (``EngineConfig.method``): ``jit`` (numba kernels) or ``numpy`` (whole-array NumPy
operations in the same order of float32 operations): for every algorithm the two give
identical bits (BLAS does the products and fft is NumPy either way; the direct kernels,
winograd's transforms and gemm's patch copies and activation have NumPy twins). ``auto``
(the library default) is therefore free to decide from history: numba costs about a second
to import and load per process, so auto takes NumPy until the NumPy time spent in this
process exceeds that (rent or buy, JIT_START_SECONDS: at most twice the best choice made
knowing the future), or at once when numba is already loaded or a call is large
(LEAN_MAX_WORK multiply-adds). ``plan_for_job`` decides for a whole job up front instead, so
a one-shot command on a small job never starts numba. ``method="fft"`` is kept as a
shorthand for ``algorithm="fft"``.

Threads (``EngineConfig.threads``, default every core this process may use): the direct
kernels run on numba's threads, set for the calling thread for the duration of the call and
put back (numba keeps the count per thread); the gemm and winograd routes run bands on
that many Python threads while BLAS is held to one thread (see convcli.gemm for what that
means for the host). Results do not depend on the number of threads.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import activation, geometry
from .errors import InputError, UsageError

BORDER_MODES = {"zero": "constant", "reflect": "reflect", "replicate": "edge", "wrap": "wrap"}
ACTIVATIONS = activation.CODES

METHODS = ("auto", "jit", "numpy", "fft")
ALGORITHMS = ("auto", "direct", "gemm", "winograd", "fft")
# Below this many multiply-adds, a call (or, with plan_for_job, a whole job) finishes on
# NumPy before numba has started: NumPy runs a tap over a 512x512 plane in ~0.3 ms (~1 per
# ns); importing numba and loading a kernel from the cache takes 0.86-0.95 s (measured on
# the 2-core VM: JIT_START_SECONDS, the price of "buying" the compiled path).
LEAN_MAX_WORK = 3e8
JIT_START_SECONDS = 0.9


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs a call; results depend on the algorithm only (see the module's
    docstring). method: auto | jit | numpy (| fft: shorthand for algorithm fft).
    algorithm: auto | direct | gemm | winograd | fft. threads: None (every core this
    process may use) or a whole number >= 1."""

    method: str = "auto"
    algorithm: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.algorithm not in ALGORITHMS:
            raise UsageError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got "
                             f"{self.algorithm!r}")
        if self.method == "fft" and self.algorithm not in ("auto", "fft"):
            raise UsageError(f"method 'fft' is the fft algorithm; it cannot be combined with "
                             f"algorithm {self.algorithm!r}")
        if self.threads is not None and not (geometry.is_int(self.threads) and self.threads >= 1):
            raise UsageError(f"threads must be a whole number >= 1, got {self.threads!r}")


DEFAULT = EngineConfig()


def plan_for_job(total_work: float | None, method: str = "auto",
                 threads: int | None = None) -> EngineConfig:
    """The configuration for a whole job of ``total_work`` multiply-adds (None: unknown).
    ``auto`` becomes ``numpy`` below LEAN_MAX_WORK and ``jit`` from there, decided here
    once, so that a small job never starts numba; with an unknown size it stays ``auto``
    (decided per call). Other methods are kept as they are."""
    if method not in METHODS:
        raise UsageError(f"engine must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto" and total_work is not None:
        method = "numpy" if total_work < LEAN_MAX_WORK else "jit"
    return EngineConfig(method=method, threads=threads)


# --- the old module-level interface, kept while callers move to EngineConfig -----------------

def plan(total_work: float | None = None, method: str = "auto", threads: int | None = None
         ) -> str:
    """The path ``plan_for_job`` chooses: "auto", "jit", "numpy" or "fft". Deprecated: it
    changes nothing for later calls (pass ``config=plan_for_job(...)`` to them). When it
    says "jit" it imports numba now, which only moves later ``auto`` calls to the executor
    that gives the same bits."""
    config = plan_for_job(total_work, method, threads)
    if config.method == "jit":
        import_compiler()
    return config.method


def set_threads(n: int) -> None:
    """Deprecated, and without effect: threads are ``EngineConfig.threads`` of each call."""
    if not (geometry.is_int(n) and n >= 1):
        raise UsageError(f"threads must be a whole number >= 1, got {n!r}")


def import_compiler() -> None:
    """Import numba (about 0.4 s) but load no kernel: numba's threading layer starts with the
    first kernel, and must not be inherited by a process forked from a thread other than
    the main one (Dask forks its local workers from a background thread)."""
    from . import jit  # noqa: F401


def cache_status() -> str:
    """Where the JIT cache is (or why there is none); loads numba."""
    from . import jit

    return jit.CACHE_STATUS


def prepare(config: EngineConfig | None = None) -> None:
    """Compile (or load from the cache) every numba kernel ``config`` may run, without
    running them, so no threads start: safe right before forking worker processes. Nothing
    to do for ``method="numpy"`` or ``"fft"``."""
    if config is not None and config.method in ("numpy", "fft"):
        return
    from . import jit

    source = _source(np.zeros((1, 5, 5), np.float32), 1)
    w = np.ones((1, 1, 5, 5), np.float32)  # rank 1: has a separable plan too
    b, out = np.zeros(1, np.float32), np.zeros((1, 1, 1, 1), np.float32)
    dense = _dense_plan(w, source, 1, 1, 1, True, 1)
    terms = _separable_terms(w)
    assert terms is not None  # a rank-1 5x5 kernel always splits
    sep = _separable_plan(terms, source, 1, 1, 1, 1)
    z, relu = np.zeros, activation.RELU
    jit.prepare({
        jit.correlate: (source.src, 5, 1, *dense, b, relu, out),
        jit.correlate_unpadded: (z((1, 5, 5), np.float32), 0, 0, 5, 1, 1, 5, 1, 1, *dense,
                                 b, relu, out),
        jit.correlate_separable: (source.src, 5, 1, *sep, b, relu, 1, out),
        jit.winograd_input: (z((1, 6, 6), np.float32), 0, 0, 0, 1, z((36, 1, 1), np.float32)),
        jit.winograd_output: (z((36, 1, 1), np.float32), b, relu, 0, 1, 1,
                              z((1, 4, 4), np.float32)),
        jit.im2col: (z((1, 1, 4), np.float32), *[z(1, np.int64)] * 3, 0, 0, 1, 1, 1,
                     z((2, 1), np.float32)),
        jit.activate: (z((1, 1), np.float32), 0, 1, relu),
        jit.pool_pass: (z((1, 1, 1), np.float32), True, 1, 1, 1, 0, True, z(0, np.int64),
                        z(0, np.int64), z((1, 1, 1), np.float32)),
        jit.to_pixels: (z(1, np.float32), 0.0, 1.0, np.float32(0), np.float32(1), 1.0, 255.0,
                        True, z(1, np.uint16)),
    })


# --- the public wrappers --------------------------------------------------------------------

def conv2d(image: Any, weights: Any, bias: Any = None, *, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1, border: str = "zero", activation: str = "relu",
           method: str | None = None, config: EngineConfig | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """Apply a bank of F filters to one image, as one CNN conv layer.

    image (C, H, W) or (H, W); weights (F, C/groups, KH, KW) or (KH, KW); bias (F,) or None.
    stride, dilation: int or (y, x). padding: int, (y, x), (top, bottom, left, right),
    "same" (TensorFlow-style, output = ceil(input / stride)) or "valid". groups: as in
    torch (C and F divisible by it; groups == C is a depthwise layer).
    border: zero | reflect | replicate | wrap. activation: relu | none | abs.
    config: an EngineConfig (see the module's docstring); ``method`` overrides its method.
    out: a C-contiguous float32 array of the output's shape to write into (returned).
    Returns float32 (F, H', W').
    """
    cfg = _config(config, method)
    x = _image(image)
    w = _weights(weights)
    if not (geometry.is_int(groups) and groups >= 1):
        raise UsageError(f"groups must be a whole number >= 1, got {groups!r}")
    groups = int(groups)
    F, Cg = w.shape[:2]
    if x.shape[0] % groups or F % groups:
        raise InputError(f"groups ({groups}) must divide both the image's channels "
                         f"({x.shape[0]}) and the number of filters ({F})")
    if Cg * groups != x.shape[0]:
        per = "" if groups == 1 else f" per group of {groups}"
        raise InputError(f"the kernels have {Cg} channels{per} but the image has "
                         f"{x.shape[0]}; they must match")
    target = None
    if out is not None:
        target = out
        if isinstance(image, np.ndarray) and np.may_share_memory(out, image):
            raise UsageError("out must not share memory with the image")
    result = _run(x, w, bias, stride, padding, dilation, border, activation, cfg, groups, 1,
                  target)
    return result[0] if target is None else target


def conv2d_depthwise(image: Any, weights: Any, bias: Any = None, *, stride: Any = 1,
                     padding: Any = 0, dilation: Any = 1, border: str = "zero",
                     activation: str = "relu", method: str | None = None,
                     config: EngineConfig | None = None) -> np.ndarray:
    """Filter every channel of ``image`` (C, H, W) on its own with each 2-D kernel of
    ``weights`` (F, KH, KW) or (F, 1, KH, KW). Returns float32 (F, C, H', W'). (torch's
    depthwise layer, one filter per channel, is ``conv2d(..., groups=C)``.)"""
    cfg = _config(config, method)
    x = _image(image)
    w = np.asarray(weights)
    if w.ndim == 3:
        w = w[:, None]
    w = _weights(w)
    if w.shape[1] != 1:
        raise InputError(f"depthwise kernels must be 2-D, got {w.shape[1]} channels")
    out = _run(x, w, bias, stride, padding, dilation, border, activation, cfg, 1, x.shape[0])
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3))


def _config(config: EngineConfig | None, method: str | None) -> EngineConfig:
    if config is None:
        config = DEFAULT
    elif not isinstance(config, EngineConfig):
        raise UsageError(f"config must be an EngineConfig, got {type(config).__name__}")
    if method is not None and method != config.method:
        if method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        config = replace(config, method=method,
                         algorithm="auto" if method == "fft" else config.algorithm)
    return config


def _run(x: np.ndarray, w: np.ndarray, bias: Any, stride: Any, padding: Any, dilation: Any,
         border: str, activation_name: str, cfg: EngineConfig, groups: int, copies: int,
         target: np.ndarray | None = None) -> np.ndarray:
    """Shared by both wrappers: validate settings, pad, allocate (copies, F, Ho, Wo), run.
    ``copies`` > 1: each channel on its own with every filter (conv2d_depthwise)."""
    try:
        s = geometry.pair(stride, "stride")
        d = geometry.pair(dilation, "dilation")
        spec = geometry.padding(padding)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if border not in BORDER_MODES:
        raise UsageError(f"border must be one of {', '.join(BORDER_MODES)}, got {border!r}")
    if activation_name not in ACTIVATIONS:
        raise UsageError(f"activation must be one of {', '.join(ACTIVATIONS)}, got "
                         f"{activation_name!r}")
    F, Cw, KH, KW = w.shape
    b = np.zeros(F, np.float32) if bias is None else \
        np.ascontiguousarray(bias, np.float32).reshape(-1)
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
    if target is None:
        out = np.empty((copies, F, ho, wo), np.float32)
    else:
        if not (isinstance(target, np.ndarray) and target.dtype == np.float32
                and target.shape == (F, ho, wo) and target.flags.c_contiguous
                and target.flags.writeable):
            got = (f"{target.dtype} {target.shape}" if isinstance(target, np.ndarray)
                   else type(target).__name__)
            raise UsageError(f"out must be a writable C-contiguous float32 array of shape "
                             f"{(F, ho, wo)}, got {got}")
        out = target[None]
    # Skipping zero taps (and splitting kernels into separable terms, whose zeros fall
    # elsewhere), and Winograd's tiles, are exact only when x is finite (0 * inf is NaN).
    finite = _Finite(x)
    act = ACTIVATIONS[activation_name]
    threads = cfg.threads or _cores()
    plans = _plans_for(w, groups)
    algorithm = _algorithm(cfg, w, plans, groups, copies, s, d, finite, ho, wo)
    if algorithm == "winograd":
        from . import gemm, winograd

        def transform():
            with gemm.blas_single_threaded():
                return winograd.filter_transform(w, groups)
        u = _memo(plans, "winograd", transform)
        # A zero border is read in place (the transforms pad each tile row as they go).
        src, at = (x, (pads[0], pads[2])) if border == "zero" else (_pad(x, pads, border), (0, 0))
        with _executor(cfg, float(F * Cw * 9 * ho * wo)) as jit:
            gemm.run_winograd(src, at, u, b, act, out[0], threads, jit)
        return out
    if algorithm == "direct":
        _direct(x, w, b, s, d, pads, border, act, cfg, groups, plans, finite, threads, out)
        return out
    xp = _pad(x, pads, border)
    if algorithm == "fft":
        _correlate_fft(xp, w, b, s, d, act, groups, out)
        return out
    from . import gemm

    plan_ = _memo(plans, ("gemm", s, d, xp.shape[1:]),
                  lambda: gemm.gemm_plan(w, groups, s, d, xp.shape[1:]))
    with _executor(cfg, float(F * Cw * KH * KW * ho * wo)) as jit:
        gemm.run_gemm(xp, plan_, b, act, out[0], threads, jit)
    return out


def _direct(x, w, b, s, d, pads, border, act, cfg, groups, plans, finite, threads, out):
    """The direct kernels: dense tap lists, or separable terms. With a zero border and
    columns at stride 1, numba reads the image in place (jit.correlate_unpadded); otherwise
    both executors read a padded copy (jit.correlate and its NumPy twin; same values)."""
    copies, F, ho, wo = out.shape
    KH = w.shape[2]
    # Finiteness changes the plan only for kernels with zeros or separable terms.
    terms = _memo(plans, "separable", lambda: _separable_terms(w))
    asks = terms is not None or _memo(plans, "zeros", lambda: not np.all(w))
    exact = bool(finite) if asks else True
    if not (terms is not None and exact):
        taps = _memo(plans, ("taps", exact), lambda: _dense_taps(w, exact, groups))
        work = float(len(taps[0])) * copies * ho * wo
        if border == "zero" and any(pads) and s[1] == 1:
            with _executor(cfg, work) as jit:
                if jit is not None:
                    f, chan, i, j, ws, ptr = taps
                    brows, cols = _memo(plans, ("unpadded", d[1]),
                                        lambda: ((chan * KH + i).astype(np.int64),
                                                 (j * d[1]).astype(np.int64)))
                    width = x.shape[2] + pads[2] + pads[3]
                    # a row buffer each; room to balance
                    chunks = min(copies * groups * ho, 8 * threads)
                    jit.call(jit.correlate_unpadded, x, pads[0], pads[2], width, s[0], d[0], KH,
                             groups, chunks, ptr, brows, cols, ws, b, act, out, threads=threads)
                    return
    xp = _pad(x, pads, border)
    source = _source(xp, s[1])
    group_rows = w.shape[1] * source.height
    separable, plan_ = _memo(plans, ("direct", source.phases, source.channels, source.height,
                                     s[1], d, exact),
                             lambda: _direct_plan(w, plans, source, s[1], d, exact, groups))
    if separable:
        work = float(len(plan_[2]) + len(plan_[7])) * copies * ho * wo
        args = (source.src, group_rows, s[0], *plan_, b, act, source.phases, out)
    else:
        work = float(len(plan_[1])) * copies * ho * wo
        args = (source.src, group_rows, s[0], *plan_, b, act, out)
    with _executor(cfg, work) as jit:
        if jit is not None:
            jit.call(jit.correlate_separable if separable else jit.correlate, *args,
                     threads=threads)
        else:
            (_correlate_separable_numpy if separable else _correlate_numpy)(*args)


# --- choosing the algorithm and the executor ------------------------------------------------

# Winograd pays from about this many channels and filters per group on an output of at least
# a few tiles. im2col + BLAS pays from GEMM_MIN_FILTERS filters per group, kernels of
# GEMM_MIN_DEPTH weights (C/groups x KH x KW) at least half non-zero (the direct kernels skip
# zeros), and GEMM_MIN_PRODUCT for the two multiplied: below that the direct kernels, which
# read each input row once per tap instead of copying patches, are as fast or faster.
# Measured on one core of the 2-core VM, minimum of 5 (direct / im2col): 16 x 3x7x7 stride 2
# on 3x2048^2 316 / 260 ms; 32 x 3x5x5 on 3x1024^2 197 / 145 ms; 16 x 3x5x5 104 / 146 ms;
# 8 x 3x7x7 171 / 204 ms; 16 x 1x7x7 73 / 68 ms.
WINOGRAD_MIN_CHANNELS = 8
WINOGRAD_MIN_FILTERS = 8
WINOGRAD_MIN_TILES = 16
GEMM_MIN_FILTERS = 16
GEMM_MIN_DEPTH = 48
GEMM_MIN_PRODUCT = 2048
GEMM_MIN_DENSITY = 0.5


class _Finite:
    """Whether an image is all finite, worked out on first use (one pass when it is)."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.value: bool | None = None

    def __bool__(self) -> bool:
        if self.value is None:
            self.value = bool(np.isfinite(self.x.sum())) or bool(np.isfinite(self.x).all())
        return self.value


def _algorithm(cfg: EngineConfig, w: np.ndarray, plans: dict, groups: int, copies: int, s, d,
               finite, ho: int, wo: int) -> str:
    requested = "fft" if cfg.method == "fft" else cfg.algorithm
    F, Cg, KH, KW = w.shape
    fg = F // groups
    if requested in ("gemm", "winograd") and copies > 1:
        raise UsageError(f"conv2d_depthwise runs the direct and fft algorithms; for "
                         f"{requested}, use conv2d with groups")
    if requested == "winograd":
        if not (KH == KW == 3 and s == (1, 1) and d == (1, 1)):
            raise UsageError(f"the winograd algorithm needs 3x3 kernels at stride 1 and "
                             f"dilation 1, got {KH}x{KW} kernels at stride {s[0]},{s[1]} and "
                             f"dilation {d[0]},{d[1]}")
        return "winograd" if finite else "gemm"
    if requested != "auto":
        return requested
    # Weights and geometry first: most layers never need to ask whether x is finite.
    if _memo(plans, "wants_fft", lambda: _wants_fft(w)) and finite:
        return "fft"
    if copies > 1 or (_memo(plans, "separable", lambda: _separable_terms(w)) is not None
                      and finite):
        return "direct"
    if (KH == KW == 3 and s == (1, 1) and d == (1, 1)
            and Cg >= WINOGRAD_MIN_CHANNELS and fg >= WINOGRAD_MIN_FILTERS
            and -(-ho // 4) * -(-wo // 4) >= WINOGRAD_MIN_TILES and finite):
        return "winograd"
    density = _memo(plans, "density", lambda: np.count_nonzero(w) / w.size)
    depth = Cg * KH * KW
    if (fg >= GEMM_MIN_FILTERS and depth >= GEMM_MIN_DEPTH and fg * depth >= GEMM_MIN_PRODUCT
            and density >= GEMM_MIN_DENSITY):
        return "gemm"
    return "direct"


def executor(config: EngineConfig | None, work: float) -> "_executor":
    """``with executor(config, work) as jit``: the engine's choice of executor for other
    operations whose numba kernel and NumPy twin give the same bits (pooling, convcli.ops),
    by the same rule as a convolution's (see the module's docstring); jit is the convcli.jit
    module, or None for NumPy. Method ``fft`` counts as ``auto`` here."""
    return _executor(_config(config, None), work)


_numpy_seconds = [0.0]  # time this process spent on the NumPy executor under "auto"


class _executor:
    """``with _executor(cfg, work) as jit``: jit is the convcli.jit module, or None for the
    NumPy twins. Under "auto", NumPy time is added up (rent or buy, see the module's
    docstring): the two give the same bits, so this history never changes a result."""

    def __init__(self, cfg: EngineConfig, work: float):
        method = cfg.method
        if method not in ("jit", "numpy"):
            loaded = "convcli.jit" in sys.modules
            bought = _numpy_seconds[0] >= JIT_START_SECONDS
            method = "jit" if loaded or bought or work >= LEAN_MAX_WORK else "numpy"
            self.renting = method == "numpy"
        else:
            self.renting = False
        self.method = method

    def __enter__(self):
        self.start = time.perf_counter()
        if self.method == "jit":
            from . import jit

            return jit
        return None

    def __exit__(self, *exc) -> None:
        if self.renting:
            _numpy_seconds[0] += time.perf_counter() - self.start


def threads_of(config: EngineConfig | None) -> int:
    """The threads a call with ``config`` runs on."""
    return (config.threads if config is not None else None) or _cores()


def _cores() -> int:
    """Cores this process may run on (its affinity, which a batch's workers may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_PLANS: dict = {}  # (shape, weight bytes, groups) -> {what: plan}, one entry per bank
_PLANS_LOCK = threading.Lock()
MEMO_BANKS = 64  # banks remembered (the oldest is dropped first), and plans per bank


def _plans_for(w: np.ndarray, groups: int) -> dict:
    """The plans memoised for these weights: the same bank runs over many images, and its
    plans are pure functions of the weights and the geometry. One lookup per call compares
    the weights' bytes; the plans within are found by small keys."""
    key = (w.shape, w.tobytes(), groups)
    plans = _PLANS.get(key)
    if plans is None:
        with _PLANS_LOCK:
            plans = _PLANS.get(key)
            if plans is None:
                if len(_PLANS) >= MEMO_BANKS:
                    _PLANS.pop(next(iter(_PLANS)))
                plans = _PLANS[key] = {}
    return plans


def _memo(plans: dict, what, make):
    """make(), remembered in a bank's plans under ``what`` (a plan made twice by two
    threads at once is the same plan)."""
    found = plans.get(what, plans)
    if found is plans:
        found = make()
        with _PLANS_LOCK:
            if len(plans) >= MEMO_BANKS:
                plans.pop(next(iter(plans)))
            plans[what] = found
    return found


# --- the direct plan both executors run ------------------------------------------------------
#
# The padded input (C, Hp, Wp) is laid out as rows of a 2-D array ``src`` (P*C*Hp, Wq): with
# a column stride sx > 1 it is split into P = sx column phases (phase p holds columns p,
# p + sx, ...), so that every tap reads a unit-stride run of columns whatever the stride
# (the polyphase form of a strided convolution). Row r of channel c in phase p is src row
# (p*C + c)*Hp + r. A tap at kernel row i, column j of filter f reads, for output row y of
# copy g, src row (p*C + c + g(f)*Cg)*Hp + i*dy + g*Cw*Hp + y*sy with p = (j*dx) % sx,
# starting at column (j*dx) // sx.


@dataclass(frozen=True)
class _Source:
    src: np.ndarray  # (P*C*Hp, Wq) float32
    phases: int
    channels: int
    height: int  # Hp

    def row(self, phase, channel, r):
        """Works on ints and on integer arrays alike."""
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


def _direct_plan(w, plans, source, sx, d, finite, groups):
    terms = _memo(plans, "separable", lambda: _separable_terms(w)) if finite else None
    if terms is not None:
        return True, _separable_plan(terms, source, sx, d[0], d[1], groups)
    return False, _dense_plan(w, source, sx, d[0], d[1], finite, groups)


def _dense_taps(w: np.ndarray, skip_zeros: bool, groups: int):
    """Every tap in (filter, channel, row, column) order, zero weights left out when
    ``skip_zeros``: (filter, channel of the copy, kernel row, kernel column, weight, and
    ptr: filter f's taps are [ptr[f], ptr[f+1]))."""
    F, Cg = w.shape[:2]
    f, c, i, j = np.nonzero(w) if skip_zeros else np.indices(w.shape).reshape(4, -1)
    ptr = np.zeros(F + 1, np.int64)
    np.cumsum(np.bincount(f, minlength=F), out=ptr[1:])
    return f, c + (f // (F // groups)) * Cg, i, j, np.ascontiguousarray(w[f, c, i, j]), ptr


def _dense_plan(w: np.ndarray, source: _Source, sx: int, dy: int, dx: int, skip_zeros: bool,
                groups: int):
    """CSR tap lists for a padded source: filter f's taps are [ptr[f], ptr[f+1]) of (rows,
    cols, ws) (see _dense_taps and the layout above)."""
    _, chan, i, j, ws, ptr = _dense_taps(w, skip_zeros, groups)
    rows = source.row((j * dx) % sx, chan, i * dy).astype(np.int64)
    cols = ((j * dx) // sx).astype(np.int64)
    return ptr, rows, cols, ws


# A kernel plane of rank r costs r*(KH + KW) taps as vertical-then-horizontal passes instead
# of its non-zero count; take that path when it saves at least a third. Banks of more than
# SEPARABLE_MAX_PLANES kernel planes (deep layers, which im2col serves better) are not
# analysed: an SVD per plane would cost more than the convolution it could save.
SEPARABLE_GAIN = 1.5
SEPARABLE_MAX_PLANES = 64


@dataclass(frozen=True)
class _Terms:
    """Kernels as sums of outer products: term t is v[t] (KH) x h[t] (KW) on channel
    chan[t] of filter filt[t], in (filter, channel, term) order."""
    filters: int
    channels: int  # per group
    filt: np.ndarray
    chan: np.ndarray
    v: np.ndarray  # (T, KH) float32
    h: np.ndarray  # (T, KW) float32

    def count(self, f: int) -> int:
        """How many terms filter f has."""
        return int(np.count_nonzero(self.filt == f))


def _separable_terms(w: np.ndarray) -> _Terms | None:
    """Each plane as a sum of outer products from its SVD, keeping singular values above
    float32 resolution; None when that would not be cheaper than the dense taps."""
    F, Cg, kh, kw = w.shape
    if (kh + kw) * SEPARABLE_GAIN >= kh * kw:  # cannot pay off even at rank 1 (e.g. 3x3)
        return None
    if F * Cg > SEPARABLE_MAX_PLANES:
        return None
    planes = w.reshape(F * Cg, kh, kw).astype(np.float64)
    u, sv, vt = np.linalg.svd(planes)  # LAPACK plane by plane, as one call each would
    used = sv[:, 0] != 0
    keep = (sv > sv[:, :1] * 1e-7) & used[:, None]
    plane, k = np.nonzero(keep)
    v = (u[plane, :, k] * sv[plane, k][:, None]).astype(np.float32)
    h = vt[plane, k].astype(np.float32)
    dense_cost = np.count_nonzero(planes[used])
    sep_cost = np.count_nonzero(v) + np.count_nonzero(h)
    if sep_cost * SEPARABLE_GAIN > dense_cost:
        return None
    return _Terms(F, Cg, plane // Cg, plane % Cg, v, h)


def _separable_plan(terms: _Terms, source: _Source, sx: int, dy: int, dx: int, groups: int):
    """Tap lists of separable kernels (see jit.correlate_separable): term t sums its
    vertical taps per column phase p ([vptr[t*P+p], vptr[t*P+p+1]) of vrows, vws), then
    its horizontal taps ([hptr[t], hptr[t+1]) of hphase, hcols, hws); filter f's terms are
    [term_ptr[f], term_ptr[f+1])."""
    P, T, F = source.phases, len(terms.filt), terms.filters
    channel = terms.chan + (terms.filt // (F // groups)) * terms.channels
    t, p, i = np.nonzero(np.broadcast_to((terms.v != 0)[:, None, :], (T, P, terms.v.shape[1])))
    vrows = source.row(p, channel[t], i * dy).astype(np.int64)
    vptr = np.zeros(T * P + 1, np.int64)
    np.cumsum(np.bincount(t * P + p, minlength=T * P), out=vptr[1:])
    th, j = np.nonzero(terms.h)
    hptr = np.zeros(T + 1, np.int64)
    np.cumsum(np.bincount(th, minlength=T), out=hptr[1:])
    term_ptr = np.zeros(F + 1, np.int64)
    np.cumsum(np.bincount(terms.filt, minlength=F), out=term_ptr[1:])
    return (term_ptr, vptr, vrows, np.zeros(len(vrows), np.int64),
            np.ascontiguousarray(terms.v[t, i], np.float32), hptr,
            ((j * dx) % sx).astype(np.int64), ((j * dx) // sx).astype(np.int64),
            np.ascontiguousarray(terms.h[th, j], np.float32))


# --- large kernels: correlation through the FFT ---------------------------------------------

# Direct correlation costs ~KH*KW multiply-adds per output pixel; the FFT costs ~log(size)
# per pixel whatever the kernel. Measured on 2 cores, 1024x1024, two random kernels: 31x31
# direct 69 ms / FFT 75 ms; 41x41 68 / 66 ms; 63x63 175 / 71 ms. So from about 40x40 on.
FFT_MIN_TAPS = 1600


def _wants_fft(w: np.ndarray) -> bool:
    """Large kernels that do not split into a few separable terms (see FFT_MIN_TAPS)."""
    dense = np.count_nonzero(w, axis=(2, 3))
    return bool(dense.min() >= FFT_MIN_TAPS) and _separable_terms(w) is None


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


def _correlate_fft(xp, w, b, stride, dilation, act, groups, out):
    """Every (copy, filter) map as sum over its channels of irfft(rfft(x) * conj(rfft(k))),
    in float64 (so the result is as close to the exact sums as the direct path), then
    strided, biased and activated. Circular correlation equals the linear one on the valid
    part because the transform is at least as large as the padded input."""
    G, F, Ho, Wo = out.shape
    Cw = w.shape[1]
    fg = F // groups
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
            first = g * Cw + (f // fg) * Cw
            full = np.fft.irfft2((xspec[first:first + Cw] * kspec).sum(axis=0), s=(n0, n1))
            out[g, f] = full[:(Ho - 1) * sy + 1:sy, :(Wo - 1) * sx + 1:sx] + b[f]
    _activate_numpy(out, act)


# --- the NumPy executor of the direct plans: the jit kernels' arithmetic on whole planes ----

def _apply_taps_numpy(dst: np.ndarray, planes, ws: np.ndarray, start: int, stop: int) -> None:
    """dst += sum of ws[t] * planes(t), grouped 8, 4, 1 exactly like jit._apply_taps:
    dst += (((w0*a0 + w1*a1) + w2*a2) + ...), so float32 results are bitwise identical."""
    tmp = np.empty_like(dst)
    prod = np.empty_like(dst)
    sizes = [8] * ((stop - start) // 8)
    sizes += [4] * (((stop - start) % 8) // 4) + [1] * ((stop - start) % 4)
    t = start
    for size in sizes:
        np.multiply(planes(t), ws[t], out=tmp)
        for k in range(1, size):
            np.multiply(planes(t + k), ws[t + k], out=prod)
            tmp += prod
        dst += tmp
        t += size


def _activate_numpy(out: np.ndarray, act: int) -> None:
    if act == activation.RELU:
        np.maximum(out, np.float32(0.0), out=out)
    elif act == activation.ABS:
        np.abs(out, out=out)


def _correlate_numpy(src, group_rows, sy, ptr, rows, cols, ws, b, act, out):
    G, F, Ho, Wo = out.shape
    for g in range(G):
        for f in range(F):
            acc = out[g, f]
            acc[...] = b[f]

            def plane(t):  # used at once, inside this iteration
                r = rows[t] + g * group_rows  # noqa: B023
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

                    def vplane(t):  # used at once, inside this iteration
                        r = vrows[t] + g * group_rows  # noqa: B023
                        return src[r:r + (Ho - 1) * sy + 1:sy, :]
                    _apply_taps_numpy(tmp[p], vplane, vws, vptr[k * phases + p],
                                      vptr[k * phases + p + 1])
                _apply_taps_numpy(acc, lambda t: tmp[hphase[t], :, hcols[t]:hcols[t] + Wo],
                                  hws, hptr[k], hptr[k + 1])
    _activate_numpy(out, act)


# --- inputs -------------------------------------------------------------------------------

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
    return np.pad(x, ((0, 0), (t, b), (l, r)), mode=BORDER_MODES[border])  # type: ignore[call-overload]
