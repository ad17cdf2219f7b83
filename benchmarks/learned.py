"""Does learning help? Features from a learned bank against random filters and raw pixels.

On scikit-learn's handwritten digits (1797 images of 8x8, shipped with the package, no
network), features are convcli conv + ReLU + 2x2 average pooling, and the same linear
classifier (standardised features, logistic regression) is trained on features from
(a) a bank learned by `convcli learn`'s k-means on the training images, (b) random filters
of the same shape, (c) the raw pixels. Half the images train, half test; filters and splits
vary with the seed, and the table gives mean and spread over --seeds seeds.

    pip install -e ".[bench]"
    python benchmarks/learned.py [--filters 32] [--size 5] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np


def features(images: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """conv ('same', ReLU) then 2x2 average pooling, flattened: (N, K * 4 * 4)."""
    from convcli import conv2d_depthwise

    maps = conv2d_depthwise(images.astype(np.float32), weights[:, 0].astype(np.float32), bias,
                            padding="same", border="zero", activation="relu")  # (K, N, 8, 8)
    k, n, h, w = maps.shape
    pooled = maps.reshape(k, n, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return pooled.transpose(1, 0, 2, 3).reshape(n, -1)


def accuracy(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
    model.fit(train_x, train_y)
    return float(model.score(test_x, test_y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--size", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("scikit-learn is not installed: pip install -e '.[bench]'") from None
    from convcli import learn

    digits = load_digits()
    images = digits.images / 16.0  # (1797, 8, 8) in [0, 1]
    labels = digits.target
    scores: dict[str, list[float]] = {"learned (k-means)": [], "random filters": [],
                                      "raw pixels": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(images))
        train, test = order[: len(order) // 2], order[len(order) // 2:]
        learned = learn.learn([im[None] for im in images[train]], args.filters, args.size,
                              "kmeans", seed=seed, count=20000)
        random_w = rng.standard_normal(learned.weights.shape)
        for name, (w, b) in (("learned (k-means)", (learned.weights, learned.bias)),
                             ("random filters", (random_w, np.zeros(args.filters)))):
            f = features(images, w, b)
            scores[name].append(accuracy(f[train], labels[train], f[test], labels[test]))
        flat = images.reshape(len(images), -1)
        scores["raw pixels"].append(accuracy(flat[train], labels[train], flat[test], labels[test]))
    print(f"digits: {len(images)} images of 8x8, half train / half test, {args.seeds} seeds; "
          f"{args.filters} filters of {args.size}x{args.size}, conv + ReLU + 2x2 average pooling")
    print("| features | test accuracy (mean ± sd) |\n|---|---|")
    for name, values in scores.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {100 * statistics.mean(values):.1f}% ± {100 * sd:.1f} |")


if __name__ == "__main__":
    main()
