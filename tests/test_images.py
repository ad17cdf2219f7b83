"""Reading every supported kind of image into float32 (C, H, W), and writing PNG/npy."""

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from convcli import images
from convcli.errors import InputError, OutputError

RNG = np.random.default_rng(7)


def rgb8(h=6, w=5):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(tmp_path, name, pil_image, **kw):
    path = tmp_path / name
    pil_image.save(path, **kw)
    return path


@pytest.mark.parametrize("suffix, kw", [("png", {}), ("bmp", {}), ("webp", {"lossless": True}),
                                        ("tif", {})])
def test_lossless_rgb_formats_read_exactly(tmp_path, suffix, kw):
    a = rgb8()
    img = images.read_image(save(tmp_path, f"a.{suffix}", Image.fromarray(a), **kw))
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (3, 6, 5)
    np.testing.assert_allclose(img.pixels, np.moveaxis(a, 2, 0) / 255, atol=1e-7)
    assert img.bits == 8 and not img.had_alpha


def test_jpeg_reads_close(tmp_path):
    a = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    img = images.read_image(save(tmp_path, "a.jpg", Image.fromarray(a), quality=95))
    np.testing.assert_allclose(img.pixels[:, 8, 8], np.array([200, 100, 50]) / 255, atol=0.02)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    img = images.read_image(save(tmp_path, "c.jpg", Image.new("CMYK", (8, 4), (0, 255, 255, 0))))
    assert img.pixels.shape == (3, 4, 8)
    np.testing.assert_allclose(img.pixels[:, 2, 2], [1, 0, 0], atol=0.03)  # cyan-free = red


def test_gray_16_bit_png_keeps_its_depth(tmp_path):
    a = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    img = images.read_image(save(tmp_path, "g.png", Image.fromarray(a)))
    assert img.bits == 16 and img.pixels.shape == (1, 5, 7)
    np.testing.assert_allclose(img.pixels[0], a / 65535, rtol=1e-6)


def test_alpha_is_dropped_and_reported(tmp_path):
    a = np.dstack([rgb8(), np.full((6, 5), 9, np.uint8)])
    img = images.read_image(save(tmp_path, "a.png", Image.fromarray(a, "RGBA")))
    assert img.had_alpha and img.pixels.shape == (3, 6, 5)
    la = images.read_image(save(tmp_path, "la.png", Image.fromarray(a[:, :, ::2][:, :, :2], "LA")))
    assert la.had_alpha and la.pixels.shape == (1, 6, 5)


def test_palette_image_becomes_rgb(tmp_path):
    p = Image.new("P", (4, 3))
    p.putpalette([10, 20, 30] + [0] * 765)
    img = images.read_image(save(tmp_path, "p.png", p))
    np.testing.assert_allclose(img.pixels[:, 0, 0], np.array([10, 20, 30]) / 255, atol=1e-7)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((2, 4), np.uint8)
    a[0, 0] = 255  # stored top-left
    pil = Image.fromarray(a)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img = images.read_image(save(tmp_path, "o.png", pil, exif=exif))
    assert img.pixels.shape == (1, 4, 2)
    assert img.pixels[0, 0, 1] == 1.0 and img.pixels.sum() == 1.0  # now top-right


def test_multi_frame_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("L", (6, 4), v) for v in (50, 150, 250)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    img = images.read_image(path)
    assert img.frames == 3 and img.notes == [f"{path}: has 3 frames; only the first is used"]
    assert abs(float(img.pixels.mean()) - 50 / 255) < 0.01


def test_multi_page_tiff_and_16_bit_colour_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    path = tmp_path / "m.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(a)
        tw.write(a // 2)
    img = images.read_image(path)
    assert img.frames == 2 and img.bits == 16
    np.testing.assert_allclose(img.pixels, np.moveaxis(a, 2, 0) / 65535, rtol=1e-6)


# --- 16-bit colour PNG (libpng through imagecodecs), checked against the specification -----

def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filtered(raw: bytes, width_bytes: int, bpp: int, filters: list[int]) -> bytes:
    """Rows of ``raw`` filtered byte by byte, straight from the PNG specification (9.2)."""
    out, prev = bytearray(), bytes(width_bytes)
    for y in range(len(raw) // width_bytes):
        line = raw[y * width_bytes:(y + 1) * width_bytes]
        ft = filters[y % len(filters)]
        out.append(ft)
        for x in range(width_bytes):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][ft]
            out.append((line[x] - pred) % 256)
        prev = line
    return bytes(out)


# Adam7 passes (PNG specification 8.2): first column, first row, column step, row step
_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2)]


def _png_with_filters(samples: np.ndarray, filters: list[int], interlace: bool = False) -> bytes:
    """Write an 8- or 16-bit gray/RGB(A) PNG from the specification, every filter type in
    turn (and the Adam7 passes, each filtered from a zero row, when interlaced)."""
    h, w, ch = samples.shape
    depth = 8 * samples.dtype.itemsize
    bpp = ch * samples.dtype.itemsize
    passes = _ADAM7 if interlace else [(0, 0, 1, 1)]
    data = b""
    for x0, y0, dx, dy in passes:
        sub = samples[y0::dy, x0::dx]
        if sub.size:
            data += _filtered(sub.astype(sub.dtype.newbyteorder(">")).tobytes(),
                              sub.shape[1] * bpp, bpp, filters)

    def chunk(kind, body):
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    colour = {1: 0, 2: 4, 3: 2, 4: 6}[ch]
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data))
            + chunk(b"IEND", b""))


def test_the_specification_writer_agrees_with_pillow():
    """The oracle writer checked on 8-bit data, which Pillow decodes (also interlaced)."""
    a = RNG.integers(0, 256, (13, 11, 3), dtype=np.uint8)
    for interlace in (False, True):
        data = _png_with_filters(a, [0, 1, 2, 3, 4], interlace)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), a)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_16_bit_png_is_decoded_at_full_depth(channels, interlace):
    a = RNG.integers(0, 65536, (13, 10, channels), dtype=np.uint16)
    data = _png_with_filters(a, [0, 1, 2, 3, 4], interlace)
    img = images.read_image(data, label="x.png")
    colour = 1 if channels <= 2 else 3
    assert img.bits == 16 and img.pixels.shape == (colour, 13, 10)
    assert img.had_alpha == (channels in (2, 4))
    np.testing.assert_array_equal(np.rint(img.pixels * 65535).astype(np.uint16),
                                  np.moveaxis(a[:, :, :colour], 2, 0))


def test_megapixel_16_bit_paeth_png_decodes_exactly():
    """A photo-sized file of the kind the old pure-Python decoder took seconds over."""
    import imagecodecs

    a = RNG.integers(0, 65536, (1000, 1000, 3), dtype=np.uint16)
    data = imagecodecs.png_encode(a, filter=imagecodecs.PNG.FILTER.PAETH, level=1)
    rows = zlib.decompress(b"".join(_idat(data)))
    assert {rows[y * (6000 + 1)] for y in range(1000)} == {4}  # every row is Paeth-filtered
    img = images.read_image(data, label="x")
    np.testing.assert_array_equal(np.rint(img.pixels * 65535).astype(np.uint16),
                                  np.moveaxis(a, 2, 0))


def _idat(data: bytes):
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            yield data[pos + 8:pos + 8 + length]
        pos += 12 + length


def test_truncated_16_bit_png_is_a_clear_error():
    data = _png_with_filters(RNG.integers(0, 65536, (20, 20, 3), dtype=np.uint16), [4])
    with pytest.raises(InputError, match="^x.png: damaged PNG file: truncated"):
        images.read_image(data[:80], label="x.png")


# --- orientation (EXIF in JPEG, PNG and WebP; TIFF's own tag) ---------------------------

def upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The image as displayed, from the EXIF specification's words for each value: where
    the stored 0th row and 0th column go (1: top/left, 2: top/right, 3: bottom/right,
    4: bottom/left, 5: left/top, 6: right/top, 7: right/bottom, 8: left/bottom)."""
    row, col = {1: ("top", "left"), 2: ("top", "right"), 3: ("bottom", "right"),
                4: ("bottom", "left"), 5: ("left", "top"), 6: ("right", "top"),
                7: ("right", "bottom"), 8: ("left", "bottom")}[orientation]
    out = stored
    if row in ("left", "right"):  # rows become columns
        out = np.swapaxes(out, 0, 1)
        if row == "right":
            out = out[:, ::-1]
        if col == "bottom":
            out = out[::-1]
    else:
        if row == "bottom":
            out = out[::-1]
        if col == "right":
            out = out[:, ::-1]
    return out


def _pillow_upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    from PIL import ImageOps

    pil = Image.fromarray(stored)
    pil.getexif()[0x0112] = orientation
    return np.asarray(ImageOps.exif_transpose(pil))


def _blocks(h: int, w: int) -> np.ndarray:
    """Gray 8x8 blocks of distinct levels: survives JPEG, and no two orientations agree."""
    count = (h // 8) * (w // 8)
    levels = np.arange(count).reshape(h // 8, w // 8) * 255 // (count - 1)
    return np.kron(levels, np.ones((8, 8))).astype(np.uint8)


def _with_orientation(fmt: str, stored: np.ndarray, orientation: int) -> bytes:
    pil = Image.fromarray(stored)
    exif = pil.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(buf, stored, extratags=[(274, 3, 1, orientation, True)])
    elif fmt == "jpeg":
        pil.save(buf, "JPEG", quality=95, exif=exif)
    elif fmt == "webp":
        pil.save(buf, "WEBP", lossless=True, exif=exif)
    else:
        pil.save(buf, "PNG", exif=exif)
        if fmt == "png-exif-last":  # eXIf after the image data, as the PNG spec allows
            data = buf.getvalue()
            start = data.index(b"eXIf") - 4
            end = start + 12 + struct.unpack(">I", data[start:start + 4])[0]
            iend = data.index(b"IEND") - 4
            return data[:start] + data[end:iend] + data[start:end] + data[iend:]
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["jpeg", "png", "png-exif-last", "webp", "tiff"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_in_every_format(fmt, orientation):
    stored = _blocks(16, 24)
    want = upright(stored, orientation)
    np.testing.assert_array_equal(want, _pillow_upright(stored, orientation))  # two oracles
    data = _with_orientation(fmt, stored, orientation)
    img = images.read_image(data, label="x")
    assert img.pixels.shape == ((3,) if fmt == "webp" else (1,)) + want.shape  # WebP: no gray
    tolerance = 3 / 255 if fmt == "jpeg" else 1e-7
    for channel in img.pixels:
        np.testing.assert_allclose(channel, want / 255, atol=tolerance)
    assert images.image_size(data) == want.shape


# --- TIFF variants ------------------------------------------------------------------------

TIFF_KINDS = {  # photometric -> sample types written
    "minisblack": [bool, np.uint8, np.uint16, np.int8, np.int16, np.float32],
    "miniswhite": [bool, np.uint8, np.uint16, np.int16, np.float32],
    "rgb": [np.uint8, np.uint16, np.float32],
    "palette": [np.uint8],
    "separated": [np.uint8, np.uint16],
}


def _samples(dtype, shape, rng):
    if dtype is bool:
        return rng.integers(0, 2, shape).astype(bool)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0.5, 2.0, shape).astype(dtype)  # not confined to [0, 1]
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _expected(kind: str, a: np.ndarray, colormap=None) -> np.ndarray:
    """What the TIFF spec says the samples mean, as float64 (H, W, C) without alpha."""
    def scaled(x):
        if x.dtype == bool:
            return x.astype(np.float64)
        if x.dtype.kind == "f":
            return x.astype(np.float64)
        return x.astype(np.float64) / np.iinfo(x.dtype).max  # signed: [-1, 1]
    if kind == "minisblack":
        return scaled(a[..., :1])
    if kind == "miniswhite":
        return 1.0 - scaled(a[..., :1])
    if kind == "rgb":
        return scaled(a[..., :3])
    if kind == "palette":
        return np.moveaxis(colormap[:, a[..., 0]], 0, 2) / (255 if colormap.max() < 256 else 65535)
    ink = scaled(a[..., :4])  # CMYK, converted as Pillow does
    return (1 - ink[..., :3]) * (1 - ink[..., 3:4])


@given(kind=st.sampled_from(sorted(TIFF_KINDS)), data=st.data(),
       h=st.integers(1, 9), w=st.integers(1, 9), orientation=st.integers(1, 8),
       alpha=st.booleans(), separate=st.booleans(),
       compression=st.sampled_from([None, "lzw", "zlib", "packbits"]))
def test_tiff_variants_read_as_the_spec_says(kind, data, h, w, orientation, alpha, separate,
                                            compression):
    import tifffile

    dtype = data.draw(st.sampled_from(TIFF_KINDS[kind]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    colour = {"rgb": 3, "separated": 4}.get(kind, 1)
    alpha = alpha and dtype is not bool and kind != "palette"
    a = _samples(dtype, (h, w, colour + alpha), rng)
    kw = dict(photometric=kind, compression=compression,
              extratags=[(274, 3, 1, orientation, True)])
    colormap = None
    if kind == "palette":
        high = data.draw(st.sampled_from([256, 65536]))  # 8-bit maps stored unscaled, or 16-bit
        colormap = rng.integers(0, high, (3, 256), dtype=np.uint16)
        kw["colormap"] = colormap
    if alpha:
        kw["extrasamples"] = ["unassalpha"]
    stored = a if colour + alpha > 1 else a[..., 0]
    if colour + alpha > 1:  # said explicitly: tifffile guesses from the shape otherwise
        kw["planarconfig"] = "separate" if separate else "contig"
        if separate:
            stored = np.ascontiguousarray(np.moveaxis(a, 2, 0))
    buf = io.BytesIO()
    tifffile.imwrite(buf, stored, **kw)
    if kind == "miniswhite" and np.dtype(dtype).kind in "if":
        with pytest.raises(InputError, match="^x.tif: TIFF with white as zero and (signed|float) "
                                             "samples is not supported$"):
            images.read_image(buf.getvalue(), label="x.tif")
        return
    img = images.read_image(buf.getvalue(), label="x.tif")
    want = upright(_expected(kind, a, colormap), orientation)
    assert img.had_alpha == alpha and img.pixels.shape == (want.shape[2],) + want.shape[:2]
    np.testing.assert_allclose(img.pixels, np.moveaxis(want, 2, 0), rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("photometric, shape", [("minisblack", (24, 40)), ("rgb", (24, 40, 3))])
@pytest.mark.parametrize("tile", [None, (16, 16)])
def test_jpeg_compressed_tiff(photometric, shape, tile):
    import tifffile

    gray = _blocks(24, 40)
    a = np.ascontiguousarray(np.broadcast_to(gray[..., None], (24, 40, 3)) if len(shape) == 3
                             else gray)
    buf = io.BytesIO()
    tifffile.imwrite(buf, a, photometric=photometric, compression="jpeg",
                     compressionargs={"level": 95}, tile=tile)
    img = images.read_image(buf.getvalue(), label="x")
    want = a.reshape(shape[:2] + (-1,))
    np.testing.assert_allclose(img.pixels, np.moveaxis(want, 2, 0) / 255, atol=4 / 255)


def test_12_bit_tiff_is_scaled_by_its_own_depth():
    import tifffile

    a = RNG.integers(0, 4096, (5, 7), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, a, bitspersample=12)
    img = images.read_image(buf.getvalue(), label="x")
    assert img.bits == 12
    np.testing.assert_allclose(img.pixels[0], a / 4095, rtol=1e-6)


def _tiff_bytes(a, **kw):
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, a, **kw)
    return buf.getvalue()


def _with_tag(data: bytes, tag: int, value: int) -> bytes:
    """The TIFF with one SHORT tag of its first IFD set to value."""
    out = bytearray(data)
    ifd = struct.unpack("<I", out[4:8])[0]
    for i in range(struct.unpack("<H", out[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack("<H", out[at:at + 2])[0] == tag:
            out[at + 8:at + 10] = struct.pack("<H", value)
            return bytes(out)
    raise AssertionError(f"no tag {tag}")


@pytest.mark.parametrize("data, message", [
    (_tiff_bytes(RNG.integers(0, 256, (4, 5, 5), dtype=np.uint8), photometric="rgb",
                 planarconfig="contig", extrasamples=["unspecified", "unspecified"]),
     "x.tif: TIFF with 5 samples per pixel (RGB with 2 extra samples) is not supported; "
     "convcli reads gray, RGB or CMYK with at most one alpha sample"),
    (_tiff_bytes(RNG.integers(0, 256, (4, 5, 8), dtype=np.uint8), photometric="separated",
                 planarconfig="contig", extrasamples=["unspecified"] * 4),
     "x.tif: TIFF with 8 samples per pixel (SEPARATED with 4 extra samples) is not "
     "supported; convcli reads gray, RGB or CMYK with at most one alpha sample"),
    (_with_tag(_tiff_bytes(np.zeros((4, 5, 3), np.uint8), photometric="rgb"), 262, 8),
     "x.tif: TIFF photometric interpretation CIELAB is not supported (convcli reads gray, "
     "RGB, palette, CMYK and JPEG YCbCr)"),
    (_with_tag(_tiff_bytes(np.zeros((4, 5, 3), np.uint8), photometric="rgb"), 262, 6),
     "x.tif: YCbCr TIFF without JPEG compression is not supported; save it as RGB"),
    (_with_tag(_tiff_bytes(np.zeros((4, 5), np.uint8)), 259, 34712),
     "x.tif: TIFF compression JPEG2000 is not supported (convcli reads uncompressed, LZW, "
     "deflate, PackBits, LZMA, Zstandard and JPEG TIFFs)"),
    (_tiff_bytes(np.zeros((4, 5), np.complex64), photometric="minisblack"),
     "x.tif: TIFF sample format COMPLEXIEEEFP (64-bit) is not supported"),
])
def test_unusual_tiff_layouts_are_one_line(data, message):
    with pytest.raises(InputError) as info:
        images.read_image(data, label="x.tif")
    assert str(info.value) == message


def test_tiff_unspecified_extra_sample_is_dropped_with_a_note():
    a = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    img = images.read_image(_tiff_bytes(a, photometric="rgb", planarconfig="contig",
                                        extrasamples=["unspecified"]), label="x.tif")
    np.testing.assert_allclose(img.pixels, np.moveaxis(a[..., :3], 2, 0) / 255, rtol=1e-6)
    assert not img.had_alpha
    assert img.notes == ["x.tif: its extra TIFF sample (unspecified) is ignored"]


def test_image_size_agrees_with_read_image():
    sys.path.insert(0, str(Path(__file__).parent))
    from fuzz.seeds import valid_images

    for name, data in valid_images().items():
        assert images.image_size(data) == images.read_image(data).pixels.shape[1:], name


# --- writing ------------------------------------------------------------------------------

@pytest.mark.parametrize("pixels", [
    RNG.integers(0, 256, (9, 7), dtype=np.uint8),
    RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8),
    RNG.integers(0, 65536, (9, 7), dtype=np.uint16),
])
def test_encode_png_round_trips_through_pillow(pixels):
    data = images.encode_png(pixels, {"convcli": '{"a": 1}'}, level=1)
    pil = Image.open(io.BytesIO(data))
    assert pil.text == {"convcli": '{"a": 1}'}
    np.testing.assert_array_equal(np.asarray(pil), pixels)


@pytest.mark.parametrize("level", range(10))
def test_every_compression_level_decodes(level):
    a = RNG.integers(0, 256, (33, 17, 3), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(images.encode_png(a, level=level)))
    np.testing.assert_array_equal(np.asarray(decoded), a)


def test_encode_png_16_bit_rgb_round_trips():
    a = RNG.integers(0, 65536, (5, 8, 3), dtype=np.uint16)
    img = images.read_image(images.encode_png(a), label="x")
    np.testing.assert_array_equal(np.rint(img.pixels * 65535), np.moveaxis(a, 2, 0))


def test_npy_bytes_load_back():
    a = RNG.random((2, 3, 4)).astype(np.float32)
    data = b"".join(images.npy_chunks(a.shape, [a[:1], a[1:]]))
    np.testing.assert_array_equal(np.load(io.BytesIO(data)), a)


def test_write_atomic_leaves_only_the_complete_file(tmp_path):
    target = tmp_path / "sub" / "a.png"
    images.write_atomic(target, b"hello")
    images.write_atomic(target, b"world!")
    assert target.read_bytes() == b"world!"
    assert [p.name for p in target.parent.iterdir()] == ["a.png"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_write_atomic_failure_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "a.png"

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images.os, "replace", full_disk)
    with pytest.raises(OutputError, match=f"^{target}: cannot write: No space left on device$"):
        images.write_atomic(target, b"data")
    assert list(tmp_path.iterdir()) == []


# --- bad inputs ---------------------------------------------------------------------------

def test_bad_inputs_give_one_line(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image\n")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    for path, message in [(empty, "is empty (0 bytes)"),
                          (text, "not a recognised image (unknown format or damaged file)"),
                          (folder, "is a folder, not an image"),
                          (tmp_path / "missing.png", "cannot open: No such file or directory")]:
        with pytest.raises(InputError) as info:
            images.read_image(path)
        assert str(info.value).startswith(f"{path}: {message}")
        assert "\n" not in str(info.value)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = save(tmp_path, "big.png", Image.new("L", (300, 200)))
    with pytest.raises(InputError, match=r"300x200 image has 60,000 pixels, over the limit of "
                                         r"50,000 \(raise it with --max-pixels\)"):
        images.read_image(path, max_pixels=50_000)


def test_as_channels():
    px = RNG.random((3, 4, 5)).astype(np.float32)
    gray = images.as_channels(px, "gray")
    np.testing.assert_allclose(gray[0], 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2], rtol=1e-6)
    assert images.as_channels(gray, "rgb").shape == (3, 4, 5)
    assert images.as_channels(px, "depthwise") is px
