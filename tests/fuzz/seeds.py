"""Small valid images of every format and variant convcli reads: the seeds that the fuzzers
(tests/test_hostile_images.py, tests/fuzz/atheris_parsers.py) damage."""

from __future__ import annotations

import io

import numpy as np


def _pillow(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _tiff(arr, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def valid_images() -> dict[str, bytes]:
    """name -> bytes; the name starts with the format."""
    import imagecodecs
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6
    frames = [im.convert("P"), im.rotate(90).convert("P")]
    out = {
        "png-rgb": _pillow(im, "PNG"),
        "png-gray": _pillow(im.convert("L"), "PNG"),
        "png-rgba": _pillow(im.convert("RGBA"), "PNG"),
        "png-palette": _pillow(im.convert("P"), "PNG"),
        "png-bilevel": _pillow(im.convert("1"), "PNG"),
        "png-exif": _pillow(im, "PNG", exif=exif),
        "png-16-rgb": imagecodecs.png_encode(rng.integers(0, 65536, (7, 5, 3), dtype=np.uint16),
                                             filter=imagecodecs.PNG.FILTER.PAETH),
        "png-16-rgba": imagecodecs.png_encode(rng.integers(0, 65536, (5, 4, 4),
                                                           dtype=np.uint16)),
        "png-16-gray": _pillow(Image.fromarray(rng.integers(0, 65536, (6, 5),
                                                            dtype=np.uint16)), "PNG"),
        "png-animated": _pillow(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "jpeg": _pillow(im, "JPEG", quality=90),
        "jpeg-progressive": _pillow(im, "JPEG", progressive=True),
        "jpeg-gray": _pillow(im.convert("L"), "JPEG"),
        "jpeg-cmyk": _pillow(im.convert("CMYK"), "JPEG"),
        "jpeg-exif": _pillow(im, "JPEG", exif=exif),
        "gif": _pillow(im.convert("P"), "GIF"),
        "gif-animated": _pillow(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "gif-transparent": _pillow(Image.fromarray(np.dstack([rgb, (rgb[..., 0] > 60) * 255])
                                   .astype(np.uint8)), "GIF"),
        "bmp": _pillow(im, "BMP"),
        "bmp-palette": _pillow(im.convert("P"), "BMP"),
        "bmp-rle": _pillow(im.convert("P"), "BMP", compression=1) if _bmp_rle_ok() else b"",
        "webp-lossless": _pillow(im, "WEBP", lossless=True),
        "webp-lossy": _pillow(im, "WEBP", quality=80),
        "webp-alpha": _pillow(im.convert("RGBA"), "WEBP", lossless=True),
        "webp-exif": _pillow(im, "WEBP", lossless=True, exif=exif),
        "webp-animated": _pillow(im, "WEBP", save_all=True, append_images=[im.rotate(90)],
                                 lossless=True),
        "tiff-rgb": _tiff(rgb, photometric="rgb"),
        "tiff-separate-lzw": _tiff(np.moveaxis(rgb, 2, 0).copy(), photometric="rgb",
                                   planarconfig="separate", compression="lzw"),
        "tiff-deflate-16": _tiff(rng.integers(0, 65536, (8, 6), dtype=np.uint16),
                                 compression="zlib"),
        "tiff-jpeg": _tiff(rgb, photometric="rgb", compression="jpeg"),
        "tiff-packbits-bilevel": _tiff(rgb[..., 0] > 128, photometric="miniswhite",
                                       compression="packbits"),
        "tiff-palette": _tiff(rgb[..., 0], photometric="palette",
                              colormap=rng.integers(0, 65536, (3, 256), dtype=np.uint16)),
        "tiff-cmyk": _tiff(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8),
                           photometric="separated"),
        "tiff-float": _tiff(rng.random((6, 5)).astype(np.float32)),
        "tiff-int16": _tiff(rng.integers(-32768, 32768, (6, 5), dtype=np.int16)),
        "tiff-rgba-tiled": _tiff(rng.integers(0, 256, (32, 48, 4), dtype=np.uint8),
                                 photometric="rgb", extrasamples=["unassalpha"],
                                 tile=(16, 16)),
        "tiff-pages": _tiff_pages(rgb),
        "tiff-orientation": _tiff(rgb[..., 0], extratags=[(274, 3, 1, 8, True)]),
        "bigtiff": _tiff(rgb, photometric="rgb", bigtiff=True),
    }
    return {name: data for name, data in out.items() if data}


def _tiff_pages(rgb) -> bytes:
    import tifffile

    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        tw.write(rgb, photometric="rgb")
        tw.write(rgb[::-1], photometric="rgb")
    return buf.getvalue()


def _bmp_rle_ok() -> bool:
    """Pillow writes RLE8 BMPs from version 11 on."""
    from PIL import Image

    try:
        _pillow(Image.new("P", (2, 2)), "BMP", compression=1)
    except Exception:
        return False
    return True
