"""The command line: parse, call the library, render to stderr, map errors to exit codes.

stdout carries data only (images, arrays, listings asked for); every message goes to stderr.
Errors are ConvcliError subclasses, caught in one place (``_Group.invoke``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .errors import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_TERMINATED,
                     ConvcliError, Terminated, UsageError, printable)

class _Group(TyperGroup):
    """The one exit point: library errors become a message on stderr and an exit code."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run; the command-line framework's own usage errors (unknown option, missing
        value) become one ``convcli: error:`` line with a hint and exit 2, like ours."""
        from typer import exceptions as typer_errors
        from typer._click import exceptions as click_errors

        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        except click_errors.NoArgsIsHelpError as e:  # a bare group: its help
            e.show()
            code = e.exit_code
        except click_errors.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "convcli"
            _say(f"convcli: error: {' '.join(e.format_message().split())} "
                 f"(see '{where} --help')")
            code = e.exit_code
        except typer_errors.Abort:
            _say("convcli: interrupted")
            code = EXIT_INTERRUPTED
        code = code if isinstance(code, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConvcliError as e:
            lines = str(e).splitlines() or [type(e).__name__]
            lines[-1] = _with_flags(lines[-1], e.settings)
            for line in lines:
                _say(f"convcli: error: {line}")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            _say("convcli: interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Terminated:  # SIGTERM before a batch's run loop (connecting, compiling)
            _say("convcli: terminated")
            raise typer.Exit(EXIT_TERMINATED) from None
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(EXIT_OK) from None


app = typer.Typer(
    cls=_Group,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help text: rendering it with rich costs ~100 ms of imports
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Apply banks of convolution filters (one CNN conv layer) to images.",
    epilog="Exit codes: 0 success, 1 error, 2 usage error, 3 some inputs failed, "
           "130 interrupted (Ctrl-C), 143 terminated (SIGTERM).",
)
bank_app = typer.Typer(cls=_Group, no_args_is_help=True, rich_markup_mode=None,
                       help="Inspect and check kernel banks.")
app.add_typer(bank_app, name="bank")
cache_app = typer.Typer(cls=_Group, no_args_is_help=True, rich_markup_mode=None,
                        help="Manage the compiled-engine (JIT) cache.")
app.add_typer(cache_app, name="cache")


# The flags that set each library setting named by an error (ConvcliError.settings).
FLAGS = {"max_memory": "--max-memory", "stack": "--no-stack", "max_pixels": "--max-pixels",
         "filter": "--filter", "padding": "--padding", "files_from": "--files-from",
         "null": "-0", "scheduler": "--scheduler", "ship": "--ship", "format": "--format",
         "bits": "--bits",
         "compression": "--compression", "stride": "--stride", "dilation": "--dilation",
         "resume": "--resume", "scale": "--scale", "colormap": "--colormap",
         "maps": "--no-maps", "tile": "--tile", "columns": "--columns",
         "combine": "--combine", "shared": "--scale-shared"}


def _with_flags(message: str, settings: tuple[str, ...]) -> str:
    """An error message with the flags that can fix it, e.g. '... (see --max-memory)'."""
    flags = [FLAGS[s] for s in settings if s in FLAGS]
    return f"{message} (see {', '.join(flags)})" if flags else message


# More worker processes than this only costs memory and start-up, on any machine today.
MAX_JOBS = 256


def _say(text: str) -> None:
    """One message on stderr, control characters made visible (input names come from
    strangers). A stderr that is closed or full never stops the work."""
    try:
        sys.stderr.write(printable(text) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


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


def _complete_bank(incomplete: str) -> list[str]:
    from . import bank as banks

    return [n for n in banks.builtin_names() if n.startswith(incomplete)]


def _complete_filter(ctx: typer.Context, incomplete: str) -> list[str]:
    from . import bank as banks

    ref = ctx.params.get("bank") or ctx.params.get("ref") or "edge"
    try:
        names = [f.name for f in banks.load(ref).filters]
    except Exception:  # completion never fails loudly
        return []
    return [n for n in names if n.startswith(incomplete)]


@app.command(epilog="""\b
Examples:
  convcli apply photo.png -b edge -o out/
  convcli apply photos/ -r -o out/ -j 4 --resume --json > report.jsonl
  convcli apply photo.png -f sobel_x --format npy -o - > sobel.npy""")
def apply(
    inputs: Optional[List[str]] = typer.Argument(
        None, metavar="INPUT...",
        help="Image files, folders, quoted globs ('photos/**/*.jpg'), URLs (s3://bucket/in/, "
             "pip install 'convcli[s3]'); - reads one image from stdin."),
    output: str = typer.Option(..., "--output", "-o", metavar="FOLDER|-",
                               help="Output folder or URL (s3://bucket/out), or - to write one "
                                    "result to stdout."),
    bank: str = typer.Option("edge", "--bank", "-b", metavar="NAME|FILE",
                             help="Built-in bank name or a .yaml file.",
                             autocompletion=_complete_bank),
    filters: Optional[List[str]] = typer.Option(None, "--filter", "-f", metavar="NAME",
                                                help="Only this filter (repeat for more).",
                                                autocompletion=_complete_filter),
    stride: Optional[str] = typer.Option(None, metavar="N|Y,X",
                                         help="Override every filter's stride."),
    padding: Optional[str] = typer.Option(None, metavar="PAD",
                                          help="Override: same, valid, N, Y,X or T,B,L,R."),
    dilation: Optional[str] = typer.Option(None, metavar="N|Y,X",
                                           help="Override every filter's dilation."),
    border: Optional[str] = typer.Option(None, metavar="zero|reflect|replicate|wrap",
                                         help="Override how pixels beyond the border are read."),
    activation: Optional[str] = typer.Option(
        None, metavar="NAME", help="Override every filter's activation: relu, none, abs, "
                                   "relu6, leaky_relu, hardswish, hardsigmoid, sigmoid, tanh, "
                                   "silu, elu, selu, softplus, mish."),
    scale: Optional[str] = typer.Option(
        None, metavar="SCALE",
        help="Override how maps become pixels: auto (8 bits: p1,p99; 16 bits: minmax), "
             "minmax, global, clip, symmetric, a range LO,HI shared by every map and input "
             "(--scale=-1,1), or per-map percentiles pA,pB (p0.5,p99.5)."),
    colormap: str = typer.Option(
        "gray", metavar="NAME",
        help="gray, viridis, magma, inferno, plasma, cividis, batlow (for magnitudes); vik, "
             "balance, coolwarm (diverging: with --scale symmetric). 8 bits only."),
    bits: int = typer.Option(8, metavar="8|16", help="Bits per sample of the PNGs."),
    fmt: str = typer.Option(
        "png", "--format", metavar="png|jpeg|webp|tiff|npy",
        help="png (maps + stack), jpeg or webp (lossy previews, ranges in maps.json), tiff "
             "or npy (float32 maps + names)."),
    compression: int = typer.Option(1, metavar="0-9",
                                    help="PNG deflate level, 0 (fastest) to 9 (smallest); "
                                         "1-3 use ISA-L where installed, the rest zlib."),
    quality: int = typer.Option(90, metavar="1-100", help="JPEG and WebP quality."),
    maps: bool = typer.Option(True, "--maps/--no-maps",
                              help="Write one picture per filter (--no-maps: the stack only)."),
    stack: bool = typer.Option(True, "--stack/--no-stack", help="Write each input's stack.png."),
    tile: int = typer.Option(768, metavar="PX",
                             help="Shrink the stack's tiles so no side exceeds PX."),
    columns: Optional[int] = typer.Option(None, metavar="N",
                                          help="Tiles per row of the stack [default: square]."),
    combine: Optional[str] = typer.Option(
        None, metavar="max|mean|magnitude",
        help="Also write combined.png, one map of all: their max, mean, or the gradient "
             "magnitude sqrt(x^2 + y^2) of two (e.g. -f sobel_x -f sobel_y --activation none)."),
    scale_shared: bool = typer.Option(
        False, "--scale-shared",
        help="One range per filter for the whole batch, so a value is the same pixel in "
             "every input's picture: the union of the inputs' ranges, found in a first pass "
             "(the maps are computed twice)."),
    overlay: bool = typer.Option(False, "--overlay",
                                 help="Also write overlay.png: the combined map (max unless "
                                      "--combine) in colour over the input."),
    pool: Optional[str] = typer.Option(
        None, "--pool", metavar="MODE:K[:S[:P]]",
        help="Add a pooling layer at the end: max or avg, kernel K, stride S (default K), "
             "padding P (e.g. max:2, avg:3:2:1)."),
    all_layers: bool = typer.Option(
        False, "--all-layers", help="Also write every earlier layer's maps, each in a "
                                    "subfolder NN-name/ of the input's folder."),
    stack_by: Optional[str] = typer.Option(
        None, "--stack-by", metavar="filter",
        help="Also write OUT/by-filter/<filter>.png, one sheet of that filter's maps across "
             "all inputs."),
    max_pixels: int = typer.Option(100_000_000, metavar="N",
                                   help="Refuse images with more pixels than this."),
    max_memory: str = typer.Option(
        "4G", "--max-memory", metavar="SIZE",
        help="Memory for one input's maps per process (e.g. 512M, 8G); "
                                   "more filters than fit are done in groups."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into subfolders."),
    files_from: Optional[str] = typer.Option(
        None, "--files-from", metavar="FILE",
        help="Read input paths from FILE (- for stdin), one per line."),
    null: bool = typer.Option(False, "--null", "-0", help="--files-from is NUL-separated."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", metavar="N",
                                       help="Worker processes [default: all cores]."),
    resume: bool = typer.Option(False, help="Skip inputs whose outputs are all present."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed input."),
    json_report: bool = typer.Option(False, "--json",
                                     help="One JSON object per input on stdout (JSON Lines)."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", metavar="ADDRESS|local",
        help="Run on a Dask cluster: tcp://HOST:8786, or local for a "
                                  "LocalCluster (pip install 'convcli[dask]')."),
    ship: bool = typer.Option(
        False, "--ship", help="With --scheduler: send each input's bytes to the workers and "
                              "write their outputs here (workers that see none of this "
                              "machine's files)."),
    engine: str = typer.Option("auto", "--engine", metavar="auto|jit|numpy|fft",
                               help="The engine's path: jit and numpy give identical bits, "
                                    "fft agrees to float32 rounding; only speed differs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail on stderr."),
) -> None:
    """Run every filter of a bank over every input; write one PNG per filter and a stack."""
    from . import batch, pipeline

    _check_apply_options(stack_by, jobs, max_pixels, output, json_report, scheduler)
    if bank == "-" and ("-" in (inputs or []) or files_from == "-"):
        raise UsageError("stdin can feed only one of: the bank (-b -), an image (-) or the "
                         "list of inputs")
    from . import render

    if not 1 <= quality <= 100:
        raise UsageError(f"--quality must be 1-100, got {quality}")
    options = pipeline.Options(out=output, format=fmt, bits=bits, compression=compression,
                               max_pixels=max_pixels, stack=stack, resume=resume,
                               max_memory=_size(max_memory, "--max-memory"),
                               thumbnails=stack_by == "filter", all_layers=all_layers,
                               scale=scale, colormap=colormap, maps=maps, tile=tile,
                               columns=columns, combine=combine, overlay=overlay,
                               quality=quality, shared=scale_shared)
    pipeline.check_options(options)
    # A bank's own words (auto, global, clip, symmetric) also go to its filters, so every
    # reader of the bank (contact sheets from earlier runs) sees the same policy.
    kernel_bank = _load_bank(bank, filters, pool, stride=stride, padding=padding,
                             dilation=dilation, border=border, activation=activation,
                             scale=scale if scale in render.POLICIES and scale != "minmax"
                             else None)
    pipeline.check_bank_options(kernel_bank, options)
    if not inputs and files_from is None:
        raise UsageError("give at least one INPUT (a file, folder, glob or -) or --files-from")
    found = _expand_inputs(inputs or [], files_from, null, recursive, output,
                           limit=options.max_memory)
    if not found.sources:
        raise UsageError("no images to process: " + (
            found.warnings[0] if found.warnings else
            f"{_plural(len(found.skipped), 'file')} found, none an image by its extension"
            if found.skipped else "the inputs are empty"))
    if output == pipeline.STDOUT and len(found.sources) != 1:
        raise UsageError(f"-o - writes one result, but {len(found.sources)} inputs were given; "
                         "give one input or an output folder")
    pipeline.check_output_folder(output)
    report = _Report(len(found.sources), quiet=quiet, verbose=verbose, json_lines=json_report)
    report.found(found)
    # From here on SIGTERM stops the run as Ctrl-C does (exit 143, no traceback), also
    # while the kernels compile or a cluster is reached, before the run loop takes over.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if batch.choose_engine(found.sources, kernel_bank, engine).method == "jit":
            # A pool compiles every kernel before its workers start; one process compiles
            # the kernels it uses as it goes.
            _compile_once(quiet, eager=len(found.sources) > 1 and jobs != 1)
        backend = batch.Backend(jobs=jobs, scheduler=scheduler, engine=engine,
                                fail_fast=fail_fast, verbose=verbose, ship=ship)
        if options.shared and len(found.sources) > 1:
            options = _shared_ranges(found.sources, kernel_bank, options, backend, report)
        stream = batch.apply(found.sources, kernel_bank, options, backend)
        try:
            report.detail(_engine_line(stream.method))
        except BaseException:
            stream.close()
            raise
        results, stopped_by = _drain(stream, report)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stack_by == "filter" and stopped_by is None:
        for sheet in batch.write_filter_sheets(results, found.sources, kernel_bank, options):
            report.detail(f"contact sheet: {sheet}")
    raise typer.Exit(_finish(report, output, stopped_by, fail_fast))


def _shared_ranges(sources, kernel_bank, options, backend, report):
    """--scale-shared: a first pass over every input that only finds each map's range; the
    options of the second pass, which draws every input with their union. An input that
    fails here is reported by the second pass."""
    from dataclasses import replace

    from . import batch, pipeline

    report.detail(f"shared ranges: a first pass over {len(sources)} inputs")
    first = replace(options, ranges_only=True, resume=False, thumbnails=False)
    stream = batch.apply(sources, kernel_bank, first, replace(backend, fail_fast=False))
    try:
        results = [r for r in stream if r.status == "ok"]
    finally:
        stream.close()
    return replace(options, ranges=pipeline.shared_ranges(results))


def _finish(report: "_Report", output: str, stopped_by: BaseException | None,
            fail_fast: bool) -> int:
    """The summary line, and the exit code for how the run ended."""
    if isinstance(stopped_by, ConvcliError):  # what was done is reported, then why it ended
        _say(f"convcli: error: {_with_flags(str(stopped_by), stopped_by.settings)}")
    report.summary(output, interrupted=stopped_by is not None)
    if isinstance(stopped_by, ConvcliError):
        return stopped_by.exit_code
    if isinstance(stopped_by, (KeyboardInterrupt, Terminated)):
        return EXIT_TERMINATED if isinstance(stopped_by, Terminated) else EXIT_INTERRUPTED
    if isinstance(stopped_by, OSError) and not isinstance(stopped_by, BrokenPipeError):
        return EXIT_ERROR  # stdout failed
    return report.exit_code(fail_fast)


def _check_apply_options(stack_by, jobs, max_pixels, output, json_report, scheduler) -> None:
    """Refuse option values and combinations that cannot work, before anything is read."""
    if stack_by not in (None, "filter"):
        raise UsageError(f"--stack-by takes 'filter', got {stack_by!r}")
    if max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, got {max_pixels}")
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be between 1 and {MAX_JOBS}, got {jobs}")
    if output == "-":
        if json_report or stack_by or scheduler:
            raise UsageError("-o - puts image data on stdout; it cannot be combined with "
                             "--json, --stack-by or --scheduler")
        if sys.stdout.isatty():
            raise UsageError("refusing to write binary image data to a terminal; redirect "
                             "stdout (> file.png) or give an output folder with -o")


def _load_bank(ref: str, filters: list[str] | None, pool: str | None = None,
               **overrides: str | None):
    """The bank (a network of one or more layers) named on the command line, its last conv
    layer's settings overridden and filters selected (a filter named twice is run once,
    like an input named twice), and a pooling layer added at the end with ``pool``."""
    from dataclasses import replace

    from . import bank as banks
    from . import network

    settings = {key: banks.parse_cli_setting(key, value) for key, value in overrides.items()}
    net = banks.load_network(ref)
    if any(v is not None for v in settings.values()):
        net = net.override(**settings)
    if filters:
        chosen = list(dict.fromkeys(filters))
        only = net.layers[0]
        if len(net.layers) == 1 and isinstance(only, network.Conv):  # a plain bank's words
            net = replace(net, layers=(replace(only, bank=only.bank.select(chosen)),))
        else:
            net = net.select(chosen)
    if pool is not None:
        net = replace(net, layers=net.layers + (_pool_layer(pool, len(net.layers)),))
    return net


def _pool_layer(text: str, index: int):
    """--pool MODE:K[:S[:P]] as a pooling layer (stride defaults to the kernel, as torch)."""
    from . import network

    parts = text.split(":")
    numbers = parts[1:]
    if parts[0] not in ("max", "avg") or not 1 <= len(numbers) <= 3 or \
            not all(n.isdigit() for n in numbers):
        raise UsageError(f"--pool takes MODE:K[:S[:P]] with MODE max or avg (e.g. max:2, "
                         f"avg:3:2:1), got {text!r}")
    values = [int(n) for n in numbers] + [0] * (3 - len(numbers))
    k, stride, pad = values[0], values[1] or values[0], values[2]
    if not (1 <= k <= 1024 and 1 <= stride <= 1024 and 0 <= pad <= k // 2):
        raise UsageError(f"--pool: kernel and stride must be 1-1024 and padding at most half "
                         f"the kernel, got {text!r}")
    return network.Pool(name=f"{index + 1:02d}-pool", mode=parts[0], kernel=(k, k),
                        stride=(stride, stride), padding=(pad, pad, pad, pad))


# How long the first compile of the engine takes on our 2-core machines (cache warm):
# 25-30 s when the machine is quiet, longer when it is busy.
COMPILE_SECONDS = 30


def _compile_once(quiet: bool, eager: bool = True) -> None:
    """When this machine has not compiled the engine yet (its cache is empty), say so: a
    spinner on a terminal while it compiles now (``eager``), else one line before the work
    that compiles it; later runs load it in about half a second."""
    from . import engine, jitcache

    if jitcache.cache_files():
        return
    text = f"compiling the engine, once per machine: about {COMPILE_SECONDS} s"
    if not eager:
        if not quiet:
            _say(f"convcli: {text}")
        return
    if quiet:
        engine.prepare()
    elif sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(text):
            engine.prepare()
    else:
        _say(f"convcli: {text}")
        engine.prepare()


def _engine_line(method: str) -> str:
    if method == "jit":
        from . import engine

        return f"engine: jit; {engine.cache_status()}"
    why = {"numpy": "a small job: numba is not started", "fft": "every filter through the FFT",
           "auto": "chosen by the image's size: numba only for large work"}[method]
    return f"engine: {method} ({why})"


def _drain(stream, report: "_Report"):
    """Take every result of a batch into the report (and its payload to stdout). Ctrl-C or
    SIGTERM: the first stops the batch (running inputs finish and are reported), a second
    abandons running inputs. A stdout that goes away stops it quietly, a failing one with
    a line. Returns (results, what stopped it or None)."""
    results: list = []
    stopped_by: BaseException | None = None
    previous = signal.signal(signal.SIGTERM, _raise_terminated)  # stop like Ctrl-C
    try:
        with report:
            while True:
                try:
                    for result in stream:
                        results.append(result)
                        if result.payload is not None:
                            sys.stdout.buffer.write(result.payload)
                            sys.stdout.buffer.flush()
                        report.add(result)
                    break
                except (KeyboardInterrupt, Terminated) as stop:
                    if stopped_by is None:
                        stopped_by = stop
                        stream.stop()
                    else:
                        stream.abort()
                except ConvcliError as e:  # the back-end failed (a lost Dask scheduler)
                    stopped_by = e
                    break
                except OSError as e:  # stdout: the reader went away (| head), or it failed
                    if not isinstance(e, BrokenPipeError) and stopped_by is None:
                        _say(f"convcli: error: cannot write to stdout: {e.strerror or e}; "
                             "stopping")
                    _quiet_broken_pipe()
                    report.json_lines = False
                    stopped_by = stopped_by or e
                    stream.stop()
    finally:
        stream.close()
        signal.signal(signal.SIGTERM, previous)
    return results, stopped_by


def _size(text: str, option: str) -> int:
    """'4G', '512M', '100k' or plain bytes -> bytes (powers of 1024)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    body = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = body[-1:] if body[-1:] in units else ""
    try:
        value = float(body[:len(body) - len(unit)]) * units[unit]
    except ValueError:
        value = -1
    if not 2**20 <= value <= 2**50:  # nan fails both tests
        raise UsageError(f"{option} takes a size from 1M to 1024T, such as 512M or 8G, "
                         f"got {text!r}")
    return int(value)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _expand_inputs(args: list[str], files_from: str | None, null: bool, recursive: bool,
                   output: str, limit: int):
    from . import images, inputs

    def read_stdin() -> bytes:
        if sys.stdin.isatty():
            raise UsageError("stdin is a terminal; pipe an image or a list of paths into convcli")
        # An endless or huge stream costs at most the memory budget.
        return images.read_limited(sys.stdin.buffer, limit, "<stdin>")

    exclude = None if output == inputs.STDIN else Path(output)
    return inputs.expand(args, files_from=files_from, null_separated=null, recursive=recursive,
                         exclude=exclude, read_stdin=read_stdin)


class _Report:
    """Everything `apply` tells people (stderr) and scripts (--json on stdout): messages,
    a progress bar when stderr is a terminal, one JSON line per input, the summary."""

    def __init__(self, total: int, quiet: bool, verbose: bool, json_lines: bool):
        import time

        self.total, self.quiet, self.verbose, self.json_lines = total, quiet, verbose, json_lines
        self.counts = {"ok": 0, "error": 0, "skipped": 0}
        self.codes: set[int] = set()
        self.start = time.perf_counter()
        self.progress = None
        if total > 1 and not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("convcli"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} images/s"), TimeRemainingColumn(),
                TextColumn("{task.fields[failed]}"), console=Console(stderr=True), transient=True,
                # rich would otherwise send what is written to stdout (--json) to its
                # console, the terminal: stdout is for data whatever stderr is.
                redirect_stdout=False, redirect_stderr=False)
            self.task = self.progress.add_task("apply", total=total, rate=0.0, failed="")

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(printable(text), markup=False, highlight=False)
        else:
            _say(text)

    def found(self, found) -> None:
        """What expanding the inputs had to say: warnings, and the files skipped (a count;
        -v lists them)."""
        for warning in found.warnings:
            self.warn(warning)
        if found.skipped:
            n = len(found.skipped)
            self.warn(f"skipped {n} " + ("file that is not an image" if n == 1 else
                                          "files that are not images")
                      + " (by extension)" + ("" if self.verbose else "; -v lists them"))
            for path in found.skipped:
                self.detail(f"skipped: {path}")

    def warn(self, text: str) -> None:
        if not self.quiet:
            self.say(f"convcli: warning: {text}")

    def detail(self, text: str) -> None:
        if self.verbose:
            self.say(text)

    def add(self, result) -> None:
        import time

        self.counts[result.status] += 1
        for note in result.notes:
            self.warn(note)
        if result.status == "error":
            self.codes.add(result.exit_code)
            self.say(f"convcli: error: {_with_flags(result.error, result.settings)}")
        elif result.outputs:
            self.detail(f"{result.input}: {result.status}, {len(result.outputs)} files in "
                        f"{Path(result.outputs[-1]).parent} ({result.seconds:.2f} s)")
        if self.json_lines:
            record = {"input": result.input, "status": result.status, "outputs": result.outputs,
                      "shape": list(result.shape) if result.shape else None,
                      "seconds": round(result.seconds, 4), "error": result.error,
                      "warnings": result.notes}
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
        if self.progress is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            done = sum(self.counts.values())
            failed = self.counts["error"]
            self.progress.update(self.task, completed=done, rate=done / elapsed,
                                 failed=f"[red]{failed} failed[/red]" if failed else "")

    def summary(self, output: str, interrupted: bool = False) -> None:
        import time

        done = sum(self.counts.values())
        if self.quiet or output == "-":
            return
        seconds = time.perf_counter() - self.start
        parts = [f"{self.counts['ok']} done"]
        if self.counts["skipped"]:
            parts.append(f"{self.counts['skipped']} skipped (--resume)")
        if self.counts["error"]:
            parts.append(f"{self.counts['error']} failed")
        head = "interrupted after" if interrupted else "finished"
        rate = (f" ({self.counts['ok'] / max(seconds, 1e-9):.1f} images/s)"
                if self.counts["ok"] else "")  # the rate of work done, not of failures
        _say(f"convcli: {head} {done} of {_plural(self.total, 'input')}: "
             f"{', '.join(parts)} in {seconds:.1f} s{rate} -> {output}")

    def exit_code(self, fail_fast: bool) -> int:
        failed = self.counts["error"]
        if not failed:
            return EXIT_OK
        if failed == sum(self.counts.values()) or fail_fast:
            return max(self.codes) if len(self.codes) == 1 else EXIT_ERROR
        return EXIT_PARTIAL


# --- the other commands: listings that pipe, files that may be "-" ------------------------

def _quiet_option():
    return typer.Option(False, "--quiet", "-q", help="Only errors on stderr.")


def _verbose_option():
    return typer.Option(False, "--verbose", "-v", help="More detail on stderr.")


def _json_option(what: str):
    return typer.Option(False, "--json", help=f"{what} as JSON on stdout (one object per line).")


def _note(text: str, quiet: bool) -> None:
    if not quiet:
        _say(text)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _emit(lines: list[str]) -> None:
    """Lines of a listing on stdout, as they are: never wrapped or padded."""
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _stdin_bytes() -> bytes:
    """A file given as - : stdin's bytes, up to 2 GiB (the largest model file we import)."""
    from . import images

    if sys.stdin.isatty():
        raise UsageError("stdin is a terminal; pipe the file into convcli")
    return images.read_limited(sys.stdin.buffer, 2 << 30, "<stdin>")


def _write_output(target: str, data: bytes, binary: bool) -> str:
    """Write a command's file, or stdout for "-" (binary data never to a terminal).
    Returns how to name where it went."""
    if target == "-":
        if binary and sys.stdout.isatty():
            raise UsageError("refusing to write binary image data to a terminal; redirect "
                             "stdout (> file.png) or give a file name")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return "stdout"
    from . import images

    images.write_atomic(Path(target), data)
    return target


@app.command("banks", epilog="""\b
Examples:
  convcli banks
  convcli banks --json | jq -r .name""")
def list_banks(
    json_out: bool = _json_option("One line per bank"),
    quiet: bool = _quiet_option(), verbose: bool = _verbose_option(),
) -> None:
    """List the built-in banks and their filters."""
    from . import bank as banks

    loaded = [banks.load(name) for name in banks.builtin_names()]
    if json_out:
        _emit([json.dumps({"name": b.name, "input": b.input, "filters": [f.name for f in b.filters],
                           "description": b.description, "file": b.origin}) for b in loaded])
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for col in ("bank", "input", "filters", "description"):
            table.add_column(col)
        for b in loaded:
            table.add_row(b.name, b.input, str(len(b.filters)), printable(b.description))
            table.add_row("", "", "", ", ".join(printable(f.name) for f in b.filters), style="dim")
        Console().print(table)
    else:  # one tab-separated line per bank, for cut, awk and grep
        _emit([f"{b.name}\t{b.input}\t{len(b.filters)}\t{printable(b.description)}\t"
               + ",".join(printable(f.name) for f in b.filters) for b in loaded])
    if verbose:
        _say(f"convcli: {_plural(len(loaded), 'bank')} in {banks.kernels_dir()}")


@bank_app.command("show", epilog="""\b
Examples:
  convcli bank show edge -f sobel_x
  convcli bank show my-bank.yaml --png kernels.png
  convcli bank show learned --json | jq '.filters[0].weights'""")
def bank_show(
    ref: str = typer.Argument(..., metavar="NAME|FILE", help="Built-in bank or .yaml file.",
                              autocompletion=_complete_bank),
    filters: Optional[List[str]] = typer.Option(None, "--filter", "-f", metavar="NAME",
                                                help="Only this filter (repeat for more).",
                                                autocompletion=_complete_filter),
    png: Optional[str] = typer.Option(None, "--png", metavar="FILE",
                                      help="Also draw the kernels as a grid in this PNG "
                                           "file (- for stdout)."),
    json_out: bool = _json_option("The bank, with every weight,"),
    quiet: bool = _quiet_option(), verbose: bool = _verbose_option(),
) -> None:
    """Print a bank's filters: settings, source and weights."""
    from . import bank as banks
    from . import network

    net = banks.load_network(ref)
    if filters:
        net = net.select(list(dict.fromkeys(filters)))
    convs = [layer for layer in net.layers if isinstance(layer, network.Conv)]
    if png:
        from . import images, render

        shown = [f for conv in convs for f in conv.bank.filters]
        where = _write_output(png, images.encode_png(render.kernel_grid(shown)), binary=True)
        _note(f"convcli: drew {_plural(len(shown), 'kernel')} in {where}", quiet)
        if png == "-":
            return  # stdout holds the picture
    single = len(net.layers) == 1 and len(convs) == 1
    if json_out:
        record = _bank_record(convs[0].bank) if single else {
            "name": net.name, "description": net.description, "file": net.origin,
            "layers": [_layer_record(layer) for layer in net.layers]}
        _emit([json.dumps(record)])
        return
    lines = _bank_lines(convs[0].bank) if single else _network_lines(net)
    if sys.stdout.isatty():
        from rich.console import Console

        console = Console(soft_wrap=True, highlight=False)
        for line in lines:
            console.print(line, markup=False, style="bold" if line and line[0] != " " else None)
    else:
        _emit(lines)


def _bank_record(b) -> dict:
    return {"name": b.name, "description": b.description, "input": b.input, "file": b.origin,
            "filters": [{"name": f.name, "shape": list(f.weights.shape), "bias": f.bias,
                         "stride": list(f.geometry.stride),
                         "padding": _padding_text(f.geometry.padding),
                         "dilation": list(f.geometry.dilation), "border": f.geometry.border,
                         "activation": f.geometry.activation, "scale": f.scale,
                         "window_norm": f.geometry.window_norm,
                         "description": f.description, "source": f.source,
                         "weights": f.weights.tolist()} for f in b.filters]}


def _bank_lines(b) -> list[str]:
    """A bank as text: a head line, then per filter its settings and weight grid."""
    lines = [f"{printable(b.name)}: {printable(b.description)} (input: {b.input}, "
             f"{_plural(len(b.filters), 'filter')}, from {printable(b.origin)})"]
    for f in b.filters:
        g = f.geometry
        c, kh, kw = f.weights.shape
        lines += ["", f"{printable(f.name)}  {c}x{kh}x{kw}  bias {f.bias:g}  "
                      f"stride {g.stride[0]},{g.stride[1]}  padding {_padding_text(g.padding)}  "
                      f"dilation {g.dilation[0]},{g.dilation[1]}  border {g.border}  "
                      f"activation {g.activation}  scale {f.scale}"
                      + (f"  window_norm eps {g.window_norm:.6g}"
                         if g.window_norm is not None else "")]
        lines += [f"  {printable(text)}" for text in
                  (f.description, f.source and f"source: {f.source}") if text]
        for ch in range(c):
            cells = [[f"{v:.4g}" for v in row] for row in f.weights[ch]]
            width = max(len(cell) for row in cells for cell in row)
            if c > 1:
                lines.append(f"  channel {ch}")
            lines += ["  " + " ".join(cell.rjust(width) for cell in row) for row in cells]
    return lines


def _layer_record(layer) -> dict:
    from dataclasses import asdict

    from . import network

    if isinstance(layer, network.Conv):
        return {"type": "conv", "name": layer.name, "groups": layer.bank.groups,
                **{k: v for k, v in _bank_record(layer.bank).items() if k != "file"}}
    kind = type(layer).__name__.lower()
    return {"type": kind, **{k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in asdict(layer).items()}}


def _network_lines(net) -> list[str]:
    """A bank of several layers as text: each layer on a line, a conv layer's filters below."""
    from . import network

    lines = [f"{printable(net.name)}: {printable(net.description)} "
             f"({_plural(len(net.layers), 'layer')}, from {printable(net.origin)})"]
    for layer in net.layers:
        if isinstance(layer, network.Conv):
            b = layer.bank
            lines += ["", f"layer {printable(layer.name)}: conv, input {b.input}"
                          + (f", groups {b.groups}" if b.groups != 1 else "")
                          + f", {_plural(len(b.filters), 'filter')}"]
            lines += ["  " + line if line else line for line in _bank_lines(b)[1:]]
        else:
            settings = ", ".join(f"{k} {v}" for k, v in _layer_record(layer).items()
                                 if k not in ("type", "name"))
            lines += ["", f"layer {printable(layer.name)}: {type(layer).__name__.lower()}, "
                          f"{settings}"]
    return lines


def _padding_text(p) -> str:
    return p if isinstance(p, str) else ",".join(map(str, p))


@bank_app.command("import", epilog="""\b
Examples:
  convcli bank import resnet18.onnx -o resnet-stem.yaml
  convcli bank import weights.npy -o mine.yaml --name mine""")
def bank_import(
    source: str = typer.Argument(..., metavar="WEIGHTS", help=".npy, .npz or .onnx file."),
    output: str = typer.Option(..., "--output", "-o", metavar="FILE",
                               help="The bank file to write (.yaml), or - for stdout."),
    node: Optional[str] = typer.Option(None, "--node", metavar="NAME",
                                       help="ONNX: import only this Conv node (one layer)."),
    upto: Optional[str] = typer.Option(None, "--upto", metavar="NAME",
                                       help="ONNX: stop after this node [default: at the first "
                                            "operation convcli cannot run]."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                       help="Bank name [default: the output file's stem]."),
    quiet: bool = _quiet_option(), verbose: bool = _verbose_option(),
) -> None:
    """Turn the first layers of a trained network (ONNX) or an array of weights into a bank."""
    from . import bank as banks
    from . import importers

    if source == "-":  # weights on stdin: kept in a private file named by their kind
        import tempfile

        data = _stdin_bytes()
        kind = ".npy" if data.startswith(b"\x93NUMPY") else \
            ".npz" if data.startswith(b"PK") else ".onnx"
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / f"stdin{kind}").write_bytes(data)
            return bank_import(str(Path(folder) / f"stdin{kind}"), output, node, upto,
                               name or (Path(output).stem if output != "-" else "stdin"),
                               quiet, verbose)
    if source.lower().endswith(".onnx") and node is None:
        imported = importers.import_network(source, upto=upto)
        if name:
            imported.name = name
        elif output != "-":
            imported.name = Path(output).stem
        only = imported.layers[0] if len(imported.layers) == 1 else {}
        if set(only) == {"conv"}:  # one conv layer: a plain bank file, as before networks
            conv = only["conv"]
            text = banks.dump(name=imported.name, description=imported.description,
                              defaults=conv.get("defaults", {}), filters=conv["filters"],
                              provenance=imported.provenance)
        else:
            text = banks.dump_network(**imported.dump_args())
        where = _write_output(output, text.encode(), binary=False)
        for note in imported.notes:
            _note(f"convcli: {note}", quiet)
        _note(f"convcli: wrote {where}: {_plural(len(imported.layers), 'layer')}", quiet)
        return
    if upto is not None:
        raise UsageError("--upto applies to ONNX models imported as a network, not with --node")
    weights, bias, defaults, about = importers.load_weights(source, node)
    # Where the weights came from is said once, in the provenance, not in every filter.
    filters = [{"name": f"filter_{k:02d}", "bias": b, "weights": w}
               for k, (w, b) in enumerate(zip(weights, bias))]
    about = dict(about, source=str(source))
    bank_name = name or (Path(output).stem if output != "-" else Path(source).stem)
    text = banks.dump(name=bank_name, defaults=defaults, filters=filters,
                      description=f"{len(filters)} filters imported from {Path(source).name}",
                      provenance=about)
    where = _write_output(output, text.encode(), binary=False)
    _note(f"convcli: wrote {where}: {_plural(len(filters), 'filter')} of "
          f"{'x'.join(map(str, weights.shape[1:]))} ({defaults['input']})", quiet)


@bank_app.command("check", epilog="""\b
Examples:
  convcli bank check my-bank.yaml
  convcli bank check banks/*.yaml --json""")
def bank_check(
    files: List[str] = typer.Argument(..., metavar="FILE...", help="Bank files to validate."),
    json_out: bool = _json_option("One line per file (ok, or its problems)"),
    quiet: bool = _quiet_option(), verbose: bool = _verbose_option(),
) -> None:
    """Validate bank files; list every problem with file, line, filter and field."""
    from . import bank as banks
    from .errors import BankError

    problems = []
    for ref in files:
        try:
            net = banks.load_network(ref)
        except BankError as e:
            problems.extend(e.problems)
            if json_out:
                _emit([json.dumps({"file": ref, "ok": False,
                                   "problems": [str(p) for p in e.problems]})])
            continue
        convs = [layer.bank for layer in net.layers if hasattr(layer, "bank")]
        count = sum(len(b.filters) for b in convs)
        if json_out:
            _emit([json.dumps({"file": ref, "ok": True, "name": net.name, "filters": count,
                               "layers": len(net.layers),
                               "input": convs[0].input if convs else None})])
        what = (f"input {convs[0].input}" if len(net.layers) == 1 and convs else
                _plural(len(net.layers), "layer"))
        _note(f"ok: {printable(ref)}: bank {net.name!r}, {_plural(count, 'filter')}, {what}",
              quiet)
    if problems:
        raise BankError(problems)


# convcli learn's defaults (learn.DEFAULT_*), here as numbers so that --help needs no import.
# 64 filters: on benchmarks/learned.py's natural textures k-means features gain 11 points
# from 16 to 64 filters and 5 more at 256, for four times the cost (see the README).
LEARN_FILTERS, LEARN_SIZE, LEARN_PATCHES = 64, 7, 20000


@app.command(epilog="""\b
Examples:
  convcli learn samples/*.png -o mine.yaml --filters 32 --size 7
  convcli learn photos/ -o - --method pca > pca.yaml""")
def learn(
    image_paths: List[str] = typer.Argument(..., metavar="IMAGES...", help="Images to learn from."),
    output: str = typer.Option(..., "--output", "-o", metavar="FILE",
                               help="The bank file to write (.yaml), or - for stdout."),
    filters: int = typer.Option(LEARN_FILTERS, "--filters", "-k", metavar="N",
                                help="How many filters."),
    size: int = typer.Option(LEARN_SIZE, "--size", metavar="S", help="Kernel size S (S x S)."),
    channels: str = typer.Option("gray", "--channels", metavar="gray|rgb|dense",
                                 help="gray (2-D kernels), rgb (3 x S x S), or dense: every "
                                      "channel of feature maps (.npy) as they are."),
    method: str = typer.Option("kmeans", "--method", metavar="kmeans|pca",
                               help="kmeans (Coates et al. 2011) or pca."),
    seed: int = typer.Option(0, "--seed", metavar="N",
                             help="Random seed: the same seed gives the same bank."),
    count: int = typer.Option(LEARN_PATCHES, "--patches", metavar="N",
                              help="Random patches to learn from."),
    window_norm: Optional[bool] = typer.Option(
        None, "--window-norm/--no-window-norm",
        help="Learn on normalised patches and make the bank normalise each window it reads "
             "the same way (brightness and contrast out, exactly) [default: on for kmeans, "
             "off for pca]."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                       help="Bank name [default: the output file's stem]."),
    quiet: bool = _quiet_option(), verbose: bool = _verbose_option(),
) -> None:
    """Learn a bank of filters from random patches of images."""
    from . import learn as learning

    learning.check_options(filters, size, method, seed, count)  # before reading any image
    if image_paths.count("-") > 1:
        raise UsageError("stdin (-) can hold one image; give it once")
    pixels = learning.read_for_learning([_stdin_bytes() if p == "-" else p for p in image_paths],
                                        channels)
    if window_norm is None:
        window_norm = learning.default_window_norm(method)
    if method == "kmeans" and not quiet and sys.stderr.isatty():  # a bar only on a terminal
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.progress import TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True),
                      transient=True) as bar:
            task = bar.add_task(f"k-means: {filters:,} filters from {count:,} patches",
                                total=learning.KMEANS_ITERATIONS)
            result = learning.learn(pixels, filters, size, method, seed, count,
                                    progress=lambda: bar.advance(task), labels=image_paths,
                                    window_norm=window_norm)
    else:
        result = learning.learn(pixels, filters, size, method, seed, count, labels=image_paths,
                                window_norm=window_norm)
    command = " ".join(["convcli", "learn", *image_paths, "-o", output, "--filters",
                        str(filters), "--size", str(size), "--channels", channels, "--method",
                        method, "--seed", str(seed), "--patches", str(count),
                        "--window-norm" if window_norm else "--no-window-norm"])
    bank_name = name or (Path(output).stem if output != "-" else "learned")
    text = learning.to_yaml(result, name=bank_name, method=method, channels=channels, seed=seed,
                            size=size, sources=image_paths, command=command, count=count)
    where = _write_output(output, text.encode(), binary=False)
    _note(f"convcli: wrote {where}: {_plural(filters, f'{method} filter')} of {size}x{size} "
          f"({channels}{', each window normalised' if window_norm else ''})", quiet)


@cache_app.command("info")
def cache_info(json_out: bool = _json_option("Where and what"),
               quiet: bool = _quiet_option(), verbose: bool = _verbose_option()) -> None:
    """Where the JIT cache is, and what it holds."""
    from . import jitcache

    files = jitcache.cache_files()
    kernels = sorted({p.name.split("-")[0] for p in files if p.suffix == ".nbi"})
    size = sum(p.stat().st_size for p in files)
    if json_out:
        _emit([json.dumps({"folder": str(jitcache.cache_dir()), "files": len(files),
                           "bytes": size, "kernels": kernels})])
        return
    _emit([f"folder: {jitcache.cache_dir()}",
           f"files: {len(files)} ({size / 2**20:.1f} MiB)",
           "compiled kernels: "
           + (", ".join(kernels) if kernels else "none (run convcli cache warm)")])


@cache_app.command("warm")
def cache_warm(quiet: bool = _quiet_option(), verbose: bool = _verbose_option()) -> None:
    """Compile the engine now (or check that the cache loads), so later runs start at once."""
    import time

    from . import engine

    start = time.perf_counter()
    _compile_once(quiet)
    engine.prepare()  # loads what the cache holds (or compiles what it lacks)
    _note(f"convcli: engine ready in {time.perf_counter() - start:.1f} s; "
          f"{engine.cache_status()}", quiet)


@cache_app.command("clear")
def cache_clear(quiet: bool = _quiet_option(), verbose: bool = _verbose_option()) -> None:
    """Delete the compiled engine from the cache (the next large job compiles it again)."""
    from . import jitcache

    files, size = jitcache.clear()
    _note(f"convcli: removed {_plural(files, 'file')} ({size / 2**20:.1f} MiB) from "
          f"{jitcache.cache_dir()}", quiet)


def main() -> None:
    """Console-script entry point."""
    import warnings

    from . import workers

    workers.keep_freed_memory()  # this process is ours: see convcli.workers
    # Batches fork worker processes after numba has loaded; where TBB cannot load, numba
    # would otherwise take GNU OpenMP, which does not survive a fork. The library itself
    # leaves the choice to its host; the command line owns its process.
    os.environ.setdefault("NUMBA_THREADING_LAYER", "forksafe")
    warnings.showwarning = _show_warning
    app(prog_name="convcli")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning becomes one convcli line on stderr, never Python's two-line
    form with a source excerpt."""
    _say(f"convcli: warning: {' '.join(str(message).split())}")
