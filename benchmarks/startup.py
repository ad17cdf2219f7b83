"""Start-up benchmark: whole-process times of the light commands and of the shell-loop case.

In the same run, median of --repeat runs each, warm JIT cache:
  convcli --help
  convcli banks
  convcli apply photo.png (a one-filter Sobel bank, one PNG)   vs
  convert photo.png -colorspace gray -morphology Convolve Sobel out.png   (ImageMagick)

    python benchmarks/startup.py [--repeat 15] [--photo samples/astronaut.png]
"""

from __future__ import annotations

import argparse
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


def median_ms(cmd: list[str], repeat: int) -> float:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # warm the disk cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


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
        rows = {
            "convcli --help": [convcli, "--help"],
            "convcli banks": [convcli, "banks"],
            "convcli apply (1 filter)": [convcli, "apply", args.photo, "-b", str(bank), "-o",
                                         str(work / "out"), "-q"],
        }
        convert = shutil.which("convert")
        if convert and "ImageMagick" in subprocess.run([convert, "-version"], capture_output=True,
                                                       text=True).stdout:
            rows["ImageMagick convert"] = [convert, args.photo, "-colorspace", "gray",
                                           "-morphology", "Convolve", "Sobel", str(work / "im.png")]
        else:
            print("(ImageMagick's convert not installed: apt-get install imagemagick)")
        times = {name: median_ms(cmd, args.repeat) for name, cmd in rows.items()}
        for name, ms in times.items():
            print(f"   {name:26s} {ms:7.0f} ms")
        if "ImageMagick convert" in times:
            ratio = times["convcli apply (1 filter)"] / times["ImageMagick convert"]
            print(f"   convcli apply / convert: {ratio:.2f}x (goal: within 3x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
