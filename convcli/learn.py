"""Learning a bank from images: k-means features (Coates, Lee & Ng 2011) or PCA.

k-means follows Coates, Lee and Ng, "An Analysis of Single-Layer Networks in Unsupervised
Feature Learning" (AISTATS 2011): random patches, per-patch brightness and contrast
normalisation, ZCA whitening, spherical k-means. The whitening is folded into the filters:
with the whitening matrix P (symmetric) and the patch mean m, the feature of a patch x is

    d_k . P (x - m) = (P d_k) . x - (P d_k) . m

so filter k has weights P d_k and bias -(P d_k) . m. The per-patch normalisation (subtract
the patch's own mean, divide by sqrt(its variance + eps)) depends on each patch and cannot
be folded into fixed weights; the bank carries it as its ``window_norm`` setting instead
(convcli.localnorm: each window the filter reads is normalised exactly so, with the same
eps), so applying the bank gives exactly the features the centroids were learned on. With
window_norm off (``window_norm=False``) the bank sees raw pixels, as banks of earlier
versions did.

PCA gives the principal components of the (mean-subtracted) patches, each with the bias
that centres it, so a map is a patch's coordinate along that component; with window_norm
on, of the normalised patches.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from . import images, localnorm
from .errors import InputError, UsageError

NORM_EPS = localnorm.DEFAULT_EPS  # Coates et al.'s +10 on 0-255 variances, pixels in [0, 1]
ZCA_EPS = 0.1  # their whitening regulariser (on normalised patches)
KMEANS_ITERATIONS = 10
DEFAULT_FILTERS = 64
DEFAULT_SIZE = 7
DEFAULT_PATCHES = 20000
METHODS = ("kmeans", "pca")
# gray and rgb: images fitted to one or three channels; dense: every channel of the inputs as
# they are (feature maps, .npy), for a second layer learned on a first layer's output as
# Coates and Ng did ("Selecting Receptive Fields in Deep Networks", NIPS 2011).
CHANNELS = ("gray", "rgb", "dense")

# Bounds on the options, so that what is asked can be done in memory and in reasonable time.
MAX_SIZE = 32  # patch side: the covariance is (C S^2)^2, eigendecomposed in O((C S^2)^3)
MAX_PATCHES = 1_000_000
# patches x (values per patch + filters): the patch matrix and k-means' projections, as
# float64 (2**25 numbers = 256 MiB per copy; a few copies are alive at once).
MAX_NUMBERS = 1 << 25
MAX_IMAGE_VALUES = 1 << 29  # all images are held in memory as float32: 2 GiB
MAX_SEED = 2**32 - 1


@dataclass
class Learned:
    weights: np.ndarray  # (K, C, S, S) float64
    bias: np.ndarray  # (K,)
    mean: np.ndarray  # patch mean (C*S*S,)
    whitening: np.ndarray | None  # P (C*S*S, C*S*S), for k-means
    centroids: np.ndarray | None = None  # the unit k-means centroids d_k (K, C*S*S)
    window_norm: float | None = None  # eps of the bank's per-window normalisation, or None


def patches(pixels_list: list[np.ndarray], size: int, count: int, rng: np.random.Generator
            ) -> np.ndarray:
    """count random size x size patches, spread evenly over the images: (count, C*size*size)."""
    from numpy.lib.stride_tricks import sliding_window_view

    out = []
    per_image = [count // len(pixels_list) + (i < count % len(pixels_list))
                 for i in range(len(pixels_list))]
    for px, n in zip(pixels_list, per_image):
        c, h, w = px.shape
        if h < size or w < size:
            raise InputError(f"an image of {w}x{h} is smaller than the {size}x{size} patches")
        ys = rng.integers(0, h - size + 1, n)
        xs = rng.integers(0, w - size + 1, n)
        # Every window as a view (no copy); fancy indexing copies just the n chosen ones.
        windows = sliding_window_view(px, (size, size), axis=(1, 2))  # (C, h', w', S, S)
        out.append(np.moveaxis(windows[:, ys, xs], 1, 0).reshape(n, -1))
    return np.concatenate(out).astype(np.float64)


def normalise(x: np.ndarray) -> np.ndarray:
    """Per-patch brightness and contrast normalisation (Coates et al. 2011, section 3.1.1)."""
    centred = x - x.mean(axis=1, keepdims=True)
    return centred / np.sqrt(x.var(axis=1, keepdims=True) + NORM_EPS)


def zca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, P): whitened = (x - mean) @ P, with P = V diag(1/sqrt(d + eps)) V^T."""
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    d, v = np.linalg.eigh(np.atleast_2d(cov))
    return mean, (v / np.sqrt(np.maximum(d, 0) + ZCA_EPS)) @ v.T


def _unit_rows(d: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1; a row that came out all zero keeps its previous value."""
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    return np.where(norms > 0, d / np.where(norms > 0, norms, 1.0), previous)


def spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator,
                     iterations: int = KMEANS_ITERATIONS, progress=None) -> np.ndarray:
    """Centroids (k, dim) of unit length, as in Coates & Ng (2012), "Learning feature
    representations with k-means": assign each point to the centroid with the largest
    |projection|, weighted by that projection, and renormalise."""
    d = rng.standard_normal((k, x.shape[1]))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    for _ in range(iterations):
        proj = x @ d.T  # (n, k)
        best = np.abs(proj).argmax(axis=1)
        s = np.zeros_like(proj)
        s[np.arange(len(x)), best] = proj[np.arange(len(x)), best]
        d = _unit_rows(s.T @ x + d, d)  # "+ d" keeps empty clusters where they were
        if progress is not None:
            progress()
    return d


def check_options(filters: int, size: int, method: str, seed: int, count: int,
                  channels: int | None = None) -> None:
    """UsageError naming the first option that cannot work (channels: of the images, if
    known, to check what the options cost)."""
    from . import bank
    from .geometry import brief, is_int

    def whole(value, what: str, lo: int, hi: int) -> None:
        if not (is_int(value) and lo <= value <= hi):
            raise UsageError(f"{what} must be a whole number from {lo:,} to {hi:,}, "
                             f"got {brief(value)}")

    if method not in METHODS:
        raise UsageError(f"the method must be kmeans or pca, got {brief(method)}")
    whole(filters, "the number of filters", 1, bank.MAX_FILTERS)
    whole(size, "the patch size", 1, MAX_SIZE)
    whole(count, "the number of patches", 2, MAX_PATCHES)
    whole(seed, "the seed", 0, MAX_SEED)
    if count < filters:
        raise UsageError(f"{count:,} patches are fewer than the {filters:,} filters to learn; "
                         "give at least one patch per filter")
    if channels is None:
        return
    dim = channels * size * size
    if method == "pca" and filters > dim:
        raise UsageError(f"PCA of {size}x{size}x{channels} patches has at most {dim} "
                         f"components; asked for {filters}")
    try:
        bank.check_written_size(filters, channels, size, size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if count * (dim + filters) > MAX_NUMBERS:
        raise UsageError(f"{count:,} patches of {channels}x{size}x{size} for {filters:,} "
                         f"filters need {count * (dim + filters):,} numbers in memory; at most "
                         f"{MAX_NUMBERS:,} (use fewer patches)")


def default_window_norm(method: str) -> bool:
    """k-means learns on normalised patches (Coates et al.), so its banks normalise each
    window by default; PCA describes the patches as they are."""
    return method == "kmeans"


def learn(pixels_list: list[np.ndarray], filters: int, size: int, method: str, seed: int,
          count: int = DEFAULT_PATCHES, progress=None, *, labels: list[str] | None = None,
          window_norm: bool | None = None) -> Learned:
    """Learn a bank; ``progress`` (optional) is called once per k-means iteration.
    ``labels`` name the images in messages (their paths; default: their positions).
    ``window_norm``: learn on normalised patches and give the bank the per-window
    normalisation that reproduces them (None: default_window_norm(method))."""
    check_options(filters, size, method, seed, count)
    if not pixels_list:
        raise UsageError("no images to learn from")
    labels = list(labels) if labels is not None else \
        [f"image {i + 1} of {len(pixels_list)}" for i in range(len(pixels_list))]
    c = pixels_list[0].shape[0]
    for px, label in zip(pixels_list, labels):
        if px.ndim != 3 or px.shape[0] != c:
            raise InputError(f"{label}: has {px.shape[0] if px.ndim == 3 else '?'} channels, "
                             f"the first image {c}; all images must have the same")
        if px.shape[1] < size or px.shape[2] < size:
            raise InputError(f"{label}: the image ({px.shape[2]}x{px.shape[1]}) is smaller "
                             f"than the {size}x{size} patches")
    check_options(filters, size, method, seed, count, channels=c)
    rng = np.random.default_rng(seed)
    x = patches(pixels_list, size, count, rng)
    # Overflow (pixel values near float64's limits) shows as non-finite weights, refused
    # below with one line; no NumPy warning escapes.
    with np.errstate(all="ignore"):
        if window_norm is None:
            window_norm = default_window_norm(method)
        result = _pca(normalise(x) if window_norm else x, filters, c, size) \
            if method == "pca" else _kmeans(x, filters, c, size, rng, progress)
        if window_norm:
            result.window_norm = NORM_EPS
        sane = all(np.isfinite(a).all() and (np.abs(a) <= np.finfo(np.float32).max).all()
                   for a in (result.weights, result.bias))
    if not sane:
        raise InputError(f"{labels[0] if len(labels) == 1 else 'the images'}: learning gave "
                         "weights that are not finite in float32 (are the pixel values huge?)")
    return result


def _pca(x: np.ndarray, filters: int, c: int, size: int) -> Learned:
    mean = x.mean(axis=0)
    _, v = np.linalg.eigh(np.atleast_2d(np.cov(x - mean, rowvar=False)))
    comps = v[:, ::-1][:, :filters].T  # largest variance first
    comps *= np.sign(comps[np.arange(filters), np.abs(comps).argmax(axis=1)])[:, None]
    return Learned(comps.reshape(filters, c, size, size), -(comps @ mean), mean, None)


def _kmeans(x: np.ndarray, filters: int, c: int, size: int, rng: np.random.Generator,
            progress) -> Learned:
    normalised = normalise(x)
    mean, p = zca(normalised)
    d = spherical_kmeans((normalised - mean) @ p, filters, rng, progress=progress)
    folded = d @ p  # rows: (P d_k)^T, P symmetric
    return Learned(folded.reshape(filters, c, size, size), -(folded @ mean), mean, p, d)


def to_yaml(result: Learned, *, name: str, method: str, channels: str, seed: int,
            size: int, sources: list[str], command: str, count: int) -> str:
    """The bank as YAML text that loads like any other, recording how it was made."""
    defaults: dict = {"padding": "same", "border": "reflect", "activation": "relu",
                      "input": channels, "scale": "auto"}
    if result.window_norm is not None:
        defaults["window_norm"] = {"eps": result.window_norm}
    return _to_yaml(result, name=name, method=method, channels=channels, seed=seed, size=size,
                    sources=sources, command=command, count=count, defaults=defaults)


def _to_yaml(result: Learned, *, name: str, method: str, channels: str, seed: int,
             size: int, sources: list[str], command: str, count: int, defaults: dict) -> str:
    from . import bank

    filters = [{
        "name": f"{method}_{k:02d}",
        "description": (f"whitened k-means centroid {k}" if method == "kmeans"
                        else f"principal component {k}"),
        "source": f"learned by convcli learn ({method}, seed {seed}); see provenance",
        "bias": b,
        "weights": w,
    } for k, (w, b) in enumerate(zip(result.weights, result.bias))]
    provenance = {
        "method": method, "filters": len(filters), "size": size, "channels": channels,
        "patches": count, "seed": seed, "images": sources, "command": command,
        "date": datetime.date.today().isoformat(),
        "window_norm": result.window_norm is not None,
        "reference": "Coates, Lee & Ng, AISTATS 2011 (k-means: per-patch normalisation, "
                     "ZCA whitening folded into weights and bias, spherical k-means)"
        if method == "kmeans" else "principal components of mean-subtracted patches"
        + (" (each patch normalised first)" if result.window_norm is not None else ""),
    }
    return bank.dump(
        name=name, description=f"{len(filters)} filters of {size}x{size} learned by {method} "
                               f"from {len(sources)} images"
                               + ("; each window normalised (window_norm)"
                                  if "window_norm" in defaults else ""),
        defaults=defaults, filters=filters, provenance=provenance,
        header="# Made by convcli learn; see provenance for how.\n")


def read_for_learning(paths: list[str | bytes], channels: str) -> list[np.ndarray]:
    """The images as float32 (C, H, W) in the channel mode; InputError naming the file for
    one that cannot be read or learned from."""
    from pathlib import Path

    from . import features

    if channels not in CHANNELS:
        raise UsageError(f"channels must be gray, rgb or dense, got {channels!r}")
    if not paths:
        raise UsageError("no images to learn from")
    out: list[np.ndarray] = []
    held = 0
    for p in paths:
        # bytes: an image or array given on stdin
        label = "<stdin>" if isinstance(p, bytes) else p
        tensor = features.read_input(p if isinstance(p, bytes) else Path(p), label,
                                     images.DEFAULT_MAX_PIXELS)
        p = label
        px = tensor.data if channels == "dense" else images.as_channels(tensor.data, channels)
        want = {"gray": 1, "rgb": 3}.get(channels, out[0].shape[0] if out else px.shape[0])
        if px.ndim != 3 or px.shape[0] != want:
            raise InputError(f"{p}: has {px.shape[0]} channels; learning in {channels} needs "
                             f"{want}")
        if not np.isfinite(px).all():
            raise InputError(f"{p}: holds values that are not finite (NaN or infinite)")
        held += px.size
        if held > MAX_IMAGE_VALUES:
            raise UsageError(f"the images hold more than {MAX_IMAGE_VALUES:,} values, all "
                             "kept in memory while learning; give fewer or smaller images")
        out.append(px)
    return out
