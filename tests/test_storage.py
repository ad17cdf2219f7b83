"""Storage beyond the local file system (convcli.storage) without optional packages:
file:// URLs, fsspec's in-memory store for the upload protocol (files, then the completion
marker that --resume trusts), the messages for missing packages, and --ship (inputs sent
to the Dask workers, outputs written by the client). S3 itself: tests/test_storage_s3.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outputs import files, same_output

from convcli import storage
from convcli.cli import app
from convcli.errors import OutputError
from convcli.inputs import expand

ROOT = Path(__file__).resolve().parent.parent
fsspec = pytest.importorskip("fsspec")  # a dependency of Dask, which the test extra installs


def run(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)




@pytest.fixture
def memory():
    """fsspec's in-memory store, emptied before and after."""
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    yield fs
    fs.store.clear()


def test_urls_and_paths_are_told_apart():
    assert storage.is_url("s3://b/k") and storage.is_remote("s3://b/k")
    assert storage.is_url("file:///tmp/x") and not storage.is_remote("file:///tmp/x")
    assert not storage.is_url("photos/a.png") and not storage.is_url("C:\\x") \
        and not storage.is_url("weird:name.png")
    assert storage.local_path("file:///tmp/a%20b/x.png") == "/tmp/a b/x.png"
    assert storage.local_path("plain/path") == "plain/path"


def test_file_urls_are_paths(tmp_path):
    local = run("apply", ROOT / "samples" / "camera.png", "-f", "sobel_x", "-f", "sobel_y",
                "-o", tmp_path / "a")
    url = run("apply", f"file://{ROOT / 'samples' / 'camera.png'}", "-f", "sobel_x", "-f",
              "sobel_y", "-o", f"file://{tmp_path / 'b'}")
    assert local.exit_code == url.exit_code == 0, url.output
    assert files(tmp_path / "a") == files(tmp_path / "b") and len(files(tmp_path / "a")) == 3


def test_a_missing_package_is_named(tmp_path, monkeypatch):
    import fsspec.registry

    def missing(protocol):
        raise ImportError(f"Install {protocol}fs to access this storage")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    r = run("apply", ROOT / "samples" / "camera.png", "-o", "s3://bucket/out")
    assert r.exit_code == 2
    assert r.stderr == ("convcli: error: s3://bucket/out: s3:// needs s3fs: pip install "
                        "'convcli[s3]'\n")
    r = run("apply", "gs://bucket/photo.png", "-o", tmp_path / "o")
    assert (r.exit_code, r.stderr) == (2, "convcli: error: gs://bucket/photo.png: gs:// needs "
                                          "gcsfs: pip install gcsfs\n")
    assert fsspec.registry is not None


def test_remote_inputs_are_listed_like_folders_and_globs(memory):
    for name in ["a.png", "b.jpg", "b.png", "notes.txt", ".hidden.png", "sub/c.png"]:
        memory.pipe_file(f"/in/{name}", b"x")
    found = expand(["memory://in"])
    assert [(s.label, s.rel) for s in found.sources] == [
        ("memory://in/a.png", "a"), ("memory://in/b.jpg", "b_jpg"),
        ("memory://in/b.png", "b_png")]
    assert found.skipped == ["memory://in/notes.txt"]
    deep = expand(["memory://in"], recursive=True)
    assert [s.rel for s in deep.sources] == ["a", "b_jpg", "b_png", "sub/c"]
    globbed = expand(["memory://in/*.png"])
    assert [s.label for s in globbed.sources] == ["memory://in/a.png", "memory://in/b.png"]
    one = expand(["memory://in/sub/c.png"]).sources
    assert [(s.url, s.rel) for s in one] == [("memory://in/sub/c.png", "c")]
    nothing = expand(["memory://in/*.gif"]).sources
    assert nothing[0].problem == "memory://in/*.gif: no files match this pattern"


def test_remote_outputs_are_uploaded_then_marked_complete(memory, tmp_path):
    photo = (ROOT / "samples" / "camera.png").read_bytes()
    memory.pipe_file("/in/cam.png", photo)
    r = run("apply", "memory://in/cam.png", "-f", "sobel_x", "-f", "sobel_y", "-o",
            "memory://out", "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    assert row["outputs"] == ["memory://out/cam/sobel_x.png", "memory://out/cam/sobel_y.png",
                              "memory://out/cam/stack.png"]
    local = run("apply", ROOT / "samples" / "camera.png", "-f", "sobel_x", "-f", "sobel_y",
                "-o", tmp_path / "o")
    assert local.exit_code == 0
    for name, data in files(tmp_path / "o" / "camera").items():
        assert same_output(memory.cat_file(f"/out/cam/{name}"), data), name
    marker = json.loads(memory.cat_file("/out/cam/" + storage.MARKER))
    assert marker["files"] == ["sobel_x.png", "sobel_y.png", "stack.png"]

    again = run("apply", "memory://in/cam.png", "-f", "sobel_x", "-f", "sobel_y", "-o",
                "memory://out", "--json", "--resume")
    assert json.loads(again.stdout)["status"] == "skipped"
    # Other settings: the marker does not match, so the input is made again.
    other = run("apply", "memory://in/cam.png", "-f", "sobel_x", "-f", "sobel_y", "--bits",
                "16", "-o", "memory://out", "--json", "--resume")
    assert json.loads(other.stdout)["status"] == "ok"
    # Files without their marker (an upload cut short) are not trusted.
    memory.rm_file("/out/cam/" + storage.MARKER)
    redo = run("apply", "memory://in/cam.png", "-f", "sobel_x", "-f", "sobel_y", "--bits",
               "16", "-o", "memory://out", "--json", "--resume")
    assert json.loads(redo.stdout)["status"] == "ok"
    assert memory.exists("/out/cam/" + storage.MARKER)


def test_an_upload_cut_short_leaves_no_marker(memory, monkeypatch):
    storage.upload("memory://out/x", [("a.png", b"1"), ("b.png", b"2")], "key")
    assert memory.exists("/out/x/" + storage.MARKER)
    real = type(memory).pipe_file

    def failing(self, path, value, **kwargs):
        if path.endswith("b.png"):
            raise OSError(28, "No space left on device")
        return real(self, path, value, **kwargs)

    monkeypatch.setattr(type(memory), "pipe_file", failing)
    with pytest.raises(OutputError) as e:
        storage.upload("memory://out/x", [("a.png", b"3"), ("b.png", b"4")], "key")
    assert str(e.value) == "memory://out/x: cannot write: No space left on device"
    # The old marker went before any file was replaced: the half-new set is not trusted.
    assert not memory.exists("/out/x/" + storage.MARKER)


def test_an_unreadable_remote_input_is_one_line(memory, tmp_path):
    r = run("apply", "memory://in/missing.png", "-o", tmp_path / "o", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["error"] == "memory://in/missing.png: not found"


def test_an_unwritable_output_url_fails_before_any_work(memory, monkeypatch):
    def refuse(self, path, value, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(memory), "pipe_file", refuse)
    r = run("apply", ROOT / "samples" / "camera.png", "-o", "memory://out")
    assert (r.exit_code, r.stderr) == (1, "convcli: error: memory://out: cannot write there: "
                                          "Permission denied\n")


# --- --ship: workers that see none of the client's files ------------------------------------

# A Dask preload module: in the workers, any open, rename or listing of a path below the
# test's folders fails, as on a machine that does not mount them.
BLIND = """
import builtins, io, os

roots = tuple(os.environ['CONVCLI_BLIND'].split(os.pathsep))

def hidden(path):
    try:
        return os.path.abspath(os.fspath(path)).startswith(roots)
    except TypeError:
        return False

def guard(real):
    def guarded(path, *args, **kwargs):
        if hidden(path):
            raise FileNotFoundError(2, 'No such file or directory', str(path))
        return real(path, *args, **kwargs)
    return guarded

builtins.open = io.open = guard(io.open)
os.open, os.replace, os.stat, os.scandir = (guard(os.open), guard(os.replace),
                                            guard(os.stat), guard(os.scandir))
"""


def test_shipping_works_with_workers_that_see_no_files(tmp_path, monkeypatch):
    import dask
    import distributed  # noqa: F401  its defaults in Dask's configuration before we set one

    photos = tmp_path / "in"
    photos.mkdir()
    for name in ["camera.png", "coffee.png", "chelsea.png"]:
        (photos / name).write_bytes((ROOT / "samples" / name).read_bytes())
    (photos / "broken.png").write_text("not an image")
    blind = tmp_path / "blind.py"
    blind.write_text(BLIND)
    monkeypatch.setenv("CONVCLI_BLIND", str(tmp_path))
    local = run("apply", photos, "-f", "sobel_x", "-f", "log_2", "-o", tmp_path / "a", "-j", "1")
    with dask.config.set({"distributed.worker.preload": [str(blind)]}):
        # Without shipping, these workers cannot see the output folder: the run stops.
        plain = run("apply", photos, "-f", "sobel_x", "-f", "log_2", "-o", tmp_path / "b",
                    "--scheduler", "local")
        assert plain.exit_code == 1 and "a worker cannot write there" in plain.stderr
        shipped = run("apply", photos, "-f", "sobel_x", "-f", "log_2", "-o", tmp_path / "c",
                      "--scheduler", "local", "--ship", "--json")
    assert local.exit_code == shipped.exit_code == 3, shipped.output  # broken.png in both
    assert files(tmp_path / "a") == files(tmp_path / "c") and len(files(tmp_path / "c")) == 9
    rows = {Path(row["input"]).name: row for row in map(json.loads, shipped.stdout.splitlines())}
    assert rows["broken.png"]["status"] == "error"
    assert rows["camera.png"]["outputs"] == [str(tmp_path / "c" / "camera" / n)
                                             for n in ("sobel_x.png", "log_2.png", "stack.png")]
    # --resume looks at the client's folder: done inputs are not shipped again.
    (tmp_path / "c" / "coffee" / "stack.png").unlink()
    with dask.config.set({"distributed.worker.preload": [str(blind)]}):
        again = run("apply", photos, "-f", "sobel_x", "-f", "log_2", "-o", tmp_path / "c",
                    "--scheduler", "local", "--ship", "--json", "--resume")
    statuses = {Path(row["input"]).name: row["status"]
                for row in map(json.loads, again.stdout.splitlines())}
    assert statuses == {"camera.png": "skipped", "chelsea.png": "skipped", "coffee.png": "ok",
                        "broken.png": "error"}
    assert files(tmp_path / "a") == files(tmp_path / "c")


def test_stdin_can_be_shipped(tmp_path):
    photo = (ROOT / "samples" / "camera.png").read_bytes()
    plain = run("apply", "-", "-o", tmp_path / "a", "--scheduler", "local", input=photo)
    assert plain.exit_code == 2 and "ship the inputs (see --ship)" in plain.stderr
    r = run("apply", "-", "-f", "sobel_x", "-o", tmp_path / "b", "--scheduler", "local",
            "--ship", input=photo)
    assert r.exit_code == 0, r.output
    assert sorted(files(tmp_path / "b")) == ["stdin/sobel_x.png"]


def test_shipping_needs_a_cluster(tmp_path):
    r = run("apply", ROOT / "samples" / "camera.png", "-o", tmp_path / "o", "--ship")
    assert (r.exit_code, r.stderr) == (2, "convcli: error: shipping inputs to workers needs a "
                                          "cluster (see --ship, --scheduler)\n")


def test_the_pool_takes_file_urls(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        os.symlink(ROOT / "samples" / "camera.png", folder / f"c{i}.png")
    r = subprocess.run([sys.executable, "-m", "convcli", "apply", f"file://{folder}", "-f",
                        "sobel_x", "-o", f"file://{tmp_path / 'o'}", "-j", "2", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(files(tmp_path / "o")) == [f"c{i}/sobel_x.png" for i in range(3)]
    assert sorted(json.loads(line)["input"] for line in r.stdout.splitlines()) == \
        [str(folder / f"c{i}.png") for i in range(3)]


def test_shared_ranges_first_pass_uploads_nothing(memory, tmp_path, monkeypatch):
    """--scale-shared's first pass only finds ranges: no file and no marker reaches the
    store before the second pass writes each input once."""
    for name in ("camera", "brick"):
        memory.pipe_file(f"/in/{name}.png", (ROOT / "samples" / f"{name}.png").read_bytes())
    written: list[str] = []
    pipe = type(memory).pipe_file

    def recording(self, path, *args, **kwargs):
        written.append(str(path))
        return pipe(self, path, *args, **kwargs)

    monkeypatch.setattr(type(memory), "pipe_file", recording)
    args = ["-f", "sobel_x", "-f", "sobel_y", "--scale-shared", "-j", "1"]
    r = run("apply", "memory://in", *args, "-o", "memory://out", "--json")
    assert r.exit_code == 0, r.output
    markers = [p for p in written if p.endswith(storage.MARKER)]
    assert sorted(markers) == ["/out/brick/" + storage.MARKER, "/out/camera/" + storage.MARKER]
    local = run("apply", ROOT / "samples" / "camera.png", ROOT / "samples" / "brick.png",
                *args, "-o", tmp_path / "o")
    assert local.exit_code == 0, local.output
    for name, data in files(tmp_path / "o" / "camera").items():
        assert same_output(memory.cat_file(f"/out/camera/{name}"), data), name
