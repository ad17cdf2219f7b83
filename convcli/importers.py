"""First-layer weights of trained networks -> a bank file.

Sources: ``.npy`` arrays shaped (F, C, KH, KW) (or (F, KH, KW) for one channel), ``.npz``
archives holding ``weights`` (that shape) and optionally ``bias`` (F,), and ONNX models
(a Conv node, by name or the first one; weights, bias, stride, padding and dilation carried
over), the last through the optional ``onnx`` extra.

These files come from anywhere, so shapes and types are checked from the headers before any
array is read (a .npz member is allocated at the size its header declares), pickled objects
are never loaded, and every problem is one InputError line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import bank, geometry
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


def _from_onnx(p: Path, node_name: str | None):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise UsageError("importing ONNX models needs the onnx package: "
                         "pip install 'convcli[onnx]'") from None
    if p.stat().st_size > MAX_ONNX_BYTES:
        raise InputError(f"{p}: larger than 2 GiB, more than an ONNX model can be")
    try:
        # External data files would be opened by paths the model names: never followed.
        model = onnx.load(str(p), load_external_data=False)
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
    except Exception as e:  # protobuf raises its own types on damaged files
        raise InputError(f"{p}: not a readable ONNX model ({_reason(e)})") from None
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
