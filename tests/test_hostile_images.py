"""Hostile inputs for the image reader: whatever the bytes or the file, read_image returns a
sane Image or raises InputError with one line naming the input, without blocking, without
reaching a decoder for a size it refuses, and without printing anything itself."""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convcli import images
from convcli.errors import InputError
from fuzz.seeds import valid_images

SEEDS = valid_images()


def finishes(fn, *args, **kw):
    """Run fn in a thread: a reader that blocks (a FIFO opened without O_NONBLOCK) fails the
    test instead of hanging the suite. The limit is a hang guard, far above any real cost."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kw)
        except BaseException as e:  # handed to the test below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), f"{fn.__name__} blocked"
    if "error" in out:
        raise out["error"]
    return out["value"]


def refusal(data_or_path, label="x", shown=None, **kw) -> str:
    """The one-line message read_image refuses the input with (``shown``: the label as the
    message prints it)."""
    with pytest.raises(InputError) as info:
        finishes(images.read_image, data_or_path, label=label, **kw)
    message = str(info.value)
    assert message.startswith(f"{shown or label}: ") and "\n" not in message, message
    return message


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width=4, height=3, depth=8, colour=0, extra=b"", after=b"", rows=None) -> bytes:
    if rows is None:
        rows = b"".join(b"\0" + bytes(width * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour] * depth // 8)
                        for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + extra + chunk(b"IDAT", zlib.compress(rows)) + after + chunk(b"IEND", b""))


def tiff_ifd(order: str, tags: list[tuple[int, int, int]], next_ifd: int) -> bytes:
    """A classic TIFF IFD of (tag, SHORT=3/LONG=4, value) entries with one value each."""
    body = struct.pack(order + "H", len(tags))
    for tag, kind, value in sorted(tags):
        body += struct.pack(order + "HHI", tag, kind, 1)
        body += (struct.pack(order + "HH", value, 0) if kind == 3
                 else struct.pack(order + "I", value))
    return body + struct.pack(order + "I", next_ifd)


def tiff_gray(width: int, height: int, pages: int = 1, loop: bool = False) -> bytes:
    """Gray 8-bit pages whose one strip is a single byte at offset 8 (enough for a header)."""
    out = bytearray(b"II*\0" + struct.pack("<I", 9) + b"\x7f")
    ifd_size = 2 + 9 * 12 + 4
    for i in range(pages):
        here = len(out)
        nxt = here if loop else (here + ifd_size if i + 1 < pages else 0)
        out += tiff_ifd("<", [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1),
                              (262, 3, 1), (273, 4, 8), (277, 3, 1), (278, 4, height),
                              (279, 4, 1)], nxt)
    return bytes(out)


# --- files that are not regular files -------------------------------------------------

def _special(tmp_path, kind):
    if kind == "FIFO":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)  # no writer: a blocking open would wait forever
        return path, "a FIFO", None
    if kind == "socket":
        path = tmp_path / "sock.png"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return path, "a socket", server
    return "/dev/zero", "a character device", None  # endless if it were read


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX special files")
@pytest.mark.parametrize("kind", ["FIFO", "socket", "character device"])
@pytest.mark.parametrize("via_link", [False, True])
def test_special_files_are_refused_without_blocking(tmp_path, kind, via_link):
    path, described, keep = _special(tmp_path, kind)
    if via_link:
        (tmp_path / "link.png").symlink_to(path)
        path = tmp_path / "link.png"
    expected = (f"{path}: not a regular file ({described}); give an image file, or pipe its "
                "bytes to stdin as -")
    assert refusal(path, label=str(path)) == expected
    with pytest.raises(InputError, match="not a regular file"):
        finishes(images.image_size, path)
    if keep is not None:
        keep.close()


def test_empty_folder_and_missing_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    for name, message in [("empty.png", "is empty (0 bytes)"),
                          ("dir.png", "is a folder, not an image"),
                          ("gone.png", "cannot open: No such file or directory")]:
        path = tmp_path / name
        assert refusal(path, label=str(path)) == f"{path}: {message}"
    assert refusal(b"", label="<stdin>") == "<stdin>: is empty (0 bytes)"


# --- sizes declared in the header: refused before any decoder runs ------------------------

def _jpeg_declaring(width, height):
    sof = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    sos = b"\x01\x01\x00\x00\x3f\x00"
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", 2 + len(sof)) + sof
            + b"\xff\xda" + struct.pack(">H", 2 + len(sos)) + sos + b"\x00" * 16 + b"\xff\xd9")


def _gif_declaring(width, height):
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x01\x00\x00;")


def _bmp_declaring(width, height):
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 4, 0, 0, 14 + len(info)) + info + bytes(4)


def _riff(first: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(first)) + b"WEBP" + first


def _webp_declaring(kind, width, height):
    if kind == "VP8X":
        body = b"\0\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif kind == "VP8L":
        body = b"\x2f" + struct.pack("<I", (width - 1) | (height - 1) << 14) + bytes(5)
    else:
        body = b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return _riff(kind.encode().ljust(4) + struct.pack("<I", len(body)) + body)


BOMBS = {
    "png": (png(100_000, 100_000, rows=bytes(64)), 100_000, 100_000),
    "png-16-rgb": (png(60_000, 50_000, 16, 2, rows=bytes(64)), 60_000, 50_000),
    "jpeg": (_jpeg_declaring(65_000, 60_000), 65_000, 60_000),
    "gif": (_gif_declaring(65_535, 65_535), 65_535, 65_535),
    "bmp": (_bmp_declaring(50_000, 40_000), 50_000, 40_000),
    "webp-vp8x": (_webp_declaring("VP8X", 20_000, 20_000), 20_000, 20_000),
    "webp-vp8l": (_webp_declaring("VP8L", 16_384, 16_384), 16_384, 16_384),
    "webp-vp8": (_webp_declaring("VP8 ", 16_383, 16_000), 16_383, 16_000),
    "tiff": (tiff_gray(200_000, 100_000), 200_000, 100_000),
}


@pytest.mark.parametrize("name", BOMBS)
def test_bombs_are_refused_from_the_header_with_the_numbers(monkeypatch, name):
    import imagecodecs
    import tifffile
    from PIL import ImageFile

    def no_decoding(*args, **kw):
        raise AssertionError("a decoder ran")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(imagecodecs, "png_decode", no_decoding)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decoding)
    data, w, h = BOMBS[name]
    assert refusal(data, label=name) == (
        f"{name}: {w}x{h} image has {w * h:,} pixels, over the limit of 100,000,000 (raise it "
        "with --max-pixels)")
    assert images.image_size(data) == (h, w)


# --- structures that would cost a parser time per item ------------------------------------

def _jpeg_seed():
    return SEEDS["jpeg"]


def _with_many_scans(n):
    data = _jpeg_seed()
    sos = data.index(b"\xff\xda")
    return data[:sos] + data[sos:-2] * n + b"\xff\xd9"


def _gif_with(blocks_before_image: bytes = b"", frames: int = 1):
    """The seed GIF with blocks put before its image, and its image repeated."""
    data = SEEDS["gif"]
    assert data[10] & 0x80  # Pillow writes a global colour table; the image follows it
    image = 13 + (3 << ((data[10] & 7) + 1))
    assert data[image] == 0x2C and data[-1:] == b";"
    return data[:image] + blocks_before_image + data[image:-1] * frames + b";"


FLOODS = {
    "png-chunks": (png(extra=chunk(b"abCd", b"") * (images.MAX_CHUNKS + 1)),
                   "x: damaged PNG file: more than 100,000 chunks before the image data"),
    "png-idat-huge": (png(after=chunk(b"IDAT", bytes(20 << 20))),
                      "x: damaged PNG file: 20,971,531 bytes of image data for 4x3 pixels"),
    "jpeg-segments": (_jpeg_seed()[:2] + b"\xff\xfe\x00\x02" * 5000 + _jpeg_seed()[2:],
                      "x: damaged JPEG file: more than 4,096 segments before the image data"),
    "jpeg-fill": (_jpeg_seed()[:2] + b"\xff" * 70_000 + _jpeg_seed()[2:],
                  "x: damaged JPEG file: more than 65,536 fill bytes between segments"),
    "jpeg-scans": (_with_many_scans(images.MAX_SCANS + 1),
                   "x: JPEG with more than 500 scans (a progressive JPEG has about 10); refused "
                   "as too costly to decode"),
    "gif-blocks": (_gif_with(b"\x21\xfe\x01a\x00" * (images.MAX_GIF_BLOCKS + 1)),
                   "x: damaged GIF file: more than 200,000 data blocks before its first image"),
    "tiff-strips": (None, "x: TIFF page stored in 10,001 strips or tiles of under 1,024 "
                          "pixels each (decoding costs per piece); re-save it with larger "
                          "strips or tiles"),
}


@pytest.mark.parametrize("name", FLOODS)
def test_floods_of_small_structures_are_refused(name):
    data, message = FLOODS[name]
    if name == "tiff-strips":
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, np.zeros((10_001, 1), np.uint8), rowsperstrip=1,
                         compression="zlib")
        data = buf.getvalue()
    assert refusal(data) == message


@pytest.mark.parametrize("name, data, shape", [
    ("gif", _gif_with(frames=images.MAX_FRAMES_COUNTED + 5), (3, 12, 9)),
    ("tiff", tiff_gray(1, 1, pages=images.MAX_FRAMES_COUNTED + 5), (1, 1, 1)),
])
def test_frames_are_counted_up_to_a_bound(name, data, shape):
    img = finishes(images.read_image, data, label="x")
    assert img.pixels.shape == shape and img.frames == images.MAX_FRAMES_COUNTED
    assert img.notes == ["x: has at least 10,000 frames; only the first is used"]


def test_tiff_pages_in_a_loop_are_counted_once():
    img = finishes(images.read_image, tiff_gray(1, 1, loop=True), label="x")
    assert img.frames == 1 and img.notes == []
    np.testing.assert_allclose(img.pixels, [[[0x7F / 255]]], rtol=1e-6)


# --- odd but valid: decoders' warnings and logs become notes, stderr stays empty ----------

def test_libpng_warning_becomes_a_note(capfd):
    img = images.read_image(png(extra=chunk(b"gAMA", b"\0\0")), label="x")
    assert img.pixels.shape == (1, 3, 4)
    assert any(n.startswith("x: decoder warning: ") and "gAMA" in n for n in img.notes), img.notes
    assert capfd.readouterr().err == ""


def test_tifffile_log_becomes_a_note(capfd):
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.full((4, 4), 9, np.uint8), description="hello")
    data = bytearray(buf.getvalue())
    at = data.index(struct.pack("<HH", 270, 2))
    data[at + 2:at + 4] = struct.pack("<H", 99)  # a tag type that does not exist
    img = images.read_image(bytes(data), label="x")
    np.testing.assert_array_equal(img.pixels, np.full((1, 4, 4), 9 / 255, np.float32))
    assert any("invalid data type 99" in n for n in img.notes), img.notes
    assert capfd.readouterr().err == ""


def test_warnings_of_any_kind_become_notes_and_the_hooks_are_restored(monkeypatch, capfd):
    from PIL import Image as PILImage

    real = images._decode_png

    def noisy(fh, head, label):
        warnings.warn("decompression bomb?", PILImage.DecompressionBombWarning, stacklevel=1)
        warnings.warn("overflow", RuntimeWarning, stacklevel=1)
        warnings.warn("overflow", RuntimeWarning, stacklevel=1)  # said twice, noted once
        logging.getLogger("PIL.PngImagePlugin").warning("odd chunk")
        logging.getLogger("PIL.PngImagePlugin").debug("not a note")
        np.float32(1e30) * np.float32(1e30)  # numpy's overflow warning is silenced
        return real(fh, head, label)

    monkeypatch.setattr(images, "_decode_png", noisy)
    before = (warnings.showwarning, list(warnings.filters))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning reaching Python's machinery would raise
        img = images.read_image(png(), label="x")
    assert img.notes == ["x: decoder warning: decompression bomb?",
                         "x: decoder warning: overflow", "x: decoder warning: odd chunk"]
    assert (warnings.showwarning, list(warnings.filters)) == before
    assert capfd.readouterr().err == ""


def test_other_threads_keep_their_warnings(monkeypatch):
    """Only the reading thread's warnings are captured: one thread blocks inside a decoder
    while the main thread warns."""
    real, inside, release = images._decode_png, threading.Event(), threading.Event()

    def slow(fh, head, label):
        inside.set()
        release.wait(60)
        warnings.warn("from the reader", stacklevel=1)
        return real(fh, head, label)

    monkeypatch.setattr(images, "_decode_png", slow)
    reader = threading.Thread(target=lambda: result.append(images.read_image(png(), label="x")))
    result: list = []
    reader.start()
    assert inside.wait(60)
    with pytest.warns(UserWarning, match="from the main thread"):
        warnings.warn("from the main thread", stacklevel=1)
    release.set()
    reader.join(60)
    assert result[0].notes == ["x: decoder warning: from the reader"]


def test_float_overflow_is_used_as_given_without_a_warning(capfd):
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.array([[1e300, -1e300], [0.5, np.nan]]))
    img = images.read_image(buf.getvalue(), label="x")
    assert img.bits == 32 and np.isposinf(img.pixels[0, 0, 0]) and np.isneginf(img.pixels[0, 0, 1])
    assert img.pixels[0, 1, 0] == 0.5 and np.isnan(img.pixels[0, 1, 1])
    assert capfd.readouterr().err == ""


# --- any exception from a decoder becomes one InputError line ---------------------------

@pytest.mark.parametrize("error", [
    ValueError("bad"), KeyError("k"), IndexError("i"), struct.error("unpack"), SyntaxError("s"),
    RecursionError("deep"), SystemError("sys"), ZeroDivisionError("z"), OSError(5, "I/O error"),
    EOFError(), AssertionError("a"), NotImplementedError("n"), TypeError("t"), OverflowError("o"),
    RuntimeError("line one\nline two"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"),
])
def test_any_decoder_exception_becomes_one_line(monkeypatch, error):
    def broken(*args, **kw):
        raise error

    monkeypatch.setattr(images, "_decode_png", broken)
    message = refusal(png(), label="in\nput.png", shown="in\\nput.png")  # newline escaped
    assert message.startswith("in\\nput.png: cannot decode this image (")


def test_memory_error_is_one_line(monkeypatch):
    import imagecodecs

    def exhausted(*args, **kw):
        raise MemoryError

    monkeypatch.setattr(imagecodecs, "png_decode", exhausted)
    assert refusal(png()) == "x: not enough memory to decode this image"


# --- damaged and foreign bytes ------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    (b"\x89PNG\r\n\x1a\n", "x: damaged PNG file: no IHDR header"),
    (png()[:40], "x: damaged PNG file: no image data (IDAT)"),
    (png(depth=3), "x: damaged PNG file: invalid header (4x3, bit depth 3, colour type 0)"),
    (b"\xff\xd8\xff", "x: damaged JPEG file: truncated (it ends before its image data)"),
    (b"\xff\xd8\xff\xe0\x00\x04ab\x00\x00", "x: damaged JPEG file: no marker at byte 8"),
    (_jpeg_declaring(0, 5), "x: damaged JPEG file: frame header declares 0x5 pixels"),
    (b"\xff\xd8\xff\xd9", "x: damaged JPEG file: it ends before its image data"),
    (b"GIF89a", "x: damaged GIF file: truncated header"),
    (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "x: damaged GIF file: no image in it"),
    (b"BM" + bytes(30), "x: damaged BMP file: unknown header size 0"),
    (_riff(b"VP9 " + bytes(14)), "x: damaged WebP file: unknown first chunk b'VP9 '"),
    (b"P6\n1 1\n255\nabc", "x: not a recognised image (unknown format or damaged file); "
                           "convcli reads PNG, JPEG, GIF, BMP, WebP and TIFF"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", "x: not a recognised image (unknown format or damaged "
                                   "file); convcli reads PNG, JPEG, GIF, BMP, WebP and TIFF"),
])
def test_damaged_or_foreign_bytes(data, message):
    assert refusal(data) == message


@pytest.mark.parametrize("name", ["png-rgb", "png-16-rgb", "jpeg-progressive", "gif-animated",
                                  "bmp-rle", "webp-lossy", "tiff-separate-lzw", "tiff-jpeg"])
def test_every_truncation_gives_an_image_or_one_line(name):
    data = SEEDS[name]
    for cut in range(1, len(data), max(1, len(data) // 150)):
        check(data[:cut], integer=True)


# --- stdin with a limit -------------------------------------------------------------------

class Endless(io.RawIOBase):
    """A stream that never ends, counting what was read from it."""

    def __init__(self):
        self.given = 0

    def readable(self):
        return True

    def readinto(self, buf):
        buf[:] = b"\xab" * len(buf)
        self.given += len(buf)
        return len(buf)


def test_read_limited_stops_at_the_limit():
    stream = Endless()
    with pytest.raises(InputError) as info:
        images.read_limited(stream, 3_000_000)
    assert str(info.value) == ("<stdin>: more than 3,000,000 bytes; that is over what the memory "
                               "budget allows for one input image (give a smaller image, or a "
                               "larger budget)")
    assert stream.given == 3_000_001  # it read one byte past the limit, no more


@pytest.mark.parametrize("size", [0, 1, 999_999, 1_000_000])
def test_read_limited_returns_streams_within_the_limit(size):
    data = os.urandom(size)
    assert images.read_limited(io.BytesIO(data), 1_000_000, label="in") == data
    if size:
        with pytest.raises(InputError, match=f"^in: more than {size - 1:,} bytes; "):
            images.read_limited(io.BytesIO(data), size - 1, label="in")


# --- fuzzing: damaged versions of valid files of every format ---------------------------

def check(data: bytes, integer: bool, label: str = "fuzz") -> None:
    """An Image of sane shape and values, or InputError with one line naming the input."""
    try:
        img = images.read_image(data, label=label, max_pixels=1_000_000)
    except InputError as e:
        assert str(e).startswith(f"{label}: ") and "\n" not in str(e)
        return
    px = img.pixels
    assert px.dtype == np.float32 and px.ndim == 3 and px.shape[0] in (1, 3)
    assert px.shape[1] >= 1 and px.shape[2] >= 1 and px.shape[1] * px.shape[2] <= 1_000_000
    assert px.flags.c_contiguous and img.frames >= 1
    if integer and not _declares_float(data):
        assert np.isfinite(px).all() and px.min() >= -1.0001 and px.max() <= 1.0


def _declares_float(data: bytes) -> bool:
    """A damaged TIFF may come to declare float samples, which are used as given."""
    if data[:2] not in (b"II", b"MM"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            return int(tf.pages[0].sampleformat) == 3
    except Exception:
        return True


@st.composite
def damaged(draw, names):
    name = draw(st.sampled_from(names))
    raw = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "header", "field", "cut", "insert"]))
        if op == "flip":  # any byte anywhere
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        elif op == "header":  # bytes of the first 64: sizes, types, offsets
            raw[draw(st.integers(0, min(63, len(raw) - 1)))] = draw(st.integers(0, 255))
        elif op == "field":  # a 16/32-bit field set to an extreme
            at = draw(st.integers(0, max(0, len(raw) - 4)))
            raw[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0",
                                                   b"\x7f\xff\xff\xff", b"\0\0\xff\xff"]))
        elif op == "cut":
            del raw[draw(st.integers(1, len(raw))):]
        else:
            at = draw(st.integers(0, len(raw)))
            raw[at:at] = draw(st.binary(min_size=1, max_size=16))
        if not raw:
            raw = bytearray(b"\0")
    return name, bytes(raw)


FAMILIES = sorted({name.split("-")[0] for name in SEEDS})


@pytest.mark.parametrize("family", FAMILIES)
@given(st.data())
def test_damaged_files_give_an_image_or_one_line(family, data):
    name, raw = data.draw(damaged([n for n in SEEDS if n.split("-")[0] == family]))
    check(raw, integer=name not in ("tiff-float",))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # one folder is fine
@given(damaged(sorted(SEEDS)))
def test_damaged_files_from_disk_and_stdin(tmp_path, case):
    name, raw = case
    path = tmp_path / f"{name}.img"
    path.write_bytes(raw)
    piped = images.read_limited(io.BytesIO(raw), 1 << 20)
    for source, label in ((str(path), str(path)), (piped, "<stdin>")):
        try:
            img = images.read_image(source, label=label, max_pixels=1_000_000)
        except InputError as e:
            assert str(e).startswith(f"{label}: ") and "\n" not in str(e)
        else:
            assert img.pixels.dtype == np.float32 and img.pixels.ndim == 3


# --- damaged PNGs are caught before libpng (whose error path leaks a reference) ---------

def _raw_png(rows: bytes, width=4, height=3, depth=8, colour=0, compress=zlib.compress):
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", compress(rows)) + chunk(b"IEND", b""))


GOOD_ROWS = b"".join(b"\x01" + bytes([9, 1, 1, 1]) for _ in range(3))  # Sub filter: 9, 10, ...

DAMAGED_PNGS = {
    "bad filter": (_raw_png(GOOD_ROWS[:5] + b"\x07" + GOOD_ROWS[6:]),
                   "damaged PNG file: unknown row filter type 7"),
    "short data": (_raw_png(GOOD_ROWS[:-3]), "damaged PNG file: truncated (the image data ends "
                                             "early)"),
    "stream not ended": (_raw_png(GOOD_ROWS, compress=lambda b: zlib.compress(b)[:-4]),
                         "damaged PNG file: truncated (the image data ends early)"),
    "bad checksum": (_raw_png(GOOD_ROWS, compress=lambda b: zlib.compress(b)[:-1] + b"\0"),
                     "damaged PNG file: corrupt image data (Error -3 while decompressing data: "
                     "incorrect data check)"),
    "not zlib": (_raw_png(GOOD_ROWS, compress=lambda b: b"\0" * 20),
                 "damaged PNG file: corrupt image data (Error -3 while decompressing data: "
                 "unknown compression method)"),
    "idat crc": (png()[:-13] + bytes([png()[-13] ^ 1]) + png()[-12:],  # IDAT's CRC, then IEND
                 "damaged PNG file: CRC error in its IDAT chunk"),
    "unknown critical": (png(extra=chunk(b"ABCD", b"")),
                         "damaged PNG file: unknown critical chunk ABCD"),
    "two headers": (png(extra=chunk(b"IHDR", png()[16:29])),
                    "damaged PNG file: a second IHDR chunk"),
    "no palette": (png(colour=3), "damaged PNG file: palette image without a palette (PLTE)"),
    "palette in gray": (png(extra=chunk(b"PLTE", bytes(6))),
                        "damaged PNG file: invalid PLTE chunk (6 bytes)"),
    "bad chunk name": (png(extra=chunk(b"a1b2", b"")),
                       "damaged PNG file: invalid chunk name 'a1b2' at byte 33"),
    "too wide": (png(2_000_000, 1, rows=b"\0"),
                 "PNG of 2000000x1 pixels is wider or taller than the 1,000,000 pixels "
                 "convcli's PNG decoder takes"),
}


@pytest.mark.parametrize("name", DAMAGED_PNGS)
def test_damaged_png_is_refused_before_libpng(monkeypatch, name):
    import imagecodecs

    data, message = DAMAGED_PNGS[name]
    monkeypatch.setattr(imagecodecs, "png_decode", lambda *a, **k: pytest.fail("libpng ran"))
    assert refusal(data) == f"x: {message}"


def test_good_rows_of_the_damage_table_do_decode():
    img = images.read_image(_raw_png(GOOD_ROWS), label="x")
    np.testing.assert_allclose(img.pixels[0], np.tile([9, 10, 11, 12], (3, 1)) / 255, rtol=1e-6)


def test_many_damaged_pngs_leave_the_interpreter_intact():
    """libpng's error path in imagecodecs drops a reference to None each time; thousands of
    damaged PNGs in one batch would crash Python < 3.12. None of them reaches it now."""
    import gc
    import sys

    cases = [data for data, _ in DAMAGED_PNGS.values()]
    for data in cases:  # warm up: first-time imports and caches
        with pytest.raises(InputError):
            images.read_image(data)
    gc.collect()
    before = sys.getrefcount(None)
    for _ in range(50):
        for data in cases:
            with pytest.raises(InputError):
                images.read_image(data)
    gc.collect()
    assert sys.getrefcount(None) >= before - 20  # ~600 reads: a leak would show as -600
