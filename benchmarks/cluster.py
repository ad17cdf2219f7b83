"""Overhead of the Dask path: the same batch through the local pool, a LocalCluster
(--scheduler local) and a real `dask scheduler` with `dask worker` processes on this
machine, same photos, runs taking turns (interleaved), whole-process seconds, medians.

The real cluster is started once, as a real one is (long-lived workers: one per core, one
thread each, like the local pool); each run is one `convcli apply --scheduler ADDRESS`.

    pip install -e ".[dask,bench]"
    python benchmarks/cluster.py [--images 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import interleaved, machine, make_photos  # noqa: E402


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def start_cluster(work: Path, workers: int) -> tuple[list[subprocess.Popen], str]:
    """A scheduler on a free loopback port and ``workers`` one-thread worker processes."""
    log = work / "scheduler.log"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", ":0"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    procs = [scheduler]
    deadline = time.time() + 120
    while time.time() < deadline:
        found = re.search(r"Scheduler at:\s+(tcp://\S+)", log.read_text())
        if found:
            address = found.group(1)
            break
        time.sleep(0.1)
    else:
        stop(procs)
        raise SystemExit("the scheduler did not start")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers",
         str(workers), "--nthreads", "1", "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(workers, timeout=120)
    return procs, address


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(p.pid, signal.SIGKILL)


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
    procs: list[subprocess.Popen] = []
    try:
        make_photos(work / "photos", args.images)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
        procs, address = start_cluster(work, cores)
        base = [sys.executable, "-m", "convcli", "apply", str(work / "photos"), "--bank", "edge",
                "--no-stack", "-q"]
        print(f"machine: {machine()}")
        print(f"load before: {load()}")
        print(f"{args.images} RGB 512x512 photos, edge bank, one PNG per filter; median of "
              f"{args.repeat} runs; {cores} workers of one thread each")
        runs = {"pool": (base + ["-o", str(work / "a")], work / "a", False),
                "local": (base + ["-o", str(work / "b"), "--scheduler", "local"],
                          work / "b", False),
                "real": (base + ["-o", str(work / "c"), "--scheduler", address],
                         work / "c", False)}
        # One unmeasured run each: the JIT cache and the real workers' set-up are warm for
        # every measured run alike.
        interleaved(runs, 1)
        times = interleaved(runs, args.repeat)
        print(f"load after: {load()}")
        if None in times.values():
            raise SystemExit("a run failed (see above)")
        pool = times["pool"]
        assert pool is not None
        names = {"pool": "local pool", "local": "--scheduler local",
                 "real": "dask scheduler + workers"}
        for key, label in names.items():
            t = times[key]
            assert t is not None
            ratio = "" if key == "pool" else \
                f"  {t / pool:.2f}x the pool ({100 * (t / pool - 1):+.0f}%)"
            print(f"   {label:26s} {t:7.2f} s  {args.images / t:6.1f} images/s{ratio}")
        print("   goal: the real cluster within 15% of the local pool")
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
