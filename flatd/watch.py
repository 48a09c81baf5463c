"""The watchdog side: which directories are watched, and turning events into path hints.

The handler does nothing but note a path and a hint (closed / changed / deleted) with
`Ingest.submit`, so it is O(1) and cannot die on a bad file (an exception in a watchdog
handler silently kills the observer's dispatch thread). inotify by default; the polling
observer for network mounts. `check()` is the health check the service runs every few
seconds: it re-watches a directory that was deleted and recreated (inotify forgets it)
or that did not exist at start-up, and reports what it could not watch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
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
from flatd.discover import matches
from flatd.ingest import Hint

log = structlog.get_logger("flatd.watch")

INOTIFY_EVENTS = [
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"


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
    """Watches the configured directories and hands path hints to `submit`."""

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
        self._observer = self._new_observer()
        self._watches: dict[Path, ObservedWatch | None] = dict.fromkeys(config.directories)

    @property
    def observer_name(self) -> str:
        return "polling" if self._config.polling else "inotify"

    def _new_observer(self) -> BaseObserver:
        if self._config.polling:
            return PollingObserver(timeout=self._config.poll_interval_seconds)
        return Observer()

    def start(self) -> list[str]:
        """Start watching; return the directories that cannot be watched yet."""
        logging.getLogger(OVERFLOW_LOGGER).addHandler(self._overflow_handler)
        self._observer.start()
        return self.check(initial=True)

    def stop(self) -> None:
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self._overflow_handler)
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)

    def check(self, initial: bool = False) -> list[str]:
        """Re-watch directories that (re)appeared, asking for a scan of each (files may
        have landed while it was not watched); return what is not being watched."""
        problems = []
        if not self._observer.is_alive():
            problems.append("the file observer thread has stopped")
        alive = {e.watch for e in self._observer.emitters if e.is_alive()}
        for directory, watch in self._watches.items():
            if watch is not None and watch in alive and directory.is_dir():
                continue
            if watch is not None:
                self._observer.unschedule(watch)
                self._watches[directory] = None
                log.warning("watch_lost", directory=str(directory))
            if not directory.is_dir():
                problems.append(f"watched directory {directory} does not exist")
                continue
            self._watches[directory] = self._schedule(directory)
            if not initial:
                self._on_directory(directory)
        return problems

    def _schedule(self, directory: Path) -> ObservedWatch | None:
        event_filter = None if self._config.polling else INOTIFY_EVENTS
        try:
            watch = self._observer.schedule(
                _Handler(self),
                str(directory),
                recursive=self._config.recursive,
                event_filter=event_filter,
            )
        except OSError as exc:
            log.error("watch_failed", directory=str(directory), reason=str(exc))
            return None
        log.info(
            "watching",
            directory=str(directory),
            observer=self.observer_name,
            recursive=self._config.recursive,
        )
        return watch

    def on_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirCreatedEvent | DirMovedEvent):
            target = event.dest_path if isinstance(event, DirMovedEvent) else event.src_path
            if not self._excluded(target):
                self._on_directory(Path(_text(target)))
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
        if matches(path, self._config.patterns) and not self._excluded(path):
            self._submit(Path(path), hint)

    def _excluded(self, raw_path: str | bytes) -> bool:
        path = Path(_text(raw_path))
        return any(path.is_relative_to(root) for root in self._exclude)


def _text(path: str | bytes) -> str:
    return path.decode(errors="surrogateescape") if isinstance(path, bytes) else path
