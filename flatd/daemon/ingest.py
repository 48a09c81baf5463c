"""From "something happened to this path" to an index entry, once the file is complete.

The watcher only notes paths (O(1), on its own thread); this worker decides when each
file is whole and reads it. A file closed after writing or renamed into place is read
at once, and so is a file a scan found (a new directory's first frames land before its
watch exists). A file that was merely created or modified (and every file a polling
observer reports) is read once its size and modification time have stood still for
`settle_seconds`. A file shorter than its header promises is never an error while it
may still be growing: it is looked at again until it has stood still for
`incomplete_seconds`, and only then recorded as truncated.

Each flat is indexed with the digest of its content (`fingerprint`), so a link or a copy
of a frame is a duplicate (`frame_duplicate`) and a touched file is the same frame. What
is not an input goes straight to `on_skip` (the status board), after its one log event
(`frame_rejected` or `frame_skipped`). Every change of the index is also told to
`on_index_changed` (the board writes the status soon): a duplicate changes no group, but
it changes the counts and the group's list of duplicates.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from flatd.config import CalibrateConfig, FramesConfig
from flatd.frames import Frame, Skip, read_frame
from flatd.inputs.fingerprint import Fingerprints
from flatd.inputs.index import GroupKey, Index

log = structlog.get_logger("flatd.daemon.ingest")

Hint = Literal["closed", "found", "changed", "deleted"]


@dataclass
class _Pending:
    due: float
    hint: Hint
    first_seen: float
    last_stat: tuple[int, int] | None = None
    still_since: float | None = None


class Ingest:
    """A worker thread between the watcher and the index."""

    def __init__(
        self,
        index: Index,
        frames_config: FramesConfig,
        *,
        on_group_changed: Callable[[GroupKey], None],
        on_skip: Callable[[Skip], None],
        on_index_changed: Callable[[], None] = lambda: None,
        settle_seconds: float = 1.0,
        incomplete_seconds: float = 15.0,
        recheck_seconds: float = 0.25,
        calibrate: CalibrateConfig | None = None,
    ) -> None:
        self._index = index
        self._frames_config = frames_config
        self._calibrate = calibrate  # whether raw frames are refused or indexed
        self._on_group_changed = on_group_changed
        self._on_skip = on_skip
        self._on_index_changed = on_index_changed  # any change: counts, duplicates
        self._settle = settle_seconds
        self._incomplete = incomplete_seconds
        self._recheck = recheck_seconds
        self._pending: dict[Path, _Pending] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="flatd-ingest", daemon=True)
        self._fingerprints = Fingerprints()

    # -- called from the watcher's thread: O(1), never raises -------------------------
    def submit(self, path: Path, hint: Hint) -> None:
        """Note that `path` was closed after writing, found by a scan, changed, or deleted."""
        now = time.monotonic()
        with self._wake:
            entry = self._pending.get(path)
            if entry is None:
                entry = self._pending[path] = _Pending(now, hint, now)
            elif hint != "changed" or entry.hint == "deleted":
                entry.hint = hint
            entry.due = now if hint != "changed" else now + self._settle
            heapq.heappush(self._heap, (entry.due, str(path)))
            self._wake.notify()

    # -- the worker ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def pending(self) -> int:
        with self._wake:
            return len(self._pending)

    def ingest_now(self, path: Path) -> Frame | Skip | None:
        """Read one file synchronously (the start-up scan); a file that looks
        incomplete is handed to the worker to be looked at again."""
        item = self._read(path)
        if isinstance(item, Skip) and item.incomplete:
            self.submit(path, "changed")
            return None
        self._record(item)
        return item

    def _loop(self) -> None:
        while True:
            with self._wake:
                path = self._next_due()
                if path is None:
                    return
                entry = self._pending[path]
            try:
                finished = self._process(path, entry)
            except Exception:  # one bad file must never stop ingestion
                log.exception("ingest_failed", path=str(path))
                finished = True
            with self._wake:
                if finished and self._pending.get(path) is entry and entry.due <= time.monotonic():
                    del self._pending[path]
                elif not finished:
                    heapq.heappush(self._heap, (entry.due, str(path)))

    def _next_due(self) -> Path | None:
        while not self._stopping:
            now = time.monotonic()
            while self._heap:
                due, name = self._heap[0]
                entry = self._pending.get(Path(name))
                if entry is None or entry.due != due:
                    heapq.heappop(self._heap)  # superseded by a later event
                elif due <= now:
                    heapq.heappop(self._heap)
                    return Path(name)
                else:
                    break
            self._wake.wait(self._heap[0][0] - now if self._heap else None)
        return None

    def _process(self, path: Path, entry: _Pending) -> bool:
        """Look at one due path; False means look again at `entry.due`."""
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            self._forget(path)
            return True
        now = time.monotonic()
        current = (stat.st_size, stat.st_mtime_ns)
        if self._index.knows(path, *current):
            return True
        if entry.hint == "changed" and not self._stood_still(entry, current, now):
            entry.due = now + self._recheck
            return False
        item = self._read(path)
        if isinstance(item, Skip) and item.incomplete:
            if not self._stood_still(entry, current, now, self._incomplete):
                entry.hint = "changed"
                entry.due = now + self._recheck
                return False
            item = self._read(path, settled=True)  # at rest: what is there is the file
        if isinstance(item, Skip) and item.incomplete:
            item = Skip(
                item.path,
                item.kind,
                f"{item.reason} (unchanged for {self._incomplete:g} s)",
                item.size,
                item.mtime_ns,
            )
        self._record(item)
        return True

    def _stood_still(
        self, entry: _Pending, current: tuple[int, int], now: float, needed: float | None = None
    ) -> bool:
        if entry.last_stat != current:
            entry.last_stat, entry.still_since = current, now
        assert entry.still_since is not None
        return now - entry.still_since >= (self._settle if needed is None else needed)

    def _read(self, path: Path, settled: bool = False) -> Frame | Skip:
        """The file's header read, a flat with its content digest (`read_frame`)."""
        frame = read_frame(path, self._frames_config, self._calibrate, settled=settled)
        return self._fingerprints.identified(frame)

    def _record(self, item: Frame | Skip) -> None:
        change = self._index.add(item)
        if not change.changed:
            return
        self._on_index_changed()
        if change.duplicate_of is not None:
            log.info("frame_duplicate", path=str(item.path), duplicate_of=str(change.duplicate_of))
        elif isinstance(item, Frame):
            log.info(
                "frame_indexed",
                path=str(item.path),
                group=dict(item.group),
                date=item.date.isoformat(),
            )
        elif item.refused:
            log.warning("frame_rejected", path=str(item.path), reason=item.reason)
            self._on_skip(item)
        else:
            log.info("frame_skipped", path=str(item.path), reason=item.reason)
            self._on_skip(item)
        for group in change.groups:
            self._on_group_changed(group)

    def _forget(self, path: Path) -> None:
        group = self._index.remove(path)
        log.info("frame_removed", path=str(path))
        self._on_index_changed()
        if group is not None:
            self._on_group_changed(group)
