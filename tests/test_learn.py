"""Learning banks: determinism, the measured shape of k-means filters, the folded whitening,
PCA, and the shipped learned bank re-made by its own recorded command."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from convcli import bank, conv2d, images, learn
from convcli.cli import app
from oracle import reference_conv2d

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "samples").glob("*.png"))


def pixels(names=("camera.png", "brick.png")):
    return learn.read_for_learning([str(ROOT / "samples" / n) for n in names], "gray")


def anisotropy(kernel: np.ndarray) -> float:
    """0 for no preferred direction, 1 for a perfectly oriented pattern (structure tensor)."""
    gy, gx = np.gradient(kernel.astype(np.float64))
    j = np.array([[np.sum(gx * gx), np.sum(gx * gy)], [np.sum(gx * gy), np.sum(gy * gy)]])
    lo, hi = np.linalg.eigvalsh(j)
    return float((hi - lo) / (hi + lo))


def test_same_seed_same_bank_other_seed_other_bank():
    a = learn.learn(pixels(), 8, 5, "kmeans", seed=1, count=3000)
    b = learn.learn(pixels(), 8, 5, "kmeans", seed=1, count=3000)
    c = learn.learn(pixels(), 8, 5, "kmeans", seed=2, count=3000)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.weights.shape == (8, 1, 5, 5) and a.bias.shape == (8,)
    assert not np.allclose(a.weights, c.weights)


def test_kmeans_filters_are_zero_mean_and_oriented():
    # Measured on the shipped samples: every filter has |mean| < 1% of its RMS (the patches
    # are normalised to zero mean, so the whitened constant direction carries nothing) and
    # at least 3 in 4 have a structure-tensor anisotropy above 0.6 (oriented edges and
    # bars); Gaussian-noise kernels of the same size score a median of about 0.2.
    got = learn.learn(pixels(("camera.png", "brick.png", "chelsea.png")), 16, 7, "kmeans",
                      seed=0, count=10000)
    w = got.weights[:, 0]
    assert all(abs(k.mean()) < 0.01 * np.sqrt((k ** 2).mean()) for k in w)
    oriented = np.mean([anisotropy(k) > 0.6 for k in w])
    assert oriented >= 0.75, oriented
    noise = np.random.default_rng(0).standard_normal((200, 7, 7))
    assert np.median([anisotropy(k) for k in noise]) < 0.4


def test_folded_whitening_equals_whitening_the_patches():
    got = learn.learn(pixels(), 6, 5, "kmeans", seed=3, count=4000)
    image = pixels(("chelsea.png",))[0]
    maps = conv2d(image, got.weights.astype(np.float32), got.bias, padding="valid",
                  activation="none")
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, x = rng.integers(0, maps.shape[1]), rng.integers(0, maps.shape[2])
        patch = image[:, y:y + 5, x:x + 5].reshape(-1).astype(np.float64)
        explicit = ((patch - got.mean) @ got.whitening) @ got.centroids.T
        np.testing.assert_allclose(maps[:, y, x], explicit, rtol=1e-4, atol=1e-4)


def test_pca_components_are_orthonormal_and_centred():
    got = learn.learn(pixels(), 6, 5, "pca", seed=0, count=4000)
    flat = got.weights.reshape(6, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(6), atol=1e-9)
    np.testing.assert_allclose(flat @ got.mean + got.bias, 0, atol=1e-12)  # mean patch -> 0


def test_learn_command_writes_a_bank_that_loads(tmp_path):
    out = tmp_path / "mine.yaml"
    r = CliRunner().invoke(app, ["learn", *[str(ROOT / s) for s in SAMPLES[:2]], "-o", str(out),
                                 "--filters", "4", "--size", "3", "--channels", "rgb",
                                 "--method", "pca", "--patches", "2000"])
    assert r.exit_code == 0, r.output
    b = bank.load(str(out))
    assert b.input == "rgb" and [f.weights.shape for f in b.filters] == [(3, 3, 3)] * 4
    assert b.provenance["method"] == "pca" and b.provenance["seed"] == 0
    r = CliRunner().invoke(app, ["bank", "show", str(out), "--png", str(tmp_path / "k.png")])
    assert r.exit_code == 0 and images.read_image(tmp_path / "k.png").pixels.shape[0] == 3


def test_the_shipped_learned_bank_is_what_its_command_makes(tmp_path, monkeypatch):
    shipped = bank.load("learned")
    p = shipped.provenance
    monkeypatch.chdir(ROOT)
    assert p["images"] == SAMPLES
    assert f"convcli learn {' '.join(SAMPLES)} -o kernels/learned.yaml" in p["command"]
    args = p["command"].split()[2:]
    args[args.index("-o") + 1] = str(tmp_path / "again.yaml")
    r = CliRunner().invoke(app, ["learn", *args])
    assert r.exit_code == 0, r.output
    again = bank.load(str(tmp_path / "again.yaml"))
    assert [f.name for f in again.filters] == [f.name for f in shipped.filters]
    for a, b in zip(again.filters, shipped.filters):
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-4, atol=1e-6)
        assert a.bias == pytest.approx(b.bias, rel=1e-4, abs=1e-7)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def maps_of(bank_file, image):
    b = bank.load(str(bank_file))
    g = b.filters[0].geometry
    w = np.stack([f.weights for f in b.filters])
    return conv2d(image, w, [f.bias for f in b.filters], stride=g.stride, padding=g.padding,
                  dilation=g.dilation, border=g.border, activation=g.activation)


def test_npz_export_and_import_round_trip(tmp_path):
    shipped = bank.load("learned")
    np.savez(tmp_path / "w.npz", weights=np.stack([f.weights for f in shipped.filters]),
             bias=np.array([f.bias for f in shipped.filters]))
    r = run("bank", "import", tmp_path / "w.npz", "-o", tmp_path / "again.yaml")
    assert r.exit_code == 0, r.output
    again = bank.load(str(tmp_path / "again.yaml"))
    image = pixels(("chelsea.png",))[0]
    ours = conv2d(image, np.stack([f.weights for f in shipped.filters]),
                  [f.bias for f in shipped.filters], padding="same", border="zero")
    np.testing.assert_allclose(maps_of(tmp_path / "again.yaml", image), ours, rtol=1e-5, atol=1e-6)
    assert again.provenance == {"format": "npz", "source": str(tmp_path / "w.npz")}


def test_npy_without_bias_and_bad_shapes(tmp_path):
    np.save(tmp_path / "w.npy", np.ones((4, 3, 3)))
    assert run("bank", "import", tmp_path / "w.npy", "-o", tmp_path / "a.yaml").exit_code == 0
    assert bank.load(str(tmp_path / "a.yaml")).input == "gray"
    np.save(tmp_path / "bad.npy", np.ones((4, 5, 3, 3)))
    r = run("bank", "import", tmp_path / "bad.npy", "-o", tmp_path / "b.yaml")
    assert r.exit_code == 1
    assert r.stderr == (f"convcli: error: {tmp_path / 'bad.npy'}: the kernels have 5 input "
                        "channels; a bank takes 1 (gray) or 3 (rgb)\n")
    np.savez(tmp_path / "bias.npz", weights=np.ones((4, 1, 3, 3)), bias=np.ones(3))
    r = run("bank", "import", tmp_path / "bias.npz", "-o", tmp_path / "c.yaml")
    assert r.stderr == f"convcli: error: {tmp_path / 'bias.npz'}: bias has 3 values for 4 filters\n"


def _onnx_model(path, weights, bias, **attrs):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f, c = weights.shape[:2]
    conv = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="stem", **attrs)
    relu = helper.make_node("Relu", ["y"], ["z"])
    graph = helper.make_graph(
        [conv, relu], "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 32, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "W"),
                     numpy_helper.from_array(bias.astype(np.float32), "B")])
    onnx.save(helper.make_model(graph), str(path))


def test_onnx_conv_with_its_settings(tmp_path):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 3, 5, 3))
    b = rng.standard_normal(6)
    _onnx_model(tmp_path / "m.onnx", w, b, strides=[2, 1], pads=[1, 2, 3, 0], dilations=[1, 2])
    r = run("bank", "import", tmp_path / "m.onnx", "-o", tmp_path / "m.yaml")
    assert r.exit_code == 0, r.output
    imported = bank.load(str(tmp_path / "m.yaml"))
    g = imported.filters[0].geometry
    assert imported.input == "rgb" and g.stride == (2, 1) and g.dilation == (1, 2)
    assert g.padding == (1, 3, 2, 0)  # ONNX pads are [top, left, bottom, right]
    image = rng.random((3, 20, 24), dtype=np.float32)
    want = reference_conv2d(image, w, b, stride=(2, 1), padding=(1, 3, 2, 0), dilation=(1, 2))
    np.testing.assert_allclose(maps_of(tmp_path / "m.yaml", image), want, rtol=1e-5, atol=1e-5)
    missing = run("bank", "import", tmp_path / "m.onnx", "--node", "head", "-o", tmp_path / "x.yaml")
    assert missing.exit_code == 1
    assert missing.stderr == (f"convcli: error: {tmp_path / 'm.onnx'}: no Conv node named "
                              "'head'; Conv nodes: stem\n")


def test_progress_bar_only_on_a_terminal(tmp_path):
    import subprocess
    import sys

    from terminal import stderr_on_a_terminal

    cmd = [sys.executable, "-m", "convcli", "learn", str(ROOT / "samples" / "camera.png"), "-o",
           str(tmp_path / "b.yaml"), "--filters", "4", "--size", "3", "--patches", "20000"]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "k-means" not in plain.stderr
    code, seen = stderr_on_a_terminal(cmd)
    assert code == 0 and b"k-means" in seen
