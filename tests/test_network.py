"""Layered banks: the file format, its errors, dump and load, and the runner checked layer by
layer against the float64 oracle (and torch when it is installed)."""

import json
import textwrap
import tracemalloc

import numpy as np
import pytest

from convcli import bank, engine, images, network, ops
from convcli.errors import BankError, InputError, UsageError
from oracle import (reference_activation, reference_conv2d, reference_normalize,
                    reference_pool2d)

RNG = np.random.default_rng(7)
W_GROUPED = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)  # 4 filters, 2 groups of 2
B_GROUPED = RNG.normal(size=4).astype(np.float32)
MEAN, STD = [0.5, 0.4, 0.3, 0.2], [0.25, 0.5, 1.0, 2.0]


def flow(a) -> str:
    return json.dumps(np.asarray(a, np.float64).tolist())  # float32 values, written exactly


def small_net_text() -> str:
    filters = "".join(f"""
                - name: f{i}
                  weights: {flow(W_GROUPED[i])}
                  bias: {float(B_GROUPED[i])!r}""" for i in range(4))
    return textwrap.dedent(f"""\
        convcli: 1
        name: small
        description: normalise, a grouped conv, hardswish, average pooling
        provenance: {{made: by hand}}
        layers:
          - normalize: {{mean: {MEAN}, std: {STD}}}
          - conv:
              name: grouped
              defaults: {{input: dense, groups: 2, padding: [1, 0, 2, 1], stride: [1, 2],
                          activation: none}}
              filters:{filters}
          - activation: {{function: hardswish}}
          - pool: {{mode: avg, kernel: [2, 3], stride: 2, padding: 1, ceil_mode: true,
                    count_include_pad: false}}
        """)


def small_net() -> network.Network:
    return bank.parse_network(small_net_text(), source="net.yaml")


def small_net_oracle(x):
    y = reference_normalize(x, MEAN, STD)
    y = reference_conv2d(y, W_GROUPED, B_GROUPED, stride=(1, 2), padding=(1, 0, 2, 1),
                         activation="none", groups=2)
    y = reference_activation(y, "hardswish")
    return reference_pool2d(y, "avg", (2, 3), (2, 2), (1, 1, 1, 1), ceil_mode=True,
                            count_include_pad=False)


def test_a_layered_file_loads_as_written():
    net = small_net()
    assert net.name == "small" and net.provenance == {"made": "by hand"}
    assert [type(layer).__name__ for layer in net.layers] == [
        "Normalize", "Conv", "Activation", "Pool"]
    assert [layer.name for layer in net.layers] == [
        "01-normalize", "grouped", "03-activation", "04-pool"]
    conv = net.last_conv
    assert conv is not None and conv.bank.input == "dense" and conv.bank.groups == 2
    assert [f.group for f in conv.bank.filters] == [0, 0, 1, 1]
    assert conv.bank.channels == 4 and net.input_channels == 4
    np.testing.assert_array_equal(np.stack([f.weights for f in conv.bank.filters]), W_GROUPED)
    assert net.layers[3] == network.Pool("04-pool", "avg", (2, 3), (2, 2), (1, 1, 1, 1),
                                         (1, 1), True, False)


def test_a_network_matches_the_oracle_layer_by_layer():
    x = RNG.random((4, 9, 11), np.float32)
    seen = []
    data, names = network.run(x, small_net(), each=lambda layer, maps: seen.append(
        (layer.name, maps[0], maps[0].copy(), list(maps[1]))))
    want = small_net_oracle(x)
    assert data.dtype == np.float32 and data.shape == want.shape == (4, 5, 4)
    # float32 rounding of the conv (1e-5 of sum |w x|), passed on by hardswish and the mean
    np.testing.assert_allclose(data, want, rtol=0, atol=2e-4)
    assert names == ["f0", "f1", "f2", "f3"]
    assert [s[0] for s in seen] == ["01-normalize", "grouped", "03-activation", "04-pool"]
    assert seen[0][3] == ["c0", "c1", "c2", "c3"]
    for _, maps, copy, _ in seen:  # what each() was given was never changed afterwards
        assert np.array_equal(maps, copy)
    assert [s[1].shape for s in seen] == [tuple(s) for s in small_net().shapes(x.shape)]


def test_a_network_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = RNG.random((4, 9, 11), np.float32)
    t = torch.from_numpy(x)[None]
    t = (t - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    t = F.conv2d(F.pad(t, (2, 1, 1, 0)), torch.from_numpy(W_GROUPED),
                 torch.from_numpy(B_GROUPED), stride=(1, 2), groups=2)
    t = F.avg_pool2d(F.hardswish(t), (2, 3), 2, 1, ceil_mode=True, count_include_pad=False)
    data, _ = network.run(x, small_net())
    np.testing.assert_allclose(data, t[0].numpy(), rtol=0, atol=2e-5)


def test_depthwise_layers_filter_every_channel_of_any_input():
    text = """
        name: dw
        layers:
          - conv:
              defaults: {input: depthwise, padding: same, activation: none}
              filters:
                - {name: box, weights: [[1, 1], [1, 1]], divisor: 4}
                - {name: edge, weights: [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]}
          - activation: {function: relu6}
          - pool: {mode: max, kernel: 3, stride: 2, padding: 1, dilation: [1, 2]}
    """
    net = bank.parse_network(textwrap.dedent(text), source="dw.yaml")
    assert net.input_channels is None
    x = RNG.normal(0, 3, (5, 8, 9)).astype(np.float32)
    data, names = network.run(x, net)
    assert names == [f"{f}/c{c}" for f in ("box", "edge") for c in range(5)]
    kernels = [np.ones((2, 2)) / 4, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])]
    want = []
    for k in kernels:
        pads = (0, 1, 0, 1) if k.shape == (2, 2) else (1, 1, 1, 1)  # TensorFlow's SAME
        for c in range(5):
            y = reference_conv2d(x[c:c + 1], k[None, None], padding=pads, activation="none")
            y = reference_activation(y, "relu6")
            want.append(reference_pool2d(y, "max", (3, 3), (2, 2), (1, 1, 1, 1), (1, 2))[0])
    np.testing.assert_allclose(data, np.stack(want), rtol=0, atol=1e-5)
    # the same filters as engine.conv2d_depthwise lays them out: (F, C, H, W)
    assert data.reshape(2, 5, *data.shape[1:]).shape == (2, 5, 4, 4)
    _, named = network.run(x[:3], net, names=["R", "G", "B"])
    assert named[:3] == ["box/R", "box/G", "box/B"]
    _, one = network.run(x[:1], net)
    assert one == ["box", "edge"]


def test_a_single_layer_bank_runs_as_it_always_did():
    photo = RNG.random((3, 17, 23), np.float32)
    for name in ("edge", "blur"):
        b = bank.load(name)
        net = bank.load_network(name)
        assert [layer.name for layer in net.layers] == [name]
        assert [f.name for f in net.layers[0].bank.filters] == [f.name for f in b.filters]
        data, names = network.run(photo, net)
        assert names[:len(b.filters)] == [f.name for f in b.filters] or b.input == "depthwise"
        x = images.as_channels(photo, b.input)
        for i, f in enumerate(b.filters):  # each filter as the single-layer path runs it
            g = f.geometry
            kw = dict(stride=g.stride, padding=g.padding, dilation=g.dilation, border=g.border,
                      activation=g.activation)
            if b.input == "depthwise":
                want = engine.conv2d_depthwise(x, f.weights[None], [f.bias], **kw)[0]
                np.testing.assert_array_equal(data[3 * i:3 * i + 3], want)  # colour kept
            else:
                want = engine.conv2d(x, f.weights[None], [f.bias], **kw)[0]
                np.testing.assert_allclose(data[i], want, rtol=0, atol=1e-5)


def test_the_first_gray_or_rgb_layer_fits_the_image_and_later_ones_do_not():
    text = """
        name: fit
        layers:
          - conv:
              defaults: {input: rgb, padding: same, activation: none}
              filters:
                - {name: sum, weights: [[[1]], [[1]], [[1]]]}
          - conv:
              defaults: {input: gray, padding: same, activation: none}
              filters:
                - {name: a, weights: [[2]]}
                - {name: b, weights: [[-1]]}
          - conv:
              defaults: {input: gray}
              filters:
                - {name: c, weights: [[1]]}
    """
    net = bank.parse_network(textwrap.dedent(text), source="fit.yaml")
    gray = RNG.random((1, 4, 4), np.float32)
    with pytest.raises(InputError) as info:
        network.run(gray, net)
    assert str(info.value) == ("layer '03-conv': its filters need 1 input channels (input "
                               "gray: one channel) but its input has 2")
    two = network.Network("two", "", net.layers[:2])
    data, names = network.run(gray, two)  # the gray image repeated for the rgb layer
    np.testing.assert_allclose(data, np.stack([6 * gray[0], -3 * gray[0]]), rtol=1e-6)
    assert names == ["a", "b"]


def test_channel_counts_that_do_not_fit_name_both_counts_and_the_layer():
    net = small_net()
    for call in (lambda: network.run(np.zeros((3, 8, 8), np.float32), net),
                 lambda: net.shapes((3, 8, 8))):
        with pytest.raises(InputError) as info:
            call()
        assert str(info.value) == "layer '01-normalize': normalizes 4 channels but its input has 3"
    no_norm = network.Network("n", "", net.layers[1:])
    with pytest.raises(InputError) as info:
        network.run(np.zeros((6, 8, 8), np.float32), no_norm)
    assert str(info.value) == ("layer 'grouped': its filters need 4 input channels (2 per "
                               "group, 2 groups) but its input has 6")
    pool = network.Network("p", "", (network.Pool("pool", "max", (3, 3), (3, 3)),))
    with pytest.raises(InputError) as info:
        network.run(np.zeros((1, 2, 2), np.float32), pool)
    assert str(info.value) == ("layer 'pool': the input (2x2) is smaller than the pooling "
                               "window (3x3) with padding (0, 0, 0, 0)")


def test_layers_whose_filters_give_maps_of_different_sizes_are_refused():
    text = """
        name: mixed
        layers:
          - conv:
              defaults: {padding: valid}
              filters:
                - {name: small, weights: [[1, 1], [1, 1]]}
                - {name: big, weights: [[1]]}
    """
    net = bank.parse_network(textwrap.dedent(text), source="m.yaml")
    with pytest.raises(InputError, match=r"^layer '01-conv': its filters give maps of different "
                                         r"sizes \(4x4: small; 5x5: big\); the maps of a layer "
                                         r"must share one size"):
        network.run(np.zeros((1, 5, 5), np.float32), net)


def two_conv_net() -> network.Network:
    w1 = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)
    w2 = RNG.normal(size=(4, 2, 1, 2)).astype(np.float32)
    layers = [
        {"conv": {"name": "first", "defaults": {"input": "dense", "activation": "tanh"},
                  "filters": [{"name": f"a{i}", "weights": w1[i]} for i in range(4)]}},
        {"conv": {"name": "second", "defaults": {"input": "dense", "groups": 2,
                                                 "activation": "leaky_relu"},
                  "filters": [{"name": f"g{i}", "weights": w2[i], "bias": 0.1 * i}
                              for i in range(4)]}},
        {"pool": {"mode": "max", "kernel": 2, "stride": 1}},
    ]
    return bank.parse_network(bank.dump_network("two", "", layers), source="two.yaml")


def test_select_and_override_act_on_the_last_conv_layer():
    net = two_conv_net()
    x = RNG.random((2, 8, 8), np.float32)
    full, names = network.run(x, net)
    assert names == ["g0", "g1", "g2", "g3"]
    picked = net.select(["g3", "g0"])
    assert [f.name for f in picked.layers[0].bank.filters] == ["a0", "a1", "a2", "a3"]
    data, names = network.run(x, picked)
    assert names == ["g3", "g0"]  # g3 still reads the second group, g0 the first
    np.testing.assert_allclose(data, full[[3, 0]], rtol=0, atol=1e-6)
    wider = net.override(stride=(2, 2), activation="none")
    assert all(f.geometry.stride == (1, 1) for f in wider.layers[0].bank.filters)
    assert all(f.geometry.stride == (2, 2) and f.geometry.activation == "none"
               for f in wider.layers[1].bank.filters)
    assert network.run(x, wider)[0].shape == (4, 3, 3)
    with pytest.raises(UsageError) as info:
        net.select(["gg0"])
    assert str(info.value) == ("layer 'second' of 'two' has no filter 'gg0' (did you mean "
                               "'g0'?); see 'convcli bank show two'")
    pools = network.Network("p", "", net.layers[2:])
    with pytest.raises(UsageError, match=r"^'p' has no conv layer to pick filters of$"):
        pools.select(["g0"])


def test_selected_grouped_filters_match_the_oracle():
    net = two_conv_net()
    x = RNG.random((2, 6, 7), np.float32)
    first = net.layers[0].bank
    w1 = np.stack([f.weights for f in first.filters])
    second = net.layers[1].bank
    y = np.tanh(reference_conv2d(x, w1, padding=(1, 1, 1, 1), activation="none"))
    for name in ("g2", "g1"):
        f = next(f for f in second.filters if f.name == name)
        want = reference_conv2d(y[2 * f.group:2 * f.group + 2], f.weights[None], [f.bias],
                                padding=(0, 0, 0, 1), activation="none")
        want = reference_pool2d(reference_activation(want, "leaky_relu"), "max", (2, 2),
                                (1, 1))
        got, _ = network.run(x, net.select([name]))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_the_input_is_never_changed():
    x = RNG.normal(size=(2, 8, 8)).astype(np.float32)
    before = x.copy()
    layers = [{"activation": {"function": "relu"}}, {"activation": {"function": "sigmoid"}}]
    net = bank.parse_network(bank.dump_network("acts", "", layers), source="a.yaml")
    data, _ = network.run(x, net)
    assert np.array_equal(x, before)
    np.testing.assert_allclose(data, reference_activation(np.maximum(x, 0), "sigmoid"),
                               rtol=1e-6)


def test_a_network_holds_no_more_than_its_layers_one_by_one():
    # normalisation, activations and pooling: new arrays, activations in place, no copies
    # per tap; the runner stays within its own estimate
    x = RNG.random((8, 128, 128), np.float32)  # 512 KiB
    layers = [{"normalize": {"mean": 0.5, "std": 0.25}}, {"activation": {"function": "hardswish"}},
              {"pool": {"mode": "max", "kernel": 3, "stride": 1, "padding": 1}},
              {"activation": {"function": "sigmoid"}},
              {"pool": {"mode": "avg", "kernel": 2}}]
    net = bank.parse_network(bank.dump_network("ops", "", layers), source="o.yaml")
    tracemalloc.start()
    network.run(x, net)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak <= net.peak_bytes(x.shape) - x.nbytes, (peak, net.peak_bytes(x.shape))
    assert peak <= 3.5 * x.nbytes


def test_a_conv_layer_costs_what_the_engine_costs_for_it():
    x = RNG.random((16, 96, 96), np.float32)
    w = RNG.normal(size=(16, 16, 3, 3)).astype(np.float32)
    layers = [{"conv": {"defaults": {"input": "dense", "activation": "relu"},
                        "filters": [{"name": f"f{i}", "weights": w[i]} for i in range(16)]}}]
    net = bank.parse_network(bank.dump_network("c", "", layers), source="c.yaml")
    # one thread: the engine's band buffers are then allocated in one order, every time
    config = engine.EngineConfig(method="numpy", threads=1)
    network.run(x, net, config=config)  # plans made once, outside the measurement
    peaks = []
    for call in (lambda: engine.conv2d(x, w, padding="same", config=config),
                 lambda: network.run(x, net, config=config)):
        tracemalloc.start()
        call()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] <= peaks[0] * 1.05 + 64 * 1024, peaks


# --- the file format: errors ----------------------------------------------------------------

def problems(text: str) -> list[str]:
    with pytest.raises(BankError) as info:
        bank.parse_network(textwrap.dedent(text), source="n.yaml")
    return [str(p) for p in info.value.problems]


def test_every_layer_type_reports_its_problems_at_once():
    found = problems("""\
        name: bad
        filters: []
        layers:
          - normalize: {mean: [0.5, x], std: [0.2, 0]}
          - conv:
              defaults: {input: gray, groups: 2, activation: gelu}
              filters:
                - {name: a, weights: [[1, 0], [0, 1]], stride: 0}
          - activation: {function: leaky_relu, alpha: .inf, beta: 2}
          - activaton: {function: relu}
          - pool: {mode: maxx, kernel: 0, ceil_mode: yes}
          - pool: {name: p, mode: avg, kernel: 2, dilation: 2}
          - pool: {name: p, mode: max, kernel: 2, count_include_pad: false, stride: [1, 2, 3]}
          - [1]
          - conv: 3
          - normalize: {std: 1, mean: [1, 2], bogus: 2}
          - activation: {function: clip, min: 2, max: 1}
          - pool: {mode: max, kernel: 3, padding: same, ceil_mode: true}
          - conv:
              defaults: {input: dense}
              filters:
                - {name: a, weights: [[[1]], [[2]]]}
                - {name: b, weights: [[1]]}
          - normalize: {mean: [1, 2, 3], std: [1, 2]}
          - activation: {}
          - pool: {kernel: 2}
        """)
    assert found == [
        "n.yaml:2: field 'filters': not allowed next to 'layers': a layered file keeps "
        "'filters' inside its conv layers",
        "n.yaml:4: layer '01-normalize': field 'mean': must be finite numbers within float32's "
        "range (about ±3.4e+38), got 'x'",
        "n.yaml:4: layer '01-normalize': field 'std': must be numbers > 0 within float32's "
        "range, got 0",
        "n.yaml:6: layer '02-conv': field 'defaults.activation': activation must be one of "
        "relu, none, abs, relu6, leaky_relu, hardswish, hardsigmoid, sigmoid, tanh, silu, "
        "elu, selu, softplus, mish; got 'gelu' (did you mean 'elu'?)",
        "n.yaml:8: layer '02-conv': filter 'a': field 'stride': stride must be a whole number "
        ">= 1 or a pair [y, x], got 0",
        "n.yaml:6: layer '02-conv': field 'defaults.groups': groups apply to input 'dense' "
        "only, not 'gray'",
        "n.yaml:9: layer '03-activation': field 'alpha': must be a finite number, got inf",
        "n.yaml:9: layer '03-activation': field 'beta': does not apply to leaky_relu "
        "(leaky_relu takes alpha)",
        "n.yaml:10: layer '#4': unknown layer type 'activaton' (did you mean 'activation'?); "
        "known: normalize, conv, activation, pool, lrn",
        "n.yaml:11: layer '05-pool': field 'mode': must be max or avg, got 'maxx' (did you "
        "mean 'max'?)",
        "n.yaml:11: layer '05-pool': field 'kernel': kernel must be a whole number >= 1 or a "
        "pair [y, x], got 0",
        "n.yaml:11: layer '05-pool': field 'ceil_mode': ceil_mode must be true or false, got "
        "'yes'",
        "n.yaml:12: layer 'p': field 'dilation': applies to max pooling only (average pooling "
        "has no dilation)",
        "n.yaml:13: layer 'p': field 'name': duplicate layer name (first used on line 12)",
        "n.yaml:13: layer 'p': field 'stride': stride must be a whole number >= 1 or a pair "
        "[y, x], got [1, 2, 3]",
        "n.yaml:13: layer 'p': field 'count_include_pad': applies to average pooling only",
        "n.yaml:14: layer '#8': a layer must be a mapping with exactly one key naming its type "
        "(normalize, conv, activation, pool, lrn), e.g. {pool: {mode: max, kernel: 2}}",
        "n.yaml:15: layer '09-conv': a conv layer must be a mapping of its settings, got 3",
        "n.yaml:16: layer '10-normalize': field 'bogus': unknown key; allowed: name, mean, std",
        "n.yaml:17: layer '11-activation': field 'min': clip needs min <= max, got min 2 and "
        "max 1",
        "n.yaml:18: layer '12-pool': field 'ceil_mode': applies to explicit padding, not "
        "padding 'same'",
        "n.yaml:23: layer '13-conv': filter 'b': field 'weights': has 1 channels but filter "
        "'a' has 2; every filter of a dense layer spans the same input channels",
        "n.yaml:24: layer '14-normalize': field 'std': has 2 values but mean has 3; give one "
        "per channel (or one for every channel)",
        "n.yaml:25: layer '15-activation': field 'function': missing (one of none, relu, abs, "
        "relu6, clip, leaky_relu, hardswish, hardsigmoid, sigmoid, tanh, silu, elu, selu, "
        "softplus, mish)",
        "n.yaml:26: layer '16-pool': field 'mode': missing (max or avg)",
    ]


@pytest.mark.parametrize("text, expected", [
    ("name: x\nlayers: []\n", ["n.yaml:2: field 'layers': must be a non-empty list of layers, "
                               "each a mapping with one key naming its type (normalize, conv, "
                               "activation, pool, lrn)"]),
    ("name: x\nlayers:\n  - conv: {filters: []}\n",
     ["n.yaml:3: layer '01-conv': field 'filters': must be a non-empty list of filters"]),
    ("name: x\nlayers:\n  - conv:\n      defaults: {input: dense, groups: 3}\n      filters:\n"
     "        - {name: a, weights: [[1]]}\n        - {name: b, weights: [[1]]}\n",
     ["n.yaml:4: layer '01-conv': field 'defaults.groups': groups (3) must divide the number "
      "of filters (2)"]),
    ("name: x\nlayers:\n  - conv:\n      defaults: {groups: 0}\n      filters: [{name: a, "
     "weights: [[1]]}]\n",
     ["n.yaml:4: layer '01-conv': field 'defaults.groups': groups must be a whole number >= "
      "1, got 0"]),
    ("name: x\nlayers:\n  - {pool: {mode: max, kernel: 2}, conv: {}}\n",
     ["n.yaml:3: layer '#1': a layer must be a mapping with exactly one key naming its type "
      "(normalize, conv, activation, pool, lrn), e.g. {pool: {mode: max, kernel: 2}}"]),
    ("name: x\nlayers:\n  - pool: {mode: max, kernel: 3, dilation: 2049}\n",
     ["n.yaml:3: layer '01-pool': field 'dilation': dilation must be at most 1024, got 2049"]),
    ("name: x\nlayers:\n  - pool: {mode: max, kernel: [3, 1025], dilation: 5}\n",
     ["n.yaml:3: layer '01-pool': field 'dilation': dilation 5,5 spreads the 3x1025 kernel "
      "over 11x5121 pixels; at most 4097 along each axis are allowed"]),
    ("name: x\nlayers:\n  - conv:\n      name: " + "n" * 300 + "\n      filters: [{name: a, "
     "weights: [[1]]}]\n",
     [f"n.yaml:4: layer '{'n' * 57}...': field 'name': is 300 characters long; at most 200 "
      "are allowed"]),
    ("name: x\nlayers:\n  - normalize: {mean: " + str([0] * 4097) + ", std: 1}\n",
     ["n.yaml:3: layer '01-normalize': field 'mean': must hold 1 to 4096 numbers, got 4,097"]),
    ("name: x\nlayers:\n  - activation: {name: 02-pool, function: relu}\n  - pool: {mode: max, "
     "kernel: 2}\n",
     ["n.yaml:4: layer '02-pool': field 'name': duplicate layer name (first used on line 3)"]),
    ("convcli: 2\nname: x\nlayers:\n  - activation: {function: relu}\nextra: 1\n",
     ["n.yaml:5: field 'extra': unknown key; allowed: convcli, name, description, "
      "provenance, layers",
      "n.yaml:1: field 'convcli': unsupported format version 2; this convcli reads version 1"]),
])
def test_bad_layered_files(text, expected):
    assert problems(text) == expected


def test_a_layered_file_is_not_a_single_layer_bank(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(small_net_text())
    with pytest.raises(BankError) as info:
        bank.load(str(path))
    assert str(info.value) == (f"{path}:5: field 'layers': this file holds 4 layers; a "
                               "single-layer bank (with 'filters' instead of 'layers') is "
                               "needed here")
    assert bank.load_network(str(path)).origin == str(path)


# --- dump and load ------------------------------------------------------------------------

def same_networks(a: network.Network, b: network.Network) -> None:
    assert (a.name, a.description, a.provenance) == (b.name, b.description, b.provenance)
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers):
        if isinstance(la, network.Conv):
            assert isinstance(lb, network.Conv) and la.name == lb.name
            ba, bb = la.bank, lb.bank
            assert (ba.name, ba.input, ba.groups, ba.description) == \
                (bb.name, bb.input, bb.groups, bb.description)
            for fa, fb in zip(ba.filters, bb.filters, strict=True):
                assert np.array_equal(fa.weights, fb.weights)
                assert np.float32(fa.bias) == np.float32(fb.bias)  # as the engine uses it
                assert (fa.name, fa.geometry, fa.scale, fa.group, fa.description, fa.source) \
                    == (fb.name, fb.geometry, fb.scale, fb.group, fb.description, fb.source)
        else:
            assert la == lb


def test_dumped_layers_load_to_exactly_the_same_numbers():
    w = RNG.normal(size=(3, 5, 2, 3)).astype(np.float32) * np.float32(1e-3)
    bias = RNG.normal(size=3).astype(np.float32)
    layers = [
        {"normalize": {"name": "norm", "mean": np.float32(0.1), "std": (0.3,)}},
        {"conv": {"name": "c", "description": "three dense filters",
                  "defaults": {"input": "dense", "padding": (0, 1, 2, 3), "stride": 2},
                  "filters": [{"name": f"k{i}", "weights": w[i], "bias": bias[i]}
                              for i in range(3)]}},
        {"activation": {"function": "clip", "min": -np.inf, "max": np.float64(0.5)}},
        {"activation": {"function": "hardsigmoid", "alpha": 0.2, "beta": 0.5}},
        {"pool": {"mode": "avg", "kernel": (3, 2), "padding": [1, 0, 1, 1],
                  "count_include_pad": False}},
    ]
    text = bank.dump_network("dumped", "a round trip", layers, {"source": "test"})
    net = bank.parse_network(text, source="d.yaml")
    conv = net.layers[1].bank
    np.testing.assert_array_equal(np.stack([f.weights for f in conv.filters]), w)
    assert [np.float32(f.bias) for f in conv.filters] == list(bias)  # as the engine uses it
    assert net.layers[0] == network.Normalize("norm", (np.float32(0.1).item(),), (0.3,))
    assert net.layers[2] == network.Activation("03-activation", "clip",
                                               (("min", -np.inf), ("max", 0.5)))
    assert net.layers[3].params == (("alpha", 0.2), ("beta", 0.5))
    assert net.layers[4] == network.Pool("05-pool", "avg", (3, 2), (3, 2), (1, 0, 1, 1),
                                         (1, 1), False, False)
    assert net.provenance == {"source": "test"}
    # every setting written out, and read back the same
    again = bank.parse_network(bank.dump_network(net.name, net.description,
                                                 bank.network_layers(net), net.provenance),
                               source="again.yaml")
    same_networks(net, again)


def test_loaded_networks_round_trip_through_their_layers():
    for net in (small_net(), two_conv_net(), bank.load_network("edge"),
                bank.load_network("blur")):
        text = bank.dump_network(net.name, net.description, bank.network_layers(net),
                                 net.provenance)
        same_networks(net, bank.parse_network(text, source="rt.yaml"))


def test_selected_grouped_filters_cannot_be_written_as_a_layer():
    net = two_conv_net().select(["g3", "g0"])
    with pytest.raises(ValueError, match="^the filters of layer 'second' were selected from a "
                                         "layer of 2 groups and no longer line up with them$"):
        bank.network_layers(net)


def test_layers_too_large_for_a_bank_file_are_refused_naming_the_layer():
    big = np.zeros((1024, 10, 10), np.float32)  # 102,400 weights: about 1.8 MB of text
    layers = [{"pool": {"mode": "max", "kernel": 2}},
              {"conv": {"name": "first", "defaults": {"input": "dense"},
                        "filters": [{"name": "a", "weights": big}]}},
              {"conv": {"defaults": {"input": "dense"},
                        "filters": [{"name": "b", "weights": big[:200]}]}}]
    bank.check_written_network(layers[:2])
    with pytest.raises(ValueError, match=r"^layer '03-conv' brings the file to about "
                                         r"2,[0-9]{3},[0-9]{3} bytes; a bank file holds at "
                                         r"most 2 MiB \(about 116,508 weights\)$"):
        bank.dump_network("big", "", layers)


def test_a_layer_of_many_weights_loads_quickly_enough_to_be_a_file():
    # 64 filters of 64 x 3 x 3 written one filter a line: the YAML reader sees ~70 items
    w = RNG.normal(size=(64, 64, 3, 3)).astype(np.float32)
    layers = [{"conv": {"name": "deep", "defaults": {"input": "dense"},
                        "filters": [{"name": f"f{i}", "weights": w[i]} for i in range(64)]}}]
    text = bank.dump_network("deep", "", layers)
    assert text.count("\n") < 80
    net = bank.parse_network(text, source="deep.yaml")
    got = net.layers[0].bank
    np.testing.assert_array_equal(np.stack([f.weights for f in got.filters]), w)
    assert got.channels == 64
    x = RNG.random((64, 6, 6), np.float32)
    data, _ = network.run(x, net)
    want = reference_conv2d(x, w, padding="same", activation="relu")
    np.testing.assert_allclose(data, want, rtol=0, atol=1e-4)


def test_ops_and_the_network_model_agree_on_sizes_and_work():
    net = small_net()
    shapes = net.shapes((4, 9, 11))
    assert shapes == [(4, 9, 11), (4, 8, 6), (4, 8, 6), (4, 5, 4)]
    # the conv: 4 filters x 18 weights x 48 outputs; pooling 6 per output; the rest one
    # operation per value
    assert net.work((4, 9, 11)) == 4 * 9 * 11 + 4 * 18 * 48 + 4 * 48 + 4 * 20 * 6
    assert ops.avg_pool2d(np.zeros((4, 8, 6)), (2, 3), 2, 1, ceil_mode=True).shape == \
        shapes[-1]


def test_lrn_layers_load_run_and_check_their_settings(tmp_path):
    from convcli import ops

    path = tmp_path / "n.yaml"
    path.write_text("convcli: 1\nname: n\nlayers:\n"
                    "  - conv: {defaults: {input: gray, activation: none}, filters: "
                    "[{name: a, weights: [[1]]}, {name: b, weights: [[-2]]}, "
                    "{name: c, weights: [[0.5]]}]}\n"
                    "  - lrn: {size: 3, alpha: 0.5, beta: 0.6, bias: 1.5}\n")
    net = bank.load_network(str(path))
    x = np.random.default_rng(0).normal(size=(1, 4, 5)).astype(np.float32)
    got, names = network.run(x, net)
    maps = np.concatenate([x, -2 * x, 0.5 * x])
    np.testing.assert_array_equal(got, ops.local_response_norm(maps, 3, 0.5, 0.6, 1.5))
    assert names == ["a", "b", "c"]
    again = tmp_path / "again.yaml"
    again.write_text(bank.dump_network(net.name, net.description, bank.network_layers(net),
                                       net.provenance))
    assert bank.load_network(str(again)).layers[1] == net.layers[1]
    path.write_text("name: n\nlayers:\n  - lrn: {alpha: 1}\n  - lrn: {size: 0}\n"
                    "  - lrn: {size: 3, beta: .nan}\n")
    with pytest.raises(BankError) as info:
        bank.load_network(str(path))
    assert [str(p) for p in info.value.problems] == [
        f"{path}:3: layer '01-lrn': field 'size': missing (the channels each window spans)",
        f"{path}:4: layer '02-lrn': field 'size': must be a whole number of channels from 1 "
        "to 4096, got 0",
        f"{path}:5: layer '03-lrn': field 'beta': must be a finite number within float32's "
        "range, got nan"]
