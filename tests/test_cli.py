"""The command line as a translation layer (CliRunner): every command and option, exact
error messages and exit codes."""

import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convcli import bank, conv2d, conv2d_depthwise, images, render
from convcli.cli import app

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)



def luminance(path):
    return images.as_channels(images.read_image(path).pixels, "gray")


def png_meta(path):
    with Image.open(path) as im:
        return np.asarray(im), json.loads(im.text["convcli"])


def test_apply_writes_one_png_per_filter_and_a_stack(tmp_path, photo):
    out = tmp_path / "out"
    r = run("apply", photo, "--bank", "edge", "-o", out)
    assert r.exit_code == 0, r.output
    edge = bank.load("edge")
    names = sorted(p.name for p in (out / "face").iterdir())
    assert names == sorted([f"{f.name}.png" for f in edge.filters] + ["stack.png"])
    assert r.stdout == ""
    assert re.fullmatch(rf"convcli: finished 1 of 1 input: 1 done in [\d.]+ s "
                        rf"\([\d.]+ images/s\) -> {re.escape(str(out))}\n", r.stderr)


def test_maps_hold_the_engine_values_recoverably(tmp_path, photo):
    run("apply", photo, "--bank", "edge", "--filter", "sobel_x", "-o", tmp_path, "--bits", "16")
    pixels, meta = png_meta(tmp_path / "face" / "sobel_x.png")
    f = bank.load("edge").select(["sobel_x"]).filters[0]
    want = conv2d(luminance(photo), f.weights[None], padding="same", border="replicate")[0]
    assert pixels.dtype == np.uint16 and meta["filter"] == "sobel_x" and meta["bits"] == 16
    back = render.recover(pixels, *meta["range"], 16)
    np.testing.assert_allclose(back, want, atol=(want.max() - want.min()) / 65535)


def test_stack_metadata_names_every_tile(tmp_path, photo):
    run("apply", photo, "--filter", "sobel_x", "--filter", "log_2", "-o", tmp_path)
    pixels, meta = png_meta(tmp_path / "face" / "stack.png")
    assert [t["name"] for t in meta["tiles"]] == ["sobel_x", "log_2"]
    single, _ = png_meta(tmp_path / "face" / "log_2.png")
    x, y, w, h = meta["tiles"][1]["box"]
    np.testing.assert_array_equal(pixels[y:y + h, x:x + w], single)


def test_filter_selection_keeps_the_order_given(tmp_path, photo):
    r = run("apply", photo, "-f", "sobel_y", "-f", "sobel_x", "-o", tmp_path)
    assert r.exit_code == 0
    with Image.open(tmp_path / "face" / "stack.png") as im:
        tiles = json.loads(im.text["convcli"])["tiles"]
    assert [t["name"] for t in tiles] == ["sobel_y", "sobel_x"]
    r = run("apply", photo, "-f", "sobel_y", "-f", "sobel_x", "-f", "sobel_y", "--format", "npy",
            "-o", tmp_path / "n")
    assert r.exit_code == 0
    assert json.loads((tmp_path / "n" / "face" / "maps.json").read_text())["filters"] == \
        ["sobel_y", "sobel_x"]  # in the order given, a name given twice run once
    edge = bank.load("edge")
    maps = np.load(tmp_path / "n" / "face" / "maps.npy")
    for k, name in enumerate(["sobel_y", "sobel_x"]):
        f = edge.select([name]).filters[0]
        want = conv2d(luminance(photo), f.weights[None], padding="same", border="replicate")[0]
        np.testing.assert_allclose(maps[k], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, shape", [
    (["--stride", "2"], (48, 48)),
    (["--stride", "3,1"], (32, 96)),
    (["--padding", "valid"], (94, 94)),
    (["--padding", "1,2,3,4"], (97, 101)),
    (["--dilation", "2", "--padding", "valid"], (92, 92)),
])
def test_geometry_overrides(tmp_path, photo, args, shape):
    r = run("apply", photo, "-f", "sobel_x", "--format", "npy", "-o", tmp_path, *args)
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "face" / "maps.npy").shape == (1,) + shape


def test_npy_matches_the_python_api_and_records_names(tmp_path, photo):
    r = run("apply", photo, "--bank", "edge", "-f", "sobel_x", "-f", "scharr_y",
            "--activation", "none", "--border", "zero", "--format", "npy", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    maps = np.load(tmp_path / "face" / "maps.npy")
    meta = json.loads((tmp_path / "face" / "maps.json").read_text())
    assert meta["filters"] == ["sobel_x", "scharr_y"] and meta["shape"] == [2, 96, 96]
    b = bank.load("edge").select(["sobel_x", "scharr_y"])
    want = conv2d(luminance(photo), np.stack([f.weights for f in b.filters]), padding="same",
                  border="zero", activation="none")
    np.testing.assert_array_equal(maps, want)


def test_npy_refuses_maps_of_different_sizes(tmp_path, photo):
    r = run("apply", photo, "-f", "sobel_x", "-f", "log_2", "--padding", "valid",
            "--format", "npy", "-o", tmp_path)
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        f"convcli: error: {photo}: the maps differ in size (sobel_x 94x94, log_2 80x80) and "
        "cannot share one array; pick filters or use padding 'same' (see --filter, --padding)")
    assert not (tmp_path / "face").exists()


@pytest.mark.parametrize("scale", ["auto", "global", "clip", "symmetric"])
def test_scale_policies_are_recorded(tmp_path, photo, scale):
    run("apply", photo, "-f", "sobel_x", "-f", "laplacian", "--activation", "none",
        "--scale", scale, "-o", tmp_path)
    _, a = png_meta(tmp_path / "face" / "sobel_x.png")
    _, b = png_meta(tmp_path / "face" / "laplacian.png")
    assert a["scale"] == b["scale"] == scale
    if scale == "global":
        assert a["range"] == b["range"]
    if scale == "symmetric":
        assert a["range"][0] == -a["range"][1]
    if scale == "clip":
        assert a["range"] == [0.0, 1.0]


def test_depthwise_blur_keeps_colour(tmp_path, photo):
    r = run("apply", photo, "--bank", "blur", "-f", "gaussian_2", "-o", tmp_path)
    assert r.exit_code == 0
    pixels, meta = png_meta(tmp_path / "face" / "gaussian_2.png")
    assert pixels.shape == (96, 96, 3) and meta["scale"] == "clip"
    f = bank.load("blur").select(["gaussian_2"]).filters[0]
    want = conv2d_depthwise(images.read_image(photo).pixels, f.weights, padding="same",
                            border="reflect", activation="none")[0]
    np.testing.assert_allclose(pixels / 255, np.moveaxis(want, 0, 2), atol=0.5 / 255 + 1e-6)


def test_rgb_bank_and_gray_image(tmp_path, samples):
    spec = tmp_path / "rgb.yaml"
    spec.write_text("name: chroma\ndefaults: {input: rgb, activation: none}\nfilters:\n"
                    "  - name: red_minus_blue\n    weights: [[[1]], [[0]], [[-1]]]\n")
    r = run("apply", samples / "camera.png", "--bank", spec, "--format", "npy", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    # A gray image repeats its channel into R, G and B, so red minus blue is exactly zero.
    assert not np.load(tmp_path / "camera" / "maps.npy").any()


def test_stdout_gives_the_single_map_or_the_stack(photo):
    single = run("apply", photo, "-f", "sobel_x", "-o", "-")
    assert single.exit_code == 0 and single.stderr == ""
    meta = json.loads(Image.open(io.BytesIO(single.stdout_bytes)).text["convcli"])
    assert meta["filter"] == "sobel_x"
    both = run("apply", photo, "-f", "sobel_x", "-f", "sobel_y", "-o", "-")
    assert len(json.loads(Image.open(io.BytesIO(both.stdout_bytes)).text["convcli"])["tiles"]) == 2


def test_stdin_to_stdout_npy(photo):
    r = run("apply", "-", "-f", "sobel_x", "--format", "npy", "-o", "-", input=photo.read_bytes())
    assert r.exit_code == 0
    maps = np.load(io.BytesIO(r.stdout_bytes))
    f = bank.load("edge").select(["sobel_x"]).filters[0]
    np.testing.assert_array_equal(maps, conv2d(luminance(photo), f.weights[None],
                                               padding="same", border="replicate"))


def test_folder_input_and_partial_failure(tmp_path, photo):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo, folder / "a.png")
    (folder / "b.png").write_text("not an image")
    r = run("apply", folder, "-f", "sobel_x", "-o", tmp_path / "out")
    assert r.exit_code == 3
    lines = r.stderr.splitlines()
    assert lines[0] == (f"convcli: error: {folder / 'b.png'}: not a recognised image (unknown "
                        "format or damaged file); convcli reads PNG, JPEG, GIF, BMP, WebP and "
                        "TIFF")
    assert lines[1].startswith("convcli: finished 2 of 2 inputs: 1 done, 1 failed in ")
    assert len(lines) == 2
    assert (tmp_path / "out" / "a" / "sobel_x.png").is_file()
    assert not (tmp_path / "out" / "b").exists()


def test_multi_frame_warning_and_quiet(tmp_path):
    frames = [Image.new("L", (8, 8), v) for v in (10, 200)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    r = run("apply", gif, "-f", "sobel_x", "-o", tmp_path / "o")
    assert r.stderr.startswith(f"convcli: warning: {gif}: has 2 frames; only the first is used\n")
    quiet = run("apply", gif, "-f", "sobel_x", "-o", tmp_path / "o", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


@pytest.mark.parametrize("args, code, message", [
    (["--bank", "egde"], 2, "convcli: error: no built-in bank 'egde' (did you mean 'edge'?); "
                            "built-in banks: {banks} (or give a path to a .yaml file)"),
    (["-f", "sobel"], 2, "convcli: error: bank 'edge' has no filter 'sobel' (did you mean "
                        "'sobel_x' or 'sobel_y'?); see 'convcli bank show edge'"),
    (["--stride", "0"], 2, "convcli: error: --stride: stride must be a whole number >= 1 or a "
                          "pair [y, x], got 0"),
    (["--padding", "full"], 2, "convcli: error: --padding: padding must be same, valid, a whole "
                              "number >= 0, a pair [y, x] or [top, bottom, left, right], "
                              "got 'full'"),
    (["--border", "mirror"], 2, "convcli: error: --border: border must be one of zero, reflect, "
                               "replicate, wrap; got 'mirror'"),
    (["--scale", "log"], 2, "convcli: error: the scale must be auto, minmax, global, clip, "
                           "symmetric, a range LO,HI (e.g. 0,0.25) or percentiles pA,pB (e.g. "
                           "p1,p99); got 'log' (see --scale)"),
    (["--bits", "12"], 2, "convcli: error: bits per sample must be 8 or 16, got 12 (see --bits)"),
    (["--format", "jpg"], 2, "convcli: error: the output format must be png, jpeg, webp, tiff "
                              "or npy, got 'jpg' (see --format)"),
    (["--compression", "10"], 2, "convcli: error: the compression level must be 0-9, got 10 "
                                  "(see --compression)"),
])
def test_usage_errors(tmp_path, photo, args, code, message):
    r = run("apply", photo, "-o", tmp_path / "o", *args)
    assert r.exit_code == code
    assert r.stderr == message.format(banks=", ".join(bank.builtin_names())) + "\n"
    assert r.stdout == "" and not (tmp_path / "o").exists()


def test_missing_input_is_an_error(tmp_path):
    r = run("apply", tmp_path / "nope.png", "-o", tmp_path / "o")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (f"convcli: error: {tmp_path / 'nope.png'}: cannot open: "
                                        "No such file or directory")


def test_stdout_takes_one_input_only(photo, samples):
    r = run("apply", photo, samples / "camera.png", "-o", "-")
    assert r.exit_code == 2
    assert r.stderr == ("convcli: error: -o - writes one result, but 2 inputs were given; give "
                        "one input or an output folder\n")


def test_output_that_is_a_file_is_refused(tmp_path, photo):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    r = run("apply", photo, "-o", target)
    assert r.exit_code == 1
    assert r.stderr == (f"convcli: error: {target}: exists and is not a folder; give -o a "
                        "folder (or - for stdout)\n")
    assert target.read_text() == "keep me"


def test_bad_bank_lists_every_problem(tmp_path, photo):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nfilters:\n  - name: a\n    weights: [[1, 2], [3]]\n"
                    "  - name: b\n    generator: {type: gaussian, sigma: 0}\n")
    r = run("apply", photo, "--bank", spec, "-o", tmp_path / "o")
    assert r.exit_code == 1
    assert r.stderr == (f"convcli: error: {spec}:4: filter 'a': field 'weights': ragged: row 2 "
                        "has shape 1, row 1 has 2 (line 4)\n"
                        f"convcli: error: {spec}:6: filter 'b': field 'generator.sigma': must "
                        "be > 0, got 0\n")


def test_bank_check(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("name: g\nfilters:\n  - {name: k, weights: [[1]]}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nfilters:\n  - {name: k, weights: [[1]], stride: -1}\n")
    r = run("bank", "check", good)
    assert r.exit_code == 0 and r.stderr == f"ok: {good}: bank 'g', 1 filter, input gray\n"
    r = run("bank", "check", good, bad)
    assert r.exit_code == 1
    assert r.stderr.splitlines()[1] == (f"convcli: error: {bad}:3: filter 'k': field 'stride': "
                                        "stride must be a whole number >= 1 or a pair [y, x], "
                                        "got -1")


def test_banks_lists_builtins_and_filters():
    r = run("banks")
    assert r.exit_code == 0
    for name in bank.builtin_names():
        b = bank.load(name)
        assert name in r.stdout and b.description[:30] in r.stdout
        for f in b.filters:
            assert f.name in r.stdout


def test_bank_show_prints_weights():
    r = run("bank", "show", "edge", "-f", "sobel_x", "-f", "roberts_b")
    assert r.exit_code == 0
    lines = [l.split() for l in r.stdout.splitlines()]
    assert ["-1", "0", "1"] in lines and ["-2", "0", "2"] in lines and ["-1", "0"] in lines
    assert "source: Sobel & Feldman" in r.stdout and "1x2x2" in r.stdout


def test_version_and_help():
    from convcli import __version__

    assert run("--version").stdout == f"convcli {__version__}\n"
    r = run("--help")
    assert r.exit_code == 0 and all(c in r.stdout for c in ("apply", "banks", "bank"))
    assert "Exit codes" in r.stdout
