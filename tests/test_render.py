"""Scaling policies (with recoverable ranges) and the labelled stack."""

import numpy as np
import pytest

from convcli import render


def test_auto_maps_min_to_black_and_max_to_white_and_recovers():
    data = np.linspace(-3, 5, 64, dtype=np.float32).reshape(8, 8)
    r = render.to_pixels(data, "auto", 8)
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


def test_constant_map_is_black_and_still_recoverable():
    r = render.to_pixels(np.full((3, 3), 0.25, np.float32), "auto", 8)
    assert (r.lo, r.hi) == (0.25, 0.25) and not r.pixels.any()
    np.testing.assert_allclose(render.recover(r.pixels, r.lo, r.hi, 8), 0.25)


def test_non_finite_values_do_not_poison_the_range():
    data = np.array([[np.nan, 0.0, 1.0, np.inf]], np.float32)
    r = render.to_pixels(data, "auto", 8)
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
