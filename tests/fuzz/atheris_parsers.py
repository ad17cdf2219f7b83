"""Coverage-guided fuzzing of the bank loader and the image reader with atheris (libFuzzer).

Not part of the test suite (it runs until stopped). The property is the one
tests/test_fuzz.py and tests/test_hostile_images.py check: any input gives a result or the
documented error, nothing else (an uncaught exception, a crash or a hang is a finding).

    pip install atheris
    python tests/fuzz/atheris_parsers.py seed corpus/          # valid images of every kind
    python tests/fuzz/atheris_parsers.py bank  -max_total_time=300 [corpus/]
    python tests/fuzz/atheris_parsers.py image -max_total_time=300 -timeout=10 corpus/
    python tests/fuzz/atheris_parsers.py stdin -max_total_time=300 -timeout=10 corpus/

``image`` reads the bytes as read_image does a file's; ``stdin`` feeds them through
read_limited (as the command line reads ``-``) first; both also ask image_size. The seeds
(tests/fuzz/seeds.py) cover PNG 1/8/16-bit gray, RGB(A), palette, EXIF and animation; JPEG
baseline, progressive, gray, CMYK, EXIF; GIF still, animated, transparent; BMP 24-bit,
palette, RLE; WebP lossy, lossless, alpha, EXIF, animated; TIFF RGB, planar LZW, deflate,
JPEG, PackBits bilevel, palette, CMYK, float, int16, tiled RGBA, multi-page, orientation,
BigTIFF. -timeout turns a slow input (a decoder's cost not bounded by the file's size) into
a finding too.
"""

import io
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from convcli import bank, images
    from convcli.errors import BankError, InputError

MAX_PIXELS = 4_000_000  # large enough for every seed, small enough to fuzz quickly


def fuzz_bank(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        bank.parse(text, source="fuzz.yaml")
    except BankError:
        pass


def _check(img: "images.Image") -> None:
    px = img.pixels
    assert px.dtype.name == "float32" and px.ndim == 3 and px.shape[0] in (1, 3), px.shape
    assert px.shape[1] * px.shape[2] <= MAX_PIXELS and px.flags.c_contiguous


def fuzz_image(data: bytes, label: str = "fuzz") -> None:
    try:
        _check(images.read_image(data, label=label, max_pixels=MAX_PIXELS))
    except InputError as e:
        assert str(e).startswith(label + ": ") and "\n" not in str(e), str(e)
    try:
        h, w = images.image_size(data)
        assert h > 0 and w > 0
    except InputError as e:
        assert "\n" not in str(e), str(e)


def fuzz_stdin(data: bytes) -> None:
    try:
        piped = images.read_limited(io.BytesIO(data), 1 << 20)
    except InputError as e:
        assert str(e).startswith("<stdin>: more than "), str(e)
        return
    fuzz_image(piped, label="<stdin>")


def write_seeds(folder: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from seeds import valid_images

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in valid_images().items():
        (out / name).write_bytes(data)
    print(f"{len(list(out.iterdir()))} seeds in {out}")


if __name__ == "__main__":
    command = sys.argv.pop(1)
    if command == "seed":
        write_seeds(sys.argv[1])
        sys.exit(0)
    target = {"bank": fuzz_bank, "image": fuzz_image, "stdin": fuzz_stdin}[command]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
