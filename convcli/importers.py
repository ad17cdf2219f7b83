"""Weights of trained networks -> bank files.

``load_weights``: one layer from ``.npy`` arrays shaped (F, C, KH, KW) (or (F, KH, KW) for
one channel), ``.npz`` archives holding ``weights`` (that shape) and optionally ``bias``
(F,), or an ONNX Conv node (by name or the first one; weights, bias, stride, padding and
dilation carried over).

``import_network``: the first layers of an ONNX model, as many as convcli can run (see the
comment above it), as layers of a layered bank file. ONNX needs the optional ``onnx`` extra.

These files come from anywhere, so shapes and types are checked from the headers before any
array is read (a .npz member is allocated at the size its header declares), pickled objects
are never loaded, and every problem is one InputError line naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import bank, geometry, ops
from .errors import InputError, UsageError

CHANNEL_MODES = {1: "gray", 3: "rgb"}
MAX_ONNX_BYTES = 2 << 30  # protobuf's own limit for one message
MAX_NPZ_MEMBERS = 10_000  # arrays in one .npz whose headers are read
FLOAT32_MAX = float(np.finfo(np.float32).max)


def load_weights(path: str, node: str | None = None) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """(weights (F, C, KH, KW), bias (F,), bank defaults, provenance) from a file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: " + ("not a regular file" if p.exists() else "no such file"))
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        weights, bias, defaults, about = _from_onnx(p, node)
    elif suffix in (".npy", ".npz"):
        if node is not None:
            raise UsageError("a node name applies to ONNX models only")
        weights, bias = _from_numpy(p)
        defaults, about = {}, {"format": suffix[1:]}
    else:
        raise UsageError(f"{path}: unknown weights format {suffix or '(none)'}; give .npy, "
                         ".npz or .onnx")
    if weights.shape[1] not in CHANNEL_MODES:
        raise InputError(f"{path}: the kernels have {weights.shape[1]} input channels; a bank "
                         "takes 1 (gray) or 3 (rgb)")
    with np.errstate(invalid="ignore"):  # NaN compares False: counted as out of range
        sane = (np.abs(weights) <= FLOAT32_MAX).all() and (np.abs(bias) <= FLOAT32_MAX).all()
    if not sane:
        raise InputError(f"{path}: the weights or biases are not all finite numbers within "
                         f"float32's range (about ±{FLOAT32_MAX:.3g})")
    defaults = dict(defaults, input=CHANNEL_MODES[weights.shape[1]])
    return weights, bias, defaults, dict(about, source=str(path))


def _check_shape(p: Path, shape: tuple[int, ...], what: str = "weights") -> tuple[int, ...]:
    """The (F, C, KH, KW) shape a weights array of this shape becomes, or InputError."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3:
        shape = (shape[0], 1) + shape[1:]
    if len(shape) != 4 or min(shape) < 1:
        raise InputError(f"{p}: {what} have shape {shape}; want (F, C, KH, KW) or (F, KH, KW)")
    try:
        bank.check_written_size(*shape)
    except ValueError as e:
        raise InputError(f"{p}: {what} of shape {'x'.join(map(str, shape))}: {e}") from None
    return shape


def _check_dtype(p: Path, dtype: np.dtype, what: str) -> None:
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise InputError(f"{p}: {what} are stored as {dtype}; want real numbers (float or int)")


def _npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, reading nothing else."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if any(n < 0 for n in shape):
        raise ValueError(f"negative size in shape {shape}")
    return tuple(shape), dtype


def _from_numpy(p: Path) -> tuple[np.ndarray, np.ndarray]:
    import zipfile

    try:
        with open(p, "rb") as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
        if is_zip:
            with zipfile.ZipFile(p) as z:
                headers = {}
                members = z.infolist()
                if len(members) > MAX_NPZ_MEMBERS:
                    raise InputError(f"{p}: holds {len(members):,} arrays; convcli looks at "
                                     f"archives of at most {MAX_NPZ_MEMBERS:,}")
                for info in members:
                    if info.filename.endswith(".npy"):
                        with z.open(info) as fh:
                            headers[info.filename[:-4]] = _npy_header(fh)
        else:
            with open(p, "rb") as fh:
                headers = {"weights": _npy_header(fh)}
    except InputError:
        raise
    except Exception as e:  # zipfile, zlib and NumPy's header parser raise many types
        raise InputError(f"{p}: not a readable NumPy file ({_reason(e)})") from None

    if "weights" in headers:
        key = "weights"
    else:
        four = [k for k, (shape, _) in headers.items() if len(shape) == 4]
        if len(four) != 1:
            raise InputError(f"{p}: holds {', '.join(sorted(headers)) or 'nothing'}; name the "
                             "kernels 'weights' (F, C, KH, KW) and the biases 'bias'")
        key = four[0]
    shape = _check_shape(p, headers[key][0])
    _check_dtype(p, headers[key][1], "weights")
    if "bias" in headers and key != "bias":
        bias_shape, bias_dtype = headers["bias"]
        if int(np.prod(bias_shape)) != shape[0]:
            raise InputError(f"{p}: bias has {int(np.prod(bias_shape)):,} values for "
                             f"{shape[0]} filters")
        _check_dtype(p, bias_dtype, "biases")
    try:  # sizes and types are known to be sane now
        data = np.load(p, allow_pickle=False)
        if is_zip:
            with data:
                weights = data[key]
                bias = data["bias"] if "bias" in headers and key != "bias" else None
        else:
            weights, bias = data, None
        with np.errstate(all="ignore"):  # values beyond float64 become inf, refused later
            weights = np.asarray(weights, np.float64).reshape(shape)
            bias = np.zeros(shape[0]) if bias is None else np.asarray(bias, np.float64).ravel()
    except Exception as e:
        raise InputError(f"{p}: not a readable NumPy file ({_reason(e)})") from None
    return weights, bias


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _read_onnx(p: Path) -> Any:
    """The ModelProto in an ONNX file, or one InputError/UsageError line."""
    try:
        import onnx
    except ImportError:
        raise UsageError("importing ONNX models needs the onnx package: "
                         "pip install 'convcli[onnx]'") from None
    if p.stat().st_size > MAX_ONNX_BYTES:
        raise InputError(f"{p}: larger than 2 GiB, more than an ONNX model can be")
    try:
        # External data files would be opened by paths the model names: never followed.
        model = onnx.load(str(p), load_external_data=False)
        names_ok = _names_are_text(model)
    except Exception as e:  # protobuf raises its own types on damaged files
        raise InputError(f"{p}: not a readable ONNX model ({_reason(e)})") from None
    if not names_ok:
        raise InputError(f"{p}: not a readable ONNX model (a name in it is not UTF-8 text)")
    return model


def _names_are_text(model: Any) -> bool:
    """Whether every name and label convcli reads is text: protobuf hands out a string
    field that is not valid UTF-8 as bytes."""
    graph = model.graph
    fields = [graph.name, model.producer_name, model.producer_version]
    fields += [imp.domain for imp in model.opset_import]
    fields += [v.name for v in list(graph.input) + list(graph.output)]
    fields += [t.name for t in graph.initializer]
    for n in graph.node:
        fields += [n.name, n.op_type, n.domain, *n.input, *n.output]
        fields += [a.name for a in n.attribute]
    return all(isinstance(f, str) for f in fields)


def _from_onnx(p: Path, node_name: str | None):
    import onnx
    from onnx import numpy_helper

    model = _read_onnx(p)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        raise InputError(f"{p}: the model has no Conv node")
    if node_name is None:
        node = convs[0]
    else:
        found = [n for n in convs if n.name == node_name]
        if not found:
            names = ", ".join(n.name or "(unnamed)" for n in convs[:20])
            raise InputError(f"{p}: no Conv node named {node_name!r}; Conv nodes: {names}"
                             + (f" and {len(convs) - 20} more" if len(convs) > 20 else ""))
        node = found[0]
    where = f"{p}: Conv node {node.name!r}"
    init = {t.name: t for t in model.graph.initializer}
    if len(node.input) < 2 or not node.input[1]:
        raise InputError(f"{where} has no weights input")

    def stored(name: str, what: str):
        if name not in init:
            raise InputError(f"{where} takes {name!r} from another node; only weights stored "
                             "as initializers can be imported")
        t = init[name]
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise InputError(f"{where} keeps its {what} in an external data file; convcli "
                             "reads only models that hold their weights")
        return t

    w_tensor = stored(node.input[1], "weights")
    dims = tuple(int(d) for d in w_tensor.dims)
    if len(dims) != 4:
        kind = f"{len(dims) - 2}-D" if len(dims) >= 3 else "malformed"
        raise InputError(f"{where} is a {kind} convolution (weights of shape {dims}); only "
                         "2-D convolutions can become a bank")
    shape = _check_shape(p, dims, f"Conv node {node.name!r}'s weights")

    def array(t, what: str) -> np.ndarray:
        try:
            a = numpy_helper.to_array(t)
        except Exception as e:
            raise InputError(f"{where}: its {what} cannot be read ({_reason(e)})") from None
        _check_dtype(p, a.dtype, f"Conv node {node.name!r}'s {what}")
        with np.errstate(all="ignore"):
            return a.astype(np.float64)

    weights = array(w_tensor, "weights").reshape(shape)
    if len(node.input) > 2 and node.input[2]:
        b_tensor = stored(node.input[2], "bias")
        if int(np.prod(tuple(b_tensor.dims))) != shape[0]:
            raise InputError(f"{where} has a bias of shape {tuple(b_tensor.dims)} for "
                             f"{shape[0]} filters")
        bias = array(b_tensor, "bias").ravel()
    else:
        bias = np.zeros(shape[0])
    try:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    except Exception as e:
        raise InputError(f"{where} has attributes that cannot be read ({_reason(e)})") from None

    def ints(name: str, count: int, default: list[int]) -> list[int]:
        value = attrs.get(name, default)
        if not (isinstance(value, list) and len(value) == count
                and all(geometry.is_int(v) for v in value)):
            raise InputError(f"{where} has {name}={geometry.brief(value)}; a 2-D convolution "
                             f"needs {count} whole numbers")
        return [int(v) for v in value]

    group = attrs.get("group", 1)
    if group != 1:
        raise InputError(f"{where} is grouped (group={geometry.brief(group)}); only dense first "
                         "layers (group 1) can become a bank")
    kernel_shape = ints("kernel_shape", 2, list(shape[2:]))
    if tuple(kernel_shape) != shape[2:]:
        raise InputError(f"{where} has kernel_shape {kernel_shape} but weights of "
                         f"{shape[2]}x{shape[3]}")
    defaults: dict = {"border": "zero", "activation": "relu", "scale": "auto"}
    strides, dilations = ints("strides", 2, [1, 1]), ints("dilations", 2, [1, 1])
    try:
        stride = geometry.pair(strides, "stride")
        dilation = geometry.pair(dilations, "dilation")
        geometry.check_footprint((shape[2], shape[3]), dilation)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    defaults["stride"], defaults["dilation"] = list(stride), list(dilation)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode(errors="replace") if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "SAME_UPPER":
        defaults["padding"] = "same"  # the extra pixel at the end, as convcli's same
    elif auto_pad == "VALID":
        defaults["padding"] = "valid"
    elif auto_pad == "NOTSET":
        top, left, bottom, right = ints("pads", 4, [0, 0, 0, 0])
        try:
            defaults["padding"] = list(geometry.padding([top, bottom, left, right]))
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
    else:
        raise InputError(f"{where} uses auto_pad={geometry.brief(auto_pad)}, which convcli's "
                         "padding cannot express (SAME_LOWER puts the extra pixel first)")
    return weights, bias, defaults, {"format": "onnx", "node": node.name}


# --- whole networks from ONNX ---------------------------------------------------------------
# The longest chain of supported layers from the model's input: each node reads only the
# previous node's output (and numbers stored in the model), and that output feeds only it.
# BatchNormalization and per-channel Mul/Add/Sub/Div right after a Conv are folded into its
# weights in float64; elsewhere they become a normalize layer (or a 1x1 grouped conv when a
# scale is not positive). The walk stops, with a note, at the first node it cannot import.

ONNX_DOMAINS = ("", "ai.onnx")
MAX_LAYER_NAME = 60
FUSED = ("relu", "abs")  # activations the engine applies inside the conv pass

# Attributes each imported operation may carry (any other might change what it computes).
KNOWN_ATTRIBUTES: dict[str, set[str]] = {
    "Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
    "BatchNormalization": {"epsilon", "momentum", "spatial", "is_test", "consumed_inputs",
                           "training_mode"},
    "Relu": {"consumed_inputs"}, "Abs": {"consumed_inputs"}, "Sigmoid": {"consumed_inputs"},
    "Tanh": {"consumed_inputs"}, "HardSwish": set(),
    "LeakyRelu": {"alpha", "consumed_inputs"},
    "HardSigmoid": {"alpha", "beta", "consumed_inputs"},
    "Elu": {"alpha", "consumed_inputs"}, "Selu": {"alpha", "gamma", "consumed_inputs"},
    "Softplus": set(), "Mish": set(), "PRelu": {"consumed_inputs"},
    "Clip": {"min", "max", "consumed_inputs"},
    "MaxPool": {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order",
                "strides"},
    "AveragePool": {"auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape",
                    "pads", "strides"},
    "Identity": set(), "Dropout": {"ratio", "is_test", "seed", "consumed_inputs"},
    "Pad": {"mode", "pads", "value"}, "Transpose": {"perm"},
    "LRN": {"alpha", "beta", "bias", "size"},
    "Add": {"broadcast", "axis", "consumed_inputs"}, "Sub": {"broadcast", "axis",
                                                            "consumed_inputs"},
    "Mul": {"broadcast", "axis", "consumed_inputs"}, "Div": {"broadcast", "axis",
                                                            "consumed_inputs"},
}
JOINS = ("Add", "Sub", "Mul", "Div", "Sum", "Mean", "Max", "Min", "Concat")


@dataclass
class ImportedNetwork:
    """Layers read from an ONNX model, in the layered bank schema: write them with
    ``bank.dump_network(**net.dump_args())``. ``notes`` say where the import stopped and why
    (the last note) and anything the user should know about the result. ``nodes`` names
    the ONNX nodes imported (folded and skipped ones too; a label such as "Relu node #4"
    for an unnamed one)."""

    name: str
    description: str
    layers: list[dict]
    provenance: dict
    notes: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # the ONNX nodes imported, in order

    def dump_args(self) -> dict[str, Any]:
        """The keyword arguments of bank.dump_network."""
        return {"name": self.name, "description": self.description, "layers": self.layers,
                "provenance": self.provenance}


def import_network(path: str, upto: str | None = None,
                   node: str | None = None) -> ImportedNetwork:
    """Import the longest chain of supported layers from an ONNX model's input.

    ``upto``: stop after the node of that name. ``node``: import that Conv node alone (with
    a BatchNormalization and a Relu or Abs right after it folded in)."""
    if upto is not None and node is not None:
        raise UsageError("give either the last node to import or a single Conv node, not both")
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: " + ("not a regular file" if p.exists() else "no such file"))
    if p.suffix.lower() != ".onnx":
        raise UsageError(f"{path}: networks are imported from ONNX models (.onnx), not "
                         f"{p.suffix or 'files without a suffix'}")
    graph = _Graph(p, _read_onnx(p))
    walker = _Walker(graph, upto)
    if node is not None:
        stop = walker.single(node)
    else:
        if upto is not None and not any(n.name == upto for n in graph.nodes):
            raise UsageError(f"{p}: the model has no node named {upto!r}")
        stop = walker.chain()
    layers, notes = walker.finish(stop)
    stop = notes[-1]
    if upto is not None and walker.used[-1:] != [upto]:
        raise InputError(f"{p}: node {upto!r} is not on the chain of layers convcli can "
                         f"import from the model's input; {stop}")
    if not layers:
        raise InputError(f"{p}: nothing to import: {stop}")
    model = graph.model
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x)
    provenance: dict[str, Any] = {"format": "onnx", "source": str(path)}
    if model.graph.name:
        provenance["graph"] = _cut(model.graph.name)
    if producer:
        provenance["producer"] = _cut(producer)
    # A few plain values (the bank reader counts every list entry against its limits); upto
    # is the last node's name, which imports the same layers again as ``upto``.
    provenance.update(opset=graph.opset, input=_cut(walker.start), upto=_cut(walker.used[-1]),
                      nodes=len(walker.used), stopped=_cut(stop, 1000))
    label = f" (graph {model.graph.name!r})" if model.graph.name else ""
    description = f"{len(layers)} layers imported from ONNX model {p.name}{label}"
    return ImportedNetwork(name=_safe_name(p.stem) or "onnx", description=_cut(description, 1000),
                           layers=layers, provenance=provenance, notes=notes, nodes=walker.used)


class _Stop(Exception):
    """The chain ends at this node; the message (why) becomes the last note."""


def _cut(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _safe_name(text: str) -> str:
    """A layer or network name from an ONNX name: letters, digits, '.', '_' and '-' only."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:MAX_LAYER_NAME].strip("._-")


def _f32(values: Any) -> Any:
    """Nested lists of the shortest decimals that read back as the same float32 values."""
    return np.asarray(values, np.float32).astype(str).astype(np.float64).tolist()


def _in_float32(*arrays: np.ndarray) -> bool:
    with np.errstate(invalid="ignore"):  # NaN compares False: out of range
        return all(bool((np.abs(a) <= FLOAT32_MAX).all()) for a in arrays)


def _subgraph_inputs(node: Any) -> list[str]:
    """Names read inside a node's subgraphs (If, Loop, Scan bodies see outer tensors)."""
    names: list[str] = []
    for a in node.attribute:
        for g in list(a.g.node and [a.g]) + list(a.graphs):
            for inner in g.node:
                names.extend(inner.input)
                names.extend(_subgraph_inputs(inner))
    return names


class _Graph:
    """Who produces and who reads each tensor, and the numbers stored in the model."""

    def __init__(self, p: Path, model: Any):
        self.p, self.model = p, model
        graph = model.graph
        try:
            self.init = {t.name: t for t in graph.initializer}
            self.nodes = list(graph.node)
            self.index = {id(n): i for i, n in enumerate(self.nodes)}
            self.producer: dict[str, Any] = {}
            self.consumers: dict[str, list] = {}
            for n in self.nodes:
                for name in n.output:
                    if name:
                        self.producer.setdefault(name, n)
                for name in dict.fromkeys(list(n.input) + _subgraph_inputs(n)):
                    if name:
                        self.consumers.setdefault(name, []).append(n)
            self.outputs = {o.name for o in graph.output}
            self.inputs = [i for i in graph.input if i.name not in self.init]
            versions = {imp.domain: int(imp.version) for imp in model.opset_import}
        except Exception as e:
            raise InputError(f"{p}: not a readable ONNX model ({_reason(e)})") from None
        opset = versions.get("", versions.get("ai.onnx"))
        if opset is None or opset < 1:
            raise InputError(f"{p}: the model declares no opset version for the standard ONNX "
                             "operators")
        self.opset = opset

    def label(self, n: Any) -> str:
        return f"{n.op_type} node " + (repr(n.name) if n.name else f"#{self.index[id(n)] + 1}")

    def where(self, n: Any) -> str:
        return f"{self.p}: {self.label(n)}"

    def attrs(self, n: Any) -> dict[str, Any]:
        import onnx

        try:
            values = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        except Exception as e:
            raise InputError(f"{self.where(n)} has attributes that cannot be read "
                             f"({_reason(e)})") from None
        return {k: v.decode(errors="replace") if isinstance(v, bytes) else v
                for k, v in values.items()}

    def constant(self, name: str, user: Any, what: str) -> np.ndarray | None:
        """float64 values of a tensor stored in the model (an initializer or a Constant node,
        also through Identity nodes); None for a tensor computed at run time."""
        for _ in range(64):
            if name in self.init:
                return self.array(self.init[name], user, what)
            n = self.producer.get(name)
            if n is None or n.domain not in ONNX_DOMAINS:
                return None
            if n.op_type == "Identity" and len(n.input) == 1:
                name = n.input[0]
                continue
            if n.op_type != "Constant":
                return None
            attrs = self.attrs(n)
            if "value" in attrs and hasattr(attrs["value"], "dims"):
                return self.array(attrs["value"], user, what)
            for key in ("value_float", "value_floats", "value_int", "value_ints"):
                if key in attrs:
                    return np.asarray(attrs[key], np.float64)
            raise InputError(f"{self.where(user)} takes its {what} from {self.label(n)}, which "
                             "holds no dense array of numbers")
        return None

    def array(self, t: Any, user: Any, what: str) -> np.ndarray:
        import onnx
        from onnx import numpy_helper

        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise InputError(f"{self.where(user)} keeps its {what} in an external data file; "
                             "convcli reads only models that hold their weights")
        try:
            a = numpy_helper.to_array(t)
        except Exception as e:
            raise InputError(f"{self.where(user)}: its {what} cannot be read "
                             f"({_reason(e)})") from None
        if a.dtype.kind not in "biuf" or a.dtype.fields is not None:  # b: Dropout's flag
            raise InputError(f"{self.where(user)} holds its {what} as {a.dtype}; want real "
                             "numbers (float or int)")
        with np.errstate(all="ignore"):  # beyond float32 is refused where it matters
            return a.astype(np.float64)


@dataclass
class _Conv:
    name: str
    weights: np.ndarray  # float64 (F, C / groups, KH, KW)
    bias: np.ndarray  # float64 (F,)
    groups: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: str | tuple[int, int, int, int]
    nodes: list[str]
    activation: str = "none"
    border: str = "zero"  # what the padding holds (a Pad node's mode folded in)

    def as_dict(self, first: bool) -> dict:
        f, c = self.weights.shape[:2]
        if first and self.groups == 1 and c in CHANNEL_MODES:
            mode = CHANNEL_MODES[c]  # images get luminance or three channels, as single banks
        else:
            mode = "dense"
        defaults: dict[str, Any] = {"input": mode}
        if self.groups > 1:
            defaults["groups"] = self.groups
        pad = self.padding if isinstance(self.padding, str) else list(self.padding)
        defaults.update(stride=list(self.stride), dilation=list(self.dilation), padding=pad,
                        border=self.border, activation=self.activation)
        width = max(3, len(str(f - 1)))
        weights, bias = _f32(self.weights), _f32(self.bias)
        filters = [{"name": f"{self.name}_{k:0{width}d}", "bias": bias[k], "weights": weights[k]}
                   for k in range(f)]
        return {"conv": {"name": self.name, "description": _cut("ONNX " + ", ".join(self.nodes),
                                                                 1000),
                         "defaults": defaults, "filters": filters}}


@dataclass
class _Affine:
    """y[c] = scale[c] * x[c] + shift[c] (arrays of one value or one per channel)."""

    name: str
    scale: np.ndarray
    shift: np.ndarray
    nodes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict | None:
        """A normalize layer, else a 1x1 grouped conv; None if neither can be written (a
        scale for every channel whose number is unknown)."""
        if (self.scale > 0).all():
            with np.errstate(all="ignore"):
                mean, std = -self.shift / self.scale, 1 / self.scale
            if _in_float32(mean, std) and (std.astype(np.float32) > 0).all():
                return {"normalize": {"name": self.name, "mean": _f32(mean), "std": _f32(std)}}
        # A scale <= 0 (or one so small that 1 / scale leaves float32) is no normalisation:
        # a 1x1 conv, one channel per group, does it.
        if self.scale.size == 1:
            return None
        conv = _Conv(self.name, self.scale[:, None, None, None], self.shift, len(self.scale),
                     (1, 1), (1, 1), (0, 0, 0, 0), self.nodes)
        return conv.as_dict(first=False)


def _whole(values: np.ndarray) -> list:
    """Stored numbers (read as float64) as ints where they are whole."""
    return [int(v) if float(v).is_integer() else v for v in values.reshape(-1).tolist()]


@dataclass
class _Pad:
    """A Pad node waiting for the Conv that reads it, which takes it in as its padding."""

    pads: tuple[int, int, int, int]  # top, bottom, left, right
    border: str
    nodes: list[str]


# ONNX Pad modes as the borders of a conv's padding (the same np.pad modes)
PAD_BORDERS = {"constant": "zero", "reflect": "reflect", "edge": "replicate", "wrap": "wrap"}


def _fold_affine(affine: _Affine, conv: _Conv) -> _Conv | None:
    """conv(scale * x + shift) as one conv, exact only where the conv reads no padding (a
    padded border would hold shift, not 0); None where it does, or where the folded
    numbers leave float32."""
    kh, kw = conv.weights.shape[2:]
    pads = conv.padding
    if not (pads == "valid" or (pads == "same" and kh == kw == 1)
            or (not isinstance(pads, str) and not any(pads))):
        return None
    f, cg = conv.weights.shape[:2]
    channels = cg * conv.groups
    if affine.scale.size not in (1, channels):
        return None
    scale = np.broadcast_to(affine.scale, (channels,)).reshape(conv.groups, cg)
    shift = np.broadcast_to(affine.shift, (channels,)).reshape(conv.groups, cg)
    group = np.arange(f) // (f // conv.groups)  # the group each filter reads
    weights = conv.weights * scale[group][:, :, None, None]
    bias = conv.bias + np.einsum("fcij,fc->f", conv.weights, shift[group])
    if not _in_float32(weights, bias):
        return None
    return _Conv(conv.name, weights, bias, conv.groups, conv.stride, conv.dilation, conv.padding,
                 affine.nodes + conv.nodes)


class _Walker:
    def __init__(self, graph: _Graph, upto: str | None):
        self.g, self.upto = graph, upto
        self.layers: list[Any] = []  # _Conv, _Affine or finished layer dicts
        self.origins: list[str] = []  # the node that made each layer
        self.ends: list[int] = []  # for each layer, how many of `used` it takes in
        self.names: set[str] = set()
        self.notes: list[tuple[int, str]] = []  # (the layer it is about, the note)
        self.used: list[str] = []  # names (or labels) of the nodes imported
        self.channels: int | None = None
        self.hw: tuple[int, int] | None = None
        self.dims: list[int | None] = []  # the input's shape, as the model declares it
        self.start = ""

    def size_from(self, chw: tuple) -> None:
        """Channels and spatial size of the input, where the model fixes them."""
        c, h, w = chw
        self.channels = int(c) if c and c > 0 else None
        self.hw = (int(h), int(w)) if h and w and h > 0 and w > 0 else None

    # -- walking -----------------------------------------------------------------------------
    def chain(self) -> str:
        g = self.g
        if not g.inputs:
            raise InputError(f"{g.p}: the model has no input")
        first = g.inputs[0]
        self.start = first.name
        if len(g.inputs) > 1:
            self.notes.append((-1, f"the model has {len(g.inputs)} inputs; the layers start "
                                   f"at the first, {first.name!r}"))
        try:
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in first.type.tensor_type.shape.dim]
        except Exception:
            dims = []
        self.dims = dims
        if len(dims) == 4:
            self.size_from((dims[1], dims[2], dims[3]))
        cur = first.name
        seen: set[int] = set()  # ids of the nodes walked (a malformed graph may loop)
        while True:
            users = g.consumers.get(cur, [])
            if not users:
                return (f"the chain reaches the model's output {cur!r}" if cur in g.outputs
                        else f"nothing reads {cur!r}")
            spelled = self.spelled_activation(cur, users) if len(users) == 2 else None
            if spelled is not None:
                cur, group, function = spelled
                if any(id(n) in seen for n in group):
                    raise InputError(f"{g.where(group[0])} is part of a cycle; an ONNX graph "
                                     "has none")
                seen.update(id(n) for n in group)
                before = len(self.layers)
                self.activation(group[-1], function)
                self.record(group, before)
                if self.upto is not None and group[-1].name == self.upto:
                    return f"stopped after {g.label(group[-1])}, as asked"
                continue
            if len(users) > 1:
                names = ", ".join(g.label(u) for u in users[:4])
                return (f"stopped after {cur!r}: it feeds {len(users)} nodes ({names}"
                        f"{', ...' if len(users) > 4 else ''}), a branch (e.g. a residual "
                        "connection)")
            n = users[0]
            if id(n) in seen:
                raise InputError(f"{g.where(n)} is part of a cycle; an ONNX graph has none")
            seen.add(id(n))
            try:
                cur = self.step(n, cur)
            except _Stop as e:
                return f"stopped at {g.label(n)}: {e}"
            if self.upto is not None and n.name == self.upto:
                return f"stopped after {g.label(n)}, as asked"

    def single(self, name: str) -> str:
        g = self.g
        convs = [n for n in g.nodes if n.op_type == "Conv" and n.domain in ONNX_DOMAINS]
        found = [n for n in convs if n.name == name]
        if not found:
            other = [n for n in g.nodes if n.name == name]
            if other:
                raise UsageError(f"{g.p}: node {name!r} is a {other[0].op_type}, not a Conv")
            names = ", ".join(n.name or "(unnamed)" for n in convs[:20])
            raise UsageError(f"{g.p}: no Conv node named {name!r}; Conv nodes: "
                             f"{names or 'none'}"
                             + (f" and {len(convs) - 20} more" if len(convs) > 20 else ""))
        conv = found[0]
        self.start = conv.input[0] if conv.input else ""
        try:
            cur = self.step(conv, self.start)
        except _Stop as e:
            raise InputError(f"{g.where(conv)}: {e}") from None
        # A BatchNormalization and a Relu or Abs right after the conv belong to its layer;
        # both fold into it while its output is untouched (last_open_conv), so it stays one.
        while self.last_open_conv() is not None:
            users = g.consumers.get(cur, [])
            if len(users) != 1 or users[0].domain not in ONNX_DOMAINS or \
                    users[0].op_type not in ("BatchNormalization", "Relu", "Abs"):
                break
            try:
                cur = self.step(users[0], cur)
            except _Stop:
                break
        return f"imported {g.label(conv)} alone" + (
            f" with {', '.join(self.used[1:])} folded in" if len(self.used) > 1 else "")

    def step(self, n: Any, cur: str) -> str:
        """Import node n, which reads the chain's tensor cur; its output, or _Stop."""
        g = self.g
        if n.domain not in ONNX_DOMAINS:
            raise _Stop(f"{n.domain}.{n.op_type} is not an operation convcli imports")
        if n.op_type not in KNOWN_ATTRIBUTES:
            raise _Stop(f"{n.op_type} is not an operation convcli imports")
        if not n.output or not n.output[0]:
            raise InputError(f"{g.where(n)} has no output")
        attrs = g.attrs(n)
        unknown = sorted(set(attrs) - KNOWN_ATTRIBUTES[n.op_type])
        if unknown:
            raise _Stop(f"its attribute {unknown[0]!r} is not one convcli knows for "
                        f"{n.op_type}")
        for extra in n.output[1:]:
            if extra and g.consumers.get(extra):
                raise _Stop(f"its second output {extra!r} is used "
                            f"(by {g.label(g.consumers[extra][0])})")
        if self.layers and isinstance(self.layers[-1], _Pad) and n.op_type != "Conv":
            raise _Stop("it reads a Pad's output")  # finish() says why the Pad is left out
        before = len(self.layers)
        getattr(self, "_" + n.op_type)(n, cur, attrs)
        self.record([n], before)
        return n.output[0]

    def record(self, nodes: list, before: int) -> None:
        """Note nodes as imported, into a new layer or the last one (folded or skipped)."""
        self.used.extend(n.name or self.g.label(n) for n in nodes)
        if len(self.layers) > before:
            self.origins.append(self.g.label(nodes[0]))
            self.ends.append(len(self.used))
        elif self.layers:
            self.ends[-1] = len(self.used)

    def spelled_activation(self, cur: str, users: list) -> tuple[str, list, str] | None:
        """An activation that an exporter wrote as several nodes reading cur: its output,
        its nodes and its name, or None."""
        for function, spelling in (("hardswish", self.spelled_hardswish),
                                   ("silu", self.spelled_silu)):
            found = spelling(cur, users)
            if found is not None:
                return found[0], found[1], function
        return None

    def spelled_hardswish(self, cur: str, users: list) -> tuple[str, list] | None:
        """x * clip(x + 3, 0, 6) / 6 spelled out in Add, Clip, Mul and Div (or Mul by 1/6)
        nodes, as PaddlePaddle's exporter writes HardSwish: its output and its nodes, or None
        (then cur is a plain branch). x feeds the Add and the Mul; every other tensor of the
        group feeds only the next node, and upto may name only its last node."""
        g = self.g

        def plain(n: Any, op: str) -> bool:
            return n.op_type == op and n.domain in ONNX_DOMAINS and \
                set(g.attrs(n)) <= KNOWN_ATTRIBUTES[op] - {"axis", "broadcast"}

        def only_user(tensor: str) -> Any:
            users = g.consumers.get(tensor, [])
            return users[0] if len(users) == 1 else None

        def number(n: Any, data: str) -> float | None:
            """The constant one-number operand of a two-input node, other than data."""
            if len(n.input) != 2 or list(n.input).count(data) != 1:
                return None
            value = g.constant(n.input[1] if n.input[0] == data else n.input[0], n, "operand")
            return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

        def scaling(n: Any, data: str) -> float | None:
            """The factor a Mul or Div by a constant applies to data (data first for Div)."""
            if plain(n, "Mul"):
                return number(n, data)
            if plain(n, "Div") and n.input[0] == data:
                value = number(n, data)
                return 1 / value if value else None
            return None

        add = next((u for u in users if plain(u, "Add")), None)
        mul = next((u for u in users if plain(u, "Mul")), None)
        if add is None or mul is None or number(add, cur) != 3:
            return None
        clip = only_user(add.output[0])
        if clip is None or not plain(clip, "Clip") or clip.input[0] != add.output[0]:
            return None
        try:
            if self.clip_bounds(clip, add.output[0], g.attrs(clip)) != (0, 6):
                return None
        except _Stop:
            return None
        group, factor, gate = [add, clip], 1.0, clip.output[0]
        scale = only_user(gate)
        if scale is not None and scale is not mul:  # relu6(x + 3) / 6, then times x
            step = scaling(scale, gate)
            if step is None:
                return None
            group.append(scale)
            factor, gate = step, scale.output[0]
        if only_user(gate) is not mul or sorted(mul.input) != sorted([cur, gate]):
            return None
        group.append(mul)
        out = mul.output[0]
        after = only_user(out)
        if factor == 1.0 and after is not None:  # x * relu6(x + 3), then / 6
            step = scaling(after, out)
            if step is not None:
                group.append(after)
                factor, out = step, after.output[0]
        if abs(factor * 6 - 1) > 1e-6:
            return None
        if self.upto is not None and any(n.name == self.upto for n in group[:-1]):
            return None
        return out, group

    def spelled_silu(self, cur: str, users: list) -> tuple[str, list] | None:
        """x * sigmoid(x) as a Sigmoid and a Mul, as PyTorch exports SiLU (Swish): its
        output and its nodes, or None (then cur is a plain branch)."""
        g = self.g
        sig = next((u for u in users if u.op_type == "Sigmoid" and u.domain in ONNX_DOMAINS
                    and list(u.input) == [cur] and set(g.attrs(u)) <= {"consumed_inputs"}),
                   None)
        mul = next((u for u in users if u.op_type == "Mul" and u.domain in ONNX_DOMAINS
                    and set(g.attrs(u)) <= {"consumed_inputs"}), None)
        if sig is None or mul is None or not sig.output or \
                sorted(mul.input) != sorted([cur, sig.output[0]]) or \
                g.consumers.get(sig.output[0], []) != [mul]:
            return None
        if self.upto is not None and sig.name == self.upto:
            return None
        return mul.output[0], [sig, mul]

    def params(self, n: Any, cur: str, what: tuple[str, ...], data_at: tuple[int, ...] = (0,)
               ) -> list[np.ndarray | None]:
        """The constant inputs of n (None where absent and at the data position)."""
        ins = list(n.input)
        at = [i for i, name in enumerate(ins) if name == cur]
        if not at:
            raise _Stop(f"it reads {cur!r} only inside a subgraph")
        if len(at) > 1:
            raise _Stop(f"it reads {cur!r} more than once")
        if at[0] not in data_at:
            raise _Stop(f"it reads {cur!r} as its input {at[0] + 1}, not as its data")
        out: list[np.ndarray | None] = []
        for i, name in enumerate(ins):
            label = what[i] if i < len(what) else f"input {i + 1}"
            if i == at[0] or not name:
                out.append(None)
                continue
            value = self.g.constant(name, n, label)
            if value is None:
                src = self.g.producer.get(name)
                if src is None and name not in {i.name for i in self.g.inputs}:
                    raise InputError(f"{self.g.where(n)} reads {name!r} ({label}), which no node "
                                     "makes and the model does not store")
                by = self.g.label(src) if src is not None else "the model's inputs"
                if n.op_type in JOINS:
                    raise _Stop(f"it also reads {name!r} from {by}: two branches join here "
                                "(e.g. a residual connection)")
                raise _Stop(f"it takes its {label} ({name!r}) from {by}, not from numbers "
                            "stored in the model")
            out.append(value)
        return out

    def layer_name(self, n: Any, kind: str) -> str:
        base = _safe_name(n.name) or f"{len(self.layers) + 1:02d}-{kind}"
        name, k = base, 2
        while name.casefold() in self.names:  # unique also on case-insensitive file systems
            name, k = f"{base}-{k}", k + 1
        self.names.add(name.casefold())
        return name

    def finish(self, stop: str) -> tuple[list[dict], list[str]]:
        """The layer dicts, cut to the longest start a bank file holds (bank's limits on
        weights, YAML items and layers), and the notes on them, the last saying where the
        import stopped."""
        if self.layers and isinstance(self.layers[-1], _Pad):  # no Conv took it in
            pad = self.layers.pop()
            self.used = self.used[:self.ends[-2]] if len(self.ends) > 1 else []
            self.origins, self.ends = self.origins[:-1], self.ends[:-1]
            self.notes = [(i, text) for i, text in self.notes if i < len(self.layers)]
            stop = (f"stopped at {pad.nodes[0]}: convcli imports a Pad only into the Conv that "
                    f"reads it ({stop})")
        out: list[dict] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, _Conv):
                out.append(layer.as_dict(first=i == 0))
            elif isinstance(layer, _Affine):
                written = layer.as_dict()
                if written is None:
                    self.layers = self.layers[:i]
                    self.used = self.used[:self.ends[i - 1]] if i else []
                    stop = (f"stopped at {self.origins[i]}: its scale and offset leave float32's "
                            "range as a normalisation, and a 1x1 convolution in its place needs "
                            "the number of channels, which the model leaves open")
                    break
                out.append(written)
            else:
                out.append(layer)

        def fits(count: int) -> bool:
            try:
                bank.check_written_network(out[:count])
            except ValueError:
                return False
            return count <= bank.MAX_LAYERS

        if fits(len(out)):
            return out, [text for layer, text in self.notes if layer < len(out)] + [stop]
        lo, hi = 0, len(out)  # fits(lo) holds and fits(hi) does not (the limits add up)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        if hi > bank.MAX_LAYERS:
            why = f"a bank file holds at most {bank.MAX_LAYERS} layers"
        else:
            try:
                bank.check_written_network(out[:hi])
                why = "the layers are more than a bank file holds"
            except ValueError as e:
                why = str(e)
        self.used = self.used[:self.ends[lo - 1]] if lo else []
        notes = [text for layer, text in self.notes if layer < lo]
        return out[:lo], notes + [f"stopped at {self.origins[lo]}: {why}"]

    def last_open_conv(self) -> _Conv | None:
        """The previous layer if it is a conv whose output nothing has changed yet."""
        last = self.layers[-1] if self.layers else None
        return last if isinstance(last, _Conv) and last.activation == "none" else None

    # -- geometry ------------------------------------------------------------------------------
    def ints(self, n: Any, attrs: dict, key: str, default: list[int], what: str) -> list[int]:
        value = attrs.get(key, default)
        if not (isinstance(value, list) and len(value) == len(default)
                and all(geometry.is_int(v) for v in value)):
            raise InputError(f"{self.g.where(n)} has {key}={geometry.brief(value)}; a 2-D "
                             f"{what} needs {len(default)} whole numbers")
        return [int(v) for v in value]

    def geometry(self, n: Any, attrs: dict, kernel: tuple[int, int], what: str
                 ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int] | None]:
        """stride, dilation and explicit pads (None for auto_pad) of a conv or pool node."""
        strides = self.ints(n, attrs, "strides", [1, 1], what)
        dilations = self.ints(n, attrs, "dilations", [1, 1], what)
        pads = self.ints(n, attrs, "pads", [0, 0, 0, 0], what)
        try:
            stride = geometry.pair(strides, "stride")
            dilation = geometry.pair(dilations, "dilation")
            geometry.check_footprint(kernel, dilation)
            top, left, bottom, right = pads  # ONNX: all the starts, then all the ends
            explicit = geometry.padding([top, bottom, left, right])
        except ValueError as e:
            raise InputError(f"{self.g.where(n)}: {e}") from None
        assert not isinstance(explicit, str)
        return stride, dilation, explicit

    def auto_pad(self, n: Any, attrs: dict) -> str:
        mode = attrs.get("auto_pad", "NOTSET")
        if mode not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise InputError(f"{self.g.where(n)} has auto_pad={geometry.brief(mode)}; ONNX "
                             "defines NOTSET, SAME_UPPER, SAME_LOWER and VALID")
        return mode

    def same_pads(self, n: Any, mode: str, kernel: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int]) -> tuple[int, int, int, int]:
        """Explicit pads for auto_pad SAME_*: fixed for stride 1; for a larger stride they
        depend on the input size, so only a model with a fixed input size gives them."""
        sides = []
        fixed = False
        for axis in (0, 1):
            span = (kernel[axis] - 1) * dilation[axis] + 1
            if stride[axis] == 1:
                total = span - 1
            elif self.hw is not None:
                size, s = self.hw[axis], stride[axis]
                total = max((-(-size // s) - 1) * s + span - size, 0)
                fixed = True
            else:
                raise _Stop(f"auto_pad={mode} with stride {stride[axis]} pads by an amount that "
                            "depends on the input size, which the model leaves open")
            head = (total + 1) // 2 if mode == "SAME_LOWER" else total // 2
            sides.append((head, total - head))
        if fixed:
            assert self.hw is not None
            self.notes.append((len(self.layers), (
                f"{self.g.label(n)}: auto_pad={mode} with stride {stride[0]}x{stride[1]} became "
                f"fixed padding computed for its {self.hw[0]}x{self.hw[1]} input (the model's "
                "size); inputs of other sizes are padded the same, where ONNX would adapt")))
        return (sides[0][0], sides[0][1], sides[1][0], sides[1][1])

    def track(self, kernel: tuple[int, int], stride: tuple[int, int],
              dilation: tuple[int, int], pads: str | tuple[int, int, int, int],
              ceil_mode: bool = False) -> None:
        """Follow the spatial size through a conv or pool (known only for fixed inputs)."""
        if self.hw is None:
            return
        if pads == "same":
            self.hw = (-(-self.hw[0] // stride[0]), -(-self.hw[1] // stride[1]))
            return
        resolved = geometry.resolve_pads(pads, self.hw, kernel, stride, dilation)
        out = []
        for axis in (0, 1):
            size, s = self.hw[axis], stride[axis]
            before, after = resolved[2 * axis], resolved[2 * axis + 1]
            room = size + before + after - (kernel[axis] - 1) * dilation[axis] - 1
            count = (-(-room // s) if ceil_mode else room // s) + 1
            if ceil_mode and (count - 1) * s >= size + before:  # the last window starts inside
                count -= 1
            out.append(count)
        self.hw = (out[0], out[1]) if min(out) > 0 else None

    # -- operations ------------------------------------------------------------------------
    def _Conv(self, n: Any, cur: str, attrs: dict) -> None:
        g, where = self.g, self.g.where(n)
        if len(n.input) < 2 or not n.input[1]:
            raise InputError(f"{where} has no weights input")
        _, w, b = (self.params(n, cur, ("data", "weights", "bias")) + [None])[:3]
        assert w is not None
        if w.ndim != 4:
            kind = f"{w.ndim - 2}-D" if w.ndim >= 3 else "malformed"
            raise InputError(f"{where} is a {kind} convolution (weights of shape "
                             f"{tuple(w.shape)}); only 2-D convolutions can become a bank")
        f, cg, kh, kw = (int(v) for v in w.shape)
        if min(f, cg, kh, kw) < 1:
            raise InputError(f"{where} has weights of shape {tuple(w.shape)}")
        group = attrs.get("group", 1)
        if not geometry.is_int(group) or group < 1 or f % group:
            raise InputError(f"{where} has group={geometry.brief(group)}; it must be a whole "
                             f"number >= 1 that divides the {f} filters")
        if self.channels is not None and cg * group != self.channels:
            raise InputError(f"{where} reads {cg * group} channels ({cg} per group x {group}) "
                             f"but its input has {self.channels}")
        # What one layer of a bank may hold; what a whole file holds is checked at the end.
        if f > bank.MAX_FILTERS or cg > bank.MAX_KERNEL_CHANNELS or \
                max(kh, kw) > bank.MAX_KERNEL_SIDE or f * cg * kh * kw > bank.MAX_LAYER_WEIGHTS:
            raise _Stop(f"its weights ({f}x{cg}x{kh}x{kw}) are more than a bank layer holds (at "
                        f"most {bank.MAX_FILTERS} filters of {bank.MAX_KERNEL_CHANNELS} "
                        f"channels of {bank.MAX_KERNEL_SIDE}x{bank.MAX_KERNEL_SIDE}, "
                        f"{bank.MAX_LAYER_WEIGHTS:,} weights in all)")
        kernel = self.ints(n, attrs, "kernel_shape", [kh, kw], "convolution")
        if tuple(kernel) != (kh, kw):
            raise InputError(f"{where} has kernel_shape {kernel} but weights of {kh}x{kw}")
        stride, dilation, explicit = self.geometry(n, attrs, (kh, kw), "convolution")
        mode = self.auto_pad(n, attrs)
        padding: str | tuple[int, int, int, int]
        if mode == "SAME_UPPER":
            padding = "same"  # convcli's same puts the odd pixel last, as SAME_UPPER does
        elif mode == "VALID":
            padding = "valid"
        elif mode == "SAME_LOWER":
            padding = self.same_pads(n, mode, (kh, kw), stride, dilation)
        else:
            assert explicit is not None
            padding = explicit
        # A Pad node before the conv becomes its padding (the conv's own goes around it).
        pad = self.layers[-1] if self.layers and isinstance(self.layers[-1], _Pad) else None
        own = padding
        if pad is not None:
            if own == "valid":
                own = (0, 0, 0, 0)
            elif own == "same":
                own = self.same_pads(n, "SAME_UPPER", (kh, kw), stride, dilation)
            assert not isinstance(own, str)
            if pad.border != "zero" and any(own):
                raise _Stop(f"it pads with zeros around the {pad.border} padding of "
                            f"{pad.nodes[0]}; a bank layer has one border")
            padding = (own[0] + pad.pads[0], own[1] + pad.pads[1], own[2] + pad.pads[2],
                       own[3] + pad.pads[3])
        bias = np.zeros(f) if b is None else b
        if bias.size != f:
            raise InputError(f"{where} has a bias of shape {tuple(bias.shape)} for {f} filters")
        if not _in_float32(w, bias):
            raise InputError(f"{where}: the weights or biases are not all finite numbers within "
                             f"float32's range (about ±{FLOAT32_MAX:.3g})")
        layer = _Conv(self.layer_name(n, "conv"), w, bias.ravel(), int(group), stride, dilation,
                      padding, [g.label(n)])
        if pad is not None:  # the layer begun at the Pad
            self.layers[-1] = replace(layer, nodes=pad.nodes + layer.nodes, border=pad.border)
            self.channels = f
            self.track((kh, kw), stride, dilation, own)  # the Pad's rows are counted already
            return
        last = self.layers[-1] if self.layers else None
        folded = _fold_affine(last, layer) if isinstance(last, _Affine) else None
        if folded is not None:
            self.layers[-1] = folded
            at = len(self.layers)  # notes made for a layer after the affine: the conv's
            self.notes = [(i - 1 if i == at else i, text) for i, text in self.notes]
        else:
            self.layers.append(layer)
        self.channels = f
        self.track((kh, kw), stride, dilation, padding)

    def _BatchNormalization(self, n: Any, cur: str, attrs: dict) -> None:
        where = self.g.where(n)
        if len(n.input) != 5 or not all(n.input):
            raise InputError(f"{where} has {len(n.input)} inputs; BatchNormalization takes 5 "
                             "(data, scale, bias, mean, variance)")
        if attrs.get("training_mode", 0):
            raise _Stop("it runs in training mode (it normalises by the batch's statistics)")
        self.old_training_mode(attrs)
        if attrs.get("spatial", 1) != 1:
            raise _Stop("spatial=0 (statistics per pixel) is not supported")
        _, scale, beta, mean, var = self.params(
            n, cur, ("data", "scale", "bias", "mean", "variance"))
        assert scale is not None and beta is not None and mean is not None and var is not None
        c = self.channels if self.channels is not None else scale.size
        for value, what in ((scale, "scale"), (beta, "bias"), (mean, "mean"), (var, "variance")):
            if value.shape != (c,):
                raise InputError(f"{where} has a {what} of shape {tuple(value.shape)} for {c} "
                                 "channels")
        eps = self.number(n, attrs, "epsilon", 1e-5)
        with np.errstate(all="ignore"):
            spread = var + eps
            if not (np.isfinite(spread).all() and (spread > 0).all()):
                raise InputError(f"{where}: variance + epsilon must be finite and > 0")
            s = scale / np.sqrt(spread)
            t = beta - mean * s
        self.affine(n, s, t, "BatchNormalization")

    def _Add(self, n: Any, cur: str, attrs: dict) -> None:
        self.arithmetic(n, cur, attrs)

    _Sub = _Mul = _Div = _Add

    def arithmetic(self, n: Any, cur: str, attrs: dict) -> None:
        where = self.g.where(n)
        if len(n.input) != 2:
            raise InputError(f"{where} has {len(n.input)} inputs; {n.op_type} takes 2")
        values = self.params(n, cur, ("first operand", "second operand"),
                             (0,) if n.op_type == "Div" else (0, 1))
        data_first = n.input[0] == cur
        value = values[1] if data_first else values[0]
        if value is None:
            raise InputError(f"{where} has an empty operand")
        c = self.per_channel(n, value, attrs)
        one = np.ones(1)
        if n.op_type == "Add":
            scale, shift = one, c
        elif n.op_type == "Sub":
            scale, shift = (one, -c) if data_first else (-one, c)
        elif n.op_type == "Mul":
            scale, shift = c, np.zeros(1)
        else:
            if not c.all():
                raise _Stop("it divides by zero")
            scale, shift = 1 / c, np.zeros(1)
        self.affine(n, scale, shift, "normalize")

    def per_channel(self, n: Any, value: np.ndarray, attrs: dict) -> np.ndarray:
        """A constant operand as one value or one per channel, or _Stop."""
        if "axis" in attrs:  # opset < 7's broadcast: a 1-D operand aligned with this axis
            if attrs["axis"] != 1 or value.ndim != 1:
                raise _Stop(f"its legacy broadcast along axis {attrs['axis']} is not per channel")
            value = value.reshape(-1, 1, 1)
        if value.ndim > 4:
            raise _Stop(f"its operand of shape {tuple(value.shape)} adds dimensions")
        shape = (1,) * (4 - value.ndim) + tuple(value.shape)
        if shape[0] != 1 or shape[2] != 1 or shape[3] != 1:
            raise _Stop(f"its operand of shape {tuple(value.shape)} varies along more than the "
                        "channels")
        flat = value.reshape(-1)
        if flat.size == 0 or (self.channels is not None and flat.size not in (1, self.channels)):
            raise InputError(f"{self.g.where(n)} combines {self.channels} channels with an "
                             f"operand of shape {tuple(value.shape)}")
        return flat

    def affine(self, n: Any, scale: np.ndarray, shift: np.ndarray, kind: str) -> None:
        """x -> scale * x + shift per channel: folded into a conv just before, merged with an
        affine just before, or a new layer."""
        scale, shift = (np.array(a, np.float64) for a in np.broadcast_arrays(scale, shift))
        if not _in_float32(scale, shift):
            raise _Stop("its numbers are not all finite within float32's range")
        conv = self.last_open_conv()
        last = self.layers[-1] if self.layers else None
        if conv is not None:
            f = conv.weights.shape[0]
            weights = conv.weights * scale.reshape(-1, 1, 1, 1) if scale.size == f \
                else conv.weights * scale[0]
            bias = conv.bias * scale + shift
            if not _in_float32(weights, bias):
                raise _Stop(f"folding it into {conv.nodes[0]} leaves float32's range")
            conv.weights, conv.bias = weights, np.broadcast_to(bias, (f,)).copy()
            conv.nodes.append(self.g.label(n))
            return
        if isinstance(last, _Affine):
            merged_scale, merged_shift = last.scale * scale, last.shift * scale + shift
            if not _in_float32(merged_scale, merged_shift):
                raise _Stop("combined with the operations before it, its numbers leave "
                            "float32's range")
            last.scale, last.shift = merged_scale, merged_shift
            last.nodes.append(self.g.label(n))
            return
        if scale.size == 1 and self.channels is not None:
            scale, shift = np.full(self.channels, scale[0]), np.full(self.channels, shift[0])
        elif not (scale > 0).all() and scale.size == 1:
            raise _Stop("it scales by a number <= 0 and the number of channels is unknown")
        if scale.size > 1:
            self.channels = scale.size
        self.layers.append(_Affine(self.layer_name(n, kind), scale, shift, [self.g.label(n)]))

    def activation(self, n: Any, function: str, **params: float) -> None:
        conv = self.last_open_conv()
        if function in FUSED and conv is not None:
            conv.activation = function
            conv.nodes.append(self.g.label(n))
            return
        body: dict[str, Any] = {"name": self.layer_name(n, "activation"), "function": function}
        body.update({k: _f32(v) for k, v in params.items()})
        self.layers.append({"activation": body})

    def _no_params(self, n: Any, cur: str) -> None:
        self.params(n, cur, ("data",))

    def _Relu(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "relu")

    def _Abs(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "abs")

    def _Sigmoid(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "sigmoid")

    def _Tanh(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "tanh")

    def _HardSwish(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "hardswish")

    def _LeakyRelu(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "leaky_relu", alpha=self.number(n, attrs, "alpha", 0.01))

    def _HardSigmoid(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "hardsigmoid", alpha=self.number(n, attrs, "alpha", 0.2),
                        beta=self.number(n, attrs, "beta", 0.5))

    def _Elu(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "elu", alpha=self.number(n, attrs, "alpha", 1.0))

    def _Selu(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)  # ONNX's defaults are Klambauer et al.'s, in float32
        self.activation(n, "selu", alpha=self.number(n, attrs, "alpha", 1.67326319217681884765625),
                        gamma=self.number(n, attrs, "gamma", 1.05070102214813232421875))

    def _Softplus(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "softplus")

    def _Mish(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)
        self.activation(n, "mish")

    def _PRelu(self, n: Any, cur: str, attrs: dict) -> None:
        _, slope = (self.params(n, cur, ("data", "slope")) + [None])[:2]
        if slope is None:
            raise InputError(f"{self.g.where(n)} has no slope")
        if slope.size != 1:
            raise _Stop(f"it has a slope of shape {tuple(slope.shape)}; convcli's leaky_relu "
                        "takes one slope for every channel")
        value = float(slope.reshape(-1)[0])
        if not abs(value) <= FLOAT32_MAX:
            raise InputError(f"{self.g.where(n)} has a slope of {value}; want a finite number")
        self.activation(n, "leaky_relu", alpha=value)

    def number(self, n: Any, attrs: dict, key: str, default: float) -> float:
        value = attrs.get(key, default)
        if not isinstance(value, (int, float)) or not abs(value) <= FLOAT32_MAX:
            raise InputError(f"{self.g.where(n)} has {key}={geometry.brief(value)}; want a "
                             "finite number")
        return float(value)

    def _Clip(self, n: Any, cur: str, attrs: dict) -> None:
        lo, hi = self.clip_bounds(n, cur, attrs)
        if (lo, hi) == (0, 6):
            self.activation(n, "relu6")
        elif (lo, hi) == (0, math.inf):
            self.activation(n, "relu")
        elif (lo, hi) == (-math.inf, math.inf):
            return  # clips nothing
        else:
            params = {k: v for k, v in (("min", lo), ("max", hi)) if math.isfinite(v)}
            self.activation(n, "clip", **params)

    def clip_bounds(self, n: Any, cur: str, attrs: dict) -> tuple[float, float]:
        """A Clip node's bounds, from its inputs (opset 11 on) or attributes (before)."""
        where = self.g.where(n)
        _, lo_in, hi_in = (self.params(n, cur, ("data", "minimum", "maximum")) + [None, None])[:3]
        bounds = []
        for value, key, default in ((lo_in, "min", -math.inf), (hi_in, "max", math.inf)):
            if value is not None:
                if value.size != 1:
                    raise InputError(f"{where} has a {key}imum of shape {tuple(value.shape)}; "
                                     "Clip takes one number")
                bounds.append(float(value.reshape(-1)[0]))
            elif key in attrs:
                number = attrs[key]
                if not isinstance(number, (int, float)) or math.isnan(number):
                    raise InputError(f"{where} has {key}={geometry.brief(number)}; want a number")
                bounds.append(float(number))
            else:
                bounds.append(default)
        lo, hi = (-math.inf if v <= -FLOAT32_MAX else math.inf if v >= FLOAT32_MAX else v
                  for v in bounds)
        if math.isnan(lo) or math.isnan(hi):
            raise InputError(f"{where} has a bound that is not a number")
        if lo > hi:
            raise _Stop(f"its minimum {lo:g} is above its maximum {hi:g}")
        return lo, hi

    def _Identity(self, n: Any, cur: str, attrs: dict) -> None:
        self._no_params(n, cur)

    def old_training_mode(self, attrs: dict) -> None:
        """Before opset 7, BatchNormalization and Dropout train unless is_test is set."""
        if self.g.opset < 7 and not attrs.get("is_test", 0):
            raise _Stop("it runs in training mode (is_test=0, the default before opset 7)")

    def _Dropout(self, n: Any, cur: str, attrs: dict) -> None:
        self.old_training_mode(attrs)
        values = self.params(n, cur, ("data", "ratio", "training mode"))
        training = values[2] if len(values) > 2 else None
        if training is not None and training.size and training.reshape(-1)[0]:
            raise _Stop("it runs in training mode (drops values at random)")

    def _Pad(self, n: Any, cur: str, attrs: dict) -> None:
        """Spatial padding with zeros or a border mode, taken in by the Conv that reads it
        (see _Conv); pads of the batch or channel axis, cropping and other fill values stop
        the chain."""
        where = self.g.where(n)
        mode = attrs.get("mode", "constant")
        if mode not in PAD_BORDERS:
            raise InputError(f"{where} has mode={geometry.brief(mode)}; ONNX defines constant, "
                             "reflect, edge and wrap")
        axes: list[int] = [0, 1, 2, 3]
        if self.g.opset < 11:  # pads and value were attributes
            self._no_params(n, cur)
            pads, value = attrs.get("pads"), attrs.get("value", 0.0)
        else:
            given = self.params(n, cur, ("data", "pads", "constant value", "axes")) + [None] * 3
            if given[1] is None:
                raise InputError(f"{where} has no pads")
            pads = _whole(given[1])
            value = float(given[2].reshape(-1)[0]) if given[2] is not None and given[2].size \
                else 0.0
            if given[3] is not None:
                axes = _whole(given[3])
        if not (isinstance(pads, list) and len(pads) == 2 * len(axes)
                and all(geometry.is_int(v) for v in pads + axes)
                and all(-4 <= a < 4 for a in axes) and len({a % 4 for a in axes}) == len(axes)):
            raise InputError(f"{where} has pads={geometry.brief(pads)}; a Pad of a 4-D tensor "
                             "needs a start and an end for each of its axes")
        full = [0] * 8  # the starts of N, C, H, W, then their ends
        for k, a in enumerate(axes):
            full[int(a) % 4], full[int(a) % 4 + 4] = int(pads[k]), int(pads[k + len(axes)])
        if any(v < 0 for v in full):
            raise _Stop("it crops (negative pads)")
        if full[0] or full[1] or full[4] or full[5]:
            raise _Stop("it pads the batch or channel axis")
        if mode == "constant" and value != 0:
            raise _Stop(f"it pads with {value:g}; a conv's padding holds zeros")
        if not any(full):
            return  # pads nothing
        if self.layers and isinstance(self.layers[-1], _Pad):
            raise _Stop("two Pads in a row")
        top, left, bottom, right = full[2], full[3], full[6], full[7]
        try:
            geometry.padding([top, bottom, left, right])  # within the limits a bank holds
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
        self.layers.append(_Pad((top, bottom, left, right), PAD_BORDERS[mode],
                                [self.g.label(n)]))
        if self.hw is not None:
            self.hw = (self.hw[0] + top + bottom, self.hw[1] + left + right)

    def _Transpose(self, n: Any, cur: str, attrs: dict) -> None:
        """Models exported from channels-last frameworks (TensorFlow, Keras) start by turning
        their NHWC input into NCHW: convcli's inputs are (C, H, W) already, so that first
        Transpose is skipped; any other stops the chain."""
        self._no_params(n, cur)
        if attrs.get("perm") != [0, 3, 1, 2] or self.used or cur != self.start:
            raise _Stop("a Transpose is imported only as the model's first node, turning "
                        "its NHWC input into NCHW (perm [0, 3, 1, 2])")
        if len(self.dims) == 4:
            self.size_from((self.dims[3], self.dims[1], self.dims[2]))
        self.notes.append((0, f"{self.g.label(n)} skipped: it turns the model's channels-last "
                              "input into channels-first, which convcli's inputs are already"))

    def _LRN(self, n: Any, cur: str, attrs: dict) -> None:
        where = self.g.where(n)
        self._no_params(n, cur)
        size: Any = attrs.get("size")
        if not (geometry.is_int(size) and 1 <= size <= ops.MAX_LRN_SIZE):
            raise InputError(f"{where} has size={geometry.brief(size)}; LRN needs a whole "
                             f"number of channels from 1 to {ops.MAX_LRN_SIZE}")
        body = {"name": self.layer_name(n, "lrn"), "size": int(size),
                "alpha": self.number(n, attrs, "alpha", 1e-4),
                "beta": self.number(n, attrs, "beta", 0.75),
                "bias": self.number(n, attrs, "bias", 1.0)}
        self.layers.append({"lrn": body})

    def _MaxPool(self, n: Any, cur: str, attrs: dict) -> None:
        self.pool(n, cur, attrs, "max")

    def _AveragePool(self, n: Any, cur: str, attrs: dict) -> None:
        self.pool(n, cur, attrs, "avg")

    def pool(self, n: Any, cur: str, attrs: dict, mode: str) -> None:
        where = self.g.where(n)
        self._no_params(n, cur)
        kernel_shape = attrs.get("kernel_shape")
        if isinstance(kernel_shape, list) and len(kernel_shape) != 2:
            raise InputError(f"{where} is a {len(kernel_shape)}-D pooling; only 2-D pooling can "
                             "be imported")
        if kernel_shape is None:
            raise InputError(f"{where} has no kernel_shape")
        kernel_list = self.ints(n, attrs, "kernel_shape", [1, 1], "pooling")
        try:
            kernel = geometry.pair(kernel_list, "kernel_shape", maximum=geometry.MAX_FOOTPRINT)
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
        stride, dilation, explicit = self.geometry(n, attrs, kernel, "pooling")
        ceil_mode = attrs.get("ceil_mode", 0)
        count_include_pad = attrs.get("count_include_pad", 0)
        for key, value in (("ceil_mode", ceil_mode), ("count_include_pad", count_include_pad)):
            if value not in (0, 1):
                raise InputError(f"{where} has {key}={geometry.brief(value)}; want 0 or 1")
        if mode == "avg" and dilation != (1, 1):
            raise _Stop("average pooling with dilation is not supported")
        auto = self.auto_pad(n, attrs)
        if auto == "VALID":
            pads = (0, 0, 0, 0)
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            if ceil_mode:
                raise _Stop(f"ceil_mode with auto_pad={auto} is not supported")
            pads = self.same_pads(n, auto, kernel, stride, dilation)
        else:
            assert explicit is not None
            pads = explicit
        body: dict[str, Any] = {"name": self.layer_name(n, "pool"), "mode": mode,
                                "kernel": list(kernel), "stride": list(stride),
                                "padding": list(pads), "ceil_mode": bool(ceil_mode)}
        if mode == "max":
            body["dilation"] = list(dilation)
        else:
            body["count_include_pad"] = bool(count_include_pad)
        self.layers.append({"pool": body})
        self.track(kernel, stride, dilation, pads, bool(ceil_mode))
