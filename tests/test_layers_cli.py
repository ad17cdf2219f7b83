"""Networks of layers from the command line: the files they write equal the runner's numbers
(which tests/test_network.py checks against the float64 oracle and torch), every layer's maps
on request, pooling added from the command line, layered files in bank show and check."""

import json

import numpy as np
from typer.testing import CliRunner

from convcli import bank, images, network, ops
from convcli.cli import app

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
