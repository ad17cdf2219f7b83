"""Killing a worker process while it is provably inside an input, for the retry tests, and
finding a process's descendants (its workers)."""

import os
import signal
import time
from pathlib import Path
from typing import Callable

from convcli import pipeline


def kill_a_worker_inside_an_input(out: Path, proc, is_worker: Callable[[int], bool],
                                  timeout: float = 120) -> int | None:
    """SIGKILL the first worker seen with a staging folder in ``out`` (named with its
    process id: it is between starting an input and moving its files into place);
    returns its pid, or None if none was seen before ``proc`` ended or time ran out."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for entry in (out.iterdir() if out.exists() else []):
            pid = pipeline.staging_pid(entry.name)
            if pid is not None and is_worker(pid):
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.005)
    return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
