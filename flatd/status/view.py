"""`flatd status`: the status file read back and said to people, and whether the daemon
that wrote it is still alive (its state, its PID, the age of its last update).

Exit status 0 while the daemon runs, 3 when it does not (SPEC.md). Names, times and
colours are said as the page says them (`flatd.status.present`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flatd.daemon.lock import process_state
from flatd.reasons import one_line
from flatd.status import present
from flatd.status.schema import STALE_SECONDS, parse_iso, read_status

__all__ = [
    "EXIT_NOT_RUNNING",
    "EXIT_RUNNING",
    "daemon_running",
    "render_status",
    "status_command",
    "why_not_running",
]

EXIT_RUNNING, EXIT_NOT_RUNNING = 0, 3
RUNNING_STATES = ("starting", "running", "stopping")


def daemon_running(document: Mapping[str, Any] | None, *, now: datetime | None = None) -> bool:
    """Whether the document describes a live daemon: starting, running or stopping, its
    pid still the process that wrote it, and updated within the last STALE_SECONDS."""
    return not why_not_running(document, now=now)


def why_not_running(document: Mapping[str, Any] | None, *, now: datetime | None = None) -> str:
    """Why the document does not describe a live daemon ("" when it does): the state it
    left, its pid gone or now another program's, or no update for too long."""
    if not isinstance(document, Mapping):
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
    last = f"last update {present.ago(now, updated)}" if updated else "never updated"
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
_TONE_COLORS: dict[present.Tone, str | None] = {
    "ok": "green",
    "busy": "yellow",
    "bad": "red",
    "other": None,
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
        return self(text, _TONE_COLORS[present.tone(text)])


def render_status(document: Mapping[str, Any], color: bool, *, now: datetime | None = None) -> str:
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


def _daemon_lines(document: Mapping[str, Any], paint: _Paint, now: datetime) -> list[str]:
    daemon = _dict(document.get("daemon"))
    dstate = str(daemon.get("state", "unknown"))
    started = parse_iso(daemon.get("started_at"))
    updated = parse_iso(daemon.get("updated_at"))
    facts = [f"pid {daemon.get('pid', '?')}"]
    if daemon.get("version"):
        facts.append(f"version {daemon['version']}")
    if started and dstate in RUNNING_STATES:
        facts.append(f"up {present.duration((now - started).total_seconds())}")
    elif dstate == "stopped" and updated:
        facts.append(f"stopped {present.ago(now, updated)}")
        if started:
            facts.append(f"ran {present.duration((updated - started).total_seconds())}")
    elif started:
        facts.append(f"started {present.ago(now, started)}")
    if dstate != "stopped" or not updated:
        facts.append(f"updated {present.ago(now, updated)}" if updated else "never updated")
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


def _group_lines(document: Mapping[str, Any], paint: _Paint, now: datetime) -> list[str]:
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
        rows.append((present.group_name(group), gstate, frames, _group_detail(group, gstate, now)))
        notes[len(rows) - 1] = [str(n) for n in group.get("notes") or [] if n] + _trust_notes(group)
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


def _master_lines(document: Mapping[str, Any], paint: _Paint, now: datetime) -> list[str]:
    masters = [m for m in document.get("masters") or [] if isinstance(m, dict)]
    if not masters:
        return []
    lines = ["", paint("masters", "bold")]
    for master in masters[:MAX_MASTERS_SHOWN]:
        lines.append(
            f"  {master.get('path', '?')}  ({', '.join(_master_facts(master, paint, now))})"
        )
        other = [str(o) for o in master.get("other_settings") or []]
        if other:
            lines.append(f"    made with other settings: {'; '.join(other)}")
    if len(masters) > MAX_MASTERS_SHOWN:
        lines.append(f"  … and {len(masters) - MAX_MASTERS_SHOWN} older")
    outdated = sum(bool(m.get("other_settings")) for m in masters)
    if outdated:
        lines.append(
            f"  {outdated} master(s) made with other settings than the configuration's: "
            "`flatd remake --all` makes them again"
        )
    return lines


def _master_facts(master: dict[str, Any], paint: _Paint, now: datetime) -> list[str]:
    created = parse_iso(master.get("created_at"))
    facts = []
    if master.get("n_frames") is not None:
        facts.append(f"{master['n_frames']} frames")
    if master.get("n_rejected"):
        facts.append(f"{master['n_rejected']} rejected")
    if created:
        facts.append(present.ago(now, created))
    if master.get("promoted"):
        facts.append(paint("latest", "green"))
    qa = master.get("qa")
    facts += _extension_facts(qa, paint)
    if isinstance(qa, dict) and qa.get("confirmed"):
        facts.append(paint("change confirmed", "green"))
    elif isinstance(qa, dict) and qa.get("flagged"):
        facts.append(paint("QA flagged", "red"))
        if master.get("promoted") is False:
            facts.append("not promoted to latest/")
    return facts


def _extension_facts(qa: object, paint: _Paint) -> list[str]:
    """A mosaic's QA extension by extension: those flagged by name, else how many passed."""
    extensions = (
        [e for e in (qa.get("extensions") or []) if isinstance(e, dict)]
        if isinstance(qa, dict)
        else []
    )
    if not extensions:
        return []
    flagged = [str(e.get("name", "?")) for e in extensions if e.get("flagged")]
    if flagged:
        return [paint(f"QA flagged in {', '.join(flagged)}", "red")]
    return [f"QA ok in all {len(extensions)} extensions"]


def _error_lines(document: Mapping[str, Any], paint: _Paint, now: datetime) -> list[str]:
    errors = [e for e in document.get("errors") or [] if isinstance(e, dict)]
    if not errors:
        return []
    lines = ["", paint(f"recent errors ({len(errors)})", "red")]
    for error in errors[:MAX_ERRORS_SHOWN]:
        at = parse_iso(error.get("at"))
        when = present.ago(now, at) if at else "?"
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


def _trust_notes(group: dict[str, Any]) -> list[str]:
    """What the status says about a group's frames and masters beyond their state: frames
    waiting because the master's inputs are gone, inputs gone, duplicates."""
    notes = []
    if group.get("held"):
        notes.append(one_line(group["held"]))
    gone = [g for g in group.get("gone") or [] if isinstance(g, dict)]
    count = group.get("gone_count") or len(gone)
    if gone:
        names = ", ".join(Path(str(g.get("path"))).name for g in gone[:3])
        more = f" and {count - 3} more" if count > 3 else ""
        notes.append(
            f"{count} input(s) of its masters gone from disk (the masters stay): {names}{more}"
        )
    for duplicate in [d for d in group.get("duplicates") or [] if isinstance(d, dict)][:5]:
        notes.append(f"{duplicate.get('path')}: duplicate of {duplicate.get('duplicate_of')}")
    return notes


def _group_detail(group: dict[str, Any], gstate: str, now: datetime) -> str:
    parts = []
    stable = parse_iso(group.get("stable_at"))
    if gstate in ("waiting", "pending") and stable is not None:
        parts.append(f"combines {present.when(now, stable)}")
    elif gstate == "combining":
        parts.append("combining now")
    if group.get("reason") and gstate not in ("done",):
        parts.append(one_line(group["reason"]))
    if group.get("latest_master"):
        parts.append(f"latest {Path(str(group['latest_master'])).name}")
    return "; ".join(parts)


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
                f", last updated {present.ago(datetime.now(UTC), updated)}" if updated else ""
            )
        else:
            why = f"{why}; status file {path}"
        print(f"flatd is not running ({why}); last known status:")
    print(render_status(document, color), end="")
    return EXIT_RUNNING if running else EXIT_NOT_RUNNING
