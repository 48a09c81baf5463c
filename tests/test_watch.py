"""The watchdog side (`flatd.daemon.watch`) with a real inotify observer: events become path hints
(closed, changed, deleted) or directories to scan, the output directory is never reported,
and the health check says what it cannot watch as structured problems (a missing root is a
problem, a dead observer makes the daemon unhealthy)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flatd.config import WatchConfig
from flatd.daemon.ingest import Hint
from flatd.daemon.watch import Problem, ProblemKind, Watcher, WatchHealth
from tests.daemon import wait_for
from tests.helpers import write_frame

pytestmark = pytest.mark.timeout(30)


class Seen:
    def __init__(self) -> None:
        self.hints: list[tuple[str, Hint]] = []
        self.directories: list[str] = []

    def submit(self, path: Path, hint: Hint) -> None:
        self.hints.append((path.name, hint))

    def directory(self, path: Path) -> None:
        self.directories.append(path.name)


def watcher_of(root: Path, seen: Seen, **options: object) -> Watcher:
    config = WatchConfig(directories=(root,), **options)  # type: ignore[arg-type]
    return Watcher(
        config,
        seen.submit,
        on_directory=seen.directory,
        on_overflow=lambda: None,
        exclude=(root / "masters",),
    )


def test_events_become_hints_and_directories_to_scan(tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    (root / "masters").mkdir(parents=True)
    seen = Seen()
    watcher = watcher_of(root, seen)
    health = watcher.start()
    assert health == WatchHealth() and health.healthy
    watcher.watch(root / "masters")  # even if asked to: its files are never reported
    try:
        write_frame(root / "r_000.fits")  # written in place and closed
        write_frame(tmp_path / "staging.fits")
        os.replace(tmp_path / "staging.fits", root / "r_001.fits")  # renamed in from outside
        os.replace(root / "r_001.fits", root / "r_002.fits")  # renamed inside
        (root / "r_000.fits").unlink()
        write_frame(root / "masters" / "flat_r.fits")
        (root / "notes.txt").write_text("not a frame")
        (root / "night2").mkdir()
        wait_for(lambda: ("r_000.fits", "deleted") in seen.hints and seen.directories, timeout=5)
    finally:
        watcher.stop()
    assert ("r_000.fits", "closed") in seen.hints
    assert ("r_001.fits", "changed") in seen.hints  # a bare Created: wait until it stands still
    assert ("r_001.fits", "deleted") in seen.hints and ("r_002.fits", "closed") in seen.hints
    assert {name for name, _ in seen.hints} == {"r_000.fits", "r_001.fits", "r_002.fits"}
    assert seen.directories == ["night2"]


def test_a_missing_root_is_a_problem_and_a_dead_observer_is_unhealthy(tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    seen = Seen()
    watcher = watcher_of(root, seen)
    health = watcher.start()
    try:
        [problem] = health.problems
        assert problem == Problem(
            ProblemKind.NO_ROOT, f"watched directory {root} does not exist", root
        )
        assert health.healthy  # nothing to be deaf to yet: systemd's watchdog is still fed
        root.mkdir()
        assert watcher.check() == WatchHealth()
        assert seen.directories == ["incoming"]  # watched now, and scanned
    finally:
        watcher.stop()
    dead = watcher.check()  # the observer thread is gone
    assert [p.kind for p in dead.problems] == [ProblemKind.NO_OBSERVER]
    assert not dead.healthy
    assert dead.reasons == ["the file observer thread has stopped"]


def test_running_out_of_inotify_watches_is_unhealthy_by_kind_not_by_text() -> None:
    out = Problem(ProblemKind.OUT_OF_RESOURCES, "cannot watch /x: any words at all", Path("/x"))
    other = Problem(ProblemKind.WATCH_FAILED, "cannot watch /y: observer inotify limits", None)
    assert not WatchHealth((out,)).healthy
    assert WatchHealth((other,)).healthy  # the words do not matter, the kind does
