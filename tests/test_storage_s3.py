"""Inputs and outputs on S3 (s3:// URLs through s3fs, the optional extra), against a local
S3 endpoint the tests start: moto's server on 127.0.0.1. Read and written by the workers of
the local pool and of a Dask cluster, each input's files then its completion marker, and
--resume going by the markers. Needs the test extra (s3fs, moto, flask)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")
pytest.importorskip("flask_cors")  # moto's server needs it

from outputs import same_output  # noqa: E402

from convcli import storage  # noqa: E402
from convcli.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FILTERS = ["-f", "sobel_x", "-f", "log_2"]




@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    """A fresh bucket with four photos and a broken one under in/, reached by this process
    and by every process it starts through the usual AWS variables."""
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    bucket = f"b{os.getpid()}-{tmp_path.name.lower().replace('_', '-')}"[:60].rstrip("-")
    fs.mkdir(bucket)
    local = tmp_path / "in"
    local.mkdir()
    for name in ["camera.png", "chelsea.png", "coffee.png", "brick.png"]:
        (local / name).write_bytes((ROOT / "samples" / name).read_bytes())
        fs.pipe_file(f"{bucket}/in/{name}", (local / name).read_bytes())
    (local / "broken.png").write_text("not an image")
    fs.pipe_file(f"{bucket}/in/broken.png", b"not an image")
    yield fs, bucket, local
    s3fs.S3FileSystem.clear_instance_cache()


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def rows(stdout: str) -> dict[str, dict]:
    return {Path(row["input"]).name: row for row in map(json.loads, stdout.splitlines())}


def check_against_local(fs, bucket: str, local_out: Path) -> None:
    """Every input done locally is on S3 with the same bytes, and its marker is there."""
    for folder in [p for p in local_out.iterdir() if p.is_dir()]:
        names = sorted(p.name for p in folder.iterdir())
        for name in names:
            assert same_output(fs.cat_file(f"{bucket}/out/{folder.name}/{name}"),
                               (folder / name).read_bytes()), name
        marker = json.loads(fs.cat_file(f"{bucket}/out/{folder.name}/{storage.MARKER}"))
        assert sorted(marker["files"]) == names


@pytest.mark.parametrize("backend", [["-j", "2"], ["--scheduler", "local"]])
def test_s3_in_and_out_same_bytes_as_local_files(s3, tmp_path, backend):
    fs, bucket, local = s3

    def convcli(*args):  # in a subprocess: the pool forks from it, the cluster's workers too
        return subprocess.run([sys.executable, "-m", "convcli", "apply", *map(str, args),
                               *FILTERS, "--json", *backend],
                              capture_output=True, text=True, timeout=600)

    mine = convcli(local, "-o", tmp_path / "o")
    r = convcli(f"s3://{bucket}/in", "-o", f"s3://{bucket}/out")
    assert mine.returncode == r.returncode == 3, r.stderr  # broken.png fails in both
    check_against_local(fs, bucket, tmp_path / "o")
    report = rows(r.stdout)
    assert report["broken.png"]["status"] == "error" and \
        report["broken.png"]["input"] == f"s3://{bucket}/in/broken.png"
    assert report["camera.png"]["outputs"] == [f"s3://{bucket}/out/camera/{n}" for n in
                                               ("sobel_x.png", "log_2.png", "stack.png")]
    assert not fs.exists(f"{bucket}/out/broken")  # a failed input leaves nothing


def test_resume_goes_by_the_markers(s3, tmp_path):
    fs, bucket, _ = s3
    args = ["apply", f"s3://{bucket}/in/*.png", *FILTERS, "-o", f"s3://{bucket}/out",
            "--json", "-j", "1"]
    assert run(*args).exit_code == 3
    fs.rm_file(f"{bucket}/out/coffee/{storage.MARKER}")  # as if its upload had been cut
    before = fs.cat_file(f"{bucket}/out/camera/stack.png")
    again = run(*args, "--resume")
    statuses = {name: row["status"] for name, row in rows(again.stdout).items()}
    assert statuses == {"brick.png": "skipped", "camera.png": "skipped", "chelsea.png": "skipped",
                        "coffee.png": "ok", "broken.png": "error"}
    assert fs.exists(f"{bucket}/out/coffee/{storage.MARKER}")
    assert fs.cat_file(f"{bucket}/out/camera/stack.png") == before


def test_a_bucket_that_does_not_exist_fails_before_any_work(s3):
    _, bucket, local = s3
    r = run("apply", local / "camera.png", "-o", f"s3://{bucket}-missing/out")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"convcli: error: s3://{bucket}-missing/out: cannot write there: ")
    assert len(r.stderr.splitlines()) == 1
