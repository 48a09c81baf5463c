"""How the status document is said to people: group names, times, and each state's tone.

Shared by `flatd status` (`status.view`, ANSI colours on a terminal) and the page
(`page`, CSS classes), so both say "3 min ago" and colour a failed group alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["STATE_TONES", "Tone", "ago", "duration", "group_name", "stamp", "tone", "when"]

Tone = Literal["ok", "busy", "bad", "other"]
STATE_TONES: dict[str, Tone] = {
    "running": "ok",
    "done": "ok",
    "waiting": "busy",
    "pending": "busy",
    "combining": "busy",
    "starting": "busy",
    "stopping": "busy",
    "too_few": "bad",
    "stopped": "bad",
    "failed": "bad",
    "error": "bad",
}


def tone(state: str) -> Tone:
    """How a daemon or group state should look: fine, busy, bad, or neither."""
    return STATE_TONES.get(state, "other")


def group_name(group: dict[str, Any]) -> str:
    """A status group entry's name: its safe name, else its values joined by `_`."""
    if group.get("name"):
        return str(group["name"])
    keys = group.get("group")
    if isinstance(keys, dict) and keys:
        return "_".join(str(v) for v in keys.values())
    return "?"


def duration(seconds: float) -> str:
    """A length of time, coarser as it grows: `42 s`, `90 min`, `3 h 5 min`, `2 d 4 h`
    (the page's stale script says it the same way)."""
    s = int(max(0.0, seconds))
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s} s"
    if m < 120:
        return f"{m} min"
    if h < 48:
        return f"{h} h {m % 60} min"
    return f"{d} d {h % 24} h"


def ago(now: datetime, moment: datetime | None) -> str:
    """How long before `now` a moment was: `42 s ago`, `3 h 5 min ago`, ... (`just now`
    for a moment in the future of a clock that is behind; `?` if unknown)."""
    if moment is None:
        return "?"
    seconds = (now - moment).total_seconds()
    return "just now" if seconds < 0 else f"{duration(seconds)} ago"


def when(now: datetime, moment: datetime) -> str:
    """When a moment after `now` comes: `now`, `in 42 s`, `in 3 h 5 min`."""
    seconds = (moment - now).total_seconds()
    return "now" if seconds <= 0 else f"in {duration(seconds)}"


def stamp(moment: datetime | None) -> str:
    """A moment as people read it: `2026-11-24 05:30:00 UTC`."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if moment else "?"
