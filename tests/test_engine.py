"""The engine against the float64 oracle, analytic images and algebraic properties."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from convcli import conv2d, conv2d_depthwise, engine
from convcli.errors import InputError, UsageError
from oracle import reference_conv2d

BORDERS = ["zero", "reflect", "replicate", "wrap"]
ACTIVATIONS = ["relu", "none", "abs"]


@st.composite
def layers(draw):
    """A random conv layer: image, weights, bias and settings."""
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    f = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(
        st.sampled_from(["same", "valid"]),
        st.tuples(*[st.integers(0, 3)] * 4),
    ))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = rng.random((c, h, w), dtype=np.float32)
    weights = rng.standard_normal((f, c, kh, kw)).astype(np.float32)
    weights[rng.random(weights.shape) < 0.2] = 0.0  # exercise the zero-tap skip
    bias = rng.standard_normal(f).astype(np.float32)
    return dict(image=image, weights=weights, bias=bias, stride=stride, dilation=dilation,
                padding=padding, border=draw(st.sampled_from(BORDERS)),
                activation=draw(st.sampled_from(ACTIVATIONS)))


def _fits(layer) -> bool:
    _, h, w = layer["image"].shape
    _, _, kh, kw = layer["weights"].shape
    if layer["padding"] == "same":
        return True
    p = (0, 0, 0, 0) if layer["padding"] == "valid" else layer["padding"]
    return (h + p[0] + p[1] >= (kh - 1) * layer["dilation"][0] + 1
            and w + p[2] + p[3] >= (kw - 1) * layer["dilation"][1] + 1)


@pytest.mark.parametrize("method", ["jit", "numpy", "fft"])
@given(layer=layers())
def test_matches_oracle(layer, method):
    assume(_fits(layer))
    got = conv2d(**layer, method=method)
    want = reference_conv2d(**layer)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@given(layers())
def test_jit_and_numpy_paths_are_bitwise_identical(layer):
    assume(_fits(layer))
    np.testing.assert_array_equal(conv2d(**layer, method="jit"), conv2d(**layer, method="numpy"))
    w2d = layer["weights"][:, 0]
    kwargs = {k: layer[k] for k in ("stride", "dilation", "padding", "border", "activation")}
    np.testing.assert_array_equal(conv2d_depthwise(layer["image"], w2d, **kwargs, method="jit"),
                                  conv2d_depthwise(layer["image"], w2d, **kwargs, method="numpy"))


@st.composite
def separable_layers(draw):
    """Layers whose kernels are sums of one or two outer products: the separable path."""
    layer = draw(layers())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    f, c = layer["weights"].shape[:2]
    rank = draw(st.integers(1, 2))
    lo = 5 if rank == 1 else 7  # sizes where rank * (kh + kw) is well under kh * kw
    kh, kw = draw(st.integers(lo, 11)), draw(st.integers(lo, 11))
    w = np.zeros((f, c, kh, kw), np.float32)
    for _ in range(rank):
        w += np.einsum("fci,fcj->fcij", rng.standard_normal((f, c, kh)),
                       rng.standard_normal((f, c, kw))).astype(np.float32)
    layer["weights"] = w
    layer["image"] = rng.random((c, draw(st.integers(12, 40)), draw(st.integers(12, 40))),
                                dtype=np.float32)
    return layer


@pytest.mark.parametrize("method", ["jit", "numpy"])
@given(layer=separable_layers())
def test_separable_path_matches_oracle(layer, method):
    assume(_fits(layer))
    assert engine._separable_terms(layer["weights"]) is not None  # the path under test
    got = conv2d(**layer, method=method)
    want = reference_conv2d(**layer)
    scale = np.abs(want).max() + 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@given(separable_layers())
def test_separable_jit_and_numpy_are_bitwise_identical(layer):
    assume(_fits(layer))
    np.testing.assert_array_equal(conv2d(**layer, method="jit"), conv2d(**layer, method="numpy"))


def test_large_non_separable_kernels_take_the_fft_path(monkeypatch):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 1, 45, 41)).astype(np.float32)
    x = rng.random((1, 60, 70), dtype=np.float32)
    assert engine._wants_fft(w) and not engine._wants_fft(w[:, :, :31, :31])
    calls = []
    real = engine._correlate_fft
    monkeypatch.setattr(engine, "_correlate_fft", lambda *a: calls.append(1) or real(*a))
    got = conv2d(x, w, padding="same", border="reflect", stride=(2, 1), dilation=(1, 2))
    assert calls == [1]
    want = reference_conv2d(x, w, padding="same", border="reflect", stride=(2, 1),
                            dilation=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_fast_lengths():
    assert [engine._fast_len(n) for n in (1, 7, 97, 1026, 2049)] == [1, 8, 100, 1080, 2160]


def test_which_kernels_take_the_separable_path():
    from convcli import generators as g

    sep = lambda k: engine._separable_terms(np.asarray(k, np.float32)[None, None])  # noqa: E731
    assert len(sep(g.gaussian(sigma=5, size=31))[0]) == 1  # rank 1: 62 taps instead of 961
    assert len(sep(g.log(sigma=2))[0]) == 3  # Gxx G + G Gyy, less the mean: rank 3
    assert len(sep(g.dog(sigma=1))[0]) == 2
    assert sep(g.sobel("x")) is None  # 6 taps either way: not worth a second pass
    assert sep(np.random.default_rng(0).standard_normal((7, 7))) is None  # full rank


def test_prepare_compiles_both_kernels_without_running_them():
    from convcli import jit

    engine.prepare()
    assert jit.correlate.signatures and jit.correlate_separable.signatures


def test_auto_takes_numpy_for_small_jobs_until_numba_is_loaded():
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom convcli import conv2d\n"
            "conv2d(np.ones((1, 64, 64)), np.ones((1, 1, 3, 3)))\n"
            "print('convcli.jit' in sys.modules, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


@given(layers(), st.integers(0, 2))
def test_too_small_image_is_an_error_not_garbage(layer, short):
    # Make the kernel's dilated footprint larger than the padded image along one axis.
    layer["padding"] = "valid"
    _, h, w = layer["image"].shape
    d = layer["dilation"][0]
    kh = (h + short) // d + 2  # footprint (kh - 1) * d + 1 > h
    layer["weights"] = np.ones((1, layer["image"].shape[0], kh, 1), np.float32)
    layer["bias"] = None
    assert not _fits(layer)
    with pytest.raises(InputError, match="smaller than the kernel's footprint"):
        conv2d(**layer)


@given(layers())
def test_same_padding_gives_ceil_of_input_over_stride(layer):
    layer["padding"] = "same"
    out = conv2d(**layer)
    _, h, w = layer["image"].shape
    assert out.shape[1:] == (math.ceil(h / layer["stride"][0]), math.ceil(w / layer["stride"][1]))


@given(layers(), st.floats(-3, 3), st.floats(-3, 3))
def test_linear_before_the_activation(layer, a, b):
    assume(_fits(layer))
    layer.update(activation="none", bias=None)
    x = layer.pop("image")
    y = x[::-1, ::-1].copy()
    lhs = conv2d(a * x + b * y, **layer)
    rhs = a * conv2d(x, **layer) + b * conv2d(y, **layer)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


@given(layers())
def test_activations_relate_as_defined(layer):
    assume(_fits(layer))
    raw = conv2d(**dict(layer, activation="none"))
    relu = conv2d(**dict(layer, activation="relu"))
    absolute = conv2d(**dict(layer, activation="abs"))
    assert (relu >= 0).all() and (absolute >= 0).all()
    np.testing.assert_array_equal(relu, np.maximum(raw, 0))
    np.testing.assert_array_equal(absolute, np.abs(raw))


@given(layers())
def test_depthwise_is_each_channel_on_its_own(layer):
    assume(_fits(layer))
    w2d = layer["weights"][:, 0]
    kwargs = {k: layer[k] for k in ("stride", "dilation", "padding", "border", "activation")}
    got = conv2d_depthwise(layer["image"], w2d, layer["bias"], **kwargs)
    for c in range(layer["image"].shape[0]):
        want = reference_conv2d(layer["image"][c:c + 1], w2d[:, None], layer["bias"], **kwargs)
        np.testing.assert_allclose(got[:, c], want, rtol=1e-5, atol=1e-5)


# --- analytic images with known answers ---------------------------------------------------

def test_impulse_returns_the_kernel_rotated_half_a_turn():
    # Cross-correlation (no flip): an impulse answers with the kernel rotated by 180 degrees.
    k = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    img = np.zeros((1, 9, 9), np.float32)
    img[0, 4, 4] = 1
    out = conv2d(img, k[None, None], padding="valid", activation="none")[0]
    nz = np.argwhere(out != 0)
    (y0, x0), (y1, x1) = nz.min(0), nz.max(0)
    np.testing.assert_array_equal(out[y0:y1 + 1, x0:x1 + 1], k[::-1, ::-1])


@pytest.mark.parametrize("border", BORDERS)
def test_zeros_stay_zeros(border):
    w = np.random.default_rng(1).standard_normal((4, 2, 5, 3)).astype(np.float32)
    out = conv2d(np.zeros((2, 12, 10), np.float32), w, padding="same", border=border,
                 activation="none")
    assert out.shape == (4, 12, 10) and not out.any()


@pytest.mark.parametrize("border", ["reflect", "replicate", "wrap"])
def test_normalised_blur_keeps_a_constant_image_constant(border):
    k = np.full((1, 1, 5, 7), 1 / 35, np.float32)
    out = conv2d(np.full((1, 20, 16), 0.3, np.float32), k, padding="same", border=border)
    np.testing.assert_allclose(out, 0.3, rtol=1e-6)


def test_zero_border_darkens_only_the_rim():
    k = np.full((1, 1, 3, 3), 1 / 9, np.float32)
    out = conv2d(np.ones((1, 8, 8), np.float32), k, padding="same", border="zero")[0]
    np.testing.assert_allclose(out[1:-1, 1:-1], 1.0, rtol=1e-6)
    assert out[0, 0] == pytest.approx(4 / 9) and out[0, 3] == pytest.approx(6 / 9)


def test_step_edge_lights_one_column():
    img = np.zeros((1, 6, 10), np.float32)
    img[:, :, 5:] = 1.0
    out = conv2d(img, np.array([[[[-1.0, 1.0]]]], np.float32), padding="valid")[0]
    assert out.shape == (6, 9)
    lit = np.argwhere(out != 0)
    assert set(lit[:, 1]) == {4} and len(lit) == 6 and (out[:, 4] == 1).all()


def test_sobel_answers_to_brightness_rising_to_the_right():
    img = np.zeros((1, 6, 10), np.float32)
    img[:, :, 5:] = 1.0
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    out = conv2d(img, sobel_x, padding="same", border="replicate")[0]
    assert set(np.argwhere(out != 0)[:, 1]) == {4, 5}
    np.testing.assert_array_equal(out[:, 4:6], 4.0)
    assert not conv2d(img[:, :, ::-1], sobel_x, padding="same", border="replicate").any()


def test_non_finite_pixels_propagate_like_torch():
    # 0 * inf is nan: zero taps may only be skipped when the image is finite.
    img = np.ones((1, 5, 5), np.float32)
    img[0, 2, 2] = np.inf
    k = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
    out = conv2d(img, k, padding="same", activation="none")[0]
    with np.errstate(invalid="ignore"):  # the oracle computes 0 * inf on purpose
        want = reference_conv2d(img, k[None, None], padding="same", activation="none")[0]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    assert np.isnan(out).sum() == 8 and np.isinf(out[2, 2])


def test_accepts_2d_image_and_kernel_and_integer_input():
    out = conv2d(np.arange(16).reshape(4, 4), np.ones((2, 2)), padding="valid", activation="none")
    assert out.shape == (1, 3, 3) and out.dtype == np.float32
    assert out[0, 0, 0] == 0 + 1 + 4 + 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="cuda"), "method must be one of auto, jit, numpy"),
    (dict(stride=0), "stride must be a whole number >= 1"),
    (dict(dilation=(1, 0)), "dilation must be a whole number >= 1"),
    (dict(padding="full"), "padding must be same, valid"),
    (dict(border="mirror"), "border must be one of zero, reflect, replicate, wrap"),
    (dict(activation="gelu"), "activation must be one of none, relu, abs"),
])
def test_bad_settings_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        conv2d(np.zeros((1, 4, 4)), np.ones((1, 1, 3, 3)), **kwargs)


def test_channel_mismatch_is_an_error():
    with pytest.raises(InputError, match="the kernels have 3 channels but the image has 1"):
        conv2d(np.zeros((1, 4, 4)), np.ones((2, 3, 3, 3)))


def test_bias_must_match_filters():
    with pytest.raises(UsageError, match=r"bias must hold one value per filter \(2\)"):
        conv2d(np.zeros((1, 4, 4)), np.ones((2, 1, 3, 3)), bias=[1.0, 2.0, 3.0])
