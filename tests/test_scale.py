"""Months at the telescope, end to end with the real `flatd run`: old night directories
listed but not read or watched, the `starting` state and systemd's start timeout, new
directories scanned alone, symbolic links followed once, one daemon per output and status
file, a crash seen at once, and a failed inotify watch making the daemon unhealthy."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from flatd.atomic import TEMP_PREFIX, TEMP_SUFFIX
from tests.daemon import (
    FlatdProcess,
    NotifySocket,
    flat_sequence,
    night,
    numbered,
    wait_for,
    write_frames,
)
from tests.faults.helpers import flat_bytes

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def indexed(flatd: FlatdProcess) -> Counter:
    return Counter(e["path"] for e in list(flatd.events) if e.get("event") == "frame_indexed")


def watched(flatd: FlatdProcess) -> set[str]:
    added = {e["directory"] for e in flatd.named("watch_added")}
    return added - {e["directory"] for e in flatd.named("watch_removed")}


def test_old_nights_are_listed_not_read_nor_watched_and_a_new_night_is_scanned_alone(daemon):
    flatd = daemon(quiet=0.5, min_frames=3)
    old = [night(flatd.incoming / f"2026-0{m}-01", 60 + m, 4, seed=m, others=1) for m in (1, 2)]
    # copied today with their times kept (cp -p): the directory is new, its files are not
    old.append(night(flatd.incoming / "2026-03-01", 63, 4, seed=3, others=1, directory_time=False))
    recent = night(flatd.incoming / "yesterday", 1, 3, seed=9)
    flatd.start()

    [ready] = flatd.named("ready")
    assert (ready["listed_only"], ready["read"], ready["scanned"]) == (15, 3, 18)
    assert set(indexed(flatd)) == {str(p) for p in recent}  # not one old header was read
    assert watched(flatd) == {str(flatd.incoming), str(flatd.incoming / "yesterday")}
    status = wait_for(lambda: (s := flatd.status())["index"]["frames"] == 18 and s, what="index")
    assert status["index"] == {"frames": 18, "flats": 3, "skipped": 0, "rejected": 0}
    assert status["daemon"]["state"] == "running"
    assert all(p.exists() for paths in old for p in paths)

    # tonight's directory appears: it alone is scanned, watched, and its frames indexed
    tonight = flatd.incoming / "tonight"
    tonight.mkdir()
    write_frames(tonight, flat_sequence(3, seed=10), range(3))
    flatd.wait_event("master_written", count=2, timeout=30)
    rescans = {e["directory"] for e in flatd.named("rescanned")}
    assert rescans == {str(tonight)}
    assert str(tonight) in watched(flatd)
    assert max(indexed(flatd).values()) == 1
    assert len(indexed(flatd)) == 6
    assert flatd.stop() == 0


def test_starting_until_the_start_up_scan_is_done_with_systemd_timeout_extended(
    daemon, tmp_path: Path
):
    seq = flat_sequence(1, seed=20, shape=(16, 16))
    content = flat_bytes(seq.frames[0], seq.headers[0])
    for i in range(1200):  # a start-up scan that takes a moment
        sub = tmp_path / "incoming" / f"n{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"r_{i:05d}.fits").write_bytes(content)
    states: list[str] = []
    reading = threading.Event()

    def read_states() -> None:
        while not reading.wait(0.002):
            try:
                state = json.loads((tmp_path / "status.json").read_text())["daemon"]["state"]
            except (OSError, ValueError, KeyError):
                continue
            if not states or states[-1] != state:
                states.append(state)

    reader = threading.Thread(target=read_states, daemon=True)
    reader.start()
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        flatd = daemon(env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "1000000"})
        flatd.start()
        wait_for(lambda: "running" in states, what="state running")
        wait_for(lambda: sock.times_of("WATCHDOG=1"), what="WATCHDOG=1")
    finally:
        reading.set()
        reader.join(5)
        sock.close()
    assert states[:2] == ["starting", "running"], states
    [ready_at] = sock.times_of("READY=1")
    extends = [t for t, m in sock.received if m.startswith("EXTEND_TIMEOUT_USEC=")]
    assert extends and max(extends) < ready_at
    assert any("STATUS=starting" in m for _, m in sock.received)
    assert min(sock.times_of("WATCHDOG=1")) > ready_at  # the watchdog only once started
    assert flatd.stop() == 0


def test_symlinked_root_and_night_directories_are_followed_once(daemon, tmp_path: Path):
    raid = tmp_path / "raid" / "tonight"
    elsewhere = tmp_path / "elsewhere"
    raid.mkdir(parents=True)
    (elsewhere / "night5").mkdir(parents=True)
    (elsewhere / "night6").mkdir(parents=True)
    (tmp_path / "incoming").symlink_to(raid)  # /data/incoming -> /mnt/raid/...
    (raid / "night5").symlink_to(elsewhere / "night5")
    (raid / "alias").symlink_to(elsewhere / "night5")  # a second path to the same night
    (raid / "loop").symlink_to(raid)  # a link back up the tree

    flatd = daemon(quiet=0.5, min_frames=3).start()
    seq = flat_sequence(9, seed=30)
    write_frames(flatd.incoming, seq, range(3))  # lands in the link's target
    write_frames(elsewhere / "night5", seq, range(3, 6))
    (raid / "night6").symlink_to(elsewhere / "night6")  # a link made while running
    wait_for(lambda: str(flatd.incoming / "night6") in watched(flatd), what="night6 watched")
    write_frames(elsewhere / "night6", seq, range(6, 9))

    wait_for(lambda: len(indexed(flatd)) == 9, what="nine frames indexed", timeout=30)
    flatd.wait_event("master_written", timeout=30)
    counts = indexed(flatd)
    assert set(counts.values()) == {1}, counts
    assert all(p.startswith(str(flatd.incoming)) for p in counts)  # the paths it was given
    assert {Path(p).parent.name for p in counts} == {"incoming", "alias", "night6"}
    refused = {
        (Path(e["directory"]).name, Path(e["same_as"]).name)
        for e in flatd.named("directory_not_followed")
    }
    assert refused == {("loop", "incoming"), ("night5", "alias")}
    [root_watch] = [e for e in flatd.named("watching") if e["directory"] == str(flatd.incoming)]
    assert root_watch["target"] == str(raid)
    time.sleep(1.0)  # a duplicate event for any path would have been indexed by now
    assert max(indexed(flatd).values()) == 1
    assert flatd.status()["index"]["flats"] == 9
    assert flatd.stop() == 0


def test_a_second_daemon_is_refused_and_a_crash_is_seen_at_once(daemon, tmp_path: Path):
    first = daemon(quiet=0.5).start()
    planted = first.masters / f"{TEMP_PREFIX}flat_r.fits.pid{first.proc.pid}.abc123{TEMP_SUFFIX}"
    planted.write_bytes(b"half a master")  # what the first daemon may be writing
    status_before = first.status()

    second = daemon(quiet=0.5).start(wait_ready=False)
    assert second.proc.wait(30) == 1
    [refused] = second.wait_event("already_running")
    assert refused["pid"] == first.proc.pid
    assert f"pid {first.proc.pid}" in refused["reason"] and "output directory" in refused["reason"]
    assert planted.exists()  # the refused daemon touched nothing of the first's
    assert first.status()["daemon"]["pid"] == first.proc.pid
    assert first.status()["daemon"]["started_at"] == status_before["daemon"]["started_at"]
    assert first.proc.poll() is None

    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    done = subprocess.run(
        [sys.executable, "-m", "flatd", "status", "--config", str(first.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 3
    assert done.stdout.startswith(
        f"flatd is not running (pid {first.proc.pid} is gone; last update"
    )

    third = daemon(quiet=0.5).start()  # the dead daemon's lock does not block
    [removed] = third.named("stale_temporary_removed")
    assert removed["path"] == str(planted)
    assert third.stop() == 0


def _limited(tmp_path: Path, setting: str, value: int) -> tuple[str, ...]:
    """A prefix running the daemon in a user namespace of its own, where the per-user
    inotify limit `setting` (/proc/sys/user/max_inotify_*) is `value`: the real kernel
    limit, reached by a few directories instead of hundreds of thousands."""
    probe = subprocess.run(
        ["unshare", "-Ur", "sh", "-c", f"echo 1 > /proc/sys/user/{setting}"],
        capture_output=True,
        check=False,
    )
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"no user namespaces here to lower {setting}: {probe.stderr.decode()}")
    script = f'echo {value} > /proc/sys/user/{setting} && exec "$@"'
    return ("unshare", "-Ur", "sh", "-c", script, "sh")


def test_a_watch_past_the_inotify_limit_makes_the_daemon_unhealthy_until_raised(
    daemon, tmp_path: Path
):
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        flatd = daemon(
            quiet=0.5,
            min_frames=3,
            env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "1000000"},
            prefix=_limited(tmp_path, "max_inotify_watches", 2),
        ).start()
        wait_for(lambda: sock.times_of("WATCHDOG=1"), what="healthy pings")
        (flatd.incoming / "night1").mkdir()  # the second watch: within the limit
        wait_for(lambda: str(flatd.incoming / "night1") in watched(flatd), what="night1")
        (flatd.incoming / "night2").mkdir()  # the third: ENOSPC
        [failed] = flatd.wait_event("watch_failed")
        assert failed["directory"] == str(flatd.incoming / "night2")
        assert "fs.inotify.max_user_watches" in failed["reason"]
        assert "polling = true" in failed["reason"]
        failed_at = time.monotonic()
        status = wait_for(lambda: (s := flatd.status())["errors"] and s, what="status error")
        assert "max_user_watches" in status["errors"][0]["reason"]
        # no WATCHDOG=1 from the next health check on (one may have been on its way)
        wait_for(lambda: time.monotonic() - failed_at > 2.5, timeout=5, what="2.5 s")
        assert not [t for t in sock.times_of("WATCHDOG=1") if t > failed_at + 0.6]

        # the administrator raises the limit: watched at the next check, pings resume,
        # and what landed meanwhile is read
        write_frames(flatd.incoming / "night2", flat_sequence(3, seed=40), range(3))
        subprocess.run(
            [
                "nsenter",
                "-U",
                "-t",
                str(flatd.proc.pid),
                "sh",
                "-c",
                "echo 100 > /proc/sys/user/max_inotify_watches",
            ],
            check=True,
        )
        flatd.wait_event("watch_recovered", timeout=10)
        raised = time.monotonic()
        wait_for(lambda: [t for t in sock.times_of("WATCHDOG=1") if t > raised], what="pings")
        flatd.wait_event("master_written", timeout=20)
        flatd.wait_event("watch_problem_resolved", timeout=10)
        assert flatd.stop() == 0
    finally:
        sock.close()


def test_no_inotify_instance_left_is_reported_and_unhealthy(daemon, tmp_path: Path):
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        flatd = daemon(
            env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "1000000"},
            prefix=_limited(tmp_path, "max_inotify_instances", 0),
        ).start()
        [problem] = flatd.wait_event("watch_problem")
        assert "max_user_instances" in problem["reason"] and "polling = true" in problem["reason"]
        ready = wait_for(lambda: sock.times_of("READY=1"), what="READY=1")[0]
        wait_for(lambda: time.monotonic() - ready > 2.0, timeout=5, what="2 s of health checks")
        assert sock.times_of("WATCHDOG=1") == []
        assert "max_user_instances" in flatd.status()["errors"][0]["reason"]
        assert flatd.stop() == 0
    finally:
        sock.close()


def test_pings_keep_their_interval_through_a_burst_of_new_directories(daemon, tmp_path: Path):
    """WatchdogSec=2 s: systemd would kill a daemon whose pings are 2 s apart."""
    seq = flat_sequence(1, seed=50, shape=(16, 16))
    content = flat_bytes(seq.frames[0], seq.headers[0])
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        flatd = daemon(
            quiet=30.0,
            min_frames=1000,
            env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "2000000"},
        ).start()
        started = time.monotonic()
        for d in range(40):
            directory = flatd.incoming / f"burst_{d:02d}"
            directory.mkdir()
            for i in range(50):
                (directory / f"r_{i:03d}.fits").write_bytes(numbered(content, 50 * d + i))
        last_write = time.monotonic()
        wait_for(lambda: flatd.status()["index"]["flats"] == 2000, timeout=60, what="2000 frames")
        caught_up = time.monotonic() - last_write
        now = time.monotonic()  # the gap up to now counts too (no ping yet is a gap)
        pings = [started, *(t for t in sock.times_of("WATCHDOG=1") if t > started), now]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        print(
            f"2000 files in 40 new directories: indexed {caught_up:.1f} s after the last "
            f"write; longest gap between pings {max(gaps):.2f} s"
        )
        assert max(gaps) < 2.0, gaps
        assert max(indexed(flatd).values()) == 1
        assert flatd.stop() == 0
    finally:
        sock.close()
