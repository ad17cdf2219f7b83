"""Float feature maps -> pixels: the scaling policies, and the labelled stack of all maps.

Every policy maps a value range [lo, hi] linearly onto [0, 2^bits - 1], clipping outside it,
and returns that range so the floats can be recovered (value = lo + p / max * (hi - lo)):

  auto       lo, hi = the map's own min and max (per map)
  global     lo, hi = min and max over all maps of the image
  clip       lo, hi = 0, 1 (natural for blurs, whose values stay in [0, 1])
  symmetric  lo, hi = -m, m with m = max |value| (zero is mid-grey; for signed maps)

A constant map under auto/global has lo == hi; it is written as all zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import printable


@dataclass(frozen=True)
class Rendered:
    pixels: np.ndarray  # uint8/uint16, (H, W) gray or (H, W, 3) colour
    lo: float
    hi: float


def value_range(data: np.ndarray, policy: str, global_range: tuple[float, float] | None = None
                ) -> tuple[float, float]:
    """The [lo, hi] a policy maps to black..white for this map."""
    if policy == "clip":
        return 0.0, 1.0
    if policy == "global":
        if global_range is None:
            raise ValueError("the global policy needs the range of all maps")
        return global_range
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 0.0
    if policy == "auto":
        return float(finite.min()), float(finite.max())
    if policy == "symmetric":
        m = float(np.abs(finite).max())
        return (-m, m) if m > 0 else (-1.0, 1.0)
    raise ValueError(f"unknown scaling policy {policy!r}")


def joint_range(maps: list[np.ndarray]) -> tuple[float, float]:
    """min and max over several maps (for the global policy)."""
    los, his = zip(*(value_range(m, "auto") for m in maps))
    return min(los), max(his)


_BLOCK = 1 << 18  # values scaled at a time by to_pixels


def to_pixels(data: np.ndarray, policy: str, bits: int = 8,
              global_range: tuple[float, float] | None = None) -> Rendered:
    """One map, (H, W) or (C, H, W) with C in (1, 3), to pixels under a policy."""
    lo, hi = value_range(data, policy, global_range)
    top = 2**bits - 1
    pix = np.zeros(data.shape, np.uint8 if bits == 8 else np.uint16)
    if hi > lo:
        # In blocks: the float64 temporaries of a whole 4096x4096 map would cost more than
        # the map itself several times over (the memory budget counts the maps).
        flat_in, flat_out = data.reshape(-1), pix.reshape(-1)
        for start in range(0, flat_in.size, _BLOCK):
            scaled = (flat_in[start:start + _BLOCK].astype(np.float64) - lo) * (top / (hi - lo))
            scaled = np.nan_to_num(scaled, nan=0.0, posinf=top, neginf=0.0)
            flat_out[start:start + _BLOCK] = np.clip(np.rint(scaled), 0, top)
    if pix.ndim == 3:
        pix = pix[0] if pix.shape[0] == 1 else np.moveaxis(pix, 0, 2)  # type: ignore[misc]
    return Rendered(np.ascontiguousarray(pix), lo, hi)


def recover(pixels: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Invert to_pixels (up to quantisation): the float values a PNG stands for."""
    return lo + pixels.astype(np.float64) / (2**bits - 1) * (hi - lo)


# --- the labelled stack -------------------------------------------------------------------

GAP = 4  # pixels between tiles and around the stack


def stack(tiles: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, list[dict]]:
    """Tile maps (all gray or all colour, same dtype) in a near-square grid, each under a
    label strip with its name. Returns the pixels and, for each tile, its name and box
    [x, y, width, height] in the stack (for the PNG's metadata)."""
    dtype = tiles[0][1].dtype
    colour = tiles[0][1].ndim == 3
    top = np.iinfo(dtype).max
    cell_w = max(t.shape[1] for _, t in tiles)
    cell_h = max(t.shape[0] for _, t in tiles)
    font, label_h = _font(cell_w)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    width = GAP + cols * (cell_w + GAP)
    height = GAP + rows * (label_h + cell_h + GAP)
    canvas = np.zeros((height, width, 3) if colour else (height, width), dtype)
    strip = np.zeros((label_h, cell_w), np.uint8)  # text drawn at 8 bits, scaled to the depth
    boxes = []
    for n, (name, tile) in enumerate(tiles):
        x0 = GAP + (n % cols) * (cell_w + GAP)
        y0 = GAP + (n // cols) * (label_h + cell_h + GAP)
        _draw_label(strip, name, font, 0, 0, cell_w, label_h)
        text = strip.astype(dtype) * dtype.type(top // 255)  # 255 -> 65535 exactly at 16 bits
        canvas[y0:y0 + label_h, x0:x0 + cell_w] = text[:, :, None] if colour else text
        ty = y0 + label_h
        canvas[ty:ty + tile.shape[0], x0:x0 + tile.shape[1]] = tile
        boxes.append({"name": name, "box": [x0, ty, int(tile.shape[1]), int(tile.shape[0])]})
    return canvas, boxes


def _font(cell_w: int):
    from PIL import ImageFont

    size = int(min(28, max(10, cell_w // 24)))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        font = ImageFont.load_default()
    return font, size + 8


LABEL_MAX_CHARS = 256  # more never fits a tile (the widest is a few thousand pixels)


def _draw_label(labels: np.ndarray, name: str, font, x0: int, y0: int, w: int, h: int) -> None:
    from PIL import Image, ImageDraw

    strip = Image.new("L", (w, h), 60)
    draw = ImageDraw.Draw(strip)
    room = w - 6
    # Measure at most LABEL_MAX_CHARS characters (zero-width ones such as combining marks
    # would otherwise let a huge name "fit"), then find the longest prefix that fits with
    # an ellipsis by bisection: a few measurements, not one per character.
    shown = printable(name[:LABEL_MAX_CHARS])
    cut = len(name) > LABEL_MAX_CHARS
    if len(shown) > LABEL_MAX_CHARS:  # escapes (\x1b ...) lengthen it
        shown, cut = shown[:LABEL_MAX_CHARS], True
    if cut or draw.textlength(shown, font=font) > room:
        lo, hi = 0, len(shown)  # the prefix of lo characters fits with "…"; of hi+1 does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if draw.textlength(shown[:mid] + "…", font=font) <= room:
                lo = mid
            else:
                hi = mid - 1
        shown = shown[:lo] + "…" if lo or draw.textlength("…", font=font) <= room else ""
    draw.text((3, h // 2), shown, fill=255, font=font, anchor="lm")
    labels[y0:y0 + h, x0:x0 + w] = np.asarray(strip)


THUMBNAIL = 256  # contact-sheet tiles are shrunk to at most this many pixels per side


def thumbnail(pixels: np.ndarray, side: int = THUMBNAIL) -> np.ndarray:
    """Shrink by a whole factor (mean over blocks) so neither side exceeds ``side``."""
    factor = -(-max(pixels.shape[:2]) // side)
    if factor <= 1:
        return pixels
    h, w = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    blocks = pixels[:h, :w].reshape(h // factor, factor, w // factor, factor, *pixels.shape[2:])
    return blocks.mean(axis=(1, 3)).round().astype(pixels.dtype)


KERNEL_TILE = 96  # pixels a side for each kernel in kernel_grid


def kernel_grid(filters) -> np.ndarray:
    """A labelled grid of the kernels themselves, each scaled symmetrically (zero is
    mid-grey) and enlarged with square pixels; 3-channel kernels are drawn in colour."""
    colour = any(f.weights.shape[0] == 3 for f in filters)
    tiles = []
    for f in filters:
        w = f.weights if f.weights.shape[0] != 1 or not colour else np.repeat(f.weights, 3, 0)
        pixels = to_pixels(w.astype(np.float64), "symmetric", 8).pixels
        zoom = max(1, KERNEL_TILE // max(pixels.shape[:2]))
        pixels = np.repeat(np.repeat(pixels, zoom, axis=0), zoom, axis=1)
        tiles.append((f.name, pixels))
    return stack(tiles)[0]
