"""Read -> engine -> render -> write for one input, giving one Result. Never prints.

Layout of the outputs of one input (REL = its output folder, see convcli.inputs):

  OUT/REL/<filter>.png   one map per filter (name made safe, unique; unless Options.maps
                         is off); .jpg or .webp for those formats
  OUT/REL/stack.png      all maps tiled, shrunk to Options.tile, each under its name and
                         its value range (with two or more filters, or maps off; unless
                         Options.stack is off)
  OUT/REL/combined.png   with Options.combine: one map made of all (max, mean, magnitude)
  OUT/REL/overlay.png    with Options.overlay: the combined map over the input, in colour
  OUT/REL/maps.json      for JPEG and WebP: each picture's range (they have no text chunk)
  OUT/REL/maps.npy       with --format npy: float32 (F, H', W') (depthwise: (F, C, H', W'))
  OUT/REL/maps.tif       with --format tiff: float32, one sample per map (depthwise: per map
                         and channel), the names in its description
  OUT/REL/maps.json      with npy or tiff: filter names, bank and settings
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
RESERVED_NAMES = ("stack", "maps", "combined", "overlay")  # per-input files that are not maps
FORMATS = ("png", "jpeg", "webp", "tiff", "npy")
PICTURES = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # picture formats -> file extension
COMBINE = ("max", "mean", "magnitude")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".npy", ".gif", ".bmp")


@dataclass(frozen=True)
class Options:
    out: str  # an output folder, or "-" for one result on stdout
    format: str = "png"  # png | jpeg | webp | tiff | npy
    bits: int = 8
    scale: str | None = None  # overrides every map's scale (render.parse_scale's syntax)
    colormap: str = "gray"  # render.COLORMAPS; other than gray makes 8-bit colour pictures
    maps: bool = True  # one picture per filter (off: the stack only)
    tile: int = render.TILE  # a stack tile's longer side at most (shrunk by a whole factor)
    columns: int | None = None  # stack columns (None: near square)
    combine: str | None = None  # max | mean | magnitude: also write combined.<ext>
    overlay: bool = False  # also write overlay.<ext>: the combined map over the input
    quality: int = 90  # JPEG/WebP quality
    shared: bool = False  # one range per filter for the whole batch (see shared_ranges)
    ranges: tuple[tuple[str, float, float], ...] | None = None  # (map, lo, hi) found for it
    ranges_only: bool = False  # the first pass: find each map's range, write nothing
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
    ranges: dict[str, tuple[float, float]] | None = None  # with Options.ranges_only


def check_options(options: Options) -> None:
    """Refuse combinations that cannot work before any input is read."""
    if options.format not in FORMATS:
        raise UsageError(f"the output format must be {', '.join(FORMATS[:-1])} or npy, "
                         f"got {options.format!r}", settings=("format",))
    if options.bits not in (8, 16):
        raise UsageError(f"bits per sample must be 8 or 16, got {options.bits}",
                         settings=("bits",))
    if options.bits == 16 and options.format in ("jpeg", "webp"):
        raise UsageError(f"{options.format} pictures have 8 bits per sample; use png for 16",
                         settings=("bits", "format"))
    if options.scale is not None:
        try:
            render.parse_scale(options.scale)
        except ValueError as e:
            raise UsageError(str(e), settings=("scale",)) from None
    try:
        render.check_colormap(options.colormap)
    except ValueError as e:
        raise UsageError(str(e), settings=("colormap",)) from None
    if options.colormap != "gray" and options.bits == 16:
        raise UsageError("a colormap makes 8-bit colour pictures; 16 bits are for gray maps "
                         "whose values are to be read back", settings=("bits", "colormap"))
    if options.tile < 16:
        raise UsageError(f"the stack's tile size must be at least 16 pixels, got "
                         f"{options.tile}", settings=("tile",))
    if options.columns is not None and options.columns < 1:
        raise UsageError(f"the stack needs at least 1 column, got {options.columns}",
                         settings=("columns",))
    if options.combine is not None and options.combine not in COMBINE:
        raise UsageError(f"maps combine by {', '.join(COMBINE)}, got {options.combine!r}",
                         settings=("combine",))
    if options.colormap != "gray" and options.format not in PICTURES:
        raise UsageError(f"a colormap colours pictures; {options.format} holds the float "
                         "maps", settings=("colormap", "format"))
    if options.shared and options.format not in PICTURES:
        raise UsageError(f"shared ranges are for pictures; {options.format} holds the float "
                         "maps", settings=("shared", "format"))
    if (options.combine or options.overlay) and options.format not in PICTURES:
        raise UsageError("a combined map and an overlay are pictures: they need the format "
                         "png, jpeg or webp", settings=("format",))
    if options.format in PICTURES and not (options.maps or options.stack or options.combine
                                           or options.overlay):
        raise UsageError("with neither per-filter maps nor a stack there is nothing to write",
                         settings=("maps", "stack"))
    out = Path(options.out)
    if options.out != STDOUT and out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir():
        raise UsageError(f"{options.out}: looks like a file name, but the output is a folder "
                         "(one file per map); give a folder, or - to write one result to "
                         "stdout")


def check_bank_options(bank: KernelBank | Network, options: Options) -> None:
    """Refuse output options that cannot work with this bank, before any input is read."""
    n = len(output_bank(bank).filters)
    if options.combine == "magnitude" and n != 2:
        raise UsageError(f"the magnitude combines two maps (an x and a y derivative), but "
                         f"{n} are made; pick two filters", settings=("filter",))
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
    with one value per channel, a local response normalisation across channels); the
    others work channel by channel."""
    from . import network

    return any(isinstance(layer, network.LRN)
               or (isinstance(layer, network.Normalize)
                   and max(len(layer.mean), len(layer.std)) > 1)
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
    if options.format == "tiff":
        return ["maps.tif", "maps.json"]
    ext = PICTURES[options.format]
    names = [f"{n}.{ext}" for n in safe_names([f.name for f in bank.filters])] \
        if options.maps else []
    if _stacking(len(bank.filters), options):
        names.append(f"stack.{ext}")
    if options.combine or options.overlay:
        names += [f"combined.{ext}"] + ([f"overlay.{ext}"] if options.overlay else [])
    return names + (["maps.json"] if options.format != "png" else [])


def _stacking(n_maps: int, options: Options) -> bool:
    """Whether an input gets a stack: two maps or more, or one when the maps are off."""
    return (n_maps > 1 or not options.maps) and (options.stack or options.out == STDOUT)


def stdout_name(bank: KernelBank | Network, options: Options) -> str:
    """The one file that ``-o -`` writes: the array, else the overlay, the combined map,
    the stack, or the only map, the first of these that is made."""
    names = output_names(bank, options)
    for kind in ("maps.npy", "maps.tif", "overlay.", "combined.", "stack."):
        for name in names:
            if name.startswith(kind):
                return name
    return names[0]


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
                         options.compression, options.stack, options.all_layers,
                         options.scale, options.colormap, options.maps, options.tile,
                         options.columns, options.combine, options.overlay,
                         options.quality, options.ranges, options.ranges_only]).encode())
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
    (and, with ``since_ns``, written at or after that time); else None. For a remote
    output folder, what its completion marker says (see convcli.storage)."""
    if "://" in options.out:
        from . import storage

        if storage.is_remote(options.out):
            return storage.done_before(source, bank, options, since_ns)
        options = replace(options, out=storage.local_path(options.out))
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
        text = png_text(path).get("convcli")
        return json.loads(text).get("settings") if text else None
    if path.suffix in (".npy", ".tif", ".jpg", ".webp"):
        # no text chunk of ours: the maps.json committed with them has it
        return _recorded_key(path.with_name("maps.json"))
    return None


def png_text(path: Path) -> dict[str, str]:
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
        if options.ranges_only:
            result.ranges = {}
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
                             result.thumbnails, tensor.data if tensor.image else None,
                             result.ranges)
        if options.ranges_only:  # the first pass of shared ranges: nothing is written
            for _ in files:
                pass
            result.status = "ok"
        elif options.out == STDOUT:
            wanted = stdout_name(net, options)
            for name, chunks in files:
                if name == wanted:
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
    keep = _kept_bytes(shapes, options)
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


def _kept_bytes(shapes: list[tuple[int, ...]], options: Options) -> int:
    """What an input's outputs keep while its maps are made: the stack's shrunk tiles and
    its canvas, a combined map (float32, and its pictures), the whole TIFF (the array, and
    its bytes)."""
    if options.format == "tiff":
        return 2 * 4 * sum(int(np.prod(s)) for s in shapes)
    if options.format not in PICTURES:
        return 0
    keep = 0
    depth = (3 if options.colormap != "gray" else 1) * options.bits // 8
    if _stacking(len(shapes), options):
        for s in shapes:
            h, w = s[-2:]
            factor = max(1, -(-max(h, w) // options.tile))
            keep += 2 * (h // factor) * (w // factor) * depth * (3 if len(s) == 3 else 1)
    if options.combine or options.overlay:
        keep += 4 * int(np.prod(shapes[0])) + 8 * int(np.prod(shapes[0][-2:]))
    return keep


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _outputs(pixels: np.ndarray, parts: _Parts, groups: list[list[int]],
             shapes: list[tuple[int, ...]], source: Source, options: Options,
             about: dict[str, Any], thumbnails: dict[str, np.ndarray] | None = None,
             photo: np.ndarray | None = None,
             ranges: dict[str, tuple[float, float]] | None = None):
    """Every output file of one input, in order, as (file name, chunks of bytes). Maps are
    computed one filter group at a time, so memory stays within Options.max_memory. With
    ``thumbnails``, a small picture of each map is kept there too (for contact sheets);
    ``photo`` is the input image an overlay is drawn on (None for a feature-map input)."""
    bank = parts.bank
    names = [f.name for f in bank.filters]

    def computed():
        for group in groups:
            yield compute_maps(pixels, bank.select([names[i] for i in group]), options.engine,
                               first=parts.first, tail=parts.tail)

    yield from _map_files(computed, len(groups), names, [f.scale for f in bank.filters], shapes,
                          bank.input, source, options, about, thumbnails, photo=photo,
                          base=pixels, ranges=ranges)


def _same_size(names: list[str], shapes: list[tuple[int, ...]], source: Source,
               what: str) -> None:
    if len(set(shapes)) != 1:
        sizes = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in zip(names, shapes))
        raise InputError(f"{source.label}: the maps differ in size ({sizes}) and cannot "
                         f"{what}; pick filters or use padding 'same'",
                         settings=("filter", "padding"))


def _map_files(computed, passes: int, names: list[str], scales: list[str],
               shapes: list[tuple[int, ...]], mode: str, source: Source, options: Options,
               about: dict[str, Any], thumbnails: dict[str, np.ndarray] | None,
               prefix: str = "", photo: np.ndarray | None = None,
               base: np.ndarray | None = None,
               ranges: dict[str, tuple[float, float]] | None = None):
    """The files of one layer's maps, as (file name, chunks): pictures and a stack, or an
    array and its names. ``computed()`` yields the maps in ``passes`` lists, in the order
    of ``names``; ``prefix`` is the subfolder they go in (an earlier layer's: no combined
    map or overlay there). An overlay is drawn on ``photo``, else on ``base`` (the feature
    maps the layer read, their mean stretched min-max to gray). With Options.ranges_only
    nothing is made: each map's range goes into ``ranges`` (the combined map's under
    COMBINED_KEY); with Options.ranges, the maps named there are drawn with those ranges."""
    bank_input = mode
    scales = [options.scale or s for s in scales]

    if options.format in ("npy", "tiff"):
        _same_size(names, shapes, source, "share one array")
        shape = (len(names),) + shapes[0]

        def blocks():
            k = 0
            for maps in computed():
                for m in maps if thumbnails is not None else ():
                    # the picture the PNG output would show, made small
                    scale = "minmax" if scales[k] == "global" else scales[k]
                    k += 1
                    assert thumbnails is not None
                    thumbnails[m.name] = render.thumbnail(
                        render.to_pixels(m.data, scale, options.bits,
                                         config=options.engine).pixels)
                yield np.stack([m.data for m in maps])
        meta = dict(about, filters=names, shape=list(shape), input_mode=bank_input,
                    dtype="float32")
        if options.format == "npy":
            yield prefix + "maps.npy", images.npy_chunks(shape, blocks())
        else:
            channels = names if len(shape) == 3 else [
                f"{n}/{c}" for n in names for c in
                (["red", "green", "blue"] if shape[1] == 3 else range(shape[1]))]
            yield prefix + "maps.tif", [images.encode_tiff(
                blocks(), shape, dict(meta, filters=channels))]
        yield prefix + "maps.json", [(json.dumps(meta, indent=2) + "\n").encode()]
        return

    fmt, ext, bits, cmap = options.format, PICTURES[options.format], options.bits, \
        options.colormap
    first = None
    global_range = None
    final = not prefix
    fixed = {name: (lo, hi) for name, lo, hi in options.ranges or ()} if final else {}
    if "global" in scales and not (fixed and set(names) <= set(fixed)):
        # one range over all maps: a first pass
        found: list[tuple[float, float]] = []
        done = 0
        for maps in computed():
            first = maps if passes == 1 else None  # one group: reuse instead of redoing
            in_range = [m.data for m, s in zip(maps, scales[done:]) if s == "global"]
            done += len(maps)
            if in_range:
                found.append(render.joint_range(in_range))
        global_range = (min(lo for lo, _ in found), max(hi for _, hi in found))
    stacking = _stacking(len(names), options) and not options.ranges_only
    combine = (options.combine or "max") if final and (options.combine or options.overlay) \
        else None
    if combine:
        _same_size(names, shapes, source, "be combined")
    safe = dict(zip(names, safe_names(names)))
    tiles: list[tuple[str, np.ndarray]] = []
    legends: list[render.Legend] = []
    boxes_meta: list[dict] = []
    sidecar: dict[str, Any] = {}
    combined: np.ndarray | None = None
    k = 0
    for maps in ([first] if first is not None else computed()):
        for m in maps:
            scale = scales[k]
            k += 1
            if options.ranges_only:
                if ranges is not None and final:
                    ranges[m.name] = render.value_range(m.data, scale, global_range, bits)
                if combine:
                    combined = _combine(combined, m.data, combine)
                continue
            shared = fixed.get(m.name)
            r = render.to_pixels(m.data, render.Scale("range", *shared) if shared else scale,
                                 bits, global_range, cmap, config=options.engine)
            meta = _picture_meta(about, scale, r, options, m.data.ndim == 2, filter=m.name)
            if shared:
                meta["scale"] += " shared"
            if options.maps:
                yield f"{prefix}{safe[m.name]}.{ext}", [_encode(r.pixels, meta, options)]
                sidecar[f"{safe[m.name]}.{ext}"] = meta
            if stacking:
                tile = render.shrink(r.pixels, options.tile)
                tiles.append((m.name, tile))
                coloured = r.pixels.ndim == 3 and m.data.ndim == 2
                legends.append(render.Legend(r.lo, r.hi, cmap if coloured else "gray"))
                boxes_meta.append(dict(scale=render_scale_text(scale), range=[r.lo, r.hi],
                                       clipped=list(r.clipped),
                                       shrunk=r.pixels.shape[0] // max(1, tile.shape[0])))
            if thumbnails is not None:
                thumbnails[m.name] = render.thumbnail(r.pixels)
            if combine:
                combined = _combine(combined, m.data, combine)
            del r
    if stacking:
        pixels_, boxes = render.stack(tiles, legends, options.columns)
        del tiles
        for box, more in zip(boxes, boxes_meta):
            box.update(more)
        meta = dict(about, bits=bits, colormap=cmap, tiles=boxes)
        yield prefix + f"stack.{ext}", [_encode(pixels_, meta, options)]
        sidecar[f"stack.{ext}"] = meta
        del pixels_
    if combine and combined is not None:
        if combine == "magnitude":
            np.sqrt(combined, out=combined)
        elif combine == "mean":
            combined /= len(names)
        scale = options.scale or "auto"
        if options.ranges_only:
            if ranges is not None:
                ranges[COMBINED_KEY] = render.value_range(combined, scale, None, bits)
            return
        shared = fixed.get(COMBINED_KEY)
        r = render.to_pixels(combined, render.Scale("range", *shared) if shared else scale,
                             bits, None, cmap, config=options.engine)
        meta = _picture_meta(about, scale, r, options, combined.ndim == 2, combined=combine,
                             filters=names)
        if shared:
            meta["scale"] += " shared"
        yield f"combined.{ext}", [_encode(r.pixels, meta, options)]
        sidecar[f"combined.{ext}"] = meta
        if options.overlay:
            under = photo if photo is not None else base
            assert under is not None
            gray = images.as_channels(under, "gray")[0] if under.shape[0] in (1, 3) \
                else under.mean(axis=0)
            pixels_ = render.overlay(combined, r.lo, r.hi, gray, options.colormap,
                                     stretch=photo is None)
            meta = dict(meta, overlay=render.OVERLAY_NOTE,
                        colormap=render.overlay_colormap(options.colormap))
            yield f"overlay.{ext}", [_encode(pixels_, meta, options)]
            sidecar[f"overlay.{ext}"] = meta
    if fmt != "png" and not options.ranges_only:  # JPEG and WebP: ranges beside them
        yield prefix + "maps.json", [(json.dumps(dict(about, pictures=sidecar), indent=2)
                             + "\n").encode()]


COMBINED_KEY = "\0combined"  # the combined map's entry in shared ranges (no filter's name)


def shared_ranges(results: list[Result]) -> tuple[tuple[str, float, float], ...]:
    """One range per map for a whole batch from its first pass (Options.ranges_only): the
    union of every input's own range under its policy (the least lo, the greatest hi), so
    that a value is the same pixel in every input's picture."""
    union: dict[str, tuple[float, float]] = {}
    for r in results:
        for name, (lo, hi) in (r.ranges or {}).items():
            old = union.get(name)
            union[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return tuple((name, lo, hi) for name, (lo, hi) in union.items())


def render_scale_text(scale: str) -> str:
    return render.scale_text(render.parse_scale(scale))


def _picture_meta(about: dict[str, Any], scale: str, r: render.Rendered, options: Options,
                  one_channel: bool, **more: Any) -> dict[str, Any]:
    """What a picture records so its values can be read back (up to quantisation, for the
    pixels that were not clipped: ``clipped`` gives their fractions below lo and above hi).
    A one-channel map drawn through a colormap records it: its value is found from the
    table entry nearest to the pixel's colour."""
    meta = dict(about, **more, scale=render_scale_text(scale), range=[r.lo, r.hi],
                clipped=list(r.clipped), bits=options.bits)
    if options.colormap != "gray" and one_channel:
        meta["colormap"] = options.colormap
        meta["value"] = "lo + i / 255 * (hi - lo), i the colormap entry of the pixel's colour"
    else:
        meta["value"] = "lo + pixel / (2**bits - 1) * (hi - lo)"
    return meta


def _encode(pixels: np.ndarray, meta: dict[str, Any], options: Options) -> bytes:
    if options.format == "png":
        return images.encode_png(pixels, {"convcli": json.dumps(meta)}, options.compression)
    return images.encode_preview(pixels, options.format, options.quality)


def _combine(acc: np.ndarray | None, data: np.ndarray, how: str) -> np.ndarray:
    """Fold one map into the combined map (float32, one extra map in memory): the running
    max (NaN-ignoring), sum (for the mean) or sum of squares (for the magnitude)."""
    if how == "magnitude":
        sq = np.square(data, dtype=np.float32)
        return sq if acc is None else np.add(acc, sq, out=acc)
    if how == "max":
        return data.astype(np.float32, copy=True) if acc is None else \
            np.fmax(acc, data, out=acc)
    return data.astype(np.float32, copy=True) if acc is None else np.add(acc, data, out=acc)


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

    def files_of(maps: network.Maps, prefix: str, scales: dict[str, str], thumbnails=None,
                 ranges=None):
        data, names = maps
        made = [FeatureMap(n, data[k], scales.get(n, "auto")) for k, n in enumerate(names)]
        shapes = [m.data.shape for m in made]
        yield from _map_files(lambda: iter([made]), 1, names, [m.scale for m in made], shapes,
                              "dense", source, options, about, thumbnails, prefix,
                              base=pixels, ranges=ranges)

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
    yield from files_of((data, names), "", scales, result.thumbnails, result.ranges)


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
    if "://" in out:
        from . import storage

        if storage.is_remote(out):
            storage.check_folder(out)  # object stores have no folders to create
            return
        out = storage.local_path(out)
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; give -o a folder (or - for stdout)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the output folder: {e.strerror or e}") from None
    sweep_staging(out)  # left by a run that was killed
