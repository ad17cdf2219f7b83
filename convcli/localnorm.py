"""Per-window normalisation: a conv layer that sees every window with its own brightness and
contrast taken out, done exactly.

Coates, Lee & Ng (AISTATS 2011, section 3.1.1) normalise each patch before the features:
p' = (p - mean(p)) / sqrt(var(p) + eps). For a filter w with bias b the feature is

    w . p' + b = (w . p - mean(p) * sum(w)) / sqrt(var(p) + eps) + b

so a convolution (w . p at every window), two box filters (the sum and the sum of squares
of every window) and a few element-wise operations give it at every position of a map.

The window of an output position is exactly what the filter reads there: its KH x KW taps
(at its dilation, the windows stepping by its stride) on every input channel it spans (all
channels of a dense, gray or rgb layer; its group's channels with groups; the one channel
of a depthwise map), n = channels x KH x KW values, the variance taken over those n (not
n - 1). Padding is part of the window: the values the border mode puts there (zeros,
reflected, replicated or wrapped pixels) count as the filter sees them, so near a zero
border the mean falls and the variance rises where the window hangs over the edge.

The box sums are computed here in float64 from cumulative sums (one pass per axis, any
dilation and stride), after subtracting one constant from the input (the mean of its
channels), which leaves the variance unchanged and keeps E[x^2] - E[x]^2 accurate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import geometry

# Coates et al. add 10 to variances of 0-255 pixel values; convcli's pixels are in [0, 1].
DEFAULT_EPS = 10.0 / 255.0**2


def window_stats(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], pads: geometry.Pads, border: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of every window of ``x`` (C, H, W) over all its channels, as float64
    (H', W') arrays of the conv layer's output size; ``pads`` (top, bottom, left, right) are
    filled as ``border`` says (the engine's modes)."""
    from .engine import BORDER_MODES

    c, h, w = x.shape
    kh, kw = kernel
    ho, wo = geometry.output_hw((h, w), kernel, stride, dilation, pads)
    shift = float(np.mean(x, dtype=np.float64)) if x.size else 0.0
    if not math.isfinite(shift):
        shift = 0.0
    t, b, l, r = pads
    s1 = np.zeros((ho, wo), np.float64)
    s2 = np.zeros((ho, wo), np.float64)
    for ch in range(c):  # one plane at a time: a few float64 planes in memory, not C
        plane = np.pad(x[ch].astype(np.float64), ((t, b), (l, r)),
                       mode=BORDER_MODES[border])  # type: ignore[call-overload]
        plane -= shift
        s1 += _box(plane, kh, kw, stride, dilation, ho, wo)
        np.multiply(plane, plane, out=plane)
        s2 += _box(plane, kh, kw, stride, dilation, ho, wo)
    n = c * kh * kw
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)  # rounding may leave a tiny negative
    return mean + shift, var


def _box(plane: np.ndarray, kh: int, kw: int, stride: tuple[int, int],
         dilation: tuple[int, int], ho: int, wo: int) -> np.ndarray:
    """Sum of the kh x kw taps (dilated) of every strided window of a padded plane."""
    rows = _box_1d(plane, kh, stride[0], dilation[0], ho, axis=0)
    return _box_1d(rows, kw, stride[1], dilation[1], wo, axis=1)


def _box_1d(a: np.ndarray, k: int, s: int, d: int, n_out: int, axis: int) -> np.ndarray:
    """sum_{i<k} a[o*s + i*d] for o < n_out along ``axis``: a cumulative sum in steps of d
    (every d-th value, each residue on its own), then one difference per window."""
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    rows = -(-n // d)
    steps = np.zeros((rows + 1, d) + a.shape[1:], np.float64)  # a leading row of zeros
    flat = steps.reshape(((rows + 1) * d,) + a.shape[1:])
    flat[d:d + n] = a
    np.cumsum(steps, axis=0, out=steps)
    # flat[j + d] is now the sum of a[j], a[j - d], a[j - 2d], ...; flat[j] that sum before j
    start = np.arange(n_out) * s
    out = flat[start + k * d] - flat[start]
    return np.moveaxis(out, 0, axis)


def normalise_maps(raw: np.ndarray, weight_sums: np.ndarray, bias: np.ndarray,
                   mean: np.ndarray, var: np.ndarray, eps: float) -> None:
    """In place: raw[f] = (raw[f] - mean * weight_sums[f]) / sqrt(var + eps) + bias[f], for
    raw (F, H', W') float32 holding conv(x, w) without bias; mean and var (H', W') (or
    broadcastable, e.g. (C, H', W') against raw (F, C, H', W'))."""
    inv = 1.0 / np.sqrt(var + eps)
    for f in range(raw.shape[0]):  # one map at a time, in float64, then rounded once
        raw[f] = (raw[f] - mean * float(weight_sums[f])) * inv + float(bias[f])


def check_eps(value: Any) -> float:
    """A valid epsilon (a number > 0 within float32's range) or ValueError."""
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    if not (math.isfinite(number) and 0 < number <= float(np.finfo(np.float32).max)):
        raise ValueError(f"eps must be a number > 0, got {geometry.brief(value)}")
    return number
