"""Feature maps as inputs: what an input tensor is, whether it came from an image or an array.

An input is a float32 array (C, H, W) with a name for each channel. Images (convcli.images)
give C = 1 or 3 with values in [0, 1] (names "gray" or "red", "green", "blue"); arrays
(``.npy``, float or integer, (C, H, W) or (H, W)) give any C, with their values used as they
are (no rescaling). convcli's own ``maps.npy`` is such an array, and the ``maps.json``
beside it names its channels (its filters), so one run's output is the next run's input, by
file or through a pipe (on stdin the two kinds are told apart by their first bytes). TIFFs
of feature maps (convcli's own ``maps.tif``, whose description names the filters, or any
gray TIFF with several samples per pixel and no alpha) are read the same way.
"""

from __future__ import annotations

import ast
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images
from .errors import InputError, printable

NPY_MAGIC = b"\x93NUMPY"
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF
ARRAY_SUFFIXES = (".npy",)
MAX_CHANNELS = 4096  # what real networks use; the bank's dense layers allow as many


@dataclass
class Tensor:
    """One input: float32 (C, H, W), a name per channel, and whether it is an image (values
    in [0, 1], fitted to gray and rgb banks) or a feature map (used as it is)."""

    data: np.ndarray
    names: list[str]
    image: bool
    notes: list[str] = field(default_factory=list)


def read_input(source: Path | bytes, label: str, max_pixels: int,
               max_bytes: int | None = None) -> Tensor:
    """Read an image or an array (by its first bytes) as a Tensor; InputError naming
    ``label`` on any failure. An array or feature-map TIFF whose float32 tensor would
    take more than ``max_bytes`` is refused from its header, before its data is read."""
    head = source[:8] if isinstance(source, bytes) else _head(source, label)
    if head.startswith(NPY_MAGIC):
        return _read_array(source, label, max_pixels, max_bytes)
    if head[:4] in TIFF_MAGIC:
        planes = images.read_tiff_planes(source, label, max_pixels, MAX_CHANNELS, max_bytes)
        if planes is not None:
            return _feature_map(planes.data, planes.names, label, planes.notes)
    img = images.read_image(source, label=label, max_pixels=max_pixels)
    names = ["gray"] if img.pixels.shape[0] == 1 else ["red", "green", "blue"]
    return Tensor(img.pixels, names, True, list(img.notes))


def _head(path: Path, label: str) -> bytes:
    try:
        if not path.is_file():  # a FIFO must not be opened (it would block): images says so
            return b""
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError:
        return b""  # the image reader says what is wrong, in its words


def _read_array(source: Path | bytes, label: str, max_pixels: int,
                max_bytes: int | None) -> Tensor:
    """A .npy array: its header is checked (shape, type, size) before any data is read,
    and pickled objects are never loaded."""
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as e:
        raise InputError(f"{label}: cannot open: {e.strerror}") from None
    with fh:
        try:
            version = np.lib.format.read_magic(fh)
            shape, fortran, dtype = _header(fh, version)
        except (ValueError, SyntaxError, EOFError, OSError) as e:
            raise InputError(f"{label}: not a readable .npy array ({_one_line(e)})") from None
        if len(shape) not in (2, 3) or 0 in shape:
            raise InputError(f"{label}: an array of shape {shape}; convcli reads (C, H, W) or "
                             "(H, W) arrays")
        if dtype.kind not in "fiub" or dtype.hasobject:
            raise InputError(f"{label}: an array of {dtype}; convcli reads float, integer or "
                             "boolean arrays")
        c, h, w = (1, *shape) if len(shape) == 2 else shape
        if h * w > max_pixels:
            raise InputError(f"{label}: {w}x{h} array has {h * w:,} pixels, over the limit of "
                             f"{max_pixels:,}", settings=("max_pixels",))
        if c > MAX_CHANNELS:
            raise InputError(f"{label}: an array of {c} channels; at most {MAX_CHANNELS} are "
                             "supported")
        images.check_tensor_bytes(c, h, w, max_bytes, label)
        count = int(np.prod(shape))
        raw = fh.read(count * dtype.itemsize)
        if len(raw) < count * dtype.itemsize:
            raise InputError(f"{label}: truncated .npy array (its data ends early)")
    arr = np.frombuffer(raw, dtype=dtype, count=count)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    with np.errstate(all="ignore"):
        data = np.ascontiguousarray(arr, dtype=np.float32).reshape(c, h, w)
    return _feature_map(data, _names_beside(source, c), label, [])


def _feature_map(data: np.ndarray, names: list[str] | None, label: str,
                 notes: list[str]) -> Tensor:
    if not np.isfinite(data).all():
        notes.append(f"{printable(label)}: holds values that are not finite (or too large "
                     "for float32)")
    return Tensor(data, names or [f"c{k}" for k in range(len(data))], False, notes)


def _header(fh, version) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The array header, parsed as a literal (never evaluated) and checked."""
    if version == (1, 0):
        length = int.from_bytes(fh.read(2), "little")
    elif version in ((2, 0), (3, 0)):
        length = int.from_bytes(fh.read(4), "little")
    else:
        raise ValueError(f"unknown .npy version {version}")
    if length > 1 << 16:
        raise ValueError("header too long")
    text = fh.read(length).decode("latin-1")
    header = ast.literal_eval(text)
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError("malformed header")
    shape = header["shape"]
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ValueError(f"malformed shape {shape!r}")
    dtype = np.dtype(np.lib.format.descr_to_dtype(header["descr"]))
    return shape, bool(header["fortran_order"]), dtype


def _names_beside(source: Path | bytes, channels: int) -> list[str] | None:
    """The channel names convcli wrote beside its own maps.npy (maps.json's filters)."""
    if isinstance(source, bytes) or source.name != "maps.npy":
        return None
    try:
        beside = Path(source).with_name("maps.json")
        if not beside.is_file():  # a FIFO would block the open
            return None
        with open(beside, "rb") as fh:  # a bounded read
            meta = json.loads(fh.read(1 << 20))
        names = [str(n) for n in meta["filters"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return names if len(names) == channels else None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
