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
# Every sigma, in pixels. Below 0.01 a sampled Gaussian is a lone impulse anyway, and the
# LoG's 1/sigma^4 would overflow float32; above 10,000 it is flat over the largest kernel.
SIGMA_RANGE = (0.01, 10_000.0)
MIN_WAVELENGTH = 0.01  # pixels; under 2 the cosine aliases already, under this it is noise
GAMMA_RANGE = (0.01, 100.0)  # Gabor aspect ratio; gamma^2 stays far from over/underflow


def _show(value: object) -> str:
    from .geometry import brief

    return brief(value)


def _real(param: str, value: object, lo: float | None = None, hi: float | None = None,
          above: float | None = None) -> float:
    """A finite number (not a bool, not a string), optionally in [lo, hi] or > above."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_))
    try:
        number = float(value) if ok else math.nan  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not ok:
        raise ParameterError(param, f"must be a number, got {_show(value)}")
    if not math.isfinite(number):
        raise ParameterError(param, f"must be a finite number, got {_show(value)}")
    if above is not None and not number > above:
        raise ParameterError(param, f"must be > {above:g}, got {_show(value)}")
    if lo is not None and lo > 0 and number <= 0:
        raise ParameterError(param, f"must be > 0, got {_show(value)}")
    if lo is not None and number < lo:
        raise ParameterError(param, f"must be at least {lo:g}, got {_show(value)}")
    if hi is not None and number > hi:
        raise ParameterError(param, f"must be at most {hi:g}, got {_show(value)}")
    return number


def _whole(param: str, value: object, lo: int, hi: int) -> int:
    """A whole number in lo..hi (2.0 counts; True, 2.5 and '2' do not)."""
    number = _real(param, value) if not isinstance(value, (int, np.integer)) or \
        isinstance(value, (bool, np.bool_)) else value
    if number != int(number) or not lo <= number <= hi:
        raise ParameterError(param, f"must be a whole number in {lo}..{hi}, got {_show(value)}")
    return int(number)


def _positive(param: str, value: object) -> float:
    return _real(param, value, above=0.0)


def _sigma(param: str, value: object) -> float:
    return _real(param, value, *SIGMA_RANGE)


def _odd_size(param: str, size: object, radius: float) -> int:
    """The kernel size: the given one (must be odd and positive) or 2*ceil(radius)+1."""
    if size is None:
        if radius > MAX_GENERATED_SIZE:  # say so before making a huge whole number of it
            raise ParameterError(param, f"gives a kernel wider than {MAX_GENERATED_SIZE} pixels "
                                        f"(radius {radius:.4g})")
        size = 2 * max(1, int(math.ceil(radius))) + 1
    if not isinstance(size, (int, np.integer)) or isinstance(size, (bool, np.bool_)):
        size = _real(param, size)
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ParameterError(param, f"must be an odd whole number >= 1, got {_show(size)}")
    if size > MAX_GENERATED_SIZE:
        raise ParameterError(param, f"kernel of {_show(size)}x{_show(size)} is larger than "
                                    f"{MAX_GENERATED_SIZE}")
    return int(size)


def _rounded(radius: float) -> float:
    """round(radius) as scipy sizes Gaussians, left alone when too large to matter (even inf):
    _odd_size refuses it with a message instead of building a huge whole number."""
    return float(math.floor(radius + 0.5)) if radius <= MAX_GENERATED_SIZE else radius


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x right, y down) with the origin at the kernel centre."""
    r = (size - 1) / 2.0
    ax = np.arange(size, dtype=np.float64) - r
    return np.meshgrid(ax, ax, indexing="xy")


def _choice(param: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ParameterError(param, f"must be one of {', '.join(allowed)}; got {_show(value)}")
    return value


def _flag(param: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)) and type(value).__name__ != "ScalarBoolean":
        raise ParameterError(param, f"must be true or false, got {_show(value)}")
    return bool(value)


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
    size = _whole("size", size, 1, MAX_GENERATED_SIZE)
    height = size if height is None else _whole("height", height, 1, MAX_GENERATED_SIZE)
    return np.full((height, size), 1.0 / (size * height))


def gaussian(sigma: float = 1.0, size: int | None = None, truncate: float = 4.0) -> np.ndarray:
    """Sampled isotropic Gaussian exp(-r^2 / 2 sigma^2), normalised to sum 1.

    Default size follows scipy.ndimage.gaussian_filter: radius = round(truncate * sigma).
    """
    sigma = _sigma("sigma", sigma)
    size = _odd_size("size", size, _rounded(_positive("truncate", truncate) * sigma))
    return _gaussian_2d(sigma, size)


def disk(radius: float = 2.0) -> np.ndarray:
    """Pillbox (out-of-focus blur): pixels whose centre is within radius, normalised."""
    radius = _positive("radius", radius)
    size = _odd_size("radius", None, radius)
    x, y = _grid(size)
    k = (x * x + y * y <= radius * radius + 1e-9).astype(np.float64)
    return k / k.sum()  # the centre is always in: the sum is at least 1


def motion(length: float = 9.0, angle: float = 0.0) -> np.ndarray:
    """Linear motion blur: a segment of the given length through the centre.

    Each pixel weighs max(0, 1 - d), d its centre's distance to the segment (a one-pixel
    wide antialiased line), then the kernel is normalised to sum 1.
    """
    length = _positive("length", length)
    size = _odd_size("length", None, length / 2.0)
    x, y = _grid(size)
    t = math.radians(_real("angle", angle))
    ux, uy = math.cos(t), -math.sin(t)  # y grows down, angles turn counter-clockwise on screen
    along = np.clip(x * ux + y * uy, -length / 2.0, length / 2.0)
    d = np.hypot(x - along * ux, y - along * uy)
    k = np.clip(1.0 - d, 0.0, None)
    return k / k.sum()  # the centre lies on the segment: the sum is at least 1


# --- band-pass and oriented ---------------------------------------------------------------

def log(sigma: float = 1.0, size: int | None = None, truncate: float = 4.0) -> np.ndarray:
    """Scale-normalised Laplacian of Gaussian, sigma^2 * (r^2 - 2 sigma^2)/sigma^4 * G.

    Marr & Hildreth (1980); scale normalisation by sigma^2 after Lindeberg (1998). The mean
    is subtracted so a flat image gives exactly zero despite truncation. The centre is
    negative (the sign of the Laplacian, as in scipy.ndimage.gaussian_laplace): a dark blob
    on a bright ground answers positively.
    """
    sigma = _sigma("sigma", sigma)
    size = _odd_size("size", size, _rounded(_positive("truncate", truncate) * sigma))
    x, y = _grid(size)
    r2 = x * x + y * y
    k = (r2 - 2.0 * sigma * sigma) / sigma**2 * np.exp(-r2 / (2.0 * sigma * sigma))
    k /= 2.0 * math.pi * sigma * sigma
    return k - k.mean()


def dog(sigma: float = 1.0, sigma2: float | None = None, size: int | None = None) -> np.ndarray:
    """Difference of Gaussians G(sigma) - G(sigma2), each normalised; sigma2 defaults to
    1.6 sigma, the ratio Marr & Hildreth (1980) give as closest to the LoG. Positive centre,
    sums to zero."""
    sigma = _sigma("sigma", sigma)
    sigma2 = 1.6 * sigma if sigma2 is None else _sigma("sigma2", sigma2)
    if sigma2 <= sigma:
        raise ParameterError("sigma2", f"must be larger than sigma ({sigma:g}), got {sigma2:g}")
    size = _odd_size("size", size, _rounded(4.0 * sigma2))
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
    """Gabor filter exp(-(u^2 + gamma^2 v^2) / 2 sigma^2) * cos(2 pi u / wavelength + psi).

    Daugman (1985). u is the coordinate along the direction theta, counter-clockwise on
    screen from pointing right: with x right and y down, u = x cos(theta) - y sin(theta) and
    v = x sin(theta) + y cos(theta). theta 0: the stripes are vertical and the filter answers
    to change from left to right; 90: horizontal stripes, change from bottom to top. theta
    and psi in degrees. With zero_mean (the default) the mean is removed so flat regions
    give zero.
    """
    sigma = _sigma("sigma", sigma)
    wavelength = _real("wavelength", wavelength, lo=MIN_WAVELENGTH)
    gamma = _real("gamma", gamma, *GAMMA_RANGE)
    t = math.radians(_real("theta", theta))
    phase = math.radians(_real("psi", psi))
    zero_mean = _flag("zero_mean", zero_mean)
    size = _odd_size("size", size, 3.0 * sigma / min(1.0, gamma))
    x, y = _grid(size)
    u = x * math.cos(t) - y * math.sin(t)
    v = x * math.sin(t) + y * math.cos(t)
    env = np.exp(-(u * u + gamma * gamma * v * v) / (2.0 * sigma * sigma))
    k = env * np.cos(2.0 * math.pi * u / wavelength + phase)
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
    neighbours = _whole("neighbours", neighbours, 4, 8)
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
