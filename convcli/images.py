"""The I/O boundary: any image file or bytes -> float32 (C, H, W) in [0, 1]; PNG and .npy
out to bytes, and bytes to a file atomically.

Reading goes through imageio (Pillow for PNG/JPEG/BMP/GIF/WebP, tifffile for TIFF), with the
EXIF orientation applied. Pillow cannot return 16-bit colour PNGs at full depth (it reduces
them to 8 bits), so those few files are decoded by the small PNG reader below. PNG writing is
ours too: it is the one encoder that does 8- and 16-bit gray and RGB with text chunks and a
chosen zlib level, and it is where a batch spends most of its time.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import InputError, OutputError

DEFAULT_MAX_PIXELS = 100_000_000
LUMA_BT601 = (0.299, 0.587, 0.114)  # the weights of OpenCV's cvtColor and Pillow's convert("L")


@dataclass
class Image:
    pixels: np.ndarray  # float32 (C, H, W) in [0, 1]; C is 1 (gray) or 3 (RGB); alpha removed
    bits: int  # bit depth of the stored samples (8 or 16; 32 for float data)
    had_alpha: bool = False
    frames: int = 1  # frames or pages in the file; only the first is used
    notes: list[str] = field(default_factory=list)


def read_image(source: str | Path | bytes, label: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Read the first frame of an image file (or its bytes) as float32 (C, H, W) in [0, 1].

    Raises InputError with one line naming ``label`` (default: the path) on any failure.
    """
    import imageio.v3 as iio
    from imageio.core.request import InitializationError

    label = label or ("<stdin>" if isinstance(source, bytes) else str(source))
    try:
        head = source[:64] if isinstance(source, bytes) else _head(Path(source))
        if not head:
            raise InputError(f"{label}: is empty (0 bytes)")
        if _is_png16_colour(head):
            raw = source if isinstance(source, bytes) else Path(source).read_bytes()
            arr, frames, extra = _decode_png16(raw, max_pixels, label), 1, []
        else:
            arr, frames, extra = _read_with_imageio(iio, source, head, max_pixels, label)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{label}: not enough memory to decode this image") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a folder, not an image") from None
    except OSError as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise InputError(f"{label}: cannot open: {e.strerror}") from None
        if isinstance(e.__cause__, InitializationError):  # the plugin does not know the bytes
            raise InputError(f"{label}: not a recognised image (unknown format or damaged "
                             "file)") from None
        raise InputError(f"{label}: cannot read image: {_one_line(e)}") from None
    except Exception as e:  # decoders raise many types (SyntaxError, ValueError, ...)
        raise InputError(f"{label}: not a readable image ({_one_line(e)})") from None
    image = _normalise(arr, label)
    image.frames = frames
    image.notes.extend(extra)
    if frames > 1:
        image.notes.append(f"{label}: has {frames} frames; only the first is used")
    return image


_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


def image_size(source: str | Path | bytes) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    import imageio.v3 as iio

    head = source[:64] if isinstance(source, bytes) else _head(Path(source))
    if _is_png16_colour(head):
        return struct.unpack(">II", head[16:24])[::-1]
    plugin = "tifffile" if head[:4] in _TIFF_MAGIC else "pillow"
    with iio.imopen(source, "r", plugin=plugin) as f:
        shape = f.properties(index=0).shape
    return int(shape[0]), int(shape[1])


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(64)


def _read_with_imageio(iio, source, head: bytes, max_pixels: int, label: str):
    # Choose the plugin from the magic bytes rather than letting imageio try every plugin it
    # knows (some legacy ones guess at arbitrary bytes).
    plugin = "tifffile" if head[:4] in _TIFF_MAGIC else "pillow"
    if plugin == "tifffile":
        # tifffile logs each oddity of a damaged file; convcli reports one line itself.
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    else:
        # Pillow's own decompression-bomb guard would refuse (or warn) by its fixed limit
        # before our header check could apply --max-pixels and say so with the numbers.
        from PIL import Image as PILImage

        PILImage.MAX_IMAGE_PIXELS = None
    with iio.imopen(source, "r", plugin=plugin) as f:
        # pages of one size form one TIFF series: read the first page only
        page = {"page": 0} if plugin == "tifffile" else {}
        _check_size(f.properties(index=0, **page).shape, max_pixels, label)  # header only
        kwargs: dict = dict(page)
        if plugin == "tifffile":
            frames = _tiff_pages(source)
        else:
            frames = max(1, int(f.properties(index=...).n_images or 1))
            kwargs["rotate"] = True  # apply EXIF orientation
            if f.metadata(index=0, exclude_applied=False).get("mode") == "CMYK":
                kwargs["mode"] = "RGB"
        arr = f.read(index=0, **kwargs)
    return np.asarray(arr), frames, []


def _tiff_pages(source) -> int:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(source) if isinstance(source, bytes) else source) as tf:
        return max(1, len(tf.pages))


def _check_size(shape: tuple, max_pixels: int, label: str) -> None:
    h, w = (shape[0], shape[1]) if len(shape) >= 2 else (shape[0], 1)
    if h * w > max_pixels:
        raise InputError(f"{label}: {w}x{h} image has {h * w:,} pixels, over the limit of "
                         f"{max_pixels:,} (raise it with --max-pixels)")


def _normalise(arr: np.ndarray, label: str) -> Image:
    """Samples of any dtype and layout (H, W[, C]) -> Image with float32 (C, H, W)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise InputError(f"{label}: unsupported image layout {arr.shape} (want H x W with 1-4 "
                         "channels)")
    if arr.dtype == bool:
        bits, scale = 1, 1.0
    elif arr.dtype.kind in "ui":
        bits = 8 if arr.dtype.itemsize == 1 else 16 if arr.dtype.itemsize == 2 else 32
        scale = float(2**bits - 1)
    elif arr.dtype.kind == "f":
        bits, scale = 32, 1.0
    else:
        raise InputError(f"{label}: unsupported sample type {arr.dtype}")
    channels = arr.shape[2]
    had_alpha = channels in (2, 4)
    colour = arr[:, :, : channels - 1] if had_alpha else arr
    pixels = np.ascontiguousarray(np.moveaxis(colour, 2, 0), dtype=np.float32)
    if scale != 1.0:
        pixels *= np.float32(1.0 / scale)
    return Image(pixels=pixels, bits=bits, had_alpha=had_alpha)


def as_channels(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Fit (C, H, W) pixels to a bank's input mode: gray -> luminance (BT.601),
    rgb -> three channels (gray images repeat their one channel), depthwise -> unchanged."""
    c = pixels.shape[0]
    if mode == "gray" and c == 3:
        r, g, b = LUMA_BT601
        return (np.float32(r) * pixels[0] + np.float32(g) * pixels[1]
                + np.float32(b) * pixels[2])[None]
    if mode == "rgb" and c == 1:
        return np.repeat(pixels, 3, axis=0)
    return pixels


# --- 16-bit colour PNG (the case Pillow reduces to 8 bits) --------------------------------

_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _is_png16_colour(head: bytes) -> bool:
    # IHDR is the first chunk: bit depth at byte 24, colour type at 25 (PNG spec, 11.2.2).
    return head[:8] == _PNG_SIG and len(head) > 25 and head[24] == 16 and head[25] in (2, 6)


def _decode_png16(data: bytes, max_pixels: int, label: str) -> np.ndarray:
    """Decode a non-interlaced 16-bit RGB or RGBA PNG (PNG spec, sections 9 and 11)."""
    pos, idat, ihdr = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if ihdr is None or not idat:
        raise InputError(f"{label}: truncated PNG (no image data)")
    width, height, _depth, colour, _comp, _filt, interlace = ihdr
    _check_size((height, width), max_pixels, label)
    if interlace:
        raise InputError(f"{label}: interlaced 16-bit colour PNGs are not supported; "
                         "save it without interlacing")
    channels = 3 if colour == 2 else 4
    bpp = 2 * channels
    stride = width * bpp
    try:
        raw = zlib.decompressobj().decompress(b"".join(idat), height * (stride + 1))
    except zlib.error as e:
        raise InputError(f"{label}: corrupt PNG data ({e})") from None
    if len(raw) < height * (stride + 1):
        raise InputError(f"{label}: truncated PNG (image data ends early)")
    rows = np.frombuffer(raw, np.uint8, height * (stride + 1)).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prior = np.zeros(stride, np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prior) & 0xFF
        elif kind in (1, 3, 4):
            cur = _unfilter_sequential(kind, line, prior, bpp)
        else:
            raise InputError(f"{label}: corrupt PNG (unknown filter type {kind} in row {y})")
        out[y] = cur
        prior = cur
    return out.view(">u2").reshape(height, width, channels).astype(np.uint16)


def _unfilter_sequential(kind: int, line: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
    """Sub (1), Average (3) and Paeth (4) depend on the pixel to the left: one pixel at a time."""
    cur = line.copy()
    left = np.zeros(bpp, np.int32)
    upleft = np.zeros(bpp, np.int32)
    for x in range(0, len(line), bpp):
        up = prior[x:x + bpp]
        if kind == 1:
            pred = left
        elif kind == 3:
            pred = (left + up) >> 1
        else:
            p = left + up - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        cur[x:x + bpp] = (line[x:x + bpp] + pred) & 0xFF
        left, upleft = cur[x:x + bpp], up
    return cur


# --- writing ------------------------------------------------------------------------------

def encode_png(pixels: np.ndarray, text: dict[str, str] | None = None, level: int = 6) -> bytes:
    """PNG bytes for uint8/uint16 pixels (H, W) gray or (H, W, 3) RGB.

    Every row uses the Up filter (PNG spec 9.2), which NumPy computes in one pass; ``text``
    becomes tEXt chunks (Latin-1) and ``level`` is the zlib level 0-9.
    """
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3):
        raise ValueError(f"cannot encode {pixels.dtype} {pixels.shape} as PNG")
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 3: 2}[channels]
    depth = 8 * pixels.dtype.itemsize
    raw = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(">")).view(np.uint8)
    raw = raw.reshape(h, w * channels * pixels.dtype.itemsize)
    filtered = np.empty((h, raw.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # Up
    filtered[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))]
    for key, value in (text or {}).items():
        chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")))
    chunks.append(_chunk(b"IDAT", _deflate(filtered.tobytes(), level)))
    chunks.append(_chunk(b"IEND", b""))
    return _PNG_SIG + b"".join(chunks)


def _deflate(data: bytes, level: int) -> bytes:
    """zlib-format deflate. Levels 1-3 use ISA-L when installed: on feature maps its level 1
    is about 4x faster than zlib's level 1 and makes smaller files (benchmarks/batch.py);
    levels 0 and 4-9 are zlib's own."""
    if 1 <= level <= 3 and _isal is not None:
        return _isal.compress(data, level)
    return zlib.compress(data, level)


def _load_isal():
    try:
        from isal import isal_zlib
    except ImportError:  # optional: platforms without an ISA-L wheel fall back to zlib
        return None
    return isal_zlib


_isal = _load_isal()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def npy_chunks(shape: tuple[int, ...], blocks: Iterable[np.ndarray]) -> Iterator[bytes]:
    """A float32 .npy file of ``shape`` as chunks of bytes: the header, then each block
    (consecutive slices along the first axis, made one at a time so they need not all be
    in memory together)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    yield header.getvalue()
    for block in blocks:
        yield np.ascontiguousarray(block, dtype="<f4").tobytes()


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` (bytes, or chunks of bytes made while writing) to ``path`` so that the
    path never holds a partial file: write a temporary file in the same folder, then rename
    it over the target (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".part")
    try:
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as fh:
            for chunk in [data] if isinstance(data, bytes) else data:
                fh.write(chunk)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
        raise


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """0666 less the process umask: what open() would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
