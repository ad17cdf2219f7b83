"""One exception hierarchy and the exit codes the command line promises.

Library code raises these; only ``cli.py`` turns them into a message and an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

# Exit codes (documented in the README, section "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1          # nothing was produced: bad bank, unreadable image, I/O failure
EXIT_USAGE = 2          # the command line itself is wrong (also Click's own usage errors)
EXIT_PARTIAL = 3        # finished, but some inputs failed
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived: stop as cleanly as for Ctrl-C (raised by the CLI's signal handler)."""


class ConvcliError(Exception):
    """Base of every error convcli reports as one clear line (or one line per problem).

    Messages name concepts (the memory budget, padding), not command-line flags; ``settings``
    names the settings that can fix it (keys of the library's options, such as
    "max_memory"), which the command line shows as its flags."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str = "", *, settings: tuple[str, ...] = ()):
        super().__init__(message)
        self.settings = tuple(settings)


class UsageError(ConvcliError, ValueError):
    """An option value that cannot work (bad stride, unknown filter name, ...).

    Also a ValueError, as Python callers of ``convcli.conv2d`` expect."""

    exit_code = EXIT_USAGE


class InputError(ConvcliError, ValueError):
    """An input image that cannot be read or does not fit the bank (or the kernels)."""


class OutputError(ConvcliError):
    """An output that cannot be written where or how it was asked for."""


def printable(text: str) -> str:
    """Text safe to show on a terminal or draw as a label: control characters (newlines,
    escape sequences) become visible escapes such as \\n or \\x1b."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a bank file, located as precisely as the file allows."""

    source: str
    line: int | None  # 1-based, None when the problem is not tied to a line
    filter: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.source + (f":{self.line}" if self.line is not None else "")
        parts = [where]
        if self.filter is not None:
            parts.append(f"filter {self.filter!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ": ".join(parts) + ": " + self.message


class BankError(ConvcliError):
    """A bank file that is not valid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
