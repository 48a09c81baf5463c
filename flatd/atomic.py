"""Atomic file replacement: a reader or a crash sees the old file or the new one, never a part.

Every master, `latest/` entry and status document is written through `atomic_write`: a
temporary file in the same directory (named so it is recognisable and never matches an
input pattern, and carrying the writer's PID), flushed and fsynced, given normal
permissions, renamed over the target, and the directory fsynced so the rename itself
survives a power cut.

Temporaries a crash left behind are removed at start-up (once the daemon holds its
lock), and only those whose writer is gone: a `flatd combine` writing into the same
directory keeps its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from flatd.daemon.lock import process_state

TEMP_PREFIX = ".flatd-tmp-"
TEMP_SUFFIX = ".part"
# the writer's PID in a temporary's name: `<name>.pid<PID>.<random>` (atomic_write) or
# `<name>.<PID>` (latest/'s link); a name with neither is from an older flatd
_OWNER = re.compile(r"\.pid(\d+)\.[^.]*$|\.(\d+)$")


def atomic_write(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
    """Create or replace `path` with what `write(fileobj)` writes, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{TEMP_PREFIX}{path.name}.pid{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent
    )
    tmp = Path(tmp_name)
    os.close(fd)
    try:
        # opened by name, not fdopen'ed: writers that look at `fh.name` get a path (astropy
        # turns a failed write into AttributeError when the name is a descriptor number)
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create or replace `path` with `data`, atomically."""
    atomic_write(path, lambda fh: fh.write(data), mode)


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """Whether `path` is one of our own half-written temporaries."""
    return path.name.startswith(TEMP_PREFIX) and path.name.endswith(TEMP_SUFFIX)


def temporary_owner(path: Path) -> int | None:
    """The PID of the process that wrote a temporary, when its name says."""
    body = path.name[len(TEMP_PREFIX) : -len(TEMP_SUFFIX)]
    found = _OWNER.search(body)
    if found is None:
        return None
    return int(found.group(1) or found.group(2))


def is_stale(path: Path) -> bool:
    """Whether a temporary's writer is gone: no process has its PID, or the one that has
    it started after the temporary was made (its ctime, which no writer can set back). A
    temporary of an older flatd, whose name carries no PID, counts as stale (call this
    only while holding the lock)."""
    return writer_gone(path, temporary_owner(path))


def writer_gone(path: Path, pid: int | None) -> bool:
    """Whether process `pid`, which wrote the temporary `path`, is gone: no process has
    its PID, or the one that has it started after the temporary was made (its ctime, which
    no writer can set back); None (no PID known) counts as gone."""
    if pid is None:
        return True
    try:
        written = datetime.fromtimestamp(path.stat().st_ctime, UTC)
    except FileNotFoundError:
        return False  # already gone: nothing to remove
    return process_state(pid, started_at=written) != "alive"


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporaries a crash left in `directory` (and `latest/`) whose writer is
    gone; return what went."""
    removed = []
    for candidate in _walk_temporaries(directory):
        if is_stale(candidate):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _walk_temporaries(directory: Path) -> Iterator[Path]:
    for sub in (directory, directory / "latest"):
        if sub.is_dir():
            yield from (p for p in sub.iterdir() if is_temporary(p))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def remove_stale_temporaries_of(path: Path) -> list[Path]:
    """Delete temporaries a crash left while replacing `path` (e.g. the status file, whose
    directory may be shared, so only this file's own temporaries go) whose writer is
    gone; return what went."""
    removed = []
    if path.parent.is_dir():
        for candidate in path.parent.glob(f"{TEMP_PREFIX}{glob.escape(path.name)}.*{TEMP_SUFFIX}"):
            if is_temporary(candidate) and is_stale(candidate):
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed
