"""--scheduler against a real `dask scheduler` and real `dask worker` processes (not a
LocalCluster), each killed at some moment: a worker mid-run and during its set-up, the
scheduler, the client's connection (a proxy the test cuts), and convcli itself by SIGINT
or SIGTERM. Every run must end in bounded time with exact reports, leave only complete
folders, leave nothing registered on the scheduler, and --resume must finish with the
local pool's bytes."""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stopping import descendants, kill_a_worker_inside_an_input

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parent.parent
FILES_PER_INPUT = 17  # the edge bank: 16 maps and the stack
INPUTS = 16


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def convcli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "convcli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def start_scheduler(folder: Path) -> tuple[subprocess.Popen, str]:
    log = folder / f"scheduler-{time.time_ns()}.log"
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                             "127.0.0.1", "--port", "0", "--dashboard-address", ":0"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        found = re.search(r"Scheduler at:\s+(tcp://\S+)", log.read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.1)
    kill(proc)
    raise AssertionError("the scheduler did not start")


def start_worker(address: str, *extra: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                             "--nthreads", "1", "--no-dashboard", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def kill(*procs) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=60)


def wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(n, timeout=120)




def _what_is_left(dask_scheduler):  # runs on the scheduler (sent by value: a nested name)
    events = dask_scheduler.extensions["events"]._events
    return {"plugins": sorted(n for n in dask_scheduler.worker_plugins if "convcli" in n),
            "tasks": len(dask_scheduler.tasks),
            "events": sorted(str(n) for n in events if "convcli" in str(n)),
            # Workers' own clients (for the stop event) live as long as their workers.
            "clients": len([c for c in dask_scheduler.clients
                            if c != "fire-and-forget" and "-worker-" not in c])}


def left_on(address: str) -> dict:
    """What convcli left on the scheduler, once its own client has gone (the scheduler
    notices a closed connection a moment later)."""
    import types

    from distributed import Client

    probe = types.FunctionType(_what_is_left.__code__, {}, "probe")  # sent by value
    with Client(address, timeout="60s") as client:
        deadline = time.time() + 60
        while True:
            left = client.run_on_scheduler(probe)
            if left["clients"] <= 1 and left["tasks"] == 0 or time.time() > deadline:
                left["clients"] -= 1  # this one
                return left


NOTHING = {"plugins": [], "tasks": 0, "events": [], "clients": 0}


def wait_for_stacks(out: Path, n: int, proc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("*/stack.png"))) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"never saw {n} inputs done: {proc.poll()}")


def complete_folders(out: Path) -> set[str]:
    """The inputs whose folders are on disk, each proven complete (no partial folder)."""
    folders = [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    for p in folders:
        assert len(list(p.iterdir())) == FILES_PER_INPUT, p
    return {p.name for p in folders}


def reported(stdout: str) -> set[str]:
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert all(row["status"] == "ok" for row in rows)
    return {Path(row["outputs"][0]).parent.name for row in rows}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real") / "many"
    folder.mkdir()
    for i in range(INPUTS):
        os.symlink(ROOT / "samples" / ["astronaut.png", "coffee.png"][i % 2], folder / f"i{i}.png")
    return folder


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> dict[str, bytes]:
    """The local pool's bytes for the photos."""
    out = tmp_path_factory.mktemp("pool") / "o"
    p = subprocess.run([sys.executable, "-m", "convcli", "apply", photos, "-o", out, "-j", "2",
                        "-q"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    made = files(out)
    assert len(made) == INPUTS * FILES_PER_INPUT
    return made


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two one-thread workers (each a nanny that restarts its worker)."""
    folder = tmp_path_factory.mktemp("cluster")
    scheduler, address = start_scheduler(folder)
    workers = [start_worker(address), start_worker(address)]
    try:
        wait_for_workers(address, 2)
        yield address, workers
    finally:
        kill(*workers, scheduler)


def test_a_killed_worker_costs_a_retry_and_the_bytes_equal_the_pool(tmp_path, photos,
                                                                   reference, cluster):
    address, workers = cluster
    wait_for_workers(address, 2)
    out = tmp_path / "o"
    proc = convcli("apply", photos, "-o", out, "--scheduler", address, "--json", "-q")
    pids = lambda: {pid for w in workers for pid in descendants(w.pid)}  # noqa: E731
    victim = kill_a_worker_inside_an_input(out, proc, lambda pid: pid in pids())
    assert victim is not None, "never saw a worker inside an input"
    stdout, stderr = proc.communicate(timeout=600)
    assert (proc.returncode, stderr) == (0, "")
    assert len(stdout.splitlines()) == INPUTS and len(reported(stdout)) == INPUTS
    assert files(out) == reference
    assert left_on(address) == NOTHING


def test_a_worker_that_dies_during_its_set_up_costs_nothing(tmp_path, photos, reference):
    # A preload module runs in every worker process the nanny starts: the first one dies
    # inside convcli's set-up (as on an out-of-memory kill), the restarted one goes on.
    marker = tmp_path / "died"
    preload = tmp_path / "die_in_set_up.py"
    preload.write_text("import os\nfrom convcli import workers\n\n"
                       "real = workers.set_up\n\n\n"
                       "def set_up(config):\n"
                       "    if not os.path.exists(os.environ['DIE_MARKER']):\n"
                       "        open(os.environ['DIE_MARKER'], 'w').close()\n"
                       "        os._exit(1)\n"
                       "    real(config)\n\n\n"
                       "workers.set_up = set_up\n")
    scheduler, address = start_scheduler(tmp_path)
    worker = start_worker(address, "--preload", str(preload),
                          env=dict(os.environ, DIE_MARKER=str(marker)))
    out = tmp_path / "o"
    try:
        wait_for_workers(address, 1)
        proc = convcli("apply", photos, "-o", out, "--scheduler", address, "--json", "-q")
        stdout, stderr = proc.communicate(timeout=600)
        assert marker.exists()  # it did die in its set-up
        assert (proc.returncode, stderr) == (0, "")
        assert len(reported(stdout)) == INPUTS and files(out) == reference
        assert left_on(address) == NOTHING
    finally:
        kill(worker, scheduler)


def test_a_dead_scheduler_ends_the_run_then_resume_finishes_it(tmp_path, photos, reference,
                                                              cluster):
    scheduler, address = start_scheduler(tmp_path)
    worker = start_worker(address)
    out = tmp_path / "o"
    try:
        wait_for_workers(address, 1)
        proc = convcli("apply", photos, "-o", out, "--scheduler", address, "--json")
        wait_for_stacks(out, 2, proc)
        kill(scheduler)
        # Dask's reconnect timeout (10 s) and a little more; never the 300+ s it took.
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        kill(scheduler, worker)
    assert proc.returncode == 1, stderr
    lines = stderr.splitlines()
    assert "Traceback" not in stderr and len(lines) == 2, stderr
    assert lines[0] == (f"convcli: error: {address}: lost the connection to the Dask "
                        "scheduler; the inputs whose files were complete are reported, "
                        "resuming does the rest (see --scheduler, --resume)")
    done = complete_folders(out)
    assert reported(stdout) == done and 2 <= len(done) < INPUTS
    assert re.fullmatch(rf"convcli: interrupted after {len(done)} of {INPUTS} inputs: "
                        rf"{len(done)} done in .*", lines[1])
    # --resume on another cluster does the rest, with the local pool's bytes.
    again, _ = cluster
    proc = convcli("apply", photos, "-o", out, "--scheduler", again, "--json", "-q",
                   "--resume")
    stdout, stderr = proc.communicate(timeout=600)
    assert (proc.returncode, stderr) == (0, "")
    statuses = [json.loads(line)["status"] for line in stdout.splitlines()]
    assert statuses.count("skipped") == len(done) and statuses.count("ok") == INPUTS - len(done)
    assert files(out) == reference


class Proxy:
    """A TCP relay on 127.0.0.1 to the scheduler, which the test can cut: every
    connection closed and no new one accepted, as when a network link goes down."""

    def __init__(self, target: str):
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.cut_off = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_off.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        while not self.cut_off.is_set():
            try:
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return self._close(a, b)
                    (b if s is a else a).sendall(data)
            except (OSError, ValueError):
                return self._close(a, b)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        self.cut_off.set()
        self._close(self.listener, *self.sockets)


def test_a_cut_connection_ends_the_run_and_the_next_run_tidies_up(tmp_path, photos,
                                                                 reference, cluster):
    address, _ = cluster
    wait_for_workers(address, 2)
    proxy = Proxy(address)
    out = tmp_path / "o"
    proc = convcli("apply", photos, "-o", out, "--scheduler", proxy.address, "--json")
    wait_for_stacks(out, 2, proc)
    proxy.cut()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    lines = stderr.splitlines()
    assert "Traceback" not in stderr and len(lines) == 2, stderr
    assert lines[0].startswith(f"convcli: error: {proxy.address}: lost the connection to the "
                               "Dask scheduler;")
    # Workers may finish the input they were in when the link went down (nobody can tell
    # them to stop): every folder is complete, and every reported one is on disk.
    done = reported(stdout)
    assert done <= complete_folders(out) and len(done) >= 2, stderr
    # The cut client could not unregister its set-up; the next run on that scheduler does,
    # and --resume finishes with the local pool's bytes.
    assert len(left_on(address)["plugins"]) == 1
    proc = convcli("apply", photos, "-o", out, "--scheduler", address, "--json", "-q",
                   "--resume")
    stdout, stderr = proc.communicate(timeout=600)
    assert (proc.returncode, stderr) == (0, "")
    assert files(out) == reference
    assert left_on(address) == NOTHING


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_running_stops_cleanly(tmp_path, photos, cluster, sig, code):
    address, _ = cluster
    wait_for_workers(address, 2)
    out = tmp_path / "o"
    proc = convcli("apply", photos, "-o", out, "--scheduler", address, "--json")
    wait_for_stacks(out, 2, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert re.fullmatch(r"convcli: interrupted after (\d+) of 16 inputs: \1 done in .*\n", stderr)
    assert reported(stdout) == complete_folders(out)
    assert left_on(address) == NOTHING


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_scheduler_is_being_reconnected(tmp_path, photos, sig, code):
    scheduler, address = start_scheduler(tmp_path)
    worker = start_worker(address)
    out = tmp_path / "o"
    try:
        wait_for_workers(address, 1)
        proc = convcli("apply", photos, "-o", out, "--scheduler", address, "--json")
        wait_for_stacks(out, 2, proc)
        kill(scheduler)
        time.sleep(1)  # the client notices, and tries to reconnect for 10 s
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        kill(scheduler, worker)
    assert proc.returncode == code, stderr
    assert re.fullmatch(r"convcli: interrupted after (\d+) of 16 inputs: \1 done in .*\n", stderr)
    assert reported(stdout) == complete_folders(out)


@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_waiting_for_workers(tmp_path, photos, sig, code, line):
    scheduler, address = start_scheduler(tmp_path)
    try:
        proc = convcli("apply", photos, "-o", tmp_path / "o", "--scheduler", address)
        deadline = time.time() + 60  # until convcli's client has reached the scheduler
        while time.time() < deadline and not re.search(
                "Receive client connection", "".join(p.read_text()
                                                      for p in tmp_path.glob("scheduler-*"))):
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert (proc.returncode, stdout, stderr) == (code, "", f"convcli: {line}\n")
        assert left_on(address) == NOTHING
    finally:
        kill(scheduler)


def test_a_scheduler_without_workers_says_what_to_start(tmp_path, photos):
    scheduler, address = start_scheduler(tmp_path)
    try:
        p = subprocess.run([sys.executable, "-m", "convcli", "apply", str(photos), "-o",
                            str(tmp_path / "o"), "--scheduler", address],
                           capture_output=True, text=True, timeout=120)
        assert left_on(address) == NOTHING
    finally:
        kill(scheduler)
    assert p.returncode == 1
    assert p.stderr == (f"convcli: error: {address}: the Dask scheduler has no workers (waited "
                        f"10 s); start some with: dask worker {address} (see --scheduler)\n")
