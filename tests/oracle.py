"""A slow, obviously right float64 convolution layer: the reference the engine must match.

Written straight from the formula in the README, with its own border handling (no np.pad),
one output value at a time, with torch's groups (filter f sees the Cg = C / groups channels
of its group g = f // (F / groups)):

    out[f, y, x] = act(bias[f] + sum_c sum_i sum_j w[f, c, i, j] * in[g*Cg + c, y*sy + i*dy - pt, x*sx + j*dx - pl])

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
    if padding == "same":
        pt, pb = same_pads(H, KH, sy, dy)
        pl, pr = same_pads(W, KW, sx, dx)
    elif padding == "valid":
        pt = pb = pl = pr = 0
    else:
        pt, pb, pl, pr = padding
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
