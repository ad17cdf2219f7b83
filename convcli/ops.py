"""The layers around a convolution: pooling, activations and input normalisation (NumPy).

Float32 in, float32 out, with the semantics of ``torch.nn.functional``:

- ``max_pool2d`` / ``avg_pool2d``: output size floor((n + pads - footprint) / stride) + 1,
  or with ``ceil_mode`` the ceiling, except that, as in torch, the last window must start
  inside the input or its leading padding (else it is dropped). Padding is never read as a
  value: max pooling takes the largest input value in the window (NaN if the window holds a
  NaN; -inf for a window that holds no input at all, which only padding wider than torch
  allows can give). Average pooling sums the input values in the window and divides by the
  window's size counted up to the end of the padding (``count_include_pad=True``, torch's
  default: padding counts as zeros, but the part of a ``ceil_mode`` window past the padding
  does not count) or by the number of input values in it (``count_include_pad=False``); a
  window without input values gives 0. Padding may differ on each side, (top, bottom,
  left, right), as ONNX allows; torch's symmetric padding is the special case, and "same"
  (TensorFlow's SAME: output ceil(n / stride), the odd pixel after) and "valid" (none) are
  accepted too.
- ``activate``: relu, relu6, clip(min, max), leaky_relu(alpha), hardswish
  (x * relu6(x + 3) / 6), hardsigmoid(alpha, beta) (max(0, min(1, alpha * x + beta)), as
  ONNX; the defaults 1/6 and 1/2 are torch's), sigmoid, tanh, abs, none.
- ``normalize``: (x[c] - mean[c]) / std[c], as torchvision's Normalize.

Pooling is separable: a pass along rows then one along columns (the smaller intermediate
first), each a loop over the kernel's taps of whole-array operations on strided views, so
memory is the output plus one intermediate no larger than the input, never a copy per tap.
The same passes run as a numba kernel (convcli.jit.pool_pass, parallel over output rows)
with the same operations in the same order, so both give the same bits; which one runs is
the engine's choice for the ``config`` passed (convcli.engine.executor: numba when asked,
or under ``auto`` once numba is loaded in the process, as a convolution decides).
"""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import geometry
from .errors import InputError, UsageError

if TYPE_CHECKING:
    from .engine import EngineConfig

FUNCTIONS = ("none", "relu", "abs", "relu6", "clip", "leaky_relu", "hardswish", "hardsigmoid",
             "sigmoid", "tanh", "silu", "elu", "selu", "softplus", "mish")
# Each function's parameters and their defaults (selu's: Klambauer et al. 2017, as torch).
PARAMETERS: dict[str, dict[str, float]] = {
    "clip": {"min": -math.inf, "max": math.inf},
    "leaky_relu": {"alpha": 0.01},
    "hardsigmoid": {"alpha": 1 / 6, "beta": 0.5},
    "elu": {"alpha": 1.0},
    "selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805},
}
PARAMETER_NAMES = tuple(dict.fromkeys(k for p in PARAMETERS.values() for k in p))
MAX_POOL_SIDE = 1025  # a pooling window's side, as a conv kernel's (bank.MAX_KERNEL_SIDE)


# --- activations --------------------------------------------------------------------------

def activate(x: Any, function: str, *, out: np.ndarray | None = None,
             **params: float) -> np.ndarray:
    """``function`` applied to every value of ``x`` (any shape); float32. ``out``: a float32
    array of x's shape to write into (may be x itself, when x is float32)."""
    check_function(function, params)
    a = np.asarray(x, np.float32)
    if out is None:
        out = np.array(a, np.float32, copy=True)
    else:
        if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == a.shape
                and out.flags.writeable):
            raise UsageError(f"out must be a writable float32 array of shape {a.shape}")
        if out is not a:
            np.copyto(out, a)
    with np.errstate(all="ignore"):  # inf and NaN are values here, as in torch
        _apply(out, function, dict(PARAMETERS.get(function, {}), **params))
    return out


def _apply(out: np.ndarray, function: str, p: dict[str, float]) -> None:
    """``function`` applied to ``out`` in place."""
    f32 = np.float32
    if function == "relu":
        np.maximum(out, f32(0), out=out)
    elif function == "abs":
        np.abs(out, out=out)
    elif function == "relu6":
        np.clip(out, f32(0), f32(6), out=out)
    elif function == "clip":
        np.clip(out, f32(p["min"]), f32(p["max"]), out=out)
    elif function == "leaky_relu":
        np.multiply(out, f32(p["alpha"]), out=out, where=out < 0)
    elif function == "hardswish":  # x * relu6(x + 3) / 6, in torch's order of operations
        r = out + f32(3)
        np.clip(r, f32(0), f32(6), out=r)
        np.multiply(out, r, out=out)
        np.divide(out, f32(6), out=out)
    elif function == "hardsigmoid":
        np.multiply(out, f32(p["alpha"]), out=out)
        np.add(out, f32(p["beta"]), out=out)
        np.clip(out, f32(0), f32(1), out=out)
    elif function == "sigmoid":
        _sigmoid(out)
    elif function == "tanh":
        np.tanh(out, out=out)
    elif function == "silu":  # x * sigmoid(x)
        gate = out.copy()
        _sigmoid(gate)
        np.multiply(out, gate, out=out)
    elif function in ("elu", "selu"):  # alpha * (e^x - 1) below zero (expm1: exact near 0)
        below = np.expm1(np.minimum(out, f32(0)))
        np.multiply(below, f32(p["alpha"]), out=below)
        np.copyto(out, below, where=out <= 0)
        if function == "selu":
            np.multiply(out, f32(p["gamma"]), out=out)
    elif function == "softplus":
        _softplus(out)
    elif function == "mish":  # x * tanh(softplus(x))
        gate = out.copy()
        _softplus(gate)
        np.tanh(gate, out=gate)
        np.multiply(out, gate, out=out)


def _sigmoid(out: np.ndarray) -> None:
    """1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) below, in place: e^-|x| never
    overflows, and the small values on the negative side keep their relative precision."""
    f32 = np.float32
    negative = out < 0
    e = np.abs(out)
    np.negative(e, out=e)
    np.exp(e, out=e)
    np.copyto(out, f32(1))
    np.copyto(out, e, where=negative)
    e += f32(1)
    np.divide(out, e, out=out)  # NaN stays NaN: e is NaN there


def _softplus(out: np.ndarray) -> None:
    """log(1 + e^x) in place, as max(x, 0) + log1p(e^-|x|): no overflow for large x, and
    equal in float32 to torch's (which returns x above 20) and ONNX's Softplus."""
    tail = np.abs(out)
    np.negative(tail, out=tail)
    np.exp(tail, out=tail)
    np.log1p(tail, out=tail)
    np.maximum(out, np.float32(0), out=out)
    np.add(out, tail, out=out)


def check_function(function: Any, params: dict[str, Any]) -> None:
    """UsageError unless ``function`` is known and ``params`` are its own parameters, with
    values it accepts."""
    if not (isinstance(function, str) and function in FUNCTIONS):
        raise UsageError(f"activation must be one of {', '.join(FUNCTIONS)}, got "
                         f"{function!r}{_hint(function, FUNCTIONS)}")
    takes = PARAMETERS.get(function, {})
    for key, value in params.items():
        if key not in takes:
            what = f"takes {', '.join(takes)}" if takes else "takes no parameters"
            raise UsageError(f"{function} {what}, got {key}")
        number = _number(value)
        if math.isnan(number) or (key not in ("min", "max") and not math.isfinite(number)):
            raise UsageError(f"{function}'s {key} must be a "
                             + ("number" if key in ("min", "max") else "finite number")
                             + f", got {geometry.brief(value)}")
    if function == "clip":
        p = dict(takes, **params)
        if p["min"] > p["max"]:
            raise UsageError(f"clip needs min <= max, got min {p['min']:g} and max "
                             f"{p['max']:g}")


# --- normalisation ------------------------------------------------------------------------

def normalize(x: Any, mean: Any, std: Any) -> np.ndarray:
    """(x[c] - mean[c]) / std[c] for x (C, H, W) (or (H, W)); mean and std hold one value
    per channel, or one for every channel. float32, computed in float32 as torchvision."""
    a = as_input(x)
    m, s = _per_channel(mean, "mean"), _per_channel(std, "std")
    if not (s > 0).all():
        raise UsageError(f"std must be > 0, got {geometry.brief(std)}")
    c = a.shape[0]
    for name, v in (("mean", m), ("std", s)):
        if v.size not in (1, c):
            counts = "one value" if v.size == 1 else f"{v.size} values"
            raise InputError(f"{name} has {counts} but the input has {c} channels; give one per "
                             "channel or one for all")
    out = np.subtract(a, m[:, None, None])
    np.divide(out, s[:, None, None], out=out)
    return out.reshape(np.shape(x)) if np.ndim(x) == 2 else out


MAX_LRN_SIZE = 4096  # channels in one local response normalisation window


def local_response_norm(x: Any, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        bias: float = 1.0) -> np.ndarray:
    """ONNX's LRN of x (C, H, W) (or (H, W)): y[c] = x[c] / (bias + alpha / size * s[c])
    ** beta, where s[c] sums x[i]² over the channels i from c - floor((size - 1) / 2) to
    c + ceil((size - 1) / 2) that exist. torch.nn.functional.local_response_norm is the
    same for odd sizes (for even ones torch puts the extra channel before c, ONNX after).
    Computed in float64, float32 out."""
    check_lrn(size, alpha, beta, bias)
    a = as_input(x)
    c = a.shape[0]
    before = (size - 1) // 2
    after = size - 1 - before
    squares = np.square(a, dtype=np.float64)
    out = np.empty(a.shape, np.float32)
    scale = np.float64(alpha) / size
    with np.errstate(all="ignore"):  # inf and NaN are values here, as in the references
        for k in range(c):
            window = squares[max(0, k - before):min(c, k + after + 1)].sum(axis=0)
            np.multiply(window, scale, out=window)
            window += bias
            np.power(window, beta, out=window)
            np.divide(a[k], window, out=out[k], casting="unsafe")
    return out.reshape(np.shape(x)) if np.ndim(x) == 2 else out


def check_lrn(size: Any, alpha: Any, beta: Any, bias: Any) -> None:
    """UsageError unless the LRN settings are usable: a whole size of 1 to MAX_LRN_SIZE
    channels and finite alpha, beta and bias."""
    if not (geometry.is_int(size) and 1 <= size <= MAX_LRN_SIZE):
        raise UsageError(f"size must be a whole number of channels from 1 to {MAX_LRN_SIZE}, "
                         f"got {geometry.brief(size)}")
    for key, value in (("alpha", alpha), ("beta", beta), ("bias", bias)):
        if not math.isfinite(_number(value)):
            raise UsageError(f"{key} must be a finite number, got {geometry.brief(value)}")


def _per_channel(v: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(v, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number or a list of numbers, got "
                         f"{geometry.brief(v)}") from None
    if arr.size == 0 or not np.isfinite(arr).all():
        raise UsageError(f"{what} must be finite numbers, one per channel or one for all, got "
                         f"{geometry.brief(v)}")
    return arr.astype(np.float32)


# --- pooling ------------------------------------------------------------------------------

def max_pool2d(x: Any, kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, *, config: EngineConfig | None = None) -> np.ndarray:
    """torch.nn.functional.max_pool2d of x (C, H, W) (or (H, W)), padding also
    (top, bottom, left, right), "same" or "valid" (see the module's docstring). config: the
    engine's EngineConfig, which picks numba or NumPy as for a convolution (both give the
    same bits) and the threads."""
    a = as_input(x)
    k, s, pads, d = pool_settings(kernel, stride, padding, dilation, ceil_mode, a.shape[1:])
    out = _pool(a, k, s, pads, d, ceil_mode, "max", None, config)
    return out[0] if np.ndim(x) == 2 else out


def avg_pool2d(x: Any, kernel: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, *,
               config: EngineConfig | None = None) -> np.ndarray:
    """torch.nn.functional.avg_pool2d of x (C, H, W) (or (H, W)), padding also
    (top, bottom, left, right), "same" or "valid" (see the module's docstring). config: as
    for max_pool2d."""
    a = as_input(x)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise UsageError(f"count_include_pad must be True or False, got {count_include_pad!r}")
    k, s, pads, d = pool_settings(kernel, stride, padding, 1, ceil_mode, a.shape[1:])
    out = _pool(a, k, s, pads, d, ceil_mode, "avg", count_include_pad, config)
    return out[0] if np.ndim(x) == 2 else out


def pool_settings(kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: Any,
                  hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int],
                                                geometry.Pads, tuple[int, int]]:
    """(kernel, stride, (top, bottom, left, right), dilation) for an input of size ``hw``,
    checked; UsageError naming the setting otherwise."""
    try:
        k = geometry.pair(kernel, "kernel", maximum=MAX_POOL_SIDE)
        s = k if stride is None else geometry.pair(stride, "stride", maximum=MAX_POOL_SIDE)
        d = geometry.pair(dilation, "dilation")
        geometry.check_footprint(k, d)
        spec = geometry.padding(padding)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise UsageError(f"ceil_mode must be True or False, got {ceil_mode!r}")
    if isinstance(spec, str) and ceil_mode:
        raise UsageError(f"ceil_mode applies to explicit padding, not padding {spec!r}")
    return k, s, geometry.resolve_pads(spec, hw, k, s, d), d


def pool_output_hw(hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                   pads: geometry.Pads, dilation: tuple[int, int] = (1, 1),
                   ceil_mode: bool = False) -> tuple[int, int]:
    """The pooled size (may be < 1 when the window does not fit)."""
    return (_out_len(hw[0], kernel[0], stride[0], dilation[0], pads[0], pads[1], ceil_mode),
            _out_len(hw[1], kernel[1], stride[1], dilation[1], pads[2], pads[3], ceil_mode))


def _out_len(n: int, k: int, s: int, d: int, before: int, after: int, ceil_mode: bool) -> int:
    # torch's rounding: with ceil_mode a window may be wider than the (padded) input, as
    # long as it starts inside it.
    span = n + before + after - (d * (k - 1) + 1)
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + before:  # the last window starts past the input
        out -= 1
    return out


def _pool(a: np.ndarray, k, s, pads, d, ceil_mode: bool, how: str,
          count_include_pad: bool | None, config: EngineConfig | None) -> np.ndarray:
    """Per-window max or average of a (C, H, W): two 1-D passes (max or sum, padding left
    out), then the average's division. numba or NumPy, chosen by the engine's rule for
    ``config`` (convcli.engine.executor): the same operations in the same order, so the
    same bits."""
    from . import engine

    C, H, W = a.shape
    ho, wo = pool_output_hw((H, W), k, s, pads, d, ceil_mode)
    if ho < 1 or wo < 1:
        foot = geometry.footprint(k, d)
        raise InputError(f"the input ({H}x{W}) is smaller than the pooling window "
                         f"({foot[0]}x{foot[1]}) with padding {pads}")
    # (axis, kernel, stride, dilation, leading pad, output length) of each pass: along the
    # rows first when that intermediate, (C, H, wo), is the smaller one.
    across = (2, k[1], s[1], d[1], pads[2], wo)
    down = (1, k[0], s[0], d[0], pads[0], ho)
    first, second = (across, down) if H * wo <= ho * W else (down, across)
    mid_shape = (C, H, wo) if first is across else (C, ho, W)
    if how == "avg":
        rows = _divisors(H, k[0], s[0], pads[0], pads[1], ho, bool(count_include_pad))
        cols = _divisors(W, k[1], s[1], pads[2], pads[3], wo, bool(count_include_pad))
    work = float(C) * (mid_shape[1] * mid_shape[2] * first[1] + ho * wo * second[1])
    with engine.executor(config, work) as jit:
        if jit is not None:
            threads = engine.threads_of(config)
            is_max = how == "max"
            none = np.zeros(0, np.int64)
            mid = np.empty(mid_shape, np.float32)
            jit.call(jit.pool_pass, a, first[0] == 1, *first[1:5], is_max, none, none, mid,
                     threads=threads)
            out = np.empty((C, ho, wo), np.float32)
            rdiv, cdiv = (rows, cols) if how == "avg" else (none, none)
            jit.call(jit.pool_pass, mid, second[0] == 1, *second[1:5], is_max, rdiv, cdiv, out,
                     threads=threads)
            return out
        start = np.float32(-np.inf) if how == "max" else np.float32(0)
        mid = _pass(a, *first, how, start)
        out = _pass(mid, *second, how, start)
    if how == "avg":
        div = np.outer(rows, cols).astype(np.float32)
        # A window without input values (only wider padding than torch allows gives one)
        # is 0.
        np.divide(out, div, out=out, where=div > 0)
    return out


def _pass(a: np.ndarray, axis: int, k: int, s: int, d: int, before: int, n_out: int,
          how: str, start: np.float32) -> np.ndarray:
    """Along ``axis``: out[o] = max or sum over taps t of a[o * s + t * d - before], taps
    that fall outside the input left out."""
    n = a.shape[axis]
    shape = list(a.shape)
    shape[axis] = n_out
    out = np.full(shape, start, np.float32)
    op = np.maximum if how == "max" else np.add
    for t in range(k):
        offset = t * d - before  # output o reads input o * s + offset
        lo = max(0, -(offset // s))  # the first o with o * s + offset >= 0
        hi = min(n_out, (n - 1 - offset) // s + 1) if n - 1 - offset >= 0 else 0
        if lo >= hi:
            continue
        first = lo * s + offset
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[axis] = slice(first, first + (hi - lo - 1) * s + 1, s)
        dst[axis] = slice(lo, hi)
        view = out[tuple(dst)]
        op(view, a[tuple(src)], out=view)
    return out


def _divisors(n: int, k: int, s: int, before: int, after: int, n_out: int,
              include_pad: bool) -> np.ndarray:
    """Average pooling's divisor along one axis (see the module's docstring)."""
    starts = np.arange(n_out, dtype=np.int64) * s - before
    if include_pad:
        return np.minimum(starts + k, n + after) - starts
    return np.maximum(np.minimum(starts + k, n) - np.maximum(starts, 0), 0)


# --- inputs -------------------------------------------------------------------------------

def as_input(x: Any) -> np.ndarray:
    """An image or feature map, (C, H, W) or (H, W), as a float32 C-contiguous (C, H, W);
    InputError for any other shape (shared by the layers and their runner)."""
    a = np.asarray(x)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or 0 in a.shape:
        raise InputError(f"the input must be (C, H, W) or (H, W) and non-empty, got shape "
                         f"{a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return math.nan
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _hint(word: Any, choices: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
