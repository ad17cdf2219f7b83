"""Parametric kernels: every ``generator:`` a bank may name, each citing its formula.

A generator is a plain function of keyword parameters that returns a 2-D float64 array
(KH, KW). Coordinates follow image conventions: x grows to the right, y grows *down*, and
kernels are applied as cross-correlation (no flip), so ``sobel`` with ``axis: x`` answers
positively where brightness rises to the right. Angles are in degrees, counter-clockwise
as seen on screen (0 = pointing right, 90 = pointing up).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


class ParameterError(ValueError):
    """A generator parameter that is out of range; ``param`` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


MAX_GENERATED_SIZE = 1025  # larger kernels are almost always a typo in sigma


def _positive(param: str, value: float) -> float:
    if not value > 0:
        raise ParameterError(param, f"must be > 0, got {value}")
    return float(value)


def _odd_size(param: str, size: int | None, radius: float) -> int:
    """The kernel size: the given one (must be odd and positive) or 2*ceil(radius)+1."""
    if size is None:
        size = 2 * max(1, int(math.ceil(radius))) + 1
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ParameterError(param, f"must be an odd whole number >= 1, got {size}")
    if size > MAX_GENERATED_SIZE:
        raise ParameterError(param, f"kernel of {size}x{size} is larger than {MAX_GENERATED_SIZE}")
    return int(size)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x right, y down) with the origin at the kernel centre."""
    r = (size - 1) / 2.0
    ax = np.arange(size, dtype=np.float64) - r
    return np.meshgrid(ax, ax, indexing="xy")


def _choice(param: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ParameterError(param, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _gaussian_2d(sigma: float, size: int) -> np.ndarray:
    x, y = _grid(size)
    g = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return g / g.sum()


# --- smoothing ----------------------------------------------------------------------------

def identity(size: int = 1) -> np.ndarray:
    """A unit impulse at the centre: the map equals the input."""
    size = _odd_size("size", size, 0)
    k = np.zeros((size, size))
    k[size // 2, size // 2] = 1.0
    return k


def box(size: int = 3, height: int | None = None) -> np.ndarray:
    """Mean over a size x height window (height defaults to size); any size, odd or even."""
    height = size if height is None else height
    for name, v in (("size", size), ("height", height)):
        if int(v) != v or v < 1 or v > MAX_GENERATED_SIZE:
            raise ParameterError(name, f"must be a whole number in 1..{MAX_GENERATED_SIZE}, got {v}")
    return np.full((int(height), int(size)), 1.0 / (int(size) * int(height)))


def gaussian(sigma: float = 1.0, size: int | None = None, truncate: float = 4.0) -> np.ndarray:
    """Sampled isotropic Gaussian exp(-r^2 / 2 sigma^2), normalised to sum 1.

    Default size follows scipy.ndimage.gaussian_filter: radius = round(truncate * sigma).
    """
    sigma = _positive("sigma", sigma)
    size = _odd_size("size", size, int(_positive("truncate", truncate) * sigma + 0.5))
    return _gaussian_2d(sigma, size)


def disk(radius: float = 2.0) -> np.ndarray:
    """Pillbox (out-of-focus blur): pixels whose centre is within radius, normalised."""
    radius = _positive("radius", radius)
    size = _odd_size("radius", None, radius)
    x, y = _grid(size)
    k = (x * x + y * y <= radius * radius + 1e-9).astype(np.float64)
    return k / k.sum()


def motion(length: float = 9.0, angle: float = 0.0) -> np.ndarray:
    """Linear motion blur: a segment of the given length through the centre.

    Each pixel weighs max(0, 1 - d), d its centre's distance to the segment (a one-pixel
    wide antialiased line), then the kernel is normalised to sum 1.
    """
    length = _positive("length", length)
    size = _odd_size("length", None, length / 2.0)
    x, y = _grid(size)
    t = math.radians(float(angle))
    ux, uy = math.cos(t), -math.sin(t)  # y grows down, angles turn counter-clockwise on screen
    along = np.clip(x * ux + y * uy, -length / 2.0, length / 2.0)
    d = np.hypot(x - along * ux, y - along * uy)
    k = np.clip(1.0 - d, 0.0, None)
    return k / k.sum()


# --- band-pass and oriented ---------------------------------------------------------------

def log(sigma: float = 1.0, size: int | None = None, truncate: float = 4.0) -> np.ndarray:
    """Scale-normalised Laplacian of Gaussian, sigma^2 * (r^2 - 2 sigma^2)/sigma^4 * G.

    Marr & Hildreth (1980); scale normalisation by sigma^2 after Lindeberg (1998). The mean
    is subtracted so a flat image gives exactly zero despite truncation. The centre is
    negative (the sign of the Laplacian, as in scipy.ndimage.gaussian_laplace): a dark blob
    on a bright ground answers positively.
    """
    sigma = _positive("sigma", sigma)
    size = _odd_size("size", size, int(_positive("truncate", truncate) * sigma + 0.5))
    x, y = _grid(size)
    r2 = x * x + y * y
    k = (r2 - 2.0 * sigma * sigma) / sigma**2 * np.exp(-r2 / (2.0 * sigma * sigma))
    k /= 2.0 * math.pi * sigma * sigma
    return k - k.mean()


def dog(sigma: float = 1.0, sigma2: float | None = None, size: int | None = None) -> np.ndarray:
    """Difference of Gaussians G(sigma) - G(sigma2), each normalised; sigma2 defaults to
    1.6 sigma, the ratio Marr & Hildreth (1980) give as closest to the LoG. Positive centre,
    sums to zero."""
    sigma = _positive("sigma", sigma)
    sigma2 = 1.6 * sigma if sigma2 is None else _positive("sigma2", sigma2)
    if sigma2 <= sigma:
        raise ParameterError("sigma2", f"must be larger than sigma ({sigma}), got {sigma2}")
    size = _odd_size("size", size, int(4.0 * sigma2 + 0.5))
    return _gaussian_2d(sigma, size) - _gaussian_2d(sigma2, size)


def gabor(
    sigma: float = 2.0,
    wavelength: float = 6.0,
    theta: float = 0.0,
    gamma: float = 0.5,
    psi: float = 0.0,
    size: int | None = None,
    zero_mean: bool = True,
) -> np.ndarray:
    """Gabor filter exp(-(x'^2 + gamma^2 y'^2) / 2 sigma^2) * cos(2 pi x' / wavelength + psi).

    Daugman (1985); x' = x cos(theta) + y' sin(theta) in screen axes, theta in degrees
    (0: stripes are vertical, the filter answers to horizontal change), psi in degrees.
    With zero_mean (the default) the mean is removed so flat regions give zero.
    """
    sigma = _positive("sigma", sigma)
    wavelength = _positive("wavelength", wavelength)
    gamma = _positive("gamma", gamma)
    size = _odd_size("size", size, 3.0 * sigma / min(1.0, gamma))
    x, y = _grid(size)
    t = math.radians(float(theta))
    yu = -y  # make y grow upwards so theta turns counter-clockwise on screen
    xr = x * math.cos(t) + yu * math.sin(t)
    yr = -x * math.sin(t) + yu * math.cos(t)
    env = np.exp(-(xr * xr + gamma * gamma * yr * yr) / (2.0 * sigma * sigma))
    k = env * np.cos(2.0 * math.pi * xr / wavelength + math.radians(float(psi)))
    if zero_mean:
        k = k - k.mean()
    return k


# --- classic derivative kernels -----------------------------------------------------------

def _gradient(smooth: list[float], axis: str) -> np.ndarray:
    k = np.outer(smooth, [-1.0, 0.0, 1.0])  # d/dx, smoothed along y
    return k if _choice("axis", axis, ("x", "y")) == "x" else k.T.copy()


def sobel(axis: str = "x") -> np.ndarray:
    """Sobel & Feldman (1968), the 3x3 [1 2 1] x [-1 0 1] operator."""
    return _gradient([1.0, 2.0, 1.0], axis)


def scharr(axis: str = "x") -> np.ndarray:
    """Scharr (2000), rotation-optimised [3 10 3] x [-1 0 1], as in OpenCV's Scharr()."""
    return _gradient([3.0, 10.0, 3.0], axis)


def prewitt(axis: str = "x") -> np.ndarray:
    """Prewitt (1970), [1 1 1] x [-1 0 1]."""
    return _gradient([1.0, 1.0, 1.0], axis)


def roberts(diagonal: str = "a") -> np.ndarray:
    """Roberts cross (1963), 2x2: a = [[1, 0], [0, -1]], b = [[0, 1], [-1, 0]]."""
    if _choice("diagonal", diagonal, ("a", "b")) == "a":
        return np.array([[1.0, 0.0], [0.0, -1.0]])
    return np.array([[0.0, 1.0], [-1.0, 0.0]])


def laplacian(neighbours: int = 4) -> np.ndarray:
    """Discrete Laplacian, 4- or 8-neighbour stencil (Gonzalez & Woods, Digital Image
    Processing, 3rd ed., fig. 3.37)."""
    if neighbours == 4:
        return np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    if neighbours == 8:
        return np.array([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])
    raise ParameterError("neighbours", f"must be 4 or 8, got {neighbours}")


_COMPASS = ("n", "ne", "e", "se", "s", "sw", "w", "nw")
# The 3x3 ring, clockwise from the top-left corner.
_RING = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))


def kirsch(direction: str = "n") -> np.ndarray:
    """Kirsch (1971) compass masks: three 5s facing the direction, -3 elsewhere on the ring.
    'n' answers to brightness above the centre; each step turns 45 degrees clockwise."""
    step = _COMPASS.index(_choice("direction", direction, _COMPASS))
    k = np.zeros((3, 3))
    for n, (i, j) in enumerate(_RING):
        k[i, j] = 5.0 if (n - step) % 8 in (0, 1, 2) else -3.0
    return k


GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "identity": identity,
    "box": box,
    "gaussian": gaussian,
    "disk": disk,
    "motion": motion,
    "log": log,
    "dog": dog,
    "gabor": gabor,
    "sobel": sobel,
    "scharr": scharr,
    "prewitt": prewitt,
    "roberts": roberts,
    "laplacian": laplacian,
    "kirsch": kirsch,
}
