"""Where calibrated copies of raw frames live while a sequence is combined.

One private directory per combination, `<output>/.flatd-work/<pid>-XXXXXXXX/`, removed when
the combination ends. The output directory has room for masters and is never indexed
(directory walks skip it and every dot-directory); the files inside are dot-named too, so
a watcher's name patterns never match them either. Each file is written under a temporary
name and renamed, so it is whole or absent; it is not fsynced: a crash loses nothing that
matters, and the next start removes the directories of processes that no longer run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from flatd.atomic import writer_gone

WORK_DIRECTORY = ".flatd-work"
_OWNED = re.compile(r"(\d+)-[A-Za-z0-9_]+")


class Workspace:
    """A private directory for one combination's calibrated frames; a context manager that
    removes it (and everything in it) on exit."""

    def __init__(self, output_directory: Path) -> None:
        root = output_directory / WORK_DIRECTORY
        root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))

    def path_for(self, raw: Path) -> Path:
        """Where the calibrated copy of `raw` goes: dot-named, unique per raw path."""
        digest = hashlib.sha1(os.fsencode(raw), usedforsecurity=False).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9.-]", "-", raw.name)[:80]
        return self.path / f".cal-{digest}-{stem}"

    def write(self, path: Path, write: Callable[[BinaryIO], None]) -> None:
        """Write `path` (inside the workspace) whole or not at all."""
        fd, temporary = tempfile.mkstemp(prefix=".part-", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def close(self) -> None:
        """Remove the workspace, and `.flatd-work` itself once no other one is in it."""
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):  # another combination's workspace: it stays
            self.path.parent.rmdir()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def remove_stale_workspaces(output_directory: Path) -> list[Path]:
    """Remove the workspaces of processes that no longer run (a crash leaves them);
    return what went. Another running flatd's workspace is left alone."""
    root = output_directory / WORK_DIRECTORY
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        match = _OWNED.fullmatch(entry.name)
        if entry.is_dir() and match and writer_gone(entry, int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    with contextlib.suppress(OSError):  # only when nothing else is left in it
        root.rmdir()
    return removed
