"""The watched tree in-process, with a real index, ingest worker and inotify observer: the
reconcile scan looks at warm directories and at cold ones whose own mtime moved, nothing
else; directories warm and cool; and the daemon's housekeeping lets old sequences leave
memory once their group is settled."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flatd.config import load_config
from flatd.daemon.ingest import Ingest
from flatd.daemon.service import Daemon
from flatd.daemon.tree import Tree
from flatd.daemon.watch import Watcher
from flatd.inputs.index import Index
from tests.daemon import DEFAULT_CONFIG, flat_sequence, night, wait_for
from tests.faults.helpers import flat_bytes, masters_in

pytestmark = pytest.mark.timeout(60)


class Parts:
    def __init__(self, root: Path) -> None:
        config_path = root / "config.toml"
        config_path.write_text(DEFAULT_CONFIG.format(quiet=1, min_frames=3, watch="", extra=""))
        self.config = load_config(config_path)
        self.incoming = root / "incoming"
        self.index = Index(120, keep_days=7)
        self.ingest = Ingest(
            self.index,
            self.config.frames,
            on_group_changed=lambda group: None,
            on_skip=lambda skip: None,
            settle_seconds=30,  # what a scan finds is read at once: settling is for "modified"
        )
        self.rescans: list[Path] = []
        self.watcher = Watcher(
            self.config.watch,
            self.ingest.submit,
            on_directory=self.rescans.append,
            on_overflow=lambda: None,
        )
        self.tree = Tree(self.config, self.index, self.ingest, self.watcher)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    (tmp_path / "incoming").mkdir()
    made = Parts(tmp_path)
    made.watcher.start()
    yield made
    made.watcher.stop()
    made.ingest.stop()


def test_reconcile_lists_warm_directories_and_cold_ones_that_changed(parts: Parts):
    for m in range(5):
        night(parts.incoming / f"old_{m}", 40 + m, 3, seed=m)
    night(parts.incoming / "recent", 2, 3, seed=7)
    tally = parts.tree.startup()
    parts.ingest.start()
    assert (tally.directories, tally.read, tally.listed) == (7, 3, 15)
    assert parts.watcher.watched() == {parts.incoming, parts.incoming / "recent"}

    again = parts.tree.reconcile()
    assert again.directories == 2 and again.read == 0  # the root and the warm night only

    # a late copy lands in an old night (its own mtime moves): that night alone is listed,
    # the new file read, and the night, warm again, watched
    late = flat_sequence(1, seed=8)
    (parts.incoming / "old_3" / "late.fits").write_bytes(
        flat_bytes(late.frames[0], late.headers[0])
    )
    again = parts.tree.reconcile()
    assert again.directories == 3 and again.read == 1
    assert parts.incoming / "old_3" in parts.watcher.watched()
    wait_for(lambda: parts.index.counts()["flats"] == 4, timeout=5, what="the late frame read")

    # a file deleted from an old night is forgotten without reading anything
    (parts.incoming / "old_1" / "r_000.fits").unlink()
    frames_before = parts.index.counts()["frames"]
    again = parts.tree.reconcile()
    assert again.read == 0
    assert parts.index.counts()["frames"] == frames_before - 1


def test_a_night_cools_down_and_is_unwatched(parts: Parts):
    recent = night(parts.incoming / "last_week", 6.99, 3, seed=3)
    parts.tree.startup()
    assert parts.incoming / "last_week" in parts.watcher.watched()
    # a week later: the night's files and the directory are past the horizon
    when = time.time() - 8 * 86400
    for path in (*recent, parts.incoming / "last_week"):
        os.utime(path, (when, when))
    parts.tree.reconcile()
    assert parts.watcher.watched() == {parts.incoming}
    assert parts.index.counts()["flats"] == 3  # its frames stay until their group is settled


def test_a_directory_that_went_is_forgotten_with_its_subdirectories(parts: Parts):
    night(parts.incoming / "2026" / "a", 1, 3, seed=1)
    night(parts.incoming / "2026" / "b", 50, 3, seed=2)
    parts.tree.startup()
    parts.ingest.start()
    assert parts.tree.directories() == 4

    shutil.rmtree(parts.incoming / "2026")
    parts.tree.rescan(parts.incoming / "2026")
    assert parts.tree.directories() == 1
    assert parts.watcher.watched() == {parts.incoming}
    wait_for(lambda: parts.index.counts()["frames"] == 0, what="everything forgotten")


def test_new_roots_forget_what_lies_under_none_of_them_and_keep_the_rest(parts: Parts):
    """A reload's new roots: `incoming` -> `incoming/2026` (narrowed) and `other` (added)."""
    night(parts.incoming / "2025", 3, 3, seed=1)
    night(parts.incoming / "2026" / "a", 2, 3, seed=2)
    night(parts.incoming / "2026" / "b", 1, 3, seed=3)
    parts.tree.startup()
    parts.ingest.start()
    assert parts.tree.directories() == 5
    other = parts.incoming.parent / "other"
    night(other / "c", 1, 3, seed=4)

    roots = (parts.incoming / "2026", other)
    forgotten = parts.tree.set_roots(roots)
    parts.watcher.set_roots(roots)
    assert forgotten == 2  # incoming and incoming/2025; 2026 and its nights are kept
    assert parts.tree.roots == roots and parts.tree.directories() == 3
    assert parts.incoming not in parts.watcher.watched()
    assert parts.incoming / "2025" not in parts.watcher.watched()
    assert {p.parent.name for p in parts.index.paths()} == {"a", "b"}  # without ingest's help
    assert (parts.incoming / "2025" / "r_000.fits").exists()  # the files stay where they are

    parts.tree.rescan(parts.incoming / "2025")  # an event from just before: ignored
    assert parts.tree.directories() == 3
    parts.rescans.clear()
    assert parts.watcher.check().problems == ()
    assert parts.rescans == [other]  # 2026, watched already, is taken as it is
    parts.tree.rescan(other)  # what the scanner does when the watcher asks
    wait_for(lambda: parts.index.counts()["flats"] == 9, what="other's night read")
    assert {p.parent.name for p in parts.index.paths()} == {"a", "b", "c"}


def test_housekeeping_lets_settled_old_sequences_leave_memory(tmp_path: Path):
    """A real daemon in-process: two old nights of one filter, both combined; after the
    housekeeping only the newest stays in memory, and the status says so."""
    incoming = tmp_path / "incoming"
    for n, days in enumerate((30, 20)):
        taken = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)
        seq = flat_sequence(3, seed=60 + n, shape=(32, 32), start=taken)
        (incoming / f"n{n}").mkdir(parents=True)
        for i in range(3):
            (incoming / f"n{n}" / f"r_{i}.fits").write_bytes(
                flat_bytes(seq.frames[i], seq.headers[i])
            )
    config_path = tmp_path / "config.toml"
    config_path.write_text(DEFAULT_CONFIG.format(quiet=0.2, min_frames=3, watch="", extra=""))
    daemon = Daemon(load_config(config_path))
    daemon.start()
    server = threading.Thread(target=daemon.serve, daemon=True)
    server.start()
    try:
        wait_for(lambda: len(masters_in(tmp_path / "masters")) == 2, timeout=30, what="2 masters")
        wait_for(lambda: all(g["state"] == "done" for g in daemon.states.snapshot()), what="done")
        assert daemon.index.counts()["flats"] == 6
        daemon._housekeeping()
        assert daemon.index.counts() == {"frames": 6, "flats": 3, "skipped": 0, "rejected": 0}
        [group] = daemon.states.snapshot()
        assert group["frames"] == 3
        [sequence] = daemon.index.sequences()
        assert {f.path.parent.name for f in sequence.frames} == {"n1"}
        # nothing to redo: the forgotten night's master stays as it is
        assert len(masters_in(tmp_path / "masters")) == 2
    finally:
        daemon.request_stop()
        server.join(10)
        daemon.shutdown()
