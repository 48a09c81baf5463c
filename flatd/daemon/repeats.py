"""A failure that repeats, logged once: when it starts, when it starts failing another
way, and when it stops — each time with how often it happened.

The status file, the metrics file and the page are written every second or so; on a full
disk every write fails the same way. Logging each would bury the journal (22 lines in
20 s), logging only the first would hide how long it lasted. `RepeatedFailure` logs
`<what>_failed` on the first failure and on each change of the way it fails (`failure_kind`:
the error's type and errno, not a text that names a new temporary file each time), with
the count of the failures before; `<what>_recovered` on the first success after, with the
count and how long it lasted. Safe to call from any thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog

from flatd.daemon.retries import failure_kind

log = structlog.get_logger("flatd")


class RepeatedFailure:
    """The failures of one repeated action (`what`, e.g. "status_write")."""

    def __init__(self, what: str, level: str = "error", **fields: Any) -> None:
        self.what = what
        self.level = level
        self.fields = fields
        self.kind: str | None = None  # None: not failing
        self.reason = ""
        self.count = 0  # failures the way `kind` says, since it started failing that way
        self.total = 0  # failures since the last success
        self._since = 0.0
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        return self.kind is not None

    def failed(self, reason: str, **extra: Any) -> bool:
        """One failure; True when it was logged (the first, or a new way of failing)."""
        kind = failure_kind(reason)
        with self._lock:
            self.total += 1
            if kind == self.kind:
                self.count += 1
                return False
            before = {"previous_reason": self.reason, "previous_failures": self.count}
            if self.kind is None:
                before = {}
                self._since = time.monotonic()
            self.kind, self.reason, self.count = kind, reason, 1
        getattr(log, self.level)(
            f"{self.what}_failed", reason=reason, **self.fields, **before, **extra
        )
        return True

    def succeeded(self) -> bool:
        """The action worked; True when that ended a failure (logged with its count)."""
        with self._lock:
            if self.kind is None:
                return False
            reason, total = self.reason, self.total
            seconds = round(time.monotonic() - self._since, 1)
            self.kind, self.reason, self.count, self.total = None, "", 0, 0
        log.info(
            f"{self.what}_recovered",
            last_reason=reason,
            failures=total,
            failing_seconds=seconds,
            **self.fields,
        )
        return True
