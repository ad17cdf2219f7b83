"""Where numba's on-disk cache of compiled kernels lives (no numba import here).

The cache must never be written into the installed package, which may be read-only. It goes
to a per-user cache folder: $CONVCLI_CACHE_DIR if set, else $XDG_CACHE_HOME/convcli/numba,
~/Library/Caches/convcli/numba on macOS, %LOCALAPPDATA%\\convcli\\numba on Windows. If no such
folder can be written, compiled kernels are simply not cached.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("CONVCLI_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "convcli" / "numba"


def usable_cache_dir() -> tuple[Path | None, str]:
    """The cache folder if it can be created and written, with a line saying why not."""
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        reason = getattr(e, "strerror", None) or str(e)
        return None, (f"JIT cache folder {path} is not writable ({reason}); kernels are compiled "
                      "in memory on every run (set CONVCLI_CACHE_DIR to a writable folder)")
    return path, f"JIT cache: {path}"


NUMBA_SUFFIXES = (".nbi", ".nbc")  # numba's index and compiled-code files


def cache_files() -> list[Path]:
    """numba's files in the cache folder (none if it does not exist)."""
    root = cache_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in NUMBA_SUFFIXES)


def clear() -> tuple[int, int]:
    """Delete numba's files from the cache folder; returns (files, bytes) removed. Only files
    with numba's suffixes are touched, whatever else the folder holds."""
    files = removed_bytes = 0
    for path in cache_files():
        size = path.stat().st_size
        try:
            path.unlink()
        except FileNotFoundError:  # another process got there first
            continue
        files, removed_bytes = files + 1, removed_bytes + size
    return files, removed_bytes


def drop_kernel_files(folder: str | Path, filename_base: str) -> int:
    """Delete one kernel's cache files (numba names them <filename_base>.nbi for the index
    and <filename_base>.<n>.nbc for the code) and nothing else; returns how many."""
    import glob

    folder = Path(folder)
    found = [folder / f"{filename_base}.nbi", *folder.glob(f"{glob.escape(filename_base)}.*.nbc")]
    removed = 0
    for path in found:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:  # absent, or another process got there first
            pass
    return removed
