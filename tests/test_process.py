"""Real processes with real pipes: what a shell user sees."""

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convcli import bank, conv2d, images

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "chelsea.png"


def convcli(*args, stdin=None, env=None, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "convcli", *map(str, args)], input=stdin,
                          stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=120)


def test_cat_into_blur_into_png():
    # cat img.png | convcli apply - --bank blur -o - > out.png
    cat = subprocess.Popen(["cat", str(SAMPLE)], stdout=subprocess.PIPE)
    p = subprocess.run([sys.executable, "-m", "convcli", "apply", "-", "--bank", "blur", "-o", "-"],
                       stdin=cat.stdout, capture_output=True, timeout=120)
    cat.stdout.close()
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    stack = Image.open(io.BytesIO(p.stdout))
    stack.load()
    meta = json.loads(stack.text["convcli"])
    assert stack.mode == "RGB" and meta["input"] == "<stdin>" and meta["bank"] == "blur"
    assert [t["name"] for t in meta["tiles"]] == [f.name for f in bank.load("blur").filters]


def test_npy_on_stdout_matches_the_python_api():
    p = convcli("apply", "-", "--bank", "edge", "--format", "npy", "-o", "-",
                stdin=SAMPLE.read_bytes())
    assert p.returncode == 0, p.stderr
    got = np.load(io.BytesIO(p.stdout))
    edge = bank.load("edge")
    gray = images.as_channels(images.read_image(SAMPLE).pixels, "gray")
    assert got.shape == (len(edge.filters),) + gray.shape[1:]
    for k, f in enumerate(edge.filters):
        g = f.geometry
        want = conv2d(gray, f.weights[None], f.bias, stride=g.stride, padding=g.padding,
                      dilation=g.dilation, border=g.border, activation=g.activation)[0]
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)


def test_refuses_to_write_binary_to_a_terminal(tmp_path):
    main, follower = pty.openpty()
    try:
        p = convcli("apply", SAMPLE, "-o", "-", stdout=follower)
    finally:
        os.close(follower)
        os.close(main)
    assert p.returncode == 2
    assert p.stderr == (b"convcli: error: refusing to write binary image data to a terminal; "
                        b"redirect stdout (> file.png) or give an output folder with -o\n")


@pytest.mark.parametrize("args", [["--help"], ["banks"], ["bank", "show", "blur"],
                                  ["apply", "--help"]])
def test_light_commands_never_import_numba(args):
    code = ("import sys\nfrom convcli.cli import main\nsys.argv = ['convcli'] + %r\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('NUMBA' if 'numba' in sys.modules else 'CLEAN', file=sys.stderr)" % args)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.stderr.decode().strip().splitlines()[-1] == "CLEAN"


def test_unwritable_cache_folder_still_runs_and_says_so_once(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    env = dict(os.environ, CONVCLI_CACHE_DIR=str(blocked / "numba"))
    p = convcli("apply", SAMPLE, "-f", "sobel_x", "-o", tmp_path / "out", "--verbose",
                "--engine", "jit", env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.decode().splitlines()
    notes = [l for l in lines if "JIT cache folder" in l]
    assert notes == [f"engine: jit; JIT cache folder {blocked / 'numba'} is not writable (Not a "
                     "directory); kernels are compiled in memory on every run (set "
                     "CONVCLI_CACHE_DIR to a writable folder)"]
    assert (tmp_path / "out" / "chelsea" / "sobel_x.png").is_file()
    q = convcli("apply", SAMPLE, "-f", "sobel_x", "-o", tmp_path / "out", "--engine", "jit",
                env=env)
    assert q.returncode == 0 and b"JIT cache" not in q.stderr


def test_cache_goes_to_the_user_cache_folder(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("CONVCLI_CACHE_DIR", None)
    p = convcli("apply", SAMPLE, "-f", "sobel_x", "-o", tmp_path / "out", "-v", "--engine",
                "jit", env=env)
    assert p.returncode == 0, p.stderr
    cache = tmp_path / "xdg" / "convcli" / "numba"
    assert f"engine: jit; JIT cache: {cache}" in p.stderr.decode()
    assert any(cache.rglob("*.nbi")), "numba wrote no cache index"


def test_small_jobs_do_not_start_numba(tmp_path):
    p = convcli("apply", SAMPLE, SAMPLE.with_name("camera.png"), "-f", "sobel_x", "-o",
                tmp_path / "out", "-v")
    assert p.returncode == 0
    assert p.stderr.decode().splitlines()[0] == "engine: numpy (a small job: numba is not started)"


def test_head_closing_the_pipe_is_quiet():
    p = subprocess.run(f"{sys.executable} -m convcli apply {SAMPLE} -o - | head -c 10 > /dev/null;"
                       " exit ${PIPESTATUS[0]}",  # convcli's status, not head's
                       shell=True, executable="/bin/bash", capture_output=True, timeout=120)
    assert p.returncode == 0 and p.stderr == b""


def test_cache_commands(tmp_path):
    env = dict(os.environ, CONVCLI_CACHE_DIR=str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "keep.txt").write_text("not numba's")
    info = convcli("cache", "info", env=env)
    assert info.returncode == 0
    assert info.stdout.decode().splitlines() == [
        f"folder: {tmp_path / 'cache'}", "files: 0 (0.0 MiB)",
        "compiled kernels: none (run convcli cache warm)"]
    warm = convcli("cache", "warm", env=env)
    assert warm.returncode == 0 and b"engine ready in" in warm.stderr
    kernels = convcli("cache", "info", env=env).stdout.decode().splitlines()[2]
    assert kernels.startswith("compiled kernels: jit.")
    # every kernel family the engine runs was compiled and cached by warm
    assert {"jit.activate", "jit.correlate", "jit.correlate_separable", "jit.im2col",
            "jit.winograd_input", "jit.winograd_output"} <= \
        set(kernels.removeprefix("compiled kernels: ").split(", "))
    cleared = convcli("cache", "clear", env=env)
    assert cleared.returncode == 0 and cleared.stderr.startswith(b"convcli: removed ")
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == ["keep.txt"]


def test_parallel_loops_run_on_tbb_where_its_wheel_exists():
    """numba's fallback threading layer (workqueue) spends ~130 us starting each parallel
    loop, a third of a 256x256 call; pyproject.toml installs the tbb wheel on these
    platforms and convcli.jit makes it loadable from a virtual environment."""
    import platform

    code = ("import numpy as np\nfrom convcli import conv2d\n"
            "conv2d(np.ones((9, 9)), np.ones((3, 3)), method='jit')\n"
            "import numba\nprint(numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    wheel = (sys.platform, platform.machine()) in {("linux", "x86_64"), ("win32", "AMD64")}
    assert p.stdout.strip() == ("tbb" if wheel else "workqueue")
