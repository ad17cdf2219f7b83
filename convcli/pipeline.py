"""Read -> engine -> render -> write for one input, giving one Result. Never prints.

Layout of the outputs of one input (REL = its output folder, see convcli.inputs):

  OUT/REL/<filter>.png   one map per filter (name made safe, unique)
  OUT/REL/stack.png      all maps tiled, each under its name (with two or more filters,
                         unless Options.stack is off)
  OUT/REL/maps.npy       with --format npy: float32 (F, H', W') (depthwise: (F, C, H', W'))
  OUT/REL/maps.json      with --format npy: filter names, bank and settings
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, images, render
from .bank import KernelBank
from .errors import ConvcliError, InputError, OutputError, UsageError
from .inputs import Source

STDOUT = "-"
RESERVED_NAMES = ("stack", "maps")  # names of the per-input files that are not filter maps


@dataclass(frozen=True)
class Options:
    out: str  # an output folder, or "-" for one result on stdout
    format: str = "png"  # png | npy
    bits: int = 8
    compression: int = 1  # zlib level for PNGs: 1 is ~4x faster than 6 for ~10% more bytes
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    stack: bool = True  # write OUT/REL/stack.png
    resume: bool = False  # skip inputs whose outputs are all present


@dataclass
class FeatureMap:
    name: str
    data: np.ndarray  # float32 (H', W'), or (C, H', W') for depthwise banks
    scale: str


@dataclass
class Result:
    input: str
    status: str = "ok"  # ok | error | skipped (--resume found its outputs)
    outputs: list[str] = field(default_factory=list)
    shape: tuple[int, ...] | None = None  # of all maps stacked, e.g. (F, H', W')
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0
    notes: list[str] = field(default_factory=list)
    payload: bytes | None = None  # the data for stdout when Options.out == "-"


def check_options(options: Options) -> None:
    """Refuse combinations that cannot work before any input is read."""
    if options.format not in ("png", "npy"):
        raise UsageError(f"--format must be png or npy, got {options.format!r}")
    if options.bits not in (8, 16):
        raise UsageError(f"--bits must be 8 or 16, got {options.bits}")
    if not 0 <= options.compression <= 9:
        raise UsageError(f"--compression must be 0-9, got {options.compression}")


def work_per_image(bank: KernelBank, height: int, width: int, channels: int = 3) -> float:
    """About how many multiply-adds one image of this size costs (for choosing a path)."""
    groups = channels if bank.input == "depthwise" else 1
    return float(sum(np.count_nonzero(f.weights) * groups * height * width
                     / (f.geometry.stride[0] * f.geometry.stride[1]) for f in bank.filters))


def compute_maps(pixels: np.ndarray, bank: KernelBank) -> list[FeatureMap]:
    """Run every filter of the bank over one image (C, H, W). Filters that share geometry
    and kernel shape go through the engine in one pass."""
    from . import engine

    x = images.as_channels(pixels, bank.input)
    if bank.input != "depthwise" and x.shape[0] != bank.channels:
        raise InputError(f"the image has {x.shape[0]} channels but bank {bank.name!r} "
                         f"needs {bank.channels}")
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(bank.filters):
        groups.setdefault((f.geometry, f.weights.shape), []).append(i)
    maps: list[FeatureMap | None] = [None] * len(bank.filters)
    for (geo, _shape), members in groups.items():
        w = np.stack([bank.filters[i].weights for i in members])
        b = np.array([bank.filters[i].bias for i in members], np.float32)
        kwargs = dict(stride=geo.stride, padding=geo.padding, dilation=geo.dilation,
                      border=geo.border, activation=geo.activation)
        if bank.input == "depthwise":
            out = engine.conv2d_depthwise(x, w, b, **kwargs)
        else:
            out = engine.conv2d(x, w, b, **kwargs)
        for k, i in enumerate(members):
            maps[i] = FeatureMap(bank.filters[i].name, out[k], bank.filters[i].scale)
    return [m for m in maps if m is not None]


def safe_names(names: list[str]) -> list[str]:
    """File names for filters: letters, digits, '.', '_' and '-' only, no leading dot,
    at most 80 characters, unique (case-insensitively) and never one of RESERVED_NAMES."""
    taken = {n.lower() for n in RESERVED_NAMES}
    out = []
    for name in names:
        plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", plain).strip("._-")[:80] or "filter"
        candidate, n = base, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def output_names(bank: KernelBank, options: Options) -> list[str]:
    """The files each input gets, in the order they are written."""
    if options.format == "npy":
        return ["maps.npy", "maps.json"]
    names = [f"{n}.png" for n in safe_names([f.name for f in bank.filters])]
    return names + (["stack.png"] if options.stack and len(bank.filters) > 1 else [])


def output_folder(source: Source, options: Options) -> Path:
    return Path(options.out) / source.rel


def process(source: Source, bank: KernelBank, options: Options) -> Result:
    """Read, convolve, render and write one input. Errors become a failed Result."""
    start = time.perf_counter()
    result = Result(input=source.label)
    folder = output_folder(source, options)
    if options.resume and options.out != STDOUT:
        planned = [folder / name for name in output_names(bank, options)]
        if all(p.is_file() for p in planned):
            result.status, result.outputs = "skipped", [str(p) for p in planned]
            return result
    try:
        if source.problem is not None:
            raise InputError(source.problem)
        image = images.read_image(source.data if source.data is not None else source.path,
                                  label=source.label, max_pixels=options.max_pixels)
        result.notes.extend(image.notes)
        maps = compute_maps(image.pixels, bank)
        result.shape = _stacked_shape(maps)
        files = _encode(maps, bank, source, options)
        if options.out == STDOUT:
            result.payload = _stdout_payload(files, maps, options)
        else:
            for name, data in files.items():
                images.write_atomic(folder / name, data)
                result.outputs.append(str(folder / name))
    except ConvcliError as e:
        result.status, result.error, result.exit_code = "error", str(e), e.exit_code
    result.seconds = time.perf_counter() - start
    return result


def _stacked_shape(maps: list[FeatureMap]) -> tuple[int, ...] | None:
    shapes = {m.data.shape for m in maps}
    return (len(maps),) + next(iter(shapes)) if len(shapes) == 1 else None


def _encode(maps: list[FeatureMap], bank: KernelBank, source: Source, options: Options
            ) -> dict[str, bytes]:
    """Every output file of one input, as file name -> bytes (written by the caller)."""
    about = {"convcli": __version__, "input": source.label, "bank": bank.name}
    if options.format == "npy":
        if len({m.data.shape for m in maps}) != 1:
            sizes = ", ".join(f"{m.name} {'x'.join(map(str, m.data.shape))}" for m in maps)
            raise InputError(f"{source.label}: the maps differ in size ({sizes}) and cannot "
                             "share one .npy; pick filters with --filter or use --padding same")
        meta = dict(about, filters=[m.name for m in maps], shape=list(_stacked_shape(maps)),
                    input_mode=bank.input, dtype="float32")
        return {"maps.npy": images.encode_npy(np.stack([m.data for m in maps])),
                "maps.json": (json.dumps(meta, indent=2) + "\n").encode()}

    global_maps = [m.data for m in maps if m.scale == "global"]
    global_range = render.joint_range(global_maps) if global_maps else None
    files: dict[str, bytes] = {}
    rendered = [render.to_pixels(m.data, m.scale, options.bits, global_range) for m in maps]
    for m, r, safe in zip(maps, rendered, safe_names([m.name for m in maps])):
        meta = dict(about, filter=m.name, scale=m.scale, range=[r.lo, r.hi], bits=options.bits,
                    value="lo + pixel / (2**bits - 1) * (hi - lo)")
        files[f"{safe}.png"] = images.encode_png(r.pixels, {"convcli": json.dumps(meta)},
                                                 options.compression)
    if len(maps) > 1 and (options.stack or options.out == STDOUT):
        pixels, boxes = render.stack([(m.name, r.pixels) for m, r in zip(maps, rendered)])
        for box, m, r in zip(boxes, maps, rendered):
            box.update(scale=m.scale, range=[r.lo, r.hi])
        meta = dict(about, bits=options.bits, tiles=boxes)
        files["stack.png"] = images.encode_png(pixels, {"convcli": json.dumps(meta)},
                                               options.compression)
    return files


def _stdout_payload(files: dict[str, bytes], maps: list[FeatureMap], options: Options) -> bytes:
    if options.format == "npy":
        return files["maps.npy"]
    if len(maps) == 1:
        return next(iter(files.values()))  # the one map comes first
    return files["stack.png"]


def check_output_folder(out: str) -> None:
    """Fail before any work if the output folder cannot be used."""
    if out == STDOUT:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; give -o a folder (or - for stdout)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the output folder: {e.strerror or e}") from None
