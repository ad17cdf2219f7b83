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


@pytest.mark.parametrize("method", ["jit", "numpy"])
def test_the_bank_gives_exactly_the_features_learned_on(method):
    """A k-means bank as learn writes it normalises each window as learning normalised each
    patch: its maps are the paper's features (whitened normalised patch . centroid, ReLU)."""
    from convcli import network, pipeline
    from convcli.engine import EngineConfig

    got = learn.learn(pixels(), 8, 5, "kmeans", seed=3, count=4000)
    assert got.window_norm == learn.NORM_EPS
    text = learn.to_yaml(got, name="k", method="kmeans", channels="gray", seed=3, size=5,
                         sources=["a.png"], command="convcli learn", count=4000)
    b = bank.parse(text)
    assert {f.geometry.window_norm for f in b.filters} == {learn.NORM_EPS}
    image = pixels(("chelsea.png",))[0]
    config = EngineConfig(method=method)
    maps = network.run(image, bank.parse_network(text), config=config)[0]
    applied = np.stack([m.data for m in pipeline.compute_maps(image, b, config)])
    np.testing.assert_array_equal(applied, maps)
    padded = np.pad(image, ((0, 0), (2, 2), (2, 2)), mode="reflect")  # the bank's border
    rng = np.random.default_rng(0)
    spots = [(0, 0), (image.shape[1] - 1, image.shape[2] - 1)] + \
        [tuple(rng.integers(0, image.shape[1:])) for _ in range(30)]
    for y, x in spots:
        patch = padded[:, y:y + 5, x:x + 5].reshape(1, -1).astype(np.float64)
        features = ((learn.normalise(patch)[0] - got.mean) @ got.whitening) @ got.centroids.T
        np.testing.assert_allclose(maps[:, y, x], np.maximum(features, 0), rtol=1e-4,
                                   atol=1e-4 * np.abs(features).max())


def test_window_norm_can_be_turned_off_and_on():
    off = learn.learn(pixels(), 4, 5, "kmeans", seed=3, count=2000, window_norm=False)
    on = learn.learn(pixels(), 4, 5, "kmeans", seed=3, count=2000)
    np.testing.assert_array_equal(off.weights, on.weights)  # the same centroids either way
    assert off.window_norm is None
    pca = learn.learn(pixels(), 4, 5, "pca", seed=0, count=2000)
    pca_norm = learn.learn(pixels(), 4, 5, "pca", seed=0, count=2000, window_norm=True)
    assert pca.window_norm is None and pca_norm.window_norm == learn.NORM_EPS
    # PCA saw normalised patches: each sums to zero, and so does their mean patch
    assert abs(pca_norm.mean.sum()) < 1e-9 < abs(pca.mean.sum())


def test_cli_defaults_are_the_library_defaults():
    from convcli import cli

    assert (cli.LEARN_FILTERS, cli.LEARN_SIZE, cli.LEARN_PATCHES) == \
        (learn.DEFAULT_FILTERS, learn.DEFAULT_SIZE, learn.DEFAULT_PATCHES)


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
        [conv, relu], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 32, 32])],
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
    missing = run("bank", "import", tmp_path / "m.onnx", "--node", "head",
                  "-o", tmp_path / "x.yaml")
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


# --- options out of range, odd images, hostile weight files --------------------------------

def flat_images(value=0.5, n=2, shape=(1, 24, 24)):
    return [np.full(shape, value, np.float32) for _ in range(n)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(filters=0), "the number of filters must be a whole number from 1 to 4,096, got 0"),
    (dict(filters=4097), "the number of filters must be a whole number from 1 to 4,096, got 4097"),
    (dict(filters=True), "the number of filters must be a whole number from 1 to 4,096, got True"),
    (dict(size=0), "the patch size must be a whole number from 1 to 32, got 0"),
    (dict(size=10**18), "the patch size must be a whole number from 1 to 32, got "
                        "1000000000000000000"),
    (dict(count=1), "the number of patches must be a whole number from 2 to 1,000,000, got 1"),
    (dict(count=10**7), "the number of patches must be a whole number from 2 to 1,000,000, got "
                        "10000000"),
    (dict(seed=-1), "the seed must be a whole number from 0 to 4,294,967,295, got -1"),
    (dict(seed=2**32), "the seed must be a whole number from 0 to 4,294,967,295, got 4294967296"),
    (dict(method="svm"), "the method must be kmeans or pca, got 'svm'"),
    (dict(filters=8, count=5), "5 patches are fewer than the 8 filters to learn; give at least "
                               "one patch per filter"),
    (dict(method="pca", filters=10, size=3), "PCA of 3x3x1 patches has at most 9 components; "
                                             "asked for 10"),
    (dict(filters=4096, size=5, count=5000), "4,096 filters of 1x5x5 are 102,400 weights; a "
                                             "bank file holds at most 65,536"),
    (dict(filters=4096, size=2, count=5000), "4,096 filters of 1x2x2 need about 45,120 rows and "
                                             "keys in a bank file; it holds at most 32,768"),
    (dict(filters=16, size=20, count=100_000), "100,000 patches of 1x20x20 for 16 filters need "
                                               "41,600,000 numbers in memory; at most "
                                               "33,554,432 (use fewer patches)"),
])
def test_learn_options_out_of_range(kwargs, message):
    args = dict(filters=4, size=3, method="kmeans", seed=0, count=100) | kwargs
    with pytest.raises(learn.UsageError) as info:
        learn.learn(flat_images(shape=(1, 40, 40)), **args)
    assert str(info.value) == message


def test_images_smaller_than_the_patches_are_named():
    small = [np.zeros((1, 30, 30), np.float32), np.zeros((1, 4, 6), np.float32)]
    with pytest.raises(learn.InputError) as info:
        learn.learn(small, 4, 7, "kmeans", 0, 100, labels=["big.png", "small.png"])
    assert str(info.value) == "small.png: the image (6x4) is smaller than the 7x7 patches"
    with pytest.raises(learn.InputError, match=r"^image 2 of 2: the image \(6x4\)"):
        learn.learn(small, 4, 7, "kmeans", 0, 100)


@pytest.mark.parametrize("method", ["kmeans", "pca"])
def test_constant_images_give_a_finite_bank_without_warnings(method):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = learn.learn(flat_images(0.25), 4, 3, method, 0, 200)
    assert np.isfinite(got.weights).all() and np.isfinite(got.bias).all()
    text = learn.to_yaml(got, name="flat", method=method, channels="gray", seed=0, size=3,
                         sources=["a.png"], command="convcli learn", count=200)
    assert len(bank.parse(text).filters) == 4


def test_read_for_learning_refuses_bad_images(tmp_path):
    import tifffile

    with pytest.raises(learn.UsageError, match="^channels must be gray, rgb or dense, got 'cmyk'$"):
        learn.read_for_learning([], "cmyk")
    with pytest.raises(learn.UsageError, match="^no images to learn from$"):
        learn.read_for_learning([], "gray")
    data = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    data[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", data)
    with pytest.raises(learn.InputError) as info:
        learn.read_for_learning([str(tmp_path / "nan.tif")], "gray")
    assert str(info.value) == (f"{tmp_path / 'nan.tif'}: holds values that are not finite "
                               "(NaN or infinite)")


def import_error(path, node=None) -> str:
    from convcli import importers

    with pytest.raises((importers.InputError, importers.UsageError)) as info:
        importers.load_weights(str(path), node)
    return str(info.value)


def test_numpy_files_of_the_wrong_kind(tmp_path):
    cases = {
        "object.npy": np.array([{"a": 1}, None], dtype=object),
        "text.npy": np.array([["a", "b"]] * 2),
        "complex.npy": np.ones((2, 1, 3, 3), np.complex64),
        "flags.npy": np.ones((2, 1, 3, 3), bool),
        "flat.npy": np.ones(9),
        "plane.npy": np.ones((3, 3)),
        "five.npy": np.ones((2, 1, 1, 3, 3)),
        "empty.npy": np.ones((0, 1, 3, 3)),
        "nan.npy": np.full((2, 1, 3, 3), np.nan),
        "big.npy": np.full((2, 1, 3, 3), 1e300),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
    np.savez(tmp_path / "objects.npz", weights=np.array([None] * 4, dtype=object))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "nan.npy").read_bytes()[:100])
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 not really a zip")
    p = tmp_path
    shape = "weights have shape {}; want (F, C, KH, KW) or (F, KH, KW)"
    stored = "weights are stored as {}; want real numbers (float or int)"
    finite = ("the weights or biases are not all finite numbers within float32's range "
              "(about ±3.4e+38)")
    want = {
        "object.npy": shape.format("(2,)"), "text.npy": shape.format("(2, 2)"),
        "complex.npy": stored.format("complex64"), "flags.npy": stored.format("bool"),
        "flat.npy": shape.format("(9,)"), "plane.npy": shape.format("(3, 3)"),
        "five.npy": shape.format("(2, 1, 1, 3, 3)"), "empty.npy": shape.format("(0, 1, 3, 3)"),
        "nan.npy": finite, "big.npy": finite, "objects.npz": shape.format("(4,)"),
    }
    for name, message in want.items():
        assert import_error(p / name) == f"{p / name}: {message}", name
    np.save(tmp_path / "obj4.npy", np.full((2, 1, 3, 3), None, dtype=object), allow_pickle=True)
    assert import_error(p / "obj4.npy") == (f"{p / 'obj4.npy'}: weights are stored as object; "
                                            "want real numbers (float or int)")
    assert import_error(p / "cut.npy").startswith(f"{p / 'cut.npy'}: not a readable NumPy file (")
    assert import_error(p / "fake.npz").startswith(f"{p / 'fake.npz'}: not a readable NumPy file (")


def test_a_header_declaring_a_huge_array_is_refused_without_allocating_it(tmp_path):
    import zipfile

    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 3, 7, 7)}
    buf = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("weights.npy", buf.getvalue() + b"\0" * 64)
    assert import_error(tmp_path / "huge.npz") == (
        f"{tmp_path / 'huge.npz'}: weights of shape 1000000000000x3x7x7: 1,000,000,000,000 "
        "filters; a bank holds at most 4096")


def _onnx_conv(path, weight_shape, inputs=("x", "W", "B"), **attrs):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal(weight_shape).astype(np.float32)
    conv = helper.make_node("Conv", list(inputs), ["y"], name="c", **attrs)
    graph = helper.make_graph(
        [conv], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "W"),
                     numpy_helper.from_array(np.zeros(weight_shape[0], np.float32), "B")])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("shape, attrs, inputs, message", [
    ((4, 1, 3), dict(strides=[2]), ("x", "W", "B"),
     "is a 1-D convolution (weights of shape (4, 1, 3)); only 2-D convolutions can become a bank"),
    ((4, 3, 3), dict(pads=[1, 1]), ("x", "W", "B"),
     "is a 1-D convolution (weights of shape (4, 3, 3)); only 2-D convolutions can become a bank"),
    ((4, 1, 3, 3, 3), {}, ("x", "W", "B"),
     "is a 3-D convolution (weights of shape (4, 1, 3, 3, 3)); only 2-D convolutions can become "
     "a bank"),
    ((4, 1, 3, 3), dict(pads=[1, 1, 1]), ("x", "W", "B"),
     "has pads=[1, 1, 1]; a 2-D convolution needs 4 whole numbers"),
    ((4, 1, 3, 3), dict(strides=[2]), ("x", "W", "B"),
     "has strides=[2]; a 2-D convolution needs 2 whole numbers"),
    ((4, 1, 3, 3), dict(strides=[0, 1]), ("x", "W", "B"),
     ": stride must be a whole number >= 1 or a pair [y, x], got [0, 1]"),
    ((4, 1, 3, 3), dict(dilations=[2**40, 1]), ("x", "W", "B"),
     ": dilation must be at most 1024, got [1099511627776, 1]"),
    ((4, 1, 3, 3), dict(pads=[0, 0, -1, 0]), ("x", "W", "B"),
     ": padding must be same, valid, a whole number >= 0, a pair [y, x] or [top, bottom, left, "
     "right], got [0, -1, 0, 0]"),
    ((4, 1, 3, 3), dict(pads=[0, 0, 10**6, 0]), ("x", "W", "B"),
     ": padding must be at most 4096 pixels on each side, got [0, 1000000, 0, 0]"),
    ((4, 1, 3, 3), dict(kernel_shape=[5, 5]), ("x", "W", "B"),
     "has kernel_shape [5, 5] but weights of 3x3"),
    ((4, 1, 3, 3), dict(auto_pad="SAME_LOWER"), ("x", "W", "B"),
     "uses auto_pad='SAME_LOWER', which convcli's padding cannot express (SAME_LOWER puts the "
     "extra pixel first)"),
    ((4, 1, 3, 3), dict(group=2), ("x", "W", "B"),
     "is grouped (group=2); only dense first layers (group 1) can become a bank"),
    ((4, 1, 3, 3), {}, ("x",), "has no weights input"),
    ((4, 1, 3, 3), {}, ("x", "W", "missing"),
     "takes 'missing' from another node; only weights stored as initializers can be imported"),
])
def test_onnx_convs_that_cannot_become_a_bank(tmp_path, shape, attrs, inputs, message):
    path = _onnx_conv(tmp_path / "m.onnx", shape, inputs, **attrs)
    got = import_error(path)
    assert got == f"{path}: Conv node 'c' {message}".replace("'c' :", "'c':"), got


def test_onnx_weights_in_an_external_file_are_not_followed(tmp_path):
    import onnx

    path = _onnx_conv(tmp_path / "m.onnx", (4, 1, 3, 3))
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert import_error(path) == (f"{path}: Conv node 'c' keeps its weights in an external data "
                                  "file; convcli reads only models that hold their weights")
