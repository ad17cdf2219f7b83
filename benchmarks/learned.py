"""Does learning help? Features from learned banks against random filters and raw pixels.

Two labelled sets, both shipped with their Python packages (no network):

textures (the test that tells features apart): 16 classes, one per natural photo of
  scikit-image's data module (astronaut, brick, camera, cell, chelsea, clock, coffee, coins,
  grass, gravel, hubble_deep_field, immunohistochemistry, moon, page, retina, rocket), made
  gray (BT.601 luminance, as convcli does). Each photo is cut into a left and a right half;
  per seed one half gives the training patches and the other the test patches (which half
  alternates with the seed), so no test pixel is ever seen in training. Patches are 32x32 at
  random places, each normalised to mean 0 and standard deviation 1 so that a photo's
  brightness and contrast give nothing away. Chance is 1/16 = 6.25%.
digits (a set that saturates): scikit-learn's 1797 handwritten digits of 8x8, half train
  and half test (split by the seed).

Features: a convcli bank of S x S filters (textures 7x7, valid; digits 5x5, same, zero
border), ReLU, then sum-pooling over the map's four quadrants (textures) or 2x2 average
pooling (digits), flattened. Every bank runs through convcli itself (network.run, so a bank
with window_norm normalises each window exactly as `convcli apply` does). The banks:

  k-means        `convcli learn`'s default: Coates et al.'s k-means on normalised, whitened
                 patches, the bank normalising each window (window_norm)
  k-means, raw   the same filters without window_norm (what learn wrote before: the filters
                 see raw pixels)
  PCA            `convcli learn --method pca` (no window_norm), and PCA + window_norm
  random         Gaussian weights, bias 0
  zero-mean rnd  Gaussian weights minus each filter's mean (no response to flat regions),
                 without and with window_norm (does normalisation alone do it?)
  raw pixels     the normalised patch itself (no filters)

Filters are learned from the training pixels only (the training halves; the training
digits). One classifier for all: standardised features, multinomial logistic regression
(scikit-learn, C = 0.1). Each table row gives the mean test accuracy ± the standard
deviation over the seeds; then, for each filter count, k-means against every other row:
the mean paired difference, a paired t-test across seeds and the number of seeds k-means won.

    pip install -e ".[bench]"
    python benchmarks/learned.py [--set textures|digits|both] [--seeds 5]
                                 [--filters 16,64,256] [--per-class 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
          "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
          "retina", "rocket")
PATCH = 32
TEXTURE_SIZE = 7
DIGIT_SIZE = 5


# --- the labelled sets ------------------------------------------------------------------------

def photos() -> list[np.ndarray]:
    """The 16 photos as float32 gray (H, W) in [0, 1]."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("scikit-image is not installed: pip install -e '.[bench]'") from None
    from convcli import images

    out = []
    for name in PHOTOS:
        a = np.asarray(getattr(data, name)())
        x = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
        x = x[..., :3].transpose(2, 0, 1) if x.ndim == 3 else x[None]
        out.append(images.as_channels(x, "gray")[0])
    return out


def halves(photo: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train half, test half): left and right, swapped on odd seeds."""
    mid = photo.shape[1] // 2
    left, right = photo[:, :mid], photo[:, mid:]
    return (left, right) if seed % 2 == 0 else (right, left)


def cut(region: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random PATCH x PATCH patches of a region, each normalised: (n, PATCH, PATCH)."""
    ys = rng.integers(0, region.shape[0] - PATCH + 1, n)
    xs = rng.integers(0, region.shape[1] - PATCH + 1, n)
    p = np.stack([region[y:y + PATCH, x:x + PATCH] for y, x in zip(ys, xs)]).astype(np.float64)
    p -= p.mean(axis=(1, 2), keepdims=True)
    p /= p.std(axis=(1, 2), keepdims=True) + 1e-8
    return p.astype(np.float32)


def texture_set(pics: list[np.ndarray], seed: int, per_class: int):
    rng = np.random.default_rng(seed)
    train_x, train_y, test_x, test_y, train_regions = [], [], [], [], []
    for label, photo in enumerate(pics):
        train, test = halves(photo, seed)
        train_regions.append(train[None])
        train_x.append(cut(train, per_class, rng))
        test_x.append(cut(test, per_class, rng))
        train_y += [label] * per_class
        test_y += [label] * per_class
    return (np.concatenate(train_x), np.array(train_y), np.concatenate(test_x),
            np.array(test_y), train_regions)


# --- features through convcli ---------------------------------------------------------------

def bank_of(weights: np.ndarray, bias: np.ndarray, eps: float | None, padding: str,
            border: str):
    """A depthwise convcli bank (each patch of a batch is a channel of its own)."""
    from convcli import bank, network

    geo = bank.Geometry((1, 1), padding, (1, 1), border, "relu", window_norm=eps)
    filters = tuple(bank.Filter(f"f{i}", np.ascontiguousarray(w.reshape((1,) + w.shape[-2:]),
                                                              np.float32), float(b), geo, "auto")
                    for i, (w, b) in enumerate(zip(weights, bias)))
    b = bank.KernelBank("bench", "depthwise", filters)
    return network.Network("bench", "", (network.Conv("bench", b),))


def features(patches: np.ndarray, net, pool: str, chunk: int = 256) -> np.ndarray:
    """(N, K * 4): every filter's ReLU map of every patch, pooled and flattened."""
    from convcli import network

    k = len(net.layers[0].bank.filters)
    out = []
    for start in range(0, len(patches), chunk):
        part = np.ascontiguousarray(patches[start:start + chunk], np.float32)
        n = len(part)
        maps = network.run(part, net)[0]  # (K * n, H', W'), filter-major
        maps = maps.reshape(k, n, *maps.shape[1:])
        h, w = maps.shape[2:]
        if pool == "quadrants":
            pooled = maps.reshape(k, n, 2, h // 2, 2, w // 2).sum(axis=(3, 5)) if h % 2 == 0 \
                else np.stack([maps[:, :, :h // 2, :w // 2].sum((2, 3)),
                               maps[:, :, :h // 2, w // 2:].sum((2, 3)),
                               maps[:, :, h // 2:, :w // 2].sum((2, 3)),
                               maps[:, :, h // 2:, w // 2:].sum((2, 3))], axis=2)
        else:  # 2x2 average pooling
            pooled = maps.reshape(k, n, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        out.append(pooled.reshape(k, n, -1).transpose(1, 0, 2).reshape(n, -1))
    return np.concatenate(out)


def accuracy(train_x, train_y, test_x, test_y) -> float:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x, train_y)
    return float(model.score(test_x, test_y))


def banks(regions, k: int, size: int, seed: int, count: int):
    """(row name, weights (K, 1, S, S), bias, window_norm eps) for every bank of a row."""
    from convcli import learn

    rng = np.random.default_rng(10_000 + seed)
    km = learn.learn(regions, k, size, "kmeans", seed=seed, count=count)
    rnd = rng.standard_normal((k, 1, size, size))
    zm = rnd - rnd.mean(axis=(1, 2, 3), keepdims=True)
    zero = np.zeros(k)
    out = [("k-means (learn's default, window_norm)", km.weights, km.bias, km.window_norm),
           ("k-means without window_norm", km.weights, km.bias, None)]
    if k <= size * size:  # PCA has at most S*S components
        pca = learn.learn(regions, k, size, "pca", seed=seed, count=count)
        pca_n = learn.learn(regions, k, size, "pca", seed=seed, count=count, window_norm=True)
        out += [("PCA", pca.weights, pca.bias, None),
                ("PCA + window_norm", pca_n.weights, pca_n.bias, pca_n.window_norm)]
    return out + [("random", rnd, zero, None),
                  ("zero-mean random", zm, zero, None),
                  ("zero-mean random + window_norm", zm, zero, learn.NORM_EPS)]


# --- reporting --------------------------------------------------------------------------------

def report(title: str, scores: dict[tuple[str, int], list[float]], counts: list[int],
           baseline: str) -> None:
    from scipy import stats

    names = list(dict.fromkeys(name for name, _ in scores))
    print(f"\n{title}\n")
    print("| features | " + " | ".join(f"{k} filters" for k in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    for name in names:
        cells = []
        for k in counts:
            v = scores.get((name, k)) or scores.get((name, 0))
            if v is None:
                cells.append("")
                continue
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(v):.1f} ± {100 * sd:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{baseline} against each row (mean paired difference in points, paired t-test "
          "p over seeds, seeds won):\n")
    print("| against | " + " | ".join(f"{k} filters" for k in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    for name in names:
        if name == baseline:
            continue
        cells = []
        for k in counts:
            a, b = scores.get((baseline, k)), scores.get((name, k)) or scores.get((name, 0))
            if a is None or b is None or len(a) < 2:
                cells.append("")
                continue
            d = 100 * (np.array(a) - np.array(b))
            p = float(stats.ttest_rel(a, b).pvalue) if np.any(d != d[0]) else \
                (0.0 if d[0] else 1.0)
            cells.append(f"{d.mean():+.1f} (p {p:.2g}, {int((d > 0).sum())}/{len(d)})")
        print(f"| {name} | " + " | ".join(cells) + " |")


def run_textures(seeds: int, counts: list[int], per_class: int, count: int) -> None:
    pics = photos()
    scores: dict[tuple[str, int], list[float]] = {}
    for seed in range(seeds):
        t0 = time.perf_counter()
        tr_x, tr_y, te_x, te_y, regions = texture_set(pics, seed, per_class)
        for k in counts:
            for name, w, b, eps in banks(regions, k, TEXTURE_SIZE, seed, count):
                net = bank_of(w, b, eps, "valid", "reflect")
                acc = accuracy(features(tr_x, net, "quadrants"), tr_y,
                               features(te_x, net, "quadrants"), te_y)
                scores.setdefault((name, k), []).append(acc)
        raw = accuracy(tr_x.reshape(len(tr_x), -1), tr_y, te_x.reshape(len(te_x), -1), te_y)
        scores.setdefault(("raw pixels (no filters)", 0), []).append(raw)
        print(f"seed {seed} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if seed + 1 < seeds:  # what is known so far, for a long run cut short
            print(f"\n## after {seed + 1} of {seeds} seeds", flush=True)
            _textures_report(scores, seed + 1, counts, per_class, count)
    _textures_report(scores, seeds, counts, per_class, count)


def _textures_report(scores, seeds, counts, per_class, count) -> None:
    report(f"textures: {len(PHOTOS)} classes (scikit-image photos), {per_class} train and "
           f"{per_class} test patches of {PATCH}x{PATCH} per class from opposite halves, "
           f"{seeds} seeds; {TEXTURE_SIZE}x{TEXTURE_SIZE} filters (valid), ReLU, quadrant "
           f"sum-pooling; k-means and PCA from {count:,} patches; chance 6.25%",
           scores, counts, "k-means (learn's default, window_norm)")
    sys.stdout.flush()


def run_digits(seeds: int, k: int, count: int) -> None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("scikit-learn is not installed: pip install -e '.[bench]'") from None
    from convcli import learn

    digits = load_digits()
    pics = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    labels = digits.target
    scores: dict[tuple[str, int], list[float]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(pics))
        train, test = order[: len(order) // 2], order[len(order) // 2:]
        learned = learn.learn([im[None] for im in pics[train]], k, DIGIT_SIZE, "kmeans",
                              seed=seed, count=count)
        rnd = rng.standard_normal(learned.weights.shape)
        for name, (w, b, eps) in (
                ("k-means (learn's default, window_norm)",
                 (learned.weights, learned.bias, learned.window_norm)),
                ("k-means without window_norm", (learned.weights, learned.bias, None)),
                ("random", (rnd, np.zeros(k), None))):
            f = features(pics, bank_of(w, b, eps, "same", "zero"), "2x2")
            scores.setdefault((name, k), []).append(
                accuracy(f[train], labels[train], f[test], labels[test]))
        flat = pics.reshape(len(pics), -1)
        scores.setdefault(("raw pixels (no filters)", 0), []).append(
            accuracy(flat[train], labels[train], flat[test], labels[test]))
    report(f"digits: {len(pics)} images of 8x8, half train / half test, {seeds} seeds; "
           f"{DIGIT_SIZE}x{DIGIT_SIZE} filters (same, zero border), ReLU, 2x2 average "
           "pooling", scores, [k], "k-means (learn's default, window_norm)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("textures", "digits", "both"), default="both")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--filters", default="16,64,256",
                    help="filter counts for the textures (digits: the first after 16, or 32)")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--patches", type=int, default=20000, help="patches k-means and PCA see")
    args = ap.parse_args()
    counts = [int(k) for k in args.filters.split(",")]
    if args.set in ("textures", "both"):
        run_textures(args.seeds, counts, args.per_class, args.patches)
    if args.set in ("digits", "both"):
        run_digits(args.seeds, 32, args.patches)


if __name__ == "__main__":
    main()
