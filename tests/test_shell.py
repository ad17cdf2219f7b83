"""Every command behaves in a shell as in a pipeline: listings that pipe unwrapped, --json,
'-' for stdout, -q/-v, one-line usage errors, completion, and the help text."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convcli import bank
from convcli.cli import app

runner = CliRunner()
ROOT_KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input, prog_name="convcli")


def shell(command: str, **kw) -> subprocess.CompletedProcess:
    """A command line through bash, ending with convcli's own exit status (not the last
    command's of the pipeline)."""
    return subprocess.run(command + "; exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, timeout=120, **kw)


CONVCLI = f"{sys.executable} -m convcli"


def test_listings_pipe_as_whole_lines():
    p = shell(f"{CONVCLI} banks | cat")
    assert p.returncode == 0 and p.stderr == b""
    lines = p.stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in lines] == bank.builtin_names()
    for line in lines:
        name, mode, count, description, names = line.split("\t")
        b = bank.load(name)
        assert (mode, int(count), description) == (b.input, len(b.filters), b.description)
        assert names.split(",") == [f.name for f in b.filters]
    shown = shell(f"COLUMNS=20 {CONVCLI} bank show edge | cat").stdout.decode().splitlines()
    assert shown[0].endswith(f"from {bank.resolve('edge')})")  # a long line, not wrapped
    assert all(line == line.rstrip() for line in shown)  # no padding


@pytest.mark.parametrize("command", ["banks", "bank show edge", "bank show learned --json",
                                     "cache info"])
def test_a_closed_pipe_ends_listings_quietly(command):
    p = shell(f"{CONVCLI} {command} | head -c 1 > /dev/null")
    assert (p.returncode, p.stderr) == (0, b"")


def test_every_listing_has_json(tmp_path):
    banks = [json.loads(line) for line in run("banks", "--json").stdout.splitlines()]
    assert [b["name"] for b in banks] == bank.builtin_names()
    shown = json.loads(run("bank", "show", "edge", "-f", "sobel_x", "--json").stdout)
    assert shown["filters"][0]["weights"] == [[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfilters: []\n")
    checked = run("bank", "check", "edge", bad, "--json")
    records = [json.loads(line) for line in checked.stdout.splitlines()]
    assert [r["ok"] for r in records] == [True, False] and checked.exit_code == 1
    info = json.loads(run("cache", "info", "--json").stdout)
    assert set(info) == {"folder", "files", "bytes", "kernels"}


def test_dash_is_stdout_for_every_written_file(tmp_path, samples):
    png = shell(f"{CONVCLI} bank show edge --png - -q > {tmp_path / 'k.png'}")
    assert png.returncode == 0 and png.stderr == b""
    with Image.open(tmp_path / "k.png") as im:
        assert im.size[0] > 100
    learned = shell(f"{CONVCLI} learn {samples / 'camera.png'} -o - -k 2 --size 3 --patches 300 "
                    f"-q > {tmp_path / 'l.yaml'}")
    assert learned.returncode == 0 and learned.stderr == b""
    assert len(bank.load(str(tmp_path / "l.yaml")).filters) == 2
    np.save(tmp_path / "w.npy", np.ones((3, 1, 3, 3), np.float32))
    imported = shell(f"{CONVCLI} bank import {tmp_path / 'w.npy'} -o - > {tmp_path / 'i.yaml'}")
    assert imported.returncode == 0
    assert imported.stderr.decode() == "convcli: wrote stdout: 3 filters of 1x3x3 (gray)\n"
    assert len(bank.load(str(tmp_path / "i.yaml")).filters) == 3
    assert not any(p.name == "-" for p in tmp_path.iterdir())


def test_quiet_and_verbose_on_every_command(tmp_path, samples):
    for args in (["banks"], ["bank", "show", "edge"], ["bank", "check", "edge"],
                 ["cache", "info"], ["learn", samples / "camera.png", "-o", tmp_path / "l.yaml",
                                     "-k", "2", "--size", "3", "--patches", "300"]):
        for flag in ("-q", "-v"):
            r = run(*args, flag)
            assert r.exit_code == 0, (args, flag, r.output)
            if flag == "-q":
                assert r.stderr == "", args


@pytest.mark.parametrize("args, message", [
    (["apply", "x.png"], "Missing option '--output' / '-o'. (see 'convcli apply --help')"),
    (["apply", "x.png", "-o", "o", "--frobnicate"],
     "No such option: --frobnicate (Possible options: --filter, --format) "
     "(see 'convcli apply --help')"),
    (["apply", "x.png", "-o", "o", "-j", "many"],
     "Invalid value for '--jobs' / '-j': 'many' is not a valid int. (see 'convcli apply --help')"),
    (["bank", "shw", "edge"],
     "No such command 'shw'. Did you mean 'show'? (see 'convcli bank --help')"),
])
def test_framework_usage_errors_are_one_line(args, message):
    r = run(*args)
    assert (r.exit_code, r.stderr, r.stdout) == (2, f"convcli: error: {message}\n", "")


def test_help_names_what_options_take_and_shows_examples():
    for command in (["apply"], ["banks"], ["bank", "show"], ["bank", "check"],
                    ["bank", "import"], ["learn"]):
        text = run(*command, "--help").stdout
        assert "<str>" not in text and "<int>" not in text, command
        assert "Examples:" in text, command
    assert "auto|jit|numpy|fft" in run("apply", "--help").stdout


def test_completion_of_banks_and_filters():
    env = dict(os.environ, _CONVCLI_COMPLETE="complete_bash")

    def complete(words: str) -> list[str]:
        cword = len(words.split()) - 1
        p = subprocess.run([sys.executable, "-m", "convcli"], capture_output=True, timeout=60,
                           env=dict(env, COMP_WORDS=words, COMP_CWORD=str(cword)))
        return p.stdout.decode().split()

    assert complete("convcli apply x.png -b b") == ["blur"]
    assert complete("convcli apply x.png -b blur -f gaussian") == \
        ["gaussian_1", "gaussian_2", "gaussian_4"]
    assert complete("convcli bank show e") == ["edge"]
    assert "apply" in complete("convcli ap")


def test_dash_is_stdin_for_every_file_read(tmp_path, samples):
    """Banks, learning images and imported weights may come on stdin too."""
    edge = (ROOT_KERNELS / "edge.yaml").read_bytes()
    shown = subprocess.run([sys.executable, "-m", "convcli", "bank", "show", "-", "-f",
                            "sobel_x", "--json"], input=edge, capture_output=True, timeout=60)
    assert shown.returncode == 0 and json.loads(shown.stdout)["filters"][0]["name"] == "sobel_x"
    checked = subprocess.run([sys.executable, "-m", "convcli", "bank", "check", "-"],
                             input=edge, capture_output=True, timeout=60)
    assert checked.stderr == b"ok: -: bank 'edge', 16 filters, input gray\n"
    learned = subprocess.run([sys.executable, "-m", "convcli", "learn", "-", "-o",
                              str(tmp_path / "l.yaml"), "-k", "2", "--size", "3", "--patches",
                              "300", "-q"], input=(samples / "camera.png").read_bytes(),
                             capture_output=True, timeout=60)
    assert learned.returncode == 0 and len(bank.load(str(tmp_path / "l.yaml")).filters) == 2
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 1, 3, 3), np.float32))
    imported = subprocess.run([sys.executable, "-m", "convcli", "bank", "import", "-", "-o",
                               str(tmp_path / "i.yaml"), "-q"], input=buf.getvalue(),
                              capture_output=True, timeout=60)
    assert imported.returncode == 0 and len(bank.load(str(tmp_path / "i.yaml")).filters) == 3
    both = run("apply", "-", "-b", "-", "-o", tmp_path / "o")
    assert (both.exit_code, both.stderr) == (2, "convcli: error: stdin can feed only one of: "
                                                "the bank (-b -), an image (-) or the list of "
                                                "inputs\n")
