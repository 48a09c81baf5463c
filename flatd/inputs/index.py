"""The in-memory index: the files seen, directory by directory, and the flats grouped into
groups and sequences.

Thread-safe: the watcher's ingest and the scanner add and remove files while the
scheduler's jobs read sequences. Everything handed out is an immutable snapshot
(`FlatSequence`, `Frame`, `Skip`, `Duplicate`), so a reader never sees the index change
under it.

One frame, one input: a frame is known by its content (`Frame.identity`, the digest of
`flatd.inputs.fingerprint`), not by its path. A second path to a frame already held (a symbolic
or hard link, a byte-identical copy) is held as a `Duplicate` of the first: counted, listed
with the path it duplicates, never an input. When the first path goes, a duplicate takes
its place, and the group's frames are the same frames as before. A file rewritten with the
same bytes (`touch`) is the same frame: it changes no group.

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
from flatd.frames import Frame, GroupKey, Skip, SkipKind, read_frame
from flatd.inputs.discover import walk
from flatd.inputs.fingerprint import Fingerprints
from flatd.inputs.ledger import Kind, Ledger

__all__ = [
    "Change",
    "Duplicate",
    "FlatSequence",
    "GroupKey",
    "Index",
    "index_paths",
    "split_sequences",
]

Stamp = tuple[int, int]  # (size, mtime_ns)


@dataclass(frozen=True)
class Duplicate:
    """A second path to a frame the index holds (a link or a byte-identical copy): listed
    with the path it duplicates (`of`), never an input."""

    frame: Frame  # as read at this path
    of: Path

    @property
    def path(self) -> Path:
        return self.frame.path

    @property
    def size(self) -> int:
        return self.frame.size

    @property
    def mtime_ns(self) -> int:
        return self.frame.mtime_ns


@dataclass(frozen=True)
class FlatSequence:
    """Frames of one group taken without a gap longer than `gap_minutes`, by date, and the
    duplicates of its frames found at other paths."""

    group: GroupKey
    frames: tuple[Frame, ...]
    duplicates: tuple[Duplicate, ...] = ()

    @property
    def start(self) -> datetime:
        return self.frames[0].date

    @property
    def end(self) -> datetime:
        return self.frames[-1].date

    @property
    def identities(self) -> frozenset[str]:
        """Its frames' identities (their content)."""
        return frozenset(f.identity for f in self.frames)


@dataclass(frozen=True)
class Change:
    """What adding a file did: the groups whose frames it changed (old and new group when
    a rewritten file moved between groups; none when it was only touched, or is a
    duplicate), and the path it duplicates when it is one."""

    changed: bool
    new: bool
    groups: frozenset[GroupKey] = frozenset()
    duplicate_of: Path | None = None


def split_sequences(
    group: GroupKey,
    frames: Iterable[Frame],
    gap: timedelta,
    duplicates: Iterable[Duplicate] = (),
) -> list[FlatSequence]:
    """Cut a group's frames, ordered by date, wherever consecutive frames are more than
    `gap` apart; each sequence takes the duplicates of its frames."""
    ordered = sorted(frames, key=lambda f: (f.date, str(f.path)))
    runs: list[list[Frame]] = []
    for frame in ordered:
        if runs and frame.date - runs[-1][-1].date <= gap:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    copies: dict[Path, list[Duplicate]] = {}
    for duplicate in duplicates:
        copies.setdefault(duplicate.of, []).append(duplicate)
    return [
        FlatSequence(group, tuple(run), tuple(d for f in run for d in copies.get(f.path, ())))
        for run in runs
    ]


Held = Frame | Skip | Duplicate


@dataclass
class _Directory:
    """One directory's files: the ones held as objects, and the ledger of the rest."""

    held: dict[str, Held] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)

    def __bool__(self) -> bool:
        return bool(self.held) or len(self.ledger) > 0


_SKIP_KINDS = {SkipKind.IGNORED: Kind.SKIPPED, SkipKind.REFUSED: Kind.REJECTED}
_COUNTED = {Kind.SKIPPED: "skipped", Kind.REJECTED: "rejected", Kind.OLD: None}


class Index:
    """Files by directory; flats by group, one per content; counts kept up to date."""

    def __init__(self, gap_minutes: float, keep_days: float | None = None) -> None:
        self._gap = timedelta(minutes=gap_minutes)
        self.keep = timedelta(days=keep_days) if keep_days else None
        self._lock = threading.Lock()
        self._dirs: dict[Path, _Directory] = {}
        self._groups: dict[GroupKey, dict[Path, Frame]] = {}
        self._contents: dict[str, Path] = {}  # a held flat's content -> its path
        self._copies: dict[str, dict[Path, Duplicate]] = {}  # content -> its duplicates
        self._counts = {"frames": 0, "flats": 0, "skipped": 0, "rejected": 0}
        self._duplicates = 0

    # -- files come and go -------------------------------------------------------------
    def add(self, item: Frame | Skip) -> Change:
        """Record what a file is; a file seen again unchanged is not a change, nor is one
        rewritten with the same bytes (it changes no group)."""
        item = self._interned(item)
        directory, name = item.path.parent, item.path.name
        with self._lock:
            entries = self._dirs.setdefault(directory, _Directory())
            if self._unchanged(entries, item):
                return Change(changed=False, new=False)
            old = self._drop(entries, name)
            held = self._hold_or_record(entries, item)
        duplicate_of = held.of if isinstance(held, Duplicate) else None
        return Change(True, old is None, _groups_changed(old, held), duplicate_of)

    def remove(self, path: Path) -> GroupKey | None:
        """Forget a file; return its group when a frame left it (not when the file was a
        duplicate, or a duplicate took its place)."""
        with self._lock:
            entries = self._dirs.get(path.parent)
            if entries is None:
                return None
            old = self._drop(entries, path.name)
            self._tidy(path.parent, entries)
            replaced = isinstance(old, Frame) and old.content in self._contents
        return old.group if isinstance(old, Frame) and not replaced else None

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

    def forget(self, horizon: datetime, settled: Callable[[GroupKey], bool]) -> list[FlatSequence]:
        """Move to the ledgers the flats (and their duplicates) of sequences that ended
        before `horizon`, in groups that are `settled`, keeping each group's newest
        sequence. Returns what left memory."""
        with self._lock:
            grouped = {key: list(frames.values()) for key, frames in self._groups.items()}
        gone: list[FlatSequence] = []
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

    def duplicates(self, group: GroupKey | None = None) -> list[Duplicate]:
        """The duplicates held (of one group's frames), by path."""
        with self._lock:
            found = [d for copies in self._copies.values() for d in copies.values()]
        if group is not None:
            found = [d for d in found if d.frame.group == group]
        return sorted(found, key=lambda d: str(d.path))

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

    def sequences(self, group: GroupKey | None = None) -> list[FlatSequence]:
        """Sequences of one group, or of every group, oldest first, with the duplicates
        of their frames."""
        with self._lock:
            keys = [group] if group is not None else list(self._groups)
            selected = {k: list(self._groups.get(k, {}).values()) for k in keys}
            copies = {
                k: [d for f in frames for d in self._copies.get(f.content, {}).values()]
                for k, frames in selected.items()
            }
        return [
            seq
            for key, frames in sorted(selected.items(), key=lambda kv: str(kv[0]))
            for seq in split_sequences(key, frames, self._gap, copies[key])
        ]

    def counts(self) -> dict[str, int]:
        """The status file's `index` block: every file known (`frames`, duplicates of
        flats included), the flats held in memory, and the files skipped and rejected.
        O(1)."""
        with self._lock:
            return dict(self._counts)

    def duplicate_count(self) -> int:
        """How many files are duplicates of a flat held. O(1)."""
        with self._lock:
            return self._duplicates

    # -- inside (the lock is held) -----------------------------------------------------
    def _unchanged(self, entries: _Directory, item: Frame | Skip) -> bool:
        held = entries.held.get(item.path.name)
        if held is not None:
            return _same_file(held, item) and _same_kind(held, item)
        if isinstance(item, Skip) and self.keep is not None:
            recorded = entries.ledger.kind(item.path.name, item.size, item.mtime_ns)
            return recorded == _SKIP_KINDS[item.kind]
        return False

    def _hold_or_record(self, entries: _Directory, item: Frame | Skip) -> Held | None:
        """Hold a flat (as a duplicate when its content is held at another path), or
        record a skip; return what is held."""
        self._counts["frames"] += 1
        if isinstance(item, Frame):
            original = self._contents.get(item.content) if item.content else None
            if original is not None and original != item.path:
                duplicate = Duplicate(item, original)
                entries.held[item.path.name] = duplicate
                self._copies.setdefault(item.content, {})[item.path] = duplicate
                self._duplicates += 1
                return duplicate
            self._hold_flat(entries, item)
            return item
        self._counts[item.kind] += 1
        if self.keep is None:
            entries.held[item.path.name] = item
        else:
            entries.ledger.put(item.path.name, item.size, item.mtime_ns, _SKIP_KINDS[item.kind])
        return item

    def _hold_flat(self, entries: _Directory, frame: Frame) -> None:
        entries.held[frame.path.name] = frame
        self._groups.setdefault(frame.group, {})[frame.path] = frame
        if frame.content:
            self._contents[frame.content] = frame.path
        self._counts["flats"] += 1

    def _drop(self, entries: _Directory, name: str) -> Held | Kind | None:
        """Remove a file's entry and its counts; return what was held or recorded. A flat
        with duplicates hands its place to the first of them."""
        held = entries.held.pop(name, None)
        if held is None:
            kind = entries.ledger.pop(name)
            if kind is not None:
                self._count_record(kind, -1)
            return kind
        self._counts["frames"] -= 1
        if isinstance(held, Duplicate):
            self._duplicates -= 1
            copies = self._copies.get(held.frame.content, {})
            copies.pop(held.path, None)
            if not copies:
                self._copies.pop(held.frame.content, None)
        elif isinstance(held, Frame):
            self._drop_flat(held)
        else:
            self._counts[held.kind] -= 1
        return held

    def _drop_flat(self, frame: Frame) -> None:
        self._counts["flats"] -= 1
        members = self._groups.get(frame.group, {})
        members.pop(frame.path, None)
        if not members:
            self._groups.pop(frame.group, None)
        if not frame.content or self._contents.get(frame.content) != frame.path:
            return
        del self._contents[frame.content]
        copies = self._copies.get(frame.content)
        if not copies:
            return
        heir = copies.pop(next(iter(copies)))  # the first duplicate takes its place
        if not copies:
            del self._copies[frame.content]
        for duplicate in copies.values():  # the others now duplicate the heir
            copies[duplicate.path] = Duplicate(duplicate.frame, heir.path)
        entries = self._dirs.get(heir.path.parent)
        if entries is not None:
            self._duplicates -= 1
            self._hold_flat(entries, heir.frame)
            for duplicate in copies.values():
                owner = self._dirs.get(duplicate.path.parent)
                if owner is not None:
                    owner.held[duplicate.path.name] = duplicate

    def _retire(self, frame: Frame) -> None:
        """A held flat, and its duplicates, leave memory for their directories' ledgers."""
        entries = self._dirs.get(frame.path.parent)
        if entries is None or entries.held.get(frame.path.name) is not frame:
            return  # removed or replaced meanwhile
        for duplicate in (
            list(self._copies.get(frame.content, {}).values()) if frame.content else []
        ):
            self._retire_file(duplicate.path, duplicate.size, duplicate.mtime_ns)
        self._retire_file(frame.path, frame.size, frame.mtime_ns)

    def _retire_file(self, path: Path, size: int, mtime_ns: int) -> None:
        entries = self._dirs.get(path.parent)
        if entries is None:
            return
        self._drop(entries, path.name)
        entries.ledger.put(path.name, size, mtime_ns, Kind.OLD)
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


def _groups_changed(old: Held | Kind | None, new: Held | None) -> frozenset[GroupKey]:
    """The groups whose frames changed when `old` at a path became `new`: none when the
    same frame stays (the file was touched: same content, group and date) or when either
    is a duplicate (the frame it duplicates stays where it is)."""
    before = old if isinstance(old, Frame) else None
    after = new if isinstance(new, Frame) else None
    if before is not None and after is not None and _same_frame(before, after):
        return frozenset()
    return frozenset(f.group for f in (before, after) if f is not None)


def _same_frame(a: Frame, b: Frame) -> bool:
    return bool(a.content) and (a.content, a.group, a.date) == (b.content, b.group, b.date)


def _knows(entries: _Directory, name: str, size: int, mtime_ns: int) -> bool:
    held = entries.held.get(name)
    if held is not None:
        return (held.size, held.mtime_ns) == (size, mtime_ns)
    return entries.ledger.kind(name, size, mtime_ns) is not None


def _same_file(a: Held, b: Frame | Skip) -> bool:
    return (a.size, a.mtime_ns) == (b.size, b.mtime_ns)


def _same_kind(a: Held, b: Frame | Skip) -> bool:
    if isinstance(a, Skip) and isinstance(b, Skip):
        return a.kind == b.kind
    if isinstance(a, Duplicate):
        return isinstance(b, Frame)
    return type(a) is type(b)


def index_paths(
    paths: Iterable[Path],
    config: Config,
    index: Index | None = None,
    fingerprints: Fingerprints | None = None,
) -> Index:
    """Read every candidate file under `paths` into `index` (a new one, holding
    everything, by default), each flat with its content digest, so a link or a copy of a
    frame is a duplicate; the output directory is never entered, so masters are not read
    back as inputs."""
    index = index or Index(config.sequence.gap_minutes)
    fingerprints = fingerprints or Fingerprints()
    for path in walk(
        paths, config.watch.patterns, config.watch.recursive, exclude=[config.output.directory]
    ):
        frame = read_frame(path, config.frames, config.calibrate, settled=True)
        index.add(fingerprints.identified(frame))
    return index
