"""The command line: parse, call the library, render to stderr, map errors to exit codes.

stdout carries data only (images, arrays, listings asked for); every message goes to stderr.
Errors are ConvcliError subclasses, caught in one place (``_Group.invoke``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, ConvcliError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


class _Group(TyperGroup):
    """The one exit point: library errors become a message on stderr and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConvcliError as e:
            for line in str(e).splitlines() or [type(e).__name__]:
                _say(f"convcli: error: {line}")
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            _say("convcli: interrupted")
            raise typer.Exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(EXIT_OK)


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Apply banks of convolution filters (one CNN conv layer) to images.",
    epilog="Exit codes: 0 success, 1 error, 2 usage error, 3 some inputs failed, "
           "130 interrupted.",
)
bank_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Inspect and check kernel banks.")
app.add_typer(bank_app, name="bank")


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _quiet_broken_pipe() -> None:
    # The reader went away (e.g. `| head`): stop quietly, and keep Python from complaining
    # about the unflushable stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _version(value: bool) -> None:
    if value:
        typer.echo(f"convcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Apply banks of convolution filters (one CNN conv layer) to images."""


@app.command()
def apply(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...",
                                       help="Image files or folders; - reads one image from stdin."),
    output: str = typer.Option(..., "--output", "-o",
                               help="Output folder, or - to write one result to stdout."),
    bank: str = typer.Option("edge", "--bank", "-b", help="Built-in bank name or a .yaml file."),
    filters: Optional[List[str]] = typer.Option(None, "--filter", "-f",
                                                help="Only this filter (repeat for more)."),
    stride: Optional[str] = typer.Option(None, help="Override: N or Y,X."),
    padding: Optional[str] = typer.Option(None, help="Override: same, valid, N, Y,X or T,B,L,R."),
    dilation: Optional[str] = typer.Option(None, help="Override: N or Y,X."),
    border: Optional[str] = typer.Option(None, help="Override: zero, reflect, replicate, wrap."),
    activation: Optional[str] = typer.Option(None, help="Override: relu, none, abs."),
    scale: Optional[str] = typer.Option(None, help="Override: auto, global, clip, symmetric."),
    bits: int = typer.Option(8, help="Bits per sample of the PNGs: 8 or 16."),
    fmt: str = typer.Option("png", "--format", help="png (maps + stack) or npy (float32 array)."),
    compression: int = typer.Option(1, help="PNG zlib level, 0 (fastest) to 9 (smallest)."),
    max_pixels: int = typer.Option(100_000_000, help="Refuse images with more pixels than this."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail on stderr."),
) -> None:
    """Run every filter of a bank over every input; write one PNG per filter and a stack."""
    from . import bank as banks
    from . import pipeline

    options = pipeline.Options(out=output, format=fmt, bits=bits, compression=compression,
                               max_pixels=max_pixels)
    pipeline.check_options(options)
    settings = {key: banks.parse_cli_setting(key, value) for key, value in (
        ("stride", stride), ("padding", padding), ("dilation", dilation), ("border", border),
        ("activation", activation), ("scale", scale))}
    kernel_bank = banks.load(bank).override(**settings)
    if filters:
        kernel_bank = kernel_bank.select(filters)
    sources = _sources(inputs, pipeline)
    if output == pipeline.STDOUT:
        if len(sources) != 1:
            raise UsageError(f"-o - writes one result, but {len(sources)} inputs were given; "
                             "give one input or an output folder")
        if sys.stdout.isatty():
            raise UsageError("refusing to write binary image data to a terminal; redirect "
                             "stdout (> file.png) or give an output folder with -o")
    pipeline.check_output_folder(output)
    if verbose:
        from . import engine

        _say(engine.CACHE_STATUS)

    failed = 0
    last_code = EXIT_ERROR
    for source in sources:
        result = pipeline.process(source, kernel_bank, options)
        for note in result.notes:
            if not quiet:
                _say(f"convcli: warning: {note}")
        if result.status != "ok":
            failed += 1
            last_code = result.exit_code
            _say(f"convcli: error: {result.error}")
            continue
        if result.payload is not None:
            sys.stdout.buffer.write(result.payload)
            sys.stdout.buffer.flush()
        elif verbose:
            _say(f"{result.input}: {len(result.outputs)} files in "
                 f"{Path(result.outputs[0]).parent} ({result.seconds:.2f} s)")
    if failed and failed == len(sources):
        raise typer.Exit(last_code)
    if failed:
        _say(f"convcli: {failed} of {len(sources)} inputs failed")
        raise typer.Exit(EXIT_PARTIAL)
    if not quiet and output != pipeline.STDOUT and not verbose:
        _say(f"convcli: {len(sources)} image{'s' if len(sources) != 1 else ''}, "
             f"{len(kernel_bank.filters)} filters -> {output}")


def _sources(inputs: list[str], pipeline) -> list:
    sources = []
    if inputs.count("-") > 1:
        raise UsageError("- (stdin) can be given only once")
    for item in inputs:
        if item == "-":
            if sys.stdin.isatty():
                raise UsageError("- reads an image from stdin, but stdin is a terminal; "
                                 "pipe an image in (cat photo.png | convcli apply - ...)")
            sources.append(pipeline.Source.from_bytes(sys.stdin.buffer.read()))
        elif Path(item).is_dir():
            found = sorted(p for p in Path(item).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            sources.extend(pipeline.Source.from_path(p) for p in found)
        else:
            sources.append(pipeline.Source.from_path(item))
    return sources


@app.command("banks")
def list_banks() -> None:
    """List the built-in banks and their filters."""
    from rich.console import Console
    from rich.table import Table

    from . import bank as banks

    table = Table(box=None, pad_edge=False)
    for col in ("bank", "input", "filters", "description"):
        table.add_column(col)
    for name in banks.builtin_names():
        b = banks.load(name)
        table.add_row(name, b.input, str(len(b.filters)), b.description)
        table.add_row("", "", "", "[dim]" + ", ".join(f.name for f in b.filters) + "[/dim]")
    Console().print(table)


@bank_app.command("show")
def bank_show(
    ref: str = typer.Argument(..., metavar="NAME|FILE", help="Built-in bank or .yaml file."),
    filters: Optional[List[str]] = typer.Option(None, "--filter", "-f", help="Only this filter."),
) -> None:
    """Print a bank's filters: settings, source and weights."""
    from rich.console import Console
    from rich.table import Table

    from . import bank as banks

    b = banks.load(ref)
    if filters:
        b = b.select(filters)
    console = Console()
    console.print(f"[bold]{b.name}[/bold]: {b.description}  (input: {b.input}, "
                  f"{len(b.filters)} filters, from {b.origin})", highlight=False)
    for f in b.filters:
        g = f.geometry
        c, kh, kw = f.weights.shape
        console.print(f"\n[bold]{f.name}[/bold]  {c}x{kh}x{kw}  bias {f.bias:g}  "
                      f"stride {g.stride[0]},{g.stride[1]}  padding {_padding_text(g.padding)}  "
                      f"dilation {g.dilation[0]},{g.dilation[1]}  border {g.border}  "
                      f"activation {g.activation}  scale {f.scale}", highlight=False)
        for text in (f.description, f.source and f"source: {f.source}"):
            if text:
                console.print(f"  {text}", highlight=False, markup=False)
        for ch in range(c):
            grid = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
            for _ in range(kw):
                grid.add_column(justify="right")
            for row in f.weights[ch]:
                grid.add_row(*(f"{v:.4g}" for v in row))
            if c > 1:
                console.print(f"  channel {ch}")
            console.print(grid)


def _padding_text(p) -> str:
    return p if isinstance(p, str) else ",".join(map(str, p))


@bank_app.command("check")
def bank_check(
    files: List[str] = typer.Argument(..., metavar="FILE...", help="Bank files to validate."),
) -> None:
    """Validate bank files; list every problem with file, line, filter and field."""
    from . import bank as banks
    from .errors import BankError

    problems = []
    for ref in files:
        try:
            b = banks.load(ref)
        except BankError as e:
            problems.extend(e.problems)
            continue
        _say(f"ok: {ref}: bank {b.name!r}, {len(b.filters)} filters, input {b.input}")
    if problems:
        raise BankError(problems)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="convcli")
