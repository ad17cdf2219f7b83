"""Overhead of the Dask path: the same batch through the local pool and through a
LocalCluster on this machine, same run (interleaved), whole-process seconds, medians.

    pip install -e ".[dask,bench]"
    python benchmarks/cluster.py [--images 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import interleaved, machine, make_photos  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SystemExit("Dask is not installed: pip install -e '.[dask]'") from None
    work = Path(tempfile.mkdtemp(prefix="convcli-cluster-"))
    try:
        make_photos(work / "photos", args.images)
        base = [sys.executable, "-m", "convcli", "apply", str(work / "photos"), "--bank", "edge",
                "--no-stack", "-q"]
        print(f"machine: {machine()}")
        print(f"{args.images} RGB 512x512 photos, edge bank, one PNG per filter; median of "
              f"{args.repeat} runs")
        times = interleaved({"pool": (base + ["-o", str(work / "a")], work / "a", False),
                             "dask": (base + ["-o", str(work / "b"), "--scheduler", "local"],
                                      work / "b", False)}, args.repeat)
        if None in times.values():
            raise SystemExit("a run failed (see above)")
        pool, dask = times["pool"], times["dask"]
        print(f"   local pool       {pool:7.2f} s  {args.images / pool:6.1f} images/s")
        print(f"   Dask LocalCluster {dask:6.2f} s  {args.images / dask:6.1f} images/s")
        print(f"   overhead: {100 * (dask / pool - 1):+.0f}% (goal: under 15%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
