"""Reading every supported kind of image into float32 (C, H, W), and writing PNG/npy."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
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


# --- 16-bit colour PNG: our own decoder, checked against an independent encoder ------------

def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _png_with_filters(samples: np.ndarray, filters: list[int]) -> bytes:
    """Write a 16-bit RGB(A) PNG byte by byte, straight from the PNG specification."""
    h, w, ch = samples.shape
    bpp = 2 * ch
    raw = samples.astype(">u2").tobytes()
    stride = w * bpp
    out, prev = bytearray(), bytes(stride)
    for y in range(h):
        line = raw[y * stride:(y + 1) * stride]
        ft = filters[y % len(filters)]
        out.append(ft)
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][ft]
            out.append((line[x] - pred) % 256)
        prev = line

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if ch == 3 else 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out)))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_png_is_decoded_at_full_depth(channels):
    a = RNG.integers(0, 65536, (7, 6, channels), dtype=np.uint16)
    data = _png_with_filters(a, [0, 1, 2, 3, 4])
    img = images.read_image(data, label="x.png")
    assert img.bits == 16 and img.pixels.shape == (3, 7, 6) and img.had_alpha == (channels == 4)
    np.testing.assert_array_equal(np.rint(img.pixels * 65535).astype(np.uint16),
                                  np.moveaxis(a[:, :, :3], 2, 0))


def test_truncated_16_bit_png_is_a_clear_error():
    data = _png_with_filters(RNG.integers(0, 65536, (20, 20, 3), dtype=np.uint16), [4])
    with pytest.raises(InputError, match="^x.png: "):
        images.read_image(data[:80], label="x.png")


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
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(images.encode_png(a, level=level)))), a)


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
