"""Start-up benchmark: whole-process times of the light commands and of the shell-loop case.

In the same run, median of --repeat runs each, the commands taking turns (so a busy spell of
a shared machine hits all alike), warm disk and JIT caches:
  convcli --help
  convcli banks
  convcli apply photo.png (a one-filter Sobel bank, one PNG)   vs
  convert photo.png -colorspace gray -morphology Convolve Sobel out.png   (ImageMagick)

    python benchmarks/startup.py [--repeat 15] [--photo samples/astronaut.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOBEL_BANK = "name: sobel\nfilters:\n  - name: sobel_x\n    generator: {type: sobel, axis: x}\n"


def interleaved_ms(rows: dict[str, list[str]], repeat: int, env: dict[str, str]
                   ) -> dict[str, float]:
    """Median milliseconds of each command, the commands taking turns."""
    for cmd in rows.values():
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)  # warm the caches
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeat):
        for name, cmd in rows.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
            times[name].append(time.perf_counter() - t)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def imagemagick() -> str | None:
    """The first ``convert`` on PATH that is ImageMagick's (its -version starts "Version:
    ImageMagick"), the program itself before a script that hands over to it."""
    found = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which("convert", path=folder)
        if not path:
            continue
        try:
            out = subprocess.run([path, "-version"], capture_output=True, text=True,
                                 timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out.startswith("Version: ImageMagick"):
            with open(path, "rb") as f:
                script = f.read(2) == b"#!"
            found.append((script, path))
    return min(found)[1] if found else None


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--photo", default=str(ROOT / "samples" / "astronaut.png"))
    args = ap.parse_args()
    convcli = shutil.which("convcli") or sys.exit("convcli is not on PATH (pip install -e .)")
    work = Path(tempfile.mkdtemp(prefix="convcli-startup-"))
    try:
        bank = work / "sobel.yaml"
        bank.write_text(SOBEL_BANK)
        print(f"machine: {machine()}")
        print(f"load average before: {load()}")
        rows = {
            "convcli --help": [convcli, "--help"],
            "convcli banks": [convcli, "banks"],
            "convcli apply (1 filter)": [convcli, "apply", args.photo, "-b", str(bank), "-o",
                                         str(work / "out"), "-q"],
        }
        convert = imagemagick()
        if convert:
            print(f"ImageMagick: {convert}")
            rows["ImageMagick convert"] = [convert, args.photo, "-colorspace", "gray",
                                           "-morphology", "Convolve", "Sobel", str(work / "im.png")]
        else:
            print("ImageMagick's convert is missing (apt-get install imagemagick): the goal "
                  "(apply within 3x of convert) is not measured")
        # Python's bytecode cache as an installed package has it (pip compiles on install):
        # PYTHONDONTWRITEBYTECODE, if set, would make every run compile convcli's modules
        # again. The cache goes to the temporary folder, not into the package.
        env = dict(os.environ, PYTHONPYCACHEPREFIX=str(work / "pycache"))
        if env.pop("PYTHONDONTWRITEBYTECODE", None):
            print("(PYTHONDONTWRITEBYTECODE is set here; the runs keep a bytecode cache "
                  "anyway, as an installed package has)")
        times = interleaved_ms(rows, args.repeat, env)
        for name, ms in times.items():
            print(f"   {name:26s} {ms:7.0f} ms")
        if "ImageMagick convert" in times:
            ratio = times["convcli apply (1 filter)"] / times["ImageMagick convert"]
            print(f"   convcli apply / convert: {ratio:.2f}x (goal: within 3x: "
                  f"{'met' if ratio <= 3 else 'NOT met'})")
        print(f"load average after: {load()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
