"""What to process: command-line inputs -> Sources, each with the output folder it owns.

Inputs are files, folders (scanned; ``recursive`` descends), glob patterns expanded here
(``photos/**/*.jpg``), ``-`` (one image on stdin) and lists of paths (``--files-from``).
Files found by a folder scan or a glob that are not images (by extension) are skipped with a
warning; a file named explicitly is always tried, so a non-image there is an error.

Outputs mirror the inputs below their deepest common folder, where a folder named on the
command line counts as holding its contents: ``photos/a/x.jpg`` found by scanning ``photos/``
writes to ``OUT/a/x/``. Two inputs never share an output folder: when names collide (``x.png``
and ``x.jpg``, or names equal but for case) each colliding input keeps its extension in the
name (``x_png``, ``x_jpg``), then ``-2``, ``-3``, ... in path order if still needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from .errors import UsageError

# What a folder scan or a glob takes: images, and arrays of feature maps (convcli.features).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".npy")
STDIN = "-"
SHEETS_FOLDER = "by-filter"  # OUT/by-filter/<filter>.png: the --stack-by filter sheets


@dataclass(frozen=True)
class Source:
    """One input: a path, or bytes read from stdin."""

    label: str  # how messages and reports name it
    rel: str = ""  # its output folder, relative to OUT (POSIX separators)
    path: Path | None = None
    data: bytes | None = None
    problem: str | None = None  # known to fail before reading (e.g. a glob matching nothing)
    url: str | None = None  # an fsspec URL (s3://...), read by the process that runs it

    def content(self) -> Path | bytes:
        """What to read: the bytes given, the file, or the URL's bytes (read now)."""
        if self.data is not None:
            return self.data
        if self.url is not None:
            from . import storage

            return storage.read_bytes(self.url, self.label)
        if self.path is None:
            raise ValueError(f"{self.label}: a source with neither a path nor bytes")
        return self.path

    @classmethod
    def from_path(cls, path: str | Path) -> "Source":
        return cls(label=str(path), path=Path(path))

    @classmethod
    def from_bytes(cls, data: bytes, label: str = "<stdin>") -> "Source":
        return cls(label=label, data=data, rel="stdin")


@dataclass
class Expansion:
    sources: list[Source]
    warnings: list[str]
    skipped: list[str] = field(default_factory=list)  # files found that are not images


# Patterns are matched by wcmatch (a well-kept glob library) rather than the standard glob
# module: braces ('*.{png,jpg}'), '**' across folders, and names matched without regard to
# case, so '*.png' takes A.PNG as a folder scan does. Dot files are left out, as in a scan.
def _glob_flags() -> int:
    from wcmatch import glob as wc

    return wc.BRACE | wc.GLOBSTAR | wc.IGNORECASE


def _is_pattern(text: str) -> bool:
    if not any(ch in text for ch in "*?[{"):
        return False  # the common case, without importing wcmatch
    from wcmatch import glob as wc

    return bool(wc.is_magic(text, flags=_glob_flags()))


def _glob(pattern: str) -> list[str]:
    from wcmatch import glob as wc

    return sorted(wc.glob(pattern, flags=_glob_flags()))


def expand(args: Iterable[str], *, files_from: str | None = None, null_separated: bool = False,
           recursive: bool = False, exclude: Path | None = None,
           read_stdin: Callable[[], bytes] | None = None) -> Expansion:
    """Turn command-line inputs into Sources with unique output folders."""
    args = list(args)
    uses_stdin = args.count(STDIN) + (files_from == STDIN)
    if uses_stdin > 1:
        raise UsageError("stdin can feed only one of: an image (-) or the list of inputs",
                         settings=("files_from",))
    if null_separated and files_from is None:
        raise UsageError("NUL-separated applies to a list of inputs; give the list too",
                         settings=("files_from", "null"))
    found: list[tuple[Source, Path | None]] = []  # source and the folder that holds it
    warnings: list[str] = []
    skipped: list[str] = []
    excluded = exclude.resolve() if exclude is not None else None

    def scan(folder: Path) -> None:
        for path in _walk(folder, recursive, excluded):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append((Source.from_path(path), folder))
            else:
                skipped.append(str(path))

    for arg in args + (_read_list(files_from, null_separated, read_stdin) if files_from else []):
        if _is_url(arg):
            from . import storage

            if storage.is_remote(arg):
                _expand_url(arg, recursive, found, skipped)
                continue
            arg = storage.local_path(arg)  # file://: a path like any other
        if arg == STDIN:
            if read_stdin is None:
                raise UsageError("- (an image on stdin) is not available here")
            found.append((Source.from_bytes(read_stdin()), None))
        elif Path(arg).is_dir():
            scan(Path(arg))
        elif not os.path.lexists(arg) and _is_pattern(arg):
            matches = _glob(arg)
            if not matches:
                found.append((Source(label=arg, problem=f"{arg}: no files match this pattern"),
                              None))
            for m in matches:
                if Path(m).is_dir():
                    scan(Path(m))
                elif Path(m).suffix.lower() in IMAGE_SUFFIXES:
                    found.append((Source.from_path(m), _glob_root(arg)))
                else:
                    skipped.append(m)
        else:
            found.append((Source.from_path(arg), None))
    return Expansion(_name_outputs(_unique_paths(found)), warnings, skipped)


def _is_url(text: str) -> bool:
    return "://" in text and text.split("://", 1)[0].replace("+", "").replace(".", "") \
        .replace("-", "").isalnum()


def _expand_url(url: str, recursive: bool, found: list, skipped: list[str]) -> None:
    """A remote input (convcli.storage): a file, a folder (its images; ``recursive``
    descends) or a glob pattern, listed here and read later by the process that runs it.
    Output folders mirror what is below the folder or the pattern's fixed part."""
    from . import storage

    fs, path = storage.filesystem(url)
    protocol = url.split("://", 1)[0]

    def whole(p: str) -> str:
        return f"{protocol}://{p.lstrip('/')}" if not p.startswith(f"{protocol}://") else p

    try:
        if _is_pattern(path):
            base = _glob_root(path).as_posix()
            listed = sorted(p for p in fs.glob(path) if not fs.isdir(p))
            if not listed:
                found.append((Source(label=url, problem=f"{url}: no files match this pattern"),
                              None))
                return
        elif fs.isdir(path):
            base = path.rstrip("/")
            listed = sorted(fs.find(path, maxdepth=None if recursive else 1))
        else:
            found.append((Source(label=url, url=url,
                                 rel=safe_rel([path.rstrip("/").rsplit("/", 1)[-1]])), None))
            return
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001  each store raises its own kinds
        found.append((Source(label=url, problem=f"{url}: cannot list: "
                             f"{' '.join(str(e).split())[:200] or type(e).__name__}"), None))
        return
    for p in listed:
        parts = p[len(base):].strip("/").split("/") if p.startswith(base) else [p.rsplit("/")[-1]]
        if any(part.startswith(".") for part in parts):
            continue  # hidden, as in a folder scan
        if not p.lower().endswith(IMAGE_SUFFIXES):
            skipped.append(whole(p))
            continue
        found.append((Source(label=whole(p), url=whole(p), rel=safe_rel(parts)), None))


def _read_list(files_from: str, null_separated: bool, read_stdin) -> list[str]:
    if files_from == STDIN:
        if read_stdin is None:
            raise UsageError("a list of inputs on stdin is not available here")
        raw = read_stdin()
    else:
        try:
            raw = Path(files_from).read_bytes()
        except OSError as e:
            raise UsageError(f"{files_from}: cannot read the list of inputs: {e.strerror or e}",
                             settings=("files_from",)) from None
    text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    items = text.split("\0") if null_separated else text.splitlines()
    return [item for item in items if item]


def _walk(folder: Path, recursive: bool, excluded: Path | None) -> list[Path]:
    """Files in a folder (sorted; hidden names and the output folder left out)."""
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rootp = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (excluded is None or (rootp / d).resolve() != excluded))
        out.extend(rootp / f for f in sorted(files) if not f.startswith("."))
        if not recursive:
            break
    return out


def _glob_root(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard: the folder it scans."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _is_pattern(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _unique_paths(found: list[tuple[Source, Path | None]]) -> list[tuple[Source, Path | None]]:
    """Drop a file named twice (e.g. by a folder scan and by name); first mention wins."""
    seen: set[str] = set()
    out = []
    for source, holder in found:
        if source.path is not None:
            key = os.path.normcase(os.path.abspath(source.path))
            if key in seen:
                continue
            seen.add(key)
        out.append((source, holder))
    return out


def _name_outputs(found: list[tuple[Source, Path | None]]) -> list[Source]:
    """Give each source its output folder, mirrored below the deepest common folder."""
    holders = [Path(os.path.abspath(h)) if h is not None else Path(os.path.abspath(s.path)).parent
               for s, h in found if s.path is not None]
    base = Path(os.path.commonpath(holders)) if holders else None
    named = []
    for source, _ in found:
        if source.path is None:  # bytes, or a URL named by _expand_url
            named.append(source if source.rel else replace(source, rel="input"))
            continue
        absolute = Path(os.path.abspath(source.path))
        parts = absolute.relative_to(base).parts if base else (absolute.name,)
        named.append(replace(source, rel=safe_rel(parts)))
    return _dedupe(named)


# Output folders must never be names of the files an input's folder holds (maps, stack,
# arrays) nor climb out of OUT, whatever the input is called.
_OUTPUT_SUFFIXES = (".png", ".npy", ".json", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".part")


def safe_rel(parts: Iterable[str]) -> str:
    """A relative output folder (POSIX) for an input found at ``parts`` (folders, then the
    file name), that provably stays below OUT: the file's extension is dropped; a part
    that is empty, '.', '..', hidden (starts with '.'), holds a separator or ends like an
    output file (``x.png.png`` -> ``x.png``) is prefixed or rewritten, so it can neither
    climb out nor collide with another input's files."""
    parts = list(parts)
    if not parts:
        return "input"
    name = parts[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    parts[-1] = stem
    out = []
    for part in parts:
        part = part.replace("/", "_").replace("\\", "_").replace("\0", "_")
        if not part or part.startswith("."):
            part = "_" + part
        if part.lower().endswith(_OUTPUT_SUFFIXES):
            head, _, tail = part.rpartition(".")
            part = f"{head}_{tail}"
        out.append(part)
    return "/".join(out)


def _dedupe(sources: list[Source]) -> list[Source]:
    def key(rel: str) -> str:
        return rel.casefold()

    counts: dict[str, int] = {}
    for s in sources:
        counts[key(s.rel)] = counts.get(key(s.rel), 0) + 1
    reserved = {SHEETS_FOLDER}
    out = []
    taken: set[str] = set(reserved)
    for s in sources:
        rel = s.rel
        head, _, tail = rel.partition("/")
        named = s.path if s.path is not None else Path(s.url.rsplit("/", 1)[-1]) if s.url \
            else None
        suffix = named.suffix.lstrip(".").lower() if named is not None else ""
        if key(head) in reserved and (tail or not suffix):
            rel = f"_{rel}"  # a folder, or a file without extension, named like ours
        elif (counts[key(rel)] > 1 or key(rel) in reserved) and suffix:
            rel = f"{rel}_{suffix}"
        candidate, n = rel, 1
        while key(candidate) in taken:
            n += 1
            candidate = f"{rel}-{n}"
        taken.add(key(candidate))
        out.append(replace(s, rel=candidate))
    return out
