"""Each group's recent masters, for the status file's group entries, the page's QA-over-time
table and the metrics: newest sequence first, one entry per master file, a few per group.

Masters written while the daemon runs are added as they are written; at start the history
is read back from the masters on disk (only the newest few per group, header only), so a
restart does not blank the page's history. Thread-safe; every call is O(history).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from flatd.outputs.masters import MASTER_NAME, QA_CARDS, latest_path
from flatd.reasons import reason_of
from flatd.status.schema import GroupEntry

__all__ = ["PER_GROUP", "MasterHistory", "entry_of_record", "filter_of", "name_parts"]

log = structlog.get_logger("flatd.outputs.history")

PER_GROUP = 12  # masters kept per group


def name_parts(path: Path | str) -> tuple[str, str] | None:
    """A master file name's group (safe name) and sequence start (`YYYYMMDDTHHMMSS`)."""
    match = MASTER_NAME.fullmatch(Path(path).name)
    return (match["group"], match["start"]) if match else None


def filter_of(group: object) -> str:
    """A group's filter value (its key named FILTER in any case), "" when it has none."""
    if isinstance(group, dict):
        for key, value in group.items():
            if str(key).lower() == "filter":
                return str(value)
    return ""


def entry_of_record(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """A history entry from a master record (`MasterRecord.to_dict()`); None for a path
    that is not a master's name."""
    parts = name_parts(str(record.get("path", "")))
    if parts is None:
        return None
    return {
        "path": str(record["path"]),
        "start": _iso_start(parts[1]),
        "created_at": record.get("created_at"),
        "n_frames": record.get("n_frames"),
        "n_rejected": record.get("n_rejected"),
        "promoted": record.get("promoted"),
        "qa": dict(record.get("qa") or {}),
    }


class MasterHistory:
    """The newest PER_GROUP masters of each group, by group safe name."""

    def __init__(self, per_group: int = PER_GROUP) -> None:
        self._per_group = max(1, per_group)
        self._lock = threading.Lock()
        self._entries: dict[str, list[dict[str, Any]]] = {}

    def add(self, record: Mapping[str, Any]) -> None:
        """A master just written: it replaces any entry of the same file."""
        entry = entry_of_record(record)
        parts = name_parts(str(record.get("path", "")))
        if entry is not None and parts is not None:
            self._put(parts[0], entry, replace=True)

    def remove(self, path: Path | str) -> None:
        """A master superseded or deleted: no longer in its group's history."""
        parts = name_parts(str(path))
        if parts is None:
            return
        with self._lock:
            entries = self._entries.get(parts[0], [])
            entries[:] = [e for e in entries if e["path"] != str(path)]

    def entries(self, group: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._entries.get(group, [])]

    def annotate(self, groups: list[GroupEntry]) -> list[GroupEntry]:
        """The status file's group entries, each with its `history` (newest first)."""
        return [{**g, "history": self.entries(str(g.get("name", "")))} for g in groups]

    def load(self, output_dir: Path) -> int:
        """Read the newest masters of each group on disk into the history (entries of
        masters written meanwhile win); how many were read."""
        newest: dict[str, list[tuple[str, Path]]] = {}
        try:
            names = [e.name for e in os.scandir(output_dir) if e.is_file()]
        except OSError as exc:
            log.warning("history_unreadable", path=str(output_dir), reason=reason_of(exc))
            return 0
        for name in names:
            parts = name_parts(name)
            if parts is not None:
                newest.setdefault(parts[0], []).append((parts[1], output_dir / name))
        read = 0
        for group, masters in newest.items():
            for _, path in sorted(masters, reverse=True)[: self._per_group]:
                entry = entry_from_file(path, output_dir, group)
                if entry is not None:
                    self._put(group, entry, replace=False)
                    read += 1
        return read

    def _put(self, group: str, entry: dict[str, Any], *, replace: bool) -> None:
        with self._lock:
            entries = self._entries.setdefault(group, [])
            same = [e for e in entries if e["path"] == entry["path"]]
            if same and not replace:
                return
            entries[:] = [e for e in entries if e["path"] != entry["path"]] + [entry]
            entries.sort(
                key=lambda e: (str(e.get("start")), str(e.get("created_at"))), reverse=True
            )
            del entries[self._per_group :]


def entry_from_file(path: Path, output_dir: Path, group: str) -> dict[str, Any] | None:
    """A history entry read back from a master's primary header; None (logged) when the
    file cannot be read."""
    from astropy.io import fits

    try:
        header = fits.getheader(path)
    except Exception as exc:  # a damaged master costs its entry, never the daemon
        log.warning("history_unreadable", path=str(path), reason=reason_of(exc))
        return None
    parts = name_parts(path)
    qa = {key: _plain(header[card]) for card, key in QA_CARDS.items() if card in header}
    if "previous" in qa:
        qa["previous"] = str(output_dir / str(qa["previous"]))
    date = header.get("DATE")
    return {
        "path": str(path),
        "start": _iso_start(parts[1]) if parts else None,
        "created_at": f"{date}Z" if isinstance(date, str) and date else None,
        "n_frames": _plain(header.get("NCOMBINE")),
        "n_rejected": _plain(header.get("NREJECT")),
        "promoted": _is_latest(path, output_dir, group),
        "qa": qa,
    }


def _is_latest(path: Path, output_dir: Path, group: str) -> bool:
    try:
        return os.path.samefile(path, latest_path(output_dir, group))
    except (OSError, ValueError):
        return False


def _iso_start(stamp: str) -> str:
    """`YYYYMMDDTHHMMSS` as ISO 8601 UTC."""
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"


def _plain(value: Any) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)
