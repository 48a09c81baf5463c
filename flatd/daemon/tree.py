"""The watched tree, directory by directory: what is read, what is only listed, what is
watched, and the scans that keep the index in step with the disk.

A directory is *warm* while it can still receive frames that matter: it is a watched root,
or one of its candidate files was modified inside `sequence.keep_days` (for a directory
without files, such as a year's directory of nights, its own modification time decides). A
warm directory is watched (on its own, see `watch`) and every new or changed file in it is
read.
A *cold* directory — a night of two months ago — is listed (names, sizes, times go to the
index's compact ledger) but never opened and never watched, so a year of data costs a
listing at start-up, not a year of header reads and inotify watches.

Work costs what changed: a directory that appeared is scanned alone (with what is under
it); the reconcile scan compares each known directory with what the index recorded for it
alone, and skips a cold directory whose own modification time has not moved (nothing was
added, removed or renamed in it). Directories reached through symbolic links are followed;
one reached twice (a second link, or a loop) is read once, under the first path it was
found under, with a warning naming both.

`Scanner` is the thread that runs these scans — the start-up scan first, then the
rescans and reconciles asked for by the watcher and the service — so the thread that
pings systemd's watchdog never scans.
"""

from __future__ import annotations

import os
import stat as stat_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from flatd.config import Config
from flatd.daemon.ingest import Ingest
from flatd.daemon.watch import Watcher
from flatd.inputs.discover import identity_of, matches
from flatd.inputs.index import Index, Stamp

log = structlog.get_logger("flatd.daemon.tree")

Identity = tuple[int, int]  # (st_dev, st_ino) of a directory, symbolic links followed
DAY_NS = 86_400 * 10**9


@dataclass
class Listing:
    """One directory as it is on disk now."""

    identity: Identity
    mtime_ns: int
    files: dict[str, Stamp] = field(default_factory=dict)
    subdirectories: list[Path] = field(default_factory=list)

    @property
    def newest_ns(self) -> int:
        return max((mtime for _, mtime in self.files.values()), default=0)


@dataclass
class _Known:
    identity: Identity
    mtime_ns: int  # the directory's own mtime when it was last listed
    cold: bool


@dataclass
class ScanTally:
    """What a scan did, for the `ready` event."""

    directories: int = 0
    read: int = 0
    listed: int = 0

    @property
    def files(self) -> int:
        return self.read + self.listed


class Tree:
    """The directories under the watched roots, as last seen."""

    def __init__(
        self,
        config: Config,
        index: Index,
        ingest: Ingest,
        watcher: Watcher,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._config = config
        self._index = index
        self._ingest = ingest
        self._watcher = watcher
        self._clock = clock
        self._keep_ns = int(config.sequence.keep_days * DAY_NS)
        self._roots = config.watch.directories
        self._known: dict[Path, _Known] = {}
        self._children: dict[Path, set[Path]] = {}
        self._owners: dict[Identity, Path] = {}
        self._warned: set[tuple[Path, Path]] = set()
        self._excluded: Identity | None = None  # the output directory's, once it exists

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._roots

    def horizon_ns(self) -> int:
        """Files and directories modified before this (ns since the epoch) are cold."""
        return self._clock() - self._keep_ns

    # -- the three scans ------------------------------------------------------------------
    def startup(self, stopping: Callable[[], bool] = lambda: False) -> ScanTally:
        """Read the warm directories, list the cold ones, watch the warm ones: synchronously
        (`Ingest.ingest_now`), before the ingest worker starts."""
        self._excluded = identity_of(self._config.output.directory)
        tally = ScanTally()
        for root in self.roots:
            self._visit(root, tally, at_startup=True, stopping=stopping)
        return tally

    def rescan(self, directory: Path) -> ScanTally:
        """A directory appeared, moved or went (or a root came back): scan it and what is
        under it, or forget it."""
        tally = ScanTally()
        if not self._inside_roots(directory):
            return tally  # under a root a reload dropped: asked for just before
        if directory in self.roots or self._config.watch.recursive:
            self._visit(directory, tally, at_startup=False)
        return tally

    def reconcile(self, stopping: Callable[[], bool] = lambda: False) -> ScanTally:
        """Compare every known directory with the disk (cold ones by their own mtime
        only), find new and vanished directories, and watch or unwatch each as it warms
        or cools."""
        tally = ScanTally()
        for root in self.roots:
            if root not in self._known:
                self._visit(root, tally, at_startup=False, stopping=stopping)
        for directory in sorted(self._known):
            if stopping():
                break
            known = self._known.get(directory)
            if known is None:
                continue  # forgotten with a parent that went
            if known.cold and _mtime(directory) == known.mtime_ns:
                continue
            self._visit(directory, tally, at_startup=False, recurse_known=False)
        return tally

    def set_roots(self, roots: tuple[Path, ...]) -> int:
        """Take these roots from now on (a reload): directories under none of them are
        forgotten — unwatched, their files out of the index, as if flatd had started with
        these roots (the files stay on disk). Returns how many directories were forgotten.
        New roots are scanned when the watcher asks (`rescan`)."""
        self._roots = tuple(roots)
        outside = [d for d in self._known if not self._inside_roots(d)]
        tops = [d for d in outside if not any(_under(d, o) and d != o for o in outside)]
        before = len(self._known)
        for top in tops:
            self._forget(top, files_gone=False)
        return before - len(self._known)

    def directories(self) -> int:
        return len(self._known)

    def _inside_roots(self, directory: Path) -> bool:
        return any(_under(directory, root) for root in self._roots)

    # -- one directory at a time ----------------------------------------------------------
    def _visit(
        self,
        top: Path,
        tally: ScanTally,
        *,
        at_startup: bool,
        recurse_known: bool = True,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        pending = [top]
        while pending and not stopping():
            directory = pending.pop()
            listing = self._look(directory)
            if listing is None:
                continue
            self._update(directory, listing, tally, at_startup=at_startup)
            tally.directories += 1
            for sub in sorted(listing.subdirectories, reverse=True):
                if recurse_known or sub not in self._known:
                    pending.append(sub)

    def _look(self, directory: Path) -> Listing | None:
        """Claim and list one directory; None when it is gone, not to be read, or a second
        path to a directory already read."""
        try:
            stat = os.stat(directory)
        except OSError:
            stat = None
        if stat is None or not _is_directory(stat.st_mode):
            self._forget(directory)
            return None
        identity = (stat.st_dev, stat.st_ino)
        if not self._claim(directory, identity):
            return None
        listing = self._list(directory, Listing(identity, stat.st_mtime_ns))
        if listing is None:
            self._forget(directory)
        return listing

    def is_cold(self, directory: Path, listing: Listing) -> bool:
        """Past the horizon: every candidate file modified before it (by the files'
        times, whatever the directory's own says), or, without files, the directory
        itself (an old year's directory of nights). A root never is."""
        if directory in self.roots:
            return False
        newest = listing.newest_ns if listing.files else listing.mtime_ns
        return newest < self.horizon_ns()

    def _update(
        self, directory: Path, listing: Listing, tally: ScanTally, at_startup: bool
    ) -> None:
        cold = self.is_cold(directory, listing)
        known = self._known.get(directory)
        if cold:
            self._watcher.unwatch(directory)
        elif not self._watcher.watching(directory) and self._watcher.watch(directory):
            # listed again now that it is watched: a file that landed between the first
            # listing and the watch is in neither the listing nor the events
            again = self._list(directory, Listing(listing.identity, listing.mtime_ns))
            listing = again or listing
        if cold and known is None:
            tally.listed += self._index.record_listed(
                directory, ((name, *stamp) for name, stamp in listing.files.items())
            )
        else:
            tally.read += self._sync(directory, listing, at_startup)
        self._forget_vanished(directory, listing)
        self._known[directory] = _Known(listing.identity, listing.mtime_ns, cold)
        self._children.setdefault(directory, set()).update(listing.subdirectories)
        if directory.parent in self._children:
            self._children[directory.parent].add(directory)

    def _sync(self, directory: Path, listing: Listing, at_startup: bool) -> int:
        """Hand what changed in one directory to ingest; return how many files to read."""
        to_read, gone = self._index.compare(directory, listing.files)
        for name in to_read:
            if at_startup:
                self._ingest.ingest_now(directory / name)
            else:
                self._ingest.submit(directory / name, "found")
        for path in gone:
            self._ingest.submit(path, "deleted")
        return len(to_read)

    def _list(self, directory: Path, listing: Listing) -> Listing | None:
        """Fill `listing` with the directory's candidate files and subdirectories."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            log.warning("directory_unreadable", directory=str(directory), reason=str(exc))
            return None
        patterns = self._config.watch.patterns
        for entry in entries:
            try:
                if entry.is_dir():
                    if self._config.watch.recursive and not entry.name.startswith("."):
                        listing.subdirectories.append(Path(entry.path))
                elif matches(entry.name, patterns) and entry.is_file():
                    found = entry.stat()
                    listing.files[entry.name] = (found.st_size, found.st_mtime_ns)
            except OSError:
                continue  # gone since the listing, or a dangling link
        return listing

    def _claim(self, directory: Path, identity: Identity) -> bool:
        """Whether `directory` is to be read under this path: not the output directory, not
        a directory already read under another path (a second symlink to it, a loop)."""
        if identity == self._excluded:
            return False
        owner = self._owners.get(identity)
        if owner is not None and owner != directory and identity_of(owner) == identity:
            if (directory, owner) not in self._warned:
                self._warned.add((directory, owner))
                log.warning(
                    "directory_not_followed",
                    directory=str(directory),
                    same_as=str(owner),
                    reason=f"{directory} is the same directory as {owner} (a second symbolic "
                    "link to it, or a link back up the tree): its files are read once, "
                    f"under {owner}",
                )
            return False
        self._owners[identity] = directory
        return True

    def _forget_vanished(self, directory: Path, listing: Listing) -> None:
        for child in self._children.get(directory, set()) - set(listing.subdirectories):
            self._forget(child)

    def _forget(self, top: Path, *, files_gone: bool = True) -> None:
        """A directory is gone (or no longer one flatd reads): forget it and everything
        under it; its held frames go through ingest, so their groups hear of it. With
        `files_gone` False (a root dropped by a reload: the files are still there, ingest
        would read them again) they leave the index here, and no group is run for it."""
        pending = [top]
        while pending:
            directory = pending.pop()
            children = self._children.pop(directory, set())
            pending += [c for c in children if files_gone or not self._inside_roots(c)]
            known = self._known.pop(directory, None)
            if known is not None and self._owners.get(known.identity) == directory:
                del self._owners[known.identity]
            if directory.parent in self._children:
                self._children[directory.parent].discard(directory)
            if directory not in self.roots:
                self._watcher.unwatch(directory)
            for path in self._index.forget_directory(directory):
                if files_gone:
                    self._ingest.submit(path, "deleted")
                else:
                    self._index.remove(path)


def _under(directory: Path, root: Path) -> bool:
    return directory.is_relative_to(root)


def _is_directory(mode: int) -> bool:
    return stat_module.S_ISDIR(mode)


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class Scanner:
    """The thread that runs the tree's scans, one at a time: the start-up scan, then the
    rescans of directories that appeared or went, then reconciles, each followed by
    `after_reconcile` (the service's housekeeping)."""

    def __init__(
        self,
        tree: Tree,
        *,
        on_started: Callable[[ScanTally, float], None],
        after_reconcile: Callable[[], None],
    ) -> None:
        self._tree = tree
        self._on_started = on_started
        self._after_reconcile = after_reconcile
        self._wake = threading.Condition()
        self._directories: dict[Path, None] = {}  # an ordered set
        self._reconcile = False
        self._roots: tuple[Path, ...] | None = None  # new roots, from a reload
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="flatd-scan", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- requests (any thread, O(1)) -------------------------------------------------------
    def rescan(self, directory: Path) -> None:
        with self._wake:
            self._directories[directory] = None
            self._wake.notify()

    def reconcile(self) -> None:
        with self._wake:
            self._reconcile = True
            self._wake.notify()

    def set_roots(self, roots: tuple[Path, ...]) -> None:
        """New roots (a reload): applied before any rescan asked for after this call."""
        with self._wake:
            self._roots = tuple(roots)
            self._wake.notify()

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        started = time.monotonic()
        try:
            tally = self._tree.startup(stopping=self._is_stopping)
        except Exception:  # the daemon cannot work without its tree: say so, loudly
            log.exception("startup_scan_failed")
            tally = ScanTally()
        if self._is_stopping():
            return
        self._on_started(tally, time.monotonic() - started)
        while True:
            job = self._next()
            if job is None:
                return
            try:
                job()
            except Exception:  # one failed scan must never stop the scanner
                log.exception("scan_failed")

    def _next(self) -> Callable[[], object] | None:
        with self._wake:
            while not self._stopping:
                if self._roots is not None:
                    roots, self._roots = self._roots, None
                    return lambda: self._set_roots(roots)
                if self._directories:
                    directory = next(iter(self._directories))
                    del self._directories[directory]
                    return lambda: self._rescan(directory)
                if self._reconcile:
                    self._reconcile = False
                    return self._reconcile_all
                self._wake.wait()
        return None

    def _set_roots(self, roots: tuple[Path, ...]) -> None:
        forgotten = self._tree.set_roots(roots)
        if forgotten:
            log.info("directories_forgotten", directories=forgotten, reason="not watched any more")

    def _rescan(self, directory: Path) -> None:
        tally = self._tree.rescan(directory)
        log.info("rescanned", directory=str(directory), files=tally.read)

    def _reconcile_all(self) -> None:
        started = time.monotonic()
        tally = self._tree.reconcile(stopping=self._is_stopping)
        log.info(
            "reconciled",
            directories=self._tree.directories(),
            listed=tally.directories,
            changed=tally.read,
            seconds=round(time.monotonic() - started, 3),
        )
        self._after_reconcile()

    def _is_stopping(self) -> bool:
        return self._stopping
