"""Hostile and broken inputs from the command line: each works as documented or fails with
one clear line, the documented exit code, no traceback, and only complete files written."""

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convcli import bank, pipeline
from convcli.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def complete_files(folder: Path) -> list[str]:
    """Every file under folder, each checked to decode completely; no temporaries."""
    names = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            assert not p.name.startswith("."), f"temporary left: {p}"
            if p.suffix == ".png":
                with Image.open(p) as im:
                    im.load()
            names.append(str(p.relative_to(folder)))
    return names


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind, body):
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(100_000, 100_000))
    r = run("apply", bomb, "-o", tmp_path / "o")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        f"convcli: error: {bomb}: 100000x100000 image has 10,000,000,000 pixels, over the limit "
        "of 100,000,000 (raise it with --max-pixels)")
    assert "Traceback" not in r.output and not (tmp_path / "o" / "bomb").exists()


def test_one_pixel_image_works(tmp_path):
    Image.new("L", (1, 1), 200).save(tmp_path / "dot.png")
    r = run("apply", tmp_path / "dot.png", "-o", tmp_path / "o", "--format", "npy")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "o" / "dot" / "maps.npy").shape == (16, 1, 1)


def test_image_smaller_than_the_kernel_with_valid_padding(tmp_path):
    Image.new("L", (4, 4), 200).save(tmp_path / "small.png")
    r = run("apply", tmp_path / "small.png", "-f", "log_2", "--padding", "valid",
            "-o", tmp_path / "o")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        f"convcli: error: {tmp_path / 'small.png'}: the image (4x4) is smaller than the "
        "kernel's footprint (17x17) with "
        "padding 'valid'; use padding 'same' or a smaller kernel")


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "tab\tand\nnewline\x1b[31m", "..", ""])
def test_filter_names_cannot_escape_the_output_folder(tmp_path, name):
    spec = tmp_path / "b.yaml"
    quoted = name.encode("unicode_escape").decode().replace('"', '\\"')
    spec.write_text(f'name: evil\nfilters:\n  - name: "{quoted}"\n    weights: [[1]]\n'
                    '  - name: other\n    weights: [[2]]\n')
    Image.new("L", (6, 6), 9).save(tmp_path / "in.png")
    r = run("apply", tmp_path / "in.png", "--bank", spec, "-o", tmp_path / "o")
    if name == "":
        assert r.exit_code == 1 and "field 'name': must be a non-empty string" in r.stderr
        return
    assert r.exit_code == 0, r.output
    files = complete_files(tmp_path / "o")
    assert len(files) == 3 and all(f.startswith("in/") and f.count("/") == 1 for f in files)
    assert not Path("/etc/passwd.png").exists()


def test_safe_name_collisions_get_numbered(tmp_path):
    spec = tmp_path / "b.yaml"
    spec.write_text("name: twins\nfilters:\n  - {name: 'a/b', weights: [[1]]}\n"
                    "  - {name: 'a b', weights: [[2]]}\n  - {name: 'A_B', weights: [[3]]}\n"
                    "  - {name: stack, weights: [[4]]}\n")
    Image.new("L", (6, 6), 9).save(tmp_path / "in.png")
    assert run("apply", tmp_path / "in.png", "--bank", spec, "-o", tmp_path / "o").exit_code == 0
    assert complete_files(tmp_path / "o") == ["in/A_B-3.png", "in/a_b-2.png", "in/a_b.png",
                                              "in/stack-2.png", "in/stack.png"]


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    Image.new("L", (16, 16), 9).save(tmp_path / "in.png")
    real_open = open

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])  # half of it lands, then the disk is full
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "open", lambda path, mode: FullDisk(real_open(path, mode)),
                        raising=False)
    r = run("apply", tmp_path / "in.png", "-f", "sobel_x", "-o", tmp_path / "o")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        f"convcli: error: {tmp_path / 'in.png'}: {tmp_path / 'o' / 'in' / 'sobel_x.png'}: "
        "cannot write: No space left on device")
    assert complete_files(tmp_path / "o") == []


def test_two_processes_writing_one_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        os.symlink(Path(__file__).resolve().parent.parent / "samples" / "chelsea.png",
                   folder / f"c{i}.png")
    cmd = [sys.executable, "-m", "convcli", "apply", str(folder), "-o", str(tmp_path / "o"),
           "-j", "1", "-q"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert len(complete_files(tmp_path / "o")) == 6 * 17


def test_corrupt_jit_cache_is_rebuilt(tmp_path):
    env = dict(os.environ, CONVCLI_CACHE_DIR=str(tmp_path / "cache"))
    Image.new("L", (32, 32), 9).save(tmp_path / "in.png")
    # One filter that runs on the direct kernel, and raw maps: only that kernel compiles
    # (three times here: first, after the corruption, and once more), which keeps this test
    # at a third of the time the whole edge bank and its pictures cost.
    cmd = [sys.executable, "-m", "convcli", "apply", str(tmp_path / "in.png"), "--engine", "jit",
           "-f", "laplacian", "--format", "npy", "-o", str(tmp_path / "o"), "-q"]
    compiled = subprocess.run([c for c in cmd if c != "-q"], env=env, capture_output=True,
                              timeout=300)
    assert compiled.returncode == 0
    # a first compile says so (one line, no terminal here)
    assert compiled.stderr.decode().splitlines()[0] == \
        "convcli: compiling the engine, once per machine: about 30 s"
    first = (tmp_path / "o" / "in" / "maps.npy").read_bytes()
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert cached
    garbage = b"garbage" * 10
    for p in cached:
        p.write_bytes(garbage)
    again = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0 and b"Traceback" not in again.stderr
    assert (tmp_path / "o" / "in" / "maps.npy").read_bytes() == first
    # the kernel that ran (the direct one, for the laplacian) had its corrupt files
    # cleared, and is cached whole again after the next run at the latest
    def ran() -> list[Path]:
        return [p for p in (tmp_path / "cache").rglob("jit.correlate-*")
                if p.suffix in (".nbi", ".nbc")]

    assert all(p.read_bytes() != garbage for p in ran())
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    rebuilt = ran()
    assert any(p.suffix == ".nbi" for p in rebuilt)
    assert all(p.read_bytes() != garbage for p in rebuilt)


def test_non_utf8_file_names(tmp_path):
    if sys.platform == "darwin":
        pytest.skip("macOS file systems refuse names that are not UTF-8")
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    Image.new("L", (8, 8), 9).save(raw.decode("utf-8", "surrogateescape"))
    p = subprocess.run([os.fsencode(sys.executable), b"-m", b"convcli", b"apply", raw, b"-f",
                        b"sobel_x", b"-o", os.fsencode(tmp_path / "o"), b"--json"],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    made = os.listdir(os.fsencode(tmp_path / "o"))
    assert made == [b"caf\xe9"]


@pytest.mark.parametrize("fmt_args", [[], ["--format", "npy"], ["--scale", "global"],
                                      ["--bits", "16", "--no-stack"]])
def test_memory_budget_splits_filters_with_identical_results(tmp_path, fmt_args):
    photo = Path(__file__).resolve().parent.parent / "samples" / "chelsea.png"
    roomy = run("apply", photo, "-o", tmp_path / "a", *fmt_args)
    # chelsea (451x300 RGB): the image takes ~5 MiB, each map ~1 MiB, the stack's tiles
    # ~4 MiB; with 12 MiB the 16 edge filters go in groups of two to six.
    tight = run("apply", photo, "-o", tmp_path / "b", "--max-memory", "12M", *fmt_args)
    assert roomy.exit_code == tight.exit_code == 0, tight.output
    edge = bank.load("edge")
    options = pipeline.Options(out=str(tmp_path), max_memory=12 * 2**20,
                               format="npy" if "npy" in fmt_args else "png",
                               stack="--no-stack" not in fmt_args)
    shape = (3, 300, 451)
    shapes = [pipeline.map_shape(f, shape, edge.input) for f in edge.filters]
    assert len(pipeline.plan_groups(edge, shape, shapes, options, "x")) > 1  # it did split
    files = complete_files(tmp_path / "a")
    assert files == complete_files(tmp_path / "b") and len(files) >= 2
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_memory_budget_too_small_for_one_map_is_refused_with_numbers(tmp_path):
    photo = Path(__file__).resolve().parent.parent / "samples" / "astronaut.png"
    r = run("apply", photo, "-o", tmp_path / "o", "--max-memory", "2M")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        f"convcli: error: {photo}: needs at least 19 MiB (image 9 MiB, largest map 2 MiB, "
        "stack 8 MiB), over the memory budget of 2 MiB; raise the budget, leave out the stack "
        "or give a smaller image (see --max-memory, --no-stack)")
    assert complete_files(tmp_path / "o") == []


@pytest.mark.parametrize("text", ["lots", "0", "-5M", "1.5X", "1K", "1e400G", "nan", "inf",
                                  "2000T", "1_000_000_000_000_000_000"])
def test_bad_memory_sizes_are_usage_errors(tmp_path, text):
    r = run("apply", "x.png", "-o", tmp_path / "o", "--max-memory", text)
    assert r.exit_code == 2
    assert r.stderr == ("convcli: error: --max-memory takes a size from 1M to 1024T, such as "
                        f"512M or 8G, got {text!r}\n")


@pytest.mark.parametrize("args, message", [
    (["--max-pixels", "0"], "--max-pixels must be at least 1, got 0"),
    (["--max-pixels", "-7"], "--max-pixels must be at least 1, got -7"),
    (["-j", "100000"], "--jobs must be between 1 and 256, got 100000"),
])
def test_absurd_limits_are_usage_errors(tmp_path, args, message):
    r = run("apply", "x.png", "-o", tmp_path / "o", *args)
    assert (r.exit_code, r.stderr) == (2, f"convcli: error: {message}\n")


def test_unreadable_input_is_one_clear_line(tmp_path):
    """A file without read permission. Root reads anything, so as root convcli runs under
    setpriv without the capabilities that override file permissions."""
    import shutil

    secret = tmp_path / "secret.png"
    Image.new("L", (8, 8), 9).save(secret)
    secret.chmod(0o000)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "as root this check needs util-linux's setpriv"
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    p = subprocess.run(prefix + [sys.executable, "-m", "convcli", "apply", str(secret), "-o",
                                 str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines()[0] == f"convcli: error: {secret}: cannot open: Permission denied"
    assert p.stdout == "" and "Traceback" not in p.stderr
    assert not (tmp_path / "o" / "secret").exists()


def _catalogue(folder: Path) -> dict[str, tuple[Path, int, str]]:
    """name -> (input path, expected exit code, expected start of stderr's first line)."""
    import io

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    made: dict[str, tuple[Path, int, str]] = {}

    def save(name: str, data: bytes, code: int, message: str) -> None:
        path = folder / name
        path.write_bytes(data)
        made[name] = (path, code, message.format(path=path))

    def encoded(img, fmt, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    png = encoded(rgb, "PNG")
    jpeg = encoded(rgb, "JPEG")
    save("truncated.png", png[: len(png) // 2], 1, "convcli: error: {path}: ")
    save("truncated.jpg", jpeg[: len(jpeg) // 2], 1, "convcli: error: {path}: ")
    save("empty.png", b"", 1, "convcli: error: {path}: is empty (0 bytes)")
    save("text.png", b"hello\n", 1, "convcli: error: {path}: not a recognised image")
    save("dot.png", encoded(Image.new("L", (1, 1), 3), "PNG"), 0, "convcli: finished 1 of 1")
    save("gray16.png", encoded(Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)),
                               "PNG"), 0, "convcli: finished")
    save("palette.png", encoded(rgb.convert("P"), "PNG"), 0, "convcli: finished")
    save("graya.png", encoded(rgb.convert("LA"), "PNG"), 0, "convcli: finished")
    save("cmyk.jpg", encoded(rgb.convert("CMYK"), "JPEG"), 0, "convcli: finished")
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    save("anim.gif", buf.getvalue(), 0,
         "convcli: warning: {path}: has 2 frames; only the first is used")
    buf = io.BytesIO()
    rgb.save(buf, "TIFF", save_all=True, append_images=[rgb.rotate(90)])
    save("pages.tif", buf.getvalue(), 0,
         "convcli: warning: {path}: has 2 frames; only the first is used")
    (folder / "folder.png").mkdir()
    made["folder.png"] = (folder / "folder.png", 2, "convcli: error: no images to process")
    return made


CASES = ["truncated.png", "truncated.jpg", "empty.png", "text.png", "dot.png", "gray16.png",
         "palette.png", "graya.png", "cmyk.jpg", "anim.gif", "pages.tif", "folder.png"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_catalogue(tmp_path, case):
    """Each input works as documented or fails with one clear line and the documented exit
    code; stdout holds nothing; the output folder holds only complete files."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    path, code, message = _catalogue(inputs)[case]
    r = run("apply", path, "-f", "sobel_x", "-f", "log_2", "-o", tmp_path / "out")
    assert r.exit_code == code, r.output
    assert r.stdout == ""
    assert r.stderr.splitlines()[0].startswith(message), r.stderr
    assert "Traceback" not in r.stderr
    if (tmp_path / "out").exists():
        files = complete_files(tmp_path / "out")
        assert files == ([] if code else [f"{path.stem}/{n}"
                                          for n in ("log_2.png", "sobel_x.png", "stack.png")])
