"""Comparing output folders and files, for the tests of other storages."""

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder``, by its path relative to it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def same_output(a: bytes, b: bytes) -> bool:
    """Two output PNGs hold the same pixels and metadata, but for the input's name (a URL
    in one, a path in the other)."""
    with Image.open(io.BytesIO(a)) as x, Image.open(io.BytesIO(b)) as y:
        meta = [json.loads(im.text["convcli"]) for im in (x, y)]
        for m in meta:
            m.pop("input")
        assert meta[0] == meta[1]
        return np.array_equal(np.asarray(x), np.asarray(y))
