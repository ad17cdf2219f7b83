"""Inputs and output folders beyond this machine's file system: fsspec URLs. Never prints.

``file://`` URLs are plain paths (convcli.inputs and batch turn them into paths), so they
keep the local guarantees: each input's files are moved into place together by renames.

Other URLs (``s3://bucket/out``, ``gs://...``, ``memory://`` in tests) are read and written
through fsspec by whichever process runs the input: a worker of the local pool or a Dask
worker. Object stores have no rename, so an input's outputs are made complete or absent
this way (see process): the input's files are made in a private local folder, every file is
uploaded to its final name (an object appears whole or not at all), and only then a
completion marker, ``OUT/REL/.convcli-complete.json``, naming the files and the settings
fingerprint. The marker is what counts: --resume, the reports of a run whose scheduler was
lost, and anything downstream trust an input's files only when its marker is there. An
earlier marker is deleted before the files are replaced, so a half-replaced set is never
trusted; files left without a marker (a worker killed mid-upload) are rewritten by the
next run.

The S3 client is an optional extra (``pip install 'convcli[s3]'``: s3fs); its settings come
from the usual places (AWS_* variables, ~/.aws, AWS_ENDPOINT_URL for other S3 servers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .errors import InputError, OutputError, UsageError

if TYPE_CHECKING:
    from .bank import KernelBank
    from .inputs import Source
    from .network import Network
    from .pipeline import Options, Result

MARKER = ".convcli-complete.json"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# The package each protocol needs (fsspec's own implementations cover file, memory, http).
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
             "abfs": "adlfs", "abfss": "adlfs"}
_EXTRAS = {"s3fs": "s3"}


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (``scheme://...``) rather than a path."""
    return bool(_URL.match(text))


def is_remote(text: str) -> bool:
    """A URL that is not a plain file on this machine."""
    found = _URL.match(text)
    return found is not None and found.group(1).lower() != "file"


def local_path(text: str) -> str:
    """A ``file://`` URL as the path it names; anything else unchanged."""
    found = _URL.match(text)
    if not found or found.group(1).lower() != "file":
        return text
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"{text}: a file:// URL names a file of this machine "
                         "(file:///path); use a path on shared storage or another scheme")
    return unquote(parts.path) or "/"


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of a URL and the URL's path in it. A protocol whose package is
    missing is a usage error that names the package."""
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:
        raise UsageError(f"{url}: URLs need fsspec: pip install fsspec") from None
    found = _URL.match(url)
    protocol = found.group(1).lower() if found else "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        package = _PACKAGES.get(protocol, f"the fsspec package for {protocol}://")
        hint = (f"pip install 'convcli[{_EXTRAS[package]}]'" if package in _EXTRAS
                else f"pip install {package}")
        raise UsageError(f"{url}: {protocol}:// needs {package}: {hint}") from None
    except ValueError:
        raise UsageError(f"{url}: unknown storage protocol {protocol}://") from None
    return url_to_fs(url)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


def _why(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def read_bytes(url: str, label: str | None = None) -> bytes:
    """The bytes of a remote input; InputError naming it when it cannot be read."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise InputError(f"{label or url}: not found") from None
    except Exception as e:  # noqa: BLE001  each store raises its own kinds
        raise InputError(f"{label or url}: cannot read: {_why(e)}") from None


def check_folder(url: str) -> None:
    """Fail before any work if the output URL cannot be written: a probe object is written
    and removed."""
    fs, path = filesystem(url)
    probe = join(path, f".convcli-probe-{os.getpid()}-{time.time_ns()}")
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001
        raise OutputError(f"{url}: cannot write there: {_why(e)}") from None


def output_url(source: Source, options: Options) -> str:
    return join(options.out, source.rel)


def done_before(source: Source, bank: KernelBank | Network, options: Options,
                since_ns: int | None = None) -> list[str] | None:
    """The input's output URLs when its completion marker is there, records these settings
    and lists every file they make (and, with ``since_ns``, was written at or after that
    time); else None."""
    from . import pipeline

    folder = output_url(source, options)
    fs, path = filesystem(folder)
    try:
        marker = json.loads(fs.cat_file(join(path, MARKER)))
    except Exception:  # noqa: BLE001  absent, unreadable or not ours: not done
        return None
    names = pipeline.output_names(bank, options)
    # The marker lists every file uploaded (also each layer's, with all layers written).
    if not isinstance(marker, dict) or marker.get("settings") != \
            pipeline.settings_key(bank, options) or \
            not set(names) <= set(marker.get("files") or ()):
        return None
    if since_ns is not None and int(marker.get("written_ns", 0)) < since_ns:
        return None
    return [join(folder, name) for name in names]


def process(source: Source, bank: KernelBank | Network, options: Options,
            result: Result | None = None) -> Result:
    """pipeline.process for any storage: a remote input is read through fsspec, and outputs
    for a remote folder are made in a private local folder, then uploaded (see the module's
    docstring). Local inputs and outputs go straight to pipeline.process."""
    from . import pipeline

    result = result if result is not None else pipeline.Result(input=source.label)
    # The first pass of shared ranges writes nothing: no upload and no marker for it.
    if not is_remote(options.out) or options.ranges_only:
        if getattr(source, "url", None) is not None:
            try:
                source = fetched(source)
            except InputError as e:
                return _failed(result, str(e))
        return pipeline.process(source, bank, options, result)
    start = time.perf_counter()
    try:
        if options.resume:
            done = done_before(source, bank, options)
            if done is not None:
                result.status, result.outputs = "skipped", done
                return result
        scratch = tempfile.mkdtemp(prefix="convcli-upload-")
    except Exception as e:  # noqa: BLE001  the store's own errors
        return _failed(result, f"{source.label}: {options.out}: cannot read: {_why(e)}")
    try:
        if getattr(source, "url", None) is not None:
            source = fetched(source)
        local = pipeline.process(source, bank, replace(options, out=scratch, resume=False))
        if local.status != "ok":
            local.seconds = time.perf_counter() - start
            return _copy(local, result)
        files: list[tuple[str, str | bytes]] = [
            (os.path.relpath(p, os.path.join(scratch, source.rel)), p) for p in local.outputs]
        upload(output_url(source, options), files, pipeline.settings_key(bank, options))
        local.outputs = [join(output_url(source, options), name) for name, _ in files]
        local.seconds = time.perf_counter() - start
        return _copy(local, result)
    except (InputError, OutputError) as e:
        return _failed(result, str(e))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def make_files(source: Source, bank: KernelBank | Network, options: Options
               ) -> tuple[Result, list[tuple[str, bytes]]]:
    """For a client that keeps the outputs itself (inputs and outputs shipped): the input's
    files as (name below its output folder, bytes), made in a private local folder; the
    Result's outputs are these names."""
    from . import pipeline

    scratch = tempfile.mkdtemp(prefix="convcli-ship-")
    try:
        local = pipeline.process(source, bank, replace(options, out=scratch, resume=False))
        folder = os.path.join(scratch, source.rel)
        files = []
        for p in local.outputs:
            with open(p, "rb") as fh:
                files.append((os.path.relpath(p, folder), fh.read()))
        local.outputs = [name for name, _ in files]
        return local, files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fetched(source: Source) -> Source:
    """A remote input with its bytes read (on the process that runs it)."""
    assert source.url is not None
    return replace(source, data=read_bytes(source.url, source.label), url=None)


def upload(folder: str, files: list[tuple[str, str | bytes]], settings: str) -> None:
    """Put one input's files (name, local path or bytes) below ``folder``, then its
    completion marker; an earlier marker goes first, so a set being replaced is never
    taken for complete. OutputError when the store refuses."""
    fs, path = filesystem(folder)
    try:
        try:
            fs.rm_file(join(path, MARKER))
        except FileNotFoundError:
            pass
        for name, content in files:
            target = join(path, name)
            if isinstance(content, bytes):
                fs.pipe_file(target, content)
            else:
                fs.put_file(content, target)
        marker = {"convcli": 1, "settings": settings, "files": [n for n, _ in files],
                  "written_ns": time.time_ns()}
        fs.pipe_file(join(path, MARKER), json.dumps(marker).encode())
    except Exception as e:  # noqa: BLE001  the store's own errors
        raise OutputError(f"{folder}: cannot write: {_why(e)}") from None


def _failed(result: Result, message: str) -> Result:
    from .errors import EXIT_ERROR

    result.status, result.error, result.exit_code, result.outputs = \
        "error", message, EXIT_ERROR, []
    return result


def _copy(source: Result, target: Result) -> Result:
    """Fill the caller's Result (see pipeline.process) from the one made here."""
    for name in source.__dataclass_fields__:
        setattr(target, name, getattr(source, name))
    return target
