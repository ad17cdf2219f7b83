"""What a run promises whatever happens: outputs only inside the output folder, each input's
outputs complete or absent, reports that count exactly what is on disk, no process left
behind, and exit codes that say what happened. Hostile names come from a generator, and
stops (SIGTERM to the process group, Ctrl-C, SIGKILL of the parent) hit real runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from stopping import kill_a_worker_inside_an_input

from convcli import inputs

ROOT = Path(__file__).resolve().parent.parent
EDGE_FILES = 17  # 16 edge filters and the stack


def convcli(*args):
    return [sys.executable, "-m", "convcli", *map(str, args)]


def tiny_png(path: Path, seed: int = 0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="PNG")
    return path


def snapshot(folder: Path) -> dict[str, int]:
    """Every file below folder with its modification time (to prove nothing else changed)."""
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# --- output names: a generator of hostile input names ----------------------------------------

OUTPUT_FILE_SUFFIXES = (".png", ".npy", ".json")
name_parts = st.one_of(
    st.sampled_from(["", ".", "..", "...", "....png", "..png", ".png", ".hidden", "stack",
                     "stack.png", "maps.npy", "maps.json", "by-filter", "BY-FILTER", "x.png",
                     "a\nb", "\x1b[31mred", "-rf", "~", "$(x)", "ü", "e\u0301", "CON", " "]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
            min_size=1, max_size=12),
)
suffixes = st.sampled_from([".png", ".PNG", ".jpg", ".png.png", ".npy", "", ".", ".tar.gz"])


@given(st.lists(st.tuples(st.lists(name_parts, min_size=0, max_size=3), name_parts, suffixes),
                min_size=1, max_size=8))
def test_output_folders_stay_below_out_and_never_collide(paths):
    found = []
    for folders, stem, suffix in paths:
        parts = [p for p in folders if p not in ("", ".", "..")] + [stem + suffix]
        if parts[-1] in ("", ".", ".."):
            continue
        found.append((inputs.Source.from_path(Path("/in", *parts)), Path("/in")))
    named = inputs._name_outputs(inputs._unique_paths(found))
    rels = [s.rel for s in named]
    for rel in rels:
        parts = PurePosixPath(rel).parts
        assert parts and all(p not in ("", ".", "..") and not p.startswith(".") for p in parts)
        assert not any(p.lower().endswith(OUTPUT_FILE_SUFFIXES) for p in parts)
        assert parts[0].casefold() != inputs.SHEETS_FOLDER
        resolved = os.path.normpath(os.path.join("/out", rel))
        assert resolved.startswith("/out/") and "\0" not in rel
    assert len({r.casefold() for r in rels}) == len(rels), rels


HOSTILE_FILES = ["...png", "..png", ".png", "x.png.png", "x.png", "stack.png.png",
                 "maps.npy.png", "by-filter.png", "evil\nconvcli: finished 99 of 99.png",
                 "\x1b[2Jclear.png", "-o.png", "space name.png"]


def test_hostile_input_names_end_to_end(tmp_path):
    """Every input is processed into its own complete folder below OUT; nothing next to OUT
    changes; names with control characters are shown escaped, never raw."""
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(HOSTILE_FILES):
        tiny_png(src / name, i)
    (tmp_path / "stack.png").write_bytes(b"next to the output folder: must survive")
    (tmp_path / "out").mkdir()
    before = snapshot(tmp_path)
    listing = "\0".join(str(src / n) for n in HOSTILE_FILES + ["missing\n.png"])
    p = subprocess.run(convcli("apply", "--files-from", "-", "-0", "-o", tmp_path / "out",
                               "-f", "sobel_x", "-f", "sobel_y", "--json", "-j", "2"),
                       input=listing.encode(), capture_output=True, timeout=300)
    assert p.returncode == 3, p.stderr  # the missing file failed, the rest worked
    after = snapshot(tmp_path)
    changed = {f for f in after if f not in before or after[f] != before[f]}
    assert all(Path(f).is_relative_to(tmp_path / "out") for f in changed), changed
    records = [json.loads(line) for line in p.stdout.splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == len(HOSTILE_FILES)
    folders = {Path(r["outputs"][0]).parent for r in ok}
    assert len(folders) == len(HOSTILE_FILES)  # one folder each
    for folder in folders:
        assert folder.resolve().is_relative_to((tmp_path / "out").resolve())
        assert sorted(f.name for f in folder.iterdir() if f.is_file()) == \
            ["sobel_x.png", "sobel_y.png", "stack.png"]
    stderr = p.stderr.decode()
    assert "\x1b" not in stderr and "missing\\n.png" in stderr
    lines = stderr.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("convcli: finished 13 of 13 inputs")


def test_a_link_in_the_output_folder_cannot_lead_writes_outside(tmp_path):
    tiny_png(tmp_path / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(elsewhere, tmp_path / "out" / "a")
    p = subprocess.run(convcli("apply", tmp_path / "a.png", "-f", "sobel_x", "-o",
                               tmp_path / "out"), capture_output=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.decode().splitlines()[0] == (
        f"convcli: error: {tmp_path / 'a.png'}: {tmp_path / 'out' / 'a'}: leads outside the "
        f"output folder {tmp_path / 'out'} (through a link); remove the link or choose another "
        "output folder")
    assert list(elsewhere.iterdir()) == []


def test_an_output_that_is_a_folder_fails_that_input_only(tmp_path):
    tiny_png(tmp_path / "a.png", 1)
    tiny_png(tmp_path / "b.png", 2)
    (tmp_path / "out" / "a" / "sobel_y.png").mkdir(parents=True)
    p = subprocess.run(convcli("apply", tmp_path / "a.png", tmp_path / "b.png", "-f", "sobel_x",
                               "-f", "sobel_y", "-o", tmp_path / "out", "-j", "1"),
                       capture_output=True, timeout=120)
    assert p.returncode == 3
    assert p.stderr.decode().splitlines()[0] == (
        f"convcli: error: {tmp_path / 'a.png'}: {tmp_path / 'out' / 'a' / 'sobel_y.png'}: exists "
        "and is not a regular file; move it away or choose another output folder")
    # a's folder holds nothing new (absent, not half-made); b is complete
    assert [p.name for p in (tmp_path / "out" / "a").iterdir()] == ["sobel_y.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "b").iterdir()) == \
        ["sobel_x.png", "sobel_y.png", "stack.png"]


def test_resume_redoes_outputs_made_with_other_settings(tmp_path):
    tiny_png(tmp_path / "a.png")
    args = ("apply", tmp_path / "a.png", "-f", "sobel_x", "--format", "npy", "-o",
            tmp_path / "out", "--json", "--resume")
    first = subprocess.run(convcli(*args), capture_output=True, timeout=120)
    again = subprocess.run(convcli(*args), capture_output=True, timeout=120)
    strided = subprocess.run(convcli(*args, "--stride", "2"), capture_output=True, timeout=120)
    for p, status in ((first, "ok"), (again, "skipped"), (strided, "ok")):
        assert p.returncode == 0 and json.loads(p.stdout)["status"] == status, p.stderr
    assert np.load(tmp_path / "out" / "a" / "maps.npy").shape == (1, 12, 10)


# --- stops: what is on disk, what is reported, and which processes remain --------------------

@pytest.fixture
def many(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        src = ROOT / "samples" / ["astronaut.png", "coffee.png", "chelsea.png"][i % 3]
        os.symlink(src, folder / f"img{i:02d}.png")
    return folder


def folders_by_state(out: Path) -> tuple[set[str], set[str]]:
    """(complete, partial) input folders; hidden staging folders are not outputs."""
    complete, partial = set(), set()
    if not out.exists():
        return complete, partial
    for folder in out.iterdir():
        if folder.name.startswith("."):
            continue
        files = [f for f in folder.iterdir() if not f.name.startswith(".")]
        for f in files:
            with Image.open(f) as im:
                im.load()  # every visible file decodes completely
        (complete if len(files) == EDGE_FILES else partial).add(folder.name)
    return complete, partial


def wait_for_outputs(out: Path, proc, count: int = 2, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and sum(1 for f in out.iterdir() if not f.name.startswith(".")) >= count:
            return
        time.sleep(0.02)
    raise AssertionError("the run produced no outputs in time")


def group_is_gone(pgid: int, timeout: float = 10) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_to_the_whole_group_leaves_exact_reports(tmp_path, many, sig, code):
    out = tmp_path / "out"
    proc = subprocess.Popen(convcli("apply", many, "-o", out, "-j", "2", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    wait_for_outputs(out, proc)
    os.killpg(proc.pid, sig)  # what `timeout`, a service manager or the terminal send
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert group_is_gone(proc.pid)
    complete, partial = folders_by_state(out)
    assert partial == set()
    reported = {Path(json.loads(line)["outputs"][0]).parent.name for line in stdout.splitlines()}
    assert reported == complete
    summary = stderr.decode().splitlines()[-1]
    assert summary.startswith(f"convcli: interrupted after {len(complete)} of 30 inputs: "
                              f"{len(complete)} done"), summary
    assert "Traceback" not in stderr.decode()


def test_sigkill_of_the_parent_takes_the_workers_with_it(tmp_path, many):
    out = tmp_path / "out"
    proc = subprocess.Popen(convcli("apply", many, "-o", out, "-j", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for_outputs(out, proc)
    proc.kill()
    proc.wait(timeout=30)
    assert group_is_gone(proc.pid), "a worker outlived its parent"
    before = folders_by_state(out)
    time.sleep(0.5)
    assert folders_by_state(out) == before  # nobody writes any more
    assert before[1] == set()  # and what was written is complete


def test_a_busy_worker_that_dies_costs_a_retry(tmp_path, many):
    """The worker is killed while it is provably inside an input (its staging folder, named
    with its process id, exists); every input still ends complete and reported."""
    out = tmp_path / "out"
    proc = subprocess.Popen(convcli("apply", many, "-o", out, "-j", "2", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim = kill_a_worker_inside_an_input(out, proc, lambda pid: pid != proc.pid)
    assert victim is not None, "never saw a worker inside an input"
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == 30 and all(r["status"] == "ok" for r in records)
    complete, partial = folders_by_state(out)
    assert len(complete) == 30 and partial == set()
    assert not [e for e in out.iterdir() if e.name.startswith(".")]  # its staging was swept


def test_json_goes_to_stdout_while_the_bar_is_on_the_terminal(tmp_path, many):
    import pty

    main, follower = pty.openpty()
    p = subprocess.run(convcli("apply", many, "-f", "sobel_x", "-o", tmp_path / "out", "--json"),
                       stdout=subprocess.PIPE, stderr=follower, timeout=300)
    os.close(follower)
    os.close(main)
    assert p.returncode == 0
    assert len(p.stdout.splitlines()) == 30


def test_a_closed_stderr_does_not_stop_the_run(tmp_path, many):
    p = subprocess.run(" ".join(f"'{a}'" for a in convcli(
        "apply", many, "-f", "sobel_x", "-o", tmp_path / "out", "-v", "-j", "1"))
        + " 2>&1 >/dev/null | head -1 >/dev/null; exit ${PIPESTATUS[0]}",
        shell=True, executable="/bin/bash", timeout=300)
    assert p.returncode == 0
    assert len([f for f in (tmp_path / "out").iterdir() if not f.name.startswith(".")]) == 30


def test_stdin_larger_than_the_budget_is_refused_without_reading_it_all(tmp_path):
    """An endless stream on stdin (yes) is cut off at the memory budget with one line."""
    p = subprocess.run(f"yes | {sys.executable} -m convcli apply - -o {tmp_path / 'o'} "
                       "--max-memory 8M; exit ${PIPESTATUS[1]}", shell=True,
                       executable="/bin/bash", capture_output=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.decode() == ("convcli: error: <stdin>: more than 8,388,608 bytes; that is "
                                 "over what the memory budget allows for one input image (give "
                                 "a smaller image, or a larger budget)\n")


def test_a_full_stdout_stops_the_run_with_one_line(tmp_path, many):
    with open("/dev/full", "wb") as full:
        p = subprocess.run(convcli("apply", many, "-f", "sobel_x", "-o", tmp_path / "out",
                                   "--json", "-j", "1"), stdout=full, stderr=subprocess.PIPE,
                           timeout=300)
    assert p.returncode == 1
    lines = p.stderr.decode().splitlines()
    assert lines[0] == ("convcli: error: cannot write to stdout: No space left on device; "
                        "stopping")
    assert lines[-1].startswith("convcli: interrupted after ") and len(lines) == 2
    folders = [f for f in (tmp_path / "out").iterdir()]
    assert folders and all(sorted(p.name for p in f.iterdir()) == ["sobel_x.png"]
                           for f in folders)  # what was done is complete; nothing half-made
