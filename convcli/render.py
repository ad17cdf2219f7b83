"""Float feature maps -> pixels: the scaling policies, colormaps, and the labelled stack.

Every policy maps a value range [lo, hi] linearly onto [0, 2^bits - 1], clipping outside it,
and returns that range so the floats can be recovered (value = lo + p / max * (hi - lo)) for
every pixel that was not clipped (the fractions clipped below and above are returned too):

  auto       8 bits: the robust stretch p1,p99 (below); 16 bits: minmax, so that every
             value of a 16-bit map can be recovered
  minmax     lo, hi = the map's own min and max (per map)
  global     lo, hi = min and max over all maps of the image
  clip       lo, hi = 0, 1 (natural for blurs, whose values stay in [0, 1])
  symmetric  lo, hi = -m, m with m = max |value| (zero is mid-grey; for signed maps)
  LO,HI      an explicit range, the same for every map and every input (e.g. 0,0.25)
  pA,pB      per map, lo and hi = the A-th and B-th percentiles of its finite values
             (linear interpolation, as numpy.percentile); when they are equal but the map
             is not constant (a map that is almost all one value), minmax is used instead

A map whose range is empty (lo == hi: a constant map) is written as all zeros.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import printable

if TYPE_CHECKING:
    from .engine import EngineConfig

POLICIES = ("auto", "minmax", "global", "clip", "symmetric")
AUTO_PERCENTILES = (1.0, 99.0)  # the 8-bit default: at most 1% of a map's pixels clipped each side
SCALE_HELP = ("auto, minmax, global, clip, symmetric, a range LO,HI (e.g. 0,0.25) or "
              "percentiles pA,pB (e.g. p1,p99)")

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"


@dataclass(frozen=True)
class Scale:
    """A parsed scaling: a policy name, "range" (lo, hi are values) or "percentile" (lo, hi
    are percents)."""

    kind: str
    lo: float = 0.0
    hi: float = 0.0


def parse_scale(text: str) -> Scale:
    """A scaling as written (a policy name, 'LO,HI' or 'pA,pB'); ValueError saying what is
    accepted otherwise."""
    t = text.strip().lower()
    if t in POLICIES:
        return Scale(t)
    m = re.fullmatch(rf"p({_NUMBER})\s*,\s*p({_NUMBER})", t)
    if m:
        a, b = float(m.group(1)), float(m.group(2))
        if not 0 <= a < b <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= A < B <= 100, got {text!r}")
        return Scale("percentile", a, b)
    m = re.fullmatch(rf"({_NUMBER})\s*,\s*({_NUMBER})", t)
    if m:
        lo, hi = float(m.group(1)), float(m.group(2))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi
                and math.isfinite(hi - lo)):
            raise ValueError(f"a value range LO,HI needs finite LO < HI, got {text!r}")
        return Scale("range", lo, hi)
    raise ValueError(f"the scale must be {SCALE_HELP}; got {printable(text)!r}")


def scale_text(scale: Scale) -> str:
    """The canonical spelling of a scaling (what the metadata records)."""
    if scale.kind == "range":
        return f"{scale.lo:g},{scale.hi:g}"
    if scale.kind == "percentile":
        return f"p{scale.lo:g},p{scale.hi:g}"
    return scale.kind


@dataclass(frozen=True)
class Rendered:
    pixels: np.ndarray  # uint8/uint16, (H, W) gray or (H, W, 3) colour
    lo: float
    hi: float
    clipped: tuple[float, float] = (0.0, 0.0)  # fractions of the pixels below lo, above hi


def value_range(data: np.ndarray, policy: str | Scale,
                global_range: tuple[float, float] | None = None, bits: int = 8
                ) -> tuple[float, float]:
    """The [lo, hi] a policy maps to black..white for this map."""
    return _range(data, policy, global_range, bits, _extent(data))


def _extent(data: np.ndarray) -> tuple[float, float]:
    """min and max of a map as they are (NaN if it holds one): two passes, no copy."""
    if data.size == 0:
        return math.nan, math.nan
    return float(data.min()), float(data.max())


def _range(data: np.ndarray, policy: str | Scale, global_range: tuple[float, float] | None,
           bits: int, extent: tuple[float, float]) -> tuple[float, float]:
    scale = parse_scale(policy) if isinstance(policy, str) else policy
    kind = scale.kind
    if kind == "auto":
        kind = "percentile" if bits == 8 else "minmax"
        scale = Scale(kind, *AUTO_PERCENTILES)
    if kind == "clip":
        return 0.0, 1.0
    if kind == "range":
        return scale.lo, scale.hi
    if kind == "global":
        if global_range is None:
            raise ValueError("the global policy needs the range of all maps")
        return global_range
    lo, hi = extent
    if math.isfinite(lo) and math.isfinite(hi):  # the usual case: every value finite
        finite = data.reshape(-1)
    else:
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            return 0.0, 0.0
        lo, hi = float(finite.min()), float(finite.max())
    if kind == "symmetric":
        m = max(-lo, hi, 0.0)  # the largest |value|
        return (-m, m) if m > 0 else (-1.0, 1.0)
    if kind == "percentile" and hi > lo:
        ordered = np.sort(finite)  # NumPy's sort of float32 is faster than its partition
        plo, phi = (percentile_of_sorted(ordered, q) for q in (scale.lo, scale.hi))
        if phi > plo:
            return plo, phi
    return lo, hi


def percentile_of_sorted(values: np.ndarray, q: float) -> float:
    """numpy.percentile(values, q) (its default, linear method) of sorted finite values,
    computed as NumPy does: index (n - 1) * q / 100 between two neighbours, the difference
    of the neighbours taken in the array's own type, then interpolated from the nearer
    end. Reading two sorted values is cheaper than NumPy's partition (tests check the two
    agree exactly)."""
    n = values.size
    at = (n - 1) * (np.float64(q) / 100.0)
    if at >= n - 1:
        return float(values[-1])
    if at <= 0:
        return float(values[0])
    i = int(math.floor(at))
    a, b = values[i], values[i + 1]
    diff = np.float64(b - a)  # in the values' type, as numpy's _lerp subtracts them
    t = at - i
    return float(b - diff * (1 - t)) if t >= 0.5 else float(a + diff * t)


def joint_range(maps: list[np.ndarray]) -> tuple[float, float]:
    """min and max over several maps (for the global policy)."""
    los, his = zip(*(value_range(m, "minmax") for m in maps))
    return min(los), max(his)


_BLOCK = 1 << 18  # values scaled at a time by to_pixels


def to_pixels(data: np.ndarray, policy: str | Scale, bits: int = 8,
              global_range: tuple[float, float] | None = None,
              colormap: str = "gray", config: EngineConfig | None = None) -> Rendered:
    """One map, (H, W) or (C, H, W) with C in (1, 3), to pixels under a policy. A colormap
    other than gray turns a one-channel map into 8-bit RGB through its look-up table
    (a 3-channel map keeps its own colours). config: the engine's choice of executor
    (convcli.engine.executor): numba's one-pass kernel or the NumPy passes, the same
    pixels either way."""
    extent = _extent(data)
    lo, hi = _range(data, policy, global_range, bits, extent)
    top = 2**bits - 1
    pix = np.zeros(data.shape, np.uint8 if bits == 8 else np.uint16)
    below = above = 0
    # Nothing lies outside [lo, hi] when the map's own min and max lie inside (a NaN
    # extent fails the test): the two counting passes are skipped.
    count = not (lo <= extent[0] and extent[1] <= hi)
    if hi > lo:
        # In blocks, through one float64 buffer used in place: the temporaries of a whole
        # 4096x4096 map would cost more than the map itself several times over (the memory
        # budget counts the maps), and fresh ones for every step cost 10x the time.
        flat_in, flat_out = data.reshape(-1), pix.reshape(-1)
        step = top / (hi - lo)
        if data.dtype == np.float32:
            from . import engine

            with engine.executor(config, flat_in.size) as jit:
                if jit is not None:
                    below, above = _scaled_by_jit(jit, flat_in, lo, hi, step, top, count,
                                                  flat_out)
                    flat_in = flat_in[:0]  # done: the NumPy passes below have nothing to do
        buf = np.empty(min(flat_in.size, _BLOCK), np.float64)
        for start in range(0, flat_in.size, _BLOCK):
            block = flat_in[start:start + _BLOCK]
            if count:
                below += int(np.count_nonzero(block < lo))
                above += int(np.count_nonzero(block > hi))
            b = buf[:block.size]
            with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN clip below
                np.subtract(block, lo, out=b, dtype=np.float64)
                np.multiply(b, step, out=b)
            np.rint(b, out=b)
            np.fmax(b, 0, out=b)  # NaN -> 0 (fmax takes the number), -inf -> 0
            np.minimum(b, top, out=b)  # +inf -> top
            flat_out[start:start + block.size] = b
    if pix.ndim == 3:
        pix = pix[0] if pix.shape[0] == 1 else np.moveaxis(pix, 0, 2)  # type: ignore[misc]
    if pix.ndim == 2 and colormap != "gray":
        if bits != 8:
            raise ValueError("a colormap makes 8-bit pictures")
        pix = lut(colormap)[pix]
    n = max(1, data.size)
    return Rendered(np.ascontiguousarray(pix), lo, hi, (below / n, above / n))


def _scaled_by_jit(jit, flat_in: np.ndarray, lo: float, hi: float, step: float, top: int,
                   count: bool, flat_out: np.ndarray) -> tuple[int, int]:
    """to_pixels' scaling by numba's kernel (one specialisation: float32 in, uint16 out)."""
    out = flat_out if flat_out.dtype == np.uint16 else np.empty(flat_out.shape, np.uint16)
    with np.errstate(over="ignore"):  # a bound beyond float32 compares as inf, as in NumPy
        lo32, hi32 = np.float32(lo), np.float32(hi)
    below, above = jit.call(jit.to_pixels, np.ascontiguousarray(flat_in), float(lo), float(hi),
                            lo32, hi32, float(step), float(top), bool(count), out)
    if out is not flat_out:
        flat_out[:] = out  # 8 bits: every value is at most 255
    return int(below), int(above)


def recover(pixels: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Invert to_pixels (up to quantisation): the float values a PNG stands for."""
    return lo + pixels.astype(np.float64) / (2**bits - 1) * (hi - lo)


# --- colormaps ----------------------------------------------------------------------------

# Names offered -> the cmap package's catalogue names (namespaced: a bare name that several
# collections share makes cmap log a warning). Sequential ones are perceptually uniform
# (for magnitudes); diverging ones have a light, neutral centre (for signed maps under the
# symmetric scale, whose zero is the middle of the table).
COLORMAPS = {
    "gray": None,
    "viridis": "bids:viridis",
    "magma": "bids:magma",
    "inferno": "bids:inferno",
    "plasma": "bids:plasma",
    "cividis": "cividis:cividis",
    "batlow": "crameri:batlow",
    "vik": "crameri:vik",
    "balance": "cmocean:balance",
    "coolwarm": "matplotlib:coolwarm",
}
DIVERGING = ("vik", "balance", "coolwarm")


def check_colormap(name: str) -> str:
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {printable(name)!r}; choose one of "
                         f"{', '.join(COLORMAPS)}")
    return name


@functools.lru_cache(maxsize=None)
def lut(name: str) -> np.ndarray:
    """The colormap's 256-entry table as uint8 (256, 3): entry i colours pixel value i.
    Gray is the identity ramp."""
    check_colormap(name)
    if name == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        return np.repeat(ramp[:, None], 3, axis=1)
    from cmap import Colormap

    table = Colormap(str(COLORMAPS[name])).lut(256)[:, :3]
    out = np.clip(np.rint(np.asarray(table, np.float64) * 255), 0, 255).astype(np.uint8)
    out.flags.writeable = False
    return out


# --- the labelled stack -------------------------------------------------------------------

GAP = 4  # pixels between tiles and around the stack
TILE = 768  # default cap on a stack tile's longer side: 16 tiles of a 4000x4000 photo make
            # a stack of about 2,700 px a side (the per-filter maps stay full size)


@dataclass(frozen=True)
class Legend:
    """What a tile's pixels stand for, drawn under its name: the value at black (lo) and at
    white (hi), and the colormap between them."""

    lo: float
    hi: float
    colormap: str = "gray"


def stack(tiles: list[tuple[str, np.ndarray]], legends: list[Legend] | None = None,
          columns: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """Tile maps (all gray or all colour, same dtype) in a grid (``columns`` wide, or near
    square), each under a label strip with its name and, with ``legends``, a colour bar
    from its lo (left) to its hi (right) with the two values written at its ends. Returns
    the pixels and, for each tile, its name and box [x, y, width, height] in the stack."""
    dtype = tiles[0][1].dtype
    colour = tiles[0][1].ndim == 3
    top = np.iinfo(dtype).max
    cell_w = max(t.shape[1] for _, t in tiles)
    cell_h = max(t.shape[0] for _, t in tiles)
    font, label_h = _font(cell_w)
    strips = 2 if legends else 1
    cols = min(len(tiles), columns or math.ceil(math.sqrt(len(tiles))))
    rows = math.ceil(len(tiles) / cols)
    width = GAP + cols * (cell_w + GAP)
    height = GAP + rows * (strips * label_h + cell_h + GAP)
    canvas = np.zeros((height, width, 3) if colour else (height, width), dtype)
    strip = np.zeros((label_h, cell_w), np.uint8)  # text drawn at 8 bits, scaled to the depth
    boxes = []
    for n, (name, tile) in enumerate(tiles):
        x0 = GAP + (n % cols) * (cell_w + GAP)
        y0 = GAP + (n // cols) * (strips * label_h + cell_h + GAP)
        _draw_label(strip, name, font, 0, 0, cell_w, label_h)
        _paint(canvas, strip, x0, y0, top)
        if legends:
            _draw_legend(canvas, legends[n], font, x0, y0 + label_h, cell_w, label_h)
        ty = y0 + strips * label_h
        canvas[ty:ty + tile.shape[0], x0:x0 + tile.shape[1]] = tile
        boxes.append({"name": name, "box": [x0, ty, int(tile.shape[1]), int(tile.shape[0])]})
    return canvas, boxes


def _paint(canvas: np.ndarray, strip: np.ndarray, x0: int, y0: int, top: int) -> None:
    """An 8-bit gray strip into the canvas at its depth (255 -> 65535 exactly at 16 bits)."""
    text = strip.astype(canvas.dtype) * canvas.dtype.type(top // 255)
    h, w = strip.shape
    canvas[y0:y0 + h, x0:x0 + w] = text[:, :, None] if canvas.ndim == 3 else text


def value_text(v: float) -> str:
    return f"{v:.3g}".replace("e+0", "e").replace("e-0", "e-")


def _draw_legend(canvas: np.ndarray, legend: Legend, font, x0: int, y0: int, w: int,
                 h: int) -> None:
    from PIL import Image, ImageDraw

    top = np.iinfo(canvas.dtype).max
    strip = Image.new("L", (w, h), 60)
    draw = ImageDraw.Draw(strip)
    lo, hi = value_text(legend.lo), value_text(legend.hi)
    lo_w, hi_w = draw.textlength(lo, font=font), draw.textlength(hi, font=font)
    bar_x0, bar_x1 = int(lo_w) + 8, w - int(hi_w) - 8
    if bar_x1 - bar_x0 < 8:  # too narrow for a bar: the range as text
        text = f"{lo}…{hi}"
        draw.text((3, h // 2), text if draw.textlength(text, font=font) <= w - 6 else "",
                  fill=255, font=font, anchor="lm")
        _paint(canvas, np.asarray(strip), x0, y0, top)
        return
    draw.text((3, h // 2), lo, fill=255, font=font, anchor="lm")
    draw.text((w - 3, h // 2), hi, fill=255, font=font, anchor="rm")
    _paint(canvas, np.asarray(strip), x0, y0, top)
    # The bar: the pixel values 0..top from left to right, as the tiles show them.
    n = bar_x1 - bar_x0
    ramp = np.rint(np.linspace(0, top, n)).astype(canvas.dtype)
    if canvas.ndim == 3 and legend.colormap != "gray" and canvas.dtype == np.uint8:
        row = lut(legend.colormap)[ramp]
    else:
        row = ramp[:, None] if canvas.ndim == 3 else ramp
    pad = max(2, h // 5)
    canvas[y0 + pad:y0 + h - pad, x0 + bar_x0:x0 + bar_x1] = row


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


def shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    """Shrink by a whole factor so neither side exceeds ``side``: each output pixel is the
    mean of a factor x factor block, rounded half up (the last rows and columns that do not
    fill a block are dropped). Done in bands, in integers: no float copy of a large map."""
    factor = -(-max(pixels.shape[:2]) // side)
    if factor <= 1:
        return pixels
    h, w = pixels.shape[0] // factor, pixels.shape[1] // factor
    rest = pixels.shape[2:]
    out = np.empty((h, w, *rest), pixels.dtype)
    n = factor * factor
    band = max(1, (1 << 22) // max(1, pixels.shape[1] * factor))  # output rows at a time
    for r in range(0, h, band):
        rows = min(band, h - r)
        block = pixels[r * factor:(r + rows) * factor, :w * factor]
        sums = block.reshape(rows, factor, w, factor, *rest).sum(axis=(1, 3), dtype=np.uint64)
        out[r:r + rows] = (sums + n // 2) // n
    return out


THUMBNAIL = 256  # contact-sheet tiles are shrunk to at most this many pixels per side


def thumbnail(pixels: np.ndarray, side: int = THUMBNAIL) -> np.ndarray:
    """A small picture of a map for contact sheets (see shrink)."""
    return shrink(pixels, side)


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


# --- overlays -----------------------------------------------------------------------------

OVERLAY_ALPHA = 0.8  # opacity of the map's colour where the map is at its hi
OVERLAY_NOTE = ("the map's colour over the input in gray, its opacity rising from 0 at lo to "
                f"{OVERLAY_ALPHA} at hi")


def overlay_colormap(colormap: str) -> str:
    """The colormap an overlay uses: the one asked for, or inferno instead of gray (gray
    on a gray photo would not show)."""
    return "inferno" if colormap == "gray" else colormap


def overlay(values: np.ndarray, lo: float, hi: float, under: np.ndarray, colormap: str,
            stretch: bool = False) -> np.ndarray:
    """A map drawn over a gray picture, as 8-bit RGB of the picture's size: each pixel is
    the picture's gray blended with the map's colour, with opacity OVERLAY_ALPHA * t where
    t in [0, 1] is the map's value placed in [lo, hi] (so low values let the picture show).
    ``values`` (H', W') or (C, H', W') (the mean of its channels is drawn) is resized to the
    picture (bilinear) when its size differs (stride, pooling); ``under`` (H, W) has values
    in [0, 1], or any values stretched min-max to it with ``stretch``."""
    from PIL import Image

    v = values if values.ndim == 2 else values.mean(axis=0)
    t = np.zeros(v.shape, np.float32)
    if hi > lo:
        with np.errstate(invalid="ignore", over="ignore"):
            t = ((v.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
        t = np.nan_to_num(np.clip(t, 0, 1), nan=0.0)
    h, w = under.shape
    if t.shape != (h, w):
        t = np.asarray(Image.fromarray(t, "F").resize((w, h), Image.Resampling.BILINEAR))
        t = np.clip(t, 0, 1)
    gray = under.astype(np.float32)
    if stretch:
        finite = gray[np.isfinite(gray)]
        glo, ghi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        gray = (gray - glo) / (ghi - glo) if ghi > glo else np.zeros_like(gray)
    gray = np.nan_to_num(np.clip(gray, 0, 1), nan=0.0)
    table = lut(overlay_colormap(colormap)).astype(np.float32)
    out = np.empty((h, w, 3), np.uint8)
    for r in range(0, h, 256):  # in bands: the float RGB of a whole large photo is 12 B/px
        tb = t[r:r + 256]
        colours = table[np.rint(tb * 255).astype(np.uint8)]
        a = (np.float32(OVERLAY_ALPHA) * tb)[:, :, None]
        band = gray[r:r + 256, :, None] * (255 * (1 - a)) + colours * a
        out[r:r + 256] = np.clip(np.rint(band), 0, 255)
    return out
