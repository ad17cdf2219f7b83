"""Write docs/cli.md, the command reference, from the commands' own help text.

    python docs/make_reference.py        # rewrite docs/cli.md
    python docs/make_reference.py --check  # exit 1 if docs/cli.md is out of date

tests/test_readme.py runs the check, so the page cannot drift from the help.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

COMMANDS = [[], ["apply"], ["banks"], ["bank", "show"], ["bank", "check"], ["bank", "import"],
            ["learn"], ["cache", "info"], ["cache", "warm"], ["cache", "clear"]]
PAGE = Path(__file__).resolve().parent / "cli.md"


def reference() -> str:
    from convcli.cli import app

    runner = CliRunner()
    parts = ["# convcli command reference\n",
             "Generated from `convcli ... --help` by `docs/make_reference.py`; do not edit.\n"]
    for command in COMMANDS:
        # A fixed width, so the page is the same on every terminal.
        result = runner.invoke(app, [*command, "--help"], prog_name="convcli",
                               env={"COLUMNS": "100", "TERM": "dumb"}, terminal_width=100)
        title = " ".join(["convcli", *command])
        parts.append(f"## `{title}`\n\n```text\n{result.stdout.rstrip()}\n```\n")
    return "\n".join(parts)


def main() -> int:
    text = reference()
    if "--check" in sys.argv[1:]:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python docs/make_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
