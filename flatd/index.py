"""The in-memory index: every file seen, grouped into groups and sequences of flats.

Thread-safe: the watcher adds and removes files while the scheduler's jobs read
sequences. Everything handed out is an immutable snapshot (`Sequence`, `Skip`), so a
reader never sees the index change under it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from flatd.config import Config
from flatd.discover import walk
from flatd.frames import Frame, GroupKey, Skip, read_frame

__all__ = ["Change", "GroupKey", "Index", "Sequence", "index_paths", "split_sequences"]


@dataclass(frozen=True)
class Sequence:
    """Frames of one group taken without a gap longer than `gap_minutes`, by date."""

    group: GroupKey
    frames: tuple[Frame, ...]

    @property
    def start(self) -> datetime:
        return self.frames[0].date

    @property
    def end(self) -> datetime:
        return self.frames[-1].date

    @property
    def identities(self) -> frozenset[tuple[str, int, int]]:
        return frozenset(f.identity for f in self.frames)


@dataclass(frozen=True)
class Change:
    """What adding a file did: the groups whose frames it changed (old and new group when
    a rewritten file moved between groups)."""

    changed: bool
    new: bool
    groups: frozenset[GroupKey] = frozenset()


def split_sequences(group: GroupKey, frames: Iterable[Frame], gap: timedelta) -> list[Sequence]:
    """Cut a group's frames, ordered by date, wherever consecutive frames are more than
    `gap` apart."""
    ordered = sorted(frames, key=lambda f: (f.date, str(f.path)))
    runs: list[list[Frame]] = []
    for frame in ordered:
        if runs and frame.date - runs[-1][-1].date <= gap:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    return [Sequence(group, tuple(run)) for run in runs]


class Index:
    """Files by path; flats by group; the reasons for everything that is not a flat."""

    def __init__(self, gap_minutes: float) -> None:
        self._gap = timedelta(minutes=gap_minutes)
        self._lock = threading.Lock()
        self._entries: dict[Path, Frame | Skip] = {}

    def add(self, item: Frame | Skip) -> Change:
        """Record what a file is; a file seen again unchanged is not a change."""
        with self._lock:
            old = self._entries.get(item.path)
            if old is not None and _same_file(old, item) and type(old) is type(item):
                return Change(changed=False, new=False)
            self._entries[item.path] = item
        groups = frozenset(e.group for e in (old, item) if isinstance(e, Frame))
        return Change(changed=True, new=old is None, groups=groups)

    def remove(self, path: Path) -> GroupKey | None:
        """Forget a file; return its group when it was a flat."""
        with self._lock:
            old = self._entries.pop(path, None)
        return old.group if isinstance(old, Frame) else None

    def knows(self, path: Path, size: int, mtime_ns: int) -> bool:
        """Whether `path` is indexed as exactly this size and modification time."""
        with self._lock:
            entry = self._entries.get(path)
        return entry is not None and (entry.size, entry.mtime_ns) == (size, mtime_ns)

    def paths(self) -> set[Path]:
        with self._lock:
            return set(self._entries)

    def frames(self) -> list[Frame]:
        with self._lock:
            return [e for e in self._entries.values() if isinstance(e, Frame)]

    def skips(self) -> list[Skip]:
        with self._lock:
            return sorted(
                (e for e in self._entries.values() if isinstance(e, Skip)),
                key=lambda s: str(s.path),
            )

    def groups(self) -> dict[GroupKey, list[Frame]]:
        grouped: dict[GroupKey, list[Frame]] = {}
        for frame in self.frames():
            grouped.setdefault(frame.group, []).append(frame)
        return grouped

    def sequences(self, group: GroupKey | None = None) -> list[Sequence]:
        """Sequences of one group, or of every group, oldest first."""
        grouped = self.groups()
        selected = {group: grouped.get(group, [])} if group is not None else grouped
        return [
            seq
            for key, frames in sorted(selected.items(), key=lambda kv: str(kv[0]))
            for seq in split_sequences(key, frames, self._gap)
        ]

    def counts(self) -> dict[str, int]:
        """The status file's `index` block."""
        with self._lock:
            entries = list(self._entries.values())
        return {
            "frames": len(entries),
            "flats": sum(isinstance(e, Frame) for e in entries),
            "skipped": sum(isinstance(e, Skip) and e.kind == "skipped" for e in entries),
            "rejected": sum(isinstance(e, Skip) and e.kind == "rejected" for e in entries),
        }


def _same_file(a: Frame | Skip, b: Frame | Skip) -> bool:
    return (a.size, a.mtime_ns) == (b.size, b.mtime_ns)


def index_paths(paths: Iterable[Path], config: Config, index: Index | None = None) -> Index:
    """Read every candidate file under `paths` into `index` (a new one by default); the
    output directory is never entered, so masters are not read back as inputs."""
    index = index or Index(config.sequence.gap_minutes)
    for path in walk(
        paths, config.watch.patterns, config.watch.recursive, exclude=[config.output.directory]
    ):
        index.add(read_frame(path, config.frames, config.calibrate))
    return index
