"""ONNX networks -> layered banks: every supported operation, checked against ONNX's own
reference evaluator on models built here, and the models that cannot be imported.

Each model is imported, written with bank.dump_network, read back with bank.load_network and
run with network.run on a random float32 (C, H, W) input; the maps must equal
onnx.reference.ReferenceEvaluator's output at the last imported node within 1e-5 of its
largest value. The layer dicts are also run by a small float64 NumPy evaluator written here
from the schema (``run_layers``), a second opinion independent of the engine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from convcli import importers
from convcli.errors import InputError, UsageError
from oracle import same_pads

RNG = np.random.default_rng(20240611)


# --- building models ------------------------------------------------------------------------

def arr(*shape, scale=0.5, positive=False):
    a = RNG.standard_normal(shape) * scale
    return (np.abs(a) + 0.5 if positive else a).astype(np.float32)


def node(op, inputs, output, name=None, **attrs):
    return helper.make_node(op, list(inputs), [output], name=name or output, **attrs)


def const(name, value):
    """A Constant node holding value."""
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=numpy_helper.from_array(np.asarray(value, np.float32), name))


def save(tmp_path, nodes, inits=None, shape=(1, 3, 17, 15), opset=17, name="m.onnx"):
    inits = inits or {}
    graph = helper.make_graph(
        nodes, "test-graph", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k)
                     for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path, model


def conv(name, x, w_name, b_name=None, **attrs):
    inputs = [x, w_name] + ([b_name] if b_name else [])
    return node("Conv", inputs, name, **attrs)


def bn(name, x, inits, channels, eps=1e-3):
    inits.update({f"{name}_s": arr(channels), f"{name}_b": arr(channels),
                  f"{name}_m": arr(channels), f"{name}_v": arr(channels, positive=True)})
    return node("BatchNormalization", [x] + [f"{name}_{k}" for k in "sbmv"], name,
                epsilon=eps)


# --- running them ---------------------------------------------------------------------------

def reference(model, tensor: str, x: np.ndarray) -> np.ndarray:
    """ONNX's reference output for tensor, from the nodes up to the one that writes it (the
    rest may be operations the reference evaluator does not know)."""
    import copy

    prefix = copy.deepcopy(model)
    last = max(i for i, n in enumerate(prefix.graph.node) if tensor in n.output)
    del prefix.graph.node[last + 1:]
    del prefix.graph.output[:]
    prefix.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    opset = next(o.version for o in prefix.opset_import if o.domain in ("", "ai.onnx"))
    evaluator = ReferenceEvaluator(prefix, new_ops=[LRN] + (
        [BatchNormalization] if 9 <= opset <= 13 else []))
    out = cast(list, evaluator.run([tensor], {"x": x[None]}))
    return np.asarray(out[0])[0]


class BatchNormalization(OpRun):
    """Inference BatchNormalization, with the stored statistics, for opsets 9 to 13: there
    the evaluator's own mixes in the batch's statistics (by momentum, which defaults to
    0.9), where the standard, and onnxruntime, use only the stored ones outside training."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=None, **_):
        c = (1, -1, 1, 1)
        eps = 1e-5 if epsilon is None else epsilon
        y = (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + eps) * scale.reshape(c) \
            + bias.reshape(c)
        return (y.astype(x.dtype),)


class LRN(OpRun):
    """LRN as the ONNX operator's text defines it: onnx.reference's own (1.23) loops over
    the batch axis where it means the channels, so every channel but the first is divided
    by bias ** beta alone."""

    op_domain = ""

    def _run(self, x, alpha=1e-4, beta=0.75, bias=1.0, size=None):
        c = x.shape[1]
        square_sum = np.zeros(x.shape, np.float64)
        for k in range(c):
            lo, hi = max(0, k - math.floor((size - 1) / 2)), \
                min(c, k + math.ceil((size - 1) / 2) + 1)
            square_sum[:, k] = (x[:, lo:hi].astype(np.float64) ** 2).sum(axis=1)
        return ((x / (bias + alpha / size * square_sum) ** beta).astype(x.dtype),)


def output_of(model, net) -> str:
    """The tensor written by the last imported node (also named in the provenance)."""
    last = net.nodes[-1]
    assert net.provenance["upto"] == last and net.provenance["nodes"] == len(net.nodes)
    found = [n for n in model.graph.node if n.name == last]
    assert len(found) == 1, last
    return found[0].output[0]


def assert_close(ours, want):
    """Equal within 1e-5 of the largest value, or of 1 for maps clipped into a smaller range
    (their values keep the float32 rounding of the unclipped sums, of order 1 here)."""
    assert ours.shape == want.shape, (ours.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5 * scale)


def check(path, model, x=None, **kw):
    """Import, compare our NumPy evaluation of the layer dicts with the reference; the
    imported network for further checks."""
    net = importers.import_network(str(path), **kw)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if x is None:
        x = RNG.standard_normal(shape[1:]).astype(np.float32)
    want = reference(model, output_of(model, net), x)
    assert_close(run_layers(net.layers, x), want)
    check_end_to_end(net, x, want)
    return net


def check_end_to_end(net, x, want):
    """bank.dump_network -> bank.load_network -> network.run equals the reference."""
    import tempfile

    from convcli import bank, network

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "net.yaml"
        path.write_text(bank.dump_network(**net.dump_args()), encoding="utf-8")
        loaded = bank.load_network(str(path))
    data, names = network.run(x, loaded)
    assert_close(np.asarray(data), want)
    assert len(names) == want.shape[0]


# --- a float64 evaluator of the layer dicts, straight from the schema ----------------------

def run_layers(layers, x):
    y = np.asarray(x, np.float64)
    for item in layers:
        (kind, body), = item.items()
        y = {"conv": run_conv, "pool": run_pool, "activation": run_activation,
             "normalize": run_normalize, "lrn": run_lrn}[kind](y, body)
    return y


def pads_of(padding, size, kernel, stride, dilation):
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        return same_pads(size[0], kernel[0], stride[0], dilation[0]) + \
            same_pads(size[1], kernel[1], stride[1], dilation[1])
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def run_conv(x, body):
    d = body["defaults"]
    w = np.array([f["weights"] for f in body["filters"]], np.float64)
    if w.ndim == 3:
        w = w[:, None]
    b = np.array([f.get("bias", 0.0) for f in body["filters"]])
    groups = d.get("groups", 1)
    stride, dilation = pair(d.get("stride", 1)), pair(d.get("dilation", 1))
    f, cg, kh, kw = w.shape
    assert x.shape[0] == cg * groups
    t, bo, l, r = pads_of(d.get("padding", "same"), x.shape[1:], (kh, kw), stride, dilation)
    border = {"zero": "constant", "reflect": "reflect", "replicate": "edge",
              "wrap": "wrap"}[d.get("border", "zero")]
    xp = np.pad(x, ((0, 0), (t, bo), (l, r)), mode=border)
    ho = (xp.shape[1] - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    wo = (xp.shape[2] - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    patches = np.empty((x.shape[0], kh, kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation[0], j * dilation[1]
            patches[:, i, j] = xp[:, y0:y0 + (ho - 1) * stride[0] + 1:stride[0],
                                  x0:x0 + (wo - 1) * stride[1] + 1:stride[1]]
    out = np.empty((f, ho, wo))
    per = f // groups
    for g in range(groups):
        out[g * per:(g + 1) * per] = np.einsum(
            "fcij,cijyx->fyx", w[g * per:(g + 1) * per], patches[g * cg:(g + 1) * cg])
    out += b[:, None, None]
    return run_activation(out, {"function": d.get("activation", "relu")})


def run_activation(x, body):
    fn = body["function"]
    if fn == "none":
        return x
    if fn == "relu":
        return np.maximum(x, 0)
    if fn == "relu6":
        return np.clip(x, 0, 6)
    if fn == "clip":
        return np.clip(x, body.get("min", -np.inf), body.get("max", np.inf))
    if fn == "leaky_relu":
        return np.where(x >= 0, x, body.get("alpha", 0.01) * x)
    if fn == "hardswish":
        return x * np.clip(x + 3, 0, 6) / 6
    if fn == "hardsigmoid":
        return np.clip(body.get("alpha", 1 / 6) * x + body.get("beta", 0.5), 0, 1)
    if fn == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if fn == "tanh":
        return np.tanh(x)
    if fn == "abs":
        return np.abs(x)
    if fn == "silu":
        return x / (1 + np.exp(-x))
    if fn in ("elu", "selu"):
        y = np.where(x > 0, x, body.get("alpha", 1.0) * np.expm1(np.minimum(x, 0)))
        return y * body["gamma"] if fn == "selu" else y
    if fn == "softplus":
        return np.logaddexp(0, x)
    if fn == "mish":
        return x * np.tanh(np.logaddexp(0, x))
    raise AssertionError(fn)


def run_lrn(x, body):
    size, c = body["size"], x.shape[0]
    out = np.empty_like(x)
    for k in range(c):
        lo, hi = max(0, k - (size - 1) // 2), min(c, k + size // 2 + 1)
        s = (x[lo:hi] ** 2).sum(axis=0)
        out[k] = x[k] / (body["bias"] + body["alpha"] / size * s) ** body["beta"]
    return out


def run_normalize(x, body):
    mean, std = np.asarray(body["mean"]), np.asarray(body["std"])
    return (x - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)


def run_pool(x, body):
    """torch's max_pool2d / avg_pool2d with ONNX's separate pads on each side."""
    kh, kw = pair(body["kernel"])
    sy, sx = pair(body.get("stride", (kh, kw)))
    dy, dx = pair(body.get("dilation", 1))
    t, b, l, r = pads_of(body.get("padding", 0), None, None, None, None)
    ceil, include = body.get("ceil_mode", False), body.get("count_include_pad", True)
    c, h, w = x.shape

    def count(n, k, s, d, before, after):
        room = n + before + after - (k - 1) * d - 1
        out = (math.ceil(room / s) if ceil else room // s) + 1
        return out - 1 if ceil and (out - 1) * s >= n + before else out

    ho, wo = count(h, kh, sy, dy, t, b), count(w, kw, sx, dx, l, r)
    need_h, need_w = (ho - 1) * sy + (kh - 1) * dy + 1, (wo - 1) * sx + (kw - 1) * dx + 1
    big = np.full((c, max(need_h, h + t + b), max(need_w, w + l + r)), np.nan)
    big[:, t:t + h, l:l + w] = x
    padded = np.zeros(big.shape[1:], bool)
    padded[:h + t + b, :w + l + r] = True  # inside the padding: counted by count_include_pad
    vals, masks = [], []
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dy, i * dy + (ho - 1) * sy + 1, sy)
            cols = slice(j * dx, j * dx + (wo - 1) * sx + 1, sx)
            vals.append(big[:, rows, cols])
            masks.append(padded[rows, cols])
    v, m = np.stack(vals), np.stack(masks)
    if body["mode"] == "max":
        return np.nanmax(v, axis=0)
    total = np.nansum(v, axis=0)
    return total / (m.sum(axis=0) if include else (~np.isnan(v)).sum(axis=0))


# --- whole networks -------------------------------------------------------------------------

def test_a_small_cnn_with_normalisation_batch_norm_groups_and_pools(tmp_path):
    inits = {"w1": arr(8, 3, 3, 3), "b1": arr(8), "w2": arr(8, 4, 3, 3), "w3": arr(8, 1, 3, 3),
             "b3": arr(8)}
    nodes = [
        const("mean", np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)),
        const("std", np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)),
        node("Sub", ["x", "mean"], "centred"), node("Div", ["centred", "std"], "scaled"),
        conv("conv1", "scaled", "w1", "b1", pads=[1, 1, 1, 1]),
        bn("bn1", "conv1", inits, 8), node("Relu", ["bn1"], "relu1"),
        node("MaxPool", ["relu1"], "pool1", kernel_shape=[2, 2], strides=[2, 2]),
        conv("conv2", "pool1", "w2", group=2, strides=[2, 1], dilations=[1, 2],
             pads=[2, 1, 0, 2]),
        bn("bn2", "conv2", inits, 8), node("LeakyRelu", ["bn2"], "leaky", alpha=0.2),
        node("AveragePool", ["leaky"], "avg", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             count_include_pad=1),
        conv("dw", "avg", "w3", "b3", group=8, pads=[1, 1, 1, 1]),
        node("HardSwish", ["dw"], "hswish"),
    ]
    path, model = save(tmp_path, nodes, inits, opset=17)
    net = check(path, model)
    kinds = [next(iter(layer)) for layer in net.layers]
    assert kinds == ["normalize", "conv", "pool", "conv", "activation", "pool", "conv",
                     "activation"]
    first, second, third = (layer["conv"] for layer in net.layers if "conv" in layer)
    assert first["defaults"]["input"] == "dense"  # after normalize: exactly 3 channels
    assert first["defaults"]["activation"] == "relu"
    assert second["defaults"]["input"] == "dense" and second["defaults"]["groups"] == 2
    assert second["defaults"]["padding"] == [2, 0, 1, 2]  # ONNX pads are [t, l, b, r]
    assert third["defaults"]["groups"] == 8 and np.shape(third["filters"][0]["weights"]) == \
        (1, 3, 3)
    assert [f["name"] for f in first["filters"]] == [f"conv1_{k:03d}" for k in range(8)]
    assert net.notes == ["the chain reaches the model's output 'hswish'"]
    assert net.nodes[:2] == ["centred", "scaled"]
    assert net.provenance["format"] == "onnx" and net.provenance["opset"] == 17


@pytest.mark.parametrize("activation, attrs, inputs, function", [
    ("Relu", {}, {}, "relu"),
    ("Abs", {}, {}, "abs"),
    ("Sigmoid", {}, {}, "sigmoid"),
    ("Tanh", {}, {}, "tanh"),
    ("HardSwish", {}, {}, "hardswish"),
    ("LeakyRelu", {}, {}, "leaky_relu"),
    ("LeakyRelu", {"alpha": 0.3}, {}, "leaky_relu"),
    ("HardSigmoid", {}, {}, "hardsigmoid"),
    ("HardSigmoid", {"alpha": 0.35, "beta": 0.4}, {}, "hardsigmoid"),
    ("Clip", {}, {"lo": 0.0, "hi": 6.0}, "relu6"),
    ("Clip", {}, {"lo": -0.3, "hi": 0.4}, "clip"),
    ("Clip", {}, {"lo": 0.0}, "relu"),
    ("Clip", {}, {"hi": 0.25}, "clip"),
    ("Elu", {}, {}, "elu"),
    ("Elu", {"alpha": 0.4}, {}, "elu"),
    ("Selu", {}, {}, "selu"),
    ("Selu", {"alpha": 1.5, "gamma": 1.1}, {}, "selu"),
    ("Softplus", {}, {}, "softplus"),
    ("Mish", {}, {}, "mish"),
])
def test_every_activation_after_a_conv_and_after_a_pool(tmp_path, activation, attrs, inputs,
                                                         function):
    inits = {"w": arr(4, 3, 3, 3), "b": arr(4)}
    inits.update({k: np.float32(v) for k, v in inputs.items()})
    extra = [k if k in inputs else "" for k in ("lo", "hi")] if inputs else []
    while extra and not extra[-1]:  # Clip's optional inputs: min, then max
        extra.pop()
    nodes = [conv("c", "x", "w", "b", pads=[1, 1, 1, 1]),
             node(activation, ["c"] + extra, "act1", **attrs),
             node("MaxPool", ["act1"], "p", kernel_shape=[2, 2], strides=[1, 1]),
             node(activation, ["p"] + extra, "act2", **attrs)]
    path, model = save(tmp_path, nodes, inits, opset=18 if activation == "Mish" else 17)
    x = RNG.standard_normal((3, 17, 15)).astype(np.float32) * 3
    net = check(path, model, x)
    layers = [(next(iter(layer)), next(iter(layer.values()))) for layer in net.layers]
    if function in ("relu", "abs"):  # fused into the conv pass
        assert [k for k, _ in layers] == ["conv", "pool", "activation"]
        assert layers[0][1]["defaults"]["activation"] == function
    else:
        assert [k for k, _ in layers] == ["conv", "activation", "pool", "activation"]
        assert layers[0][1]["defaults"]["activation"] == "none"
    assert layers[-1][1]["function"] == function


def test_silu_spelled_as_sigmoid_and_mul_and_prelu_with_one_slope(tmp_path):
    inits = {"w": arr(4, 3, 3, 3), "b": arr(4), "slope": np.float32(0.15).reshape(1),
             "w2": arr(2, 4, 1, 1)}
    nodes = [conv("c", "x", "w", "b", pads=[1, 1, 1, 1]), node("Sigmoid", ["c"], "gate"),
             node("Mul", ["gate", "c"], "silu"), node("PRelu", ["silu", "slope"], "prelu"),
             conv("c2", "prelu", "w2"), node("Sigmoid", ["c2"], "s2")]
    path, model = save(tmp_path, nodes, inits)
    x = RNG.standard_normal((3, 17, 15)).astype(np.float32) * 3
    net = check(path, model, x)
    kinds = [(k, body.get("function")) for layer in net.layers for k, body in layer.items()]
    assert kinds == [("conv", None), ("activation", "silu"), ("activation", "leaky_relu"),
                     ("conv", None), ("activation", "sigmoid")]
    assert net.nodes == ["c", "gate", "silu", "prelu", "c2", "s2"]
    # a Sigmoid whose output is read elsewhere too is no SiLU: the chain stops at the branch
    inits["w3"] = arr(2, 4, 1, 1)
    nodes = nodes[:3] + [conv("c3", "gate", "w3")]
    path, model = save(tmp_path, nodes, inits, name="branch.onnx")
    assert importers.import_network(str(path)).nodes == ["c"]


def test_prelu_with_a_slope_per_channel_stops_the_chain(tmp_path):
    inits = {"w": arr(4, 3, 3, 3), "slope": arr(4, 1, 1)}
    nodes = [conv("c", "x", "w"), node("PRelu", ["c", "slope"], "prelu")]
    path, model = save(tmp_path, nodes, inits)
    net = check(path, model)
    assert net.notes[-1] == ("stopped at PRelu node 'prelu': it has a slope of shape (4, 1, 1); "
                             "convcli's leaky_relu takes one slope for every channel")


def test_clip_bounds_from_attributes_in_old_opsets(tmp_path):
    inits = {"w": arr(4, 1, 3, 3)}
    nodes = [conv("c", "x", "w"), node("Clip", ["c"], "clip", min=-0.2, max=0.3),
             node("Clip", ["clip"], "six", min=0.0, max=6.0)]
    path, model = save(tmp_path, nodes, inits, shape=(1, 1, 12, 12), opset=6)
    net = check(path, model)
    assert net.layers[0]["conv"]["defaults"]["input"] == "gray"
    assert net.layers[1]["activation"] == {"name": "clip", "function": "clip", "min": -0.2,
                                           "max": 0.3}
    assert net.layers[2]["activation"]["function"] == "relu6"


@pytest.mark.parametrize("mode, attrs", [
    ("MaxPool", dict(kernel_shape=[3, 2], strides=[2, 3], pads=[0, 1, 2, 1], ceil_mode=1,
                     dilations=[2, 1])),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 0, 1, 2], dilations=[1, 2])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2], ceil_mode=1,
                         count_include_pad=0)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2], ceil_mode=1,
                         count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[2, 4], strides=[3, 1], pads=[0, 2, 1, 1])),
    ("AveragePool", dict(kernel_shape=[5, 5], strides=[5, 5])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("MaxPool", dict(kernel_shape=[3, 3], auto_pad="SAME_LOWER")),
    ("AveragePool", dict(kernel_shape=[2, 4], auto_pad="SAME_LOWER")),
    ("AveragePool", dict(kernel_shape=[2, 4], auto_pad="SAME_UPPER", count_include_pad=1)),
    ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="VALID")),
])
def test_pools(tmp_path, mode, attrs):
    inits = {"w": arr(5, 2, 3, 3)}
    nodes = [conv("c", "x", "w", pads=[1, 1, 1, 1]), node(mode, ["c"], "pool", **attrs)]
    path, model = save(tmp_path, nodes, inits, shape=(1, 2, 13, 11), opset=19)
    net = check(path, model)
    pool = net.layers[1]["pool"]
    assert pool["mode"] == {"MaxPool": "max", "AveragePool": "avg"}[mode]
    assert pool["stride"] == attrs.get("strides", [1, 1])  # ONNX's default stride is 1
    if mode == "AveragePool":  # ONNX's default leaves the padding out
        assert pool["count_include_pad"] is bool(attrs.get("count_include_pad", 0))


@pytest.mark.parametrize("attrs, fixed", [
    (dict(auto_pad="SAME_UPPER", strides=[2, 2], dilations=[2, 1]), False),
    (dict(auto_pad="SAME_UPPER", strides=[1, 3]), False),
    (dict(auto_pad="SAME_LOWER"), False),  # stride 1: the same pads for every size
    (dict(auto_pad="SAME_LOWER", dilations=[1, 3]), False),
    (dict(auto_pad="SAME_LOWER", strides=[2, 1]), True),  # depends on the size
    (dict(auto_pad="VALID", strides=[2, 2]), False),
])
def test_conv_auto_pad(tmp_path, attrs, fixed):
    inits = {"w": arr(3, 2, 4, 2), "b": arr(3)}
    path, model = save(tmp_path, [conv("c", "x", "w", "b", **attrs)], inits,
                       shape=(1, 2, 13, 10))
    net = check(path, model)
    notes = [n for n in net.notes if "fixed padding" in n]
    assert len(notes) == int(fixed)
    if fixed:
        assert notes[0] == ("Conv node 'c': auto_pad=SAME_LOWER with stride 2x1 became fixed "
                            "padding computed for its 13x10 input (the model's size); inputs "
                            "of other sizes are padded the same, where ONNX would adapt")
    if attrs["auto_pad"] == "SAME_UPPER":
        assert net.layers[0]["conv"]["defaults"]["padding"] == "same"


def test_same_lower_with_a_stride_needs_a_fixed_input_size(tmp_path):
    inits = {"w": arr(3, 2, 3, 3), "w2": arr(3, 3, 3, 3)}
    nodes = [conv("c", "x", "w", pads=[1, 1, 1, 1]),
             conv("c2", "c", "w2", auto_pad="SAME_LOWER", strides=[2, 2])]
    path, model = save(tmp_path, nodes, inits, shape=("N", 2, "H", "W"))
    net = importers.import_network(str(path))
    assert [next(iter(layer)) for layer in net.layers] == ["conv"]
    assert net.notes == ["stopped at Conv node 'c2': auto_pad=SAME_LOWER with stride 2 pads by "
                         "an amount that depends on the input size, which the model leaves "
                         "open"]


def test_weights_in_constant_nodes_identity_and_dropout_skipped(tmp_path):
    w, b = arr(4, 3, 3, 3), arr(4)
    off = helper.make_node("Constant", [], ["off"], name="off",
                           value=helper.make_tensor("off", TensorProto.BOOL, [], [False]))
    nodes = [const("w_c", w), helper.make_node("Identity", ["w_c"], ["w_id"], name="w_id"),
             const("b_c", b), off, node("Identity", ["x"], "x_id"),
             conv("c", "x_id", "w_id", "b_c", strides=[2, 2]),
             helper.make_node("Dropout", ["c", "ratio", "off"], ["drop", "mask"], name="drop"),
             node("Tanh", ["drop"], "tanh"),
             helper.make_node("Dropout", ["tanh"], ["drop2"], name="drop2")]
    path, model = save(tmp_path, nodes, {"ratio": np.float32(0.3)}, opset=13)
    net = check(path, model)
    assert [next(iter(layer)) for layer in net.layers] == ["conv", "activation"]
    assert net.nodes == ["x_id", "c", "drop", "tanh", "drop2"]
    assert net.notes == ["the chain reaches the model's output 'drop2'"]
    np.testing.assert_allclose(np.array([f["weights"] for f in net.layers[0]["conv"]["filters"]]),
                               w)  # exactly the float32 weights, written shortest


def test_per_channel_arithmetic_folds_into_convs_or_becomes_layers(tmp_path):
    inits = {"w": arr(4, 3, 3, 3), "w2": arr(4, 4, 3, 3), "scale": arr(1, 4, 1, 1),
             "shift": arr(4, 1, 1), "neg": -arr(4, 1, 1, positive=True), "two": np.float32(2),
             "off": arr(1, 3, 1, 1)}
    nodes = [
        node("Mul", ["two", "x"], "doubled"), node("Add", ["doubled", "off"], "shifted"),
        conv("c", "shifted", "w", pads=[1, 1, 1, 1]),
        node("Mul", ["c", "scale"], "c_scaled"), node("Sub", ["shift", "c_scaled"], "c_shifted"),
        node("Relu", ["c_shifted"], "relu"),
        node("Mul", ["relu", "neg"], "negated"), node("Div", ["negated", "two"], "halved"),
        bn("bn", "halved", inits, 4),
        conv("c2", "bn", "w2", pads=[1, 1, 1, 1]),
    ]
    path, model = save(tmp_path, nodes, inits)
    net = check(path, model)
    kinds = [next(iter(layer)) for layer in net.layers]
    # Mul/Add at the start: normalize; Mul/Sub after the conv: folded (so Relu is fused);
    # Mul/Div/BatchNormalization after the relu, with negative scales: one 1x1 grouped conv
    # (the padded conv after it cannot take it in: its border would hold the shift, not 0).
    assert kinds == ["normalize", "conv", "conv", "conv"]
    norm = net.layers[0]["normalize"]
    assert norm["std"] == [0.5] * 3 and len(norm["mean"]) == 3
    assert net.layers[1]["conv"]["defaults"]["activation"] == "relu"
    middle = net.layers[2]["conv"]
    assert middle["defaults"]["groups"] == 4 and middle["name"] == "negated"
    assert net.layers[1]["conv"]["defaults"]["input"] == "dense"  # not the first layer


@pytest.mark.parametrize("opset, attrs, stop", [
    (9, dict(momentum=0.5), None),  # momentum is for training: the stored statistics count
    (12, {}, None),
    (6, dict(is_test=1, spatial=1), None),
    (6, {}, "stopped at BatchNormalization node 'bn': it runs in training mode (is_test=0, "
            "the default before opset 7)"),
    (6, dict(is_test=1, spatial=0), "stopped at BatchNormalization node 'bn': spatial=0 "
                                    "(statistics per pixel) is not supported"),
])
def test_batch_norm_in_older_opsets(tmp_path, opset, attrs, stop):
    inits = {"w": arr(4, 3, 3, 3), "s": arr(4), "b": arr(4), "m": arr(4),
             "v": arr(4, positive=True)}
    nodes = [conv("c", "x", "w"), node("BatchNormalization", ["c", "s", "b", "m", "v"], "bn",
                                       epsilon=0.01, **attrs)]
    path, model = save(tmp_path, nodes, inits, opset=opset)
    net = check(path, model)
    assert net.nodes == (["c"] if stop else ["c", "bn"])
    assert net.notes[-1] == (stop or "the chain reaches the model's output 'bn'")


def test_dropout_before_opset_7_drops_unless_it_is_a_test(tmp_path):
    inits = {"w": arr(4, 3, 3, 3)}
    nodes = [conv("c", "x", "w"), node("Dropout", ["c"], "d", is_test=1),
             node("Dropout", ["d"], "d2")]
    path, model = save(tmp_path, nodes, inits, opset=6)
    net = importers.import_network(str(path))
    assert net.nodes == ["c", "d"]
    assert net.notes == ["stopped at Dropout node 'd2': it runs in training mode (is_test=0, "
                         "the default before opset 7)"]


def spelled_hardswish(x, gate_first=False, three=3.0, six=6.0, divide=True):
    """x * clip(x + 3, 0, 6) / 6 in basic operations, as PaddlePaddle exports HardSwish."""
    consts = [const(f"{x}_three", np.float32(three)), const(f"{x}_six", np.float32(six)),
              const(f"{x}_zero", np.float32(0)), const(f"{x}_top", np.float32(6))]
    scale = (node("Div", [f"{x}_gate", f"{x}_six"], f"{x}_scaled") if divide else
             node("Mul", [f"{x}_gate", f"{x}_sixth"], f"{x}_scaled"))
    if not divide:
        consts.append(const(f"{x}_sixth", np.float32(1 / six)))
    ops = [node("Add", [x, f"{x}_three"], f"{x}_plus"),
           node("Clip", [f"{x}_plus", f"{x}_zero", f"{x}_top"], f"{x}_gate")]
    if gate_first:  # relu6(x + 3) / 6, then times x
        ops += [scale, node("Mul", [f"{x}_scaled", x], f"{x}_hs")]
    else:  # x times relu6(x + 3), then / 6
        ops += [node("Mul", [x, f"{x}_gate"], f"{x}_prod"),
                node("Div", [f"{x}_prod", f"{x}_six"], f"{x}_hs") if divide else
                node("Mul", [f"{x}_prod", f"{x}_sixth"], f"{x}_hs")]
    return consts + ops


@pytest.mark.parametrize("gate_first", [False, True])
@pytest.mark.parametrize("divide", [True, False])
def test_hardswish_spelled_out_is_one_activation(tmp_path, gate_first, divide):
    inits = {"w": arr(4, 3, 3, 3) * 4, "w2": arr(4, 4, 1, 1)}
    nodes = [conv("c", "x", "w", pads=[1, 1, 1, 1]),
             *spelled_hardswish("c", gate_first=gate_first, divide=divide),
             conv("c2", "c_hs", "w2")]
    path, model = save(tmp_path, nodes, inits, opset=12)
    net = check(path, model)
    assert [next(iter(layer)) for layer in net.layers] == ["conv", "activation", "conv"]
    assert net.layers[1]["activation"] == {"name": "c_hs", "function": "hardswish"}
    assert net.nodes[-1] == "c2" and len(net.nodes) == 6
    # The group is one activation: it cannot end inside.
    assert import_error(path, upto="c_plus").startswith(
        f"{path}: node 'c_plus' is not on the chain of layers convcli can import from the "
        "model's input; stopped after 'c': it feeds 2 nodes")


@pytest.mark.parametrize("change, at", [
    (dict(three=2.0), "'c'"), (dict(six=5.0), "'c'"),
])
def test_a_near_hardswish_is_a_branch(tmp_path, change, at):
    inits = {"w": arr(4, 3, 3, 3)}
    nodes = [conv("c", "x", "w", pads=[1, 1, 1, 1]), *spelled_hardswish("c", **change)]
    path, model = save(tmp_path, nodes, inits, opset=12)
    net = check(path, model)
    assert net.notes == [f"stopped after {at}: it feeds 2 nodes (Add node 'c_plus', Mul node "
                         "'c_prod'), a branch (e.g. a residual connection)"]


def test_per_channel_arithmetic_folds_into_a_conv_without_padding(tmp_path):
    inits = {"mean": arr(1, 3, 1, 1), "std": arr(3, 1, 1, positive=True),
             "w": arr(4, 3, 3, 3), "neg": -arr(4, 1, 1, positive=True), "off": arr(4, 1, 1),
             "dw": arr(8, 2, 1, 1), "b": arr(8)}
    nodes = [node("Sub", ["x", "mean"], "centred"), node("Div", ["centred", "std"], "scaled"),
             conv("c", "scaled", "w"),  # no padding: the normalisation folds in
             node("Relu", ["c"], "r"), node("Mul", ["r", "neg"], "m"),
             node("Add", ["m", "off"], "a"),
             conv("g", "a", "dw", "b", group=2, strides=[2, 2], auto_pad="SAME_UPPER")]
    path, model = save(tmp_path, nodes, inits)
    net = check(path, model)
    assert [next(iter(layer)) for layer in net.layers] == ["conv", "conv"]
    first, second = (layer["conv"] for layer in net.layers)
    assert first["defaults"]["input"] == "rgb" and first["defaults"]["activation"] == "relu"
    assert second["defaults"]["groups"] == 2
    assert second["description"] == "ONNX Mul node 'm', Add node 'a', Conv node 'g'"
    assert net.nodes == ["centred", "scaled", "c", "r", "m", "a", "g"]


def test_batch_norm_alone_with_positive_scales_is_a_normalize_layer(tmp_path):
    inits: dict[str, np.ndarray] = {}
    nodes = [node("Relu", ["x"], "r"), bn("bn", "r", inits, 3)]
    inits["bn_s"] = np.abs(inits["bn_s"]) + 0.1
    path, model = save(tmp_path, nodes, inits)
    net = check(path, model)
    assert [next(iter(layer)) for layer in net.layers] == ["activation", "normalize"]


# --- where the chain stops ------------------------------------------------------------------

def residual(tmp_path):
    inits = {"w1": arr(4, 3, 3, 3), "w2": arr(4, 4, 3, 3), "w3": arr(4, 4, 3, 3)}
    nodes = [conv("stem", "x", "w1", pads=[1, 1, 1, 1]), node("Relu", ["stem"], "stem_relu"),
             conv("branch", "stem_relu", "w2", pads=[1, 1, 1, 1]),
             node("Add", ["branch", "stem_relu"], "sum"), node("Relu", ["sum"], "out"),
             conv("head", "out", "w3"), node("Softmax", ["head"], "probs")]
    return save(tmp_path, nodes, inits)


def test_a_residual_branch_stops_the_chain(tmp_path):
    path, model = residual(tmp_path)
    net = check(path, model)
    assert len(net.layers) == 1 and net.layers[0]["conv"]["defaults"]["activation"] == "relu"
    assert net.notes == ["stopped after 'stem_relu': it feeds 2 nodes (Conv node 'branch', Add "
                         "node 'sum'), a branch (e.g. a residual connection)"]
    assert net.nodes == ["stem", "stem_relu"]
    assert net.provenance["stopped"] == net.notes[-1]


def test_upto_stops_after_the_named_node(tmp_path):
    path, model = residual(tmp_path)
    net = check(path, model, upto="stem")
    assert net.layers[0]["conv"]["defaults"]["activation"] == "none"
    assert net.notes == ["stopped after Conv node 'stem', as asked"]
    assert import_error(path, upto="head") == (
        f"{path}: node 'head' is not on the chain of layers convcli can import from the model's "
        "input; stopped after 'stem_relu': it feeds 2 nodes (Conv node 'branch', Add node "
        "'sum'), a branch (e.g. a residual connection)")
    with pytest.raises(UsageError) as info:
        importers.import_network(str(path), upto="nowhere")
    assert str(info.value) == f"{path}: the model has no node named 'nowhere'"


def test_node_imports_one_conv_with_what_folds_into_it(tmp_path):
    path, model = residual(tmp_path)
    net = importers.import_network(str(path), node="branch")
    assert len(net.layers) == 1 and net.notes == ["imported Conv node 'branch' alone"]
    assert net.layers[0]["conv"]["defaults"]["input"] == "dense"
    x = RNG.standard_normal((4, 9, 9)).astype(np.float32)
    branch = helper.make_graph([model.graph.node[2]], "one",
                               [helper.make_tensor_value_info("stem_relu", TensorProto.FLOAT,
                                                              None)],
                               [helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)],
                               initializer=[t for t in model.graph.initializer if t.name == "w2"])
    out = cast(list, ReferenceEvaluator(helper.make_model(branch)).run(None,
                                                                        {"stem_relu": x[None]}))
    want = np.asarray(out[0])[0]
    assert_close(run_layers(net.layers, x), want)
    check_end_to_end(net, x, want)

    inits = {"w": arr(4, 3, 3, 3)}
    nodes = [conv("c", "x", "w"), bn("bn", "c", inits, 4), node("Relu", ["bn"], "r"),
             node("Sigmoid", ["r"], "s")]
    path, model = save(tmp_path, nodes, inits, name="bn.onnx")
    net = check(path, model, node="c")
    assert net.notes == ["imported Conv node 'c' alone with bn, r folded in"]
    for kwargs, message in [
        (dict(node="r"), f"{path}: node 'r' is a Relu, not a Conv"),
        (dict(node="head"), f"{path}: no Conv node named 'head'; Conv nodes: c"),
        (dict(node="c", upto="r"), "give either the last node to import or a single Conv node, "
                                   "not both"),
    ]:
        with pytest.raises(UsageError) as info:
            importers.import_network(str(path), **kwargs)
        assert str(info.value) == message


@pytest.mark.parametrize("nodes, inits, note", [
    ([conv("c", "x", "w"), node("Softmax", ["c"], "s")], {"w": arr(2, 3, 1, 1)},
     "stopped at Softmax node 's': Softmax is not an operation convcli imports"),
    ([conv("c", "x", "w"), helper.make_node("FusedConv", ["c", "w2"], ["f"], name="f",
                                            domain="com.microsoft")],
     {"w": arr(2, 3, 1, 1), "w2": arr(2, 2, 1, 1)},
     "stopped at FusedConv node 'f': com.microsoft.FusedConv is not an operation convcli "
     "imports"),
    ([conv("c", "x", "w"), node("Relu", ["c"], "r", foo=1)], {"w": arr(2, 3, 1, 1)},
     "stopped at Relu node 'r': its attribute 'foo' is not one convcli knows for Relu"),
    ([conv("c", "x", "w"), node("Mul", ["c", "row"], "m")],
     {"w": arr(2, 3, 1, 1), "row": arr(1, 1, 1, 15)},
     "stopped at Mul node 'm': its operand of shape (1, 1, 1, 15) varies along more than the "
     "channels"),
    ([conv("c", "x", "w"), node("Div", ["c", "zeros"], "d")],
     {"w": arr(2, 3, 1, 1), "zeros": np.zeros((2, 1, 1))},
     "stopped at Div node 'd': it divides by zero"),
    ([conv("c", "x", "w"), node("Div", ["one", "c"], "d")],
     {"w": arr(2, 3, 1, 1), "one": np.ones(1)},
     "stopped at Div node 'd': it reads 'c' as its input 2, not as its data"),
    ([conv("c", "x", "w"), node("Mul", ["c", "c"], "sq")], {"w": arr(2, 3, 1, 1)},
     "stopped at Mul node 'sq': it reads 'c' more than once"),
    ([conv("c", "x", "w"), node("AveragePool", ["c"], "p", kernel_shape=[2, 2],
                                dilations=[2, 2])], {"w": arr(2, 3, 1, 1)},
     "stopped at AveragePool node 'p': average pooling with dilation is not supported"),
    ([conv("c", "x", "w"), node("BatchNormalization", ["c", "s", "b", "m", "v"], "bn",
                                training_mode=1)],
     {"w": arr(2, 3, 1, 1), "s": arr(2), "b": arr(2), "m": arr(2), "v": arr(2, positive=True)},
     "stopped at BatchNormalization node 'bn': it runs in training mode (it normalises by the "
     "batch's statistics)"),
    ([conv("c", "x", "w"), node("Clip", ["c", "hi", "lo"], "clip")],
     {"w": arr(2, 3, 1, 1), "hi": np.float32(1), "lo": np.float32(0)},
     "stopped at Clip node 'clip': its minimum 1 is above its maximum 0"),
    ([conv("c", "x", "w"), node("Relu", ["c"], "r"), conv("c2", "r", "w2")],
     {"w": arr(2, 3, 1, 1), "w2": arr(2, 2, 1, 1)},
     "the chain reaches the model's output 'c2'"),
])
def test_the_chain_stops_at_what_it_cannot_import(tmp_path, nodes, inits, note):
    path, model = save(tmp_path, nodes, inits, opset=19)
    net = check(path, model)
    assert net.notes[-1] == note


def pad_node(name, x, starts, ends, mode="constant", opset=17, inits=None, axes=None,
             value=None):
    """A Pad of (N, C, H, W): its pads as an input (opset 11 on) or an attribute."""
    pads = list(starts) + list(ends)
    if opset < 11:
        extra = {} if value is None else {"value": value}
        return node("Pad", [x], name, mode=mode, pads=pads, **extra)
    inits[f"{name}_pads"] = np.asarray(pads, np.int64)
    inputs = [x, f"{name}_pads", f"{name}_value" if value is not None else ""]
    if value is not None:
        inits[f"{name}_value"] = np.float32(value)
    if axes is not None:
        inits[f"{name}_axes"] = np.asarray(axes, np.int64)
        inputs.append(f"{name}_axes")
    return node("Pad", inputs, name, mode=mode)


def save_any(tmp_path, nodes, inits, opset, shape=(1, 3, 17, 15)):
    """save() for initializers of any type (Pad's pads are int64)."""
    graph = helper.make_graph(
        nodes, "pad-graph", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    path = tmp_path / "pad.onnx"
    path.write_bytes(model.SerializeToString())
    return path, model


@pytest.mark.parametrize("mode, opset, conv_pads, axes", [
    ("constant", 17, [1, 0, 2, 1], None),  # adds to the conv's own pads
    ("constant", 2, [0, 0, 0, 0], None),  # pads as an attribute, before opset 11
    ("constant", 18, None, [2, 3]),  # only the spatial axes named
    ("constant", 18, None, [-1, -2]),
    ("reflect", 17, None, None),
    ("reflect", 7, None, None),
    ("edge", 17, None, None),
    ("wrap", 19, None, None),
])
def test_a_pad_before_a_conv_becomes_its_padding(tmp_path, mode, opset, conv_pads, axes):
    inits: dict = {"w": arr(4, 3, 3, 3), "b": arr(4)}
    starts, ends = (0, 0, 2, 1), (0, 0, 1, 3)  # top 2, left 1, bottom 1, right 3
    if axes is not None:
        order = [a % 4 for a in axes]
        starts_, ends_ = [starts[a] for a in order], [ends[a] for a in order]
        pad = pad_node("p", "x", starts_, ends_, mode, opset, inits, axes)
    else:
        pad = pad_node("p", "x", starts, ends, mode, opset, inits)
    extra = {} if conv_pads is None else {"pads": conv_pads}
    nodes = [pad, conv("c", "p", "w", "b", strides=[2, 1], **extra), node("Relu", ["c"], "r")]
    path, model = save_any(tmp_path, nodes, inits, opset)
    net = check(path, model)
    assert net.nodes == ["p", "c", "r"]
    (kind, body), = net.layers[0].items()
    assert kind == "conv" and body["defaults"]["border"] == {
        "constant": "zero", "reflect": "reflect", "edge": "replicate", "wrap": "wrap"}[mode]
    own = conv_pads or [0, 0, 0, 0]  # ONNX order: top, left, bottom, right
    assert body["defaults"]["padding"] == [2 + own[0], 1 + own[2], 1 + own[1], 3 + own[3]]


@pytest.mark.parametrize("pad_args, after, note", [
    (dict(starts=(0, 1, 1, 1), ends=(0, 0, 1, 1)), "conv",
     "stopped at Pad node 'p': it pads the batch or channel axis"),
    (dict(starts=(0, 0, -1, 0), ends=(0, 0, 1, 1)), "conv",
     "stopped at Pad node 'p': it crops (negative pads)"),
    (dict(starts=(0, 0, 1, 1), ends=(0, 0, 1, 1), value=1.0), "conv",
     "stopped at Pad node 'p': it pads with 1; a conv's padding holds zeros"),
    (dict(starts=(0, 0, 1, 1), ends=(0, 0, 1, 1)), "relu",
     "stopped at Pad node 'p': convcli imports a Pad only into the Conv that reads it "
     "(stopped at Relu node 'r2': it reads a Pad's output)"),
    (dict(starts=(0, 0, 1, 1), ends=(0, 0, 1, 1), mode="reflect"), "padded conv",
     "stopped at Pad node 'p': convcli imports a Pad only into the Conv that reads it "
     "(stopped at Conv node 'c2': it pads with zeros around the reflect padding of Pad node "
     "'p'; a bank layer has one border)"),
])
def test_pads_that_cannot_be_a_convs_padding_stop_the_chain(tmp_path, pad_args, after, note):
    inits: dict = {"w": arr(2, 3, 1, 1), "w2": arr(2, 2, 3, 3)}
    nodes = [conv("c", "x", "w"), pad_node("p", "c", opset=17, inits=inits, **pad_args)]
    if after == "relu":
        nodes.append(node("Relu", ["p"], "r2"))
    else:
        nodes.append(conv("c2", "p", "w2", pads=[1, 1, 1, 1] if after == "padded conv" else
                          [0, 0, 0, 0]))
    path, model = save_any(tmp_path, nodes, inits, 17)
    net = check(path, model)
    assert net.nodes == ["c"] and net.notes[-1] == note


def test_a_pad_left_last_is_not_imported(tmp_path):
    inits: dict = {"w": arr(2, 3, 1, 1)}
    nodes = [conv("c", "x", "w"), pad_node("p", "c", (0, 0, 1, 1), (0, 0, 1, 1), opset=17,
                                           inits=inits)]
    path, model = save_any(tmp_path, nodes, inits, 17)
    net = check(path, model)
    assert net.nodes == ["c"] and net.notes[-1] == (
        "stopped at Pad node 'p': convcli imports a Pad only into the Conv that reads it (the "
        "chain reaches the model's output 'p')")
    with pytest.raises(InputError, match="nothing to import: stopped at Pad node 'p'"):
        importers.import_network(str(save_any(tmp_path, [pad_node(
            "p", "x", (0, 0, 1, 1), (0, 0, 1, 1), opset=17, inits=(i := {}))], i, 17)[0]))


def test_a_channels_last_models_first_transpose_is_skipped(tmp_path):
    inits = {"w": arr(4, 3, 3, 3), "b": arr(4)}
    nodes = [node("Transpose", ["x"], "t", perm=[0, 3, 1, 2]),
             conv("c", "t", "w", "b", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
             node("Transpose", ["r"], "back", perm=[0, 2, 3, 1])]
    path, model = save(tmp_path, nodes, inits, shape=(1, 17, 15, 3))
    net = importers.import_network(str(path))
    assert net.nodes == ["t", "c", "r"]
    assert net.notes == [
        "Transpose node 't' skipped: it turns the model's channels-last input into "
        "channels-first, which convcli's inputs are already",
        "stopped at Transpose node 'back': a Transpose is imported only as the model's first "
        "node, turning its NHWC input into NCHW (perm [0, 3, 1, 2])"]
    x = RNG.standard_normal((3, 17, 15)).astype(np.float32)  # (C, H, W), as convcli reads
    want = reference(model, "r", x.transpose(1, 2, 0))  # the model reads (H, W, C)
    assert_close(run_layers(net.layers, x), want)
    check_end_to_end(net, x, want)
    assert net.layers[0]["conv"]["defaults"]["input"] == "rgb"  # three channels, from NHWC


def test_an_alexnet_like_chain_with_local_response_normalisation(tmp_path):
    inits = {"w": arr(6, 3, 5, 5), "b": arr(6), "w2": arr(8, 6, 3, 3), "b2": arr(8)}
    nodes = [conv("c1", "x", "w", "b", pads=[2, 2, 2, 2]), node("Relu", ["c1"], "r1"),
             node("LRN", ["r1"], "n1", size=5, alpha=1e-2, beta=0.75, bias=2.0),
             node("MaxPool", ["n1"], "p1", kernel_shape=[3, 3], strides=[2, 2]),
             conv("c2", "p1", "w2", "b2", pads=[1, 1, 1, 1]), node("Relu", ["c2"], "r2"),
             node("LRN", ["r2"], "n2", size=4, alpha=5e-2, beta=0.5),
             node("Flatten", ["n2"], "flat")]
    path, model = save(tmp_path, nodes, inits)
    x = RNG.standard_normal((3, 17, 15)).astype(np.float32) * 3
    net = check(path, model, x)
    kinds = [next(iter(layer)) for layer in net.layers]
    assert kinds == ["conv", "lrn", "pool", "conv", "lrn"]
    assert net.layers[1]["lrn"] == {"name": "n1", "size": 5, "alpha": float(np.float32(1e-2)),
                                    "beta": 0.75, "bias": 2.0}  # ONNX stores float32
    assert net.notes[-1] == ("stopped at Flatten node 'flat': Flatten is not an operation "
                             "convcli imports")
    path, model = save(tmp_path, [conv("c", "x", "w"), node("LRN", ["c"], "n", size=0)],
                       inits, name="bad.onnx")
    with pytest.raises(InputError, match="LRN node 'n' has size=0; LRN needs a whole number"):
        importers.import_network(str(path))


def test_weights_computed_by_another_node_stop_the_chain(tmp_path):
    inits = {"w": arr(2, 3, 1, 1), "w2": arr(2, 2, 1, 1)}
    nodes = [conv("c", "x", "w"), node("Neg", ["w2"], "w2_neg"), conv("c2", "c", "w2_neg")]
    path, model = save(tmp_path, nodes, inits)
    net = check(path, model)
    assert net.notes == ["stopped at Conv node 'c2': it takes its weights ('w2_neg') from Neg "
                         "node 'w2_neg', not from numbers stored in the model"]


def test_legacy_broadcast_along_the_channels(tmp_path):
    # Before opset 7, Mul(broadcast=1, axis=1) lines a (C,) operand up with the channels.
    # onnx's reference evaluator no longer runs it: the expected maps are x * s per channel.
    s = arr(3, positive=True)
    nodes = [node("Mul", ["x", "s"], "scaled", broadcast=1, axis=1),
             node("Add", ["scaled", "t"], "shifted", broadcast=1),
             node("Relu", ["shifted"], "r")]
    path, _ = save(tmp_path, nodes, {"s": s, "t": np.float32(0.25)}, opset=6)
    net = importers.import_network(str(path))
    assert [next(iter(layer)) for layer in net.layers] == ["normalize", "activation"]
    x = RNG.standard_normal((3, 6, 5)).astype(np.float32)
    want = np.maximum(x * s[:, None, None] + np.float32(0.25), 0)
    assert_close(run_layers(net.layers, x), want)
    check_end_to_end(net, x, want)
    nodes[0] = node("Mul", ["x", "s"], "scaled", broadcast=1, axis=2)
    path, _ = save(tmp_path, nodes, {"s": s, "t": np.float32(0.25)}, opset=6)
    assert import_error(path) == (f"{path}: nothing to import: stopped at Mul node 'scaled': its "
                                  "legacy broadcast along axis 2 is not per channel")


def test_an_affine_whose_normalize_would_leave_float32_becomes_a_conv(tmp_path):
    nodes = [node("Relu", ["x"], "r"), node("Mul", ["r", "tiny"], "m"),
             node("Add", ["m", "huge"], "a")]
    path, model = save(tmp_path, nodes, {"tiny": np.float32(1e-3), "huge": np.float32(1e36)})
    net = check(path, model)  # the mean would be -1e39
    assert [next(iter(layer)) for layer in net.layers] == ["activation", "conv"]
    assert net.layers[1]["conv"]["defaults"]["groups"] == 3
    path, _ = save(tmp_path, nodes, {"tiny": np.float32(1e-3), "huge": np.float32(1e36)},
                   shape=("N", "C", 8, 8), name="open.onnx")
    net = importers.import_network(str(path))
    assert [next(iter(layer)) for layer in net.layers] == ["activation"]
    assert net.nodes == ["r"]
    assert net.notes == ["stopped at Mul node 'm': its scale and offset leave float32's range as "
                         "a normalisation, and a 1x1 convolution in its place needs the number "
                         "of channels, which the model leaves open"]


# --- models that cannot be imported at all ---------------------------------------------------

def import_error(path, **kwargs) -> str:
    with pytest.raises((InputError, UsageError)) as info:
        importers.import_network(str(path), **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("nodes, inits, shape, message", [
    ([conv("c", "x", "w")], {"w": arr(2, 3, 3)}, (1, 3, 10),
     "Conv node 'c' is a 1-D convolution (weights of shape (2, 3, 3)); only 2-D convolutions "
     "can become a bank"),
    ([conv("c", "x", "w")], {"w": arr(2, 3, 3, 3, 3)}, (1, 3, 6, 6, 6),
     "Conv node 'c' is a 3-D convolution (weights of shape (2, 3, 3, 3, 3)); only 2-D "
     "convolutions can become a bank"),
    ([node("Softmax", ["x"], "s")], {}, (1, 3, 8, 8),
     "nothing to import: stopped at Softmax node 's': Softmax is not an operation convcli "
     "imports"),
    ([conv("c", "x", "missing")], {}, (1, 3, 8, 8),
     "Conv node 'c' reads 'missing' (weights), which no node makes and the model does not "
     "store"),
    ([conv("c", "x", "w", "b")], {"w": arr(2, 3, 1, 1), "b": arr(3)}, (1, 3, 8, 8),
     "Conv node 'c' has a bias of shape (3,) for 2 filters"),
    ([conv("c", "x", "w")], {"w": arr(2, 4, 1, 1)}, (1, 3, 8, 8),
     "Conv node 'c' reads 4 channels (4 per group x 1) but its input has 3"),
    ([conv("c", "x", "w", group=2)], {"w": arr(3, 2, 1, 1)}, (1, 4, 8, 8),
     "Conv node 'c' has group=2; it must be a whole number >= 1 that divides the 3 filters"),
    ([conv("c", "x", "w", pads=[1, 1])], {"w": arr(2, 3, 3, 3)}, (1, 3, 8, 8),
     "Conv node 'c' has pads=[1, 1]; a 2-D convolution needs 4 whole numbers"),
    ([conv("c", "x", "w", auto_pad="MIDDLE")], {"w": arr(2, 3, 3, 3)}, (1, 3, 8, 8),
     "Conv node 'c' has auto_pad='MIDDLE'; ONNX defines NOTSET, SAME_UPPER, SAME_LOWER and "
     "VALID"),
    ([conv("c", "x", "w"), node("BatchNormalization", ["c", "s", "b", "m", "v"], "bn")],
     {"w": arr(2, 3, 1, 1), "s": arr(3), "b": arr(2), "m": arr(2), "v": arr(2)},
     (1, 3, 8, 8), "BatchNormalization node 'bn' has a scale of shape (3,) for 2 channels"),
    ([conv("c", "x", "w"), node("BatchNormalization", ["c", "s", "b", "m", "v"], "bn")],
     {"w": arr(2, 3, 1, 1), "s": arr(2), "b": arr(2), "m": arr(2), "v": -np.ones(2)},
     (1, 3, 8, 8), "BatchNormalization node 'bn': variance + epsilon must be finite and > 0"),
    ([conv("c", "x", "w"), node("MaxPool", ["c"], "p", kernel_shape=[2, 2, 2])],
     {"w": arr(2, 3, 1, 1)}, (1, 3, 8, 8),
     "MaxPool node 'p' is a 3-D pooling; only 2-D pooling can be imported"),
    ([conv("c", "x", "w"), node("MaxPool", ["c"], "p")], {"w": arr(2, 3, 1, 1)}, (1, 3, 8, 8),
     "MaxPool node 'p' has no kernel_shape"),
    ([conv("c", "x", "w")], {"w": np.full((2, 3, 1, 1), np.inf)}, (1, 3, 8, 8),
     "Conv node 'c': the weights or biases are not all finite numbers within float32's range "
     "(about ±3.4e+38)"),
])
def test_models_that_cannot_be_imported(tmp_path, nodes, inits, shape, message):
    path, _ = save(tmp_path, nodes, inits, shape=shape)
    assert import_error(path) == f"{path}: {message}"


def test_odd_graphs(tmp_path):
    # An initializer also listed as an input (IR version 3) is a weight, not the data; a
    # second real input is noted.
    path, model = save(tmp_path, [conv("c", "x", "w")], {"w": arr(2, 3, 1, 1)})
    model.graph.input.extend([helper.make_tensor_value_info("w", TensorProto.FLOAT, None),
                              helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path.write_bytes(model.SerializeToString())
    net = importers.import_network(str(path))
    assert net.notes == ["the model has 2 inputs; the layers start at the first, 'x'",
                         "the chain reaches the model's output 'c'"]
    words = helper.make_node("Constant", [], ["w"], name="words", value_strings=["a", "b"])
    path, _ = save(tmp_path, [words, conv("c", "x", "w")])
    assert import_error(path) == (f"{path}: Conv node 'c' takes its weights from Constant node "
                                  "'words', which holds no dense array of numbers")
    nodes = [conv("c", "x", "w"), node("BatchNormalization", ["c", "s", "b", "m", "v"], "bn",
                                       epsilon="tiny")]
    inits = {"w": arr(2, 3, 1, 1), "s": arr(2), "b": arr(2), "m": arr(2), "v": arr(2)}
    path, _ = save(tmp_path, nodes, inits)
    assert import_error(path) == (f"{path}: BatchNormalization node 'bn' has epsilon='tiny'; "
                                  "want a finite number")
    path, _ = save(tmp_path, [conv("c", "x", "w"), node("Mul", ["c", ""], "m")],
                   {"w": arr(2, 3, 1, 1)})
    assert import_error(path) == f"{path}: Mul node 'm' has an empty operand"
    path, _ = save(tmp_path, [node("Relu", ["x"], "a"), node("Tanh", ["a"], "x", name="loop")])
    assert import_error(path) == f"{path}: Relu node 'a' is part of a cycle; an ONNX graph has none"
    # protobuf hands out a name that is not UTF-8 as bytes
    path, _ = save(tmp_path, [conv("QQQQ", "x", "w")], {"w": arr(2, 3, 1, 1)})
    path.write_bytes(path.read_bytes().replace(b"QQQQ", b"\xff\xfeQQ"))
    for call in (importers.import_network, importers.load_weights):
        with pytest.raises(InputError) as info:
            call(str(path))
        assert str(info.value) == (f"{path}: not a readable ONNX model (a name in it is not "
                                   "UTF-8 text)")


def test_files_that_are_not_models(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage that is not protobuf\xff\xff")
    assert import_error(tmp_path / "junk.onnx").startswith(
        f"{tmp_path / 'junk.onnx'}: not a readable ONNX model (")
    np.save(tmp_path / "w.npy", np.ones((2, 1, 3, 3)))
    assert import_error(tmp_path / "w.npy") == (f"{tmp_path / 'w.npy'}: networks are imported "
                                                "from ONNX models (.onnx), not .npy")
    assert import_error(tmp_path / "none.onnx") == f"{tmp_path / 'none.onnx'}: no such file"


def test_odd_opsets_and_external_weights(tmp_path):
    import onnx

    path, model = save(tmp_path, [conv("c", "x", "w")], {"w": arr(2, 3, 1, 1)})
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path.write_bytes(model.SerializeToString())
    assert import_error(path) == (f"{path}: the model declares no opset version for the "
                                  "standard ONNX operators")
    path, model = save(tmp_path, [conv("c", "x", "w")], {"w": arr(2, 3, 1, 1)})
    onnx.save_model(model, str(path), save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    assert import_error(path) == (f"{path}: Conv node 'c' keeps its weights in an external data "
                                  "file; convcli reads only models that hold their weights")


def test_the_import_stops_where_a_bank_file_is_full(tmp_path, monkeypatch):
    # The bank module decides what a file holds (bank.check_written_network); here it is
    # made to hold 2,000 weights: the convs' 216 + 1,152 fit, the third conv's 2,304 more do
    # not, so the import ends before it (the second Relu stays) and the file it writes loads.
    from convcli import bank

    def small_file(layers):
        weights = 0
        for layer in layers:
            for f in layer.get("conv", {}).get("filters", []):
                weights += int(np.size(f["weights"]))
            if weights > 2000:
                raise ValueError(f"{weights:,} weights; at most 2,000 here")

    monkeypatch.setattr(bank, "check_written_network", small_file)
    inits = {"w1": arr(8, 3, 3, 3), "w2": arr(16, 8, 3, 3), "w3": arr(16, 16, 3, 3)}
    nodes = [conv("c1", "x", "w1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             conv("c2", "r1", "w2", pads=[1, 1, 1, 1]), node("Sigmoid", ["c2"], "s2"),
             node("Identity", ["s2"], "i2"), conv("c3", "i2", "w3"), node("Relu", ["c3"], "r3")]
    path, model = save(tmp_path, nodes, inits, shape=(1, 3, 9, 8))
    net = check(path, model)
    assert [next(iter(layer)) for layer in net.layers] == ["conv", "conv", "activation"]
    assert net.nodes == ["c1", "r1", "c2", "s2", "i2"]
    assert net.notes == ["stopped at Conv node 'c3': 3,672 weights; at most 2,000 here"]
    assert importers.import_network(str(path), node="c2").nodes == ["c2"]
    assert import_error(path, node="c3") == (f"{path}: nothing to import: stopped at Conv node "
                                             "'c3': 2,304 weights; at most 2,000 here")
    assert import_error(path, upto="r3") == (
        f"{path}: node 'r3' is not on the chain of layers convcli can import from the model's "
        "input; stopped at Conv node 'c3': 3,672 weights; at most 2,000 here")


def test_layers_larger_than_a_bank_holds(tmp_path):
    path, _ = save(tmp_path, [conv("c", "x", "w")], {"w": arr(256, 128, 3, 3)},
                   shape=(1, 128, 8, 8))
    message = import_error(path)  # 294,912 weights: a layer may hold them, a file may not
    assert message.startswith(f"{path}: nothing to import: stopped at Conv node 'c': layer 'c' "
                              "brings ") and "a bank file holds at most" in message
    path, _ = save(tmp_path, [conv("c", "x", "w")], {"w": arr(4097, 1, 1, 1)},
                   shape=(1, 1, 8, 8))
    assert import_error(path) == (
        f"{path}: nothing to import: stopped at Conv node 'c': its weights (4097x1x1x1) are "
        "more than a bank layer holds (at most 4096 filters of 4096 channels of 1025x1025, "
        "8,388,608 weights in all)")


# --- any conv geometry ----------------------------------------------------------------------


@settings(max_examples=25)
@given(st.data())
def test_any_conv_geometry_with_batch_norm_matches_the_reference(tmp_path_factory, data):
    groups = data.draw(st.sampled_from([1, 2, 3]), "groups")
    cg = data.draw(st.integers(1, 3), "channels per group")
    f = groups * data.draw(st.integers(1, 3), "filters per group")
    kh, kw = data.draw(st.integers(1, 4), "kh"), data.draw(st.integers(1, 4), "kw")
    stride = [data.draw(st.integers(1, 3), "sy"), data.draw(st.integers(1, 3), "sx")]
    dilation = [data.draw(st.integers(1, 3), "dy"), data.draw(st.integers(1, 3), "dx")]
    auto = data.draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]), "auto")
    pads = [data.draw(st.integers(0, 3), f"pad {i}") for i in range(4)]
    h, w = data.draw(st.integers(1, 12), "h"), data.draw(st.integers(1, 12), "w")
    room = [(kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1]
    if auto == "NOTSET":
        room = [room[0] - pads[0] - pads[2], room[1] - pads[1] - pads[3]]
    if auto in ("NOTSET", "VALID"):
        h, w = max(h, room[0]), max(w, room[1])  # at least one output pixel
    attrs = dict(strides=stride, dilations=dilation, group=groups, auto_pad=auto)
    if auto == "NOTSET":
        attrs["pads"] = pads
    inits = {"w": arr(f, cg, kh, kw), "b": arr(f)}
    nodes = [conv("c", "x", "w", "b", **attrs)]
    if data.draw(st.booleans(), "batch norm"):
        nodes.append(bn("bn", "c", inits, f, eps=data.draw(st.sampled_from([1e-5, 1e-3, 0.1]))))
    path, model = save(tmp_path_factory.mktemp("geometry"), nodes, inits,
                       shape=(1, cg * groups, h, w))
    net = check(path, model)
    assert net.nodes == [n.name for n in nodes] and len(net.layers) == 1


# --- a real trained network ---------------------------------------------------------------

def packaged_model(package: str, name: str) -> Path:
    """A model file shipped inside an installed package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"needs the {package} package (pip install {package.replace('_', '-')}); "
                    "not part of the test extra")
    path = Path(spec.origin).parent / "models" / name
    assert path.is_file(), path
    return path


@pytest.mark.models
def test_paddleocr_text_detector_from_rapidocr(tmp_path):
    # PP-OCRv4's text detector (PaddlePaddle, exported to ONNX opset 12): a conv stem with
    # BatchNormalization, depthwise and pointwise convs, HardSwish spelled out, and
    # per-tensor scales and shifts; the chain ends at its first branch.
    import onnx

    path = packaged_model("rapidocr_onnxruntime", "ch_PP-OCRv4_det_infer.onnx")
    model = onnx.load(str(path))
    net = importers.import_network(str(path))
    kinds = [next(iter(layer)) for layer in net.layers]
    assert kinds.count("conv") >= 6 and "activation" in kinds
    assert net.notes[-1].startswith("stopped after ") and "a branch" in net.notes[-1]
    x = RNG.random((3, 32, 48), dtype=np.float32) * 2 - 1
    want = reference(model, output_of(model, net), x)
    assert_close(run_layers(net.layers, x), want)
    check_end_to_end(net, x, want)
