"""The masters in the output directory, as they are on disk: which frames each one claims,
which came before a sequence, and which are gone.

flatd decides from the masters on disk, never from what it remembers having written:
whether a sequence has a master (a master *claims* a frame when its INPUTS table lists the
frame's content), whether frames joined it since (frames that left do not count), which
master came before a sequence (the newest one of its group whose sequence started
earlier), and which masters a new one supersedes. A master's file name gives its group's
safe name and its sequence's start, so these questions list the directory (names only)
and read no more than the few masters they concern (`masters.read_master_file`: header
and INPUTS, remembered by size, time and inode until the file changes).

Thread-safe: the daemon's jobs, its curator and the status snapshot share one catalogue.
`refresh()` is what notices a master deleted by hand. Memory stays bounded over months: the
listing is a few dozen bytes a master, and only the READ_KEPT masters read last are kept.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from stat import S_ISREG

import structlog

from flatd.frames import GroupKey, canonical_group
from flatd.inputs.index import FlatSequence
from flatd.outputs.masters import MasterFile, group_slug, name_group, name_start, read_master_file
from flatd.reasons import reason_of

__all__ = ["CLAIM_WINDOW", "Catalogue", "Listed"]

log = structlog.get_logger("flatd.outputs.catalogue")

# A sequence of flats lasts less than this (twilight flats take an hour): a master that
# claims a frame of a sequence started at most this long before the sequence did, and not
# after its last frame; masters named outside that range are not read by `claimers()`.
CLAIM_WINDOW = timedelta(days=2)
READ_KEPT = 256  # masters kept read (header and INPUTS), the least recently used go first

Stamp = tuple[int, int, int]  # (size, mtime_ns, inode)


@dataclass(frozen=True)
class Listed:
    """A master file found in the output directory (by its name: no read)."""

    path: Path
    slug: str
    start: datetime
    stamp: Stamp


class Catalogue:
    """The masters of one output directory."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self._lock = threading.Lock()
        self._listed: dict[Path, Listed] = {}
        self._read: OrderedDict[Path, tuple[Stamp, tuple[str, ...], MasterFile | None]]
        self._read = OrderedDict()
        self._directory_mtime: int | None = None
        self._gone: list[Path] = []  # masters that went, until someone takes them
        self._removing: set[Path] = set()  # flatd's own removals: not "gone", not listed

    # -- the directory ----------------------------------------------------------------------
    def refresh(self, force: bool = False) -> list[Path]:
        """List the directory again when it changed (its mtime moved) or when `force`d;
        return the masters that were listed before and are gone now (also kept for
        `take_gone`, whoever refreshed)."""
        try:
            mtime = os.stat(self.output_dir).st_mtime_ns
        except OSError:
            mtime = None
        with self._lock:
            if not force and mtime is not None and mtime == self._directory_mtime:
                return []
        found = _list(self.output_dir)
        with self._lock:
            self._removing &= set(found)  # those removed by now are done with
            listed = {path: m for path, m in found.items() if path not in self._removing}
            self._directory_mtime = mtime
            gone = sorted(set(self._listed) - set(listed) - self._removing)
            self._gone += gone
            self._listed = listed
            for path in [p for p in self._read if p not in listed]:
                del self._read[path]
        return gone

    def take_gone(self) -> list[Path]:
        """The masters found gone since the last call (deleted by hand: flatd's own
        removals are `forgot`ten first)."""
        with self._lock:
            gone, self._gone = self._gone, []
        return gone

    def noted(self, path: Path) -> None:
        """A master was just written or replaced at `path`: list it (and read it again)."""
        found = _listed_file(path)
        with self._lock:
            self._read.pop(path, None)
            if found is None:
                self._listed.pop(path, None)
            else:
                self._listed[path] = found

    def forgot(self, path: Path) -> None:
        """A master is being removed (superseded): forget it, and do not take it for one
        deleted by hand. Call before removing the file."""
        with self._lock:
            self._listed.pop(path, None)
            self._read.pop(path, None)
            self._removing.add(path)

    def listed(self, slug: str | None = None) -> list[Listed]:
        """The masters (of one group's safe name), oldest sequence first (the directory
        is listed the first time)."""
        with self._lock:
            never = self._directory_mtime is None and not self._listed
        if never:
            self.refresh()
        with self._lock:
            found = [m for m in self._listed.values() if slug is None or m.slug == slug]
        return sorted(found, key=lambda m: (m.start, str(m.path)))

    # -- reading ----------------------------------------------------------------------------
    def read(self, path: Path, keys: Iterable[str] = ()) -> MasterFile | None:
        """What the master at `path` says (its group's values of `keys`); None, logged once
        per version of the file, when it cannot be read."""
        keys = tuple(keys)
        stamp = _stamp(path)
        if stamp is None:
            return None
        with self._lock:
            known = self._read.get(path)
            # a read for other keys serves a read for none: only `group` depends on them
            if known is not None and known[0] == stamp and (known[1] == keys or not keys):
                self._read.move_to_end(path)
                return known[2]
        master: MasterFile | None
        try:
            master = read_master_file(path, keys)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            log.warning("master_unreadable", path=str(path), reason=reason_of(exc))
            master = None
        with self._lock:
            self._read[path] = (stamp, keys, master)
            self._read.move_to_end(path)
            while len(self._read) > READ_KEPT:
                self._read.popitem(last=False)
        return master

    def owner(self, path: Path, group: GroupKey) -> GroupKey | None:
        """The group the master at `path` was made for, as today's frames say it (binning
        '2' -> 2); None when there is no readable master there."""
        master = self.read(path, [key for key, _ in group])
        if master is None or master.group is None:
            return None
        return canonical_group(master.group)

    def claimers(self, sequence: FlatSequence) -> list[MasterFile]:
        """The masters of the sequence's group that claim any of its frames."""
        keys = [key for key, _ in sequence.group]
        slug = group_slug(sequence.group)
        low, high = sequence.start - CLAIM_WINDOW, sequence.end
        found = []
        for listed in self.listed(slug):
            if not low <= listed.start <= high:
                continue
            master = self.read(listed.path, keys)
            if master is not None and any(master.claims(f) for f in sequence.frames):
                found.append(master)
        return found

    def before(
        self, group: GroupKey, start: datetime, exclude: Iterable[Path] = ()
    ) -> Iterable[MasterFile]:
        """The group's masters whose sequence started before `start`, newest first (read
        one by one, as the caller goes), but those in `exclude`."""
        keys = [key for key, _ in group]
        skip = set(exclude)
        for listed in reversed(self.listed(group_slug(group))):
            if listed.start >= start or listed.path in skip:
                continue
            master = self.read(listed.path, keys)
            if master is not None:
                yield master


def _list(directory: Path) -> dict[Path, Listed]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return {}
    found = {}
    for entry in entries:
        path = Path(entry.path)
        if name_start(path) is None:
            continue
        listed = _listed_file(path)
        if listed is not None:
            found[path] = listed
    return found


def _listed_file(path: Path) -> Listed | None:
    start, slug, stamp = name_start(path), name_group(path), _stamp(path)
    if start is None or slug is None or stamp is None:
        return None
    return Listed(path, slug, start, stamp)


def _stamp(path: Path) -> Stamp | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    if not stat.st_size or not S_ISREG(stat.st_mode):
        return None
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)
