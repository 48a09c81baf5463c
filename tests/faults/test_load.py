"""Case 8: a burst of 6 filters x 40 frames; and an inotify queue overflow, after which the
frames whose events were lost are still indexed (rescan on overflow)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from flatd.config import load_config
from flatd.daemon.service import Daemon
from flatd.daemon.watch import OVERFLOW_LOGGER
from flatd.outputs.masters import read_master_inputs
from tests.daemon import DEFAULT_CONFIG, flat_sequence, wait_for
from tests.faults.helpers import flat_bytes, masters_in, open_fds, per_path, rss_kb

pytestmark = pytest.mark.timeout(120)

FILTERS = ("u", "g", "r", "i", "z", "Y")
PER_FILTER = 40


def test_six_filters_times_forty_frames_as_fast_as_possible(daemon):
    flatd = daemon(quiet=1.0, min_frames=5).start()
    contents = {}
    for n, name in enumerate(FILTERS):
        seq = flat_sequence(PER_FILTER, filter_name=name, seed=80 + n)
        for i in range(PER_FILTER):
            contents[f"{name}_{i:03d}.fits"] = flat_bytes(seq.frames[i], seq.headers[i])
    rss_before = rss_kb(flatd.proc.pid)
    started = time.monotonic()
    for name, content in contents.items():  # in filter order, no pause at all
        (flatd.incoming / name).write_bytes(content)
    landed = time.monotonic() - started

    flatd.wait_event("master_written", count=len(FILTERS), timeout=60)
    time.sleep(1.5)  # a second master for any group would have come by now
    written = flatd.named("master_written")
    assert len(written) == len(FILTERS)
    assert len({e["path"] for e in written}) == len(FILTERS)
    assert per_path(flatd, "frame_indexed") == dict.fromkeys(contents, 1)
    status = flatd.status()
    assert status["index"] == {"frames": 240, "flats": 240, "skipped": 0, "rejected": 0}
    assert status["errors"] == []
    assert {g["state"] for g in status["groups"]} == {"done"}
    for master in masters_in(flatd.masters):
        assert len(read_master_inputs(master)) == PER_FILTER
    # memory stays bounded: 240 small frames cost the daemon little
    rss_after = rss_kb(flatd.proc.pid)
    assert rss_after < 400_000, f"RSS {rss_after} kB"
    assert rss_after - rss_before < 100_000, (rss_before, rss_after)
    assert open_fds(flatd.proc.pid) < 64
    assert flatd.stop() == 0
    print(f"240 frames landed in {landed:.2f} s; RSS {rss_before} -> {rss_after} kB")


def test_queue_overflow_rescans_and_indexes_the_frames_whose_events_were_lost(tmp_path: Path):
    """The kernel's inotify queue (fs.inotify.max_queued_events) is global and could not
    be shrunk safely on a shared machine, so the overflow is made in-process: a real
    Daemon, whose watcher drops every event (as an overflow does), then the exact log
    record watchdog's inotify emitter writes on IN_Q_OVERFLOW."""
    (tmp_path / "incoming").mkdir()
    config_path = tmp_path / "config.toml"
    config_path.write_text(DEFAULT_CONFIG.format(quiet=0.5, min_frames=3, watch="", extra=""))
    daemon = Daemon(load_config(config_path))
    daemon.start()
    server = threading.Thread(target=daemon.serve, daemon=True)
    server.start()
    try:
        seq = flat_sequence(4, seed=91)
        (tmp_path / "incoming" / "seen.fits").write_bytes(flat_bytes(seq.frames[0], seq.headers[0]))
        wait_for(lambda: daemon.index.counts()["flats"] == 1, what="the normal path works")

        lost: list[Path] = []
        real_submit = daemon.watcher._submit
        daemon.watcher._submit = lambda path, hint: lost.append(path)  # events lost
        for i in range(1, 4):
            (tmp_path / "incoming" / f"lost_{i}.fits").write_bytes(
                flat_bytes(seq.frames[i], seq.headers[i])
            )
        time.sleep(1.0)
        assert daemon.index.counts()["flats"] == 1 and lost
        daemon.watcher._submit = real_submit

        logging.getLogger(OVERFLOW_LOGGER).warning("inotify event queue overflowed")
        wait_for(
            lambda: daemon.index.counts()["flats"] == 4,
            timeout=15,
            what="the lost frames indexed by the rescan",
        )
        wait_for(lambda: masters_in(tmp_path / "masters"), timeout=15, what="the master")
    finally:
        daemon.request_stop()
        server.join(10)
        daemon.shutdown()
