"""Convolution geometry: stride, dilation and padding values and the output size they give.

One owner for these rules, shared by bank files, the command line and the engine's Python API.
Values are validated here and raise ValueError with a message naming the setting.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Pads = tuple[int, int, int, int]  # top, bottom, left, right


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and \
        type(v).__name__ != "ScalarBoolean"


def pair(value: Any, what: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a (y, x) pair, each >= minimum."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) == 1:
        items = items * 2
    if len(items) != 2 or not all(is_int(v) and v >= minimum for v in items):
        raise ValueError(f"{what} must be a whole number >= {minimum} or a pair [y, x], "
                         f"got {value!r}")
    return int(items[0]), int(items[1])


def padding(value: Any) -> str | Pads:
    """'same', 'valid', an int, a (y, x) pair or (top, bottom, left, right)."""
    if isinstance(value, str) and value in ("same", "valid"):
        return str(value)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if all(is_int(v) and v >= 0 for v in items):
        if len(items) == 1:
            return (int(items[0]),) * 4  # type: ignore[return-value]
        if len(items) == 2:
            py, px = int(items[0]), int(items[1])
            return (py, py, px, px)
        if len(items) == 4:
            return tuple(int(v) for v in items)  # type: ignore[return-value]
    raise ValueError("padding must be same, valid, a whole number >= 0, a pair [y, x] or "
                     f"[top, bottom, left, right], got {value!r}")


def _same_1d(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's SAME: output ceil(size / s); the odd pixel of padding goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_pads(spec: str | Pads, in_hw: tuple[int, int], k_hw: tuple[int, int],
                 stride: tuple[int, int], dilation: tuple[int, int]) -> Pads:
    """Explicit (top, bottom, left, right) padding for a padding spec."""
    if spec == "valid":
        return (0, 0, 0, 0)
    if spec == "same":
        t, b = _same_1d(in_hw[0], k_hw[0], stride[0], dilation[0])
        l, r = _same_1d(in_hw[1], k_hw[1], stride[1], dilation[1])
        return (t, b, l, r)
    return tuple(spec)  # type: ignore[return-value]


def output_hw(in_hw: tuple[int, int], k_hw: tuple[int, int], stride: tuple[int, int],
              dilation: tuple[int, int], pads: Pads) -> tuple[int, int]:
    """Output size as torch.nn.functional.conv2d computes it; may be <= 0 if the kernel's
    footprint is larger than the padded input."""
    def one(n: int, k: int, s: int, d: int, before: int, after: int) -> int:
        return math.floor((n + before + after - d * (k - 1) - 1) / s) + 1
    return (one(in_hw[0], k_hw[0], stride[0], dilation[0], pads[0], pads[1]),
            one(in_hw[1], k_hw[1], stride[1], dilation[1], pads[2], pads[3]))
