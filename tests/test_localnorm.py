"""Per-window normalisation (convcli.localnorm) against the explicit per-patch computation:
every window the filter reads, padding included, normalised on its own in float64, on
every engine path; its bank setting (parse, dump, errors) and the pipeline's path."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convcli import bank, localnorm, network, pipeline
from convcli.engine import EngineConfig
from convcli.errors import BankError
from oracle import explicit_pads, source_index

BORDERS = ["zero", "reflect", "replicate", "wrap"]
ACTIVATIONS = ["none", "relu", "abs", "tanh"]
# Every engine path: numba and NumPy executors, each algorithm (Winograd: 3x3 at stride 1).
PATHS = [(m, a) for m in ("jit", "numpy") for a in ("direct", "gemm", "winograd", "fft")]


def explicit(x, w, b, stride, padding, dilation, border, groups, eps, activation,
             depthwise=False):
    """float64, one window at a time: gather the taps the filter reads (the border's values
    where it hangs over the edge), normalise them, dot with the weights, add the bias."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    F, Cg, KH, KW = w.shape
    C, H, W = x.shape
    (sy, sx), (dy, dx) = stride, dilation
    pt, pb, pl, pr = explicit_pads(padding, H, W, KH, KW, stride, dilation)
    ho = (H + pt + pb - dy * (KH - 1) - 1) // sy + 1
    wo = (W + pl + pr - dx * (KW - 1) - 1) // sx + 1
    copies = C if depthwise else 1
    out = np.zeros((F, copies, ho, wo))
    for f in range(F):
        for k in range(copies):
            if depthwise:
                chans = [k]
            else:
                g = f // (F // groups)
                chans = list(range(g * Cg, (g + 1) * Cg))
            for y in range(ho):
                for xo in range(wo):
                    patch = np.zeros((len(chans), KH, KW))
                    for ci, c in enumerate(chans):
                        for i in range(KH):
                            yy = source_index(y * sy + i * dy - pt, H, border)
                            for j in range(KW):
                                xx = source_index(xo * sx + j * dx - pl, W, border)
                                if yy is not None and xx is not None:
                                    patch[ci, i, j] = x[c, yy, xx]
                    p = (patch - patch.mean()) / np.sqrt(patch.var() + eps)
                    out[f, k, y, xo] = np.sum(w[f] * p) + b[f]
    out = {"none": out, "relu": np.maximum(out, 0), "abs": np.abs(out),
           "tanh": np.tanh(out)}[activation]
    return out.reshape(F * copies, ho, wo) if depthwise else out[:, 0]


def make_bank(weights, bias, *, stride, padding, dilation, border, activation, eps,
              mode="dense", groups=1):
    geo = bank.Geometry(stride, padding, dilation, border, activation, window_norm=eps)
    filters = tuple(bank.Filter(f"f{i}", np.ascontiguousarray(w, np.float32), float(b), geo,
                                "auto", group=i // (len(weights) // groups))
                    for i, (w, b) in enumerate(zip(weights, bias)))
    return bank.KernelBank("wn", mode, filters, groups=groups)


@st.composite
def layers(draw, winograd=False, depthwise=False):
    groups = 1 if depthwise else draw(st.integers(1, 2))
    c = 1 if depthwise else groups * draw(st.integers(1, 2))
    f = groups * draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if winograd:
        kh = kw = 3
        stride = dilation = (1, 1)
        h, w = h + 4, w + 4
    else:
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.sampled_from(["same", "valid"]),
                             st.tuples(*[st.integers(0, 3)] * 4)))
    channels = draw(st.integers(1, 3)) if depthwise else c
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # an offset and a spread that vary: normalisation must take both out
    image = (rng.random((channels, h, w)) * draw(st.sampled_from([1.0, 0.01, 30.0]))
             + draw(st.sampled_from([0.0, 0.5, -7.0]))).astype(np.float32)
    if draw(st.booleans()):  # a flat region: variance 0 where a window lies inside it
        image[:, : h // 2] = image[0, 0, 0]
    weights = rng.standard_normal((f, c // groups if not depthwise else 1, kh, kw))
    bias = rng.standard_normal(f)
    eps = draw(st.sampled_from([localnorm.DEFAULT_EPS, 1e-6, 0.5]))
    return dict(image=image, weights=weights.astype(np.float32), bias=bias.astype(np.float32),
                stride=stride, padding=padding, dilation=dilation,
                border=draw(st.sampled_from(BORDERS)),
                activation=draw(st.sampled_from(ACTIVATIONS)), groups=groups, eps=eps)


def fits(layer) -> bool:
    from convcli import geometry

    x, w = layer["image"], layer["weights"]
    k = w.shape[2:]
    pads = geometry.resolve_pads(layer["padding"], x.shape[1:], k, layer["stride"],
                                 layer["dilation"])
    return min(geometry.output_hw(x.shape[1:], k, layer["stride"], layer["dilation"],
                                  pads)) >= 1


def run_layer(layer, config, depthwise=False):
    b = make_bank(layer["weights"], layer["bias"],
                  stride=layer["stride"], padding=layer["padding"],
                  dilation=layer["dilation"], border=layer["border"],
                  activation=layer["activation"], eps=layer["eps"],
                  mode="depthwise" if depthwise else "dense", groups=layer["groups"])
    net = network.Network("wn", "", (network.Conv("wn", b),))
    return network.run(layer["image"], net, config=config)[0]


def check(got, layer, depthwise=False):
    want = explicit(layer["image"], layer["weights"], layer["bias"], layer["stride"],
                    layer["padding"], layer["dilation"], layer["border"], layer["groups"],
                    layer["eps"], layer["activation"], depthwise)
    # float32 rounding of w . p (about 1e-6 of sum |w| |p|) is divided by the window's
    # standard deviation; the scale of the error the output may carry:
    x = np.abs(layer["image"]).max() + 1e-30
    scale = np.abs(layer["weights"]).reshape(len(layer["weights"]), -1).sum(1) * x
    std = np.sqrt(layer["eps"])
    tol = 2e-5 * scale[:, None, None, None] / std
    if depthwise:
        tol = np.repeat(tol, layer["image"].shape[0], axis=1).reshape(-1, 1, 1)
    else:
        tol = tol[:, 0]
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= tol + 1e-5 * np.abs(want)), \
        np.max(np.abs(got - want) - tol)


@pytest.mark.parametrize("method, algorithm", PATHS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_engine_path_matches_the_explicit_windows(method, algorithm, data):
    layer = data.draw(layers(winograd=algorithm == "winograd"))
    assume(fits(layer))
    check(run_layer(layer, EngineConfig(method=method, algorithm=algorithm)), layer)


@pytest.mark.parametrize("method", ["jit", "numpy"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_depthwise_layers_normalise_each_channel_on_its_own(method, data):
    layer = data.draw(layers(depthwise=True))
    assume(fits(layer))
    check(run_layer(layer, EngineConfig(method=method), depthwise=True), layer,
          depthwise=True)


@settings(max_examples=25, deadline=None)
@given(layer=layers())
def test_the_pipeline_computes_what_the_runner_computes(layer):
    assume(fits(layer))
    b = make_bank(layer["weights"], layer["bias"], stride=layer["stride"],
                  padding=layer["padding"], dilation=layer["dilation"],
                  border=layer["border"], activation=layer["activation"], eps=layer["eps"],
                  groups=layer["groups"])
    net = network.Network("wn", "", (network.Conv("wn", b),))
    want = network.run(layer["image"], net)[0]
    maps = pipeline.compute_maps(layer["image"], b, first=False)
    np.testing.assert_array_equal(np.stack([m.data for m in maps]), want)


def test_brightness_and_contrast_are_taken_out():
    """With a tiny epsilon and a border that copies pixels, a*x + c gives the maps of x."""
    rng = np.random.default_rng(5)
    x = rng.random((1, 20, 17)).astype(np.float32)
    w = rng.standard_normal((3, 1, 5, 5)).astype(np.float32)
    b = make_bank(w, [0.1, -0.2, 0.3], stride=(1, 1), padding="same", dilation=(1, 1),
                  border="reflect", activation="none", eps=1e-12)
    net = network.Network("wn", "", (network.Conv("wn", b),))
    plain = network.run(x, net)[0]
    moved = network.run(3.5 * x + 0.25, net)[0]
    np.testing.assert_allclose(moved, plain, rtol=1e-4, atol=1e-4)


def test_a_flat_image_gives_the_bias():
    w = np.random.default_rng(1).standard_normal((2, 1, 3, 3)).astype(np.float32)
    b = make_bank(w, [0.5, -1.5], stride=(2, 1), padding="same", dilation=(1, 2),
                  border="replicate", activation="none", eps=localnorm.DEFAULT_EPS)
    net = network.Network("wn", "", (network.Conv("wn", b),))
    got = network.run(np.full((1, 9, 8), 0.7, np.float32), net)[0]
    np.testing.assert_allclose(got[0], 0.5, atol=1e-4)
    np.testing.assert_allclose(got[1], -1.5, atol=1e-4)


def test_window_stats_match_numpy_windows():
    from numpy.lib.stride_tricks import sliding_window_view

    rng = np.random.default_rng(2)
    x = rng.random((2, 30, 25)) * 100 + 1000  # a large offset: the shift keeps precision
    mean, var = localnorm.window_stats(x, (4, 3), (2, 3), (2, 1), (0, 0, 0, 0), "zero")
    win = sliding_window_view(x, (7, 3), axis=(1, 2))[:, ::2, ::3, ::2, :]  # dilation 2 rows
    win = np.moveaxis(win, 0, 2).reshape(win.shape[1], win.shape[2], -1)
    np.testing.assert_allclose(mean, win.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(var, win.var(-1), rtol=1e-9)


# --- the bank setting ---------------------------------------------------------------------

BANK = """\
name: wn
defaults: {{input: gray{extra}}}
filters:
  - name: a
    weights: [[1, 0], [0, -1]]
"""


@pytest.mark.parametrize("value, eps", [
    ("true", localnorm.DEFAULT_EPS), ("false", None), ("{eps: 0.25}", 0.25), ("{eps: 1e-3}", 1e-3),
])
def test_window_norm_setting_loads(value, eps):
    b = bank.parse(BANK.format(extra=f", window_norm: {value}"), source="b.yaml")
    assert b.filters[0].geometry.window_norm == eps
    assert bank.parse(BANK.format(extra=""), source="b.yaml").filters[0].geometry.window_norm \
        is None


@pytest.mark.parametrize("value, message", [
    ("{eps: 0}", "b.yaml:2: field 'defaults.window_norm': window_norm: eps must be a number "
                 "> 0, got 0"),
    ("{eps: .nan}", "b.yaml:2: field 'defaults.window_norm': window_norm: eps must be a number "
                    "> 0, got nan"),
    ("yes", "b.yaml:2: field 'defaults.window_norm': window_norm must be true, false or {eps: "
            "a number > 0}, got 'yes'"),
    ("{epsilon: 1}", "b.yaml:2: field 'defaults.window_norm': window_norm must be true, false "
                     "or {eps: a number > 0}, got {'epsilon': 1}"),
])
def test_bad_window_norm_settings(value, message):
    with pytest.raises(BankError) as info:
        bank.parse(BANK.format(extra=f", window_norm: {value}"), source="b.yaml")
    assert str(info.value) == message


def test_window_norm_is_a_layer_setting_not_a_filter_one():
    text = BANK.replace("    weights:", "    window_norm: true\n    weights:")
    with pytest.raises(BankError, match="field 'window_norm': unknown key"):
        bank.parse(text.format(extra=""), source="b.yaml")


def test_layered_files_keep_window_norm_through_dump_and_load():
    text = """\
name: two
layers:
  - conv:
      defaults: {input: gray, window_norm: {eps: 0.125}, padding: valid}
      filters: [{name: a, weights: [[1, 2], [3, 4]]}]
  - conv:
      defaults: {input: dense}
      filters: [{name: b, weights: [[[1]]]}]
"""
    net = bank.parse_network(text, source="n.yaml")
    first, second = (layer.bank for layer in net.layers)
    assert first.filters[0].geometry.window_norm == 0.125
    assert second.filters[0].geometry.window_norm is None
    again = bank.parse_network(bank.dump_network(net.name, net.description,
                                                 bank.network_layers(net)))
    assert [layer.bank.filters[0].geometry for layer in again.layers] == \
        [layer.bank.filters[0].geometry for layer in net.layers]


def test_bank_show_tells_the_setting(tmp_path):
    import json

    from typer.testing import CliRunner

    from convcli.cli import app

    path = tmp_path / "wn.yaml"
    path.write_text(BANK.format(extra=", window_norm: {eps: 0.25}"))
    shown = CliRunner().invoke(app, ["bank", "show", str(path)])
    assert shown.exit_code == 0 and "window_norm eps 0.25" in shown.output
    record = json.loads(CliRunner().invoke(app, ["bank", "show", str(path), "--json"]).output)
    assert record["filters"][0]["window_norm"] == 0.25
    path.write_text(BANK.format(extra=""))
    assert "window_norm" not in CliRunner().invoke(app, ["bank", "show", str(path)]).output


def test_the_shipped_learned_bank_normalises_each_window():
    shipped = bank.load("learned")
    assert {f.geometry.window_norm for f in shipped.filters} == {localnorm.DEFAULT_EPS}
    assert "--window-norm" in shipped.provenance["command"]
