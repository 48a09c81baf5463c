"""The watchdog side: one watch per directory that can still receive frames, and events
turned into path hints.

Each directory is watched on its own, non-recursively, because the scanner decides which
ones need it: the roots always, and the directories that changed inside
`sequence.keep_days` — not the months of older night directories a recursive inotify watch
would cover (one kernel watch per directory, counted against
`fs.inotify.max_user_watches`, and a walk of the whole tree at start-up). Watches are
scheduled with `follow_symlink`, so a symlinked directory is watched at its target while
events keep the path it was found under; the scanner never watches one directory twice.
With inotify all watches share one inotify instance; each costs watchdog one idle thread
(~22 kB), a few dozen of them in a normal week.

The handler does nothing but note a path and a hint (closed / changed / deleted) with
`Ingest.submit`, or name a directory that appeared, moved or went, so it is O(1) and
cannot die on a bad file (an exception in a watchdog handler silently kills the observer's
dispatch thread).

`check()` is the health check the service runs every few seconds: it re-watches a root
that was deleted and recreated (inotify forgets it) or whose symlink now points
elsewhere, retries watches that failed, and says what is not watched as a `WatchHealth`
value: each problem with its kind (`Problem`) and whether the daemon is healthy. A dead
observer, or a watch that failed for lack of inotify resources (`ENOSPC` past
`fs.inotify.max_user_watches`, `EMFILE` past `max_user_instances`), makes it unhealthy:
the daemon then stops pinging systemd's watchdog, because it is deaf to part of its tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from flatd.config import WatchConfig
from flatd.daemon.ingest import Hint
from flatd.inputs.discover import matches

log = structlog.get_logger("flatd.daemon.watch")

INOTIFY_EVENTS = [
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
MAX_PROBLEMS = 10  # failed watches reported one by one; past that, how many more
RESOURCE_ERRORS = {
    errno.ENOSPC: "the inotify watch limit is reached (fs.inotify.max_user_watches)",
    errno.EMFILE: "the inotify instance limit is reached (fs.inotify.max_user_instances)",
    errno.ENOMEM: "the kernel has no memory left for inotify watches",
}
ADVICE = (
    "raise it (e.g. `sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512`"
    " and the same in /etc/sysctl.d/) or set [watch] polling = true; until then flatd is "
    "deaf to new files there and stops pinging systemd's watchdog"
)


class ProblemKind(StrEnum):
    NO_OBSERVER = "no_observer"  # the observer could not start, or its thread stopped
    NO_ROOT = "no_root"  # a watched directory does not exist
    OUT_OF_RESOURCES = "out_of_resources"  # the kernel's inotify limits
    WATCH_FAILED = "watch_failed"  # any other reason a directory cannot be watched
    MORE = "more"  # past MAX_PROBLEMS: how many more directories


UNHEALTHY = frozenset({ProblemKind.NO_OBSERVER, ProblemKind.OUT_OF_RESOURCES})


@dataclass(frozen=True)
class Problem:
    """Something the watcher cannot watch, and why (`reason`, one line for people)."""

    kind: ProblemKind
    reason: str
    directory: Path | None = None


@dataclass(frozen=True)
class WatchHealth:
    """What one health check found: the problems, and whether the daemon may tell
    systemd's watchdog it is alive (not when it is deaf: no observer, or inotify's limits
    reached)."""

    problems: tuple[Problem, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return not any(p.kind in UNHEALTHY for p in self.problems)

    @property
    def reasons(self) -> list[str]:
        return [p.reason for p in self.problems]


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._watcher.on_event(event)
        except Exception:  # keep the observer's dispatch thread alive whatever happens
            log.exception("watch_handler_failed", event=type(event).__name__)


class _OverflowHandler(logging.Handler):
    """watchdog reports a kernel queue overflow only as a log record: rescan on it."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._on_overflow()


class Watcher:
    """Watches the directories it is asked to and hands path hints to `submit`."""

    def __init__(
        self,
        config: WatchConfig,
        submit: Callable[[Path, Hint], None],
        *,
        on_directory: Callable[[Path], None],
        on_overflow: Callable[[], None],
        exclude: tuple[Path, ...] = (),
    ) -> None:
        self._config = config
        self._submit = submit
        self._on_directory = on_directory
        self._exclude = tuple({q for p in exclude for q in (p.absolute(), p.resolve())})
        self._overflow_handler = _OverflowHandler(on_overflow)
        self._observer: BaseObserver | None = None
        self._broken = ""  # why the observer could not be made, if it could not
        self._lock = threading.RLock()
        self._watches: dict[Path, ObservedWatch] = {}
        self._identity: dict[Path, tuple[int, int]] = {}  # root -> (st_dev, st_ino) watched
        self._failed: dict[Path, Problem] = {}  # directory -> why it cannot be watched

    @property
    def observer_name(self) -> str:
        return "polling" if self._config.polling else "inotify"

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._config.directories

    def start(self) -> WatchHealth:
        """Start the observer and watch the roots; say what cannot be watched yet."""
        logging.getLogger(OVERFLOW_LOGGER).addHandler(self._overflow_handler)
        try:
            self._observer = self._new_observer()
            self._observer.start()
        except OSError as exc:
            self._observer = None
            self._broken = f"cannot start the {self.observer_name} observer: {_explain(exc)}"
            if exc.errno in RESOURCE_ERRORS:
                self._broken += f"; {ADVICE}"
            log.error("watch_failed", reason=self._broken)
        return self.check(initial=True)

    def _new_observer(self) -> BaseObserver:
        if self._config.polling:
            return PollingObserver(timeout=self._config.poll_interval_seconds)
        return Observer()

    def stop(self) -> None:
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self._overflow_handler)
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)

    def set_roots(self, directories: tuple[Path, ...]) -> None:
        """Watch these roots from now on (a reload): those no longer listed are unwatched
        at once (their subdirectories by the scanner); new ones are watched by the next
        `check()`."""
        with self._lock:
            gone = [root for root in self.roots if root not in directories]
            self._config = dataclasses.replace(self._config, directories=tuple(directories))
            for root in gone:
                self.unwatch(root)
                self._identity.pop(root, None)
            for root in directories:  # watched already, as a subdirectory: a root as it is
                if root in self._watches and root not in self._identity:
                    with contextlib.suppress(OSError):
                        found = root.stat()
                        self._identity[root] = (found.st_dev, found.st_ino)
        for root in gone:
            log.info("unwatching", directory=str(root), reason="no longer in watch.directories")

    # -- the scanner asks ----------------------------------------------------------------
    def watch(self, directory: Path) -> bool:
        """Watch `directory` (not its subdirectories); False when it cannot be."""
        with self._lock:
            if directory in self._watches:
                return True
            if self._observer is None:
                return False
            try:
                self._watches[directory] = self._observer.schedule(
                    _Handler(self),
                    str(directory),
                    recursive=False,
                    event_filter=None if self._config.polling else INOTIFY_EVENTS,
                    follow_symlink=True,
                )
            except OSError as exc:
                self._watch_failed(directory, exc)
                return False
            if self._failed.pop(directory, None) is not None:
                log.info("watch_recovered", directory=str(directory))
        log.debug("watch_added", directory=str(directory), observer=self.observer_name)
        return True

    def unwatch(self, directory: Path) -> None:
        """Stop watching `directory` (it went cold or went away)."""
        with self._lock:
            self._failed.pop(directory, None)
            watch = self._watches.pop(directory, None)
            if watch is not None and self._observer is not None:
                with contextlib.suppress(KeyError):  # its emitter already went
                    self._observer.unschedule(watch)
                log.debug("watch_removed", directory=str(directory))

    def watching(self, directory: Path) -> bool:
        with self._lock:
            return directory in self._watches

    def watched(self) -> set[Path]:
        with self._lock:
            return set(self._watches)

    def _watch_failed(self, directory: Path, exc: OSError) -> None:
        reason = f"cannot watch {directory}: {_explain(exc)}"
        kind = ProblemKind.WATCH_FAILED
        if exc.errno in RESOURCE_ERRORS:
            reason += f"; {ADVICE}"
            kind = ProblemKind.OUT_OF_RESOURCES
        if self._failed.get(directory) != Problem(kind, reason, directory):
            log.error("watch_failed", directory=str(directory), reason=reason)
        self._failed[directory] = Problem(kind, reason, directory)

    # -- health ----------------------------------------------------------------------------
    def check(self, initial: bool = False) -> WatchHealth:
        """Re-watch roots that (re)appeared or were re-pointed and retry failed watches,
        asking for a scan of each (files may have landed meanwhile); say what is not
        being watched."""
        if self._observer is None:
            return WatchHealth((Problem(ProblemKind.NO_OBSERVER, self._broken),))
        if not self._observer.is_alive():  # nothing can be watched again through it
            stopped = "the file observer thread has stopped"
            return WatchHealth((Problem(ProblemKind.NO_OBSERVER, stopped),))
        problems: list[Problem] = []
        with self._lock:  # no watch is added meanwhile, which would look dead
            alive = {e.watch for e in self._observer.emitters if e.is_alive()}
            problems += [p for p in (self._check_root(r, alive, initial) for r in self.roots) if p]
            self._forget_dead(alive)
        for directory in self._retry_failed():
            self._on_directory(directory)
        with self._lock:
            failed = [f for d, f in sorted(self._failed.items()) if d not in self.roots]
        problems += failed[:MAX_PROBLEMS]
        if len(failed) > MAX_PROBLEMS:
            more = f"and {len(failed) - MAX_PROBLEMS} more directories cannot be watched"
            worst = (
                ProblemKind.OUT_OF_RESOURCES
                if any(f.kind in UNHEALTHY for f in failed)
                else ProblemKind.MORE
            )
            problems.append(Problem(worst, more))
        return WatchHealth(tuple(problems))

    def _check_root(self, root: Path, alive: set[ObservedWatch], initial: bool) -> Problem | None:
        try:
            stat = root.stat()
        except OSError:
            stat = None
        with self._lock:
            watch = self._watches.get(root)
            identity = (stat.st_dev, stat.st_ino) if stat is not None else None
            if watch is not None and watch in alive and identity == self._identity.get(root):
                return None
            if watch is not None:
                self.unwatch(root)
                log.warning("watch_lost", directory=str(root))
            if stat is None or not root.is_dir():
                missing = f"watched directory {root} does not exist"
                return Problem(ProblemKind.NO_ROOT, missing, root)
            if not self.watch(root):
                failed = Problem(ProblemKind.WATCH_FAILED, f"cannot watch {root}", root)
                return self._failed.get(root, failed)
            assert identity is not None
            self._identity[root] = identity
        log.info(
            "watching",
            directory=str(root),
            observer=self.observer_name,
            recursive=self._config.recursive,
            target=str(root.resolve()) if root.is_symlink() else None,
        )
        if not initial:
            self._on_directory(root)
        return None

    def _forget_dead(self, alive: set[ObservedWatch]) -> None:
        """Watches of subdirectories stop when their directory is deleted: drop them (the
        deletion itself reached the parent's watch, and the scanner)."""
        with self._lock:
            dead = [d for d, w in self._watches.items() if w not in alive and d not in self.roots]
        for directory in dead:
            self.unwatch(directory)

    def _retry_failed(self) -> list[Path]:
        """Try the failed watches again; return those that now work. A directory that went
        away meanwhile is no longer a failure."""
        with self._lock:
            failed = [d for d in self._failed if d not in self.roots]
        recovered = []
        for directory in failed:
            if not directory.is_dir():
                with self._lock:
                    self._failed.pop(directory, None)
            elif self.watch(directory):
                recovered.append(directory)
        return recovered

    # -- events -----------------------------------------------------------------------------
    def on_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirCreatedEvent | DirMovedEvent | DirDeletedEvent):
            self._directory(event.src_path)
            if isinstance(event, DirMovedEvent):
                self._directory(event.dest_path)
            return
        if isinstance(event, FileMovedEvent):
            self._note(event.src_path, "deleted")
            self._note(event.dest_path, "closed")
        elif isinstance(event, FileClosedEvent):
            self._note(event.src_path, "closed")
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self._note(event.src_path, "changed")
        elif isinstance(event, FileDeletedEvent):
            self._note(event.src_path, "deleted")

    def _note(self, raw_path: str | bytes, hint: Hint) -> None:
        path = _text(raw_path)
        if self._excluded(path):
            return
        if matches(path, self._config.patterns):
            self._submit(Path(path), hint)
        elif hint != "deleted" and os.path.islink(path):
            self._directory(path)  # a symlink appeared: to a directory, it is one to scan

    def _directory(self, raw_path: str | bytes) -> None:
        if not raw_path or self._excluded(raw_path):
            return
        path = Path(_text(raw_path))
        if self._config.recursive or path in self.roots:
            self._on_directory(path)

    def _excluded(self, raw_path: str | bytes) -> bool:
        path = Path(_text(raw_path))
        return any(path.is_relative_to(root) for root in self._exclude)


def _explain(exc: OSError) -> str:
    known = RESOURCE_ERRORS.get(exc.errno or 0)
    return f"{known} ({errno.errorcode.get(exc.errno or 0, exc.errno)})" if known else str(exc)


def _text(path: str | bytes) -> str:
    return path.decode(errors="surrogateescape") if isinstance(path, bytes) else path
