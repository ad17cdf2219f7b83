"""Property-based fuzzing of the two parsers that take files from strangers: whatever the
bytes, the bank loader and the image reader either succeed or raise their one documented
error (BankError, InputError) with a one-line message per problem, never anything else.
(A longer, coverage-guided run: see the README, section Development.)"""

import io
import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from convcli import bank, images
from convcli.errors import BankError, InputError
from test_hostile_banks import GEOMETRY, NAMES, NUMBERS

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
KEYS = st.sampled_from(list(bank.TOP_KEYS + bank.FILTER_KEYS + bank.DEFAULT_KEYS)
                       + ["type", "sigma", "size", "axis"]) | st.text(max_size=8)
TREES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=5)
                     | st.dictionaries(KEYS, kids, max_size=5), max_leaves=40)


def check_bank(text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (or other warning) may escape
        try:
            b = bank.parse(text, source="fuzz.yaml")
        except BankError as e:
            assert e.problems and all(str(p).startswith("fuzz.yaml") for p in e.problems)
            assert all("\n" not in str(p) for p in e.problems)
            return
    assert b.filters
    for f in b.filters:
        assert f.weights.dtype == np.float32 and np.isfinite(f.weights).all()
        assert np.isfinite(np.float32(f.bias))


@given(st.text(max_size=400))
def test_bank_loader_on_arbitrary_text(text):
    check_bank(text)


@pytest.mark.parametrize("text", ["-_", "a: +_", "a: 0x_", "name: x\nfilters: [-_]"])
def test_found_by_atheris_scalars_that_crash_the_yaml_parser(text):
    # ruamel.yaml raises IndexError on these; it must come out as a bank problem.
    with pytest.raises(BankError, match="not valid YAML"):
        bank.parse(text, source="fuzz.yaml")


@given(TREES)
def test_bank_loader_on_arbitrary_yaml_documents(tree):
    from ruamel.yaml import YAML

    buf = io.StringIO()
    YAML(typ="safe", pure=True).dump(tree, buf)
    check_bank(buf.getvalue())


@given(st.dictionaries(KEYS, TREES, max_size=6),
       st.lists(st.dictionaries(KEYS, TREES, max_size=6), max_size=4))
def test_bank_loader_on_bank_shaped_documents(top, filters):
    from ruamel.yaml import YAML

    doc = dict(top, name="fuzz", filters=filters)
    buf = io.StringIO()
    YAML(typ="safe", pure=True).dump(doc, buf)
    check_bank(buf.getvalue())


# Scalars written raw into the text (not quoted by a YAML dumper): number spellings of
# every kind, absurd geometry, odd names; see tests/test_hostile_banks.py.
RAW = st.one_of(NUMBERS, GEOMETRY, NAMES.map(json.dumps), st.sampled_from(
    ["gaussian", "gabor", "log", "dog", "box", "motion", "sobel", "x", "rgb", "same"]))
RAW_KEYS = st.sampled_from(list(bank.FILTER_KEYS) + ["type", "sigma", "sigma2", "size",
                                                     "truncate", "theta", "wavelength",
                                                     "gamma", "psi", "length", "angle"])


def _flow(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


@given(st.lists(st.tuples(
    st.lists(st.tuples(RAW_KEYS, RAW), max_size=6, unique_by=lambda kv: kv[0]),
    st.lists(st.tuples(RAW_KEYS, RAW), max_size=4, unique_by=lambda kv: kv[0]),
    st.lists(RAW, min_size=1, max_size=4)), min_size=1, max_size=3))
def test_bank_loader_on_raw_scalars_in_bank_shaped_text(filters):
    lines = ["name: fuzz", "filters:"]
    for n, (fields, generator, row) in enumerate(filters):
        fields = [(k, v) for k, v in fields if k not in ("name", "weights", "generator")]
        lines.append(f"  - name: f{n}")
        if generator:
            lines.append(f"    generator: {_flow([('type', 'gaussian')] + generator)}")
        else:
            lines.append(f"    weights: [[{', '.join(row)}]]")
        lines.extend(f"    {k}: {v}" for k, v in fields)
    check_bank("\n".join(lines) + "\n")


def _valid_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for fmt, mode in (("PNG", "RGB"), ("PNG", "L"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"),
                      ("WEBP", "RGB"), ("TIFF", "RGB"), ("PNG", "RGBA")):
        im = Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        im.save(buf, fmt)
        out.append(buf.getvalue())
    out.append(images.encode_png(rng.integers(0, 65536, (7, 5, 3), dtype=np.uint16)))
    return out


VALID = _valid_images()


def check_image(data: bytes) -> None:
    try:
        img = images.read_image(data, label="fuzz", max_pixels=10**6)
    except InputError as e:
        assert str(e).startswith("fuzz: ") and "\n" not in str(e)
    else:
        assert img.pixels.dtype == np.float32 and img.pixels.ndim == 3


@given(st.binary(max_size=300))
def test_image_reader_on_arbitrary_bytes(data):
    check_image(data)


@given(st.sampled_from(VALID), st.data())
def test_image_reader_on_damaged_images(data, draw):
    raw = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 8))):
        pos = draw.draw(st.integers(0, len(raw) - 1))
        raw[pos] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(1, len(raw)))
    check_image(bytes(raw[:cut]))
