"""Parametric kernels: known sums, symmetries and orientations."""

import inspect
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convcli import generators as g


def test_gaussian_is_normalised_symmetric_and_sized_like_scipy():
    k = g.gaussian(sigma=2.0)
    assert k.shape == (17, 17)  # radius round(4 * sigma) = 8
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    assert k[8, 8] == k.max()
    # Separable: the outer product of its own marginal.
    m = k.sum(axis=0)
    np.testing.assert_allclose(k, np.outer(m, m), atol=1e-12)


def test_gaussian_matches_scipy():
    from scipy import ndimage

    impulse = np.zeros((17, 17))
    impulse[8, 8] = 1
    np.testing.assert_allclose(g.gaussian(sigma=2.0),
                               ndimage.gaussian_filter(impulse, 2.0, mode="constant"), atol=1e-12)


@pytest.mark.parametrize("kernel", [g.log(sigma=1.5), g.dog(sigma=1.0),
                                    g.gabor(sigma=2, wavelength=5, theta=30)])
def test_band_pass_kernels_sum_to_zero(kernel):
    assert abs(kernel.sum()) < 1e-12


def test_log_has_a_negative_centre_and_dog_a_positive_one():
    assert g.log(sigma=2).min() == g.log(sigma=2)[8, 8] < 0
    d = g.dog(sigma=1)
    assert d[d.shape[0] // 2, d.shape[1] // 2] == d.max() > 0


def test_box_any_size():
    k = g.box(size=4, height=2)
    assert k.shape == (2, 4) and k.sum() == pytest.approx(1)


def test_disk_and_motion_are_normalised():
    d = g.disk(radius=3)
    assert d.shape == (7, 7) and d.sum() == pytest.approx(1) and d[0, 0] == 0 and d[0, 3] > 0
    m = g.motion(length=9, angle=0)
    assert m.sum() == pytest.approx(1)
    assert m[m.shape[0] // 2].sum() == pytest.approx(1)  # all weight on the middle row
    diag = g.motion(length=9, angle=45)
    np.testing.assert_allclose(diag, diag[::-1, ::-1])  # point-symmetric
    c = diag.shape[0] // 2
    # Rises to the right: up-right is on the line.
    assert diag[c - 2, c + 2] > 0 == diag[c - 2, c - 2]


def test_derivatives_point_the_documented_way():
    np.testing.assert_array_equal(g.sobel("x"), [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    np.testing.assert_array_equal(g.sobel("y"), [[-1, -2, -1], [0, 0, 0], [1, 2, 1]])
    np.testing.assert_array_equal(g.scharr("x")[1], [-10, 0, 10])
    np.testing.assert_array_equal(g.prewitt("y")[:, 0], [-1, 0, 1])
    np.testing.assert_array_equal(g.roberts("b"), [[0, 1], [-1, 0]])
    assert g.laplacian(8).sum() == 0 and g.laplacian(4)[1, 1] == -4


def test_kirsch_compass_turns_clockwise():
    np.testing.assert_array_equal(g.kirsch("n"), [[5, 5, 5], [-3, 0, -3], [-3, -3, -3]])
    np.testing.assert_array_equal(g.kirsch("e"), [[-3, -3, 5], [-3, 0, 5], [-3, -3, 5]])
    np.testing.assert_array_equal(g.kirsch("s"), g.kirsch("n")[::-1])
    np.testing.assert_array_equal(g.kirsch("w"), g.kirsch("e")[:, ::-1])


def test_gabor_theta_turns_the_stripes():
    vertical = g.gabor(sigma=3, wavelength=6, theta=0, gamma=1, size=13)
    horizontal = g.gabor(sigma=3, wavelength=6, theta=90, gamma=1, size=13)
    np.testing.assert_allclose(horizontal, vertical.T, atol=1e-12)
    assert np.allclose(vertical, vertical[::-1])  # theta 0: constant along y (vertical stripes)


def grating(size: int, angle: float, wavelength: float, phase: float) -> np.ndarray:
    """cos(2 pi u / wavelength + phase) with u the distance along the direction ``angle``
    (degrees, counter-clockwise on screen: x right, y *down*, so "up" is -y)."""
    r = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size] - r
    a = np.radians(angle)
    return np.cos(2 * np.pi * (x * np.cos(a) - y * np.sin(a)) / wavelength + phase)


def energy(kernel: np.ndarray, angle: float, wavelength: float) -> float:
    """How strongly a kernel answers to a grating along ``angle``, whatever the grating's
    phase (quadrature energy)."""
    return float(np.sum(kernel * grating(len(kernel), angle, wavelength, 0)) ** 2
                 + np.sum(kernel * grating(len(kernel), angle, wavelength, np.pi / 2)) ** 2)


@pytest.mark.parametrize("theta", [0, 20, 30, 60, 75, 100, 135, 160])
def test_gabor_answers_most_to_the_grating_along_theta(theta):
    # Behaviour, not formula: swapping theta for 90 - theta, or x for y, or y's direction
    # (theta for -theta) moves the peak away from theta for every asymmetric angle here.
    k = g.gabor(sigma=4, wavelength=7, theta=theta, gamma=0.5, size=31)
    angles = np.arange(180)
    best = angles[int(np.argmax([energy(k, a, 7) for a in angles]))]
    assert min(abs(best - theta), 180 - abs(best - theta)) <= 1
    assert energy(k, theta + 90, 7) < 0.01 * energy(k, theta, 7)  # across: nearly nothing


def test_gabor_matches_its_formula_in_screen_coordinates():
    # An asymmetric case (theta 30, psi 40, gamma 0.4), written out independently: the
    # oscillation runs along (cos theta, -sin theta) in (x right, y down) pixels.
    size, sigma, lam, theta, gamma, psi = 21, 3.0, 5.0, 30.0, 0.4, 40.0
    r = (size - 1) / 2
    rows, cols = np.mgrid[0:size, 0:size]
    x, y_down = cols - r, rows - r
    t = np.radians(theta)
    along = x * np.cos(t) - y_down * np.sin(t)
    across = x * np.sin(t) + y_down * np.cos(t)
    want = np.exp(-(along**2 + gamma**2 * across**2) / (2 * sigma**2)) * np.cos(
        2 * np.pi * along / lam + np.radians(psi))
    got = g.gabor(sigma=sigma, wavelength=lam, theta=theta, gamma=gamma, psi=psi, size=size,
                  zero_mean=False)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(g.gabor(sigma=sigma, wavelength=lam, theta=theta, gamma=gamma,
                                       psi=psi, size=size), want - want.mean(), atol=1e-12)
    # The swapped readings of theta differ from it by far more than rounding.
    for wrong in (90 - theta, -theta):
        other = g.gabor(sigma=sigma, wavelength=lam, theta=wrong, gamma=gamma, psi=psi,
                        size=size, zero_mean=False)
        assert np.abs(other - want).max() > 0.3


def principal_angle(kernel: np.ndarray) -> float:
    """Orientation (degrees, 0..180, counter-clockwise on screen) of a kernel's weight
    distribution, from its second moments with y pointing up."""
    r = (kernel.shape[0] - 1) / 2
    rows, cols = np.mgrid[0:kernel.shape[0], 0:kernel.shape[1]]
    x, y_up = cols - r, r - rows
    w = kernel / kernel.sum()
    cxx, cyy, cxy = (w * x * x).sum(), (w * y_up * y_up).sum(), (w * x * y_up).sum()
    return float(np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy)) % 180)


@pytest.mark.parametrize("angle", [0, 15, 30, 60, 90, 120, 165])
def test_motion_blur_lies_along_its_angle(angle):
    # 30 and 60 tell "angle" from "90 - angle"; 120 and 165 tell up-right from down-right.
    assert principal_angle(g.motion(length=15, angle=angle)) == pytest.approx(angle, abs=1.0)


def test_roberts_laplacian_and_dog_exactly():
    np.testing.assert_array_equal(g.roberts("a"), [[1, 0], [0, -1]])
    np.testing.assert_array_equal(g.laplacian(4), [[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    np.testing.assert_array_equal(g.laplacian(8), [[1, 1, 1], [1, -8, 1], [1, 1, 1]])
    # dog's default sigma2 is 1.6 sigma, and its size covers 4 sigma2.
    np.testing.assert_allclose(g.dog(sigma=1.5), g.dog(sigma=1.5, sigma2=2.4), atol=0)
    assert g.dog(sigma=1.5).shape == (2 * 10 + 1,) * 2


def test_log_answers_positively_to_a_dark_blob():
    k = g.log(sigma=2)
    blob = np.ones_like(k)
    blob[k.shape[0] // 2 - 2:k.shape[0] // 2 + 3, k.shape[1] // 2 - 2:k.shape[1] // 2 + 3] = 0
    assert np.sum(k * blob) > 0 > np.sum(k * (1 - blob))


@pytest.mark.parametrize("call, param", [
    (lambda: g.gaussian(sigma=0), "sigma"),
    (lambda: g.gaussian(sigma=1e-300), "sigma"),
    (lambda: g.gaussian(sigma=1e300, size=3), "sigma"),
    (lambda: g.gaussian(sigma="2"), "sigma"),
    (lambda: g.gaussian(sigma=True), "sigma"),
    (lambda: g.gaussian(truncate=float("inf")), "truncate"),
    (lambda: g.gaussian(truncate=1e308), "size"),
    (lambda: g.gaussian(size=float("inf")), "size"),
    (lambda: g.gaussian(size=float("nan")), "size"),
    (lambda: g.gaussian(size=True), "size"),
    (lambda: g.gaussian(size=10**400), "size"),
    (lambda: g.box(size=2.5), "size"),
    (lambda: g.box(size=True), "size"),
    (lambda: g.box(size=3, height=0), "height"),
    (lambda: g.log(sigma=1e-200), "sigma"),
    (lambda: g.dog(sigma=1, sigma2=1), "sigma2"),
    (lambda: g.dog(sigma=1, sigma2=float("nan")), "sigma2"),
    (lambda: g.gabor(wavelength=1e-320), "wavelength"),
    (lambda: g.gabor(gamma=1e300, size=5), "gamma"),
    (lambda: g.gabor(theta=float("inf")), "theta"),
    (lambda: g.gabor(psi="90"), "psi"),
    (lambda: g.gabor(zero_mean="no"), "zero_mean"),
    (lambda: g.motion(length=float("inf")), "length"),
    (lambda: g.motion(length=1e9), "length"),
    (lambda: g.motion(angle=float("nan")), "angle"),
    (lambda: g.disk(radius=-1), "radius"),
    (lambda: g.identity(size=2), "size"),
    (lambda: g.laplacian(True), "neighbours"),
    (lambda: g.roberts(["a"]), "diagonal"),
    (lambda: g.gaussian(sigma=1, size=4), "size"),
    (lambda: g.dog(sigma=2, sigma2=1), "sigma2"),
    (lambda: g.laplacian(6), "neighbours"),
    (lambda: g.kirsch("up"), "direction"),
    (lambda: g.sobel("z"), "axis"),
    (lambda: g.gaussian(sigma=500), "size"),
])
def test_bad_parameters_name_the_parameter(call, param):
    with pytest.raises(g.ParameterError) as info:
        call()
    assert info.value.param == param


SANE = {"sigma": st.floats(0.01, 40), "sigma2": st.floats(0.01, 60), "truncate": st.floats(0.01, 8),
        "wavelength": st.floats(0.01, 1e6), "gamma": st.floats(0.01, 100),
        "theta": st.floats(-1e6, 1e6), "psi": st.floats(-1e6, 1e6), "angle": st.floats(-1e6, 1e6),
        "length": st.floats(1e-9, 200), "radius": st.floats(1e-9, 200),
        "size": st.sampled_from([None, 1, 3, 5, 9, 31])}


@given(st.sampled_from(["gaussian", "log", "dog", "gabor", "motion", "disk"]), st.data())
def test_any_accepted_parameters_give_a_finite_kernel_without_warnings(kind, data):
    func = g.GENERATORS[kind]
    names = [n for n in inspect.signature(func).parameters if n in SANE]
    params = {n: data.draw(SANE[n], label=n) for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy RuntimeWarning fails the test
        try:
            k = func(**params)
        except g.ParameterError as e:
            assert e.param in params and str(e)  # refused, with the parameter named
            return
    assert k.ndim == 2 and k.shape[0] % 2 == 1 and np.isfinite(k).all()
    assert np.isfinite(k.astype(np.float32)).all()
