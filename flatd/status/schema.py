"""The schema-1 status document of SPEC.md, as types, and reading it back.

The daemon's board writes it (`status.board`), `flatd status` (`status.view`), the page
and the metrics read it; scripts and dashboards read the file. Fields are only ever added.
Times are ISO 8601 UTC with a "Z" (`utc_iso`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict

__all__ = [
    "SCHEMA",
    "STALE_SECONDS",
    "DaemonBlock",
    "DuplicateEntry",
    "ErrorEntry",
    "FileReason",
    "GoneInput",
    "GroupEntry",
    "MasterEntry",
    "SkipEntry",
    "StatusDocument",
    "WatchBlock",
    "parse_iso",
    "read_status",
    "utc_iso",
]

SCHEMA = 1
STALE_SECONDS = 90.0  # a running daemon's status older than this: it stopped writing


class DaemonBlock(TypedDict):
    pid: int
    version: str
    state: str  # starting | running | stopping | stopped
    started_at: str
    updated_at: str | None


class WatchBlock(TypedDict):
    directories: list[str]
    observer: str  # inotify | polling


class FileReason(TypedDict):
    path: str
    reason: str


class DuplicateEntry(TypedDict):
    """A second path to a frame (a link, a copy): not an input."""

    path: str
    duplicate_of: str


class GoneInput(TypedDict):
    """An input of a master that is no longer on disk (the master stays)."""

    path: str
    master: str


class GroupEntry(TypedDict):
    group: dict[str, Any]
    name: str
    frames: int
    state: str  # waiting | pending | combining | done | too_few | failed
    stable_at: str | None
    last_frame_at: str | None
    latest_master: str | None  # the master latest/ names
    reason: str
    rejected: list[FileReason]
    notes: list[str]
    duplicates: list[DuplicateEntry]
    gone: list[GoneInput]  # inputs of its masters gone from disk (first few)
    gone_count: int
    held: str  # why new frames were not combined ("" when none wait)
    history: NotRequired[list[dict[str, Any]]]


class MasterEntry(TypedDict, total=False):
    """A master file on disk, once each (newest written first)."""

    group: dict[str, Any]
    path: str
    created_at: str | None
    n_frames: int | None
    n_rejected: int | None
    median_levels: list[float]
    duration_s: float | None
    qa: dict[str, Any]
    promoted: bool  # latest/ names it
    settings: dict[str, Any]  # the settings cards it was made with (`flatd.outputs.settings`)
    other_settings: list[str]  # how they differ from the configuration now
    change_confirmed: bool


class ErrorEntry(TypedDict):
    path: str
    reason: str
    at: str
    count: int


class SkipEntry(TypedDict):
    path: str
    reason: str
    at: str


class StatusDocument(TypedDict):
    schema: int
    daemon: DaemonBlock
    watch: WatchBlock
    index: dict[str, int]
    groups: list[GroupEntry]
    masters: list[MasterEntry]
    errors: list[ErrorEntry]
    skipped: list[SkipEntry]


def utc_iso(moment: datetime | None = None, timespec: str = "milliseconds") -> str:
    """ISO 8601 UTC with a "Z" suffix (default: now, to the millisecond)."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_iso(text: object) -> datetime | None:
    """A timestamp of the status file as an aware datetime (naive ones are taken as UTC)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_status(path: Path) -> dict[str, Any] | None:
    """The status document at `path`, or None when it is missing or not a JSON object."""
    try:
        document = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
