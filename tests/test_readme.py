"""The README stays honest: its set-up is what CI runs, its quick start works, and every
command, option, exit code, generator and built-in bank it should document is there."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from convcli import bank, errors, generators
from convcli.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_block_after(heading: str) -> list[str]:
    section = README.split(heading, 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_setup_is_two_commands_and_ci_runs_exactly_them():
    setup = code_block_after("## Set-up")
    assert len(setup) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in setup:
        assert command in ci


def shell_lines(heading: str) -> list[str]:
    return [line for line in code_block_after(heading) if not line.startswith("#")]


@pytest.fixture
def workspace(tmp_path):
    """A folder holding the shipped samples and a small tree of photos, where the README's
    commands run as a user would type them (bash, with convcli on the PATH)."""
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    for rel, sample in (("a.png", "camera.png"), ("trip/b.png", "brick.png"),
                        ("trip/deep/c.jpg", "coffee.png")):
        (tmp_path / "photos" / rel).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(ROOT / "samples" / sample) as im:
            im.convert("RGB").resize((64, 64)).save(tmp_path / "photos" / rel)
    return tmp_path


def run_in(folder: Path, line: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=folder, env=env,
                          capture_output=True, timeout=300)


@pytest.mark.parametrize("heading", ["## Quick start", "## Batches"])
def test_every_command_of_a_section_runs_cleanly(workspace, heading):
    before = {p.name for p in workspace.iterdir()}
    for line in shell_lines(heading):
        p = run_in(workspace, line)
        assert p.returncode == 0, (line, p.stderr.decode())
        assert "warning" not in p.stderr.decode(), (line, p.stderr.decode())
        assert "Traceback" not in p.stderr.decode()
    # everything it wrote is under out/ (the README's own output folder)
    assert {p.name for p in workspace.iterdir()} - before <= {"out", "report.jsonl"}
    if heading == "## Quick start":
        assert (workspace / "out" / "astronaut" / "stack.png").is_file()
        assert (workspace / "out" / "brick" / "maps.npy").is_file()
    else:
        assert (workspace / "out" / "by-filter" / "log_2.png").is_file()
        assert len((workspace / "report.jsonl").read_text().splitlines()) == 2


def test_every_command_and_option_is_documented():
    group = typer.main.get_command(app)
    commands = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            for sub, subcmd in cmd.commands.items():
                commands[f"{name} {sub}"] = subcmd
        else:
            commands[name] = cmd
    for name, cmd in commands.items():
        head = f"`convcli {name.split()[0]}" + (
            f" {name.split()[1]}" if " " in name and not name.startswith("cache") else "")
        assert head in README, name
        for param in cmd.params:
            if param.param_type_name == "option" and "--help" not in param.opts:
                assert any(f"`{opt}`" in README for opt in param.opts), (name, param.opts)


def test_every_activation_is_named_in_the_help_and_the_readme():
    from convcli import bank, ops

    accepted = set(bank.ACTIVATIONS)  # a conv's activation: ops' functions but clip
    assert accepted == set(ops.FUNCTIONS) - {"clip"}
    apply = typer.main.get_command(app).commands["apply"]
    helped = next(p.help for p in apply.params if p.name == "activation")
    named = set(re.findall(r"[a-z_0-9]+", helped)) & set(ops.FUNCTIONS)
    assert named == accepted, accepted - named
    row = next(line for line in README.splitlines() if line.startswith("| `--activation` |"))
    assert set(re.findall(r"`([a-z_0-9]+)`", row)) == accepted


def test_exit_codes_match_the_code_and_the_help():
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|$", README, re.M))
    assert {int(k) for k in table} == {errors.EXIT_OK, errors.EXIT_ERROR, errors.EXIT_USAGE,
                                       errors.EXIT_PARTIAL, errors.EXIT_INTERRUPTED,
                                       errors.EXIT_TERMINATED}
    helped = " ".join(CliRunner().invoke(app, ["--help"]).stdout.split())
    for code in table:
        assert f"{code} " in helped, code
    assert "usage" in table["2"] and "some inputs failed" in table["3"]
    assert "Ctrl-C" in table["130"] and "SIGTERM" in table["143"]


def test_the_command_reference_is_current():
    p = subprocess.run([sys.executable, str(ROOT / "docs" / "make_reference.py"), "--check"],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()


def test_every_generator_and_builtin_filter_is_documented():
    for name in generators.GENERATORS:
        assert f"`{name}`" in README, name
    for name in bank.builtin_names():
        assert f"#### `{name}`" in README, name
        for f in bank.load(name).filters:
            assert f"| `{f.name}` |" in README, (name, f.name)


def test_readme_pictures_exist():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures and all((ROOT / p).is_file() for p in pictures)
