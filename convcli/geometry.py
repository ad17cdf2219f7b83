"""Convolution geometry: stride, dilation and padding values and the output size they give.

One owner for these rules, shared by bank files, the command line and the engine's Python API.
Values are validated here and raise ValueError with a message naming the setting.

Upper bounds keep every later size and index small (no int64 overflow in the engine, no
absurd allocation for a padded image or a stride's column phases):

- stride and dilation: at most MAX_STEP (1024) per axis. No network strides by more than 32;
  a step of 1024 already shrinks a 100-megapixel image to about a hundred outputs.
- padding: at most MAX_PADDING (4096) pixels on each side: the widest footprint allowed
  (MAX_FOOTPRINT, 4097) needs 4096 in all for 'same'; more only adds rows of pure border.
- footprint (K - 1) * dilation + 1: at most MAX_FOOTPRINT (4097) per axis, e.g. the largest
  kernel side (1025) at dilation 4, or a 3x3 kernel at dilation 1024 (see ``footprint``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Pads = tuple[int, int, int, int]  # top, bottom, left, right

MAX_STEP = 1024
MAX_PADDING = 4096
MAX_FOOTPRINT = 4097


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and \
        type(v).__name__ != "ScalarBoolean"


def brief(value: Any, width: int = 60) -> str:
    """repr() for messages, short and cheap whatever the value: a huge int, a list of
    millions (only its head is looked at), ruamel's list, dict and scalar subclasses."""
    import reprlib

    shower = reprlib.Repr()
    shower.maxstring = shower.maxother = shower.maxlong = width
    shower.maxlist = shower.maxtuple = shower.maxdict = 6
    try:
        text = shower.repr(_head(value, 3))
    except (ValueError, RecursionError):  # an int too long for str()
        text = f"<{type(value).__name__}>"
    return text if len(text) <= width else text[:width - 3] + "..."


class _More:
    def __repr__(self) -> str:
        return "..."


def _head(v: Any, depth: int) -> Any:
    """Plain Python types for the first few items of v (enough for a message)."""
    from itertools import islice

    if isinstance(v, (list, tuple)):
        items = [_head(x, depth - 1) if depth else _More() for x in v[:7]]
        return items if isinstance(v, list) else tuple(items)
    if isinstance(v, dict):
        return {_head(k, 0): (_head(x, depth - 1) if depth else _More())
                for k, x in islice(v.items(), 7)}
    if isinstance(v, bool) or type(v).__name__ == "ScalarBoolean":
        return bool(v)
    for kind in (int, float, str):
        if isinstance(v, kind):
            return kind(v)
    return v


def pair(value: Any, what: str, minimum: int = 1, maximum: int = MAX_STEP) -> tuple[int, int]:
    """An int or a (y, x) pair, each in minimum..maximum."""
    items = list(value) if isinstance(value, (list, tuple)) and len(value) <= 2 else [value]
    if len(items) == 1:
        items = items * 2
    if len(items) != 2 or not all(is_int(v) and v >= minimum for v in items):
        raise ValueError(f"{what} must be a whole number >= {minimum} or a pair [y, x], "
                         f"got {brief(value)}")
    if any(v > maximum for v in items):
        raise ValueError(f"{what} must be at most {maximum}, got {brief(value)}")
    return int(items[0]), int(items[1])


def padding(value: Any) -> str | Pads:
    """'same', 'valid', an int, a (y, x) pair or (top, bottom, left, right), each side in
    0..MAX_PADDING."""
    if isinstance(value, str) and value in ("same", "valid"):
        return str(value)
    items = list(value) if isinstance(value, (list, tuple)) and len(value) <= 4 else [value]
    if len(items) in (1, 2, 4) and all(is_int(v) and v >= 0 for v in items):
        if any(v > MAX_PADDING for v in items):
            raise ValueError(f"padding must be at most {MAX_PADDING} pixels on each side, "
                             f"got {brief(value)}")
        if len(items) == 1:
            p = int(items[0])
            return (p, p, p, p)
        if len(items) == 2:
            py, px = int(items[0]), int(items[1])
            return (py, py, px, px)
        top, bottom, left, right = (int(v) for v in items)
        return (top, bottom, left, right)
    raise ValueError("padding must be same, valid, a whole number >= 0, a pair [y, x] or "
                     f"[top, bottom, left, right], got {brief(value)}")


def footprint(k_hw: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Pixels a kernel spans with its dilation: (K - 1) * d + 1 per axis."""
    return ((k_hw[0] - 1) * dilation[0] + 1, (k_hw[1] - 1) * dilation[1] + 1)


def check_footprint(k_hw: tuple[int, int], dilation: tuple[int, int]) -> None:
    """ValueError naming the dilation when the footprint is over MAX_FOOTPRINT."""
    fh, fw = footprint(k_hw, dilation)
    if max(fh, fw) > MAX_FOOTPRINT:
        raise ValueError(f"dilation {dilation[0]},{dilation[1]} spreads the {k_hw[0]}x{k_hw[1]} "
                         f"kernel over {fh}x{fw} pixels; at most {MAX_FOOTPRINT} along each "
                         "axis are allowed")


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
