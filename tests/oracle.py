"""A slow, obviously right float64 convolution layer: the reference the engine must match.

Written straight from the formula in the README, with its own border handling (no np.pad),
one output value at a time, with torch's groups (filter f sees the Cg = C / groups channels
of its group g = f // (F / groups)):

    out[f, y, x] = act(bias[f] + sum_c sum_i sum_j w[f, c, i, j]
                                              * in[g*Cg + c, y*sy + i*dy - pt, x*sx + j*dx - pl])

``magnitude=True`` gives the same sum over absolute values, |bias| + sum |w x|, without the
activation: the scale of the rounding error any float32 algorithm may make.
"""

from __future__ import annotations

import math

import numpy as np


def source_index(k: int, n: int, border: str) -> int | None:
    """Which input index position k (possibly outside 0..n-1) reads; None means zero."""
    if 0 <= k < n:
        return k
    if border == "zero":
        return None
    if border == "replicate":
        return min(max(k, 0), n - 1)
    if border == "wrap":
        return k % n
    if border == "reflect":  # mirror about the edge pixels, which are not repeated
        if n == 1:
            return 0
        period = 2 * (n - 1)
        k = k % period
        return k if k < n else period - k
    raise ValueError(border)


def same_pads(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = math.ceil(n / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def explicit_pads(padding, h: int, w: int, kh: int, kw: int, stride, dilation):
    """(top, bottom, left, right) for "same", "valid" or explicit pads."""
    if padding == "same":
        return same_pads(h, kh, stride[0], dilation[0]) + same_pads(w, kw, stride[1],
                                                                    dilation[1])
    if padding == "valid":
        return (0, 0, 0, 0)
    return tuple(padding)


def reference_conv2d(image, weights, bias=None, stride=(1, 1), padding=(0, 0, 0, 0),
                     dilation=(1, 1), border="zero", activation="relu", groups=1,
                     magnitude=False):
    x = np.asarray(image, np.float64)
    w = np.asarray(weights, np.float64)
    if magnitude:
        x, w = np.abs(x), np.abs(w)
    F, C, KH, KW = w.shape
    _, H, W = x.shape
    assert x.shape[0] == C * groups and F % groups == 0
    sy, sx = stride
    dy, dx = dilation
    pt, pb, pl, pr = explicit_pads(padding, H, W, KH, KW, stride, dilation)
    Ho = (H + pt + pb - dy * (KH - 1) - 1) // sy + 1
    Wo = (W + pl + pr - dx * (KW - 1) - 1) // sx + 1
    b = np.zeros(F) if bias is None else np.asarray(bias, np.float64)
    if magnitude:
        b, activation = np.abs(b), "none"
    out = np.zeros((F, Ho, Wo))
    for f in range(F):
        for y in range(Ho):
            for xo in range(Wo):
                acc = b[f]
                first = (f // (F // groups)) * C
                for c in range(C):
                    for i in range(KH):
                        r = source_index(y * sy + i * dy - pt, H, border)
                        for j in range(KW):
                            q = source_index(xo * sx + j * dx - pl, W, border)
                            if r is not None and q is not None:
                                acc += w[f, c, i, j] * x[first + c, r, q]
                out[f, y, xo] = acc
    if activation == "relu":
        out = np.maximum(out, 0.0)
    elif activation == "abs":
        out = np.abs(out)
    return out


# --- pooling, activations and normalisation (convcli.ops) -----------------------------------
#
# Written from torch's documentation of max_pool2d / avg_pool2d and its kernels' rules, one
# window at a time: the window of output o along an axis starts at o * s - before and takes
# k taps d apart; taps outside the input are padding and are never values.


def reference_pool_len(n, k, s, d, before, after, ceil_mode):
    """torch's output length: floor (or ceil) of (n + pads - footprint) / s, plus one; with
    ceil_mode, a last window that starts past the input and its leading padding is dropped."""
    span = (n + before + after - (d * (k - 1) + 1)) / s
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if ceil_mode and (out - 1) * s >= n + before:
        out -= 1
    return out


def reference_pool2d(image, mode, kernel, stride, pads=(0, 0, 0, 0), dilation=(1, 1),
                     ceil_mode=False, count_include_pad=True):
    """float64 max or average pooling of (C, H, W); pads (top, bottom, left, right).

    max: the largest input value in the window (NaN if one is NaN), -inf if it holds none.
    avg: the sum of the input values in the window over its size counted up to the end of
    the padding (count_include_pad) or over the number of input values; 0 if it holds none.
    """
    x = np.asarray(image, np.float64)
    C, H, W = x.shape
    (kh, kw), (sy, sx), (dy, dx) = kernel, stride, dilation
    pt, pb, pl, pr = pads
    Ho = reference_pool_len(H, kh, sy, dy, pt, pb, ceil_mode)
    Wo = reference_pool_len(W, kw, sx, dx, pl, pr, ceil_mode)
    out = np.zeros((C, Ho, Wo))
    for c in range(C):
        for yo in range(Ho):
            for xo in range(Wo):
                top, left = yo * sy - pt, xo * sx - pl
                values = [x[c, top + i * dy, left + j * dx]
                          for i in range(kh) for j in range(kw)
                          if 0 <= top + i * dy < H and 0 <= left + j * dx < W]
                if mode == "max":
                    if any(math.isnan(v) for v in values):
                        out[c, yo, xo] = math.nan
                    else:
                        out[c, yo, xo] = max(values, default=-math.inf)
                    continue
                if count_include_pad:
                    size = ((min(top + kh, H + pb) - top) * (min(left + kw, W + pr) - left))
                else:
                    size = len(values)
                out[c, yo, xo] = sum(values) / size if values else 0.0
    return out


def reference_activation(x, function, **params):
    """float64, value by value, from the formulas (torch.nn.functional; hardsigmoid as
    ONNX: max(0, min(1, alpha * x + beta)))."""
    alpha = params.get("alpha", 1 / 6 if function == "hardsigmoid" else 0.01)
    beta = params.get("beta", 0.5)
    lo, hi = params.get("min", -math.inf), params.get("max", math.inf)

    def one(v):
        if math.isnan(v):
            return math.nan
        if function == "none":
            return v
        if function == "relu":
            return max(v, 0.0)
        if function == "abs":
            return abs(v)
        if function == "relu6":
            return min(max(v, 0.0), 6.0)
        if function == "clip":
            return min(max(v, lo), hi)
        if function == "leaky_relu":
            return v if v >= 0 else alpha * v
        if function == "hardswish":
            return v * min(max(v + 3.0, 0.0), 6.0) / 6.0
        if function == "hardsigmoid":
            return min(max(alpha * v + beta, 0.0), 1.0)
        if function == "sigmoid":
            return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))
        if function == "tanh":
            return math.tanh(v)
        if function == "silu":
            return v * one_sigmoid(v) if not math.isinf(v) else (v if v > 0 else math.nan)
        if function in ("elu", "selu"):
            a = params.get("alpha", 1.0 if function == "elu" else 1.6732632423543772)
            y = v if v > 0 else a * math.expm1(v)
            return y * params.get("gamma", 1.0507009873554805) if function == "selu" else y
        if function == "softplus":
            return softplus(v)
        if function == "mish":
            return v * math.tanh(softplus(v)) if not math.isinf(v) else (
                v if v > 0 else math.nan)
        raise ValueError(function)

    def one_sigmoid(v):
        return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))

    def softplus(v):
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))

    a = np.asarray(x, np.float64)
    return np.array([one(float(v)) for v in a.ravel()]).reshape(a.shape)


def reference_normalize(image, mean, std):
    """float64 (x[c] - mean[c]) / std[c], one value standing for every channel."""
    x = np.asarray(image, np.float64)
    C = x.shape[0]
    m = list(mean) * (C if len(mean) == 1 else 1)
    s = list(std) * (C if len(std) == 1 else 1)
    return np.stack([(x[c] - m[c]) / s[c] for c in range(C)])
