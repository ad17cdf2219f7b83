"""Batch benchmark: convcli against a hand-written imageio + OpenCV loop and ImageMagick.

Same run, same 50 RGB 512x512 photos (crops of the shipped samples), whole-process wall
seconds, medians of --repeat runs:

  A. the edge bank, one PNG per filter (no stack, min-max scaling as the loop's):
     convcli apply DIR --bank edge --no-stack --scale minmax
       vs  a Python loop on as many processes as convcli uses: imageio.imread, cv2.cvtColor,
     cv2.filter2D per filter (same kernels, same border, ReLU, min-max to 8 bits), cv2.imwrite
       vs  the floor for that work: the same processes decoding the inputs with convcli's
     decoder and encoding and writing the same PNG pixels with convcli's encoder and level
     (the maps' pixels are read from convcli's own output before the clock starts; the
     floor's time is that work plus a bare interpreter's start-up with NumPy)
  B. one Sobel filter:
     convcli apply DIR -f sobel_x --no-stack
       vs  mogrify -colorspace gray -morphology Convolve Sobel

Before that it shows where convcli's time goes for one image, and what each PNG encoder setting
costs, so the default is chosen on numbers. A peer that is not installed is skipped with a note.

    python benchmarks/batch.py [--images 50] [--repeat 3] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def make_photos(folder: Path, n: int, size: int = 512) -> list[Path]:
    """n RGB size x size photos: random crops (and flips) of the shipped samples, upscaled
    where a sample is smaller. Deterministic."""
    from PIL import Image

    rng = np.random.default_rng(2026)
    sources = sorted(SAMPLES.glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            im = im.convert("RGB")
            scale = max(1.0, size / min(im.size)) * rng.uniform(1.0, 1.4)
            im = im.resize((int(im.width * scale) + 1, int(im.height * scale) + 1))
            x = rng.integers(0, im.width - size + 1)
            y = rng.integers(0, im.height - size + 1)
            im = im.crop((x, y, x + size, y + size))
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            path = folder / f"photo{i:03d}.png"
            im.save(path)
            paths.append(path)
    return paths


# --- the peer: a hand-written loop ----------------------------------------------------------

def peer_loop(src: Path, out: Path, jobs: int) -> None:
    """What a user would write by hand with imageio and OpenCV for the edge bank, on
    ``jobs`` processes (each with one OpenCV thread, as one would on a process pool)."""
    import multiprocessing

    paths = sorted(src.glob("*.png"))
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        pool.starmap(_peer_part, [(paths[k::jobs], out) for k in range(jobs)])


def _peer_part(paths: list[Path], out: Path) -> None:
    import cv2
    import imageio.v3 as iio

    from convcli import bank

    cv2.setNumThreads(1)
    kernels = [(f.name, f.weights[0]) for f in bank.load("edge").filters]
    for path in paths:
        rgb = iio.imread(path)
        gray = cv2.cvtColor(rgb.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2GRAY)
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        for name, k in kernels:
            # anchor at ((k-1)//2): the same split of 'same' padding as convcli (and TensorFlow)
            anchor = ((k.shape[1] - 1) // 2, (k.shape[0] - 1) // 2)
            m = cv2.filter2D(gray, cv2.CV_32F, k, anchor=anchor, borderType=cv2.BORDER_REPLICATE)
            np.maximum(m, 0, out=m)
            lo, hi = float(m.min()), float(m.max())
            px = np.zeros(m.shape, np.uint8) if hi <= lo else \
                np.rint((m - lo) * (255.0 / (hi - lo))).astype(np.uint8)
            cv2.imwrite(str(folder / f"{name}.png"), px)


# --- the floor: decoding the inputs, encoding and writing the same PNGs ----------------------

def floor_loop(src: Path, made: Path, out: Path, jobs: int, level: int) -> None:
    """Decode every input with convcli's reader and encode and write the pixels of the
    maps convcli made for it (read beforehand, with their text chunks) with convcli's PNG
    encoder at its level, on ``jobs`` forked processes; prints the seconds that work took."""
    import multiprocessing

    from PIL import Image

    work = []
    for path in sorted(src.glob("*.png")):
        maps = []
        for png in sorted((made / path.stem).glob("*.png")):
            with Image.open(png) as im:
                maps.append((png.name, np.asarray(im), dict(im.text)))
        work.append((path, path.stem, maps))
    _FLOOR_WORK[:] = work  # forked workers see it: nothing is pickled to them
    t = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        pool.starmap(_floor_part, [(k, jobs, out, level) for k in range(jobs)])
    print(f"{time.perf_counter() - t:.6f}")


_FLOOR_WORK: list = []


def _floor_part(first: int, step: int, out: Path, level: int) -> None:
    from convcli import images

    for path, stem, maps in _FLOOR_WORK[first::step]:
        images.read_image(path)
        folder = out / stem
        folder.mkdir(parents=True, exist_ok=True)
        for name, pixels, text in maps:
            images.write_atomic(folder / name, images.encode_png(pixels, text, level))


def floor_seconds(src: Path, made: Path, out: Path, jobs: int, repeat: int) -> float:
    """The floor's work time (median) plus a bare interpreter's start with NumPy (median)."""
    from convcli import pipeline

    level = pipeline.Options.__dataclass_fields__["compression"].default  # convcli's default
    works, starts = [], []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        p = subprocess.run([sys.executable, __file__, "--floor-loop", str(src), str(made),
                            str(out), str(jobs), str(level)], capture_output=True, check=True)
        works.append(float(p.stdout.decode().split()[-1]))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import numpy"], check=True)
        starts.append(time.perf_counter() - t)
    return statistics.median(works) + statistics.median(starts)


# --- measuring ------------------------------------------------------------------------------

def wall(cmd: list[str], repeat: int, out: Path, make_out: bool = False) -> float | None:
    """Median whole-process seconds; the output folder is emptied before each run."""
    times = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        if make_out:  # mogrify -path wants the folder to exist
            out.mkdir(parents=True)
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            print(f"    failed: {' '.join(cmd)}\n    {p.stderr.decode()[-400:]}")
            return None
    return statistics.median(times)


def interleaved(runs: dict[str, tuple[list[str], Path, bool]], repeat: int
                ) -> dict[str, float | None]:
    """Median whole-process seconds of each (command, output folder, make the folder first),
    the commands taking turns (a, b, c, a, b, c, ...) so that a slow spell of a shared
    machine hits them all alike. None for a command that failed."""
    times: dict[str, list[float] | None] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, (cmd, out, make_out) in runs.items():
            if times[name] is not None:
                t = wall(cmd, 1, out, make_out)
                times[name] = None if t is None else times[name] + [t]
    return {name: statistics.median(t) if t else None for name, t in times.items()}


def stage_breakdown(photo: Path) -> None:
    """Where one image's time goes inside convcli (one thread, in process)."""
    from convcli import bank, engine, images, pipeline, render

    engine.set_threads(1)
    engine.plan(method="jit")  # what a 50-image batch uses
    edge = bank.load("edge")
    stages = {"read": [], "convolve": [], "render": [], "encode": []}
    for _ in range(7):
        t0 = time.perf_counter()
        img = images.read_image(photo)
        t1 = time.perf_counter()
        maps = pipeline.compute_maps(img.pixels, edge)
        t2 = time.perf_counter()
        pix = [render.to_pixels(m.data, "minmax", 8).pixels for m in maps]
        t3 = time.perf_counter()
        for p in pix:
            images.encode_png(p, level=1)
        t4 = time.perf_counter()
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[k].append(v)
    med = {k: statistics.median(v[1:]) for k, v in stages.items()}
    total = sum(med.values())
    print(f"\n1. Where the time goes: one 512x512 photo, edge bank ({len(edge.filters)} maps), "
          "one thread, median of 6")
    for k, v in med.items():
        print(f"   {k:9s} {v * 1000:7.1f} ms  {100 * v / total:4.0f}%")

    print("\n2. PNG encoders on those maps (same Up-filtered bytes)")
    raw = []
    for p in pix:
        f = np.empty((p.shape[0], p.shape[1] + 1), np.uint8)
        f[:, 0] = 2
        f[0, 1:] = p[0]
        np.subtract(p[1:], p[:-1], out=f[1:, 1:])
        raw.append(f.tobytes())
    rows = [("zlib", lvl, lambda d, l=lvl: zlib.compress(d, l)) for lvl in (1, 3, 6, 9)]
    try:
        from isal import isal_zlib
        rows[1:1] = [("ISA-L", lvl, lambda d, l=lvl: isal_zlib.compress(d, l)) for lvl in (1, 2, 3)]
    except ImportError:
        print("   (isal not installed: ISA-L rows skipped)")
    for name, lvl, fn in rows:
        t = time.perf_counter()
        size = sum(len(fn(d)) for d in raw)
        dt = time.perf_counter() - t
        print(f"   {name:6s} level {lvl}: {dt * 1000:7.1f} ms for {len(raw)} maps, "
              f"{size / 2**20:5.2f} MiB")
    try:
        import cv2
        t = time.perf_counter()
        size = sum(len(cv2.imencode(".png", p)[1]) for p in pix)
        print(f"   OpenCV imencode (default, level 1): {(time.perf_counter() - t) * 1000:7.1f} ms, "
              f"{size / 2**20:5.2f} MiB")
    except ImportError:
        pass


def _compare_outputs(mine: Path, theirs: Path) -> None:
    """The two edge runs must agree: every map of every photo within one grey level."""
    from PIL import Image

    if not theirs.exists():
        return
    worst, n = 0, 0
    for path in sorted(theirs.rglob("*.png")):
        with Image.open(path) as a, Image.open(mine / path.relative_to(theirs)) as b:
            diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        worst, n = max(worst, int(diff.max())), n + 1
    print(f"   check: {n} maps of the loop and of convcli differ by at most {worst} grey level(s)")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {n} cores, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--peer-loop", nargs=3, metavar=("SRC", "OUT", "JOBS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--floor-loop", nargs=5, metavar=("SRC", "MADE", "OUT", "JOBS", "LEVEL"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_loop:
        peer_loop(Path(args.peer_loop[0]), Path(args.peer_loop[1]), int(args.peer_loop[2]))
        return
    if args.floor_loop:
        src, made, out, jobs, level = args.floor_loop
        floor_loop(Path(src), Path(made), Path(out), int(jobs), int(level))
        return
    from convcli.batch import cpu_count

    jobs = args.jobs or cpu_count()  # convcli's default: one process per core

    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="convcli-bench-"))
    try:
        photos = make_photos(work / "photos", args.images)
        print(f"data: {len(photos)} RGB 512x512 PNG photos (crops of samples/)")
        stage_breakdown(photos[0])
        # min-max scaling, as the peer loop does (the default auto is a percentile stretch):
        # the same pixels, so the same work, and _compare_outputs can check them.
        convcli = [sys.executable, "-m", "convcli", "apply", str(work / "photos"), "--no-stack",
                   "--scale", "minmax", "-q", "-j", str(jobs)]
        subprocess.run(convcli + ["-o", str(work / "warm")], check=True)  # compile once
        print(f"\n3. Whole process, {len(photos)} photos, median of {args.repeat} runs, "
              f"interleaved, {jobs} processes each; load average before: "
              f"{os.getloadavg()[0]:.1f}")
        runs = {"convcli edge": (convcli + ["--bank", "edge", "-o", str(work / "o")],
                                 work / "o", False)}
        try:
            import cv2  # noqa: F401
            runs["loop edge"] = ([sys.executable, __file__, "--peer-loop", str(work / "photos"),
                                  str(work / "p"), str(jobs)], work / "p", False)
        except ImportError:
            print("   imageio + OpenCV loop skipped: opencv-python-headless is not installed")
        runs["convcli sobel"] = (convcli + ["-f", "sobel_x", "-o", str(work / "s")], work / "s",
                                 False)
        mogrify = shutil.which("mogrify")
        if mogrify:
            runs["mogrify sobel"] = ([mogrify, "-path", str(work / "m"), "-colorspace", "gray",
                                      "-morphology", "Convolve", "Sobel", *map(str, photos)],
                                     work / "m", True)
        else:
            print("   ImageMagick mogrify skipped: not installed (apt-get install imagemagick)")
        results = interleaved(runs, args.repeat)
        _compare_outputs(work / "o", work / "p")
        results["floor edge"] = floor_seconds(work / "photos", work / "o", work / "f", jobs,
                                              args.repeat)
        print(f"   load average after: {os.getloadavg()[0]:.1f}")
        for name, t in results.items():
            if t is not None:
                print(f"   {name:14s} {t:7.2f} s  {len(photos) / t:6.1f} images/s")
        print("\n4. Ratios (peer time / convcli time; > 1 means convcli is faster)")
        for peer, mine, goal in (("loop edge", "convcli edge", 1.5),
                                 ("mogrify sobel", "convcli sobel", 3.0)):
            if results.get(peer) and results.get(mine):
                ratio = results[peer] / results[mine]
                print(f"   {peer} / {mine}: {ratio:5.2f}x  (goal {goal}x: "
                      f"{'met' if ratio >= goal else 'NOT met'})")
        if results.get("convcli edge") and results.get("floor edge"):
            over = results["convcli edge"] / results["floor edge"]
            print(f"   convcli edge / floor edge: {over:5.2f}x  (goal: within 1.5x: "
                  f"{'met' if over <= 1.5 else 'NOT met'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
