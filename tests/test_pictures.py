"""Pictures people can read: the default stretch on real photos, explicit and percentile
ranges, colormaps, capped stacks, stack-only runs, JPEG/WebP/TIFF outputs, combined maps,
overlays, and the memory an apply of a large photo really takes."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convcli import bank, conv2d, images, render
from convcli.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLES = ROOT.parent / "shared" / "samples"  # the team's shared/ beside the checkout


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def png_meta(path):
    with Image.open(path) as im:
        return np.asarray(im), json.loads(im.text["convcli"])



def luminance(path):
    return images.as_channels(images.read_image(path).pixels, "gray")


def edge_map(path, name, activation="relu"):
    f = bank.load("edge").select([name]).filters[0]
    return conv2d(luminance(path), f.weights[None], padding="same", border="replicate",
                  activation=activation)[0]


# --- the default shows structure ------------------------------------------------------------

SAMPLE_SETS = [ROOT / "samples"] + (
    [SHARED_SAMPLES] if SHARED_SAMPLES.is_dir() else [])


@pytest.mark.parametrize("folder", SAMPLE_SETS, ids=lambda p: p.parent.name)
def test_default_edge_maps_of_the_shipped_samples_are_bright_enough(tmp_path, folder):
    """Each default map's 99th-percentile pixel is at least 192 of 255, and the fraction
    the stretch clipped is recorded (at most 1% each side, p1..p99)."""
    r = run("apply", folder, "--bank", "edge", "--no-stack", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    pictures = sorted(tmp_path.glob("*/*.png"))
    assert len(pictures) == 16 * len(list(folder.glob("*.png")))
    for path in pictures:
        pixels, meta = png_meta(path)
        assert np.percentile(pixels, 99) >= 192, (path, np.percentile(pixels, 99))
        below, above = meta["clipped"]
        assert 0 <= below <= 0.0101 and 0 < above <= 0.0101, (path, meta["clipped"])
        assert meta["scale"] == "auto"


def test_the_recorded_range_gives_back_every_value_not_clipped(tmp_path, photo):
    run("apply", photo, "-f", "sobel_x", "-o", tmp_path)
    pixels, meta = png_meta(tmp_path / "face" / "sobel_x.png")
    want = edge_map(photo, "sobel_x")
    lo, hi = meta["range"]
    np.testing.assert_allclose([lo, hi], np.percentile(want, [1, 99]), rtol=1e-6)
    inside = (want >= lo) & (want <= hi)
    back = render.recover(pixels, lo, hi, 8)
    assert np.abs(back - want)[inside].max() <= 0.5 * (hi - lo) / 255 + 1e-6
    assert meta["clipped"][1] == pytest.approx((want > hi).mean())
    assert (pixels[want > hi] == 255).all()


# --- explicit ranges and percentiles --------------------------------------------------------

def test_an_explicit_range_is_shared_by_every_input_of_a_batch(tmp_path, photo, samples):
    other = tmp_path / "other.png"
    Image.open(samples / "brick.png").crop((0, 0, 64, 80)).save(other)
    r = run("apply", photo, other, "-f", "sobel_x", "--scale=0,0.5", "-j", "2",
            "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    for path in (photo, other):
        pixels, meta = png_meta(tmp_path / "o" / path.stem / "sobel_x.png")
        assert meta["range"] == [0.0, 0.5] and meta["scale"] == "0,0.5"
        want = np.clip(np.rint(edge_map(path, "sobel_x").astype(np.float64) * 510), 0, 255)
        np.testing.assert_array_equal(pixels, want)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_scale_shared_draws_every_input_with_the_union_of_their_ranges(tmp_path, photo,
                                                                       samples, jobs):
    other = tmp_path / "other.png"
    Image.open(samples / "brick.png").crop((0, 0, 64, 80)).save(other)
    args = ["-f", "sobel_x", "-f", "log_2", "--combine", "mean"]
    r = run("apply", photo, other, *args, "-o", tmp_path / "own")
    assert r.exit_code == 0, r.output
    r = run("apply", photo, other, *args, "--scale-shared", "-j", jobs, "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    for name in ("sobel_x", "log_2", "combined"):
        own = [png_meta(tmp_path / "own" / p.stem / f"{name}.png")[1]["range"]
               for p in (photo, other)]
        union = [min(lo for lo, _ in own), max(hi for _, hi in own)]
        assert own[0] != own[1]
        for path in (photo, other):
            pixels, meta = png_meta(tmp_path / "s" / path.stem / f"{name}.png")
            assert meta["range"] == union and meta["scale"] == "auto shared"
            if name == "sobel_x":
                want = edge_map(path, name).astype(np.float64)
                want = np.clip(np.rint((want - union[0]) * (255 / (union[1] - union[0]))),
                               0, 255)
                np.testing.assert_array_equal(pixels, want)


def test_scale_shared_with_the_global_policy(tmp_path, photo, samples):
    other = tmp_path / "other.png"
    Image.open(samples / "brick.png").crop((0, 0, 64, 80)).save(other)
    args = ["-f", "sobel_x", "-f", "log_2", "--scale", "global", "-j", "1"]
    run("apply", photo, other, *args, "-o", tmp_path / "own")
    r = run("apply", photo, other, *args, "--scale-shared", "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    own = [png_meta(tmp_path / "own" / p.stem / "log_2.png")[1]["range"] for p in (photo, other)]
    union = [min(lo for lo, _ in own), max(hi for _, hi in own)]
    for path in (photo, other):
        for name in ("sobel_x", "log_2"):
            assert png_meta(tmp_path / "s" / path.stem / f"{name}.png")[1]["range"] == union


def test_percentiles_are_per_map(tmp_path, photo):
    r = run("apply", photo, "-f", "sobel_x", "-f", "laplacian", "--scale", "p5,p95",
            "-o", tmp_path)
    assert r.exit_code == 0, r.output
    for name in ("sobel_x", "laplacian"):
        _, meta = png_meta(tmp_path / "face" / f"{name}.png")
        np.testing.assert_allclose(meta["range"], np.percentile(edge_map(photo, name), [5, 95]),
                                   rtol=1e-6)
        assert meta["scale"] == "p5,p95"


def test_minmax_keeps_the_old_full_range(tmp_path, photo):
    run("apply", photo, "-f", "sobel_x", "--scale", "minmax", "-o", tmp_path)
    pixels, meta = png_meta(tmp_path / "face" / "sobel_x.png")
    want = edge_map(photo, "sobel_x")
    assert meta["range"] == [float(want.min()), float(want.max())]
    assert meta["clipped"] == [0.0, 0.0] and pixels.max() == 255


# --- colormaps ------------------------------------------------------------------------------

def test_a_signed_map_under_symmetric_and_a_diverging_colormap(tmp_path, photo):
    r = run("apply", photo, "-f", "sobel_x", "--activation", "none", "--scale", "symmetric",
            "--colormap", "vik", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    pixels, meta = png_meta(tmp_path / "face" / "sobel_x.png")
    want = edge_map(photo, "sobel_x", activation="none")
    lo, hi = meta["range"]
    assert lo == -hi and meta["colormap"] == "vik" and pixels.shape == (96, 96, 3)
    index = np.clip(np.rint((want.astype(np.float64) - lo) * (255 / (hi - lo))), 0, 255)
    np.testing.assert_array_equal(pixels, render.lut("vik")[index.astype(np.uint8)])


def test_the_stack_of_a_colormap_is_in_colour_with_its_bar(tmp_path, photo):
    r = run("apply", photo, "-f", "sobel_x", "-f", "sobel_y", "--colormap", "magma",
            "-o", tmp_path)
    assert r.exit_code == 0, r.output
    pixels, meta = png_meta(tmp_path / "face" / "stack.png")
    assert pixels.ndim == 3 and meta["colormap"] == "magma"
    single, _ = png_meta(tmp_path / "face" / "sobel_y.png")
    x, y, w, h = meta["tiles"][1]["box"]
    np.testing.assert_array_equal(pixels[y:y + h, x:x + w], single)
    legend = pixels[y - 10, x:x + w].tolist()  # in the colour bar's strip
    table = render.lut("magma").tolist()
    assert table[0] in legend and table[255] in legend


@pytest.mark.parametrize("args, message", [
    (["--colormap", "viridis", "--bits", "16"],
     "a colormap makes 8-bit colour pictures; 16 bits are for gray maps whose values are to "
     "be read back (see --bits, --colormap)"),
    (["--colormap", "jet"],
     "unknown colormap 'jet'; choose one of gray, viridis, magma, inferno, plasma, cividis, "
     "batlow, vik, balance, coolwarm (see --colormap)"),
    (["--scale", "p99,p1"], "percentiles must satisfy 0 <= A < B <= 100, got 'p99,p1' "
                            "(see --scale)"),
    (["--combine", "magnitude"], "the magnitude combines two maps (an x and a y derivative), "
                                 "but 16 are made; pick two filters (see --filter)"),
    (["--combine", "sum"], "maps combine by max, mean, magnitude, got 'sum' (see --combine)"),
    (["--format", "tiff", "--colormap", "magma"], "a colormap colours pictures; tiff holds "
                                                  "the float maps (see --colormap, --format)"),
    (["--format", "npy", "--overlay"], "a combined map and an overlay are pictures: they need "
                                       "the format png, jpeg or webp (see --format)"),
    (["--format", "jpeg", "--bits", "16"], "jpeg pictures have 8 bits per sample; use png for "
                                          "16 (see --bits, --format)"),
    (["--no-maps", "--no-stack"], "with neither per-filter maps nor a stack there is nothing "
                                  "to write (see --no-maps, --no-stack)"),
    (["--scale-shared", "--format", "npy"], "shared ranges are for pictures; npy holds the "
                                            "float maps (see --scale-shared, --format)"),
    (["--tile", "8"], "the stack's tile size must be at least 16 pixels, got 8 (see --tile)"),
])
def test_picture_usage_errors(tmp_path, photo, args, message):
    r = run("apply", photo, "-o", tmp_path / "o", *args)
    assert r.exit_code == 2
    assert r.stderr == f"convcli: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_an_output_named_like_an_image_is_refused(tmp_path, photo):
    r = run("apply", photo, "-o", tmp_path / "sobel.png")
    assert r.exit_code == 2
    assert r.stderr == (f"convcli: error: {tmp_path / 'sobel.png'}: looks like a file name, "
                        "but the output is a folder (one file per map); give a folder, or - "
                        "to write one result to stdout\n")
    assert not (tmp_path / "sobel.png").exists()


# --- the stack ------------------------------------------------------------------------------

def test_stack_tiles_are_capped_and_maps_stay_full_size(tmp_path, samples):
    big = tmp_path / "wide.png"
    Image.open(samples / "brick.png").resize((1000, 400)).save(big)
    r = run("apply", big, "-f", "sobel_x", "-f", "sobel_y", "-f", "log_2", "--tile", "300",
            "--columns", "3", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    full, _ = png_meta(tmp_path / "o" / "wide" / "sobel_y.png")
    assert full.shape == (400, 1000)
    pixels, meta = png_meta(tmp_path / "o" / "wide" / "stack.png")
    for tile in meta["tiles"]:
        x, y, w, h = tile["box"]
        assert (w, h) == (250, 100) and tile["shrunk"] == 4
    assert len({t["box"][1] for t in meta["tiles"]}) == 1  # three columns: one row
    x, y, w, h = meta["tiles"][1]["box"]
    np.testing.assert_array_equal(pixels[y:y + h, x:x + w], render.shrink(full, 300))


def test_stack_only(tmp_path, photo):
    r = run("apply", photo, "--no-maps", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "face").iterdir()) == ["stack.png"]
    r = run("apply", photo, "-f", "sobel_x", "--no-maps", "-o", tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "one" / "face").iterdir()) == ["stack.png"]


# --- formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, ext", [("jpeg", "jpg"), ("webp", "webp")])
def test_previews_decode_and_their_ranges_are_beside_them(tmp_path, photo, fmt, ext):
    r = run("apply", photo, "-f", "sobel_x", "-f", "log_2", "--format", fmt, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "face").iterdir())
    assert files == sorted([f"log_2.{ext}", f"sobel_x.{ext}", f"stack.{ext}", "maps.json"])
    png_run = run("apply", photo, "-f", "sobel_x", "-o", tmp_path / "png")
    assert png_run.exit_code == 0
    exact, meta = png_meta(tmp_path / "png" / "face" / "sobel_x.png")
    with Image.open(tmp_path / "face" / f"sobel_x.{ext}") as im:
        assert im.format == fmt.upper() and im.size == (96, 96)
        lossy = np.asarray(im.convert("L"), np.float64)
    assert np.abs(lossy - exact).mean() < 8  # a preview: close, not exact
    sidecar = json.loads((tmp_path / "face" / "maps.json").read_text())["pictures"]
    assert sidecar[f"sobel_x.{ext}"]["range"] == meta["range"]


def test_tiff_holds_every_map_as_float32_with_names_and_reads_back(tmp_path, photo):
    import tifffile

    r = run("apply", photo, "-f", "sobel_x", "-f", "laplacian", "--format", "tiff",
            "-o", tmp_path / "t")
    assert r.exit_code == 0, r.output
    run("apply", photo, "-f", "sobel_x", "-f", "laplacian", "--format", "npy",
        "-o", tmp_path / "n")
    with tifffile.TiffFile(tmp_path / "t" / "face" / "maps.tif") as tf:
        data = tf.asarray()
        names = json.loads(tf.pages[0].description)["filters"]
    assert names == ["sobel_x", "laplacian"] and data.dtype == np.float32
    np.testing.assert_array_equal(data, np.load(tmp_path / "n" / "face" / "maps.npy"))
    # and it is an input: one run's TIFF is the next run's feature maps
    r = run("apply", tmp_path / "t" / "face" / "maps.tif", "-b", "blur", "-f", "box_3",
            "--format", "npy", "-o", tmp_path / "again")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "again" / "maps" / "maps.json").read_text())
    assert meta["shape"] == [2, 2, 96, 96] or meta["shape"][0] == 2


def test_one_map_as_tiff_on_stdout(tmp_path, photo):
    import io

    import tifffile

    p = subprocess.run([sys.executable, "-m", "convcli", "apply", str(photo), "-f", "sobel_x",
                        "--format", "tiff", "-o", "-"], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    with tifffile.TiffFile(io.BytesIO(p.stdout)) as tf:
        data = tf.asarray()
        assert json.loads(tf.pages[0].description)["filters"] == ["sobel_x"]
    np.testing.assert_array_equal(data.reshape(96, 96), edge_map(photo, "sobel_x"))


# --- combined maps and overlays -------------------------------------------------------------

def test_gradient_magnitude_of_an_x_y_pair(tmp_path, photo):
    r = run("apply", photo, "-f", "sobel_x", "-f", "sobel_y", "--activation", "none",
            "--combine", "magnitude", "--scale", "minmax", "--bits", "16", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    pixels, meta = png_meta(tmp_path / "face" / "combined.png")
    gx = edge_map(photo, "sobel_x", "none").astype(np.float64)
    gy = edge_map(photo, "sobel_y", "none").astype(np.float64)
    want = np.hypot(gx, gy)
    assert meta["combined"] == "magnitude" and meta["filters"] == ["sobel_x", "sobel_y"]
    np.testing.assert_allclose(meta["range"], [want.min(), want.max()], rtol=1e-5)
    back = render.recover(pixels, *meta["range"], 16)
    np.testing.assert_allclose(back, want, atol=(want.max() - want.min()) / 65535 + 1e-5)


@pytest.mark.parametrize("how", ["max", "mean"])
def test_max_and_mean_combine_every_map(tmp_path, photo, how):
    names = ["sobel_x", "sobel_y", "laplacian"]
    args = [a for n in names for a in ("-f", n)]
    r = run("apply", photo, *args, "--combine", how, "--scale", "minmax", "--bits", "16",
            "-o", tmp_path)
    assert r.exit_code == 0, r.output
    maps = np.stack([edge_map(photo, n) for n in names]).astype(np.float64)
    want = maps.max(axis=0) if how == "max" else maps.mean(axis=0)
    pixels, meta = png_meta(tmp_path / "face" / "combined.png")
    back = render.recover(pixels, *meta["range"], 16)
    np.testing.assert_allclose(back, want, atol=(want.max() - want.min()) / 65535 + 1e-5)


def test_overlay_shows_the_photo_where_the_map_is_at_its_low_end(tmp_path, photo):
    r = run("apply", photo, "-f", "sobel_x", "-f", "sobel_y", "--overlay", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    pixels, meta = png_meta(tmp_path / "face" / "overlay.png")
    assert pixels.shape == (96, 96, 3) and meta["colormap"] == "inferno"
    assert meta["combined"] == "max"
    combined = np.maximum(edge_map(photo, "sobel_x"), edge_map(photo, "sobel_y"))
    lo, hi = meta["range"]
    gray = np.rint(luminance(photo)[0] * 255)
    calm = combined <= lo
    assert calm.mean() > 0.05
    for c in range(3):  # the photo in gray, exactly, where the map is at or below lo
        np.testing.assert_array_equal(pixels[..., c][calm], gray[calm])
    t = np.clip((combined.astype(np.float64) - lo) / (hi - lo), 0, 1)
    strong = t == 1  # the map's top colour at OVERLAY_ALPHA over the photo
    want = gray[strong][:, None] * (1 - render.OVERLAY_ALPHA) + \
        render.lut("inferno")[255] * render.OVERLAY_ALPHA
    assert np.abs(pixels[strong] - want).max() <= 1


def test_overlay_of_a_smaller_map_is_the_photo_size(tmp_path, photo):
    r = run("apply", photo, "-f", "sobel_x", "--stride", "2", "--overlay",
            "--colormap", "viridis", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    pixels, meta = png_meta(tmp_path / "face" / "overlay.png")
    combined, _ = png_meta(tmp_path / "face" / "combined.png")
    assert pixels.shape == (96, 96, 3) and combined.shape == (48, 48, 3)
    assert meta["colormap"] == "viridis"


def test_stdout_gets_the_overlay_when_asked(tmp_path, photo):
    p = subprocess.run([sys.executable, "-m", "convcli", "apply", str(photo), "--overlay",
                        "-o", "-"], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    img = images.read_image(p.stdout, label="stdout")
    assert img.pixels.shape == (3, 96, 96)


# --- memory ---------------------------------------------------------------------------------

def test_peak_memory_of_a_4096_photo_stays_within_the_budget(tmp_path):
    """apply on a 4096x4096 RGB photo with the edge bank, its peak resident memory
    measured by the kernel (ru_maxrss of the finished child, in a fresh parent so no earlier
    child counts), stays within the --max-memory it was given."""
    rng = np.random.default_rng(0)
    side = 4096
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    base = np.add.outer(np.sin(ramp * 40), np.cos(ramp * 23)) * 60 + 128
    pixels = np.stack([base, base[::-1], base.T], -1) + rng.normal(0, 10, (side, side, 3))
    photo = tmp_path / "big.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(photo, compress_level=1)
    del base, pixels
    budget = 2 * 2**30
    script = textwrap.dedent(f"""
        import resource, subprocess, sys
        p = subprocess.run([sys.executable, "-m", "convcli", "apply", {str(photo)!r}, "-b",
                            "edge", "-j", "1", "--max-memory", "2G", "-q", "-o",
                            {str(tmp_path / "out")!r}])
        print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=900)
    code, peak_kib = map(int, p.stdout.split())
    assert code == 0, p.stderr
    assert peak_kib * 1024 <= budget, f"peak {peak_kib / 2**20:.2f} GiB"
    with Image.open(tmp_path / "out" / "big" / "stack.png") as im:
        assert max(im.size) <= 4 * (render.TILE + render.GAP) + 200
    with Image.open(tmp_path / "out" / "big" / "sobel_x.png") as im:
        assert im.size == (side, side)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff", "npy"])
def test_resume_skips_what_every_format_wrote_and_redoes_other_settings(tmp_path, photo, fmt):
    args = ["apply", photo, "-f", "sobel_x", "-f", "sobel_y", "--format", fmt, "-o", tmp_path,
            "--json"]
    assert run(*args).exit_code == 0
    again = run(*args, "--resume")
    assert again.exit_code == 0
    assert [json.loads(line)["status"] for line in again.stdout.splitlines()] == ["skipped"]
    other = run(*args, "--resume", "--stride", "2")  # other settings: done again
    assert [json.loads(line)["status"] for line in other.stdout.splitlines()] == ["ok"]
