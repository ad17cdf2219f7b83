"""--scheduler: the same batch on a real Dask LocalCluster (several worker processes)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from stopping import descendants, kill_a_worker_inside_an_input

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


def test_tasks_carry_several_inputs_and_shrink_towards_the_end():
    from convcli.cluster import MAX_PER_TASK, task_sizes

    sizes = task_sizes(200, 2)
    assert sum(sizes) == 200 and sizes == sorted(sizes, reverse=True)
    assert sizes[0] == MAX_PER_TASK and sizes[-5:] == [1] * 5 and len(sizes) < 40
    assert task_sizes(5, 2) == [1] * 5 and task_sizes(0, 2) == []
    assert task_sizes(10**6, 100)[:1000] == [MAX_PER_TASK] * 1000


def test_same_outputs_and_report_as_the_local_pool(tmp_path, photos, monkeypatch):
    from convcli import cluster

    monkeypatch.setattr(cluster, "TASK_SHARE", 1)  # 5 inputs: tasks of 3, 1 and 1
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


def test_fail_fast_on_the_cluster_stops_after_the_first_failure(tmp_path, photos,
                                                                monkeypatch):
    from convcli import cluster

    monkeypatch.setattr(cluster, "TASK_SHARE", 1)  # [broken, p0, p1], [p2], [p3]
    r = run("apply", photos, "-f", "sobel_x", "-o", tmp_path / "o", "--json", "--fail-fast",
            "--scheduler", "local")
    assert r.exit_code == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    failed = [row["input"] for row in rows if row["status"] == "error"]
    assert failed == [str(photos / "broken.png")]
    assert not (tmp_path / "o" / "p0").exists()  # its task stopped at the broken input
    assert len(rows) < 5  # later tasks were cancelled or stopped before their next input
    for row in rows:
        assert all(Path(p).is_file() for p in row["outputs"])


def test_an_input_that_kills_its_workers_fails_alone(tmp_path, photos, monkeypatch):
    import dask

    from convcli import cluster

    # A Dask preload module runs in every worker, restarted ones too: p1 crashes it.
    crash = tmp_path / "crash_on_p1.py"
    crash.write_text("import os\nfrom convcli import pipeline\n\n"
                     "real = getattr(pipeline, 'real_process', pipeline.process)\n\n\n"
                     "def process(source, bank, options, *rest):\n"
                     "    if source.label.endswith('p1.png'):\n"
                     "        os._exit(1)  # as a crashing decoder would\n"
                     "    return real(source, bank, options, *rest)\n\n\n"
                     "pipeline.real_process, pipeline.process = real, process\n")
    monkeypatch.setattr(cluster, "TASK_SHARE", 1)  # p1 shares a task with broken and p0
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.worker.preload": [str(crash)]}):
        r = run("apply", photos, "-f", "sobel_x", "-o", tmp_path / "o", "--json",
                "--scheduler", "local")
    assert r.exit_code == 3
    rows = {Path(row["input"]).name: row for row in map(json.loads, r.stdout.splitlines())}
    assert sorted(rows) == ["broken.png", "p0.png", "p1.png", "p2.png", "p3.png"]
    assert rows["p1.png"]["status"] == "error"
    assert rows["p1.png"]["error"] == (f"{photos / 'p1.png'}: failed on the cluster: every "
                                       "worker that ran it died (see the workers' logs)")
    assert sorted(n for n, row in rows.items() if row["status"] == "ok") == ["p0.png", "p2.png",
                                                                             "p3.png"]
    assert sorted(p.parent.name for p in (tmp_path / "o").rglob("*.png")) == ["p0", "p2", "p3"]


def test_a_worker_that_cannot_write_the_output_folder_stops_the_run(tmp_path, photos):
    import dask

    # A preload module runs in every worker: there, the output folder refuses writes, as on
    # a machine that does not mount the share.
    refuse = tmp_path / "refuse_writes.py"
    refuse.write_text("import types\nfrom convcli import cluster\n\n\n"
                      "def refuse(*args, **kwargs):\n"
                      "    raise PermissionError(13, 'Permission denied')\n\n\n"
                      "cluster.tempfile = types.SimpleNamespace(NamedTemporaryFile=refuse)\n")
    with dask.config.set({"distributed.worker.preload": [str(refuse)]}):
        r = run("apply", photos / "p0.png", photos / "p1.png", "-o", tmp_path / "o",
                "--scheduler", "local")
    assert r.exit_code == 1
    assert r.stderr == (f"convcli: error: {tmp_path / 'o'}: a worker cannot write there "
                        "([Errno 13] Permission denied); the output folder must be on storage "
                        "every worker sees, or the data shipped (see --ship)\n")
    assert r.stdout == "" and not list((tmp_path / "o").rglob("*.png"))


def test_a_local_cluster_run_prints_nothing_but_the_report(tmp_path, photos):
    """Workers are forked from the client (faster start); nothing of Dask's or numba's may
    reach the terminal, e.g. numba's warning about forking its threading layer."""
    p = subprocess.run([sys.executable, "-m", "convcli", "apply", photos / "p0.png",
                        photos / "p1.png", "-o", tmp_path / "o", "--engine", "jit", "-q",
                        "--scheduler", "local"], capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    assert len(list((tmp_path / "o").rglob("*.png"))) == 2 * 17


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
    assert r.stderr == ("convcli: error: running on a cluster needs Dask: pip install "
                        "'convcli[dask]' (see --scheduler)\n")




@pytest.mark.parametrize("sig, group, code", [(signal.SIGINT, True, 130),
                                              (signal.SIGTERM, False, 143)])
def test_ctrl_c_stops_cleanly_and_reports_everything_written(tmp_path, sig, group, code):
    """Ctrl-C in a terminal reaches the whole process group, the local workers included;
    SIGTERM (a job scheduler) only convcli. Either way: tasks not started are cancelled,
    running ones finish their current input, and every file written is reported."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):  # tasks of 5, 5, 4, ... inputs
        os.symlink(ROOT / "samples" / ["astronaut.png", "coffee.png"][i % 2], folder / f"i{i}.png")
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "apply", str(folder), "-o", str(out),
                             "--scheduler", "local", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/stack.png"))) < 4:
        time.sleep(0.05)
    (os.killpg if group else os.kill)(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert re.fullmatch(r"convcli: interrupted after (\d+) of 40 inputs: \1 done in .*\n", stderr)
    reported = [json.loads(line) for line in stdout.splitlines()]
    assert 4 <= len(reported) < 40
    written = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert written == sorted(Path(os.path.relpath(p, out)) for row in reported
                             for p in [Path(row["outputs"][0]).parent] + row["outputs"])
    for p in out.rglob("*.png"):
        with Image.open(p) as im:
            im.load()


def test_a_killed_worker_costs_only_a_retry(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(16):
        os.symlink(ROOT / "samples" / ["astronaut.png", "coffee.png"][i % 2], folder / f"i{i}.png")
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "apply", str(folder), "-o", str(out),
                             "--scheduler", "local", "--json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill a worker while it is provably inside an input: its staging folder, named with
    # its process id, exists.
    victim = kill_a_worker_inside_an_input(out, proc, lambda pid: pid in descendants(proc.pid))
    assert victim is not None, "never saw a worker inside an input"
    stdout, stderr = proc.communicate(timeout=300)
    assert (proc.returncode, stderr) == (0, "")  # -q, and Dask's log stays out of the way
    assert sorted(Path(json.loads(l)["input"]).name for l in stdout.splitlines()) == \
        sorted(p.name for p in folder.iterdir())
    visible = [p for p in out.rglob("*") if p.is_file()]
    assert len(visible) == 16 * 17 and not any(p.name.startswith(".") for p in visible)
    for p in visible:
        with Image.open(p) as im:
            im.load()

# Real `dask scheduler` and `dask worker` processes, killed: tests/test_cluster_real.py.
