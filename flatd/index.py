"""The in-memory index: the files seen, directory by directory, and the flats grouped into
groups and sequences.

Thread-safe: the watcher's ingest and the scanner add and remove files while the
scheduler's jobs read sequences. Everything handed out is an immutable snapshot
(`Sequence`, `Frame`, `Skip`), so a reader never sees the index change under it.

Bounded over months (the daemon's index, made with `keep_days`): only flats are held as
objects, and only those that can still change a master — sequences that ended inside the
horizon, the newest sequence of every group, and anything of a group still waiting to be
combined. `forget()` moves older flats to each directory's compact `Ledger`, where files
that are not flats go at once and where files listed but never opened (directories older
than the horizon, at start-up) are recorded: enough never to read them again, ~16 bytes a
file. Without `keep_days` (the one-shot commands) everything is held, skips included.

Work that runs often costs what changed, not the index's size: `counts()` and
`group_sizes()` are kept up to date as files come and go, and `compare()` checks one
directory's listing against what is recorded for that directory alone.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from flatd.config import Config
from flatd.discover import walk
from flatd.frames import Frame, GroupKey, Skip, read_frame
from flatd.ledger import Kind, Ledger

__all__ = ["Change", "GroupKey", "Index", "Sequence", "index_paths", "split_sequences"]

Stamp = tuple[int, int]  # (size, mtime_ns)


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


@dataclass
class _Directory:
    """One directory's files: the ones held as objects, and the ledger of the rest."""

    held: dict[str, Frame | Skip] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)

    def __bool__(self) -> bool:
        return bool(self.held) or len(self.ledger) > 0


_SKIP_KINDS = {"skipped": Kind.SKIPPED, "rejected": Kind.REJECTED}
_COUNTED = {Kind.SKIPPED: "skipped", Kind.REJECTED: "rejected", Kind.OLD: None}


class Index:
    """Files by directory; flats by group; counts kept up to date."""

    def __init__(self, gap_minutes: float, keep_days: float | None = None) -> None:
        self._gap = timedelta(minutes=gap_minutes)
        self.keep = timedelta(days=keep_days) if keep_days else None
        self._lock = threading.Lock()
        self._dirs: dict[Path, _Directory] = {}
        self._groups: dict[GroupKey, dict[Path, Frame]] = {}
        self._counts = {"frames": 0, "flats": 0, "skipped": 0, "rejected": 0}

    # -- files come and go -------------------------------------------------------------
    def add(self, item: Frame | Skip) -> Change:
        """Record what a file is; a file seen again unchanged is not a change."""
        item = self._interned(item)
        directory, name = item.path.parent, item.path.name
        with self._lock:
            entries = self._dirs.setdefault(directory, _Directory())
            if self._unchanged(entries, item):
                return Change(changed=False, new=False)
            old = self._drop(entries, name)
            self._hold_or_record(entries, item)
        new = old is None
        groups = frozenset(e.group for e in (old, item) if isinstance(e, Frame))
        return Change(changed=True, new=new, groups=groups)

    def remove(self, path: Path) -> GroupKey | None:
        """Forget a file; return its group when it was a flat held in memory."""
        with self._lock:
            entries = self._dirs.get(path.parent)
            if entries is None:
                return None
            old = self._drop(entries, path.name)
            self._tidy(path.parent, entries)
        return old.group if isinstance(old, Frame) else None

    def record_listed(self, directory: Path, files: Iterable[tuple[str, int, int]]) -> int:
        """Record files (name, size, mtime_ns) that were listed but not opened: older than
        the horizon. Names already known keep what they are. Returns how many were new."""
        with self._lock:
            entries = self._dirs.setdefault(directory, _Directory())
            unknown = [
                (name, size, mtime_ns, Kind.OLD)
                for name, size, mtime_ns in files
                if name not in entries.held
            ]
            replaced = entries.ledger.extend(unknown)
            for kind in replaced:
                self._count_record(kind, -1)
            for _ in unknown:
                self._count_record(Kind.OLD, +1)
            self._tidy(directory, entries)
        return len(unknown) - len(replaced)

    def compare(self, directory: Path, on_disk: dict[str, Stamp]) -> tuple[list[str], list[Path]]:
        """Check one directory's listing (name → size, mtime) against the index: return the
        names to read (unknown, or changed since recorded) and the held files no longer on
        disk. Recorded files no longer on disk are forgotten here and now."""
        with self._lock:
            entries = self._dirs.get(directory)
            if entries is None:
                return sorted(on_disk), []
            to_read = [
                name
                for name, (size, mtime_ns) in on_disk.items()
                if not _knows(entries, name, size, mtime_ns)
            ]
            gone = [directory / name for name in entries.held if name not in on_disk]
            for kind in entries.ledger.retain(on_disk):
                self._count_record(kind, -1)
            self._tidy(directory, entries)
        return sorted(to_read), gone

    def forget_directory(self, directory: Path) -> list[Path]:
        """The directory is gone: forget its recorded files; return the held ones (to be
        removed one by one, so their groups hear of it)."""
        with self._lock:
            entries = self._dirs.get(directory)
            if entries is None:
                return []
            for kind in entries.ledger.retain(()):
                self._count_record(kind, -1)
            self._tidy(directory, entries)
            return [directory / name for name in entries.held]

    def forget(self, horizon: datetime, settled: Callable[[GroupKey], bool]) -> list[Sequence]:
        """Move to the ledgers the flats of sequences that ended before `horizon`, in groups
        that are `settled`, keeping each group's newest sequence. Returns what left memory."""
        with self._lock:
            grouped = {key: list(frames.values()) for key, frames in self._groups.items()}
        gone: list[Sequence] = []
        for key, frames in grouped.items():
            if not settled(key):
                continue
            sequences = split_sequences(key, frames, self._gap)
            gone += [s for s in sequences[:-1] if s.end < horizon]
        with self._lock:
            for sequence in gone:
                for frame in sequence.frames:
                    self._retire(frame)
        return gone

    # -- reading -----------------------------------------------------------------------
    def knows(self, path: Path, size: int, mtime_ns: int) -> bool:
        """Whether `path` is recorded as exactly this size and modification time."""
        with self._lock:
            entries = self._dirs.get(path.parent)
            return entries is not None and _knows(entries, path.name, size, mtime_ns)

    def paths(self) -> set[Path]:
        """The files held as objects."""
        with self._lock:
            return {d / name for d, entries in self._dirs.items() for name in entries.held}

    def frames(self) -> list[Frame]:
        with self._lock:
            return [f for frames in self._groups.values() for f in frames.values()]

    def skips(self) -> list[Skip]:
        """The skipped and rejected files held as objects (all of them without
        `keep_days`; none in the daemon, which keeps only their counts)."""
        with self._lock:
            held = [e for d in self._dirs.values() for e in d.held.values()]
        return sorted((e for e in held if isinstance(e, Skip)), key=lambda s: str(s.path))

    def groups(self) -> dict[GroupKey, list[Frame]]:
        with self._lock:
            return {key: list(frames.values()) for key, frames in self._groups.items()}

    def group_frames(self, group: GroupKey) -> list[Frame]:
        """The flats held of one group, in O(its size)."""
        with self._lock:
            return list(self._groups.get(group, {}).values())

    def group_sizes(self) -> dict[GroupKey, int]:
        """Flats held per group, in O(groups): what the status file shows."""
        with self._lock:
            return {key: len(frames) for key, frames in self._groups.items()}

    def sequences(self, group: GroupKey | None = None) -> list[Sequence]:
        """Sequences of one group, or of every group, oldest first."""
        with self._lock:
            keys = [group] if group is not None else list(self._groups)
            selected = {k: list(self._groups.get(k, {}).values()) for k in keys}
        return [
            seq
            for key, frames in sorted(selected.items(), key=lambda kv: str(kv[0]))
            for seq in split_sequences(key, frames, self._gap)
        ]

    def counts(self) -> dict[str, int]:
        """The status file's `index` block: every file known (`frames`), the flats held
        in memory, and the files skipped and rejected. O(1)."""
        with self._lock:
            return dict(self._counts)

    # -- inside (the lock is held) -----------------------------------------------------
    def _unchanged(self, entries: _Directory, item: Frame | Skip) -> bool:
        held = entries.held.get(item.path.name)
        if held is not None:
            return _same_file(held, item) and _same_kind(held, item)
        if isinstance(item, Skip) and self.keep is not None:
            recorded = entries.ledger.kind(item.path.name, item.size, item.mtime_ns)
            return recorded == _SKIP_KINDS[item.kind]
        return False

    def _hold_or_record(self, entries: _Directory, item: Frame | Skip) -> None:
        self._counts["frames"] += 1
        if isinstance(item, Frame):
            entries.held[item.path.name] = item
            self._groups.setdefault(item.group, {})[item.path] = item
            self._counts["flats"] += 1
            return
        self._counts[item.kind] += 1
        if self.keep is None:
            entries.held[item.path.name] = item
        else:
            entries.ledger.put(item.path.name, item.size, item.mtime_ns, _SKIP_KINDS[item.kind])

    def _drop(self, entries: _Directory, name: str) -> Frame | Skip | Kind | None:
        """Remove a file's entry and its counts; return what was held or recorded."""
        held = entries.held.pop(name, None)
        if held is None:
            kind = entries.ledger.pop(name)
            if kind is not None:
                self._count_record(kind, -1)
            return kind
        self._counts["frames"] -= 1
        if isinstance(held, Frame):
            self._counts["flats"] -= 1
            members = self._groups.get(held.group, {})
            members.pop(held.path, None)
            if not members:
                self._groups.pop(held.group, None)
        else:
            self._counts[held.kind] -= 1
        return held

    def _retire(self, frame: Frame) -> None:
        """A held flat leaves memory for its directory's ledger."""
        entries = self._dirs.get(frame.path.parent)
        if entries is None or entries.held.get(frame.path.name) is not frame:
            return  # removed or replaced meanwhile
        self._drop(entries, frame.path.name)
        entries.ledger.put(frame.path.name, frame.size, frame.mtime_ns, Kind.OLD)
        self._count_record(Kind.OLD, +1)

    def _count_record(self, kind: Kind, step: int) -> None:
        self._counts["frames"] += step
        name = _COUNTED[kind]
        if name is not None:
            self._counts[name] += step

    def _tidy(self, directory: Path, entries: _Directory) -> None:
        if not entries:
            self._dirs.pop(directory, None)

    def _interned(self, item: Frame | Skip) -> Frame | Skip:
        """The frame with its group tuple shared with the group's other frames: a group
        key of four keywords costs ~600 bytes a copy."""
        if not isinstance(item, Frame):
            return item
        with self._lock:
            members = self._groups.get(item.group)
            canonical = next(iter(members.values())).group if members else None
        if canonical is None or canonical is item.group:
            return item
        return dataclasses.replace(item, group=canonical)


def _knows(entries: _Directory, name: str, size: int, mtime_ns: int) -> bool:
    held = entries.held.get(name)
    if held is not None:
        return (held.size, held.mtime_ns) == (size, mtime_ns)
    return entries.ledger.kind(name, size, mtime_ns) is not None


def _same_file(a: Frame | Skip, b: Frame | Skip) -> bool:
    return (a.size, a.mtime_ns) == (b.size, b.mtime_ns)


def _same_kind(a: Frame | Skip, b: Frame | Skip) -> bool:
    if isinstance(a, Skip) and isinstance(b, Skip):
        return a.kind == b.kind
    return type(a) is type(b)


def index_paths(paths: Iterable[Path], config: Config, index: Index | None = None) -> Index:
    """Read every candidate file under `paths` into `index` (a new one, holding
    everything, by default); the output directory is never entered, so masters are not
    read back as inputs."""
    index = index or Index(config.sequence.gap_minutes)
    for path in walk(
        paths, config.watch.patterns, config.watch.recursive, exclude=[config.output.directory]
    ):
        index.add(read_frame(path, config.frames, config.calibrate))
    return index
