"""The daemon's status board: the schema-1 document (`status.schema`) and the thread that
keeps the status file up to date.

Any thread may report into it (`mark_changed()` is O(1) and never blocks on I/O); a
writer thread writes the file atomically when something changed — at most a few times a
second however many changes arrive — and at least every `heartbeat_seconds` so
`updated_at` proves the daemon is alive. A failed write (full disk, read-only mount) is
logged once per way of failing (`repeats.RepeatedFailure`: `status_write_failed`, then
`status_write_recovered` with the count) and retried every second; it never raises into
the code that reported the change.

Masters are listed once each, as they are on disk: a master written again replaces its
entry, a superseded or deleted one leaves the list (`put_master`, `drop_master`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import structlog

from flatd import __version__
from flatd.atomic import atomic_write_bytes
from flatd.daemon.repeats import RepeatedFailure
from flatd.frames import Skip
from flatd.reasons import one_line
from flatd.status.schema import (
    SCHEMA,
    ErrorEntry,
    GroupEntry,
    MasterEntry,
    SkipEntry,
    StatusDocument,
    utc_iso,
)

__all__ = ["StatusBoard"]

log = structlog.get_logger("flatd.status")

MIN_WRITE_INTERVAL = 0.25  # coalesce bursts of changes: at most ~4 writes a second
RETRY_SECONDS = 1.0

Snapshot = Callable[[], tuple[dict[str, int], list[GroupEntry]]]
Annotate = Callable[[list[MasterEntry]], list[MasterEntry]]


class StatusBoard:
    """The daemon's status document and the thread that keeps the file up to date.

    One lock guards the document's own fields. File writes are serialised by a second
    lock that is never taken while the first is held, and `snapshot()` and `on_write()`
    are called with neither held by this object's state, so they may take their owners'
    locks (and report back into the board) without deadlock.
    """

    def __init__(
        self,
        path: Path,
        *,
        directories: list[str],
        observer: str,
        snapshot: Snapshot,
        on_write: Callable[[StatusDocument], None] | None = None,
        annotate_masters: Annotate | None = None,
        history: int = 50,
        heartbeat_seconds: float = 10.0,
        min_interval: float = MIN_WRITE_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self._snapshot = snapshot
        self._on_write = on_write
        self._annotate = annotate_masters  # e.g. how each master's settings differ from now
        self._history = max(1, int(history))
        self._heartbeat = float(heartbeat_seconds)
        self._min_interval = float(min_interval)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_write = 0.0  # monotonic time of the last successful write
        self.write_failures = RepeatedFailure("status_write", path=str(path))
        self._daemon: dict[str, Any] = {
            "pid": os.getpid(),
            "version": __version__,
            "state": "starting",
            "started_at": utc_iso(),
            "updated_at": None,
        }
        self._watch = {"directories": list(directories), "observer": observer}
        self._index: dict[str, int] = {}
        self._groups: list[GroupEntry] = []
        self._masters: dict[str, MasterEntry] = {}  # by path, newest written first
        self._errors: list[ErrorEntry] = []
        self._skipped: list[SkipEntry] = []
        self.writes = 0  # successful writes, for tests and diagnostics

    # -- reporting (any thread) ----------------------------------------------------------
    def mark_changed(self) -> None:
        """Something in the snapshot changed: the writer will write soon. O(1)."""
        self._dirty.set()

    def set_state(self, state: str) -> None:
        """Set the daemon state ("running", "stopping", "stopped") and write at once."""
        with self._lock:
            self._daemon["state"] = state
        self.write_now()

    def set_directories(self, directories: list[str]) -> None:
        """The watched directories changed (a reload)."""
        with self._lock:
            self._watch["directories"] = list(directories)
        self.mark_changed()

    @property
    def limit(self) -> int:
        """How many masters, errors and skipped files are listed at most."""
        return self._history

    def put_master(self, entry: MasterEntry, newest: bool = True) -> None:
        """A master written (`newest`: listed first) or found on disk (listed after the
        others), replacing any entry of the same file; the list is bounded."""
        path = str(entry["path"])
        if not entry.get("created_at"):
            entry = cast(MasterEntry, {**entry, "created_at": utc_iso()})
        with self._lock:
            self._masters.pop(path, None)
            if newest:
                self._masters = {path: entry, **self._masters}
            elif len(self._masters) < self._history:
                self._masters[path] = entry
            for extra in list(self._masters)[self._history :]:
                del self._masters[extra]
        self.mark_changed()

    def listed(self) -> set[str]:
        """The paths of the masters listed."""
        with self._lock:
            return set(self._masters)

    def drop_master(self, path: Path | str) -> None:
        """A master superseded, or deleted by hand: no longer listed."""
        with self._lock:
            found = self._masters.pop(str(path), None)
        if found is not None:
            self.mark_changed()

    def masters(self) -> list[MasterEntry]:
        with self._lock:
            return list(self._masters.values())

    def add_error(self, path: str, reason: str) -> None:
        """Record a problem with a file (or, with an empty path, with the daemon), its
        reason on one line. An immediate repeat of the newest error only refreshes its
        time and count."""
        now = utc_iso()
        reason = one_line(reason)
        with self._lock:
            newest = self._errors[0] if self._errors else None
            if newest is not None and newest["path"] == path and newest["reason"] == reason:
                newest["at"] = now
                newest["count"] = newest.get("count", 1) + 1
            else:
                error: ErrorEntry = {"path": path, "reason": reason, "at": now, "count": 1}
                self._errors.insert(0, error)
                del self._errors[self._history :]
        self.mark_changed()

    def add_skip(self, skip: Skip) -> None:
        """A file that is not an input: a refused one (it should have been a flat but
        cannot be used) is an error; one simply not an input (not a flat, flatd's own
        output) goes to the bounded `skipped` list. Both are counted in `index`."""
        if skip.refused:
            self.add_error(str(skip.path), skip.reason)
            return
        entry: SkipEntry = {
            "path": str(skip.path),
            "reason": one_line(skip.reason),
            "at": utc_iso(),
        }
        with self._lock:
            self._skipped.insert(0, entry)
            del self._skipped[self._history :]
        self.mark_changed()

    # -- the document ------------------------------------------------------------------------
    def document(self) -> StatusDocument:
        """The current status document (a fresh copy; `updated_at` is now)."""
        snapshot: tuple[dict[str, int], list[GroupEntry]] | None
        try:
            index, groups = self._snapshot()
            snapshot = dict(index), list(groups)
        except Exception:
            log.exception("status_snapshot_failed")
            snapshot = None
        masters = self._annotated(self.masters())
        with self._lock:
            if snapshot is not None:
                self._index, self._groups = snapshot
            self._daemon["updated_at"] = utc_iso()
            return {
                "schema": SCHEMA,
                "daemon": cast(Any, dict(self._daemon)),
                "watch": {
                    "directories": list(self._watch["directories"]),
                    "observer": str(self._watch["observer"]),
                },
                "index": dict(self._index),
                "groups": [cast(GroupEntry, dict(g)) for g in self._groups],
                "masters": masters,
                "errors": [cast(ErrorEntry, dict(e)) for e in self._errors],
                "skipped": [cast(SkipEntry, dict(s)) for s in self._skipped],
            }

    def _annotated(self, masters: list[MasterEntry]) -> list[MasterEntry]:
        copies = [cast(MasterEntry, dict(m)) for m in masters]
        if self._annotate is None:
            return copies
        try:
            return self._annotate(copies)
        except Exception:
            log.exception("status_annotate_failed")
            return copies

    def write_now(self) -> bool:
        """Write the document now; False (logged, never raised) when the write failed."""
        with self._write_lock:
            document = self.document()
            data = (json.dumps(document, indent=2, default=str) + "\n").encode("utf-8")
            try:
                atomic_write_bytes(self.path, data)
            except OSError as exc:
                self._write_failed(exc)
                return False
            self.write_failures.succeeded()
            self._last_write = time.monotonic()
            self.writes += 1
        if self._on_write is not None:
            try:
                self._on_write(document)
            except Exception:
                log.exception("status_on_write_failed")
        return True

    def _write_failed(self, exc: OSError) -> None:
        reason = (
            f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
            if exc.errno
            else f"{type(exc).__name__}: {exc}"
        )
        self.write_failures.failed(reason, retry_seconds=RETRY_SECONDS)

    # -- the writer thread ------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (a daemon thread; `close()` stops it)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="flatd-status", daemon=True)
        self._thread.start()

    def close(self, final_state: str = "stopped") -> None:
        """Stop the writer thread and write the final document synchronously."""
        self._stop.set()
        self._dirty.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)
        with self._lock:
            self._daemon["state"] = final_state
        self.write_now()

    def _run(self) -> None:
        next_heartbeat = time.monotonic()  # write promptly once started
        while not self._stop.is_set():
            timeout = max(0.0, next_heartbeat - time.monotonic())
            changed = self._dirty.wait(timeout)
            if self._stop.is_set():
                return
            # coalesce: a burst of changes within min_interval becomes one write
            pause = self._last_write + self._min_interval - time.monotonic()
            if changed and pause > 0 and self._stop.wait(pause):
                return
            self._dirty.clear()
            try:
                ok = self.write_now()
            except Exception:  # never let the writer thread die
                log.exception("status_writer_error")
                ok = False
            if ok:
                next_heartbeat = time.monotonic() + self._heartbeat
            else:
                next_heartbeat = time.monotonic() + min(RETRY_SECONDS, self._heartbeat)
                if self._stop.wait(min(RETRY_SECONDS, self._heartbeat)):
                    return
