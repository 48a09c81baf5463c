"""Case 7: a watched directory that is missing at start, that is deleted and recreated
while the daemon runs, or that already holds thousands of files."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.daemon import flat_sequence, numbered, wait_for, write_atomically, write_frames
from tests.faults.helpers import flat_bytes, per_path

pytestmark = pytest.mark.timeout(90)


def test_missing_at_start_then_created_then_deleted_and_recreated(daemon):
    flatd = daemon(quiet=0.5, min_frames=3)
    flatd.incoming.rmdir()
    flatd.start()  # READY all the same: the daemon waits for the directory
    [problem] = flatd.named("watch_problem")
    assert "does not exist" in problem["reason"] and str(flatd.incoming) in problem["reason"]
    status = wait_for(lambda: (s := flatd.status())["errors"] and s, what="error in status")
    assert "does not exist" in status["errors"][0]["reason"]
    assert flatd.proc.poll() is None

    # it appears: watched within the health-check period, its frames indexed
    flatd.incoming.mkdir()
    seq = flat_sequence(6, seed=101)
    write_frames(flatd.incoming, seq, range(3))
    flatd.wait_event("watch_problem_resolved", timeout=15)
    flatd.wait_event("master_written", timeout=15)
    assert per_path(flatd, "frame_indexed") == {f"r_{i:03d}.fits": 1 for i in range(3)}

    # deleted and recreated: inotify forgets it; the health check watches the new one
    shutil.rmtree(flatd.incoming)
    time.sleep(0.5)
    flatd.incoming.mkdir()
    time.sleep(0.2)
    g = flat_sequence(4, seed=102, filter_name="g")
    for i in range(3):
        write_atomically(flatd.incoming / f"g_{i:03d}.fits", g.frames[i], g.headers[i])
    flatd.wait_event("master_written", count=2, timeout=20)
    assert flatd.named("master_written")[-1]["group"]["FILTER"] == "g"
    wait_for(lambda: flatd.status()["index"]["flats"] == 3, what="old frames forgotten")
    assert {e["path"].rsplit("/", 1)[-1] for e in flatd.named("frame_removed")} == {
        f"r_{i:03d}.fits" for i in range(3)
    }
    # and it goes on being watched: a frame written now is indexed by its event
    write_atomically(flatd.incoming / "g_003.fits", g.frames[3], g.headers[3])
    flatd.wait_event("frame_indexed", timeout=10, path=str(flatd.incoming / "g_003.fits"))
    assert flatd.proc.poll() is None
    assert flatd.stop() == 0


def test_thousands_of_files_at_start_are_all_indexed_quickly(daemon):
    flatd = daemon(quiet=0.5, min_frames=5000)
    seq = flat_sequence(1, seed=103, shape=(16, 16))
    content = flat_bytes(seq.frames[0], seq.headers[0])
    for i in range(3000):
        sub = flatd.incoming / f"night{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"r_{i:05d}.fits").write_bytes(numbered(content, i))
    started = time.monotonic()
    flatd.start()
    to_ready = time.monotonic() - started
    [ready] = flatd.named("ready")
    assert ready["scanned"] == 3000 and ready["flats"] == 3000
    assert ready["seconds"] < 5.0 and to_ready < 10.0, (ready["seconds"], to_ready)
    wait_for(
        lambda: (
            (s := flatd.status())["index"]["flats"] == 3000
            and s["groups"]
            and s["groups"][0]["state"] == "too_few"
        ),
        what="3000 frames, too few to combine",
    )
    # still watching: one more lands and is indexed
    (flatd.incoming / "night0" / "late.fits").write_bytes(numbered(content, 3000))
    flatd.wait_event("frame_indexed", path=str(flatd.incoming / "night0" / "late.fits"))
    assert flatd.stop() == 0
