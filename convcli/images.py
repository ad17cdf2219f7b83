"""The I/O boundary: any image file or bytes -> float32 (C, H, W) (integers scaled to
[0, 1], or [-1, 1] when signed; floats as stored); PNG and .npy out to bytes, and bytes to a
file atomically.

Reading takes files from strangers, so it is built to fail small: the format is told by its
magic bytes (PNG, JPEG, GIF, BMP, WebP and TIFF only), the header is walked by the bounded
readers below before any decoder runs (image size against ``max_pixels``, EXIF orientation,
frame count, structures no real image has), and only then does a C decoder see the data:
imagecodecs (libpng) for PNG, Pillow for JPEG, GIF, BMP and WebP, tifffile (with imagecodecs'
codecs) for TIFF. Whatever a decoder raises, warns or logs becomes one InputError line or a
note on the Image; nothing reaches stderr by itself.

PNG writing is ours: it is the one encoder that does 8- and 16-bit gray and RGB with text
chunks and a chosen zlib level, and it is where a batch spends most of its time.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import stat
import struct
import tempfile
import threading
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np

from .errors import InputError, OutputError, printable

DEFAULT_MAX_PIXELS = 100_000_000
LUMA_BT601 = (0.299, 0.587, 0.114)  # the weights of OpenCV's cvtColor and Pillow's convert("L")

# Bounds on structures that cost Python time per item in a header walk or in a decoder's own
# parser. Real images stay far below them; a small hostile file can exceed them by far (a
# 10 MB JPEG of empty comment segments kept Pillow's parser busy for 5 s).
MAX_SEGMENTS = 4096          # JPEG segments before the image data
MAX_FILL_BYTES = 65536       # JPEG 0xFF fill bytes between segments
MAX_SCANS = 500              # JPEG scans (libjpeg-turbo's suggested limit; a progressive
                             # JPEG has about 10, each extra one costs a pass over the image)
MAX_CHUNKS = 100_000         # PNG/WebP chunks walked looking for orientation and frames
MAX_GIF_BLOCKS = 200_000     # GIF data blocks walked (each costs Pillow ~1 us)
MAX_FRAMES_COUNTED = 10_000  # frames/pages counted; beyond, the note says "at least"
MAX_TIFF_SEGMENTS = 10_000   # TIFF strips/tiles beyond which each must hold ...
TIFF_PIECE_PIXELS = 1024     # ... this many pixels (tifffile spends ~15 us on each)

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WebP", "TIFF")


@dataclass
class Image:
    pixels: np.ndarray  # float32 (C, H, W); C is 1 (gray) or 3 (RGB); alpha removed
    bits: int  # bit depth of the stored samples (1-16 for integers; 32 for float data)
    had_alpha: bool = False
    frames: int = 1  # frames or pages in the file (counted up to MAX_FRAMES_COUNTED)
    notes: list[str] = field(default_factory=list)


def read_image(source: str | Path | bytes, label: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Read the first frame of an image file (or its bytes) as float32 (C, H, W).

    Integer samples become [0, 1] (divided by the largest value of their bit depth; signed
    ones by the largest positive value, so [-1, 1]); float samples are used as given. The
    orientation the file records (EXIF, or TIFF's tag) is applied.

    Raises InputError with one line naming ``label`` (default: the path) on any failure;
    ``max_pixels`` is checked from the header, before decoding.
    """
    if label is None:
        label = "<stdin>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    shown = printable(label)
    with _quiet() as caught:
        try:
            with _open(source, shown) as (fh, size):
                image = _read(fh, size, shown, max_pixels)
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{shown}: not enough memory to decode this image") from None
        except Exception as e:  # decoders raise many types (SyntaxError, ValueError, ...)
            raise InputError(f"{shown}: cannot decode this image ({_one_line(e)})") from None
    image.notes.extend(_caught_notes(caught, shown))
    return image


def image_size(source: str | Path | bytes) -> tuple[int, int]:
    """(height, width) as read_image would return them, from the header only."""
    label = "<stdin>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    with _quiet():
        try:
            with _open(source, printable(label)) as (fh, size):
                r = _Window(fh, size)
                fmt = _format(r, printable(label))
                header = (_tiff_header(r, printable(label)) if fmt == "TIFF"
                          else _WALKERS[fmt](r, printable(label)))
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{printable(label)}: cannot read the image header "
                             f"({_one_line(e)})") from None
    w, h = header.width, header.height
    return (w, h) if header.orientation in (5, 6, 7, 8) else (h, w)


def read_limited(stream: BinaryIO, limit_bytes: int, label: str = "<stdin>") -> bytes:
    """Read a binary stream (a pipe: stdin) to its end, raising InputError as soon as it
    holds more than ``limit_bytes``, so an endless or huge stream costs at most that much."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(1 << 20, limit_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit_bytes:
            raise InputError(f"{printable(label)}: more than {limit_bytes:,} bytes; that is "
                             "over what the memory budget allows for one input image (give a "
                             "smaller image, or a larger budget)")
        chunks.append(chunk)


# --- opening: regular files only, read through one descriptor ----------------------------

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _require_regular(st: os.stat_result, label: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{label}: is a folder, not an image")
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a plain file")
        raise InputError(f"{label}: not a regular file ({kind}); give an image file, or pipe "
                         "its bytes to stdin as -")


@contextlib.contextmanager
def _open(source, label: str) -> Iterator[tuple[BinaryIO, int]]:
    """(file object, size in bytes) for bytes or a path that names a regular file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
        if not size:
            raise InputError(f"{label}: is empty (0 bytes)")
        yield io.BytesIO(source), size
        return
    path = os.fspath(source)
    try:
        # stat first so that a device or FIFO is never opened (opening one can block or
        # act); then O_NONBLOCK and fstat on the descriptor itself, which is what is read,
        # close the window in which the path could be swapped for something else.
        _require_regular(os.stat(path), label)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
            | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags)
    except InputError:
        raise
    except ValueError as e:  # a NUL byte in the path
        raise InputError(f"{label}: cannot open: {e}") from None
    except OSError as e:
        if isinstance(e, IsADirectoryError):
            raise InputError(f"{label}: is a folder, not an image") from None
        raise InputError(f"{label}: cannot open: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        _require_regular(st, label)
        if st.st_size == 0:
            raise InputError(f"{label}: is empty (0 bytes)")
        yield fh, st.st_size


class _Window:
    """Random access to a seekable file through a small cached block, so header walks read
    a few bytes at many places without loading the whole file."""

    def __init__(self, fh: BinaryIO, size: int, block: int = 1 << 16):
        self.fh, self.size, self.block = fh, size, block
        self.start, self.buf = 0, b""
        if isinstance(fh, io.BytesIO):
            self.buf = fh.getvalue()  # the whole input is in memory already

    def read(self, pos: int, n: int) -> bytes:
        off = pos - self.start
        if (off < 0 or off + n > len(self.buf)) and not isinstance(self.fh, io.BytesIO):
            if pos >= self.size:
                return b""
            self.fh.seek(pos)
            self.start, self.buf, off = pos, self.fh.read(max(n, self.block)), 0
        return self.buf[off:off + n]

    def byte(self, pos: int) -> int:
        b = self.read(pos, 1)
        return b[0] if b else -1


# --- header walks -------------------------------------------------------------------------

@dataclass
class _Header:
    format: str
    width: int
    height: int
    orientation: int = 1  # EXIF orientation, 1-8
    frames: int = 1
    frames_capped: bool = False  # stopped counting: there are at least ``frames``
    data_end: int = 0  # PNG: where the image data ends (what libpng needs); JPEG: first scan
    bits: int = 8
    png: tuple[int, int, int] = (8, 0, 0)  # PNG: bit depth, colour type, interlace


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _sniff(head: bytes) -> str | None:
    if head.startswith(_PNG_SIG):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):  # classic and BigTIFF
        return "TIFF"
    return None


def _format(r: _Window, label: str) -> str:
    fmt = _sniff(r.read(0, 16))
    if fmt is None:
        raise InputError(f"{label}: not a recognised image (unknown format or damaged file); "
                         f"convcli reads {', '.join(FORMATS[:-1])} and {FORMATS[-1]}")
    return fmt


def _damaged(label: str, fmt: str, why: str) -> InputError:
    return InputError(f"{label}: damaged {fmt} file: {why}")


def _check_size(width: int, height: int, max_pixels: int, label: str) -> None:
    if height * width > max_pixels:
        raise InputError(f"{label}: {width}x{height} image has {height * width:,} pixels, over "
                         f"the limit of {max_pixels:,} (raise it with --max-pixels)")


def _png_header(r: _Window, label: str) -> _Header:
    ihdr = r.read(8, 25)
    if len(ihdr) < 25 or ihdr[4:8] != b"IHDR" or struct.unpack(">I", ihdr[:4])[0] != 13:
        raise _damaged(label, "PNG", "no IHDR header")
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", ihdr[8:21])
    allowed = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
    if (not w or not h or depth not in allowed.get(colour, ()) or comp or filt
            or interlace > 1):
        raise _damaged(label, "PNG", f"invalid header ({w}x{h}, bit depth {depth}, colour "
                                     f"type {colour})")
    if w > 1_000_000 or h > 1_000_000:  # libpng's default limit, an error there
        raise InputError(f"{label}: PNG of {w}x{h} pixels is wider or taller than the "
                         "1,000,000 pixels convcli's PNG decoder takes")
    head = _Header("PNG", w, h, bits=depth if colour != 3 else 8,
                   png=(depth, colour, interlace))
    # Walk the chunks for eXIf (orientation), fcTL (animation frames) and where the image
    # data ends; libpng is then given the file up to there.
    pos, chunks, fctl, idat_done, idat_bytes = 33, 0, 0, False, 0
    while chunks < MAX_CHUNKS:
        top = r.read(pos, 8)
        if len(top) < 8:
            break
        length, kind = struct.unpack(">I4s", top)
        if length > 0x7FFFFFFF:
            raise _damaged(label, "PNG", f"chunk length {length:,} at byte {pos:,}")
        if kind == b"IDAT" and not idat_done:
            if pos + 12 + length > r.size:
                raise _damaged(label, "PNG", "truncated (the image data ends early)")
            head.data_end = pos + 12 + length
            idat_bytes += length
        elif head.data_end:
            idat_done = True
        if kind == b"eXIf" and head.orientation == 1:
            head.orientation = _exif_orientation(r.read(pos + 8, min(length, 1 << 20)))
        elif kind == b"fcTL":
            fctl += 1
        elif kind == b"IEND":
            break
        pos += 12 + length
        chunks += 1
    if not head.data_end:
        if chunks >= MAX_CHUNKS:
            raise _damaged(label, "PNG", f"more than {MAX_CHUNKS:,} chunks before the image "
                                         "data")
        raise _damaged(label, "PNG", "no image data (IDAT)")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    raw = h * (1 + (w * channels * depth + 7) // 8)
    if idat_bytes > 2 * raw + (16 << 20):  # deflate never expands data this much
        raise _damaged(label, "PNG", f"{idat_bytes:,} bytes of image data for {w}x{h} pixels")
    head.frames = max(1, fctl)
    return head


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_header(r: _Window, label: str) -> _Header:
    pos, segments, fill, dims, orientation = 2, 0, 0, None, 1
    while True:
        two = r.read(pos, 2)
        if len(two) < 2:
            raise _damaged(label, "JPEG", "truncated (it ends before its image data)")
        if two[0] != 0xFF:
            raise _damaged(label, "JPEG", f"no marker at byte {pos:,}")
        marker = two[1]
        if marker == 0xFF:  # fill byte
            fill += 1
            if fill > MAX_FILL_BYTES:
                raise _damaged(label, "JPEG", f"more than {MAX_FILL_BYTES:,} fill bytes "
                                              "between segments")
            pos += 1
            continue
        pos += 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker == 0xD9:
            raise _damaged(label, "JPEG", "it ends before its image data")
        seg = r.read(pos, 2)
        if len(seg) < 2 or struct.unpack(">H", seg)[0] < 2:
            raise _damaged(label, "JPEG", f"bad segment length at byte {pos:,}")
        length = struct.unpack(">H", seg)[0]
        if marker in _SOF and dims is None:
            body = r.read(pos + 2, 5)
            if len(body) < 5:
                raise _damaged(label, "JPEG", "truncated frame header")
            _precision, h, w = struct.unpack(">BHH", body)
            if not w or not h:
                raise _damaged(label, "JPEG", f"frame header declares {w}x{h} pixels")
            dims = (w, h)
        elif marker == 0xE1 and orientation == 1:
            body = r.read(pos + 2, length - 2)
            if body.startswith(b"Exif\0\0"):
                orientation = _exif_orientation(body[6:])
        elif marker == 0xDA:
            break
        pos += length
        segments += 1
        if segments > MAX_SEGMENTS:
            raise _damaged(label, "JPEG", f"more than {MAX_SEGMENTS:,} segments before the "
                                          "image data")
    if dims is None:
        raise _damaged(label, "JPEG", "no frame header before the image data")
    head = _Header("JPEG", dims[0], dims[1], orientation)
    head.data_end = pos - 2  # the first scan
    return head


def _jpeg_scans(fh: BinaryIO, start: int) -> int:
    """How many scans (SOS markers) from ``start`` on. Entropy-coded data escapes every 0xFF,
    so FF DA appears only as a marker (or inside an embedded thumbnail: a slight overcount)."""
    fh.seek(start)
    count, tail = 0, b""
    while True:
        block = fh.read(1 << 20)
        if not block:
            return count
        data = tail + block
        count += data.count(b"\xff\xda")
        tail = data[-1:] if data[-1:] == b"\xff" else b""
        if count > MAX_SCANS:
            return count


def _gif_header(r: _Window, label: str) -> _Header:
    top = r.read(0, 13)
    if len(top) < 13:
        raise _damaged(label, "GIF", "truncated header")
    w, h, flags = struct.unpack("<HHB", top[6:11])
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, blocks, right, bottom, capped = 0, 0, w, h, False

    def skip_blocks(p: int) -> int:
        nonlocal blocks, capped
        while not capped:
            n = r.byte(p)
            if n <= 0:
                return p + 1
            p += 1 + n
            blocks += 1
            capped = blocks > MAX_GIF_BLOCKS
        return p

    while not capped:
        intro = r.byte(pos)
        if intro == 0x21:  # extension: label, then data blocks
            pos = skip_blocks(pos + 2)
        elif intro == 0x2C:  # image: descriptor, colour table, LZW code size, data blocks
            d = r.read(pos + 1, 9)
            if len(d) < 9:
                break
            left, top_, fw, fh_, fl = struct.unpack("<HHHHB", d)
            if not frames:
                right, bottom = max(w, left + fw), max(h, top_ + fh_)
            frames += 1
            if frames >= MAX_FRAMES_COUNTED:
                break
            pos += 10 + (3 << ((fl & 7) + 1) if fl & 0x80 else 0) + 1
            pos = skip_blocks(pos)
        else:  # trailer (0x3B), end of file, or bytes that are not a block
            break
    if not frames:
        if capped:
            raise _damaged(label, "GIF", f"more than {MAX_GIF_BLOCKS:,} data blocks before "
                                         "its first image")
        raise _damaged(label, "GIF", "no image in it")
    if not right or not bottom:
        raise _damaged(label, "GIF", f"declares {right}x{bottom} pixels")
    return _Header("GIF", right, bottom, frames=frames,
                   frames_capped=capped or frames >= MAX_FRAMES_COUNTED)


def _bmp_header(r: _Window, label: str) -> _Header:
    top = r.read(0, 26)
    if len(top) < 26:
        raise _damaged(label, "BMP", "truncated header")
    dib = struct.unpack("<I", top[14:18])[0]
    if dib == 12:  # OS/2 BITMAPCOREHEADER
        w, h = struct.unpack("<HH", top[18:22])
    elif 40 <= dib <= 124:
        w, h = struct.unpack("<ii", top[18:26])
        h = abs(h)  # negative: rows stored top-down
    else:
        raise _damaged(label, "BMP", f"unknown header size {dib}")
    if w <= 0 or h <= 0:
        raise _damaged(label, "BMP", f"declares {w}x{h} pixels")
    return _Header("BMP", w, h)


def _webp_header(r: _Window, label: str) -> _Header:
    first = r.read(12, 8 + 10)
    if len(first) < 18:
        raise _damaged(label, "WebP", "truncated header")
    kind, data = first[:4], first[8:]
    if kind == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":
        w, h = (v & 0x3FFF for v in struct.unpack("<HH", data[6:10]))
    elif kind == b"VP8L" and data[0] == 0x2F:
        bits = struct.unpack("<I", data[1:5])[0]
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8X":
        w = 1 + int.from_bytes(data[4:7], "little")
        h = 1 + int.from_bytes(data[7:10], "little")
    else:
        raise _damaged(label, "WebP", f"unknown first chunk {kind!r}")
    if not w or not h:
        raise _damaged(label, "WebP", f"declares {w}x{h} pixels")
    head = _Header("WebP", w, h)
    pos, chunks, frames = 12, 0, 0
    while chunks < MAX_CHUNKS:
        top = r.read(pos, 8)
        if len(top) < 8:
            break
        kind, length = top[:4], struct.unpack("<I", top[4:])[0]
        if kind == b"ANMF":
            frames += 1
        elif kind == b"EXIF" and head.orientation == 1:
            exif = r.read(pos + 8, min(length, 1 << 20))
            head.orientation = _exif_orientation(exif[6:] if exif.startswith(b"Exif\0\0")
                                                 else exif)
        pos += 8 + length + (length & 1)
        chunks += 1
    head.frames = max(1, frames)
    return head


_WALKERS = {"PNG": _png_header, "JPEG": _jpeg_header, "GIF": _gif_header,
            "BMP": _bmp_header, "WebP": _webp_header}


def _tiff_header(r: _Window, label: str) -> _Header:
    """Size and orientation of the first page, from tifffile."""
    import tifffile

    _install_log_filter()
    r.fh.seek(0)
    with tifffile.TiffFile(r.fh, name="image.tif") as tf:
        return _tiff_page_header(tf.pages[0], label)


def _tiff_page_header(page, label: str) -> _Header:
    head = _Header("TIFF", int(page.imagewidth), int(page.imagelength),
                   _tiff_orientation(page))
    if not head.width or not head.height:
        raise _damaged(label, "TIFF", f"first page declares {head.width}x{head.height} pixels")
    return head


def _tiff_pages(r: _Window) -> int:
    """Count the pages (IFDs in the main chain), stopping at MAX_FRAMES_COUNTED, at a loop,
    or at an offset outside the file. Each IFD costs two small reads."""
    order = "<" if r.read(0, 2) == b"II" else ">"
    big = struct.unpack(order + "H", r.read(2, 2))[0] == 43
    ptr, count_fmt, entry = ("Q", "Q", 20) if big else ("I", "H", 12)
    offset = struct.unpack(order + ptr, r.read(8 if big else 4, 8 if big else 4))[0]
    seen: set[int] = set()
    while offset and offset not in seen and len(seen) < MAX_FRAMES_COUNTED:
        raw = r.read(offset, struct.calcsize(count_fmt))
        if len(raw) < struct.calcsize(count_fmt):
            break
        seen.add(offset)
        n = struct.unpack(order + count_fmt, raw)[0]
        at = offset + len(raw) + n * entry
        raw = r.read(at, struct.calcsize(ptr))
        if len(raw) < struct.calcsize(ptr):
            break
        offset = struct.unpack(order + ptr, raw)[0]
    return max(1, len(seen))


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first IFD; 1 when absent or bad."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    for i in range(min(count, (len(tiff) - ifd - 2) // 12)):
        at = ifd + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", tiff[at:at + 4])
        if tag == 0x0112 and kind == 3:  # SHORT, stored in the first bytes of the value
            value = struct.unpack(order + "H", tiff[at + 8:at + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def _tiff_orientation(page) -> int:
    value = page.tags.valueof(274, 1)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn (H, W, C) samples as stored into the upright image, for EXIF/TIFF orientation
    1-8 (1: as stored; 2: mirrored; 3: rotated 180; 4: flipped; 5: transposed; 6: stored
    rotated 90 counter-clockwise, so turn it clockwise; 7: transverse; 8: turn it
    counter-clockwise)."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 1)[:, ::-1],
        8: lambda a: np.rot90(a, 1),
    }[orientation](arr)


# --- decoding -----------------------------------------------------------------------------

@dataclass
class _Samples:
    """Decoded samples (H, W, C) as stored: ``colour`` channels (1 or 3) first, then
    optional alpha; integers are divided by ``maxval``, floats (maxval None) kept."""
    arr: np.ndarray
    colour: int
    maxval: float | None
    bits: int
    notes: list[str] = field(default_factory=list)
    alpha: bool | None = None  # whether an extra channel is alpha (None: if there is one)


def _read(fh: BinaryIO, size: int, label: str, max_pixels: int) -> Image:
    r = _Window(fh, size)
    fmt = _format(r, label)
    if fmt == "TIFF":
        samples, head = _decode_tiff(r, label, max_pixels)
    else:
        head = _WALKERS[fmt](r, label)
        _check_size(head.width, head.height, max_pixels, label)  # from the header only
        if fmt == "PNG":
            samples = _decode_png(fh, head, label)
        else:
            if fmt == "JPEG" and _jpeg_scans(fh, head.data_end) > MAX_SCANS:
                raise InputError(f"{label}: JPEG with more than {MAX_SCANS} scans (a "
                                 "progressive JPEG has about 10); refused as too costly to "
                                 "decode")
            samples = _decode_pillow(fh, head, label)
    image = _to_image(_orient(samples.arr, head.orientation), samples, label)
    image.frames = head.frames
    if head.frames > 1:
        at_least = "at least " if head.frames_capped else ""
        image.notes.append(f"{label}: has {at_least}{head.frames:,} frames; only the first "
                           "is used")
    image.notes.extend(f"{label}: {note}" for note in samples.notes)
    return image


def _decode_png(fh: BinaryIO, head: _Header, label: str) -> _Samples:
    import imagecodecs

    fh.seek(0)
    data = fh.read(head.data_end)  # everything up to the end of the image data ...
    _check_png(data, head, label)
    arr = imagecodecs.png_decode(data + _chunk(b"IEND", b""))  # ... is all libpng reads
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    # libpng widens 1-4 bit gray and palette samples to 8 bits; tRNS becomes alpha
    maxval = 65535.0 if arr.dtype == np.uint16 else 255.0
    return _Samples(arr, 1 if arr.shape[2] <= 2 else 3, maxval, head.bits)


def _check_png(data: bytes, head: _Header, label: str) -> None:
    """Find the damage libpng would stop at, before it runs: its error path (a longjmp out
    of imagecodecs' callback) loses a reference to None each time, and enough damaged PNGs
    in one process would crash it. Checks the critical chunks (names, CRCs, order, palette),
    inflates the image data (zlib, C speed: about a third of libpng's own time) and checks
    each row's filter type."""
    depth, colour, interlace = head.png
    pos, idat, seen = 8, [], set()
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        name = kind.decode("latin-1")
        if not kind.isalpha():
            raise _damaged(label, "PNG", f"invalid chunk name {name!r} at byte {pos:,}")
        body = data[pos + 8:pos + 8 + length]
        if kind[0] & 0x20 == 0:  # critical chunk
            if kind not in (b"IHDR", b"PLTE", b"IDAT"):
                raise _damaged(label, "PNG", f"unknown critical chunk {name}")
            crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
            if zlib.crc32(kind + body) != crc:
                raise _damaged(label, "PNG", f"CRC error in its {name} chunk")
            if kind != b"IDAT" and kind in seen:
                raise _damaged(label, "PNG", f"a second {name} chunk")
            if kind == b"PLTE" and (colour in (0, 4) or length % 3 or not 3 <= length <= 768
                                    or b"IDAT" in seen):
                raise _damaged(label, "PNG", f"invalid PLTE chunk ({length} bytes)")
            if kind == b"IDAT":
                idat.append(body)
            seen.add(kind)
        pos += 12 + length
    if colour == 3 and b"PLTE" not in seen:
        raise _damaged(label, "PNG", "palette image without a palette (PLTE)")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    passes = ([(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
               (1, 0, 2, 2), (0, 1, 1, 2)] if interlace else [(0, 0, 1, 1)])  # Adam7
    layout = []  # (rows, bytes per row with the filter byte) of each pass
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(head.width - x0) // dx), -(-(head.height - y0) // dy)
        if pw > 0 and ph > 0:
            layout.append((ph, 1 + (pw * channels * depth + 7) // 8))
    expected = sum(rows * size for rows, size in layout)
    z = zlib.decompressobj()
    try:
        raw = z.decompress(b"".join(idat), expected)
        # libpng reads on to the stream's end (and checksum) after the last row; it stops
        # early, with a warning, only when plenty of data follows the image's
        beyond = b"" if z.eof else z.decompress(z.unconsumed_tail, 1 << 16)
    except zlib.error as e:
        raise _damaged(label, "PNG", f"corrupt image data ({e})") from None
    if len(raw) < expected or not (z.eof or len(beyond) == 1 << 16):
        raise _damaged(label, "PNG", "truncated (the image data ends early)")
    at = 0
    for rows, size in layout:
        filters = np.frombuffer(raw, np.uint8, rows * size, at)[::size]
        if filters.max() > 4:
            raise _damaged(label, "PNG", f"unknown row filter type {int(filters.max())}")
        at += rows * size


@functools.lru_cache(maxsize=1)
def _pillow():
    from PIL import BmpImagePlugin, GifImagePlugin, Image as PILImage, JpegImagePlugin  # noqa
    from PIL import WebPImagePlugin  # noqa: F401

    # convcli checks the size against --max-pixels from the header first; Pillow's own,
    # fixed bomb limit would refuse larger images allowed on purpose, or warn.
    PILImage.MAX_IMAGE_PIXELS = None
    _install_log_filter()
    return PILImage


def _decode_pillow(fh: BinaryIO, head: _Header, label: str) -> _Samples:
    PILImage = _pillow()
    fh.seek(0)
    with PILImage.open(fh, formats=[head.format.upper()]) as im:
        im.load()
        mode = im.mode
        if mode in ("P", "PA"):
            im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        elif mode == "1":
            im = im.convert("L")
        elif mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L"):
            im = im.convert("RGB")  # CMYK (Adobe inversion handled by the decoder), YCbCr...
        arr = np.asarray(im)
    if arr.dtype.kind != "u" or arr.dtype.itemsize > 2:  # not seen from these plugins
        raise InputError(f"{label}: unsupported {head.format} samples ({im.mode})")
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    bits = 8 * arr.dtype.itemsize
    return _Samples(arr, 1 if arr.shape[2] <= 2 else 3, float(2**bits - 1), bits)


# TIFF compressions read: none, LZW, JPEG, deflate (2 codes), PackBits, LZMA, Zstandard (2).
# The stream codecs decode into a buffer of the page's size, so a bomb cannot grow past it;
# codecs that embed images of their own (WebP, JPEG 2000, ...) are left out, and JPEG is
# checked segment by segment (_check_tiff_jpeg).
_TIFF_COMPRESSIONS = {1, 5, 7, 8, 32946, 32773, 34925, 34926, 50000}

# TIFF photometric interpretations read, with their colour sample counts
_PHOTOMETRIC = {0: ("MINISWHITE", 1), 1: ("MINISBLACK", 1), 2: ("RGB", 3), 3: ("PALETTE", 1),
                5: ("SEPARATED", 4), 6: ("YCBCR", 3)}
_EXTRA = {0: "unspecified", 1: "alpha", 2: "alpha"}


def _decode_tiff(r: _Window, label: str, max_pixels: int) -> tuple[_Samples, _Header]:
    import tifffile

    _install_log_filter()
    r.fh.seek(0)
    with tifffile.TiffFile(r.fh, name="image.tif") as tf:  # parses the first page only
        page = tf.pages[0]
        head = _tiff_page_header(page, label)
        _check_size(head.width, head.height, max_pixels, label)  # from the tags only
        layout = _tiff_layout(page, label)
        if int(page.compression) == 7:
            _check_tiff_jpeg(page, r.fh, label)
        # one thread: tifffile's decoding threads would log outside the capture of _quiet
        arr = page.asarray(maxworkers=1)
        axes = page.axes
    head.frames = _tiff_pages(_Window(r.fh, r.size, block=4096))
    head.frames_capped = head.frames >= MAX_FRAMES_COUNTED
    if "S" not in axes:
        arr, axes = arr[..., None], axes + "S"
    if sorted(axes) != sorted("YXS"):
        raise InputError(f"{label}: TIFF page with axes {axes} is not a 2-D image")
    arr = np.moveaxis(arr, [axes.index("Y"), axes.index("X"), axes.index("S")], [0, 1, 2])
    return layout(arr), head


@dataclass
class Planes:
    """A TIFF of feature maps: its samples as float32 (C, H, W), values as stored, and the
    channel names convcli recorded when it wrote the file (None otherwise)."""
    data: np.ndarray
    names: list[str] | None
    notes: list[str] = field(default_factory=list)


def read_tiff_planes(source: Path | bytes, label: str, max_pixels: int,
                     max_channels: int, max_bytes: int | None = None) -> Planes | None:
    """The planes of a TIFF that holds feature maps rather than a picture, or None for any
    other file (read_image's business). A feature-map TIFF is one whose first page convcli
    wrote (its description names one channel per sample) or a gray page with more than
    one sample per pixel none of which is alpha (what tifffile writes for a (C, H, W)
    array). The same limits as for images apply; InputError names ``label``."""
    shown = printable(label)
    with _quiet() as caught:
        try:
            with _open(source, shown) as (fh, size):
                planes = _tiff_planes(_Window(fh, size), shown, max_pixels, max_channels,
                                      max_bytes)
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{shown}: not enough memory to decode this TIFF") from None
        except Exception as e:  # tifffile raises many types
            raise InputError(f"{shown}: cannot decode this TIFF ({_one_line(e)})") from None
    if planes is not None:
        planes.notes.extend(_caught_notes(caught, shown))
    return planes


def check_tensor_bytes(c: int, h: int, w: int, max_bytes: int | None, label: str) -> None:
    """Refuse, before decoding, an input whose float32 (C, H, W) tensor is over budget."""
    need = 4 * c * h * w
    if max_bytes is not None and need > max_bytes:
        raise InputError(f"{label}: {c} channels of {w}x{h} take {need / 2**20:,.0f} MiB as "
                         f"float32, over the memory budget of {max_bytes / 2**20:,.0f} MiB; "
                         "raise the budget or give a smaller input", settings=("max_memory",))


def _tiff_planes(r: _Window, label: str, max_pixels: int, max_channels: int,
                 max_bytes: int | None) -> Planes | None:
    import tifffile

    if _format(r, label) != "TIFF":
        return None
    _install_log_filter()
    r.fh.seek(0)
    with tifffile.TiffFile(r.fh, name="maps.tif") as tf:
        page = tf.pages[0]
        spp = int(page.samplesperpixel)
        names = _recorded_names(page.description, spp)
        extras = page.extrasamples if isinstance(page.extrasamples, tuple) else ()
        stack_of_maps = (int(page.photometric) == 1 and spp > 1
                         and not any(int(e) in (1, 2) for e in extras))
        if names is None and not stack_of_maps:
            return None
        head = _tiff_page_header(page, label)
        _check_size(head.width, head.height, max_pixels, label)
        if spp > max_channels:
            raise InputError(f"{label}: a TIFF of {spp} channels; at most {max_channels} are "
                             "supported")
        check_tensor_bytes(spp, head.height, head.width, max_bytes, label)
        if int(page.imagedepth) > 1:
            raise InputError(f"{label}: TIFF volume ({page.imagedepth} planes deep) is not a "
                             "2-D map")
        compression = int(page.compression)
        if compression not in _TIFF_COMPRESSIONS or compression == 7:
            name = getattr(page.compression, "name", compression)
            raise InputError(f"{label}: TIFF compression {name} is not supported for feature "
                             "maps (convcli reads uncompressed, LZW, deflate, PackBits, LZMA "
                             "and Zstandard ones)")
        if int(page.sampleformat) not in (1, 2, 3) or page.dtype is None:
            name = getattr(page.sampleformat, "name", int(page.sampleformat))
            raise InputError(f"{label}: TIFF sample format {name} is not supported")
        _check_tiff_segments(page, label)
        arr = page.asarray(maxworkers=1)  # one thread: see _decode_tiff
        axes = page.axes
    if "S" not in axes:
        arr, axes = arr[..., None], axes + "S"
    if sorted(axes) != sorted("YXS"):
        raise InputError(f"{label}: TIFF page with axes {axes} is not a 2-D map")
    arr = np.moveaxis(arr, [axes.index("Y"), axes.index("X"), axes.index("S")], [0, 1, 2])
    arr = _orient(arr, head.orientation)
    with np.errstate(all="ignore"):
        data = np.ascontiguousarray(np.moveaxis(arr, 2, 0), dtype=np.float32)
    return Planes(data, names)


def _recorded_names(description: str, channels: int) -> list[str] | None:
    """The channel names convcli writes into a TIFF's description (JSON with "filters")."""
    if not description.startswith("{") or len(description) > 1 << 20:
        return None
    try:
        names = json.loads(description)["filters"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or len(names) != channels:
        return None
    return [str(n) for n in names]


def _check_tiff_segments(page, label: str) -> None:
    """tifffile decodes strip by strip (tile by tile) in Python: the count the geometry asks
    for, whatever the offsets tag holds, is what costs; many tiny pieces are refused."""
    width, height = int(page.imagewidth), int(page.imagelength)
    planes = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
    if page.is_tiled:
        tw, tl = max(1, int(page.tilewidth)), max(1, int(page.tilelength))
        segments = planes * -(-height // tl) * -(-width // tw)
    else:
        segments = planes * -(-height // max(1, min(int(page.rowsperstrip), height)))
    if segments != len(page.dataoffsets) or segments != len(page.databytecounts):
        raise _damaged(label, "TIFF", f"{len(page.dataoffsets):,} strip or tile offsets for "
                                      f"{segments:,} pieces")
    if segments > MAX_TIFF_SEGMENTS and planes * width * height < TIFF_PIECE_PIXELS * segments:
        raise InputError(f"{label}: TIFF page stored in {segments:,} strips or tiles of under "
                         f"{TIFF_PIECE_PIXELS:,} pixels each (decoding costs per piece); "
                         "re-save it with larger strips or tiles")


def _check_tiff_jpeg(page, fh: BinaryIO, label: str) -> None:
    """Each strip or tile of a JPEG TIFF is a JPEG with its own frame header: a damaged one
    can declare 65535x65535 pixels for an 8x8 tile, which the codec would decode in full.
    Walk each header first; refuse frames larger than the piece and too many scans."""
    if page.is_tiled:
        piece, width, height = "tile", int(page.tilewidth), int(page.tilelength)
    else:
        piece = "strip"
        width, height = int(page.imagewidth), min(int(page.rowsperstrip), int(page.imagelength))
    room_w, room_h = -(-width // 16) * 16, -(-height // 16) * 16  # MCU padding
    for i, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
        if not count:
            continue
        fh.seek(offset)
        data = fh.read(count)
        head = _jpeg_header(_Window(io.BytesIO(data), len(data)), f"{label}: {piece} {i}")
        if head.width > room_w or head.height > room_h:
            raise _damaged(label, "TIFF", f"JPEG {piece} {i} declares {head.width}x"
                                          f"{head.height} pixels in a {width}x{height} {piece}")
        if data.count(b"\xff\xda", head.data_end) > MAX_SCANS:
            raise _damaged(label, "TIFF", f"JPEG {piece} {i} has more than {MAX_SCANS} scans")


def _tiff_layout(page, label: str):
    """Check the first page's tags before decoding; return the function that turns its
    decoded samples (H, W, S) into _Samples, or raise InputError naming what is unusual."""
    photometric = int(page.photometric)
    if photometric not in _PHOTOMETRIC:
        name = getattr(page.photometric, "name", photometric)
        raise InputError(f"{label}: TIFF photometric interpretation {name} is not supported "
                         "(convcli reads gray, RGB, palette, CMYK and JPEG YCbCr)")
    kind, colour = _PHOTOMETRIC[photometric]
    if int(page.imagedepth) > 1:
        raise InputError(f"{label}: TIFF volume ({page.imagedepth} planes deep) is not a 2-D "
                         "image")
    spp, bps = int(page.samplesperpixel), page.bitspersample
    extras = spp - colour
    if extras < 0 or extras > 1:
        described = f"{kind} with {extras} extra samples" if extras > 0 else kind
        raise InputError(f"{label}: TIFF with {spp} samples per pixel ({described}) is not "
                         "supported; convcli reads gray, RGB or CMYK with at most one alpha "
                         "sample")
    if not isinstance(bps, int) or not 1 <= bps <= 64:
        raise InputError(f"{label}: TIFF bits per sample {bps} are not supported")
    fmt = int(page.sampleformat)
    if fmt not in (1, 2, 3, 4) or page.dtype is None:
        name = getattr(page.sampleformat, "name", fmt)
        raise InputError(f"{label}: TIFF sample format {name} ({bps}-bit) is not supported")
    compression = int(page.compression)
    if compression not in _TIFF_COMPRESSIONS:
        name = getattr(page.compression, "name", compression)
        raise InputError(f"{label}: TIFF compression {name} is not supported (convcli reads "
                         "uncompressed, LZW, deflate, PackBits, LZMA, Zstandard and JPEG TIFFs)")
    if kind == "YCBCR" and compression != 7:
        raise InputError(f"{label}: YCbCr TIFF without JPEG compression is not supported; "
                         "save it as RGB")
    if kind == "SEPARATED" and int(page.tags.valueof(332, 1)) != 1:
        raise InputError(f"{label}: TIFF separated into inks other than CMYK is not supported")
    _check_tiff_segments(page, label)
    extra_kind = _EXTRA.get(int(page.extrasamples[0]) if page.extrasamples else 0,
                            "unspecified")
    floating = fmt == 3
    signed = fmt == 2
    notes = ([f"its extra TIFF sample ({extra_kind}) is ignored"]
             if extras and extra_kind != "alpha" else [])

    if kind == "MINISWHITE" and (floating or signed):
        raise InputError(f"{label}: TIFF with white as zero and "
                         f"{'float' if floating else 'signed'} samples is not supported")

    def samples(arr: np.ndarray) -> _Samples:
        top = (1 << (bps - 1)) - 1 if signed else (1 << bps) - 1  # the largest value
        maxval = None if floating else float(top)
        bits = 32 if floating else bps
        if arr.dtype == bool:
            arr, top, maxval = arr.astype(np.uint8), 1, 1.0
        if kind == "MINISWHITE":
            arr = arr.copy()
            arr[..., 0] = top - arr[..., 0]
        elif kind == "PALETTE":
            cmap = np.asarray(page.colormap)
            index = arr[..., 0].astype(np.intp)
            if cmap.ndim != 2 or cmap.shape[0] != 3 or index.max() >= cmap.shape[1]:
                raise _damaged(label, "TIFF", "palette index beyond the colour map")
            # some writers store 8-bit colour maps unscaled; the spec says 16-bit
            maxval = 255.0 if cmap.max() < 256 else 65535.0
            bits = 8 if maxval == 255.0 else 16
            rgb = np.moveaxis(cmap[:, index], 0, 2)
            arr = np.concatenate([rgb, arr[..., 1:].astype(rgb.dtype)], axis=2)  # alpha: dropped
        elif kind == "SEPARATED":  # CMYK -> RGB as Pillow does: R = (1 - C)(1 - K) ...
            scale = 1.0 if maxval is None else 1.0 / maxval
            ink = arr[..., :4].astype(np.float32) * np.float32(scale)
            rgb = (1 - ink[..., :3]) * (1 - ink[..., 3:4])
            rest = arr[..., 4:].astype(np.float32) * np.float32(scale)
            arr, maxval = np.concatenate([rgb, rest], axis=2), None
        return _Samples(arr, 3 if kind in ("RGB", "PALETTE", "SEPARATED", "YCBCR") else 1,
                        maxval, bits, notes, alpha=bool(extras) and extra_kind == "alpha")

    return samples


def _to_image(arr: np.ndarray, s: _Samples, label: str) -> Image:
    """(H, W, C) samples -> Image with float32 (C', H, W): alpha dropped, integers scaled."""
    h, w, channels = arr.shape
    if channels not in (s.colour, s.colour + 1) or not h or not w:
        raise InputError(f"{label}: unsupported image layout {arr.shape}")
    pixels = np.empty((s.colour, h, w), np.float32)
    scale = None if s.maxval is None else np.float32(1.0 / s.maxval)
    for c in range(s.colour):
        if scale is None:
            pixels[c] = arr[:, :, c]
        else:
            np.multiply(arr[:, :, c], scale, out=pixels[c], casting="unsafe")
    had_alpha = channels > s.colour if s.alpha is None else s.alpha
    return Image(pixels=pixels, bits=s.bits, had_alpha=had_alpha)


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


# --- keeping decoders quiet ---------------------------------------------------------------
# Decoders warn (warnings.warn) and log (tifffile, imagecodecs, Pillow). While a thread reads
# an image, what it warns or logs at WARNING or above is collected for that thread and turned
# into notes; other threads' warnings are passed on untouched. Per-thread, because a Dask
# worker may read images in several threads at once.

_local = threading.local()
_hook_lock = threading.Lock()
_hook_users = 0
_hook_saved: Callable[..., None] | None = None
_ALWAYS = ("always", None, Warning, None, 0)  # a warning repeated by a later file is noted too
_LOGGERS = ("tifffile", "imagecodecs", "PIL")


def _showwarning(message, category, filename, lineno, file=None, line=None):
    caught = getattr(_local, "caught", None)
    if caught is None:
        assert _hook_saved is not None  # installed before this hook
        return _hook_saved(message, category, filename, lineno, file, line)
    caught.append(str(message))


class _LogCatcher(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        caught = getattr(_local, "caught", None)
        if caught is None or record.levelno < logging.WARNING:
            return True
        caught.append(record.getMessage())
        return False


_log_catcher = _LogCatcher()


_loggers_seen = -1


def _install_log_filter() -> None:
    """Attach the catcher to the decoders' loggers (Pillow has one per module), again
    whenever new loggers have appeared."""
    global _loggers_seen
    known = logging.root.manager.loggerDict
    if len(known) == _loggers_seen:
        return
    names = set(_LOGGERS) | {n for n in list(known) if n.split(".")[0] in _LOGGERS}
    for name in names:
        logger = logging.getLogger(name)
        if _log_catcher not in logger.filters:
            logger.addFilter(_log_catcher)
    _loggers_seen = len(known)


def _warning_filters() -> list:
    return warnings.filters  # type: ignore[return-value]  # a list, typed as a Sequence


def _filters_changed() -> None:
    for name in ("_filters_mutated_lock_held", "_filters_mutated"):  # 3.14, older
        hook = getattr(warnings, name, None)
        if hook is not None:
            with contextlib.suppress(Exception):
                hook()
            return


@contextlib.contextmanager
def _quiet() -> Iterator[list[str]]:
    global _hook_users, _hook_saved
    caught: list[str] = []
    outer = getattr(_local, "caught", None)
    _local.caught = caught
    _install_log_filter()
    with _hook_lock:
        if _hook_users == 0:
            _hook_saved = warnings.showwarning
            warnings.showwarning = _showwarning
            _warning_filters().insert(0, _ALWAYS)
            _filters_changed()
        _hook_users += 1
    try:
        with np.errstate(all="ignore"):
            yield caught
    finally:
        with _hook_lock:
            _hook_users -= 1
            if _hook_users == 0:
                if warnings.showwarning is _showwarning and _hook_saved is not None:
                    warnings.showwarning = _hook_saved
                with contextlib.suppress(ValueError):
                    _warning_filters().remove(_ALWAYS)
                _filters_changed()
        _local.caught = outer
        if outer is not None:
            outer.extend(caught)


def _caught_notes(caught: list[str], label: str, most: int = 3) -> list[str]:
    unique = list(dict.fromkeys(_squash(m) for m in caught))
    notes = [f"{label}: decoder warning: {m}" for m in unique[:most]]
    if len(unique) > most:
        notes.append(f"{label}: {len(unique) - most} more decoder warnings")
    return notes


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
        body = key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")
        chunks.append(_chunk(b"tEXt", body))
    chunks.append(_chunk(b"IDAT", _deflate(filtered.tobytes(), level)))
    chunks.append(_chunk(b"IEND", b""))
    return _PNG_SIG + b"".join(chunks)


def encode_preview(pixels: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """JPEG or WebP bytes (lossy, ``quality`` 1-100) for uint8 pixels (H, W) gray or
    (H, W, 3) RGB: previews, smaller than PNGs; their values are not exact."""
    from PIL import Image

    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"cannot encode {pixels.dtype} {pixels.shape} as {fmt}")
    img = Image.fromarray(np.ascontiguousarray(pixels), "L" if pixels.ndim == 2 else "RGB")
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, optimize=False)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, method=2)  # method 2: fast, near the best size
    else:
        raise ValueError(f"unknown preview format {fmt!r}")
    return buf.getvalue()


def encode_tiff(blocks: Iterable[np.ndarray], shape: tuple[int, ...],
                description: dict) -> bytes:
    """A float32 TIFF of maps (F, H, W) or (F, C, H, W) (stored as F*C planes): one page,
    one sample per plane, planar, uncompressed; ``description`` (JSON, with "filters": one
    name per plane) goes in its ImageDescription, as read_tiff_planes reads it. The blocks
    are consecutive slices along the first axis."""
    import tifffile

    planes = int(np.prod(shape[:-2]))
    data = np.empty((planes, *shape[-2:]), np.float32)
    at = 0
    for block in blocks:
        flat = np.asarray(block, np.float32).reshape(-1, *shape[-2:])
        data[at:at + len(flat)] = flat
        at += len(flat)
    buf = io.BytesIO()
    tifffile.imwrite(buf, data if planes > 1 else data[0], photometric="minisblack",
                     planarconfig="separate" if planes > 1 else None,  # one map: a plain page
                     description=json.dumps(description), metadata=None,
                     bigtiff=data.nbytes > 2**32 - 2**25)
    return buf.getvalue()


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
    return _squash(str(e)) or type(e).__name__


def _squash(text: str) -> str:
    """Text on one line (whitespace runs become one space), at most 200 characters."""
    text = printable(" ".join(text.split()))
    return text if len(text) <= 200 else text[:197] + "..."
