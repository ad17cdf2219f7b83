"""Engine benchmark: convcli.conv2d against PyTorch, OpenCV, SciPy and im2col + BLAS.

Every peer runs on the same float32 data in the same run; every result is checked against a
float64 reference before it is timed. Zero padding, 'same', ReLU. Prints median times,
effective GFLOP/s (2*F*C*KH*KW*H'*W' useful operations per call) and the ratio of each
peer's time to convcli's (> 1: convcli is faster). A peer that is not installed is skipped
with a note.

    python benchmarks/engine.py [--repeat 7] [--threads 2] [--only edge,rgb]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import machine  # noqa: E402  (benchmarks/ is not a package)


@dataclass
class Workload:
    name: str
    c: int
    size: int
    f: int
    k: int
    stride: int = 1
    gaussian: float | None = None  # sigma: one Gaussian kernel instead of random ones


WORKLOADS = [
    Workload("edge", 1, 1024, 8, 3),
    Workload("rgb", 3, 1024, 32, 5),
    Workload("strided", 3, 2048, 16, 7, stride=2),
    Workload("bigblur", 1, 2048, 1, 31, gaussian=5.0),
    Workload("tiny", 1, 256, 4, 3),
    Workload("fftbig", 1, 2048, 2, 63),  # large and not separable: the FFT path
]


def make(w: Workload):
    rng = np.random.default_rng(0)
    x = rng.random((w.c, w.size, w.size), dtype=np.float32)
    if w.gaussian:
        from convcli.generators import gaussian

        k = gaussian(sigma=w.gaussian, size=w.k).astype(np.float32)[None, None]
    else:
        k = rng.standard_normal((w.f, w.c, w.k, w.k)).astype(np.float32)
    b = rng.standard_normal(w.f).astype(np.float32) * 0.1
    return x, k, b


def reference(x, k, b, stride):
    """float64 cross-correlation with zero 'same' padding, bias and ReLU."""
    pad = (k.shape[-1] - 1) // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    out = []
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(xp, k.shape[-2:], axis=(1, 2))[:, ::stride, ::stride]
    for f in range(k.shape[0]):
        out.append(np.einsum("chwij,cij->hw", win, k[f].astype(np.float64)) + b[f])
    return np.maximum(np.stack(out), 0)


def gflops(w: Workload, out_shape) -> float:
    _, ho, wo = out_shape
    return 2.0 * w.f * w.c * w.k * w.k * ho * wo / 1e9


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up (compiles, allocates)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peers(w: Workload, x, k, b, threads: int):
    """name -> callable returning (F, H', W') float32, for every installed peer."""
    pad = (w.k - 1) // 2
    found, notes = {}, []
    try:
        import torch

        torch.set_num_threads(threads)
        tx, tk, tb = torch.from_numpy(x)[None], torch.from_numpy(k), torch.from_numpy(b)

        def run_torch():
            with torch.no_grad():
                return torch.relu(torch.nn.functional.conv2d(tx, tk, tb, stride=w.stride,
                                                             padding=pad))[0].numpy()
        found["torch"] = run_torch
    except ImportError:
        notes.append("PyTorch not installed (pip install torch==2.13.0)")
    try:
        import cv2

        cv2.setNumThreads(threads)

        def run_cv2():
            out = []
            for f in range(k.shape[0]):
                acc = np.full(x.shape[1:], b[f], np.float32)
                for c in range(x.shape[0]):
                    acc += cv2.filter2D(x[c], cv2.CV_32F, k[f, c], borderType=cv2.BORDER_CONSTANT)
                out.append(np.maximum(acc[::w.stride, ::w.stride], 0))
            return np.stack(out)
        found["cv2.filter2D"] = run_cv2
        if w.gaussian:
            g1 = k[0, 0].sum(axis=0).astype(np.float32)

            def run_sep():
                y = cv2.sepFilter2D(x[0], cv2.CV_32F, g1, g1, borderType=cv2.BORDER_CONSTANT)
                return np.maximum(y + b[0], 0)[None]
            found["cv2.sepFilter2D"] = run_sep
    except ImportError:
        notes.append("OpenCV not installed (pip install opencv-python-headless)")
    try:
        from scipy import ndimage

        def run_scipy():
            out = []
            for f in range(k.shape[0]):
                acc = sum(ndimage.correlate(x[c], k[f, c], mode="constant")
                          for c in range(x.shape[0]))
                out.append(np.maximum(acc[::w.stride, ::w.stride] + b[f], 0))
            return np.stack(out).astype(np.float32)
        if w.size * w.size * w.f * w.c * w.k * w.k < 3e9:  # SciPy is single-threaded and slow
            found["scipy.ndimage"] = run_scipy
        else:
            notes.append("scipy.ndimage skipped on this workload (minutes per call)")
    except ImportError:
        notes.append("SciPy not installed")

    def run_im2col():
        from numpy.lib.stride_tricks import sliding_window_view

        xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        win = sliding_window_view(xp, (w.k, w.k), axis=(1, 2))[:, ::w.stride, ::w.stride]
        c, ho, wo = win.shape[:3]
        cols = np.ascontiguousarray(win.transpose(1, 2, 0, 3, 4)).reshape(ho * wo, -1)
        out = cols @ k.reshape(k.shape[0], -1).T + b
        return np.maximum(out, 0).T.reshape(k.shape[0], ho, wo)
    if w.size * w.size * w.c * w.k * w.k * 4 / w.stride**2 < 2e9:  # im2col copies the image k*k times
        found["im2col+BLAS"] = run_im2col
    else:
        notes.append("im2col+BLAS skipped on this workload (its copy needs > 2 GB)")
    return found, notes


def ceiling(threads: int) -> float:
    """The machine's practical float32 GFLOP/s: a large numpy matrix multiply."""
    a = np.random.default_rng(1).random((2048, 2048), dtype=np.float32)
    t = median_time(lambda: a @ a, 3)
    return 2 * 2048**3 / t / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--only", default="")
    args = ap.parse_args()

    from convcli import engine

    engine.plan(method="jit", threads=args.threads)
    print(f"machine: {machine()}; {args.threads} threads for every peer")
    peak = ceiling(args.threads)
    print(f"ceiling: numpy float32 matmul {peak:.1f} GFLOP/s\n")
    chosen = [w for w in WORKLOADS if not args.only or w.name in args.only.split(",")]
    for w in chosen:
        x, k, b = make(w)
        pad = (w.k - 1) // 2
        mine = lambda: engine.conv2d(x, k, b, stride=w.stride, padding=pad)  # noqa: E731
        ref = reference(x, k, b, w.stride)
        found, notes = peers(w, x, k, b, args.threads)
        print(f"{w.name}: {w.c}x{w.size}x{w.size}, {w.f} x {w.c}x{w.k}x{w.k}, stride {w.stride}"
              f" ({gflops(w, ref.shape):.2f} GFLOP per call)")
        rows = []
        for name, fn in [("convcli", mine)] + list(found.items()):
            got = fn()
            err = float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max()))
            if got.shape != ref.shape or err > 1e-4:
                print(f"   {name:16s} WRONG: shape {got.shape}, relative error {err:.2e}")
                continue
            t = median_time(fn, args.repeat)
            rows.append((name, t))
        base = dict(rows).get("convcli")
        for name, t in rows:
            gf = gflops(w, ref.shape) / t
            ratio = "" if name == "convcli" or base is None else f"  {t / base:6.2f}x"
            print(f"   {name:16s} {t * 1000:9.2f} ms  {gf:7.2f} GFLOP/s ({100 * gf / peak:4.0f}% "
                  f"of ceiling){ratio}")
        for note in notes:
            print(f"   ({note})")
        print()


if __name__ == "__main__":
    main()
