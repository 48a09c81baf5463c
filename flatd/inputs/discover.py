"""Which paths are candidate frames: name patterns, temporary names, directory walks.

Used by the one-shot commands, the daemon's scans and the watcher alike, so a file is a
candidate by the same rule wherever it is seen. Patterns match names case-insensitively.
(The daemon's scans walk the tree their own way, directory by directory: see `tree`.)
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
    stable order; directories in `exclude` (e.g. the output directory) are not entered.
    Symbolic links to directories are followed, each directory read once: a second path
    to one already read (another link, a loop) is not entered again."""
    patterns = tuple(patterns)
    seen = {identity for p in exclude if (identity := identity_of(p)) is not None}
    for root in roots:
        if root.is_file():
            yield root
            continue
        yield from _walk_directory(root, patterns, recursive, seen)


def _walk_directory(
    top: Path, patterns: tuple[str, ...], recursive: bool, seen: set[tuple[int, int]]
) -> Iterator[Path]:
    pending = [top]
    while pending:
        directory = pending.pop()
        identity = identity_of(directory)
        if identity is None or identity in seen:
            continue
        seen.add(identity)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        subdirectories = []
        for entry in entries:
            if _is_dir(entry):
                if recursive and not entry.name.startswith("."):
                    subdirectories.append(Path(entry.path))
            elif matches(entry.name, patterns) and _is_file(entry):
                yield Path(entry.path)
        pending += reversed(subdirectories)


def identity_of(path: Path) -> tuple[int, int] | None:
    """A directory's (device, inode), None when it cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False
