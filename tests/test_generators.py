"""Parametric kernels: known sums, symmetries and orientations."""

import numpy as np
import pytest

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
    np.testing.assert_allclose(g.gaussian(sigma=2.0), ndimage.gaussian_filter(impulse, 2.0, mode="constant"), atol=1e-12)


@pytest.mark.parametrize("kernel", [g.log(sigma=1.5), g.dog(sigma=1.0), g.gabor(sigma=2, wavelength=5, theta=30)])
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
    assert diag[c - 2, c + 2] > 0 == diag[c - 2, c - 2]  # rises to the right: up-right is on the line


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


@pytest.mark.parametrize("call, param", [
    (lambda: g.gaussian(sigma=0), "sigma"),
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
