"""Which paths are candidate frames: name patterns, temporary names, directory walks.

Used by the one-shot commands, the start-up scan and the watcher alike, so a file is a
candidate by the same rule wherever it is seen. Patterns match names case-insensitively.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

TEMPORARY_SUFFIXES = (".part", ".tmp", ".partial", ".filepart", ".crdownload", "~")


def is_temporary_name(name: str) -> bool:
    """Names writers use before the final rename: dot files (rsync's `.name.XXXXXX`, our
    own `.flatd-tmp-*`), `*.part`, `*.tmp` and the like."""
    return name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES)


def matches(path: Path | str, patterns: Iterable[str]) -> bool:
    """Whether a file's name matches one of the patterns, case-insensitively on every
    system (`*.fits` takes `FLAT_001.FITS` and `x.Fits.fz` from Windows capture software),
    and is not a temporary name."""
    name = os.path.basename(path)
    if is_temporary_name(name):
        return False
    folded = name.casefold()
    return any(fnmatch.fnmatchcase(folded, p.casefold()) for p in patterns)


def walk(
    roots: Iterable[Path], patterns: Iterable[str], recursive: bool, exclude: Iterable[Path] = ()
) -> Iterator[Path]:
    """Candidate files under `roots` (files given directly are taken as they are), in a
    stable order; directories in `exclude` (e.g. the output directory) are not entered."""
    patterns = tuple(patterns)
    excluded = {p.resolve() for p in exclude}
    for root in roots:
        if root.is_file():
            yield root
            continue
        yield from _walk_directory(root, patterns, recursive, excluded)


def _walk_directory(
    root: Path, patterns: tuple[str, ...], recursive: bool, excluded: set[Path]
) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if recursive and not entry.name.startswith(".") and path.resolve() not in excluded:
                yield from _walk_directory(path, patterns, recursive, excluded)
        elif entry.is_file() and matches(entry.name, patterns):
            yield path
