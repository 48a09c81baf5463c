"""The status file: what the daemon is doing, for `flatd status`, scripts and dashboards.

`StatusBoard` owns the schema-1 document of SPEC.md. Any thread may report into it
(`mark_changed()` is O(1) and never blocks on I/O); a writer thread writes the file
atomically when something changed — at most a few times a second however many changes
arrive — and at least every `heartbeat_seconds` so `updated_at` proves the daemon is
alive. A failed write (full disk, read-only mount) is logged and retried; it never
raises into the code that reported the change.

The reading side (`read_status`, `daemon_running`, `render_status`, `status_command`)
is what `flatd status` runs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from flatd import __version__
from flatd.atomic import atomic_write_bytes
from flatd.lock import process_state
from flatd.reasons import one_line

__all__ = [
    "EXIT_NOT_RUNNING",
    "EXIT_RUNNING",
    "SCHEMA",
    "STALE_SECONDS",
    "StatusBoard",
    "daemon_running",
    "read_status",
    "render_status",
    "status_command",
    "why_not_running",
]

log = structlog.get_logger("flatd.status")

SCHEMA = 1
STALE_SECONDS = 90.0
MIN_WRITE_INTERVAL = 0.25  # coalesce bursts of changes: at most ~4 writes a second
RETRY_SECONDS = 1.0
EXIT_RUNNING, EXIT_NOT_RUNNING = 0, 3
RUNNING_STATES = ("starting", "running", "stopping")

Snapshot = Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]]


def utc_iso(moment: datetime | None = None) -> str:
    """ISO 8601 UTC with a "Z" suffix and millisecond precision."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: object) -> datetime | None:
    """A timestamp of the status file as an aware datetime (naive ones are taken as UTC)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
        on_write: Callable[[dict[str, Any]], None] | None = None,
        history: int = 50,
        heartbeat_seconds: float = 10.0,
        min_interval: float = MIN_WRITE_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self._snapshot = snapshot
        self._on_write = on_write
        self._history = max(1, int(history))
        self._heartbeat = float(heartbeat_seconds)
        self._min_interval = float(min_interval)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_write = 0.0  # monotonic time of the last successful write
        self._failing: str | None = None  # the last write error, logged once
        self._daemon: dict[str, Any] = {
            "pid": os.getpid(),
            "version": __version__,
            "state": "starting",
            "started_at": utc_iso(),
            "updated_at": None,
        }
        self._watch = {"directories": list(directories), "observer": observer}
        self._index: dict[str, Any] = {}
        self._groups: list[dict[str, Any]] = []
        self._masters: list[dict[str, Any]] = []
        self._errors: list[dict[str, Any]] = []
        self._skipped: list[dict[str, Any]] = []
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

    def add_master(self, fields: dict[str, Any]) -> None:
        """Record a master just written (newest first, bounded history)."""
        entry = dict(fields)
        entry.setdefault("created_at", utc_iso())
        with self._lock:
            self._masters.insert(0, entry)
            del self._masters[self._history :]
        self.mark_changed()

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
                self._errors.insert(0, {"path": path, "reason": reason, "at": now, "count": 1})
                del self._errors[self._history :]
        self.mark_changed()

    def add_skip(self, path: str, reason: str) -> None:
        """Record a file that is not an input (not a flat, flatd's own output) with its
        reason: counted in `index`, the newest kept in `skipped` (bounded)."""
        entry = {"path": path, "reason": one_line(reason), "at": utc_iso()}
        with self._lock:
            self._skipped.insert(0, entry)
            del self._skipped[self._history :]
        self.mark_changed()

    # -- the document ------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        """The current status document (a fresh copy; `updated_at` is now)."""
        snapshot: tuple[dict[str, Any], list[dict[str, Any]]] | None
        try:
            index, groups = self._snapshot()
            snapshot = dict(index), list(groups)
        except Exception:
            log.exception("status_snapshot_failed")
            snapshot = None
        with self._lock:
            if snapshot is not None:
                self._index, self._groups = snapshot
            self._daemon["updated_at"] = utc_iso()
            return {
                "schema": SCHEMA,
                "daemon": dict(self._daemon),
                "watch": {
                    "directories": list(self._watch["directories"]),
                    "observer": self._watch["observer"],
                },
                "index": dict(self._index),
                "groups": [dict(g) for g in self._groups],
                "masters": [dict(m) for m in self._masters],
                "errors": [dict(e) for e in self._errors],
                "skipped": [dict(s) for s in self._skipped],
            }

    def write_now(self) -> bool:
        """Write the document now; False (logged, never raised) when the write failed."""
        with self._write_lock:
            document = self.document()
            data = (json.dumps(document, indent=2, default=str) + "\n").encode("utf-8")
            try:
                atomic_write_bytes(self.path, data)
            except OSError as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if reason != self._failing:
                    log.error(
                        "status_write_failed",
                        path=str(self.path),
                        reason=reason,
                        retry_seconds=RETRY_SECONDS,
                    )
                    self._failing = reason
                return False
            if self._failing is not None:
                log.info("status_write_recovered", path=str(self.path))
                self._failing = None
            self._last_write = time.monotonic()
            self.writes += 1
        if self._on_write is not None:
            try:
                self._on_write(document)
            except Exception:
                log.exception("status_on_write_failed")
        return True

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
            self._closed = True
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


# -- reading ----------------------------------------------------------------------------------
def read_status(path: Path) -> dict[str, Any] | None:
    """The status document at `path`, or None when it is missing or not a JSON object."""
    try:
        document = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def daemon_running(document: dict[str, Any] | None, *, now: datetime | None = None) -> bool:
    """Whether the document describes a live daemon: starting, running or stopping, its
    pid still the process that wrote it, and updated within the last STALE_SECONDS."""
    return not why_not_running(document, now=now)


def why_not_running(document: dict[str, Any] | None, *, now: datetime | None = None) -> str:
    """Why the document does not describe a live daemon ("" when it does): the state it
    left, its pid gone or now another program's, or no update for too long."""
    if not isinstance(document, dict):
        return "no status document"
    daemon = document.get("daemon")
    if not isinstance(daemon, dict):
        return "no daemon block in the status file"
    if daemon.get("state") not in RUNNING_STATES:
        return f"state {daemon.get('state', 'unknown')}"
    pid = daemon.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "no pid in the status file"
    now = now or datetime.now(UTC)
    updated = parse_iso(daemon.get("updated_at"))
    last = f"last update {_ago(now, updated)}" if updated else "never updated"
    alive = process_state(pid, started_at=parse_iso(daemon.get("started_at")))
    if alive == "gone":
        return f"pid {pid} is gone; {last}"
    if alive == "reused":
        return f"pid {pid} is now another program; {last}"
    if updated is None or (now - updated).total_seconds() > STALE_SECONDS:
        return f"pid {pid} has not updated its status for over {STALE_SECONDS:g} s; {last}"
    return ""


# -- rendering --------------------------------------------------------------------------------
_COLORS = {
    "green": "\033[32m",
    "yellow": "\033[33m",
    "red": "\033[31m",
    "bold": "\033[1m",
    "dim": "\033[2m",
}
_RESET = "\033[0m"
_STATE_COLORS = {
    "running": "green",
    "done": "green",
    "waiting": "yellow",
    "pending": "yellow",
    "combining": "yellow",
    "stopping": "yellow",
    "starting": "yellow",
    "too_few": "red",
    "stopped": "red",
    "failed": "red",
    "error": "red",
}
MAX_ERRORS_SHOWN = 10
MAX_MASTERS_SHOWN = 10


class _Paint:
    """ANSI colours for a terminal, or plain text."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, name: str | None) -> str:
        return f"{_COLORS[name]}{text}{_RESET}" if self.color and name else text

    def state(self, text: str) -> str:
        return self(text, _STATE_COLORS.get(text))


def render_status(document: dict[str, Any], color: bool, *, now: datetime | None = None) -> str:
    """A human summary of a status document (ANSI colours only when `color`)."""
    now = now or datetime.now(UTC)
    paint = _Paint(color)
    lines = [
        *_daemon_lines(document, paint, now),
        "",
        *_group_lines(document, paint, now),
        *_master_lines(document, paint, now),
        *_error_lines(document, paint, now),
    ]
    return "\n".join(lines) + "\n"


def _daemon_lines(document: dict[str, Any], paint: _Paint, now: datetime) -> list[str]:
    daemon = _dict(document.get("daemon"))
    dstate = str(daemon.get("state", "unknown"))
    started = parse_iso(daemon.get("started_at"))
    updated = parse_iso(daemon.get("updated_at"))
    facts = [f"pid {daemon.get('pid', '?')}"]
    if daemon.get("version"):
        facts.append(f"version {daemon['version']}")
    if started and dstate in RUNNING_STATES:
        facts.append(f"up {_duration((now - started).total_seconds())}")
    elif dstate == "stopped" and updated:
        facts.append(f"stopped {_ago(now, updated)}")
        if started:
            facts.append(f"ran {_duration((updated - started).total_seconds())}")
    elif started:
        facts.append(f"started {_ago(now, started)}")
    if dstate != "stopped" or not updated:
        facts.append(f"updated {_ago(now, updated)}" if updated else "never updated")
    lines = [f"flatd {paint.state(dstate)} ({', '.join(facts)})"]
    watch = _dict(document.get("watch"))
    directories = watch.get("directories") or []
    if directories or watch.get("observer"):
        lines.append(
            f"watching {', '.join(map(str, directories)) or '(nothing)'}"
            f" ({watch.get('observer', '?')})"
        )
    index = _dict(document.get("index"))
    if index:
        lines.append("index: " + ", ".join(f"{v} {k}" for k, v in index.items()))
    return lines


def _group_lines(document: dict[str, Any], paint: _Paint, now: datetime) -> list[str]:
    groups = [g for g in document.get("groups") or [] if isinstance(g, dict)]
    lines = [paint("groups", "bold") + ("" if groups else ": none yet")]
    rows = []
    notes: dict[int, list[str]] = {}  # row -> the group's notes, one line each
    for group in groups:
        gstate = str(group.get("state", "?"))
        rejected = group.get("rejected")
        frames = f"{group.get('frames', 0)} frames"
        if isinstance(rejected, list) and rejected:
            frames += f", {len(rejected)} rejected"
        rows.append((_group_name(group), gstate, frames, _group_detail(group, gstate, now)))
        notes[len(rows) - 1] = [str(n) for n in group.get("notes") or [] if n]
    if rows:
        wname = max(len(r[0]) for r in rows)
        wstate = max(len(r[1]) for r in rows)
        wframes = max(len(r[2]) for r in rows)
        for number, (name, gstate, frames, detail) in enumerate(rows):
            pad = " " * (wstate - len(gstate))
            lines.append(
                f"  {name:<{wname}}  {paint.state(gstate)}{pad}  {frames:>{wframes}}"
                + (f"  {detail}" if detail else "")
            )
            lines.extend(f"    note: {note}" for note in notes[number])
    return lines


def _master_lines(document: dict[str, Any], paint: _Paint, now: datetime) -> list[str]:
    masters = [m for m in document.get("masters") or [] if isinstance(m, dict)]
    if not masters:
        return []
    lines = ["", paint("latest masters", "bold")]
    for master in masters[:MAX_MASTERS_SHOWN]:
        created = parse_iso(master.get("created_at"))
        extra = []
        if master.get("n_frames") is not None:
            extra.append(f"{master['n_frames']} frames")
        if master.get("n_rejected"):
            extra.append(f"{master['n_rejected']} rejected")
        if created:
            extra.append(_ago(now, created))
        qa = master.get("qa")
        if isinstance(qa, dict) and qa.get("flagged"):
            extra.append(paint("QA flagged", "red"))
            if master.get("promoted") is False:
                extra.append("not promoted to latest/")
        lines.append(f"  {master.get('path', '?')}  ({', '.join(extra)})")
    if len(masters) > MAX_MASTERS_SHOWN:
        lines.append(f"  … and {len(masters) - MAX_MASTERS_SHOWN} older")
    return lines


def _error_lines(document: dict[str, Any], paint: _Paint, now: datetime) -> list[str]:
    errors = [e for e in document.get("errors") or [] if isinstance(e, dict)]
    if not errors:
        return []
    lines = ["", paint(f"recent errors ({len(errors)})", "red")]
    for error in errors[:MAX_ERRORS_SHOWN]:
        at = parse_iso(error.get("at"))
        when = _ago(now, at) if at else "?"
        count = error.get("count", 1)
        times = f" (×{count})" if isinstance(count, int) and count > 1 else ""
        where = f"{error['path']}: " if error.get("path") else ""
        reason = one_line(error.get("reason", "?"))
        lines.append(f"  {when}: {where}{paint(reason, 'red')}{times}")
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"  … and {len(errors) - MAX_ERRORS_SHOWN} older")
    return lines


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _group_name(group: dict[str, Any]) -> str:
    if group.get("name"):
        return str(group["name"])
    keys = group.get("group")
    if isinstance(keys, dict) and keys:
        return "_".join(str(v) for v in keys.values())
    return "?"


def _group_detail(group: dict[str, Any], gstate: str, now: datetime) -> str:
    parts = []
    stable = parse_iso(group.get("stable_at"))
    if gstate in ("waiting", "pending") and stable is not None:
        parts.append(f"combines {_when(now, stable)}")
    elif gstate == "combining":
        parts.append("combining now")
    if group.get("reason") and gstate not in ("done",):
        parts.append(one_line(group["reason"]))
    if group.get("latest_master"):
        parts.append(f"latest {Path(str(group['latest_master'])).name}")
    return "; ".join(parts)


def _when(now: datetime, moment: datetime) -> str:
    seconds = (moment - now).total_seconds()
    if seconds <= 0:
        return "now"
    if seconds < 120:
        return f"in {round(seconds)} s"
    return f"at {moment.astimezone(UTC):%H:%M:%S} UTC"


def _ago(now: datetime, moment: datetime | None) -> str:
    if moment is None:
        return "?"
    seconds = (now - moment).total_seconds()
    if seconds < 0:
        return "just now"
    return f"{_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if minutes < 10 and seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def status_command(path: Path, *, as_json: bool, color: bool) -> int:
    """`flatd status`: print the status (JSON or a summary); 0 if the daemon runs, else 3.

    `color` is whether stdout is a terminal; `NO_COLOR` or `TERM=dumb` turn colours off."""
    path = Path(path)
    color = color and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    document = read_status(path)
    if document is None:
        reason = "no status file at" if not path.exists() else "unreadable status file at"
        line = f"flatd is not running ({reason} {path})"
        print(line, file=sys.stderr if as_json else sys.stdout)
        return EXIT_NOT_RUNNING
    why = why_not_running(document)
    running = not why
    if as_json:
        print(json.dumps(document, indent=2))
        if not running:
            print(f"flatd is not running ({why}; status file {path})", file=sys.stderr)
        return EXIT_RUNNING if running else EXIT_NOT_RUNNING
    if not running:
        daemon = _dict(document.get("daemon"))
        if daemon.get("state") == "stopped":  # a clean stop: nothing to explain
            updated = parse_iso(daemon.get("updated_at"))
            why = f"status file {path}" + (
                f", last updated {_ago(datetime.now(UTC), updated)}" if updated else ""
            )
        else:
            why = f"{why}; status file {path}"
        print(f"flatd is not running ({why}); last known status:")
    print(render_status(document, color), end="")
    return EXIT_RUNNING if running else EXIT_NOT_RUNNING
