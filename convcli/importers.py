"""First-layer weights of trained networks -> a bank file.

Sources: ``.npy`` arrays shaped (F, C, KH, KW) (or (F, KH, KW) for one channel), ``.npz``
archives holding ``weights`` (that shape) and optionally ``bias`` (F,), and ONNX models
(a Conv node, by name or the first one; weights, bias, stride, padding and dilation carried
over), the last through the optional ``onnx`` extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, UsageError

CHANNEL_MODES = {1: "gray", 3: "rgb"}


def load_weights(path: str, node: str | None = None) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """(weights (F, C, KH, KW), bias (F,), bank defaults, provenance) from a file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        weights, bias, defaults, about = _from_onnx(p, node)
    elif suffix in (".npy", ".npz"):
        if node is not None:
            raise UsageError("--node applies to ONNX models only")
        weights, bias = _from_numpy(p)
        defaults, about = {}, {"format": suffix[1:]}
    else:
        raise UsageError(f"{path}: unknown weights format {suffix or '(none)'}; give .npy, "
                         ".npz or .onnx")
    if weights.shape[1] not in CHANNEL_MODES:
        raise InputError(f"{path}: the kernels have {weights.shape[1]} input channels; a bank "
                         "takes 1 (gray) or 3 (rgb)")
    if not np.isfinite(weights).all() or not np.isfinite(bias).all():
        raise InputError(f"{path}: the weights or biases are not all finite")
    defaults = dict(defaults, input=CHANNEL_MODES[weights.shape[1]])
    return weights, bias, defaults, dict(about, source=str(path))


def _from_numpy(p: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: not a readable NumPy file ({e})") from None
    bias = None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "weights" in data.files:
                weights = data["weights"]
            else:
                four = [k for k in data.files if data[k].ndim == 4]
                if len(four) != 1:
                    raise InputError(f"{p}: holds {', '.join(data.files) or 'nothing'}; name the "
                                     "kernels 'weights' (F, C, KH, KW) and the biases 'bias'")
                weights = data[four[0]]
            bias = data["bias"] if "bias" in data.files else None
    else:
        weights = data
    weights = np.asarray(weights, np.float64)
    if weights.ndim == 3:
        weights = weights[:, None]
    if weights.ndim != 4 or 0 in weights.shape:
        raise InputError(f"{p}: weights have shape {weights.shape}; want (F, C, KH, KW)")
    bias = np.zeros(weights.shape[0]) if bias is None else np.asarray(bias, np.float64).ravel()
    if bias.shape != (weights.shape[0],):
        raise InputError(f"{p}: bias has {bias.size} values for {weights.shape[0]} filters")
    return weights, bias


def _from_onnx(p: Path, node_name: str | None):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise UsageError("importing ONNX models needs the onnx package: "
                         "pip install 'convcli[onnx]'") from None
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf raises its own types on damaged files
        raise InputError(f"{p}: not a readable ONNX model ({e})") from None
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        raise InputError(f"{p}: the model has no Conv node")
    if node_name is None:
        node = convs[0]
    else:
        found = [n for n in convs if n.name == node_name]
        if not found:
            raise InputError(f"{p}: no Conv node named {node_name!r}; Conv nodes: "
                             f"{', '.join(n.name or '(unnamed)' for n in convs)}")
        node = found[0]
    init = {t.name: t for t in model.graph.initializer}

    def tensor(name: str) -> np.ndarray:
        if name not in init:
            raise InputError(f"{p}: Conv node {node.name!r} takes {name!r} from another node; "
                             "only weights stored as initializers can be imported")
        return numpy_helper.to_array(init[name]).astype(np.float64)

    weights = tensor(node.input[1])
    bias = tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else \
        np.zeros(weights.shape[0])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) != 1:
        raise InputError(f"{p}: Conv node {node.name!r} is grouped (group={attrs['group']}); "
                         "only dense first layers (group 1) can become a bank")
    defaults: dict = {"border": "zero", "activation": "relu", "scale": "auto"}
    defaults["stride"] = list(attrs.get("strides", [1, 1]))
    defaults["dilation"] = list(attrs.get("dilations", [1, 1]))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER",):
        defaults["padding"] = "same"  # the extra pixel at the end, as convcli's same
    elif auto_pad == "VALID":
        defaults["padding"] = "valid"
    elif auto_pad == "NOTSET":
        top, left, bottom, right = list(attrs.get("pads", [0, 0, 0, 0]))
        defaults["padding"] = [top, bottom, left, right]
    else:
        raise InputError(f"{p}: Conv node {node.name!r} uses auto_pad={auto_pad}, which "
                         "convcli's padding cannot express (it puts the extra pixel first)")
    return weights, bias, defaults, {"format": "onnx", "node": node.name}
