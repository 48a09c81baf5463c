"""One daemon per output directory and status file, and who a PID belongs to.

`InstanceLock` takes an exclusive `fcntl.flock` on a lock file in the output directory
(`.flatd.lock`) and one beside the status file (`.<name>.lock`) and writes its PID into
them. The kernel drops a flock when its process dies however it dies, so a lock file
left by a crash never blocks a new daemon; a second daemon on the same output or status
file gets `AlreadyRunning`, naming the holder's PID from the file.

`process_state()` tells whether a PID from a status document or a temporary file's name
is still the process that wrote it: gone, alive, or a newer process that reused the PID
(it started after the writer did). Linux's /proc is used when it is there; elsewhere a
live PID is taken as the writer's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

__all__ = [
    "AlreadyRunning",
    "InstanceLock",
    "is_lock_file",
    "lock_path_beside",
    "process_start",
    "process_state",
]

OUTPUT_LOCK_NAME = ".flatd.lock"
ProcessState = Literal["gone", "alive", "reused"]
START_SLACK = timedelta(seconds=2)  # /proc start times have clock-tick resolution


class AlreadyRunning(Exception):
    """Another live process holds the lock."""

    def __init__(self, path: Path, pid: int | None, what: str) -> None:
        self.path, self.pid, self.what = path, pid, what
        holder = f"pid {pid}" if pid else "a process whose pid it did not record"
        super().__init__(
            f"another flatd ({holder}) is already running on {what} (lock {path}); stop it, "
            "or give this one its own [output] directory and [status] file"
        )


def lock_path_beside(path: Path) -> Path:
    """The lock file of a file that is not a directory: `.<name>.lock` beside it."""
    return path.with_name(f".{path.name}.lock")


def is_lock_file(path: Path) -> bool:
    """Whether `path` is one of flatd's lock files (left in place after a stop)."""
    return path.name.startswith(".") and path.name.endswith(".lock")


class InstanceLock:
    """Exclusive locks on the given lock files, held until `release()`."""

    def __init__(self, targets: dict[Path, str]) -> None:
        """`targets`: lock file → what it protects (for the message)."""
        self._targets = targets
        self._fds: list[int] = []

    @classmethod
    def for_daemon(cls, output_dir: Path, status_file: Path) -> InstanceLock:
        return cls(
            {
                output_dir / OUTPUT_LOCK_NAME: f"output directory {output_dir}",
                lock_path_beside(status_file): f"status file {status_file}",
            }
        )

    def acquire(self) -> None:
        """Take every lock or none; raise AlreadyRunning naming the holder."""
        try:
            for path, what in self._targets.items():
                self._fds.append(_take(path, what))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the flock; the file stays (deleting it races)
        self._fds = []

    @property
    def held(self) -> bool:
        return bool(self._fds)


def _take(path: Path, what: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise AlreadyRunning(path, holder, what) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# -- whose PID is it ----------------------------------------------------------------------
def process_state(pid: int, started_at: datetime | None = None) -> ProcessState:
    """Whether `pid` is gone, alive, or `reused` by a process that started after
    `started_at` (the time the PID's writer recorded as its own start)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # alive, another user's (the flatd user's)
    except (OSError, OverflowError):
        return "gone"
    if started_at is not None:
        began = process_start(pid)
        if began is not None and began > started_at + START_SLACK:
            return "reused"
    return "alive"


def process_start(pid: int) -> datetime | None:
    """When process `pid` started (Linux /proc), or None when that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)
