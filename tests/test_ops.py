"""Pooling, activations and normalisation (convcli.ops) against the float64 oracle, torch
and onnx.reference, by hypothesis over shapes, kernels, strides, pads, dilation, ceil_mode
and count_include_pad."""

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from convcli import ops
from convcli.engine import EngineConfig
from convcli.errors import InputError, UsageError
from oracle import (reference_activation, reference_normalize, reference_pool2d,
                    reference_pool_len, same_pads)

pytestmark = pytest.mark.filterwarnings("error")  # no raw warning may escape convcli.ops

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pools(draw, symmetric=False, torch_rule=False):
    """A pooling case: input, mode and settings (pads as (top, bottom, left, right))."""
    mode = draw(st.sampled_from(["max", "avg"]))
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if mode == "max" else (1, 1)
    if symmetric:
        # torch: padding at most half the kernel
        most = (k[0] // 2, k[1] // 2) if torch_rule else (3, 3)
        py, px = draw(st.integers(0, most[0])), draw(st.integers(0, most[1]))
        pads = (py, py, px, px)
    else:
        pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).normal(size=(c, h, w)).astype(np.float32)
    return dict(x=x, mode=mode, kernel=k, stride=s, pads=pads, dilation=d,
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()))


# The two executors of pooling: numba's kernel and the NumPy passes.
JIT, NUMPY = EngineConfig(method="jit", threads=2), EngineConfig(method="numpy")


def ours(case, config=None):
    args = (case["x"], case["kernel"], case["stride"], list(case["pads"]))
    if case["mode"] == "max":
        return ops.max_pool2d(*args, dilation=case["dilation"], ceil_mode=case["ceil_mode"],
                              config=config)
    return ops.avg_pool2d(*args, ceil_mode=case["ceil_mode"],
                          count_include_pad=case["count_include_pad"], config=config)


def expected_size(case):
    (_, h, w), (kh, kw), (sy, sx) = case["x"].shape, case["kernel"], case["stride"]
    (dy, dx), (pt, pb, pl, pr) = case["dilation"], case["pads"]
    return (reference_pool_len(h, kh, sy, dy, pt, pb, case["ceil_mode"]),
            reference_pool_len(w, kw, sx, dx, pl, pr, case["ceil_mode"]))


def oracle(case):
    return reference_pool2d(case["x"], case["mode"], case["kernel"], case["stride"],
                            case["pads"], case["dilation"], case["ceil_mode"],
                            case["count_include_pad"])


def assert_pooled(got, want, x):
    assert got.dtype == np.float32 and got.shape == want.shape
    if np.isinf(want).any():  # max of an empty window: -inf, exactly
        assert np.array_equal(np.isinf(got), np.isinf(want))
    # max picks float32 values (exact); avg sums a few in float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(x).max()))


@FAST
@given(pools(), st.booleans())
def test_pooling_matches_the_oracle_on_both_executors(case, with_nan):
    ho, wo = expected_size(case)
    if ho < 1 or wo < 1:
        for config in (NUMPY, JIT):
            with pytest.raises(InputError, match=r"is smaller than the pooling window"):
                ours(case, config)
        return
    if with_nan:  # a NaN and an inf somewhere: each spreads to the windows that hold it
        x = case["x"].copy()
        x.flat[len(x.flat) // 2] = np.nan
        x.flat[0] = np.inf
        case = dict(case, x=x)
    want = oracle(case)
    got = ours(case, NUMPY)
    jitted = ours(case, JIT)
    # the same operations in the same order: the same bits, to the sign of a zero
    assert jitted.dtype == np.float32 and jitted.shape == got.shape
    assert np.array_equal(jitted.view(np.uint32), got.view(np.uint32))
    assert np.array_equal(np.isnan(got), np.isnan(want))
    known = ~np.isnan(want)
    scale = np.nan_to_num(case["x"], nan=0.0, posinf=0.0)
    assert_pooled(np.where(known, got, 0), np.where(known, want, 0), scale)
    if case["mode"] == "max":  # a choice among float32 values, never a new number
        assert np.array_equal(got[known], want[known].astype(np.float32))


def test_each_config_takes_its_executor(monkeypatch):
    from convcli import jit

    ran = []
    real = jit.call
    monkeypatch.setattr(jit, "call", lambda kernel, *a, **k: (ran.append(kernel),
                                                             real(kernel, *a, **k)))
    x = np.random.default_rng(4).random((2, 9, 7), np.float32)
    numpy_max = ops.max_pool2d(x, 3, 2, 1, config=NUMPY)
    assert ran == []
    assert np.array_equal(ops.max_pool2d(x, 3, 2, 1, config=JIT), numpy_max)
    assert ran == [jit.pool_pass] * 2  # two separable passes
    # auto takes numba once it is loaded in the process (the same bits, see convcli.engine)
    assert np.array_equal(ops.avg_pool2d(x, 3, 2, 1), ops.avg_pool2d(x, 3, 2, 1, config=NUMPY))
    assert ran == [jit.pool_pass] * 4
    # any thread count, the same bits; a 2-D input stays 2-D
    big = np.random.default_rng(5).normal(size=(3, 61, 47)).astype(np.float32)
    one = EngineConfig(method="jit", threads=1)
    for pool in (lambda c: ops.max_pool2d(big, (3, 2), (2, 1), [1, 0, 0, 1], (1, 2), True,
                                          config=c),
                 lambda c: ops.avg_pool2d(big, 4, 3, 1, True, False, config=c)):
        assert pool(one).view(np.uint32).tolist() == pool(JIT).view(np.uint32).tolist()
        assert np.array_equal(pool(JIT), pool(NUMPY))
    assert ops.max_pool2d(big[0], 2, config=JIT).shape == (30, 23)


@FAST
@given(pools(symmetric=True, torch_rule=True))
def test_pooling_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ho, wo = expected_size(case)
    assume(ho >= 1 and wo >= 1)
    x = torch.from_numpy(case["x"])[None]
    pad = (case["pads"][0], case["pads"][2])
    if case["mode"] == "max":
        want = F.max_pool2d(x, case["kernel"], case["stride"], pad, case["dilation"],
                            ceil_mode=case["ceil_mode"])
    else:
        want = F.avg_pool2d(x, case["kernel"], case["stride"], pad, ceil_mode=case["ceil_mode"],
                            count_include_pad=case["count_include_pad"])
    got = ours(case)
    assert got.shape == tuple(want.shape[1:])
    if case["mode"] == "max":
        assert np.array_equal(got, want[0].numpy())  # the same float32 values, bit for bit
    else:
        np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-6, atol=1e-6)


def onnx_pool(case):
    """onnx.reference's MaxPool / AveragePool of the case (pads as ONNX orders them)."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    t, b, l, r = case["pads"]
    attrs = dict(kernel_shape=list(case["kernel"]), strides=list(case["stride"]),
                 pads=[t, l, b, r], ceil_mode=int(case["ceil_mode"]))
    if case["mode"] == "max":
        node = helper.make_node("MaxPool", ["x"], ["y"], dilations=list(case["dilation"]),
                                **attrs)
    else:
        node = helper.make_node("AveragePool", ["x"], ["y"],
                                count_include_pad=int(case["count_include_pad"]), **attrs)
    graph = helper.make_graph([node], "pool",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(model).run(None, {"x": case["x"][None]})[0][0]


def onnx_reference_is_defined(case):
    """onnx.reference gives no value for a window without input values; where ceil_mode
    needs two or more columns past the padding it pads on both sides, shifting every
    window (torch and onnxruntime pad only at the end); and where ceil_mode drops a last
    window that starts past the input it fails (IndexError). Those cases are left to the
    oracle and torch."""
    ones = dict(case, x=np.ones_like(case["x"]), mode="max")
    if np.isinf(oracle(ones)).any():
        return False
    (_, h, w), ho_wo = case["x"].shape, expected_size(case)
    for n, k, s, d, before, after, out in (
            (h, case["kernel"][0], case["stride"][0], case["dilation"][0], *case["pads"][:2],
             ho_wo[0]),
            (w, case["kernel"][1], case["stride"][1], case["dilation"][1], *case["pads"][2:],
             ho_wo[1])):
        extra = (out - 1) * s + (k - 1) * d + 1 - (n + before + after)
        if extra > 1:
            return False
        if int((n + before + after + max(extra, 0) - (k - 1) * d - 1) / s + 1) != out:
            return False
    return True


def onnx_reference_reads_the_pads(case):
    """onnx.reference (1.23) runs MaxPool at unit stride and dilation through
    ops/_op_common_pool.py, which unpacks ONNX pads [top, left, bottom, right] as (top,
    bottom, left, right) and, with ceil_mode, adds the pads to the padded size a second
    time; its other MaxPool path and AveragePool (ops/op_pool_common.py) read them as ONNX
    defines. Pads are left out of that one path; the oracle and torch cover them."""
    unit = case["stride"] == (1, 1) and case["dilation"] == (1, 1)
    return not (case["mode"] == "max" and unit and any(case["pads"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools())
@pytest.mark.filterwarnings("default")  # onnx.reference's own warnings are not ours
def test_asymmetric_pads_match_onnx_reference(case):
    pytest.importorskip("onnx")
    ho, wo = expected_size(case)
    assume(ho >= 1 and wo >= 1 and onnx_reference_is_defined(case)
           and onnx_reference_reads_the_pads(case))
    np.testing.assert_allclose(ours(case), onnx_pool(case), rtol=1e-6, atol=1e-6)


def test_ceil_mode_drops_a_last_window_that_starts_past_the_input():
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    # windows of 2 at stride 3 over 5 + 1 padding: starts -1, 2, 5; the last starts past
    # the input, so ceil_mode keeps two, like floor mode here
    got = ops.avg_pool2d(x, (1, 2), (1, 3), [0, 0, 1, 1], ceil_mode=True)
    np.testing.assert_allclose(got[0, 0], [0 / 2, (2 + 3) / 2])
    # 7 wide, kernel 2 stride 2: ceil_mode adds a last window of one column; with
    # count_include_pad its divisor counts only up to the end of the padding (1, not 2)
    x = np.arange(7, dtype=np.float32).reshape(1, 1, 7)
    got = ops.avg_pool2d(x, (1, 2), None, 0, ceil_mode=True, count_include_pad=True)
    np.testing.assert_allclose(got[0, 0], [0.5, 2.5, 4.5, 6.0])
    assert ops.max_pool2d(x, (1, 2), ceil_mode=True)[0, 0].tolist() == [1, 3, 5, 6]


def test_count_include_pad_counts_the_padding_as_zeros():
    x = np.ones((1, 2, 2), np.float32)
    with_pad = ops.avg_pool2d(x, 3, 1, 1, count_include_pad=True)
    without = ops.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    np.testing.assert_allclose(with_pad[0], [[4 / 9, 4 / 9], [4 / 9, 4 / 9]], rtol=1e-6)
    np.testing.assert_array_equal(without[0], np.ones((2, 2)))


def test_nan_spreads_to_the_windows_that_hold_it_and_padding_is_never_a_value():
    x = -np.ones((1, 4, 4), np.float32)
    x[0, 0, 0] = np.nan
    got = ops.max_pool2d(x, 2, 2, 1)
    assert np.isnan(got[0, 0, 0]) and not np.isnan(got[0, 1:, :]).any()
    assert (got[0, 1:, :] == -1).all()  # padding is not 0: -1 stays the maximum
    avg = ops.avg_pool2d(x, 2, 2)
    assert np.isnan(avg[0, 0, 0]) and (avg[0, 1] == -1).all()


def test_windows_without_input_are_minus_inf_for_max_and_zero_for_avg():
    x = np.full((1, 1, 2), 5.0, np.float32)  # padding 2 on the left, kernel 1: two empty
    assert ops.max_pool2d(x, 1, 1, [0, 0, 2, 0])[0, 0].tolist() == [-np.inf, -np.inf, 5, 5]
    assert ops.avg_pool2d(x, 1, 1, [0, 0, 2, 0], count_include_pad=False)[0, 0].tolist() == \
        [0, 0, 5, 5]


@pytest.mark.parametrize("h, w, k, s", [(7, 9, 3, 2), (8, 8, 2, 2), (5, 6, 4, 3), (1, 1, 3, 1)])
def test_same_padding_is_tensorflows(h, w, k, s):
    x = np.random.default_rng(1).normal(size=(2, h, w)).astype(np.float32)
    pads = same_pads(h, k, s, 1) + same_pads(w, k, s, 1)
    got = ops.avg_pool2d(x, k, s, "same", count_include_pad=False)
    assert got.shape == (2, math.ceil(h / s), math.ceil(w / s))
    want = reference_pool2d(x, "avg", (k, k), (s, s), pads, count_include_pad=False)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert ops.max_pool2d(x, k, s, "valid").shape == (2, (h - k) // s + 1, (w - k) // s + 1) \
        if h >= k and w >= k else True


def test_a_two_dimensional_input_gives_a_two_dimensional_output():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert ops.max_pool2d(x, 2).tolist() == [[5, 7], [13, 15]]
    assert ops.avg_pool2d(x, 2).shape == (2, 2)


def test_pooling_memory_is_the_output_and_one_intermediate():
    # no copy of the input per tap, no float64: a 5x5 window over 4 x 256 x 256 (1 MiB)
    x = np.random.default_rng(0).random((4, 256, 256), np.float32)
    for pool in (lambda: ops.max_pool2d(x, 5, 1, 2), lambda: ops.avg_pool2d(x, 5, 1, 2)):
        tracemalloc.start()
        pool()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= 2.2 * x.nbytes, peak


@pytest.mark.parametrize("call, message", [
    (lambda x: ops.max_pool2d(x, 0), "kernel must be a whole number >= 1 or a pair [y, x], got 0"),
    (lambda x: ops.max_pool2d(x, 2, 0), "stride must be a whole number >= 1 or a pair [y, x], "
                                        "got 0"),
    (lambda x: ops.max_pool2d(x, 2, padding=-1), "padding must be same, valid, a whole number "
                                                 ">= 0, a pair [y, x] or [top, bottom, left, "
                                                 "right], got -1"),
    (lambda x: ops.max_pool2d(x, 2, padding="same", ceil_mode=True),
     "ceil_mode applies to explicit padding, not padding 'same'"),
    (lambda x: ops.max_pool2d(x, 2, ceil_mode=1), "ceil_mode must be True or False, got 1"),
    (lambda x: ops.avg_pool2d(x, 2, count_include_pad="no"),
     "count_include_pad must be True or False, got 'no'"),
    (lambda x: ops.max_pool2d(x, 2000), "kernel must be at most 1025, got 2000"),
    (lambda x: ops.max_pool2d(x, 3, dilation=2049), "dilation must be at most 1024, got 2049"),
    (lambda x: ops.activate(x, "rleu"), "activation must be one of none, relu, abs, relu6, "
                                        "clip, leaky_relu, hardswish, hardsigmoid, sigmoid, "
                                        "tanh, silu, elu, selu, softplus, mish, got 'rleu' "
                                        "(did you mean 'relu'?)"),
    (lambda x: ops.activate(x, "relu", alpha=1), "relu takes no parameters, got alpha"),
    (lambda x: ops.activate(x, "leaky_relu", beta=1), "leaky_relu takes alpha, got beta"),
    (lambda x: ops.activate(x, "leaky_relu", alpha=math.inf),
     "leaky_relu's alpha must be a finite number, got inf"),
    (lambda x: ops.activate(x, "clip", min=2, max=1), "clip needs min <= max, got min 2 and "
                                                       "max 1"),
    (lambda x: ops.normalize(x, [0.5], [0]), "std must be > 0, got [0]"),
    (lambda x: ops.normalize(x, ["a"], [1]), "mean must be a number or a list of numbers, got "
                                             "['a']"),
])
def test_bad_settings_are_usage_errors_naming_the_setting(call, message):
    with pytest.raises(UsageError) as info:
        call(np.zeros((2, 4, 4), np.float32))
    assert str(info.value) == message


def test_inputs_that_do_not_fit_are_input_errors():
    with pytest.raises(InputError, match=r"^the input \(2x2\) is smaller than the pooling "
                                         r"window \(3x3\) with padding \(0, 0, 0, 0\)$"):
        ops.max_pool2d(np.zeros((1, 2, 2)), 3)
    with pytest.raises(InputError, match=r"^the input must be \(C, H, W\) or \(H, W\) and "
                                         r"non-empty, got shape \(0, 3, 3\)$"):
        ops.avg_pool2d(np.zeros((0, 3, 3)), 1)
    with pytest.raises(InputError, match=r"^mean has 2 values but the input has 3 channels; "
                                         r"give one per channel or one for all$"):
        ops.normalize(np.zeros((3, 2, 2)), [0, 1], [1])


# --- activations --------------------------------------------------------------------------

SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-30, 2.9999, 3.0, -3.0, -3.0001, 6.0, 6.5, -80.0,
                    80.0, 1e30, -1e30, np.inf, -np.inf, np.nan], np.float32)
CASES = [("none", {}), ("relu", {}), ("abs", {}), ("relu6", {}), ("clip", {"min": -0.5}),
         ("clip", {"min": -1.0, "max": 2.5}), ("leaky_relu", {}), ("leaky_relu", {"alpha": 0.2}),
         ("hardswish", {}), ("hardsigmoid", {}), ("hardsigmoid", {"alpha": 0.2, "beta": 0.4}),
         ("sigmoid", {}), ("tanh", {}), ("silu", {}), ("elu", {}), ("elu", {"alpha": 0.3}),
         ("selu", {}), ("softplus", {}), ("mish", {})]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(CASES), st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=40))
def test_activations_match_the_oracle(case, values):
    function, params = case
    x = np.concatenate([SPECIAL, np.array(values, np.float32)]).reshape(1, 1, -1)
    before = x.copy()
    got = ops.activate(x, function, **params)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.array_equal(x, before, equal_nan=True)  # the input is left alone
    want = reference_activation(x, function, **params)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    inplace = x.copy()
    assert ops.activate(inplace, function, out=inplace, **params) is inplace
    assert np.array_equal(inplace, got, equal_nan=True)


def test_sigmoid_keeps_its_relative_precision_far_out_and_never_warns():
    x = -np.linspace(0, 80, 161, dtype=np.float32)
    with np.errstate(all="raise"):
        got = ops.activate(x, "sigmoid")
    want = reference_activation(x, "sigmoid")
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)


@pytest.mark.parametrize("function, params", CASES)
def test_activations_match_torch(function, params):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = np.concatenate([SPECIAL, rng.normal(0, 4, 500).astype(np.float32)])
    t = torch.from_numpy(x)
    alpha = params.get("alpha")
    want = {
        "none": lambda: t,
        "relu": lambda: F.relu(t),
        "abs": lambda: t.abs(),
        "relu6": lambda: F.relu6(t),
        "clip": lambda: t.clamp(params.get("min"), params.get("max")),
        "leaky_relu": lambda: F.leaky_relu(t, alpha if alpha is not None else 0.01),
        "hardswish": lambda: F.hardswish(t),
        "hardsigmoid": lambda: (F.hardsigmoid(t) if not params else
                                (t * alpha + params["beta"]).clamp(0, 1)),
        "sigmoid": lambda: torch.sigmoid(t),
        "tanh": lambda: torch.tanh(t),
        "silu": lambda: F.silu(t),
        "elu": lambda: F.elu(t, alpha if alpha is not None else 1.0),
        "selu": lambda: F.selu(t),
        "softplus": lambda: F.softplus(t),
        "mish": lambda: F.mish(t),
    }[function]().numpy()
    np.testing.assert_allclose(ops.activate(x, function, **params), want, rtol=2e-6,
                               atol=1e-6)


# --- normalisation ------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.data())
def test_normalize_matches_the_oracle(c, data):
    x = np.random.default_rng(data.draw(st.integers(0, 999))).random((c, 3, 4), np.float32)
    n = data.draw(st.sampled_from([1, c]))
    mean = data.draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n))
    std = data.draw(st.lists(st.floats(0.01, 5), min_size=n, max_size=n))
    got = ops.normalize(x, mean, std)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_normalize(x, mean, std), rtol=1e-5, atol=1e-5)


def test_normalize_is_torchvisions_bit_for_bit():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).random((3, 16, 16), np.float32)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    t = torch.from_numpy(x.copy())
    want = t.sub_(torch.tensor(mean)[:, None, None]).div_(torch.tensor(std)[:, None, None])
    assert np.array_equal(ops.normalize(x, mean, std), want.numpy())


# --- local response normalisation -----------------------------------------------------------

def reference_lrn(x, size, alpha, beta, bias):
    """ONNX's LRN formula, value by value in float64."""
    c = x.shape[0]
    out = np.empty(x.shape)
    for k in range(c):
        lo, hi = max(0, k - (size - 1) // 2), min(c - 1, k + math.ceil((size - 1) / 2))
        s = sum(x[i].astype(np.float64) ** 2 for i in range(lo, hi + 1))
        out[k] = x[k] / (bias + alpha / size * s) ** beta
    return out


@FAST
@given(st.integers(1, 9), st.integers(1, 7), st.floats(1e-5, 1.0), st.floats(0.1, 1.5),
       st.floats(0.5, 3.0), st.integers(0, 999))
def test_local_response_norm_matches_the_oracle(c, size, alpha, beta, bias, seed):
    x = (np.random.default_rng(seed).normal(size=(c, 3, 4)) * 4).astype(np.float32)
    got = ops.local_response_norm(x, size, alpha, beta, bias)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, reference_lrn(x, size, alpha, beta, bias), rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_local_response_norm_matches_torch_for_odd_sizes(size):
    torch = pytest.importorskip("torch")
    x = (np.random.default_rng(size).normal(size=(9, 6, 5)) * 3).astype(np.float32)
    want = torch.nn.functional.local_response_norm(torch.from_numpy(x)[None], size, 2e-3,
                                                   0.75, 2.0)[0].numpy()
    np.testing.assert_allclose(ops.local_response_norm(x, size, 2e-3, 0.75, 2.0), want,
                               rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("args, message", [
    ((0, 1e-4, 0.75, 1.0), "size must be a whole number of channels from 1 to 4096, got 0"),
    ((2.5, 1e-4, 0.75, 1.0), "size must be a whole number of channels from 1 to 4096, got 2.5"),
    ((3, math.nan, 0.75, 1.0), "alpha must be a finite number, got nan"),
    ((3, 1e-4, math.inf, 1.0), "beta must be a finite number, got inf"),
])
def test_local_response_norm_settings_are_checked(args, message):
    with pytest.raises(UsageError) as info:
        ops.local_response_norm(np.ones((2, 2, 2), np.float32), *args)
    assert str(info.value) == message
