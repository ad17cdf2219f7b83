"""Read -> engine -> render -> write for one input, giving one Result. Never prints.

Layout of the outputs of one input (REL = its output folder, see convcli.inputs):

  OUT/REL/<filter>.png   one map per filter (name made safe, unique)
  OUT/REL/stack.png      all maps tiled, each under its name (with two or more filters,
                         unless Options.stack is off)
  OUT/REL/maps.npy       with --format npy: float32 (F, H', W') (depthwise: (F, C, H', W'))
  OUT/REL/maps.json      with --format npy: filter names, bank and settings
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, images, render
from .bank import KernelBank
from .engine import EngineConfig
from .network import Network
from .errors import EXIT_ERROR, ConvcliError, InputError, OutputError, UsageError
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
    max_memory: int = 4 * 2**30  # bytes for one input's maps at a time (see plan_groups)
    thumbnails: bool = False  # keep a small picture of every map in the Result
    all_layers: bool = False  # also write every earlier layer's maps, each in its folder
    engine: EngineConfig = EngineConfig()  # how the engine runs (a value, never a global)


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
    settings: tuple[str, ...] = ()  # settings that can fix the error (see ConvcliError)
    thumbnails: dict[str, np.ndarray] | None = None  # filter name -> small picture of its map


def check_options(options: Options) -> None:
    """Refuse combinations that cannot work before any input is read."""
    if options.format not in ("png", "npy"):
        raise UsageError(f"the output format must be png or npy, got {options.format!r}",
                         settings=("format",))
    if options.bits not in (8, 16):
        raise UsageError(f"bits per sample must be 8 or 16, got {options.bits}",
                         settings=("bits",))
    if not 0 <= options.compression <= 9:
        raise UsageError(f"the compression level must be 0-9, got {options.compression}",
                         settings=("compression",))


def work_per_image(bank: KernelBank | Network, height: int, width: int,
                   channels: int = 3) -> float | None:
    """About how many multiply-adds one input of this size costs (for choosing a path);
    None when the network cannot take such an input (the input will say why)."""
    try:
        return as_network(bank).work((channels, height, width))
    except ConvcliError:
        return None


def compute_maps(pixels: np.ndarray, bank: KernelBank,
                 config: EngineConfig = EngineConfig(), *, first: bool = True,
                 tail: Network | None = None) -> list[FeatureMap]:
    """Run every filter of the bank over one input (C, H, W). Filters that share settings
    and kernel shape go through the engine in one pass. ``first``: the bank is a network's
    first conv layer, so an image is fitted to a gray or rgb bank (luminance, or a gray
    channel repeated); later layers need their exact channel count. ``tail``: layers that
    follow the bank (activations, pooling, normalisation: channel by channel), applied to
    each map."""
    from . import network

    x = pixels
    if first and bank.input in ("gray", "rgb") and x.shape[0] in (1, 3):
        x = images.as_channels(pixels, bank.input)
    if bank.input != "depthwise" and x.shape[0] != bank.channels:
        raise InputError(f"the input has {x.shape[0]} channels but bank {bank.name!r} "
                         f"needs {bank.channels}")
    maps: list[FeatureMap | None] = [None] * len(bank.filters)
    for part, groups, members in network.passes(bank, x.shape[0]):
        # bias, per-window normalisation and activation as network.run applies them
        out = network.conv_pass(x[part], bank, groups, members, config)
        for k, i in enumerate(members):
            data = out[k]
            if tail is not None and not _joint(tail):  # channel by channel
                data = network.run(data, tail, config=config)[0]  # (H, W) -> (1, H', W')
                data = data[0] if out[k].ndim == 2 else data
            maps[i] = FeatureMap(bank.filters[i].name, data, bank.filters[i].scale)
    done = [m for m in maps if m is not None]
    if tail is not None and _joint(tail):  # a normalisation with a value per channel
        joint = network.run(np.stack([m.data for m in done]), tail, config=config)[0]
        done = [replace(m, data=joint[k]) for k, m in enumerate(done)]
    return done


def _joint(tail: Network) -> bool:
    """Whether the layers after the last conv need all its maps at once (a normalisation
    with one value per channel); the others work channel by channel."""
    from . import network

    return any(isinstance(layer, network.Normalize) and max(len(layer.mean), len(layer.std)) > 1
               for layer in tail.layers)


def as_network(bank: KernelBank | Network) -> Network:
    """A bank as a network (a single bank is a network of one conv layer)."""
    from . import network

    if isinstance(bank, network.Network):
        return bank
    return network.Network(name=bank.name, description=bank.description,
                           layers=(network.Conv(name=bank.name, bank=bank),),
                           origin=bank.origin, provenance=bank.provenance)


@dataclass(frozen=True)
class _Parts:
    """A network seen as the pipeline runs it: the layers before its last conv layer (run
    whole), that conv layer (run in filter groups that fit the memory budget, each map
    written as soon as it is made) and the layers after it (applied to each map)."""

    head: Network | None
    bank: KernelBank
    first: bool  # the bank is the network's first conv layer
    tail: Network | None


def output_bank(bank: KernelBank | Network) -> KernelBank:
    """The conv layer whose maps an input's files hold (a network's last conv layer)."""
    return _parts(as_network(bank)).bank


def _parts(net: Network) -> _Parts:
    from . import network

    index = max((i for i, layer in enumerate(net.layers) if isinstance(layer, network.Conv)),
                default=None)
    if index is None:
        raise UsageError(f"{net.name!r} has no conv layer; there are no maps to write")
    conv = net.layers[index]
    assert isinstance(conv, network.Conv)
    head = replace(net, layers=net.layers[:index]) if index else None
    tail = replace(net, layers=net.layers[index + 1:]) if index + 1 < len(net.layers) else None
    first = not any(isinstance(layer, network.Conv) for layer in net.layers[:index])
    return _Parts(head, conv.bank, first, tail)


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


def output_names(bank: KernelBank | Network, options: Options) -> list[str]:
    """The files each input gets in its folder, in the order they are written (the last
    conv layer's maps; with Options.all_layers, each earlier layer's folder comes first)."""
    bank = _parts(as_network(bank)).bank
    if options.format == "npy":
        return ["maps.npy", "maps.json"]
    names = [f"{n}.png" for n in safe_names([f.name for f in bank.filters])]
    return names + (["stack.png"] if options.stack and len(bank.filters) > 1 else [])


def output_folder(source: Source, options: Options) -> Path:
    return Path(options.out) / source.rel


def settings_key(bank: KernelBank | Network, options: Options) -> str:
    """A fingerprint of everything that decides an input's output bytes (every layer,
    its filters, their weights and settings, the output options, convcli's version). It is
    recorded in every output, so --resume can tell outputs made otherwise and redo them."""
    from . import network

    net = as_network(bank)
    h = hashlib.sha256()
    h.update(json.dumps([__version__, net.name, options.format, options.bits,
                         options.compression, options.stack, options.all_layers]).encode())
    for layer in net.layers:
        if not isinstance(layer, network.Conv):
            h.update(repr(layer).encode())
            continue
        b = layer.bank
        h.update(json.dumps([layer.name, b.name, b.input, b.groups]).encode())
        for f in b.filters:
            h.update(json.dumps([f.name, f.bias, repr(f.geometry), f.scale,
                                 list(f.weights.shape), getattr(f, "group", 0)]).encode())
            h.update(np.ascontiguousarray(f.weights, np.float32).tobytes())
    return h.hexdigest()[:20]


def done_before(source: Source, bank: KernelBank | Network, options: Options,
                since_ns: int | None = None) -> list[str] | None:
    """The input's output files when every one is present and was made with these settings
    (and, with ``since_ns``, written at or after that time); else None."""
    folder = output_folder(source, options)
    key = settings_key(bank, options)
    paths = [folder / name for name in output_names(bank, options)]
    for path in paths:
        try:
            if not path.is_file() or _recorded_key(path) != key:
                return None
            if since_ns is not None and path.stat().st_mtime_ns < since_ns:
                return None
        except (OSError, ValueError):
            return None
    return [str(p) for p in paths]


def _recorded_key(path: Path) -> str | None:
    """The settings fingerprint an output file records (see settings_key)."""
    if path.suffix == ".json":
        with open(path, "rb") as fh:
            return json.loads(fh.read(1 << 20)).get("settings")
    if path.suffix == ".png":
        text = _png_text(path).get("convcli")
        return json.loads(text).get("settings") if text else None
    if path.suffix == ".npy":  # no room for metadata: its maps.json (committed with it) has it
        return _recorded_key(path.with_name("maps.json"))
    return None


def _png_text(path: Path) -> dict[str, str]:
    """tEXt chunks before the image data of a PNG that convcli wrote (read from its head)."""
    out: dict[str, str] = {}
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return out
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return out
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                return out
            body = fh.read(length)
            fh.read(4)  # CRC
            if kind == b"tEXt" and b"\0" in body:
                key, _, value = body.partition(b"\0")
                out[key.decode("latin-1")] = value.decode("latin-1")


# Signals that stop a run. While an input's files are moved into place they are held back,
# so a stop leaves the input's outputs complete or absent, never a part of them.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM} | (
    {signal.SIGUSR1} if hasattr(signal, "SIGUSR1") else set())


@contextlib.contextmanager
def signals_held():
    """Hold back the stop signals (delivered when the block ends) for a step that must not
    be cut in half."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Staging:
    """One input's output files, written in a private hidden folder below OUT as they are
    made, then moved together into the input's folder (each move is an atomic rename on the
    same file system). Until the move, the input's folder is not even created."""

    def __init__(self, root: Path, folder: Path):
        self.folder = folder  # where the files go (named in messages)
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=_staging_prefix(os.getpid()),
                                             suffix=".part", dir=root))
        except OSError as e:
            raise OutputError(f"{root}: cannot write there: {e.strerror or e}") from None
        self.names: list[str] = []

    def write(self, name: str, chunks) -> None:
        path = self.dir / name
        try:
            path.parent.mkdir(exist_ok=True)  # a layer's subfolder (Options.all_layers)
            with open(path, "wb") as fh:
                for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                    fh.write(chunk)
            os.chmod(path, _file_mode())
        except OSError as e:
            raise OutputError(f"{self.folder / name}: cannot write: {e.strerror or e}") from None
        self.names.append(name)

    def commit(self, root: Path, result: "Result") -> None:
        """Move every staged file into ``folder`` (checked to lie inside ``root``) and mark
        ``result`` done, with the stop signals held back for the moves."""
        folder = self.folder
        with signals_held():
            made = _make_folder(folder, root)
            moved: list[Path] = []
            try:
                targets = [folder / name for name in self.names]
                for target in targets:
                    if target.is_symlink() or (target.exists() and not target.is_file()):
                        raise OutputError(f"{target}: exists and is not a regular file; "
                                          "move it away or choose another output folder")
                try:
                    for name, target in zip(self.names, targets):
                        target.parent.mkdir(exist_ok=True)
                        os.replace(self.dir / name, target)
                        moved.append(target)
                except OSError as e:
                    raise OutputError(f"{folder}: cannot write: {e.strerror or e}") from None
            except OutputError:
                for path in moved:  # complete or absent: take back what was moved
                    _remove(path)
                _remove_folders(folder, made)
                raise
            result.outputs = [str(t) for t in targets]
            result.status = "ok"

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _staging_prefix(pid: int) -> str:
    # Host and process in the name: a folder left by a process that was killed can be told
    # from one still in use (see sweep_staging), also on storage shared by several machines.
    host = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:40] or "host"
    return f".convcli-{host}-{pid}-"


def staging_pid(name: str) -> int | None:
    """The process of this machine that made the staging folder called ``name``, if any."""
    host_prefix = _staging_prefix(0)[:-2]  # ".convcli-HOST-"
    if not (name.startswith(host_prefix) and name.endswith(".part")):
        return None
    pid = name[len(host_prefix):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def sweep_staging(root: str) -> None:
    """Remove staging folders in ``root`` left by processes of this machine that are gone
    (a worker killed with SIGKILL cannot remove its own)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        pid = staging_pid(entry.name)
        if pid is not None and not _alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


def _make_folder(folder: Path, root: Path) -> Path | None:
    """Create ``folder`` below ``root``, first proving that the part that exists already
    lies inside ``root`` after following links (so a link planted in the output folder
    cannot lead the writes elsewhere). Returns the topmost folder created, or None."""
    existing, made = folder, None
    while not os.path.lexists(existing):
        existing, made = existing.parent, existing
    _check_inside(existing, root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create the output folder: "
                          f"{e.strerror or e}") from None
    _check_inside(folder, root)
    return made


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _remove_folders(folder: Path, made: Path | None) -> None:
    """Remove the (empty) folders _make_folder created, deepest first."""
    if made is None:
        return
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == made:
            return
        folder = folder.parent


def _check_inside(folder: Path, root: Path) -> None:
    """Refuse a folder that is not (after following links) below the output folder."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(folder)
    if os.path.commonpath([real_root, real]) != real_root:
        raise OutputError(f"{folder}: leads outside the output folder {root} (through a "
                          "link); remove the link or choose another output folder")


def _file_mode() -> int:
    """0666 less the process umask: what open() gives a new file (mkdtemp makes 0700 dirs)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _named(label: str, message: str) -> str:
    """Every error about an input names that input first."""
    return message if message.startswith(label) else f"{label}: {message}"


def process(source: Source, bank: KernelBank | Network, options: Options,
            result: Result | None = None) -> Result:
    """Read, convolve, render and write one input. Errors become a failed Result.

    ``result`` (made here when not given) is filled in as the work goes; it is marked "ok"
    in the same step that moves the files into place, so a caller interrupted during this
    call can still tell whether the input's outputs were completed."""
    start = time.perf_counter()
    result = result if result is not None else Result(input=source.label)
    label = source.label
    root = Path(options.out)
    try:
        if options.resume and options.out != STDOUT:
            done = done_before(source, bank, options)
            if done is not None:
                result.status, result.outputs = "skipped", done
                return result
        if source.problem is not None:
            raise InputError(source.problem)
        from . import features

        tensor = features.read_input(source.content(), label, options.max_pixels,
                                     options.max_memory)
        result.notes.extend(tensor.notes)
        net = as_network(bank)
        parts = _parts(net)
        about: dict[str, Any] = {"convcli": __version__, "input": source.label,
                                 "bank": net.name, "settings": settings_key(net, options)}
        if options.thumbnails:
            result.thumbnails = {}
        if options.all_layers:
            files = _every_layer(tensor.data, net, about, options, result, tensor.names)
        else:
            x, names = tensor.data, tensor.names
            if parts.head is not None:
                from . import network

                need = parts.head.peak_bytes(x.shape)
                if need > options.max_memory:
                    raise InputError(f"the layers before the last conv need about {_mib(need)}, "
                                     f"over the memory budget of {_mib(options.max_memory)}; "
                                     "raise the budget or give a smaller input",
                                     settings=("max_memory",))
                x, names = network.run(x, parts.head, config=options.engine, names=names)
            parts = replace(parts, first=parts.first and tensor.image)
            if parts.bank.input == "depthwise" and x.shape[0] not in (1, 3):
                parts = replace(parts, bank=_expand_depthwise(parts.bank, names))
            shapes = [map_shape(f, x.shape, parts.bank.input, parts.tail)
                      for f in parts.bank.filters]
            result.shape = (len(shapes),) + shapes[0] if len(set(shapes)) == 1 else None
            groups = plan_groups(parts.bank, x.shape, shapes, options, label)
            if parts.tail is not None and _joint(parts.tail):
                groups = [sum(groups, [])]  # every map at once (see _joint)
            files = _outputs(x, parts, groups, shapes, source, options, about,
                             result.thumbnails)
        if options.out == STDOUT:
            wanted = "maps.npy" if options.format == "npy" else (
                "stack.png" if len(parts.bank.filters) > 1 else None)
            for name, chunks in files:
                if wanted in (None, name):
                    result.payload = b"".join(chunks)
                    break
            result.status = "ok"
        else:
            staging = _Staging(root, output_folder(source, options))
            try:
                for name, chunks in files:  # each file is written as soon as it is made
                    staging.write(name, chunks)
                staging.commit(root, result)
            finally:
                staging.discard()
    except ConvcliError as e:
        result.status, result.error, result.exit_code = "error", _named(label, str(e)), e.exit_code
        result.settings, result.outputs = e.settings, []
    except MemoryError:
        result.status, result.exit_code = "error", EXIT_ERROR
        result.error = (f"{label}: not enough memory; lower the memory budget or give a "
                        "smaller image")
        result.settings = ("max_memory",)
    except (ValueError, ArithmeticError, OSError, RuntimeError, TypeError, IndexError) as e:
        # A fault of ours or of a library on strange data: one line, the input named.
        result.status, result.exit_code = "error", EXIT_ERROR
        result.error = f"{label}: failed ({type(e).__name__}: {_one_line(e)})"
    result.seconds = time.perf_counter() - start
    return result


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def map_shape(f, image_shape: tuple[int, ...], mode: str,
              tail: Network | None = None) -> tuple[int, ...]:
    """The shape of one filter's map for an input (C, H, W): (H', W'), or (C, H', W') for
    depthwise banks; after the ``tail`` layers (pooling) when given."""
    from . import geometry

    c, h, w = image_shape
    g = f.geometry
    kh, kw = f.weights.shape[1:]
    pads = geometry.resolve_pads(g.padding, (h, w), (kh, kw), g.stride, g.dilation)
    hw = tuple(max(0, n) for n in geometry.output_hw((h, w), (kh, kw), g.stride, g.dilation,
                                                      pads))
    if tail is not None and min(hw) > 0:
        hw = tail.shapes((c if mode == "depthwise" else 1, *hw))[-1][1:]
    return ((c,) if mode == "depthwise" else ()) + tuple(hw)


def plan_groups(bank: KernelBank, image_shape: tuple[int, int, int],
                shapes: list[tuple[int, ...]], options: Options, label: str) -> list[list[int]]:
    """Split the filters into groups whose float maps fit in Options.max_memory together
    with the image and what the stack keeps; each group is computed, written and dropped
    before the next. One group when everything fits (the usual case)."""
    image_bytes = 4 * int(np.prod(image_shape)) * 3  # pixels, channel-converted, padded
    map_bytes = [8 * int(np.prod(s)) for s in shapes]  # the map, and its engine buffer
    keep = sum(int(np.prod(s)) * options.bits // 8 for s in shapes) * 2 \
        if options.stack and options.format == "png" and len(shapes) > 1 else 0
    fixed = image_bytes + keep
    budget = options.max_memory
    if fixed + max(map_bytes) > budget:
        raise InputError(
            f"{label}: needs at least {_mib(fixed + max(map_bytes))} (image {_mib(image_bytes)}, "
            f"largest map {_mib(max(map_bytes))}" + (f", stack {_mib(keep)}" if keep else "")
            + f"), over the memory budget of {_mib(budget)}; raise the budget"
            + (", leave out the stack" if keep else "") + " or give a smaller image",
            settings=("max_memory", "stack") if keep else ("max_memory",))
    groups: list[list[int]] = [[]]
    used = 0
    for i, size in enumerate(map_bytes):
        if groups[-1] and fixed + used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += size
    return groups


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _outputs(pixels: np.ndarray, parts: _Parts, groups: list[list[int]],
             shapes: list[tuple[int, ...]], source: Source, options: Options,
             about: dict[str, Any], thumbnails: dict[str, np.ndarray] | None = None):
    """Every output file of one input, in order, as (file name, chunks of bytes). Maps are
    computed one filter group at a time, so memory stays within Options.max_memory. With
    ``thumbnails``, a small picture of each map is kept there too (for contact sheets)."""
    bank = parts.bank
    names = [f.name for f in bank.filters]

    def computed():
        for group in groups:
            yield compute_maps(pixels, bank.select([names[i] for i in group]), options.engine,
                               first=parts.first, tail=parts.tail)

    yield from _map_files(computed, len(groups), names, [f.scale for f in bank.filters], shapes,
                          bank.input, source, options, about, thumbnails)


def _map_files(computed, passes: int, names: list[str], scales: list[str],
               shapes: list[tuple[int, ...]], mode: str, source: Source, options: Options,
               about: dict[str, Any], thumbnails: dict[str, np.ndarray] | None,
               prefix: str = ""):
    """The files of one layer's maps, as (file name, chunks): PNGs and a stack, or an array
    and its names. ``computed()`` yields the maps in ``passes`` lists, in the order of
    ``names``; ``prefix`` is the subfolder they go in."""
    bank_input = mode

    if options.format == "npy":
        if len(set(shapes)) != 1:
            sizes = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in zip(names, shapes))
            raise InputError(f"{source.label}: the maps differ in size ({sizes}) and cannot "
                             "share one array; pick filters or use padding 'same'",
                             settings=("filter", "padding"))
        shape = (len(names),) + shapes[0]

        def blocks():
            for maps in computed():
                if thumbnails is not None:
                    for m in maps:  # the picture the PNG output would show, made small
                        scale = "auto" if m.scale == "global" else m.scale
                        thumbnails[m.name] = render.thumbnail(
                            render.to_pixels(m.data, scale, options.bits).pixels)
                yield np.stack([m.data for m in maps])
        yield prefix + "maps.npy", images.npy_chunks(shape, blocks())
        meta = dict(about, filters=names, shape=list(shape), input_mode=bank_input,
                    dtype="float32")
        yield prefix + "maps.json", [(json.dumps(meta, indent=2) + "\n").encode()]
        return

    first = None
    global_range = None
    if "global" in scales:  # one range over all maps: a first pass
        ranges = []
        for maps in computed():
            first = maps if passes == 1 else None  # one group: reuse instead of redoing
            in_range = [m.data for m in maps if m.scale == "global"]
            if in_range:
                ranges.append(render.joint_range(in_range))
        global_range = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
    stacking = len(names) > 1 and (options.stack or options.out == STDOUT)
    safe = dict(zip(names, safe_names(names)))
    tiles = []
    for maps in ([first] if first is not None else computed()):
        for m in maps:
            r = render.to_pixels(m.data, m.scale, options.bits, global_range)
            meta = dict(about, filter=m.name, scale=m.scale, range=[r.lo, r.hi],
                        bits=options.bits, value="lo + pixel / (2**bits - 1) * (hi - lo)")
            yield f"{prefix}{safe[m.name]}.png", [images.encode_png(
                r.pixels, {"convcli": json.dumps(meta)}, options.compression)]
            if stacking:
                tiles.append((m, r))
            if thumbnails is not None:
                thumbnails[m.name] = render.thumbnail(r.pixels)
    if stacking:
        pixels_, boxes = render.stack([(m.name, r.pixels) for m, r in tiles])
        for box, (m, r) in zip(boxes, tiles):
            box.update(scale=m.scale, range=[r.lo, r.hi])
        meta = dict(about, bits=options.bits, tiles=boxes)
        yield prefix + "stack.png", [images.encode_png(pixels_, {"convcli": json.dumps(meta)},
                                                       options.compression)]


def _every_layer(pixels: np.ndarray, net: Network, about: dict[str, Any], options: Options,
                 result: Result, names_in: list[str]):
    """The files of every layer of ``net`` (Options.all_layers): each layer but the last in
    its own subfolder (NN-name/), the last layer's maps as the input's own files. The whole
    network runs at once (no filter groups), each layer's pictures made as it finishes."""
    from . import network

    layer_files: list[tuple[str, list[bytes]]] = []
    final: list[tuple[Any, network.Maps]] = []
    folders = safe_names([f"{i + 1:02d}-{layer.name}" if not layer.name[:2].isdigit()
                          else layer.name for i, layer in enumerate(net.layers)])
    source = Source(label=str(about["input"]))

    def files_of(maps: network.Maps, prefix: str, scales: dict[str, str], thumbnails=None):
        data, names = maps
        made = [FeatureMap(n, data[k], scales.get(n, "auto")) for k, n in enumerate(names)]
        shapes = [m.data.shape for m in made]
        yield from _map_files(lambda: iter([made]), 1, names, [m.scale for m in made], shapes,
                              "dense", source, options, about, thumbnails, prefix)

    def each(layer, maps) -> None:
        index = net.layers.index(layer)
        if index == len(net.layers) - 1:
            final.append((layer, maps))
            return
        for name, chunks in files_of(maps, folders[index] + "/", {}):
            layer_files.append((name, [b"".join(chunks)]))

    network.run(pixels, net, config=options.engine, each=each, names=names_in)
    last = _parts(net).bank
    scales = {f.name: f.scale for f in last.filters}
    data, names = final[0][1]
    result.shape = tuple(data.shape)
    yield from layer_files
    yield from files_of((data, names), "", scales, result.thumbnails)


def _expand_depthwise(bank: KernelBank, channels: list[str]) -> KernelBank:
    """A depthwise bank on an input of other than 1 or 3 channels (a feature map) as the
    grouped bank that computes the same maps, one per filter and channel, named
    "filter/channel" (a picture can show 1 or 3 channels together, not 16)."""
    filters = tuple(replace(f, name=f"{f.name}/{channel}", group=k)
                    for k, channel in enumerate(channels) for f in bank.filters)
    return replace(bank, input="dense", groups=len(channels), filters=filters)


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
    sweep_staging(out)  # left by a run that was killed
