"""Networks of layers from the command line: the files they write equal the runner's numbers
(which tests/test_network.py checks against the float64 oracle and torch), every layer's maps
on request, pooling added from the command line, layered files in bank show and check."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from convcli import bank, images, network, ops
from convcli.cli import app
from oracle import reference_pool2d

runner = CliRunner()

NET = """\
convcli: 1
name: tiny
description: two conv layers
layers:
  - normalize: {mean: [0.5], std: [0.25]}
  - conv:
      defaults: {input: gray, activation: none, padding: same}
      filters:
        - {name: sx, weights: [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]}
        - {name: sy, weights: [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]}
  - activation: {function: relu6}
  - conv:
      defaults: {input: dense, activation: relu, stride: 2}
      filters:
        - {name: mag, weights: [[[1, 0.5]], [[1, 0.5]]], bias: -0.1}
        - {name: diff, weights: [[[1, 0]], [[-1, 0]]]}
  - pool: {mode: max, kernel: 3, stride: 2, padding: 1, ceil_mode: true}
"""


def run(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="convcli")


def test_a_network_writes_its_last_layers_maps(tmp_path, samples):
    (tmp_path / "net.yaml").write_text(NET)
    r = run("apply", samples / "camera.png", "-b", tmp_path / "net.yaml", "--format", "npy",
            "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    got = np.load(tmp_path / "o" / "camera" / "maps.npy")
    net = bank.load_network(str(tmp_path / "net.yaml"))
    want, names = network.run(images.read_image(samples / "camera.png").pixels, net)
    assert names == ["mag", "diff"]
    np.testing.assert_array_equal(got, want)
    meta = json.loads((tmp_path / "o" / "camera" / "maps.json").read_text())
    assert meta["filters"] == ["mag", "diff"] and meta["shape"] == list(want.shape)


def test_every_layer_in_its_folder(tmp_path, samples):
    (tmp_path / "net.yaml").write_text(NET)
    r = run("apply", samples / "camera.png", "-b", tmp_path / "net.yaml", "--all-layers",
            "--format", "npy", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "o" / "camera"
    assert sorted(p.name for p in folder.iterdir()) == [
        "01-normalize", "02-conv", "03-activation", "04-conv", "maps.json", "maps.npy"]
    net = bank.load_network(str(tmp_path / "net.yaml"))
    seen = []
    network.run(images.read_image(samples / "camera.png").pixels, net,
                each=lambda layer, maps: seen.append(maps[0].copy()))
    for k, sub in enumerate(["01-normalize", "02-conv", "03-activation", "04-conv"]):
        np.testing.assert_array_equal(np.load(folder / sub / "maps.npy"), seen[k])
    np.testing.assert_array_equal(np.load(folder / "maps.npy"), seen[-1])


def test_pool_from_the_command_line(tmp_path, samples):
    args = ("apply", samples / "brick.png", "-f", "sobel_x", "-f", "sobel_y", "--format",
            "npy")
    assert run(*args, "-o", tmp_path / "a").exit_code == 0
    r = run(*args, "--pool", "avg:3:2:1", "-o", tmp_path / "b")
    assert r.exit_code == 0, r.output
    plain = np.load(tmp_path / "a" / "brick" / "maps.npy")
    pooled = np.load(tmp_path / "b" / "brick" / "maps.npy")
    np.testing.assert_array_equal(pooled, ops.avg_pool2d(plain, 3, 2, 1))
    bad = run(*args, "--pool", "median:2", "-o", tmp_path / "c")
    assert (bad.exit_code, bad.stderr) == (2, "convcli: error: --pool takes MODE:K[:S[:P]] "
                                              "with MODE max or avg (e.g. max:2, avg:3:2:1), "
                                              "got 'median:2'\n")


def test_bank_show_and_check_read_layered_files(tmp_path):
    (tmp_path / "net.yaml").write_text(NET)
    shown = run("bank", "show", tmp_path / "net.yaml")
    assert shown.exit_code == 0
    heads = [line for line in shown.stdout.splitlines() if line.startswith("layer ")]
    assert heads == ["layer 01-normalize: normalize, mean [0.5], std [0.25]",
                     "layer 02-conv: conv, input gray, 2 filters",
                     "layer 03-activation: activation, function relu6, params []",
                     "layer 04-conv: conv, input dense, 2 filters",
                     "layer 05-pool: pool, mode max, kernel [3, 3], stride [2, 2], padding "
                     "[1, 1, 1, 1], dilation [1, 1], ceil_mode True, count_include_pad True"]
    record = json.loads(run("bank", "show", tmp_path / "net.yaml", "--json").stdout)
    assert [layer["type"] for layer in record["layers"]] == \
        ["normalize", "conv", "activation", "conv", "pool"]
    checked = run("bank", "check", tmp_path / "net.yaml")
    assert checked.stderr == f"ok: {tmp_path / 'net.yaml'}: bank 'tiny', 4 filters, 5 layers\n"


def test_an_onnx_network_imported_and_applied_equals_onnx_reference(tmp_path):
    """bank import + apply --format npy give what onnx's own reference evaluator computes
    at the last imported node (here the whole chain: Conv, BatchNormalization, HardSwish,
    MaxPool, a grouped Conv, Relu)."""
    import onnx  # the test extra installs it
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(8, 2, 3, 3)).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, 8), rng.normal(size=8), rng.normal(size=8),
          rng.uniform(0.5, 2, 8)]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")] + [
        numpy_helper.from_array(a.astype(np.float32), n)
        for a, n in zip(bn, ["scale", "shift", "mean", "var"])]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="stem", strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["b1"],
                         name="bn", epsilon=1e-5),
        helper.make_node("HardSwish", ["b1"], ["h1"], name="act"),
        helper.make_node("MaxPool", ["h1"], ["p1"], name="pool", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="grouped", group=4,
                         pads=[0, 1, 2, 1], dilations=[1, 2]),
        helper.make_node("Relu", ["c2"], ["y"], name="relu"),
        helper.make_node("Softmax", ["y"], ["z"], name="head"),  # not supported: stop before
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 64, 48])], [helper.make_tensor_value_info(
            "z", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")

    r = run("bank", "import", tmp_path / "m.onnx", "-o", tmp_path / "net.yaml")
    assert r.exit_code == 0, r.output
    image = rng.uniform(size=(64, 48, 3))
    from PIL import Image

    Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    r = run("apply", tmp_path / "in.png", "-b", tmp_path / "net.yaml", "--format", "npy",
            "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    got = np.load(tmp_path / "o" / "in" / "maps.npy")
    x = images.read_image(tmp_path / "in.png").pixels[None]
    graph_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    partial = helper.make_model(helper.make_graph(nodes[:-1], "g", graph.input, [graph_out],
                                                  initializer=inits),
                                opset_imports=[helper.make_opsetid("", 17)])
    want = ReferenceEvaluator(partial).run(None, {"x": x})[0][0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


L1 = """\
name: l1
defaults: {input: gray, activation: none}
filters:
  - {name: sx, weights: [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]}
  - {name: sy, weights: [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]}
"""
L2 = """\
name: l2
defaults: {input: dense, activation: relu, stride: 2, padding: valid}
filters:
  - {name: both, weights: [[[1, 2], [3, 4]], [[-1, 0.5], [0.25, 2]]], bias: 0.1}
"""
BOTH = """\
name: both
layers:
  - conv:
      defaults: {input: gray, activation: none}
      filters:
        - {name: sx, weights: [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]}
        - {name: sy, weights: [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]}
  - conv:
      defaults: {input: dense, activation: relu, stride: 2, padding: valid}
      filters:
        - {name: both, weights: [[[1, 2], [3, 4]], [[-1, 0.5], [0.25, 2]]], bias: 0.1}
"""


def test_output_feeds_the_next_layer_through_a_pipe_and_from_files(tmp_path, samples):
    import subprocess
    import sys

    for name, text in (("l1", L1), ("l2", L2), ("both", BOTH)):
        (tmp_path / f"{name}.yaml").write_text(text)
    me = f"{sys.executable} -m convcli"
    piped = subprocess.run(
        f"{me} apply {samples / 'camera.png'} -b {tmp_path / 'l1.yaml'} --format npy -o - | "
        f"{me} apply - -b {tmp_path / 'l2.yaml'} --format npy -o - > {tmp_path / 'piped.npy'};"
        " exit $(( ${PIPESTATUS[0]} + ${PIPESTATUS[1]} ))",
        shell=True, executable="/bin/bash", capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    r = run("apply", samples / "camera.png", "-b", tmp_path / "both.yaml", "--format", "npy",
            "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    at_once = np.load(tmp_path / "o" / "camera" / "maps.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "piped.npy"), at_once)
    # from files: maps.npy with its maps.json (whose names name the channels)
    assert run("apply", samples / "camera.png", "-b", tmp_path / "l1.yaml", "--format", "npy",
               "-o", tmp_path / "f1").exit_code == 0
    first = tmp_path / "f1" / "camera" / "maps.npy"
    r = run("apply", first, "-b", "blur", "-f", "box_3", "--format", "npy", "-o", tmp_path / "f2",
            "--json")
    assert r.exit_code == 0, r.output
    made = json.loads((tmp_path / "f2" / "maps" / "maps.json").read_text())
    assert made["filters"] == ["box_3/sx", "box_3/sy"]  # depthwise over a 2-channel map
    r = run("apply", first, "-b", tmp_path / "l2.yaml", "--format", "npy", "-o", tmp_path / "f3")
    assert r.exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "f3" / "maps" / "maps.npy"), at_once)


def test_arrays_of_any_type_and_channel_count_are_inputs(tmp_path):
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.int16, np.uint8):
        x = (rng.normal(size=(5, 20, 24)) * 50).astype(dtype)
        np.save(tmp_path / f"x_{np.dtype(dtype).name}.npy", x)
    np.save(tmp_path / "plane.npy", rng.normal(size=(20, 24)))
    r = run("apply", tmp_path, "-b", "blur", "-f", "gaussian_1", "--format", "npy",
            "-o", tmp_path / "o", "--json")
    assert r.exit_code == 0, r.output
    blur = bank.load("blur").select(["gaussian_1"]).filters[0]
    from convcli import engine

    for dtype in ("float64", "int16", "uint8"):
        x = np.load(tmp_path / f"x_{dtype}.npy").astype(np.float32)  # values as they are
        g = blur.geometry
        want = engine.conv2d_depthwise(x, blur.weights, [blur.bias], padding=g.padding,
                                       border=g.border, activation=g.activation)[0]
        got = np.load(tmp_path / "o" / f"x_{dtype}" / "maps.npy")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert np.load(tmp_path / "o" / "plane" / "maps.npy").shape == (1, 1, 20, 24)  # (F, C, H, W)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = run("apply", tmp_path / "obj.npy", "-o", tmp_path / "p")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (f"convcli: error: {tmp_path / 'obj.npy'}: an array of "
                                        "shape (1,); convcli reads (C, H, W) or (H, W) arrays")
    gray = run("apply", tmp_path / "x_uint8.npy", "-b", "edge", "-o", tmp_path / "q")
    assert gray.exit_code == 1
    assert gray.stderr.splitlines()[0] == (
        f"convcli: error: {tmp_path / 'x_uint8.npy'}: the input has 5 channels but bank 'edge' "
        "needs 1")


def test_a_second_layer_learned_on_the_first_layers_pooled_maps(tmp_path, samples):
    assert run("apply", samples / "camera.png", samples / "brick.png", "-b", "edge", "-f",
               "sobel_x", "-f", "sobel_y", "-f", "laplacian", "--pool", "max:2", "--format",
               "npy", "-o", tmp_path / "l1").exit_code == 0
    maps = sorted(str(p) for p in (tmp_path / "l1").rglob("maps.npy"))
    r = run("learn", *maps, "-o", tmp_path / "l2.yaml", "--channels", "dense", "-k", "4",
            "--size", "3", "--patches", "2000")
    assert r.exit_code == 0, r.output
    second = bank.load(str(tmp_path / "l2.yaml"))
    assert second.input == "dense" and all(f.weights.shape == (3, 3, 3) for f in second.filters)
    r = run("apply", maps[0], "-b", tmp_path / "l2.yaml", "--format", "npy", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "o" / "maps" / "maps.npy").shape[0] == 4


def test_the_memory_budget_covers_the_layers_before_the_last(tmp_path, samples):
    (tmp_path / "net.yaml").write_text(NET)
    r = run("apply", samples / "astronaut.png", "-b", tmp_path / "net.yaml", "--max-memory",
            "1M", "-o", tmp_path / "o")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        f"convcli: error: {samples / 'astronaut.png'}: the layers before the last conv need "
        "about 10 MiB, over the memory budget of 1 MiB; raise the budget or give a smaller "
        "input (see --max-memory)")
    assert not (tmp_path / "o" / "astronaut").exists()


def test_tiffs_of_feature_maps_are_inputs(tmp_path):
    """A float TIFF whose description names its channels (how convcli writes maps.tif) and a
    gray TIFF of several samples without alpha are feature maps: values as stored, any
    channel count, by path and on stdin; the same numbers as the .npy of the same array."""
    import subprocess
    import sys

    import tifffile

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(6, 18, 22)) * 40).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    tifffile.imwrite(tmp_path / "named.tif", x, photometric="minisblack",
                     planarconfig="separate", compression="zlib",
                     metadata={"filters": [f"f{k}" for k in range(6)]})
    ints = rng.integers(0, 60000, size=(18, 22, 6)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "samples.tif", ints, photometric="minisblack",
                     planarconfig="contig")
    common = ["-b", "blur", "-f", "box_3", "--format", "npy"]
    assert run("apply", tmp_path / "x.npy", *common, "-o", tmp_path / "a").exit_code == 0
    r = run("apply", tmp_path / "named.tif", tmp_path / "samples.tif", *common,
            "-o", tmp_path / "b")
    assert r.exit_code == 0, r.output
    want = np.load(tmp_path / "a" / "x" / "maps.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "named" / "maps.npy"), want)
    made = json.loads((tmp_path / "b" / "named" / "maps.json").read_text())
    assert made["filters"] == [f"box_3/f{k}" for k in range(6)]  # names from the TIFF
    # values as stored, unscaled: the bank's 3x3 box (reflected border) is a 3x3 average
    # over the reflected planes
    planes = np.pad(ints.transpose(2, 0, 1).astype(np.float64), [(0, 0), (1, 1), (1, 1)],
                    mode="reflect")
    box = reference_pool2d(planes, "avg", (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), False, True)
    np.testing.assert_allclose(np.load(tmp_path / "b" / "samples" / "maps.npy"), box,
                               rtol=1e-5)
    piped = subprocess.run([sys.executable, "-m", "convcli", "apply", "-", *common, "-o", "-"],
                           input=(tmp_path / "named.tif").read_bytes(), capture_output=True,
                           timeout=120)
    assert piped.returncode == 0, piped.stderr
    import io
    np.testing.assert_array_equal(np.load(io.BytesIO(piped.stdout)), want)


def test_tiffs_of_feature_maps_keep_the_limits(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "wide.tif", np.zeros((4097, 2, 2), np.float32),
                     photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((2, 300, 300), np.float32),
                     photometric="minisblack", planarconfig="separate")
    # a zlib-compressed TIFF of 64 planes of 1024x1024 zeros: small on disk, 256 MiB decoded
    tifffile.imwrite(tmp_path / "bomb.tif", np.zeros((64, 1024, 1024), np.float32),
                     photometric="minisblack", planarconfig="separate", compression="zlib")
    np.save(tmp_path / "bomb.npy", np.zeros((64, 1024, 1024), np.float32))
    # 200 planes of 64 one-row strips: 12,800 pieces of 64 samples (each costs to decode)
    tifffile.imwrite(tmp_path / "strips.tif", np.zeros((200, 64, 64), np.float32),
                     photometric="minisblack", planarconfig="separate", rowsperstrip=1)
    assert (tmp_path / "bomb.tif").stat().st_size < 2**20
    budget = "64M"
    for name, line in (("wide.tif", "a TIFF of 4097 channels; at most 4096 are supported"),
                       ("big.tif", "300x300 image has 90,000 pixels"),
                       ("bomb.tif", "64 channels of 1024x1024 take 256 MiB as float32, over "
                                    "the memory budget of 64 MiB"),
                       ("bomb.npy", "64 channels of 1024x1024 take 256 MiB as float32, over "
                                    "the memory budget of 64 MiB"),
                       ("strips.tif", "TIFF page stored in 12,800 strips or tiles of under "
                                      "1,024 pixels each")):
        r = run("apply", tmp_path / name, "-b", "blur", "-o", tmp_path / "o",
                "--max-pixels", "1000" if name == "big.tif" else "10000000",
                "--max-memory", budget)
        assert r.exit_code == 1, r.output
        assert len(r.stderr.splitlines()) <= 2, r.stderr
        assert line in r.stderr.splitlines()[0]
    assert not any((tmp_path / "o").rglob("*.png"))


def test_networks_run_the_same_on_a_dask_cluster(tmp_path, samples):
    """A layered bank with --all-layers and a pool override on a LocalCluster: the same
    files as the local pool, a --json record per input, and --resume skipping them."""
    pytest.importorskip("distributed")
    (tmp_path / "net.yaml").write_text(NET)
    inputs = [samples / "camera.png", samples / "brick.png", samples / "coffee.png"]
    common = ["-b", tmp_path / "net.yaml", "--all-layers", "--pool", "avg:2", "--json"]
    local = run("apply", *inputs, *common, "-j", "2", "-o", tmp_path / "a")
    dask = run("apply", *inputs, *common, "--scheduler", "local", "-o", tmp_path / "b")
    assert local.exit_code == dask.exit_code == 0, dask.output
    a = {str(p.relative_to(tmp_path / "a")): p.read_bytes()
         for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()}
    b = {str(p.relative_to(tmp_path / "b")): p.read_bytes()
         for p in sorted((tmp_path / "b").rglob("*")) if p.is_file()}
    assert a == b and any("01-normalize" in name for name in a)
    rows = [json.loads(line) for line in dask.stdout.splitlines()]
    assert sorted(row["input"] for row in rows if row["status"] == "ok") == sorted(
        str(p) for p in inputs)
    again = run("apply", *inputs, *common, "--scheduler", "local", "--resume",
                "-o", tmp_path / "b")
    assert again.exit_code == 0
    assert {json.loads(line)["status"] for line in again.stdout.splitlines()} == {"skipped"}


def test_a_fifo_or_huge_maps_json_beside_maps_npy_costs_nothing(tmp_path):
    import os

    for name in ("fifo", "huge"):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "maps.npy", np.ones((2, 8, 8), np.float32))
    os.mkfifo(tmp_path / "fifo" / "maps.json")  # opening it would block for ever
    with open(tmp_path / "huge" / "maps.json", "w") as fh:
        fh.write('{"filters": ["a", "b"], "pad": "' + "x" * (2 << 20) + '"}')
    r = run("apply", tmp_path / "fifo" / "maps.npy", tmp_path / "huge" / "maps.npy", "-b", "blur",
            "-f", "box_3", "--format", "npy", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    for name in ("fifo", "huge"):  # no names read: the channels are c0, c1
        made = json.loads((tmp_path / "o" / name / "maps" / "maps.json").read_text())
        assert made["filters"] == ["box_3/c0", "box_3/c1"]
