"""The README stays honest: its set-up is what CI runs, its quick start works, and every
command, option, exit code, generator and built-in bank it should document is there."""

import re
import shlex
from pathlib import Path

import pytest
import typer.main
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


def test_quick_start_runs_on_the_shipped_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    runner = CliRunner()
    ran = 0
    for line in code_block_after("## Quick start"):
        command = line.split("#")[0].strip()
        if not command.startswith("convcli ") or "my-bank.yaml" in command:
            continue
        args = shlex.split(command)[1:]
        args = [str(tmp_path / "out") if a == "out/" else a for a in args]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (command, r.output)
        ran += 1
    assert ran >= 5
    assert (tmp_path / "out" / "astronaut" / "stack.png").is_file()
    assert (tmp_path / "out" / "brick" / "maps.npy").is_file()


def test_every_command_and_option_is_documented():
    group = typer.main.get_command(app)
    commands = {"apply": group.commands["apply"], "banks": group.commands["banks"]}
    for name, cmd in group.commands["bank"].commands.items():
        commands[f"bank {name}"] = cmd
    for name, cmd in commands.items():
        assert f"`convcli {name}" in README, name
        for param in cmd.params:
            if param.param_type_name == "option" and "--help" not in param.opts:
                assert any(f"`{opt}`" in README for opt in param.opts), (name, param.opts)


def test_exit_codes_match_the_code():
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|$", README, re.M))
    assert {int(k) for k in table} == {errors.EXIT_OK, errors.EXIT_ERROR, errors.EXIT_USAGE,
                                       errors.EXIT_PARTIAL, errors.EXIT_INTERRUPTED,
                                       errors.EXIT_TERMINATED}


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
