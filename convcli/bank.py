"""Bank files (YAML) -> a validated, frozen :class:`KernelBank`.

A bank is data only. It is read with ruamel.yaml's round-trip loader, which keeps line
numbers, follows YAML 1.2 (``1e-3`` is a float, ``no`` is a string), rejects duplicate keys
and never constructs Python objects; any explicit tag is refused here as well. Every problem
in a file is collected and reported at once, each with file, line, filter and field.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from . import generators, geometry, localnorm, ops
from .engine import BORDER_MODES
from .errors import BankError, Problem, UsageError

if TYPE_CHECKING:
    from .network import Network

FORMAT_VERSION = 1
MAX_KERNEL_SIDE = generators.MAX_GENERATED_SIZE
# Input channels one filter may span (dense layers; VGG's and EfficientNet's deepest layers
# read 4096 and 3840), and groups a layer may split its input into.
MAX_KERNEL_CHANNELS = 4096
MAX_GROUPS = MAX_KERNEL_CHANNELS
MAX_FILTERS = 4096
MAX_WEIGHTS = 1 << 22  # numbers in one filter's weights
MAX_LAYER_WEIGHTS = 1 << 23  # numbers in all the filters of one layer (32 MiB as float32)
MAX_LAYERS = 1024  # layers in one bank file
MAX_NODES = 1 << 23  # values in a whole document, counting every alias expansion
# The YAML reader (ruamel.yaml, pure Python) costs 0.1-0.3 ms and 1 kB per list entry or
# key (measured: 100,000 numbers in 13 s and 150 MB on a slow 2-core VM), so a file's size
# is bounded *before* it is parsed, by counts that take milliseconds. One-line rows of plain
# numbers, most of a bank, are read without it (see _fast_rows): AlexNet's first layer
# (64 x 3 x 11 x 11, 23,232 weights) loads in about half a second there, not eight.
# Worst cases measured on that VM: a 2 MiB string ~2 s, 131,072 comment lines ~2 s,
# 32,768 list entries of words (a 65 kB file) ~3-5 s.
MAX_BANK_BYTES = 2 << 20  # 2 MiB (a long string costs the reader ~1 us a character)
MAX_BANK_LINES = 1 << 17  # 131,072 lines (a blank or comment line costs ~2-15 us)
MAX_BANK_ITEMS = 1 << 15  # 32,768 list entries, keys and aliases left for the YAML reader
MAX_NESTING = 100  # levels of flow lists and mappings
# Weights a bank written by convcli (learn, import) may hold: about 13 bytes each in the
# text, so with rows and names such a bank stays well under MAX_BANK_BYTES; see
# check_written_size for the items.
MAX_DUMP_WEIGHTS = 1 << 16
MAX_PROVENANCE_VALUES = 1 << 16  # free-form notes, kept in memory with the bank
MAX_NAME_CHARS = 200  # a bank's or filter's name: it labels tiles and names files
MAX_TEXT_CHARS = 4096  # a description or source
FLOAT32_MAX = float(np.finfo(np.float32).max)  # ~3.4e38; weights and biases are float32

# Each vocabulary has one owner, which this module reads: border modes are the engine's,
# activation functions ops', and the activations the engine fuses activation's codes (a
# test checks the names agree).
BORDERS = tuple(BORDER_MODES)
# A conv layer's activation: any function of convcli.ops that needs no parameters (or has
# defaults for them). The engine applies FUSED_ACTIVATIONS as it writes each output; the
# others are applied to the layer's maps afterwards (see convcli.network).
FUSED_ACTIVATIONS = ("relu", "none", "abs")  # activation.CODES's names, as messages list them
ACTIVATIONS = FUSED_ACTIVATIONS + tuple(f for f in ops.FUNCTIONS if f not in FUSED_ACTIVATIONS
                                        and f != "clip")  # clip needs its bounds
# gray: luminance of a colour image, 2-D kernels; rgb: 3 x KH x KW kernels over R, G, B;
# depthwise: 2-D kernels, each on every channel on its own; dense: C x KH x KW kernels over
# an input of exactly C channels (C x groups with groups).
INPUT_MODES = ("gray", "rgb", "depthwise", "dense")
SCALES = ("auto", "global", "clip", "symmetric")
# Channels a filter must have in each input mode (rgb: dense over R, G, B); a dense layer's
# filters may have any number, the same for all.
MODE_CHANNELS = {"gray": 1, "rgb": 3, "depthwise": 1}

GEOMETRY_KEYS = ("stride", "padding", "dilation", "border", "activation")
# window_norm: per-window normalisation (convcli.localnorm), a setting of the whole layer:
# it is given in ``defaults`` only, and every filter carries it in its Geometry.
DEFAULT_KEYS = GEOMETRY_KEYS + ("input", "scale", "groups", "window_norm")
TOP_KEYS = ("convcli", "name", "description", "defaults", "filters", "provenance")
# A bank file of several layers has ``layers`` in place of ``defaults`` and ``filters``.
NETWORK_KEYS = ("convcli", "name", "description", "provenance", "layers")
LAYER_TYPES = ("normalize", "conv", "activation", "pool", "lrn")
LAYER_KEYS = {
    "normalize": ("name", "mean", "std"),
    "conv": ("name", "description", "defaults", "filters"),
    "activation": ("name", "function") + ops.PARAMETER_NAMES,
    "pool": ("name", "mode", "kernel", "stride", "padding", "dilation", "ceil_mode",
             "count_include_pad"),
    "lrn": ("name", "size", "alpha", "beta", "bias"),
}
FILTER_KEYS = ("name", "description", "source", "weights", "generator", "bias", "divisor",
               "scale") + GEOMETRY_KEYS

PLAIN_TAGS = {f"tag:yaml.org,2002:{t}"
              for t in ("str", "int", "float", "bool", "null", "seq", "map")}

BUILTIN_DEFAULTS: dict[str, Any] = {
    "stride": (1, 1),
    "padding": "same",
    "dilation": (1, 1),
    "border": "zero",
    "activation": "relu",
    "input": "gray",
    "scale": "auto",
    "groups": 1,
    "window_norm": None,
}


# --- the frozen model ---------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """How one filter is applied: everything that must match for filters to share a pass."""

    stride: tuple[int, int]
    padding: str | tuple[int, int, int, int]  # "same", "valid" or (top, bottom, left, right)
    dilation: tuple[int, int]
    border: str
    activation: str
    # Per-window normalisation (see convcli.localnorm): its epsilon, or None for none.
    window_norm: float | None = None


@dataclass(frozen=True)
class Filter:
    name: str
    weights: np.ndarray  # float32 (C, KH, KW), read-only
    bias: float
    geometry: Geometry
    scale: str
    description: str = ""
    source: str = ""
    group: int = 0  # which of the bank's groups of input channels it reads (torch's groups)


@dataclass(frozen=True)
class KernelBank:
    name: str
    input: str  # one of INPUT_MODES
    filters: tuple[Filter, ...]
    description: str = ""
    origin: str = ""  # the file it came from
    provenance: dict = field(default_factory=dict)
    groups: int = 1  # dense only: the input is split into this many groups of channels

    @property
    def channels(self) -> int:
        """Input channels the filters need: 1 for gray and depthwise (each channel on its
        own), 3 for rgb, C x groups for dense."""
        if self.input == "dense":
            return int(self.filters[0].weights.shape[0]) * self.groups
        return MODE_CHANNELS[self.input]

    def select(self, names: Iterable[str]) -> "KernelBank":
        """Keep only the named filters, in the order given (each keeps its input group)."""
        by_name = {f.name: f for f in self.filters}
        chosen = []
        for n in names:
            if n not in by_name:
                raise UsageError(f"bank {self.name!r} has no filter {n!r}{_hint(n, by_name)}; "
                                 f"see 'convcli bank show {self.name}'")
            chosen.append(by_name[n])
        return replace(self, filters=tuple(chosen))

    def override(self, **settings: Any) -> "KernelBank":
        """Apply command-line settings (already parsed, None = keep) to every filter."""
        geo = {k: v for k, v in settings.items() if k in GEOMETRY_KEYS and v is not None}
        scale = settings.get("scale")
        if "dilation" in geo:
            for f in self.filters:
                try:
                    geometry.check_footprint(f.weights.shape[1:], geo["dilation"])
                except ValueError as e:
                    raise UsageError(f"filter {_label(f.name)!r}: {e}") from None
        filters = tuple(
            replace(f, geometry=replace(f.geometry, **geo), scale=scale or f.scale)
            for f in self.filters
        )
        return replace(self, filters=filters)


@dataclass(frozen=True)
class LayerProblem(Problem):
    """A Problem inside one layer of a layered bank file: named after the file and line."""

    layer: str | None = None

    def __str__(self) -> str:
        where = self.source + (f":{self.line}" if self.line is not None else "")
        parts = [where] + ([f"layer {self.layer!r}"] if self.layer is not None else [])
        if self.filter is not None:
            parts.append(f"filter {self.filter!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ": ".join(parts) + ": " + self.message


# --- setting values: shared by bank files and the command line ------------------------------

def _one_of(allowed: tuple[str, ...], what: str):
    def check(value: Any) -> str:
        if isinstance(value, str) and value in allowed:
            return value
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {_show(value)}"
                         + (_hint(value, allowed) if isinstance(value, str) else ""))
    return check


def _groups(value: Any) -> int:
    if not (geometry.is_int(value) and value >= 1):
        raise ValueError(f"groups must be a whole number >= 1, got {_show(value)}")
    if value > MAX_GROUPS:
        raise ValueError(f"groups must be at most {MAX_GROUPS}, got {_show(value)}")
    return int(value)


def _window_norm(value: Any) -> float | None:
    """true (epsilon localnorm.DEFAULT_EPS), false (off) or {eps: number > 0}."""
    if isinstance(value, bool) or _is_yaml_bool(value):
        return localnorm.DEFAULT_EPS if value else None
    if isinstance(value, dict) and set(value) == {"eps"}:
        try:
            return localnorm.check_eps(value["eps"])
        except ValueError as e:
            raise ValueError(f"window_norm: {e}") from None
    raise ValueError("window_norm must be true, false or {eps: a number > 0}, got "
                     f"{_show(value)}")


SETTING_PARSERS = {
    "stride": lambda v: geometry.pair(v, "stride"),
    "dilation": lambda v: geometry.pair(v, "dilation"),
    "padding": geometry.padding,
    "border": _one_of(BORDERS, "border"),
    "activation": _one_of(ACTIVATIONS, "activation"),
    "input": _one_of(INPUT_MODES, "input"),
    "scale": _one_of(SCALES, "scale"),
    "groups": _groups,
    "window_norm": _window_norm,
}


def parse_setting(key: str, value: Any) -> Any:
    """Validate one setting; raises ValueError with a message that names the setting."""
    return SETTING_PARSERS[key](value)


def parse_cli_setting(key: str, text: str | None) -> Any:
    """A setting typed on the command line: '2', '2,1', 'same', '1,1,2,2'."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    # ASCII digits only, and few enough for int() (Python refuses over 4,300 digits); the
    # parsers then say what range the setting takes.
    values: list[Any] = [int(p) if re.fullmatch(r"[+-]?[0-9]{1,4000}", p) else p for p in parts]
    try:
        return parse_setting(key, values[0] if len(values) == 1 else values)
    except ValueError as e:
        raise UsageError(f"--{key}: {e}") from None


# --- locating banks -----------------------------------------------------------------------

def kernels_dir() -> Path:
    """Built-in banks: inside the installed package, or the checkout's top-level kernels/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the built-in kernels/ folder is missing from this installation")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in kernels_dir().glob("*.yaml"))


def resolve(ref: str) -> Path:
    """A bank reference (built-in name or path to a YAML file) -> the file to read."""
    looks_like_path = any(s in ref for s in ("/", "\\")) or ref.endswith((".yaml", ".yml"))
    if looks_like_path or Path(ref).is_file():
        path = Path(ref)
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "not found"
            raise UsageError(f"bank file {ref} {what}")
        return path
    names = builtin_names()
    if ref not in names:
        raise UsageError(f"no built-in bank {ref!r}{_hint(ref, names)}; built-in banks: "
                         f"{', '.join(names)} (or give a path to a .yaml file)")
    return kernels_dir() / f"{ref}.yaml"


STDIN = "-"  # a bank read from standard input


def load(ref: str) -> KernelBank:
    """Load a single-layer bank by built-in name or path ("-": standard input); raises
    BankError listing every problem (a file of several layers is refused: see
    load_network)."""
    if ref == STDIN:
        return parse(_read_stdin(), source="<stdin>")
    path = resolve(ref)
    return parse(_read(path), source=str(path))


def load_network(ref: str) -> "Network":
    """Load a bank file of one or several layers as a :class:`convcli.network.Network`
    (a single-layer file gives one Conv layer named after the bank); raises BankError
    listing every problem. "-" reads it from standard input."""
    if ref == STDIN:
        return parse_network(_read_stdin(), source="<stdin>")
    path = resolve(ref)
    return parse_network(_read(path), source=str(path))


def _read_stdin() -> str:
    import sys

    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("a bank on stdin (-): stdin is a terminal; pipe the YAML in")
    return _read_from(sys.stdin.buffer, "<stdin>")


def _read(path: Path) -> str:
    """A bank file's text, read no further than MAX_BANK_BYTES; BankError if unreadable."""
    try:
        with open(path, "rb") as fh:
            return _read_from(fh, str(path))
    except OSError as e:
        raise BankError([Problem(str(path), None, None, None,
                                 f"cannot read: {_reason(e)}")]) from None


def _read_from(fh, source: str) -> str:
    def refuse(message: str) -> BankError:
        return BankError([Problem(source, None, None, None, message)])

    data = fh.read(MAX_BANK_BYTES + 1)  # never more than the limit, whatever the stream
    if len(data) > MAX_BANK_BYTES:
        raise refuse(f"is larger than {MAX_BANK_BYTES >> 20} MiB, the most a bank file may be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise refuse(f"cannot read: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                     f"{e.start})") from None


# --- parsing ------------------------------------------------------------------------------

def parse(text: str, source: str = "<bank>", *, fast_rows: bool = True) -> KernelBank:
    """Parse single-layer bank YAML text; ``source`` names the file in error messages.
    ``fast_rows`` reads one-line rows of plain numbers without the YAML reader (see
    _fast_rows); the result is the same either way. A file of several layers is refused
    (see parse_network)."""
    return _Parser(source, fast_rows).parse(text)


def parse_network(text: str, source: str = "<bank>", *, fast_rows: bool = True) -> "Network":
    """Parse bank YAML text of one or several layers into a Network."""
    return _Parser(source, fast_rows).parse_network(text)


class _Parser:
    def __init__(self, source: str, fast_rows: bool = True):
        self.source = source
        self.fast_rows = fast_rows
        self.problems: list[Problem] = []
        self.sizes: dict[int, int] = {}  # expanded size of each node (see _screen)
        self.shapes: dict = {}  # weights lists already measured and converted, by id: YAML
        self.arrays: dict = {}  # aliases may repeat one list in many places
        self.layer: str | None = None  # the layer being read, named in problems
        self.dense: tuple[int, str] | None = None  # a dense layer's channels, and who set them

    def problem(self, line: int | None, filt: str | None, fld: str | None, msg: str) -> None:
        if self.layer is None:
            self.problems.append(Problem(self.source, line, filt, fld, msg))
        else:
            self.problems.append(LayerProblem(self.source, line, filt, fld, msg, self.layer))

    def parse(self, text: str) -> KernelBank:
        doc = self._document(text, "a bank must be a mapping with 'name' and 'filters'")
        if "layers" in doc:
            layers = doc["layers"]
            count = f"{len(layers)} layers" if isinstance(layers, list) else "layers"
            self.problem(_line(doc, "layers"), None, "layers",
                         f"this file holds {count}; a single-layer bank (with 'filters' "
                         "instead of 'layers') is needed here")
            raise BankError(self.problems)
        return self._bank(doc)

    def parse_network(self, text: str) -> "Network":
        from .network import Conv, Network

        doc = self._document(text, "a bank must be a mapping with 'name' and 'filters' or "
                                   "'layers'")
        if "layers" not in doc:
            b = self._bank(doc)
            return Network(name=b.name, description=b.description, layers=(Conv(b.name, b),),
                           origin=self.source, provenance=b.provenance)
        for key in ("defaults", "filters"):
            if key in doc:
                self.problem(_line(doc, key), None, key, "not allowed next to 'layers': a "
                             f"layered file keeps '{key}' inside its conv layers")
        self._unknown_keys(doc, NETWORK_KEYS, None, None, skip=("defaults", "filters"))
        self._version(doc)
        name = self._text(doc, "name", None, required=True)
        description = self._text(doc, "description", None)
        layers = self._layers(doc)
        provenance = self._provenance(doc)
        if self.problems:
            raise BankError(self.problems)
        return Network(name=name, description=description, layers=tuple(layers),
                       origin=self.source, provenance=provenance)

    def _document(self, text: str, not_a_mapping: str) -> dict:
        """The YAML document, read within the limits and screened; BankError otherwise."""
        if not self._prescan(text):
            raise BankError(self.problems)
        quick, rows = _fast_rows(text) if self.fast_rows else (text, _Rows(text, []))
        if not self._count_items(quick):
            raise BankError(self.problems)
        doc = self._load_yaml(quick)
        if len(rows):
            doc = _put_rows(doc, rows) if not self.problems else _AGAIN
            if doc is _AGAIN:  # a row in an odd place, or a YAML error whose message would
                self.problems = []  # quote placeholders: read the text the ordinary way
                if not self._count_items(text):
                    raise BankError(self.problems)
                doc = self._load_yaml(text)
        if self.problems:
            raise BankError(self.problems)
        if not isinstance(doc, dict):
            self.problem(1, None, None, not_a_mapping)
            raise BankError(self.problems)
        if not self._screen(doc):
            raise BankError(self.problems)
        return doc

    def _version(self, doc: dict) -> None:
        version = doc.get("convcli", FORMAT_VERSION)
        if not (geometry.is_int(version) and version == FORMAT_VERSION):
            self.problem(_line(doc, "convcli"), None, "convcli",
                         f"unsupported format version {_show(version)}; this convcli reads "
                         f"version {FORMAT_VERSION}")

    def _provenance(self, doc: dict) -> dict:
        provenance = doc.get("provenance", {})
        if not isinstance(provenance, dict):
            self.problem(_line(doc, "provenance"), None, "provenance", "must be a mapping")
            return {}
        if self.sizes.get(id(provenance), 0) > MAX_PROVENANCE_VALUES:
            self.problem(_line(doc, "provenance"), None, "provenance",
                         f"holds {self.sizes[id(provenance)]:,} values once aliases are "
                         f"expanded; at most {MAX_PROVENANCE_VALUES:,} are allowed")
            return {}
        return _plain(provenance)

    def _bank(self, body: dict, name: str | None = None) -> KernelBank:
        """A single-layer file (name None), or the body of a conv layer called ``name``."""
        self.dense = None
        if name is None:
            self._unknown_keys(body, TOP_KEYS, None, None)
            self._version(body)
            name = self._text(body, "name", None, required=True)
        description = self._text(body, "description", None)
        defaults = self._defaults(body)
        filters = self._filters(body, defaults)
        filters = self._grouped(body, defaults, filters)
        provenance = self._provenance(body) if self.layer is None else {}
        if self.problems:
            raise BankError(self.problems)
        return KernelBank(name=name, input=defaults["input"], filters=tuple(filters),
                          description=description, origin=self.source,
                          provenance=provenance, groups=defaults["groups"])

    def _grouped(self, body: dict, defaults: dict, filters: list[Filter]) -> list[Filter]:
        """Check groups and the layer's size; each filter learns its input group."""
        groups, line = defaults["groups"], defaults["_lines"].get("groups")
        items = body.get("filters")
        declared = len(items) if isinstance(items, list) else 0
        if groups != 1 and defaults["input"] != "dense":
            self.problem(line, None, "defaults.groups", f"groups apply to input 'dense' only, "
                         f"not {defaults['input']!r}")
        elif declared and declared % groups:
            self.problem(line, None, "defaults.groups", f"groups ({groups}) must divide the "
                         f"number of filters ({declared})")
        elif groups != 1 and len(filters) == declared:
            per = declared // groups
            filters = [replace(f, group=i // per) for i, f in enumerate(filters)]
        total = sum(f.weights.size for f in filters)
        if total > MAX_LAYER_WEIGHTS:
            self.problem(_line(body, "filters"), None, "filters",
                         f"the filters hold {total:,} weights in all; a layer may hold at most "
                         f"{MAX_LAYER_WEIGHTS:,}")
        return filters

    # --- layered files ------------------------------------------------------------------

    def _layers(self, doc: dict) -> list:
        items = doc.get("layers")
        if not isinstance(items, list) or not items:
            self.problem(_line(doc, "layers"), None, "layers", "must be a non-empty list of "
                         "layers, each a mapping with one key naming its type ("
                         + ", ".join(LAYER_TYPES) + ")")
            return []
        if len(items) > MAX_LAYERS:
            self.problem(_line(doc, "layers"), None, "layers",
                         f"{len(items):,} layers; at most {MAX_LAYERS} are allowed")
            return []
        out: list = []
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            line = _item_line(items, index)
            if not (isinstance(item, dict) and len(item) == 1):
                self.layer = f"#{index + 1}"
                self.problem(line, None, None, "a layer must be a mapping with exactly one key "
                             "naming its type (" + ", ".join(LAYER_TYPES) + "), e.g. "
                             "{pool: {mode: max, kernel: 2}}")
                self.layer = None
                continue
            ((kind, body),) = item.items()
            if kind not in LAYER_TYPES:
                self.layer = f"#{index + 1}"
                shown = _label(str(kind)) if isinstance(kind, str) else _show(kind)
                self.problem(_line(item, kind), None, None, f"unknown layer type {shown!r}"
                             f"{_hint(str(kind), LAYER_TYPES)}; known: "
                             + ", ".join(LAYER_TYPES))
                self.layer = None
                continue
            default = f"{index + 1:02d}-{kind}"
            self.layer = default
            if not isinstance(body, dict):
                self.problem(_line(item, kind), None, None, f"a {kind} layer must be a mapping "
                             f"of its settings, got {_show(body)}")
                self.layer = None
                continue
            raw = body.get("name")
            if isinstance(raw, str) and raw.strip():
                self.layer = _label(raw)
            name = self._text(body, "name", None, limit=MAX_NAME_CHARS) if "name" in body \
                else default
            if name in seen:
                self.problem(_line(body, "name") or line, None, "name",
                             f"duplicate layer name (first used on line {seen[name]})")
            elif name:
                seen[name] = _line(body, "name") or line or 0
            before = len(self.problems)
            self._unknown_keys(body, LAYER_KEYS[kind], None, None)
            try:
                layer = getattr(self, f"_{kind}_layer")(body, name or default)
            except BankError:  # a conv layer stops at its own problems; the others go on
                layer = None
            if layer is not None and len(self.problems) == before:
                out.append(layer)
            self.layer = None
        return out

    def _conv_layer(self, body: dict, name: str):
        from .network import Conv

        return Conv(name, self._bank(body, name))

    def _normalize_layer(self, body: dict, name: str):
        from .network import Normalize

        mean = self._values(body, "mean", positive=False)
        std = self._values(body, "std", positive=True)
        if mean is None or std is None:
            return None
        if len(mean) > 1 and len(std) > 1 and len(mean) != len(std):
            self.problem(_line(body, "std"), None, "std", f"has {len(std)} values but mean has "
                         f"{len(mean)}; give one per channel (or one for every channel)")
            return None
        return Normalize(name, mean, std)

    def _lrn_layer(self, body: dict, name: str):
        from .network import LRN

        if "size" not in body:
            self.problem(_node_line(body), None, "size", "missing (the channels each window "
                         "spans)")
            return None
        size = body["size"]
        if not (geometry.is_int(size) and 1 <= size <= ops.MAX_LRN_SIZE):
            self.problem(_line(body, "size"), None, "size", "must be a whole number of "
                         f"channels from 1 to {ops.MAX_LRN_SIZE}, got {_show(size)}")
            return None
        numbers = {}
        for key, default in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)):
            v = body.get(key, default)
            number = _as_float(v) if _is_number(v) else math.nan
            if not (math.isfinite(number) and abs(number) <= FLOAT32_MAX):
                self.problem(_line(body, key), None, key, "must be a finite number within "
                             f"float32's range, got {_show(v)}")
                return None
            numbers[key] = number
        return LRN(name, int(size), **numbers)

    def _values(self, body: dict, key: str, positive: bool) -> tuple[float, ...] | None:
        """A number or a non-empty list of numbers (one per channel), within float32."""
        if key not in body:
            self.problem(_node_line(body), None, key, "missing (a number, or a list of one "
                         "number per channel)")
            return None
        raw, line = body[key], _line(body, key)
        values = raw if isinstance(raw, list) else [raw]
        if not values or len(values) > MAX_KERNEL_CHANNELS:
            self.problem(line, None, key, f"must hold 1 to {MAX_KERNEL_CHANNELS} numbers, got "
                         f"{len(values):,}")
            return None
        out = []
        for v in values:
            number = _as_float(v) if _is_number(v) else math.nan
            ok = math.isfinite(number) and abs(number) <= FLOAT32_MAX
            if positive and not (ok and np.float32(number) > 0):
                self.problem(line, None, key, "must be numbers > 0 within float32's range, got "
                             f"{_show(v)}")
                return None
            if not ok:
                self.problem(line, None, key, "must be finite numbers within float32's range "
                             f"(about ±{FLOAT32_MAX:.3g}), got {_show(v)}")
                return None
            out.append(number)
        return tuple(out)

    def _activation_layer(self, body: dict, name: str):
        from .network import Activation

        function = body.get("function")
        if "function" not in body:
            self.problem(_node_line(body), None, "function", "missing (one of "
                         + ", ".join(ops.FUNCTIONS) + ")")
            return None
        if not (isinstance(function, str) and function in ops.FUNCTIONS):
            hint = _hint(function, ops.FUNCTIONS) if isinstance(function, str) else ""
            self.problem(_line(body, "function"), None, "function", "must be one of "
                         f"{', '.join(ops.FUNCTIONS)}; got {_show(function)}{hint}")
            return None
        takes = ops.PARAMETERS.get(function, {})
        params = dict(takes)
        for key in ops.PARAMETER_NAMES:
            if key not in body:
                continue
            if key not in takes:
                what = f"takes {', '.join(takes)}" if takes else "takes no parameters"
                self.problem(_line(body, key), None, key, f"does not apply to {function} "
                             f"({function} {what})")
                continue
            v = body[key]
            number = _as_float(v) if _is_number(v) else math.nan
            bounds = key in ("min", "max")  # clip's bounds may be .inf; the rest finite
            if math.isnan(number) or (not bounds and not math.isfinite(number)):
                self.problem(_line(body, key), None, key, "must be a "
                             + ("number (.inf and -.inf allowed)" if bounds else
                                "finite number") + f", got {_show(v)}")
                continue
            params[key] = number
        if function == "clip" and params["min"] > params["max"]:
            self.problem(_line(body, "min") or _line(body, "max"), None, "min",
                         f"clip needs min <= max, got min {params['min']:g} and max "
                         f"{params['max']:g}")
        return Activation(name, function, tuple(params.items()))

    def _pool_layer(self, body: dict, name: str):
        from .network import Pool

        n_before = len(self.problems)
        mode = body.get("mode")
        if "mode" not in body:
            self.problem(_node_line(body), None, "mode", "missing (max or avg)")
        elif mode not in ("max", "avg"):
            hint = _hint(mode, ("max", "avg")) if isinstance(mode, str) else ""
            self.problem(_line(body, "mode"), None, "mode", f"must be max or avg, got "
                         f"{_show(mode)}{hint}")
        settings: dict[str, Any] = {}
        parsers = {
            "kernel": lambda v: geometry.pair(v, "kernel", maximum=MAX_KERNEL_SIDE),
            "stride": lambda v: geometry.pair(v, "stride", maximum=MAX_KERNEL_SIDE),
            "padding": geometry.padding,
            "dilation": lambda v: geometry.pair(v, "dilation"),
            "ceil_mode": lambda v: _flag(v, "ceil_mode"),
            "count_include_pad": lambda v: _flag(v, "count_include_pad"),
        }
        for key, parser in parsers.items():
            if key in body:
                try:
                    settings[key] = parser(body[key])
                except ValueError as e:
                    self.problem(_line(body, key), None, key, str(e))
        if "kernel" not in body:
            self.problem(_node_line(body), None, "kernel", "missing (a whole number or [kh, kw])")
        if mode == "avg" and "dilation" in body:
            self.problem(_line(body, "dilation"), None, "dilation",
                         "applies to max pooling only (average pooling has no dilation)")
        if mode == "max" and "count_include_pad" in body:
            self.problem(_line(body, "count_include_pad"), None, "count_include_pad",
                         "applies to average pooling only")
        if len(self.problems) > n_before:
            return None
        kernel = settings["kernel"]
        dilation = settings.get("dilation", (1, 1))
        padding = settings.get("padding", (0, 0, 0, 0))
        try:
            geometry.check_footprint(kernel, dilation)
        except ValueError as e:
            self.problem(_line(body, "dilation"), None, "dilation", str(e))
            return None
        if isinstance(padding, str) and settings.get("ceil_mode"):
            self.problem(_line(body, "ceil_mode"), None, "ceil_mode",
                         f"applies to explicit padding, not padding {padding!r}")
            return None
        return Pool(name, str(mode), kernel, settings.get("stride", kernel), padding, dilation,
                    settings.get("ceil_mode", False), settings.get("count_include_pad", True))

    def _prescan(self, text: str) -> bool:
        """Bound what the YAML reader will cost before it starts, by counts that take
        milliseconds even at the limits (str.count runs in C). Returns False if the text is
        too large to read."""
        if len(text) > MAX_BANK_BYTES:
            self.problem(None, None, None, f"is larger than {MAX_BANK_BYTES >> 20} MiB, the "
                         "most a bank file may be")
            return False
        lines = sum(text.count(c) for c in "\n\r\x85\u2028\u2029") - text.count("\r\n")
        if lines > MAX_BANK_LINES:
            self.problem(None, None, None, f"has {lines:,} lines; a bank file may have at most "
                         f"{MAX_BANK_LINES:,}")
            return False
        # The reader's cost grows with the square of flow nesting ([[[[...), and it gives up
        # past about 300 levels anyway; a bank needs 4. Brackets in strings count too.
        opens = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
        step = np.isin(opens, (0x5B, 0x7B)).astype(np.int32) - np.isin(opens, (0x5D, 0x7D))
        deepest = int(np.cumsum(step).max(initial=0))
        if deepest > MAX_NESTING:
            self.problem(None, None, None, f"nests lists or mappings {deepest:,} deep (counting "
                         f"'[' and '{{'); at most {MAX_NESTING} are allowed")
            return False
        return True

    def _count_items(self, text: str) -> bool:
        """The YAML reader's cost, from the indicators every list entry, key, alias or anchor
        needs: ',', '[', '{', '*', '&', and '-', ':', '?' before a space or line break (an
        anchor, the costliest, counts twice with its entry). Rows read by _fast_rows count
        as one."""
        items = sum(text.count(c) for c in ",[{*&") + sum(
            text.count(mark + space) for mark in "-:?" for space in " \t\n\r")
        if items > MAX_BANK_ITEMS:
            self.problem(None, None, None, f"has about {items:,} list entries and keys; a bank "
                         f"file may have at most {MAX_BANK_ITEMS:,} (counted before reading "
                         "the YAML)")
            return False
        return True

    def _load_yaml(self, text: str) -> Any:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import MarkedYAMLError, YAMLError

        yaml = YAML(typ="rt")  # keeps line numbers; constructs plain data only
        yaml.allow_duplicate_keys = False
        try:
            with warnings.catch_warnings():
                # ruamel.yaml warns about some oddities (an anchor defined twice): here they
                # are problems like any other, never a raw Python warning on stderr.
                warnings.simplefilter("error")
                return yaml.load(text)
        except MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else None
            what = " ".join(str(x) for x in (e.context, e.problem) if x)
            self.problem(line, None, None, f"not valid YAML: {_one_line(what)}")
        except (YAMLError, RecursionError, ValueError) as e:
            self.problem(None, None, None, f"not valid YAML: {_one_line(str(e))}")
        except Exception as e:  # ruamel.yaml itself fails on some odd scalars (fuzzing: "-_")
            self.problem(None, None, None, f"not valid YAML ({type(e).__name__} in the YAML "
                         f"parser: {_one_line(str(e))})")
        return None

    def _screen(self, doc: Any) -> bool:
        """Refuse explicit tags (e.g. !!python/object: a bank is data, not code) and documents
        that YAML aliases blow up (a "billion laughs"). Returns False if walking on is unsafe.

        Each distinct node is visited once and its expanded size memoised, so this is linear
        in the file even when aliases repeat one list many times.
        """
        sizes: dict[int, int] = {}

        def visit(node: Any) -> int:
            tag = getattr(getattr(node, "tag", None), "value", None)
            if tag is not None and tag not in PLAIN_TAGS:
                self.problem(_node_line(node), None, None, f"tag {tag} is not allowed in a bank")
            if type(node) is _Row:  # plain numbers only
                return 1 + len(node)
            if not isinstance(node, (dict, list)):
                return 1
            if id(node) in sizes:
                return sizes[id(node)]
            sizes[id(node)] = 1  # provisional, also stops self-referencing aliases
            if isinstance(node, dict):
                for key in node:  # keys are only looked at for tags
                    if not isinstance(key, str):
                        visit(key)
            size = 1 + sum(visit(c) for c in (node.values() if isinstance(node, dict) else node))
            sizes[id(node)] = size
            return size

        total = visit(doc)
        self.sizes = sizes
        if total > MAX_NODES:
            self.problem(None, None, None, f"the document expands to {total:,} values through "
                         f"aliases; at most {MAX_NODES:,} are allowed")
            return False
        return True

    def _unknown_keys(self, mapping: dict, allowed: Iterable[str], filt: str | None,
                      where: str | None, skip: Iterable[str] = ()) -> None:
        allowed, skip = tuple(allowed), tuple(skip)
        for key in mapping:
            if key not in allowed and key not in skip:
                shown = _label(f"{where}.{key}" if where else str(key))
                self.problem(_line(mapping, key), filt, shown,
                             f"unknown key{_hint(str(key), allowed)}; allowed: "
                             f"{', '.join(allowed)}")

    def _text(self, mapping: dict, key: str, filt: str | None, required: bool = False,
              limit: int = MAX_TEXT_CHARS) -> str:
        if key not in mapping:
            if required:
                self.problem(_node_line(mapping), filt, key, "missing (a non-empty string)")
            return ""
        value = mapping[key]
        if not isinstance(value, str) or (required and not value.strip()):
            self.problem(_line(mapping, key), filt, key,
                         f"must be a non-empty string, got {_show(value)}")
            return ""
        if len(value) > limit:
            self.problem(_line(mapping, key), filt, key, f"is {len(value):,} characters long; "
                         f"at most {limit:,} are allowed")
            return ""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # "\udcff" in a quoted string: not a character
            self.problem(_line(mapping, key), filt, key, f"holds {value[e.start]!r}, half of a "
                         "UTF-16 surrogate pair, which is not a character")
            return ""
        return str(value)

    def _defaults(self, doc: dict) -> dict[str, Any]:
        merged = dict(BUILTIN_DEFAULTS, _lines={})
        given = doc.get("defaults", {})
        if not isinstance(given, dict):
            self.problem(_line(doc, "defaults"), None, "defaults", "must be a mapping")
            return merged
        self._unknown_keys(given, DEFAULT_KEYS, None, "defaults")
        for key in DEFAULT_KEYS:
            if key in given:
                try:
                    merged[key] = parse_setting(key, given[key])
                except ValueError as e:
                    self.problem(_line(given, key), None, f"defaults.{key}", str(e))
        merged["_lines"] = {k: _line(given, k) for k in given if isinstance(k, str)}
        return merged

    def _filters(self, doc: dict, defaults: dict[str, Any]) -> list[Filter]:
        items = doc.get("filters")
        if not isinstance(items, list) or not items:
            self.problem(_line(doc, "filters") if "filters" in doc else
                         (_node_line(doc) or 1) if self.layer else 1, None, "filters",
                         "must be a non-empty list of filters")
            return []
        if len(items) > MAX_FILTERS:
            self.problem(_line(doc, "filters"), None, "filters",
                         f"{len(items)} filters; at most {MAX_FILTERS} are allowed")
            return []
        out: list[Filter] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            line = _item_line(items, index)
            if not isinstance(item, dict):
                self.problem(line, f"#{index + 1}", None, "a filter must be a mapping")
                continue
            raw_name = item.get("name")
            label = _label(raw_name) if isinstance(raw_name, str) and raw_name.strip() \
                else f"#{index + 1}"
            name = self._text(item, "name", label, required=True, limit=MAX_NAME_CHARS)
            if name in seen:
                self.problem(_line(item, "name"), name, "name",
                             f"duplicate filter name (first used on line {seen[name]})")
            elif name:
                seen[name] = _line(item, "name") or 0
            built = self._filter(item, label, defaults)
            if built is not None and name:
                out.append(replace(built, name=name))
        return out

    def _filter(self, item: dict, label: str, defaults: dict[str, Any]) -> Filter | None:
        self._unknown_keys(item, FILTER_KEYS, label, None)
        n_before = len(self.problems)
        weights = self._weights(item, label, MODE_CHANNELS.get(defaults["input"]),
                                defaults["input"])
        settings = dict(defaults)
        for key in GEOMETRY_KEYS + ("scale",):
            if key in item:
                try:
                    settings[key] = parse_setting(key, item[key])
                except ValueError as e:
                    self.problem(_line(item, key), label, key, str(e))
        bias = self._number(item, "bias", label, 0.0)
        divisor = self._number(item, "divisor", label, 1.0)
        if divisor == 0:
            self.problem(_line(item, "divisor"), label, "divisor", "must not be zero")
        description = self._text(item, "description", label)
        source = self._text(item, "source", label)
        if weights is None or len(self.problems) > n_before:
            return None
        try:
            geometry.check_footprint(weights.shape[1:], settings["dilation"])
        except ValueError as e:
            line = _line(item, "dilation") or defaults["_lines"].get("dilation") or \
                _line(item, "weights") or _line(item, "generator")
            self.problem(line, label, "dilation", str(e))
            return None
        with np.errstate(all="ignore"):  # overflow and underflow are checked just below
            w = (weights / divisor).astype(np.float32)
        if divisor != 1 and not np.isfinite(w).all():
            self.problem(_line(item, "divisor"), label, "divisor",
                         f"weights / divisor leave float32's range (about ±{FLOAT32_MAX:.3g})")
            return None
        if np.any(weights) and not np.any(w):
            why = "weights / divisor" if divisor != 1 else "the weights"
            self.problem(_line(item, "divisor") if divisor != 1 else
                         _line(item, "weights") or _line(item, "generator"), label,
                         "divisor" if divisor != 1 else "weights",
                         f"{why} are all too small for float32 (under about 1.4e-45) and would "
                         "all be zero")
            return None
        w.flags.writeable = False
        geo = Geometry(**{k: settings[k] for k in GEOMETRY_KEYS},
                       window_norm=defaults["window_norm"])
        return Filter(name=label, weights=w, bias=float(bias), geometry=geo,
                      scale=settings["scale"], description=description, source=source)

    def _number(self, item: dict, key: str, label: str, default: float) -> float:
        if key not in item:
            return default
        value = item[key]
        number = _as_float(value) if _is_number(value) else math.nan
        if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
            self.problem(_line(item, key), label, key, "must be a finite number within "
                         f"float32's range (about ±{FLOAT32_MAX:.3g}), got {_show(value)}")
            return default
        return number

    def _weights(self, item: dict, label: str, want: int | None, mode: str
                 ) -> np.ndarray | None:
        """(C, KH, KW) float64 weights; ``want`` channels (None: dense, any number but the
        same for every filter of the layer)."""
        has_w, has_g = "weights" in item, "generator" in item
        if has_w == has_g:
            self.problem(_node_line(item), label, "weights",
                         "give exactly one of 'weights' or 'generator'")
            return None
        line = _line(item, "weights") or _line(item, "generator")
        if has_g:
            arr = self._generated(item, label)
            if arr is None:
                return None
            channels = 1
        else:
            arr = None
            raw = item["weights"]
            shape = _nested_shape(raw, memo=self.shapes)
            if isinstance(shape, str):
                self.problem(line, label, "weights", shape)
                return None
            if len(shape) not in (2, 3):
                self.problem(line, label, "weights",
                             "must be a KH x KW matrix or a C x KH x KW list of matrices")
                return None
            sizes = shape[-2:]
            if max(sizes) > MAX_KERNEL_SIDE or (len(shape) == 3 and shape[0] > MAX_KERNEL_CHANNELS):
                self.problem(line, label, "weights",
                             f"kernel of shape {' x '.join(map(str, shape))} is too large (at "
                             f"most {MAX_KERNEL_CHANNELS} channels of {MAX_KERNEL_SIDE} x "
                             f"{MAX_KERNEL_SIDE})")
                return None
            channels = shape[0] if len(shape) == 3 else 1
        if want is None and self.dense is not None and channels != self.dense[0]:
            self.problem(line, label, "weights", f"has {channels} channels but filter "
                         f"{self.dense[1]!r} has {self.dense[0]}; every filter of a dense "
                         "layer spans the same input channels")
            return None
        if want is None and self.dense is None:
            self.dense = (channels, label)
        if want is not None and channels != want:  # before reading the numbers: cheap, and
            # says the real problem
            kind = "2-D (KH x KW) weights" if want == 1 else f"{want} x KH x KW weights"
            self.problem(line, label, "weights", f"has {channels} channels but the bank's "
                         f"input mode {mode!r} needs {kind}")
            return None
        if has_g:
            return arr
        try:
            arr = _to_array(raw, len(shape), self.arrays)
        except _NotANumber as e:
            self.problem(_value_line(raw, e.value) or line, label, "weights",
                         f"must hold numbers only, found {_show(e.value)}")
            return None
        with np.errstate(invalid="ignore"):  # NaN compares False: counted as out of range
            outside = ~(np.abs(arr) <= FLOAT32_MAX)
        if outside.any():
            where = np.unravel_index(int(np.flatnonzero(outside)[0]), arr.shape)
            first = _element(raw, tuple(int(i) for i in where))
            self.problem(_value_line(raw, first) or line, label, "weights",
                         "must be finite numbers within float32's range (about "
                         f"±{FLOAT32_MAX:.3g}; no .nan or .inf), found {_show(first)}")
            return None
        return arr if arr.ndim == 3 else arr[None]

    def _generated(self, item: dict, label: str) -> np.ndarray | None:
        spec, line = item["generator"], _line(item, "generator")
        if not isinstance(spec, dict) or "type" not in spec:
            self.problem(line, label, "generator", "must be a mapping with a 'type', e.g. "
                         "{type: gaussian, sigma: 2}")
            return None
        kind = spec["type"]
        func = generators.GENERATORS.get(kind) if isinstance(kind, str) else None
        if func is None:
            self.problem(_line(spec, "type"), label, "generator.type",
                         f"unknown generator {_show(kind)}"
                         f"{_hint(kind, generators.GENERATORS) if isinstance(kind, str) else ''}"
                         f"; known: {', '.join(generators.GENERATORS)}")
            return None
        params = {k: v for k, v in spec.items() if k != "type"}
        accepted = list(inspect.signature(func).parameters)
        unknown = [k for k in params if k not in accepted]
        for k in unknown:
            self.problem(_line(spec, k), label, f"generator.{_label(str(k))}",
                         f"unknown parameter for {kind}{_hint(str(k), accepted)}; "
                         f"accepted: {', '.join(accepted) or 'none'}")
        if unknown:
            return None
        try:
            with np.errstate(all="ignore"):  # the result is checked below, never a warning
                k2d = np.asarray(func(**_plain(params)), dtype=np.float64)
        except generators.ParameterError as e:
            self.problem(_line(spec, e.param) or line, label, f"generator.{e.param}", str(e))
            return None
        except (TypeError, ValueError, ArithmeticError) as e:
            self.problem(line, label, "generator",
                         f"bad parameters for {kind}: {_one_line(str(e))}")
            return None
        with np.errstate(invalid="ignore"):
            finite = bool((np.abs(k2d) <= FLOAT32_MAX).all())
        if not finite:
            self.problem(line, label, "generator", f"these {kind} parameters give weights that "
                         "are not finite in float32")
            return None
        if not np.any(k2d.astype(np.float32)):
            self.problem(line, label, "generator", f"these {kind} parameters give a kernel of "
                         "all zeros (every map would be zero)")
            return None
        return k2d[None]


# --- one-line rows of numbers, read without the YAML reader --------------------------------
#
# ruamel.yaml's pure-Python reader spends ~0.1-0.3 ms on every number, which makes a bank of
# ten thousand weights take seconds. Rows such as "[0.25, -1, 3e-2]" on one line are most of
# a bank's text, so they are read here instead, with the YAML 1.2 rules for plain decimal
# numbers (the subset of ruamel.yaml's own resolver without '_', hex, octal, binary, .inf or
# .nan; a row holding anything else is left to ruamel.yaml): each becomes a placeholder
# scalar for the reader, then the list of numbers again. So do whole matrices of such rows
# and lists of matrices on one line ("[[1, 2], [3, 4]]", "[[[1]], [[2]]]": how dump_network
# writes a filter's weights, so that a deep layer costs the reader one item per filter, not
# one per row). A row inside a string, a comment or a block scalar comes back as its
# original text; a row after a tag, or a placeholder that ends up as a mapping key, makes
# the whole text go through the reader unchanged.

_NUMBER = (r"[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+(?:[eE][-+]?[0-9]+)?"
           r"|\.[0-9]+(?:[eE][-+][0-9]+)?)")
# At most MAX_KERNEL_SIDE numbers: a longer row is refused anyway, after the reader's items
# have been counted, and the bounded repetition keeps a failing match cheap (likewise rows
# in a matrix and matrices in a list). Spaces only inside (a tab is not allowed everywhere a
# row may stand, in a plain string say), and only ASCII white space, '[' or ',' around it:
# where the reader itself would see a row start and end.
_ROW_ONLY = rf"\[ *{_NUMBER}(?: *, *{_NUMBER}){{0,{MAX_KERNEL_SIDE - 1}}} *\]"
_MATRIX = rf"\[ *{_ROW_ONLY}(?: *, *{_ROW_ONLY}){{0,{MAX_KERNEL_SIDE - 1}}} *\]"
_MATRICES = rf"\[ *{_MATRIX}(?: *, *{_MATRIX}){{0,{MAX_KERNEL_CHANNELS - 1}}} *\]"
_ROW = re.compile(rf"(?:(?<=[ \t\r\n\[,])|^)(?:{_MATRICES}|{_MATRIX}|{_ROW_ONLY})"
                  rf"(?=[ \t\r\n,\]}}]|$)", re.M)
_TOKEN = re.compile(rf"\[|\]|{_NUMBER}")
_INTEGER = re.compile(r"[-+]?[0-9]+")
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"  # private-use: never in a real bank
_PLACEHOLDER = re.compile(f"{_MARK_OPEN}([0-9]+){_MARK_CLOSE}")
_AGAIN = object()


class _Row(list):
    """A row of plain numbers read by _fast_rows; ``line`` is set once its place is known."""

    line: int | None = None

    def place(self, line: int | None) -> None:
        self.line = self.line or line


class _Block(list):
    """A list of _Rows (a matrix) or of matrices read by _fast_rows, on one line."""

    line: int | None = None

    def place(self, line: int | None) -> None:
        self.line = self.line or line
        for item in self:
            item.place(line)


class _Rows:
    """The rows _fast_rows took out, turned into numbers only when the document uses them."""

    def __init__(self, text: str, spans: list[tuple[int, int]]):
        self.text, self.spans = text, spans
        self.made: dict[int, _Row | _Block | None] = {}

    def __len__(self) -> int:
        return len(self.spans)

    def original(self, i: int) -> str:
        start, end = self.spans[i]
        return self.text[start:end]

    def row(self, i: int) -> _Row | _Block | None:
        """The numbers, or None when one is too long to convert cheaply."""
        if i not in self.made:
            tokens = _TOKEN.findall(self.original(i))
            if any(len(t) > 400 for t in tokens):
                self.made[i] = None
            else:
                stack: list[list] = [[]]
                for t in tokens:
                    if t == "[":
                        stack.append([])
                    elif t == "]":
                        items = stack.pop()
                        nested = bool(items) and isinstance(items[0], list)
                        stack[-1].append(_Block(items) if nested else _Row(items))
                    else:
                        stack[-1].append(int(t) if _INTEGER.fullmatch(t) else float(t))
                self.made[i] = stack[0][0]
        return self.made[i]


def _fast_rows(text: str, limit: int = MAX_BANK_ITEMS) -> tuple[str, _Rows]:
    """(text with each one-line row of plain numbers replaced by a placeholder, the rows).
    Stops replacing after ``limit`` rows: each leaves at least one item for the reader, so
    the text is refused by the item count anyway."""
    if _MARK_OPEN in text or _MARK_CLOSE in text:
        return text, _Rows(text, [])
    spans: list[tuple[int, int]] = []
    parts: list[str] = []
    last = 0
    for m in _ROW.finditer(text):
        start = m.start()
        before = text[max(0, start - 64):start].rstrip(" \t")
        if before and before[-1] not in "[,\n" and "!" in before.rsplit(None, 1)[-1]:
            continue  # after a tag (e.g. !!seq): the reader decides what it means
        parts.append(text[last:start])
        parts.append(f"{_MARK_OPEN}{len(spans)}{_MARK_CLOSE}")
        spans.append((start, m.end()))
        last = m.end()
        if len(spans) > limit:
            break
    parts.append(text[last:])
    return "".join(parts), _Rows(text, spans)


def _put_rows(doc: Any, rows: _Rows) -> Any:
    """Put the rows back in place of their placeholders (in place), or _AGAIN."""
    seen: set[int] = set()

    def restore(text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: rows.original(int(m.group(1))), text)

    def fix(value: str, line: int | None) -> Any:
        """What to store instead of the string ``value``, or _AGAIN."""
        if type(value) is str:  # plain or quoted; block scalars have their own types
            m = _PLACEHOLDER.fullmatch(value)
            if m:
                row = rows.row(int(m.group(1)))
                if row is None:
                    return _AGAIN
                row.place(line)
                return row
        if _MARK_OPEN in value:
            return restore(value) if type(value) is str else _AGAIN
        return value

    if isinstance(doc, str):
        new = fix(doc, 1)
        return _AGAIN if new is _AGAIN or isinstance(new, (_Row, _Block)) else new
    stack = [doc]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            places = [(key, _value_line_of(node, key)) for key in node]
            if any(_MARK_OPEN in (key if isinstance(key, str) else repr(key)) for key in node):
                return _AGAIN  # a row as (part of) a key: rare, and the reader knows best
        elif isinstance(node, list):
            places = [(i, None) for i in range(len(node))]
        else:
            continue
        for place, line in places:
            value = node[place]
            if isinstance(value, (dict, list)):
                stack.append(value)
            elif isinstance(value, str):
                new = fix(value, line if isinstance(node, dict) else _item_line(node, place))
                if new is _AGAIN:
                    return _AGAIN
                if new is not value:
                    node[place] = new
    return doc


def _value_line_of(mapping: Any, key: Any) -> int | None:
    try:
        return mapping.lc.value(key)[0] + 1
    except Exception:
        return None


# --- writing ------------------------------------------------------------------------------

def check_written_size(filters: int, channels: int, kh: int, kw: int) -> None:
    """ValueError unless a bank of this many filters of this shape, as dump() writes it,
    loads again: weights at most MAX_DUMP_WEIGHTS, and items for the YAML reader (about
    eight keys and entries per filter, one more per channel and per row) under
    MAX_BANK_ITEMS."""
    weights = filters * channels * kh * kw
    items = filters * (8 + channels + channels * kh) + 64
    what = f"{filters:,} filters of {channels}x{kh}x{kw}"
    if filters > MAX_FILTERS:
        raise ValueError(f"{filters:,} filters; a bank holds at most {MAX_FILTERS}")
    if max(kh, kw) > MAX_KERNEL_SIDE:
        raise ValueError(f"kernels of {kh}x{kw}; at most {MAX_KERNEL_SIDE} along each axis")
    if weights > MAX_DUMP_WEIGHTS:
        raise ValueError(f"{what} are {weights:,} weights; a bank file holds at most "
                         f"{MAX_DUMP_WEIGHTS:,}")
    if items > MAX_BANK_ITEMS:
        raise ValueError(f"{what} need about {items:,} rows and keys in a bank file; it holds "
                         f"at most {MAX_BANK_ITEMS:,}")


def dump(*, name: str, description: str, defaults: dict, filters: list[dict],
         provenance: dict | None = None, header: str = "") -> str:
    """Bank YAML text for filters given as dicts (name, weights (C, KH, KW) or (KH, KW)
    arrays, and any other filter keys). Weights are rounded to 7 significant digits, the
    float32 precision they are used at; the text is checked to load before it is returned."""
    from io import StringIO

    from ruamel.yaml import YAML

    def num(v: float) -> float:
        return float(f"{float(v):.7g}")

    rows = []
    for f in filters:
        f = dict(f)
        w = np.asarray(f.pop("weights"), np.float64)
        if w.ndim == 3 and w.shape[0] == 1 and defaults.get("input", "gray") != "rgb":
            w = w[0]
        item = {"name": f.pop("name")}
        item.update({k: (num(v) if k == "bias" else v) for k, v in f.items()})
        item["weights"] = np.vectorize(num, otypes=[float])(w).tolist()
        rows.append(item)
    doc = {"convcli": FORMAT_VERSION, "name": name, "description": description}
    if provenance:
        doc["provenance"] = provenance
    doc.update(defaults=defaults, filters=rows)
    buf = StringIO()
    yaml = YAML()
    yaml.default_flow_style = None  # rows of numbers as [a, b, c]
    yaml.width = 1 << 30  # a row on one line, as parse() reads fastest
    yaml.dump(doc, buf)
    text = header + buf.getvalue()
    parse(text, source=name)  # what we write must load
    return text


# Bytes dump_network may write for one weight: the longest shortest-decimal of a float32
# ("-0.000123456789") and ", ".
_WEIGHT_BYTES = 18


def check_written_network(layers: list[dict]) -> None:
    """ValueError, naming the first layer past a limit, unless layers as dump_network writes
    them fit in a bank file: MAX_BANK_BYTES of text (each weight up to 18 bytes: about
    110,000 weights in all), MAX_BANK_ITEMS keys and entries for the YAML reader (each
    filter's weights count as one), MAX_BANK_LINES lines."""
    size, items, lines = 256, 64, 8
    for index, item in enumerate(layers):
        kind, body = _layer_item(item, index)
        label = body.get("name") or f"{index + 1:02d}-{kind}"
        size += 64 + _text_size({k: v for k, v in body.items() if k != "filters"})
        items += 16 + 2 * len(body)
        lines += 4 + len(body)
        for f in body.get("filters", []) if kind == "conv" else []:
            n = int(np.size(f["weights"])) if "weights" in f else 0
            size += 64 + n * _WEIGHT_BYTES + _text_size({k: v for k, v in f.items()
                                                         if k != "weights"})
            items += 4 + 2 * len(f)
            lines += 2 + len(f)
        if size > MAX_BANK_BYTES:
            raise ValueError(f"layer {label!r} brings the file to about {size:,} bytes; a bank "
                             f"file holds at most {MAX_BANK_BYTES >> 20} MiB (about "
                             f"{MAX_BANK_BYTES // _WEIGHT_BYTES:,} weights)")
        if items > MAX_BANK_ITEMS:
            raise ValueError(f"layer {label!r} brings the keys and entries to about {items:,}; "
                             f"a bank file holds at most {MAX_BANK_ITEMS:,}")
        if lines > MAX_BANK_LINES:
            raise ValueError(f"layer {label!r} brings the file to about {lines:,} lines; a bank "
                             f"file holds at most {MAX_BANK_LINES:,}")


def _text_size(value: Any) -> int:
    """Characters ``value`` takes as YAML, roughly (its repr, which is never shorter)."""
    return len(repr(_yaml_plain(value)))


def dump_network(name: str, description: str, layers: list[dict],
                 provenance: dict | None = None, *, header: str = "") -> str:
    """Layered bank YAML text for ``layers``, each a mapping with one key naming its type
    whose value holds its settings as in the file (see parse_network); a conv layer's
    filters give ``weights`` as (C, KH, KW) or (KH, KW) arrays. Each filter's weights are
    written on one line, as the shortest decimals that read back as the same float32
    numbers, so the file loads to exactly these layers, quickly. Raises ValueError for
    layers too large for a bank file (see check_written_network); the text is checked to
    load before it is returned."""
    import secrets
    from io import StringIO

    from ruamel.yaml import YAML

    check_written_network(layers)
    doc: dict[str, Any] = {"convcli": FORMAT_VERSION, "name": name, "description": description}
    if provenance:
        doc["provenance"] = _yaml_plain(provenance)
    flows: dict[str, str] = {}  # stand-ins for the weights, written by hand
    stem = f"convcli-weights-{secrets.token_hex(8)}-"
    doc["layers"] = [_layer_doc(item, index, flows, stem) for index, item in enumerate(layers)]
    buf = StringIO()
    yaml = YAML()
    yaml.default_flow_style = None  # short lists as [a, b, c]
    yaml.width = 1 << 30  # a list on one line
    yaml.dump(doc, buf)
    text = buf.getvalue()
    for token, flow in flows.items():
        if text.count(token) != 1:  # a name that happens to hold the stand-in: cannot be
            raise ValueError("a name or text holds the text that stands for weights")
        text = text.replace(token, flow)
    text = header + text
    parse_network(text, source=name)  # what we write must load
    return text


def network_layers(net: "Network") -> list[dict]:
    """The layers of ``net`` as dump_network takes them: every setting written out, so that
    dump_network(net.name, net.description, network_layers(net), net.provenance) loads as
    ``net`` again. ValueError for a grouped conv layer whose filters were selected so that
    they no longer line up with its groups (a file cannot say that)."""
    from .network import Activation, Conv, LRN, Normalize, Pool

    out: list[dict] = []
    for layer in net.layers:
        if isinstance(layer, LRN):
            out.append({"lrn": {"name": layer.name, "size": layer.size, "alpha": layer.alpha,
                                "beta": layer.beta, "bias": layer.bias}})
        if isinstance(layer, Normalize):
            out.append({"normalize": {"name": layer.name, "mean": list(layer.mean),
                                      "std": list(layer.std)}})
        elif isinstance(layer, Activation):
            out.append({"activation": {"name": layer.name, "function": layer.function,
                                       **dict(layer.params)}})
        elif isinstance(layer, Pool):
            body: dict[str, Any] = {"name": layer.name, "mode": layer.mode,
                                    "kernel": list(layer.kernel), "stride": list(layer.stride),
                                    "padding": _yaml_plain(layer.padding),
                                    "ceil_mode": layer.ceil_mode}
            if layer.mode == "max":
                body["dilation"] = list(layer.dilation)
            else:
                body["count_include_pad"] = layer.count_include_pad
            out.append({"pool": body})
        elif isinstance(layer, Conv):
            out.append({"conv": _conv_layer_dict(layer.name, layer.bank)})
    return out


def _conv_layer_dict(name: str, b: KernelBank) -> dict:
    per = len(b.filters) // b.groups
    if b.groups > 1 and (len(b.filters) % b.groups
                         or any(f.group != i // per for i, f in enumerate(b.filters))):
        raise ValueError(f"the filters of layer {name!r} were selected from a layer of "
                         f"{b.groups} groups and no longer line up with them")
    defaults: dict[str, Any] = {"input": b.input}
    if b.groups > 1:
        defaults["groups"] = b.groups
    eps = b.filters[0].geometry.window_norm if b.filters else None
    if eps is not None:
        defaults["window_norm"] = {"eps": eps}
    filters = []
    for f in b.filters:
        g = f.geometry
        item: dict[str, Any] = {"name": f.name, "weights": f.weights, "bias": f.bias,
                                "stride": list(g.stride), "padding": _yaml_plain(g.padding),
                                "dilation": list(g.dilation), "border": g.border,
                                "activation": g.activation, "scale": f.scale}
        item.update({k: v for k, v in (("description", f.description),
                                       ("source", f.source)) if v})
        filters.append(item)
    body: dict[str, Any] = {"name": name}
    if b.description:
        body["description"] = b.description
    body.update(defaults=defaults, filters=filters)
    return body


def _layer_item(item: Any, index: int) -> tuple[str, dict]:
    if not (isinstance(item, dict) and len(item) == 1):
        raise ValueError(f"layer #{index + 1} must be a mapping with one key naming its type "
                         f"({', '.join(LAYER_TYPES)})")
    ((kind, body),) = item.items()
    if kind not in LAYER_TYPES or not isinstance(body, dict):
        raise ValueError(f"layer #{index + 1}: want one of {', '.join(LAYER_TYPES)} with a "
                         f"mapping of settings, got {kind!r}")
    return kind, body


def _layer_doc(item: dict, index: int, flows: dict[str, str], stem: str) -> dict:
    """One layer as YAML data: plain Python values; each filter's weights a stand-in string
    for the one-line flow list of exact float32 decimals kept in ``flows``."""
    kind, body = _layer_item(item, index)
    if kind != "conv":
        return {kind: _yaml_plain(body)}
    out = {k: _yaml_plain(v) for k, v in body.items() if k != "filters"}
    mode = (body.get("defaults") or {}).get("input", "gray")
    rows = []
    for f in body.get("filters", []):
        row = {k: _yaml_plain(v) for k, v in f.items() if k not in ("weights", "bias")}
        if "bias" in f:
            row["bias"] = _float32_decimal(f["bias"])
        if "weights" in f:
            w = np.asarray(f["weights"], np.float32)
            if w.ndim == 3 and w.shape[0] == 1 and mode != "rgb":
                w = w[0]
            token = f"{stem}{len(flows)}w"
            flows[token] = _flow(w)
            row["weights"] = token
        rows.append(row)
    out["filters"] = rows
    return {kind: out}


def _flow(w: np.ndarray) -> str:
    """A float32 array as one line of nested flow lists of exact shortest decimals."""
    if w.ndim == 0:
        return str(w[()])
    if w.ndim == 1:
        return "[" + ", ".join(map(str, w)) + "]"
    return "[" + ", ".join(_flow(part) for part in w) + "]"


def _float32_decimal(v: Any) -> float:
    """The shortest decimal that reads back as float32(v), as a Python float."""
    return float(str(np.float32(v)))


def _yaml_plain(v: Any) -> Any:
    """Data ruamel.yaml can write: NumPy values and tuples become Python numbers and lists."""
    if isinstance(v, dict):
        return {str(k): _yaml_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_yaml_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


# --- small helpers ------------------------------------------------------------------------

def _as_float(v: Any) -> float:
    """float(v) that never raises: an int beyond float's range becomes +-inf."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _label(name: str) -> str:
    """A filter's name as error messages show it: long ones shortened."""
    return name if len(name) <= 60 else name[:57] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) \
        and not _is_yaml_bool(v)


def _is_yaml_bool(v: Any) -> bool:
    return type(v).__name__ == "ScalarBoolean"


def _show(v: Any) -> str:
    return geometry.brief(v)


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool) or _is_yaml_bool(value):
        return bool(value)
    raise ValueError(f"{what} must be true or false, got {_show(value)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e)


def _hint(word: str, choices: Iterable[str]) -> str:
    """' (did you mean ...?)' naming the closest choices, all of them when several tie."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=3)
    if not close:
        return ""
    ratio = lambda c: difflib.SequenceMatcher(None, str(word), c).ratio()  # noqa: E731
    best = sorted(c for c in close if ratio(c) == ratio(close[0]))
    return " (did you mean " + " or ".join(repr(c) for c in best) + "?)"


def _plain(v: Any) -> Any:
    """ruamel's commented containers and scalar subclasses -> plain Python values."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or _is_yaml_bool(v):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    return v


def _nested_shape(raw: Any, depth: int = 0, memo: dict | None = None) -> tuple[int, ...] | str:
    """Shape of a nested list of equal-length lists, or a message saying what is wrong.

    Sizes are checked before children are visited, so a file that builds a huge list out of
    YAML aliases is refused without walking it; a list that aliases repeat is looked at once.
    """
    memo = {} if memo is None else memo
    key = (id(raw), depth)
    if key not in memo:
        memo[key] = _shape_of(raw, depth, memo)
    return memo[key]


def _shape_of(raw: Any, depth: int, memo: dict) -> tuple[int, ...] | str:
    if type(raw) is _Block and depth == 0:
        regular = _block_shape(raw)
        if regular is not None:
            return regular
    if not isinstance(raw, list) or not raw:
        return "every row must be a non-empty list"
    # The first axis may be channels (C x KH x KW); the rows and columns are kernel sides.
    most = max(MAX_KERNEL_SIDE, MAX_KERNEL_CHANNELS) if depth == 0 else MAX_KERNEL_SIDE
    if len(raw) > most:
        return f"has {len(raw)} entries along one axis; at most {most} are allowed"
    kinds = {isinstance(v, list) for v in raw}
    if kinds == {False}:
        return (len(raw),)
    if kinds != {True} or depth >= 2:
        return "must be a KH x KW matrix or a C x KH x KW list of matrices" + _at(raw, 0)
    first = _nested_shape(raw[0], depth + 1, memo)
    if isinstance(first, str):
        return first
    if len(raw) * math.prod(first) > MAX_WEIGHTS:
        return f"has more than {MAX_WEIGHTS} numbers"
    for i, row in enumerate(raw[1:], start=2):
        shape = _nested_shape(row, depth + 1, memo)
        if shape != first:
            got = "x".join(map(str, shape)) if isinstance(shape, tuple) else "not the same depth"
            return (f"ragged: row {i} has shape {got}, row 1 has {'x'.join(map(str, first))}"
                    + _at(raw, i - 1))
    return (len(raw),) + first


def _block_shape(raw: list) -> tuple[int, ...] | None:
    """The shape of a regular matrix or list of matrices of numbers read by _fast_rows (in C,
    not list by list), or None to look closer (ragged, too large, numbers beyond float)."""
    try:
        arr = np.array(raw, dtype=np.float64)
    except (ValueError, OverflowError):
        return None
    if arr.ndim not in (2, 3) or arr.size > MAX_WEIGHTS or max(arr.shape[-2:]) > \
            MAX_KERNEL_SIDE or arr.shape[0] > max(MAX_KERNEL_SIDE, MAX_KERNEL_CHANNELS):
        return None
    return arr.shape


def _at(seq: list, index: int) -> str:
    line = _item_line(seq, index)
    return f" (line {line})" if line else ""


class _NotANumber(Exception):
    def __init__(self, value: Any):
        self.value = value


def _to_array(raw: list, ndim: int, memo: dict) -> np.ndarray:
    """float64 array of a nested list whose shape is known to be regular; each distinct list
    is converted once (YAML aliases repeat the same list object). Raises _NotANumber."""
    got = memo.get(id(raw))
    if got is not None and got.ndim == ndim:
        return got
    if type(raw) is _Block:  # numbers only, of a regular shape (see _block_shape)
        try:
            arr = np.array(raw, dtype=np.float64)
        except (ValueError, OverflowError):
            arr = None
        if arr is not None and arr.ndim == ndim:
            memo[id(raw)] = arr
            return arr
    if ndim == 1:
        for v in raw:
            if not _is_number(v):
                raise _NotANumber(v)
        arr = np.array([_as_float(v) for v in raw], dtype=np.float64)
    else:
        arr = np.stack([_to_array(r, ndim - 1, memo) for r in raw])
    memo[id(raw)] = arr
    return arr


def _element(raw: list, index: tuple[int, ...]) -> Any:
    for i in index:
        raw = raw[i]
    return raw


def _line(mapping: Any, key: Any) -> int | None:
    try:
        return mapping.lc.key(key)[0] + 1
    except Exception:
        return None


def _item_line(seq: Any, index: int) -> int | None:
    if type(seq) in (_Row, _Block):
        return seq.line
    try:
        return seq.lc.item(index)[0] + 1
    except Exception:
        return None


def _node_line(node: Any) -> int | None:
    try:
        return node.lc.line + 1
    except Exception:
        return None


def _value_line(raw: Any, target: Any) -> int | None:
    """Line of the first scalar in a nested list that is ``target`` (for error messages)."""
    if not isinstance(raw, list):
        return None
    for i, v in enumerate(raw):
        if isinstance(v, list):
            found = _value_line(v, target)
            if found:
                return found
        elif v is target:
            return _item_line(raw, i)
    return None
