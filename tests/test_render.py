"""Scaling policies (with recoverable ranges) and the labelled stack."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convcli import render
from convcli.engine import EngineConfig

pytestmark = pytest.mark.filterwarnings("error")  # no raw warning may escape the renderer


def test_minmax_maps_min_to_black_and_max_to_white_and_recovers():
    data = np.linspace(-3, 5, 64, dtype=np.float32).reshape(8, 8)
    r = render.to_pixels(data, "minmax", 8)
    assert (r.lo, r.hi) == (-3.0, 5.0)
    assert r.pixels.dtype == np.uint8 and r.pixels.min() == 0 and r.pixels.max() == 255
    back = render.recover(r.pixels, r.lo, r.hi, 8)
    assert np.abs(back - data).max() <= 0.5 * 8 / 255 + 1e-6


def test_sixteen_bits_are_finer():
    data = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    r = render.to_pixels(data, "auto", 16)
    assert r.pixels.dtype == np.uint16 and r.pixels.max() == 65535
    assert np.abs(render.recover(r.pixels, r.lo, r.hi, 16) - data).max() <= 0.5 / 65535 + 1e-7


def test_symmetric_puts_zero_at_mid_grey():
    data = np.array([[-2.0, 0.0, 1.0]], np.float32)
    r = render.to_pixels(data, "symmetric", 8)
    assert (r.lo, r.hi) == (-2.0, 2.0)
    assert r.pixels.tolist() == [[0, 128, 191]]


def test_clip_uses_zero_to_one_and_clips():
    r = render.to_pixels(np.array([[-0.5, 0.0, 0.5, 1.0, 7.0]], np.float32), "clip", 8)
    assert (r.lo, r.hi) == (0.0, 1.0) and r.pixels.tolist() == [[0, 0, 128, 255, 255]]


def test_global_shares_one_range():
    a = np.array([[0.0, 1.0]], np.float32)
    b = np.array([[2.0, 4.0]], np.float32)
    rng = render.joint_range([a, b])
    assert rng == (0.0, 4.0)
    assert render.to_pixels(a, "global", 8, rng).pixels.tolist() == [[0, 64]]
    assert render.to_pixels(b, "global", 8, rng).pixels.tolist() == [[128, 255]]


@pytest.mark.parametrize("policy", ["auto", "minmax", "p1,p99"])
def test_constant_map_is_black_and_still_recoverable(policy):
    r = render.to_pixels(np.full((3, 3), 0.25, np.float32), policy, 8)
    assert (r.lo, r.hi) == (0.25, 0.25) and not r.pixels.any()
    np.testing.assert_allclose(render.recover(r.pixels, r.lo, r.hi, 8), 0.25)


def test_non_finite_values_do_not_poison_the_range():
    data = np.array([[np.nan, 0.0, 1.0, np.inf]], np.float32)
    r = render.to_pixels(data, "minmax", 8)
    assert (r.lo, r.hi) == (0.0, 1.0) and r.pixels.tolist() == [[0, 0, 255, 255]]


def test_colour_maps_become_rgb_and_share_one_range():
    data = np.zeros((3, 2, 2), np.float32)
    data[0] = 1.0  # red only
    r = render.to_pixels(data, "auto", 8)
    assert r.pixels.shape == (2, 2, 3)
    assert r.pixels[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("colour", [False, True])
def test_stack_places_every_tile_under_its_label(colour):
    rng = np.random.default_rng(1)
    shape = (20, 30, 3) if colour else (20, 30)
    tiles = [(f"map_{i}", rng.integers(1, 256, shape, dtype=np.uint8)) for i in range(5)]
    shape = (10, 12, 3) if colour else (10, 12)
    tiles.append(("small", rng.integers(1, 256, shape, dtype=np.uint8)))
    canvas, boxes = render.stack(tiles)
    assert canvas.ndim == (3 if colour else 2)
    assert [b["name"] for b in boxes] == [n for n, _ in tiles]
    cols = {b["box"][0] for b in boxes}
    assert len(cols) == 3  # six tiles in a 3 x 2 grid
    for (_, tile), b in zip(tiles, boxes):
        x, y, w, h = b["box"]
        np.testing.assert_array_equal(canvas[y:y + h, x:x + w], tile)
        strip = canvas[y - 10:y, x:x + w]
        assert (strip > 200).sum() >= 5  # the label's text is drawn in white above the tile


def test_stack_labels_scale_to_sixteen_bits():
    tiles = [("a", np.zeros((40, 40), np.uint16))]
    canvas, _ = render.stack(tiles)
    assert canvas.dtype == np.uint16 and canvas.max() > 200 * 257


# --- the robust default, percentiles, explicit ranges -------------------------------------

def test_auto_at_eight_bits_is_the_first_to_99th_percentile_stretch():
    # 0..100 in 101 steps: numpy's linear percentiles are exactly 1 and 99.
    data = np.arange(101, dtype=np.float32).reshape(1, 101)
    r = render.to_pixels(data, "auto", 8)
    assert (r.lo, r.hi) == (1.0, 99.0)
    assert r.clipped == (1 / 101, 1 / 101)  # the 0 below, the 100 above
    want = np.clip(np.rint((np.arange(101) - 1.0) * (255 / 98)), 0, 255)
    assert r.pixels[0].tolist() == want.astype(int).tolist()


def test_auto_at_sixteen_bits_keeps_every_value():
    data = np.arange(101, dtype=np.float32).reshape(1, 101)
    r = render.to_pixels(data, "auto", 16)
    assert (r.lo, r.hi) == (0.0, 100.0) and r.clipped == (0.0, 0.0)


def test_percentiles_are_numpys_linear_ones():
    data = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)
    r = render.to_pixels(data, "p25,p75", 8)
    assert (r.lo, r.hi) == (1.0, 3.0)
    assert r.pixels.tolist() == [[0, 0, 128, 255, 255]]  # 2 is half way: 127.5 rounds to 128
    assert r.clipped == (0.2, 0.2)


def test_a_sparse_map_whose_percentiles_meet_falls_back_to_minmax():
    data = np.zeros((10, 20), np.float32)
    data[0, 0] = 4.0  # 0.5% of the pixels: the 1st and 99th percentiles are both 0
    r = render.to_pixels(data, "auto", 8)
    assert (r.lo, r.hi) == (0.0, 4.0) and r.pixels[0, 0] == 255 and r.pixels.sum() == 255


def test_an_explicit_range_maps_exactly_and_clips_outside():
    data = np.array([[-1.0, 0.0, 0.25, 0.5, 2.0]], np.float32)
    r = render.to_pixels(data, "0,0.5", 8)
    assert (r.lo, r.hi) == (0.0, 0.5)
    assert r.pixels.tolist() == [[0, 0, 128, 255, 255]]
    assert r.clipped == (0.2, 0.2)
    np.testing.assert_allclose(render.recover(r.pixels[:, 1:4], r.lo, r.hi, 8),
                               [[0.0, 128 / 255 * 0.5, 0.5]])


@pytest.mark.parametrize("text, want", [
    ("auto", render.Scale("auto")), ("MinMax", render.Scale("minmax")),
    ("0,0.5", render.Scale("range", 0.0, 0.5)), ("-1e-3, 2", render.Scale("range", -1e-3, 2.0)),
    ("p1,p99", render.Scale("percentile", 1.0, 99.0)),
    ("p0.5,p100", render.Scale("percentile", 0.5, 100.0)),
])
def test_scales_parse(text, want):
    assert render.parse_scale(text) == want


@pytest.mark.parametrize("text, message", [
    ("log", "the scale must be auto, minmax, global, clip, symmetric, a range LO,HI (e.g. "
            "0,0.25) or percentiles pA,pB (e.g. p1,p99); got 'log'"),
    ("1,1", "a value range LO,HI needs finite LO < HI, got '1,1'"),
    ("2,1", "a value range LO,HI needs finite LO < HI, got '2,1'"),
    ("-3e38,3e38", None),
    ("p99,p1", "percentiles must satisfy 0 <= A < B <= 100, got 'p99,p1'"),
    ("p0,p101", "percentiles must satisfy 0 <= A < B <= 100, got 'p0,p101'"),
    ("1e999,2", "a value range LO,HI needs finite LO < HI, got '1e999,2'"),
])
def test_bad_scales_say_what_is_accepted(text, message):
    if message is None:  # a wide but finite range is fine
        assert render.parse_scale(text).kind == "range"
        return
    with pytest.raises(ValueError) as e:
        render.parse_scale(text)
    assert str(e.value) == message


# --- colormaps ----------------------------------------------------------------------------

def test_a_colormap_indexes_its_table_with_the_gray_pixel():
    data = np.array([[0.0, 0.5, 1.0]], np.float32)
    gray = render.to_pixels(data, "clip", 8).pixels
    r = render.to_pixels(data, "clip", 8, colormap="viridis")
    table = render.lut("viridis")
    assert r.pixels.shape == (1, 3, 3) and r.pixels.dtype == np.uint8
    np.testing.assert_array_equal(r.pixels[0], table[gray[0]])


def test_colormap_tables_come_from_the_cmap_package():
    from cmap import Colormap

    for name, ref in render.COLORMAPS.items():
        table = render.lut(name)
        assert table.shape == (256, 3)
        if ref is None:
            assert (table[:, 0] == np.arange(256)).all()
            continue
        want = np.rint(np.asarray(Colormap(ref).lut(256))[:, :3] * 255)
        np.testing.assert_array_equal(table, want)
    # viridis's published ends (matplotlib's _cm_listed table): #440154 and #fde725
    assert render.lut("viridis")[0].tolist() == [0x44, 0x01, 0x54]
    assert render.lut("viridis")[255].tolist() == [0xfd, 0xe7, 0x25]


@pytest.mark.parametrize("name", render.DIVERGING)
def test_diverging_maps_are_neutral_at_zero_under_symmetric(name):
    data = np.array([[-2.0, 0.0, 2.0]], np.float32)
    r = render.to_pixels(data, "symmetric", 8, colormap=name)
    low, mid, high = (c.astype(int) for c in r.pixels[0])
    assert max(mid) - min(mid) < 30 and min(mid) > 180  # a light, nearly gray centre
    assert low[2] > low[0] and high[0] > high[2]  # blue below zero, red above


def test_unknown_colormap_names_the_choices():
    with pytest.raises(ValueError) as e:
        render.check_colormap("jet")
    assert str(e.value) == ("unknown colormap 'jet'; choose one of gray, viridis, magma, "
                            "inferno, plasma, cividis, batlow, vik, balance, coolwarm")


def test_colour_maps_keep_their_colours_under_a_colormap():
    data = np.zeros((3, 2, 2), np.float32)
    data[1] = 1.0
    r = render.to_pixels(data, "clip", 8, colormap="magma")
    assert r.pixels[0, 0].tolist() == [0, 255, 0]


# --- shrinking, legends, overlays ---------------------------------------------------------

def test_shrink_averages_whole_blocks_rounding_half_up():
    a = np.array([[0, 1, 2, 2, 9, 9, 7],
                  [0, 1, 2, 3, 9, 9, 7],
                  [5, 5, 7, 7, 0, 1, 7],
                  [5, 6, 7, 7, 0, 0, 7],
                  [7, 7, 7, 7, 7, 7, 7]], np.uint8)
    out = render.shrink(a, 4)  # 7 px a side -> a factor of 2; the last row and column go
    assert out.dtype == np.uint8
    assert out.tolist() == [[1, 2, 9],   # 2 / 4 = 0.5 rounds up; 9 / 4 = 2.25 down
                            [5, 7, 0]]   # 21 / 4 = 5.25; 28 / 4 = 7; 1 / 4 = 0.25
    assert render.shrink(a, 7) is a  # fits: unchanged


def test_shrink_keeps_sixteen_bits_and_colour():
    a = np.full((8, 8, 3), 65535, np.uint16)
    a[:4, :4, 0] = 1
    out = render.shrink(a, 2)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint16
    assert out[0, 0].tolist() == [1, 65535, 65535] and out[1, 1].tolist() == [65535] * 3


def test_legend_draws_the_colour_bar_from_lo_to_hi_under_the_name():
    tiles = [("a", np.zeros((40, 300, 3), np.uint8))]
    canvas, boxes = render.stack(tiles, [render.Legend(0.0, 2.5, "viridis")])
    x, y, w, h = boxes[0]["box"]
    _, label_h = render._font(w)
    bar = canvas[y - label_h // 2, x:x + w]  # the middle row of the legend strip
    table = render.lut("viridis").tolist()
    coloured = [tuple(p) for p in bar.tolist() if list(p) in table and len(set(p)) > 1]
    assert len(coloured) > w // 2  # most of the strip is the bar
    assert list(coloured[0]) == table[0] and list(coloured[-1]) == table[255]


def test_stack_takes_a_number_of_columns():
    tiles = [(f"m{i}", np.zeros((10, 10), np.uint8)) for i in range(5)]
    _, boxes = render.stack(tiles, columns=5)
    assert len({b["box"][1] for b in boxes}) == 1  # one row
    _, boxes = render.stack(tiles, columns=2)
    assert len({b["box"][1] for b in boxes}) == 3


def test_overlay_blends_the_map_colour_by_its_value():
    under = np.array([[0.0, 1.0, 0.5]], np.float32)
    values = np.array([[0.0, 1.0, 0.5]], np.float32)
    out = render.overlay(values, 0.0, 1.0, under, "viridis")
    table = render.lut("viridis").astype(float)
    a = render.OVERLAY_ALPHA
    assert out[0, 0].tolist() == [0, 0, 0]  # value at lo: the photo only
    want_1 = np.rint(255 * (1 - a) + table[255] * a)
    assert out[0, 1].tolist() == want_1.astype(int).tolist()
    t = 0.5
    want_2 = np.rint(0.5 * 255 * (1 - a * t) + table[128] * a * t)
    assert out[0, 2].tolist() == want_2.astype(int).tolist()


def test_overlay_resizes_a_smaller_map_to_the_picture():
    out = render.overlay(np.ones((2, 2), np.float32), 0.0, 1.0, np.zeros((4, 6)), "gray")
    assert out.shape == (4, 6, 3)  # gray becomes inferno: gray on gray would not show
    assert (out == np.rint(render.lut("inferno")[255] * render.OVERLAY_ALPHA)).all()


# --- the fast paths agree with the obvious ones ---------------------------------------------

@settings(max_examples=200)
@given(values=hnp.arrays(np.float32, st.integers(1, 300),
                         elements=st.floats(-1e6, 1e6, width=32) | st.sampled_from([0.0, 1.0])),
       q=st.floats(0, 100) | st.sampled_from([0.0, 1.0, 50.0, 99.0, 100.0]))
def test_percentile_of_sorted_is_numpys_percentile(values, q):
    got = render.percentile_of_sorted(np.sort(values), q)
    assert got == float(np.percentile(values, [q])[0])  # a list: computed in float64


@settings(max_examples=200)
@given(data=hnp.arrays(np.float32, st.tuples(st.integers(1, 9), st.integers(1, 9)),
                       elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
       bounds=st.tuples(st.floats(-1e30, 1e30), st.floats(-1e30, 1e30)),
       bits=st.sampled_from([8, 16]), method=st.sampled_from(["numpy", "jit"]))
def test_pixels_are_the_float64_formula(data, bounds, bits, method):
    """On either executor (numba's one-pass kernel, or NumPy's passes)."""
    lo, hi = sorted(bounds)
    if not hi > lo or not np.isfinite(hi - lo):
        return
    r = render.to_pixels(data, render.Scale("range", lo, hi), bits,
                         config=EngineConfig(method=method))
    top = 2**bits - 1
    with np.errstate(all="ignore"):
        want = np.rint((data.astype(np.float64) - lo) * (top / (hi - lo)))
    want = np.where(np.isnan(want), 0, np.clip(want, 0, top))
    np.testing.assert_array_equal(r.pixels, want)
    n = data.size
    assert r.clipped == (np.count_nonzero(data < lo) / n, np.count_nonzero(data > hi) / n)


def reference_range(data, kind, bits=8):
    """The policies written the obvious way (finite values, numpy.percentile)."""
    finite = data[np.isfinite(data)].astype(np.float64)
    if finite.size == 0:
        return 0.0, 0.0
    if kind == "symmetric":
        m = np.abs(finite).max()
        return (-m, m) if m > 0 else (-1.0, 1.0)
    lo, hi = finite.min(), finite.max()
    if kind == "auto" and bits == 8 and hi > lo:
        plo, phi = np.percentile(data[np.isfinite(data)], [1, 99])
        if phi > plo:
            return plo, phi
    return lo, hi


@settings(max_examples=300)
@given(data=hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)),
                       elements=st.floats(width=32, allow_nan=True, allow_infinity=True)
                       | st.sampled_from([0.0, 1.0, -1.0])),
       kind=st.sampled_from(["auto", "minmax", "symmetric"]), bits=st.sampled_from([8, 16]),
       method=st.sampled_from(["numpy", "jit"]))
def test_policies_match_the_obvious_implementation(data, kind, bits, method):
    want_lo, want_hi = reference_range(data, kind, bits)
    r = render.to_pixels(data, kind, bits, config=EngineConfig(method=method))
    assert (r.lo, r.hi) == (float(want_lo), float(want_hi))
    n = data.size
    if r.hi > r.lo:
        assert r.clipped == (np.count_nonzero(data < r.lo) / n, np.count_nonzero(data > r.hi) / n)
        top = 2**bits - 1
        with np.errstate(all="ignore"):
            want = np.rint((data.astype(np.float64) - r.lo) * (top / (r.hi - r.lo)))
        want = np.where(np.isnan(want), 0, np.clip(want, 0, top))
        np.testing.assert_array_equal(r.pixels, want)
    else:
        assert not r.pixels.any() and r.clipped == (0.0, 0.0)


@pytest.mark.parametrize("method", ["numpy", "jit"])
def test_clipped_counts_compare_in_float32_on_both_executors(method):
    """A bound between two float32 values counts as NumPy compares a float32 map with a
    Python float (the bound rounded to float32 first)."""
    v = np.float32(0.1)
    above_v = float(np.nextafter(v, np.float32(1))) * 0.5 + float(v) * 0.5  # between
    data = np.full((3, 4), v, np.float32)
    data[0, 0], data[0, 1] = -1.0, 2.0
    r = render.to_pixels(data, render.Scale("range", above_v, 1.5), 8,
                         config=EngineConfig(method=method))
    n = data.size
    assert r.clipped == (np.count_nonzero(data < above_v) / n,
                         np.count_nonzero(data > 1.5) / n)
    big = render.to_pixels(data, render.Scale("range", -1e300, 1e300), 16,
                           config=EngineConfig(method=method))
    assert big.clipped == (0.0, 0.0)


@pytest.mark.parametrize("method", ["numpy", "jit"])
def test_values_far_outside_the_range_clip_without_a_warning(method):
    data = np.array([[3e38, -3e38, np.inf, np.nan, 0.5]], np.float32)
    r = render.to_pixels(data, render.Scale("range", -1e-300, 1e-300), 8,  # step ~1e302
                         config=EngineConfig(method=method))
    assert r.pixels.tolist() == [[255, 0, 255, 0, 255]]
