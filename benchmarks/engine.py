"""Engine benchmark: convcli.conv2d against PyTorch, OpenCV, SciPy and im2col + BLAS.

Every peer runs on the same float32 data in the same run, at the same thread count; every
result is checked against a float64 reference before it is timed. Zero padding ('same' for
odd kernels), bias, ReLU. Times are medians of interleaved runs (convcli, torch, ... in turn,
so a slow spell of a shared machine hits all alike). Prints milliseconds, GFLOP/s
(2*F*(C/groups)*KH*KW*H'*W' useful operations per call, whatever the algorithm: Winograd does
fewer and can pass the peak), the fraction of the machine's float32 peak (measured in this
run, which a busy machine lowers, and theoretical), and each peer's time
over convcli's (> 1: convcli is faster), then the goals of the engine issues, met or not.

    python benchmarks/engine.py [--repeat 7] [--threads 1,2] [--only vgg,wide] [--no-extras]

Peaks: "theoretical" from lscpu (cores x clock x FMA units x SIMD lanes x 2); "measured" the
best large float32 matrix product at that thread count from NumPy's BLAS and from PyTorch.
Extras: the cost of planning a new bank, and the library default (method "auto") in a fresh
process calling conv2d over and over.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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
    groups: int = 1
    gaussian: float | None = None  # sigma: one Gaussian kernel instead of random ones
    extra: bool = False  # only when named with --only (minutes for some peers)


WORKLOADS = [
    Workload("edge", 1, 1024, 8, 3),
    Workload("rgb", 3, 1024, 32, 5),
    Workload("strided", 3, 2048, 16, 7, stride=2),
    Workload("bigblur", 1, 2048, 1, 31, gaussian=5.0),
    Workload("tiny", 1, 256, 4, 3),
    Workload("vgg", 64, 224, 64, 3),
    Workload("wide", 64, 112, 128, 3),
    Workload("stem", 3, 224, 64, 7, stride=2),
    Workload("pointwise", 64, 224, 64, 1),
    Workload("depthwise", 32, 512, 32, 3, groups=32),
    Workload("fftbig", 1, 2048, 2, 63, extra=True),  # large and not separable: the FFT path
]

# (workload, peer, least peer time / convcli time, thread counts it applies to or None)
GOALS = [
    ("edge", "torch", 4.0, None), ("rgb", "torch", 1.5, None), ("strided", "torch", 1.0, None),
    ("bigblur", "cv2.sepFilter2D", 1 / 1.5, None), ("tiny", "torch", 1.0, None),
    ("vgg", "torch", 1.0, (1, 2)), ("wide", "torch", 1.0, (1, 2)), ("stem", "torch", 1.0, (1, 2)),
    ("pointwise", "torch", 1.0, (1, 2)), ("depthwise", "torch", 2.0, None),
    ("vgg", "torch", 1.5, (1, 2)), ("wide", "torch", 1.5, (1, 2)),  # beyond: Winograd
]


def make(w: Workload):
    rng = np.random.default_rng(0)
    x = rng.random((w.c, w.size, w.size), dtype=np.float32)
    if w.gaussian:
        from convcli.generators import gaussian

        k = gaussian(sigma=w.gaussian, size=w.k).astype(np.float32)[None, None]
    else:
        k = rng.standard_normal((w.f, w.c // w.groups, w.k, w.k)).astype(np.float32)
        k *= np.float32(1 / np.sqrt(k[0].size))  # outputs of the input's size, as in a CNN
    b = rng.standard_normal(w.f).astype(np.float32) * 0.1
    return x, k, b


def reference(w: Workload, x, k, b):
    """float64 correlation with zero padding, bias and ReLU (PyTorch in float64 when
    installed, for kernels up to 7x7: its float64 path copies the image k*k times; else
    NumPy)."""
    pad = (w.k - 1) // 2
    try:
        if w.k > 7:
            raise ImportError
        import torch

        with torch.no_grad():
            out = torch.nn.functional.conv2d(
                torch.from_numpy(x.astype(np.float64))[None],
                torch.from_numpy(k.astype(np.float64)), torch.from_numpy(b.astype(np.float64)),
                stride=w.stride, padding=pad, groups=w.groups)
        return np.maximum(out[0].numpy(), 0)
    except ImportError:
        from numpy.lib.stride_tricks import sliding_window_view

        xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
        win = sliding_window_view(xp, k.shape[-2:], axis=(1, 2))[:, ::w.stride, ::w.stride]
        cg, fg = x.shape[0] // w.groups, k.shape[0] // w.groups
        out = [np.einsum("chwij,cij->hw", win[(f // fg) * cg:(f // fg + 1) * cg],
                         k[f].astype(np.float64)) + b[f] for f in range(k.shape[0])]
        return np.maximum(np.stack(out), 0)


def gflop(w: Workload, out_shape) -> float:
    _, ho, wo = out_shape
    return 2.0 * w.f * (w.c // w.groups) * w.k * w.k * ho * wo / 1e9


def peers(w: Workload, x, k, b, threads: int):
    """name -> callable returning (F, H', W') float32, for every installed peer."""
    from convcli.engine import EngineConfig, conv2d

    pad = (w.k - 1) // 2
    cfg = EngineConfig(method="jit", threads=threads)
    found = {"convcli": lambda: conv2d(x, k, b, stride=w.stride, padding=pad, groups=w.groups,
                                       config=cfg)}
    notes = []
    try:
        import torch

        torch.set_num_threads(threads)
        tx, tk, tb = torch.from_numpy(x)[None], torch.from_numpy(k), torch.from_numpy(b)

        def run_torch():
            with torch.no_grad():
                return torch.relu(torch.nn.functional.conv2d(
                    tx, tk, tb, stride=w.stride, padding=pad, groups=w.groups))[0].numpy()
        found["torch"] = run_torch
    except ImportError:
        notes.append("PyTorch not installed (pip install torch)")
    try:
        import cv2

        cv2.setNumThreads(threads)
        if w.groups == 1 and w.c * w.f <= 256:
            def run_cv2():
                out = []
                for f in range(k.shape[0]):
                    acc = np.full(x.shape[1:], b[f], np.float32)
                    for c in range(x.shape[0]):
                        acc += cv2.filter2D(x[c], cv2.CV_32F, k[f, c],
                                            borderType=cv2.BORDER_CONSTANT)
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
        work = w.size * w.size * w.f * w.c * w.k * w.k / w.groups
        if work < 3e9 and w.groups == 1 and w.c * w.f <= 256:  # single-threaded and slow
            found["scipy.ndimage"] = run_scipy
        else:
            notes.append("scipy.ndimage skipped on this workload (minutes per call)")
    except ImportError:
        notes.append("SciPy not installed")

    def run_im2col():
        from numpy.lib.stride_tricks import sliding_window_view
        from threadpoolctl import threadpool_limits

        xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        win = sliding_window_view(xp, (w.k, w.k), axis=(1, 2))[:, ::w.stride, ::w.stride]
        c, ho, wo = win.shape[:3]
        cols = np.ascontiguousarray(win.transpose(1, 2, 0, 3, 4)).reshape(ho * wo, -1)
        with threadpool_limits(threads, "blas"):
            out = cols @ k.reshape(k.shape[0], -1).T + b
        return np.maximum(out, 0).T.reshape(k.shape[0], ho, wo)
    if w.groups == 1 and w.size**2 * w.c * w.k**2 * 4 / w.stride**2 < 2e9:
        found["im2col+BLAS"] = run_im2col  # copies the image k*k times
    else:
        notes.append("im2col+BLAS skipped on this workload (grouped, or its copy needs > 2 GB)")
    return found, notes


SLOW_SECONDS = 3.0  # a peer slower than this is timed by its one warm-up call


def interleaved(fns: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each callable, the callables taking turns."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(t) for name, t in times.items()}


# --- peaks ----------------------------------------------------------------------------------

def theoretical_peak(threads: int) -> tuple[float, str]:
    """GFLOP/s from lscpu: threads x clock x FMA units x float32 lanes x 2 (an FMA is two
    operations). Two FMA units per core, as on AMD Zen and Intel's server cores."""
    flags, mhz = set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("CPU max MHz"):
                mhz = max(mhz or 0.0, float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    if mhz is None:
        return float("nan"), "unknown clock"
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma = "fma" in flags or "avx512f" in flags
    per_cycle = 2 * lanes * (2 if fma else 1)
    isa = "AVX-512" if lanes == 16 else "AVX2" if lanes == 8 else "SSE"
    return (threads * mhz / 1000 * per_cycle,
            f"{threads} x {mhz / 1000:.2f} GHz x {per_cycle} flop/cycle ({isa}"
            f"{' + FMA' if fma else ''}, 2 units)")


def measured_peak(threads: int) -> tuple[float, str]:
    """The best float32 GFLOP/s of a 2048^3 matrix product: NumPy's BLAS and PyTorch's."""
    from threadpoolctl import threadpool_info, threadpool_limits

    a = np.random.default_rng(1).random((2048, 2048), dtype=np.float32)
    with threadpool_limits(threads, "blas"):
        t = min(interleaved({"mm": lambda: a @ a}, 5)["mm"] for _ in range(2))
    best, label = 2 * 2048**3 / t / 1e9, "NumPy"
    arch = [lib.get("architecture") for lib in threadpool_info() if lib["user_api"] == "blas"]
    label += f" ({arch[0]} kernel)" if arch and arch[0] else ""
    try:
        import torch

        torch.set_num_threads(threads)
        ta = torch.from_numpy(a)
        t = interleaved({"mm": lambda: ta @ ta}, 5)["mm"]
        if 2 * 2048**3 / t / 1e9 > best:
            best, label = 2 * 2048**3 / t / 1e9, "PyTorch"
    except ImportError:
        pass
    return best, label


# --- extras ---------------------------------------------------------------------------------

def planning_cost(threads: int) -> None:
    """What a new bank costs before its first convolution (the plans that later calls find
    memoised): a call on a small image with new weights against the same call repeated,
    compared with one convolution of the workload."""
    from convcli.engine import EngineConfig, conv2d

    cfg = EngineConfig(method="jit", threads=threads)
    print("planning a new bank (a 32x32 call with new weights minus the same call repeated, "
          "median of 15, against one call of the workload)")
    for w in WORKLOADS:
        if w.name not in ("vgg", "wide", "stem", "pointwise", "depthwise"):
            continue
        x, k, b = make(w)
        pad = (w.k - 1) // 2
        small = np.ascontiguousarray(x[:, :32, :32])

        def run(image, kernels, b=b, w=w, pad=pad):  # bound now: called within this loop
            return conv2d(image, kernels, b, stride=w.stride, padding=pad, groups=w.groups,
                          config=cfg)
        run(x, k)
        full = interleaved({"call": lambda x=x, k=k: run(x, k)}, 5)["call"]
        fresh, again = [], []
        for i in range(15):
            k2 = k + np.float32((i + 1) * 1e-3)
            t = time.perf_counter()
            run(small, k2)
            fresh.append(time.perf_counter() - t)
            t = time.perf_counter()
            run(small, k2)
            again.append(time.perf_counter() - t)
        cost = max(0.0, statistics.median(fresh) - statistics.median(again))
        print(f"   {w.name:10s} planning {cost * 1000:6.2f} ms = {100 * cost / full:5.1f}% of one "
              f"call ({full * 1000:.1f} ms; goal under 10%)")


DEFAULT_CHECK = r"""
import sys, time, numpy as np
from convcli import conv2d
from convcli.engine import EngineConfig
rng = np.random.default_rng(0)
x = rng.random((1, 512, 512), dtype=np.float32)
k = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
times, switched = [], None
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    conv2d(x, k, padding=1)
    times.append(time.perf_counter() - t)
    if switched is None and "convcli.jit" in sys.modules:
        switched = i
best = {}
for method in ("jit", "numpy"):
    cfg = EngineConfig(method=method)
    conv2d(x, k, padding=1, config=cfg)
    runs = []
    for _ in range(30):
        t = time.perf_counter()
        conv2d(x, k, padding=1, config=cfg)
        runs.append(time.perf_counter() - t)
    best[method] = sorted(runs)[len(runs) // 2]
tail = sorted(times[-30:])[15]
print(switched, sum(times), tail, best["jit"], best["numpy"])
"""


def default_check() -> None:
    """A fresh process calling conv2d (8 x 3x3 on 512x512, the library default) 400 times:
    when auto moves to numba, and how its last calls compare with the best executor."""
    out = subprocess.run([sys.executable, "-c", DEFAULT_CHECK, "400"], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        print(f"library default check failed: {out.stderr.strip().splitlines()[-1]}")
        return
    switched, total, tail, jit, lean = out.stdout.split()
    tail, jit, lean = float(tail), float(jit), float(lean)
    print("library default: a fresh process calling conv2d(x, 8 x 3x3, 512x512) 400 times")
    print(f"   auto moved to numba at call {switched}; 400 calls took {float(total):.2f} s")
    print(f"   last 30 calls, median {tail * 1000:.2f} ms; jit {jit * 1000:.2f} ms, numpy "
          f"{lean * 1000:.2f} ms: auto at {tail / min(jit, lean):.2f}x the best (goal: within "
          "1.10x)")


# --- main -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--only", default="")
    ap.add_argument("--no-extras", action="store_true", help="skip planning and default checks")
    args = ap.parse_args()

    thread_counts = [int(t) for t in args.threads.split(",")]
    only = [n for n in args.only.split(",") if n]
    chosen = ([w for w in WORKLOADS if w.name in only] if only
              else [w for w in WORKLOADS if not w.extra])
    print(f"machine: {machine()}")
    try:
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    except OSError:
        pass
    ratios: dict[tuple[str, str, int], float] = {}
    for threads in thread_counts:
        peak, how = measured_peak(threads)
        theory, why = theoretical_peak(threads)
        print(f"\n=== {threads} thread(s) for every peer ===")
        print(f"float32 peak: measured {peak:.1f} GFLOP/s ({how} 2048^3 matrix product); "
              f"theoretical {theory:.1f} GFLOP/s ({why})\n")
        for w in chosen:
            x, k, b = make(w)
            ref = reference(w, x, k, b)
            found, notes = peers(w, x, k, b, threads)
            print(f"{w.name}: {w.c}x{w.size}x{w.size}, {w.f} x {w.c // w.groups}x{w.k}x{w.k}, "
                  f"stride {w.stride}{f', groups {w.groups}' if w.groups > 1 else ''} "
                  f"({gflop(w, ref.shape):.2f} GFLOP per call)")
            good, slow = {}, {}
            for name, fn in found.items():
                t = time.perf_counter()
                got = fn()  # also the warm-up: compiles, plans, allocates
                t = time.perf_counter() - t
                err = float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max()))
                if got.shape != ref.shape or err > 1e-4:
                    print(f"   {name:16s} WRONG: shape {got.shape}, relative error {err:.2e}")
                    continue
                if t > SLOW_SECONDS and name != "convcli":
                    slow[name] = t  # timed once: repeating would take minutes
                    notes.append(f"{name}: one run, over {SLOW_SECONDS} s")
                else:
                    good[name] = fn
            times = {**interleaved(good, args.repeat), **slow}
            base = times.get("convcli")
            for name, t in times.items():
                gf = gflop(w, ref.shape) / t
                ratio = "" if name == "convcli" or base is None else f"  {t / base:6.2f}x"
                print(f"   {name:16s} {t * 1000:9.2f} ms  {gf:7.2f} GFLOP/s "
                      f"({100 * gf / peak:4.0f}% of measured, {100 * gf / theory:4.0f}% of "
                      f"theoretical peak){ratio}")
                if base is not None:
                    ratios[(w.name, name, threads)] = t / base
            for note in notes:
                print(f"   ({note})")
            print()
    print("goals (peer time / convcli time; thread counts as run):")
    for name, peer, goal, counts in GOALS:
        for threads in thread_counts:
            if counts is not None and threads not in counts:
                continue
            r = ratios.get((name, peer, threads))
            if r is None:
                continue
            what = f">= {goal:.1f}x {peer}" if goal >= 1 else f"within {1 / goal:.1f}x of {peer}"
            print(f"   {name:10s} {threads} thread(s): {r:5.2f}x  (goal {what}: "
                  f"{'met' if r >= goal else 'NOT met'})")
    if not args.no_extras:
        print()
        planning_cost(thread_counts[-1])
        print()
        default_check()
    try:
        print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
