"""Batches: every input form, the output layout, resume, failures, reports, interruption."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convcli import inputs
from convcli.cli import app
from terminal import stderr_on_a_terminal

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def tiny(path: Path, seed: int = 0, size=(40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def photos(tmp_path):
    base = tmp_path / "photos"
    tiny(base / "a.png", 1)
    tiny(base / "b.png", 2)
    tiny(base / "trip" / "c.png", 3)
    tiny(base / "trip" / "deep" / "d.png", 4)
    (base / "notes.txt").write_text("not an image")
    (base / ".hidden.png").write_text("hidden files are left alone")
    return base


def test_folder_scan_is_flat_unless_recursive(tmp_path, photos):
    r = run("apply", photos, "-f", "sobel_x", "--no-stack", "-o", tmp_path / "flat")
    assert r.exit_code == 0, r.output
    assert tree(tmp_path / "flat") == ["a/sobel_x.png", "b/sobel_x.png"]
    assert ("convcli: warning: skipped 1 file that is not an image (by extension); -v lists "
            "them\n") in r.stderr
    r = run("apply", photos, "-r", "-f", "sobel_x", "--no-stack", "-o", tmp_path / "deep")
    assert r.exit_code == 0
    assert tree(tmp_path / "deep") == ["a/sobel_x.png", "b/sobel_x.png", "trip/c/sobel_x.png",
                                       "trip/deep/d/sobel_x.png"]


def test_glob_expanded_by_convcli(tmp_path, photos):
    r = run("apply", f"{photos}/**/*.png", "-f", "sobel_x", "--no-stack", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert tree(tmp_path / "o") == ["a/sobel_x.png", "b/sobel_x.png", "trip/c/sobel_x.png",
                                    "trip/deep/d/sobel_x.png"]
    r = run("apply", f"{photos}/*.jpg", "-o", tmp_path / "none")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == \
        f"convcli: error: {photos}/*.jpg: no files match this pattern"


@pytest.mark.parametrize("sep, flag", [("\n", []), ("\0", ["-0"])])
def test_files_from_stdin(tmp_path, photos, sep, flag):
    listing = sep.join([str(photos / "trip" / "c.png"), str(photos / "a.png")]) + sep
    r = run("apply", "--files-from", "-", *flag, "-f", "sobel_x", "--no-stack", "-o",
            tmp_path / "o", input=listing)
    assert r.exit_code == 0, r.output
    assert tree(tmp_path / "o") == ["a/sobel_x.png", "trip/c/sobel_x.png"]


def test_files_from_a_file_and_names_with_spaces(tmp_path):
    odd = tiny(tmp_path / "in" / "my photo.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{odd}\n")
    r = run("apply", "--files-from", listing, "-f", "sobel_x", "-o", tmp_path / "o")
    assert r.exit_code == 0
    assert (tmp_path / "o" / "my photo" / "sobel_x.png").is_file()


def test_find_print0_pipeline(tmp_path, photos):
    # find . -name '*.png' -print0 | convcli apply --files-from - -0 ...
    cmd = (f"find {photos} -name '*.png' -not -name '.*' -print0 | {sys.executable} -m convcli "
           f"apply --files-from - -0 -f sobel_x --no-stack -o {tmp_path / 'o'}")
    p = subprocess.run(cmd, shell=True, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert tree(tmp_path / "o") == ["a/sobel_x.png", "b/sobel_x.png", "trip/c/sobel_x.png",
                                    "trip/deep/d/sobel_x.png"]


def test_non_image_named_explicitly_is_an_error(tmp_path, photos):
    r = run("apply", photos / "a.png", photos / "notes.txt", "-f", "sobel_x", "-o", tmp_path / "o")
    assert r.exit_code == 3
    assert r.stderr.splitlines()[0] == (f"convcli: error: {photos / 'notes.txt'}: not a "
                                        "recognised image (unknown format or damaged file); "
                                        "convcli reads PNG, JPEG, GIF, BMP, WebP and TIFF")


def test_same_stem_collisions_get_their_extension(tmp_path):
    a = tiny(tmp_path / "in" / "x.png", 1)
    tiny(tmp_path / "in" / "x.bmp", 2)
    Image.open(a).save(tmp_path / "in" / "X.webp", lossless=True)
    tiny(tmp_path / "in" / "by-filter.png", 3)
    r = run("apply", tmp_path / "in", "-f", "sobel_x", "--no-stack", "-o", tmp_path / "o",
            "--stack-by", "filter")
    assert r.exit_code == 0, r.output
    assert tree(tmp_path / "o") == sorted([
        "by-filter/sobel_x.png", "by-filter_png/sobel_x.png", "x_bmp/sobel_x.png",
        "x_png/sobel_x.png", "X_webp/sobel_x.png"])


def test_output_folder_inside_the_input_folder_is_not_scanned(tmp_path):
    tiny(tmp_path / "in" / "a.png")
    for _ in range(2):
        r = run("apply", tmp_path / "in", "-r", "-f", "sobel_x", "-o", tmp_path / "in" / "out")
        assert r.exit_code == 0 and "warning" not in r.stderr
    assert tree(tmp_path / "in" / "out") == ["a/sobel_x.png"]


def test_stdin_image_in_a_batch_folder(tmp_path, photos):
    r = run("apply", "-", "-f", "sobel_x", "--no-stack", "-o", tmp_path / "o",
            input=(photos / "a.png").read_bytes())
    assert r.exit_code == 0
    assert tree(tmp_path / "o") == ["stdin/sobel_x.png"]


def test_resume_skips_complete_inputs_only(tmp_path, photos):
    out = tmp_path / "o"
    two = ["-f", "sobel_x", "-f", "sobel_y"]
    assert run("apply", photos, *two, "-o", out).exit_code == 0
    (out / "b" / "stack.png").unlink()
    before = (out / "a" / "sobel_x.png").stat().st_mtime_ns
    r = run("apply", photos, *two, "-o", out, "--resume", "--json")
    records = {Path(j["input"]).name: j for j in map(json.loads, r.stdout.splitlines())}
    assert records["a.png"]["status"] == "skipped" and records["b.png"]["status"] == "ok"
    assert (out / "b" / "stack.png").is_file()
    assert (out / "a" / "sobel_x.png").stat().st_mtime_ns == before


def test_json_report_fields(tmp_path, photos):
    r = run("apply", photos / "a.png", photos / "missing.png", "-f", "sobel_x", "-f", "sobel_y",
            "-o", tmp_path / "o", "--json", "-j", "1")
    assert r.exit_code == 3
    ok, bad = [json.loads(line) for line in r.stdout.splitlines()]
    assert set(ok) == {"input", "status", "outputs", "shape", "seconds", "error", "warnings"}
    assert ok["status"] == "ok" and ok["shape"] == [2, 32, 40] and ok["error"] is None
    assert ok["outputs"] == [str(tmp_path / "o" / "a" / n)
                             for n in ("sobel_x.png", "sobel_y.png", "stack.png")]
    assert bad["status"] == "error" and bad["outputs"] == [] and bad["shape"] is None
    assert bad["error"] == f"{photos / 'missing.png'}: cannot open: No such file or directory"


def test_keep_going_and_fail_fast(tmp_path, photos):
    args = [photos / "notes.txt", photos / "a.png", photos / "b.png", "-f", "sobel_x", "-j", "1"]
    keep = run("apply", *args, "-o", tmp_path / "keep", "--json")
    assert keep.exit_code == 3
    assert [json.loads(l)["status"] for l in keep.stdout.splitlines()] == ["error", "ok", "ok"]
    fast = run("apply", *args, "-o", tmp_path / "fast", "--json", "--fail-fast")
    assert fast.exit_code == 1
    assert [json.loads(l)["status"] for l in fast.stdout.splitlines()] == ["error"]
    assert not (tmp_path / "fast" / "a").exists()


def test_all_failed_is_exit_1(tmp_path, photos):
    r = run("apply", photos / "notes.txt", photos / "nope.png", "-o", tmp_path / "o")
    assert r.exit_code == 1


def test_parallel_output_is_identical_to_serial(tmp_path, photos):
    for jobs in ("1", "2"):
        r = run("apply", photos, "-r", "-o", tmp_path / jobs, "-j", jobs, "--stack-by", "filter")
        assert r.exit_code == 0, r.output
    files = tree(tmp_path / "1")
    assert files == tree(tmp_path / "2") and len(files) == 4 * 17 + 16
    for f in files:
        assert (tmp_path / "1" / f).read_bytes() == (tmp_path / "2" / f).read_bytes(), f


def test_contact_sheet_has_one_tile_per_input(tmp_path, photos):
    r = run("apply", photos, "-r", "-f", "log_2", "-o", tmp_path / "o", "--stack-by", "filter")
    assert r.exit_code == 0
    with Image.open(tmp_path / "o" / "by-filter" / "log_2.png") as im:
        meta = json.loads(im.text["convcli"])
    assert [t["name"] for t in meta["tiles"]] == ["a", "b", "trip/c", "trip/deep/d"]


@pytest.mark.parametrize("extra", [["--format", "npy"], ["--format", "tiff"], ["--no-maps"],
                                   ["--format", "jpeg"], ["--format", "webp", "--no-maps"]])
def test_contact_sheets_after_resume_of_every_output_kind(tmp_path, photos, extra):
    """Skipped inputs bring their sheet tiles from whatever the first run wrote: the arrays,
    the pictures, or (stack only) their tiles in the stack."""
    args = ("apply", photos, "-r", "-f", "log_2", "-f", "sobel_x", "-o", tmp_path / "o",
            "--stack-by", "filter", *extra)
    assert run(*args).exit_code == 0
    sheet = tmp_path / "o" / "by-filter" / "sobel_x.png"
    with Image.open(sheet) as im:
        first, boxes = np.asarray(im), json.loads(im.text["convcli"])["tiles"]
    sheet.unlink()
    r = run(*args, "--resume")
    assert r.exit_code == 0, r.output
    with Image.open(sheet) as im:
        again, boxes_again = np.asarray(im), json.loads(im.text["convcli"])["tiles"]
    assert [b["name"] for b in boxes_again] == [b["name"] for b in boxes] == [
        "a", "b", "trip/c", "trip/deep/d"]
    if extra[0] == "--format" and extra[1] in ("npy", "tiff"):
        np.testing.assert_array_equal(again, first)  # drawn again from the same floats
    else:  # from a lossy or shrunk picture: close to the fresh thumbnails
        assert again.shape == first.shape
        assert np.abs(again.astype(int) - first.astype(int)).mean() < 8


def test_contact_sheet_tiles_are_the_maps_made_small_also_after_resume(tmp_path, photos):
    from convcli import render

    args = ("apply", photos, "-r", "-f", "log_2", "-f", "sobel_x", "-o", tmp_path / "o",
            "--stack-by", "filter", "--bits", "16")
    assert run(*args).exit_code == 0
    sheet = tmp_path / "o" / "by-filter" / "sobel_x.png"
    first = sheet.read_bytes()
    with Image.open(sheet) as im:
        pixels, meta = np.asarray(im), json.loads(im.text["convcli"])
    for tile in meta["tiles"]:
        with Image.open(tmp_path / "o" / tile["name"] / "sobel_x.png") as im:
            small = render.thumbnail(np.asarray(im))
        x, y, w, h = tile["box"]
        np.testing.assert_array_equal(pixels[y:y + h, x:x + w], small)
    sheet.unlink()
    assert run(*args, "--resume").exit_code == 0  # every input skipped: pictures from files
    assert sheet.read_bytes() == first


def test_usage_errors_for_batch_options(tmp_path, photos):
    assert run("apply", photos, "-o", tmp_path, "-j", "0").stderr == \
        "convcli: error: --jobs must be between 1 and 256, got 0\n"
    assert run("apply", photos, "-o", "-", "--json").exit_code == 2
    assert run("apply", "-o", tmp_path).stderr == (
        "convcli: error: give at least one INPUT (a file, folder, glob or -) or --files-from\n")
    assert run("apply", "-", "--files-from", "-", "-o", tmp_path).stderr == (
        "convcli: error: stdin can feed only one of: an image (-) or the list of inputs "
        "(see --files-from)\n")
    r = run("apply", photos, "-o", tmp_path, "--stack-by", "input")
    assert r.exit_code == 2
    assert r.stderr == "convcli: error: --stack-by takes 'filter', got 'input'\n"


def test_output_naming_rules():
    srcs = [inputs.Source.from_path(p) for p in ("in/a.png", "in/A.jpg", "in/sub/b.png")]
    named = inputs._name_outputs([(s, None) for s in srcs])
    assert [s.rel for s in named] == ["a_png", "A_jpg", "sub/b"]


# --- real processes: progress, interruption, crashes, pipes ---------------------------------

@pytest.fixture
def many(tmp_path):
    """Enough real photos for a batch that takes a few seconds on two cores."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(24):
        src = ROOT / "samples" / ["astronaut.png", "coffee.png", "chelsea.png"][i % 3]
        os.symlink(src, folder / f"img{i:02d}.png")
    return folder


def convcli(*args):
    return [sys.executable, "-m", "convcli", *map(str, args)]


def only_complete_pngs(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    for p in files:
        assert not p.name.startswith("."), f"temporary file left behind: {p}"
        with Image.open(p) as im:
            im.load()  # raises on a truncated file
    return files


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path, many):
    p = subprocess.run(convcli("apply", many, "-f", "sobel_x", "-o", tmp_path / "o"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0
    assert p.stderr.count("\n") == 1 and "\x1b" not in p.stderr and "\r" not in p.stderr
    assert p.stderr.startswith("convcli: finished 24 of 24 inputs: 24 done in ")


def test_progress_bar_on_a_terminal(tmp_path, many):
    code, seen = stderr_on_a_terminal(convcli("apply", many, "-f", "sobel_x", "-o", tmp_path / "o"))
    assert code == 0
    assert b"images/s" in seen and b"24/24" in seen
    assert b"finished 24 of 24 inputs" in seen


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_cleanly(tmp_path, many, sig, code):
    out = tmp_path / "o"
    proc = subprocess.Popen(convcli("apply", many, "-o", out, "-j", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/stack.png"))) < 2:
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert re.search(r"convcli: interrupted after \d+ of 24 inputs", stderr)
    assert "Traceback" not in stderr
    files = only_complete_pngs(out)
    assert 0 < len(files) < 24 * 17


def test_a_killed_worker_costs_only_a_retry(tmp_path, many):
    out = tmp_path / "o"
    proc = subprocess.Popen(convcli("apply", many, "-o", out, "-j", "2", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    children: list[int] = []
    while time.time() < deadline and not children:
        children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                    .read_text().split()] if proc.poll() is None else []
        time.sleep(0.05)
    assert children, "no worker processes appeared"
    time.sleep(0.5)
    os.kill(children[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    records = [json.loads(l) for l in stdout.splitlines()]
    assert sorted(Path(r["input"]).name for r in records) == sorted(p.name for p in many.iterdir())
    assert all(r["status"] == "ok" for r in records)
    only_complete_visible = [p for p in out.rglob("*")
                             if p.is_file() and not p.name.startswith(".")]
    assert len(only_complete_visible) == 24 * 17
    for p in only_complete_visible:
        with Image.open(p) as im:
            im.load()


def test_json_into_head_ends_quietly(tmp_path, many):
    p = subprocess.run(" ".join(convcli("apply", many, "-f", "sobel_x", "-o", tmp_path / "o",
                                        "--json", "-j", "1"))
                       + " | head -n 1; exit ${PIPESTATUS[0]}",
                       shell=True, executable="/bin/bash", capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0
    assert json.loads(p.stdout)["status"] == "ok"
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_globs_take_braces_and_any_case_and_skips_are_one_line(tmp_path):
    for name in ("a.png", "B.PNG", "c.Jpg", "d.gif"):
        tiny(tmp_path / "in" / name)
    for k in range(40):
        (tmp_path / "in" / f"side{k}.json").write_text("{}")
    r = run("apply", str(tmp_path / "in" / "*.{png,jpg}"), "-f", "sobel_x", "-o", tmp_path / "g")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["B", "a", "c"]
    r = run("apply", tmp_path / "in", "-f", "sobel_x", "-o", tmp_path / "s")
    assert r.stderr.splitlines()[0] == ("convcli: warning: skipped 40 files that are not images "
                                        "(by extension); -v lists them")
    r = run("apply", tmp_path / "in", "-f", "sobel_x", "-o", tmp_path / "v", "-v")
    assert sum(line.startswith("skipped: ") for line in r.stderr.splitlines()) == 40
