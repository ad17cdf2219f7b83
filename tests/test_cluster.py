"""--scheduler: the same batch on a real Dask LocalCluster (several worker processes)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from convcli.cli import app

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(["camera.png", "chelsea.png", "coffee.png", "brick.png"]):
        os.symlink(ROOT / "samples" / name, folder / f"p{i}.png")
    (folder / "broken.png").write_text("not an image")
    return folder


def test_same_outputs_and_report_as_the_local_pool(tmp_path, photos):
    local = run("apply", photos, "-f", "sobel_x", "-f", "log_2", "-o", tmp_path / "a", "--json")
    dask = run("apply", photos, "-f", "sobel_x", "-f", "log_2", "-o", tmp_path / "b", "--json",
               "--scheduler", "local")
    assert local.exit_code == dask.exit_code == 3, dask.output  # the broken one fails in both
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a == b and len(a) == 4 * 3

    def records(r, out):
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        for row in rows:
            row.pop("seconds")
            row["outputs"] = [os.path.relpath(p, out) for p in row["outputs"]]
        return sorted(rows, key=lambda row: row["input"])
    assert records(local, tmp_path / "a") == records(dask, tmp_path / "b")
    bad = [row for row in records(dask, tmp_path / "b") if row["status"] == "error"]
    assert [row["input"] for row in bad] == [str(photos / "broken.png")]


def test_resume_on_the_cluster(tmp_path, photos):
    args = ["apply", photos / "p0.png", photos / "p1.png", "-f", "sobel_x", "-f", "sobel_y",
            "-o", tmp_path / "o", "--scheduler", "local", "--json"]
    assert run(*args).exit_code == 0
    again = run(*args, "--resume")
    assert {json.loads(l)["status"] for l in again.stdout.splitlines()} == {"skipped"}


def test_without_dask_the_option_says_how_to_get_it(tmp_path, photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    r = run("apply", photos / "p0.png", "-o", tmp_path / "o", "--scheduler", "local")
    assert r.exit_code == 2
    assert r.stderr == "convcli: error: --scheduler needs Dask: pip install 'convcli[dask]'\n"


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_a_killed_worker_costs_only_a_retry(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(16):
        os.symlink(ROOT / "samples" / ["astronaut.png", "coffee.png"][i % 2], folder / f"i{i}.png")
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "apply", str(folder), "-o", str(out),
                             "--scheduler", "local", "--json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/stack.png"))) < 2:
        time.sleep(0.1)
    leaves = [p for p in _descendants(proc.pid) if not _descendants(p)]
    assert leaves, "no worker processes found"
    os.kill(leaves[-1], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert sorted(Path(json.loads(l)["input"]).name for l in stdout.splitlines()) == \
        sorted(p.name for p in folder.iterdir())
    visible = [p for p in out.rglob("*") if p.is_file()]
    assert len(visible) == 16 * 17 and not any(p.name.startswith(".") for p in visible)
    for p in visible:
        with Image.open(p) as im:
            im.load()
