"""Signals for `flatd run`, handled so that they cannot hang the daemon: a handler only
notes what was asked and wakes the service's thread, which does the work.

Python runs a signal handler on the main thread between two bytecodes, wherever that
thread is — possibly inside a lock it holds (writing a log line, setting a
`threading.Event`). A handler that logs or takes a lock can then wait for itself forever.
So the service's handlers set a flag and call `Wakeup.wake`, which writes one byte into a
pipe (`os.write` takes no Python lock), and the service's thread, waiting in
`Wakeup.wait` (a `select` on that pipe), wakes at once and does what the flag asks:
stopping (SIGTERM, SIGINT) or reloading the configuration (SIGHUP).

The kernel may deliver a signal to any thread (the engine's, the observer's); Python then
runs the handler only once the main thread next executes bytecode, which a main thread
asleep in `select` would not do before its timeout. So the pipe is also Python's wakeup
fd (`signal.set_wakeup_fd`): the C-level handler writes to it at once, whichever thread
took the signal, and the `select` returns.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from types import FrameType

__all__ = ["STOP_SIGNALS", "Wakeup", "install"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP


class Wakeup:
    """A pipe that signal handlers and other threads write a byte into, and one thread
    waits on. `wake()` never blocks and never raises."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    def wake(self) -> None:
        """Make the current or next `wait()` return now (safe in a signal handler)."""
        with contextlib.suppress(OSError):  # full (a wake is pending anyway), or closed
            os.write(self._write, b"!")

    def wait(self, timeout: float) -> bool:
        """Wait until woken or `timeout` seconds passed; True when woken."""
        try:
            ready, _, _ = select.select([self._read], [], [], max(0.0, timeout))
        except (OSError, ValueError):  # closed meanwhile: the daemon is going away
            return True
        if not ready:
            return False
        with contextlib.suppress(OSError):  # drain every pending wake at once
            while os.read(self._read, 512):
                pass
        return True

    def wake_on_signals(self) -> None:
        """Have Python's C-level signal handler write to this pipe too (main thread only)."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def close(self) -> None:
        """Close the pipe; a later `wake()` does nothing (it never writes to a number
        the system may have given to another file meanwhile)."""
        with contextlib.suppress(ValueError):  # not the main thread: it was never set there
            previous = signal.set_wakeup_fd(-1)
            if previous not in (-1, self._write):  # someone else's: leave it as it was
                signal.set_wakeup_fd(previous)
        fds, (self._read, self._write) = (self._read, self._write), (-1, -1)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def install(
    on_stop: Callable[[int], None], on_reload: Callable[[], None], wakeup: Wakeup | None = None
) -> None:
    """Call `on_stop(signum)` on SIGTERM and SIGINT, `on_reload()` on SIGHUP. Both run
    inside the signal handler: they must only set flags and `Wakeup.wake()`. `wakeup`, the
    pipe the main thread waits on, is woken by the signal itself, on whatever thread."""
    if wakeup is not None:
        wakeup.wake_on_signals()

    def stop(signum: int, frame: FrameType | None) -> None:
        on_stop(signum)

    def reload(signum: int, frame: FrameType | None) -> None:
        on_reload()

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    signal.signal(RELOAD_SIGNAL, reload)
