"""Learning a bank from images: k-means features (Coates, Lee & Ng 2011) or PCA.

k-means follows Coates, Lee and Ng, "An Analysis of Single-Layer Networks in Unsupervised
Feature Learning" (AISTATS 2011): random patches, per-patch brightness and contrast
normalisation, ZCA whitening, spherical k-means. The whitening is folded into the filters:
with the whitening matrix P (symmetric) and the patch mean m, the feature of a patch x is

    d_k . P (x - m) = (P d_k) . x - (P d_k) . m

so filter k has weights P d_k and bias -(P d_k) . m, and running the bank as a convolution
gives exactly the whitened features. The per-patch normalisation (subtract the patch's own
mean, divide by its own standard deviation) depends on each patch and cannot be folded into
fixed weights: the bank sees raw pixels there, which is the one way its maps differ from the
paper's features.

PCA gives the principal components of the (mean-subtracted) patches, each with the bias
that centres it, so a map is a patch's coordinate along that component.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from . import images
from .errors import InputError, UsageError

NORM_EPS = 10.0 / 255.0**2  # Coates et al.'s +10 on 0-255 variances, for pixels in [0, 1]
ZCA_EPS = 0.1  # their whitening regulariser (on normalised patches)
KMEANS_ITERATIONS = 10


@dataclass
class Learned:
    weights: np.ndarray  # (K, C, S, S) float64
    bias: np.ndarray  # (K,)
    mean: np.ndarray  # patch mean (C*S*S,)
    whitening: np.ndarray | None  # P (C*S*S, C*S*S), for k-means
    centroids: np.ndarray | None = None  # the unit k-means centroids d_k (K, C*S*S)


def patches(pixels_list: list[np.ndarray], size: int, count: int, rng: np.random.Generator
            ) -> np.ndarray:
    """count random size x size patches, spread evenly over the images: (count, C*size*size)."""
    out = []
    per_image = [count // len(pixels_list) + (i < count % len(pixels_list))
                 for i in range(len(pixels_list))]
    for px, n in zip(pixels_list, per_image):
        c, h, w = px.shape
        if h < size or w < size:
            raise InputError(f"an image of {w}x{h} is smaller than the {size}x{size} patches")
        ys = rng.integers(0, h - size + 1, n)
        xs = rng.integers(0, w - size + 1, n)
        out.extend(px[:, y:y + size, x:x + size].reshape(-1) for y, x in zip(ys, xs))
    return np.asarray(out, np.float64)


def normalise(x: np.ndarray) -> np.ndarray:
    """Per-patch brightness and contrast normalisation (Coates et al. 2011, section 3.1.1)."""
    centred = x - x.mean(axis=1, keepdims=True)
    return centred / np.sqrt(x.var(axis=1, keepdims=True) + NORM_EPS)


def zca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, P): whitened = (x - mean) @ P, with P = V diag(1/sqrt(d + eps)) V^T."""
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    d, v = np.linalg.eigh(cov)
    return mean, (v / np.sqrt(np.maximum(d, 0) + ZCA_EPS)) @ v.T


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
        d = s.T @ x + d  # keeps empty clusters where they were
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        if progress is not None:
            progress()
    return d


def learn(pixels_list: list[np.ndarray], filters: int, size: int, method: str, seed: int,
          count: int = 20000, progress=None) -> Learned:
    """Learn a bank; ``progress`` (optional) is called once per k-means iteration."""
    if method not in ("kmeans", "pca"):
        raise UsageError(f"--method must be kmeans or pca, got {method!r}")
    if filters < 1 or size < 1:
        raise UsageError("--filters and --size must be at least 1")
    rng = np.random.default_rng(seed)
    c = pixels_list[0].shape[0]
    x = patches(pixels_list, size, count, rng)
    if method == "pca":
        if filters > x.shape[1]:
            raise UsageError(f"PCA of {size}x{size}x{c} patches has at most {x.shape[1]} "
                             f"components; asked for {filters}")
        mean = x.mean(axis=0)
        _, v = np.linalg.eigh(np.cov(x - mean, rowvar=False))
        comps = v[:, ::-1][:, :filters].T  # largest variance first
        comps *= np.sign(comps[np.arange(filters), np.abs(comps).argmax(axis=1)])[:, None]
        return Learned(comps.reshape(filters, c, size, size), -(comps @ mean), mean, None)
    mean, p = zca(normalise(x))
    d = spherical_kmeans((normalise(x) - mean) @ p, filters, rng, progress=progress)
    folded = d @ p  # rows: (P d_k)^T, P symmetric
    return Learned(folded.reshape(filters, c, size, size), -(folded @ mean), mean, p, d)


def to_yaml(result: Learned, *, name: str, method: str, channels: str, seed: int,
            size: int, sources: list[str], command: str, count: int) -> str:
    """The bank as YAML text that loads like any other, recording how it was made."""
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
        "reference": "Coates, Lee & Ng, AISTATS 2011 (k-means: per-patch normalisation, "
                     "ZCA whitening folded into weights and bias, spherical k-means)"
        if method == "kmeans" else "principal components of mean-subtracted patches",
    }
    return bank.dump(
        name=name, description=f"{len(filters)} filters of {size}x{size} learned by {method} "
                               f"from {len(sources)} images",
        defaults={"padding": "same", "border": "reflect", "activation": "relu",
                  "input": channels, "scale": "auto"},
        filters=filters, provenance=provenance,
        header="# Made by convcli learn; see provenance for how.\n")


def read_for_learning(paths: list[str], channels: str) -> list[np.ndarray]:
    if channels not in ("gray", "rgb"):
        raise UsageError(f"--channels must be gray or rgb, got {channels!r}")
    return [images.as_channels(images.read_image(p).pixels, channels) for p in paths]
