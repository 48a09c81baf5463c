"""End-to-end: the real `flatd run` in a subprocess watching tmp_path directories."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from flatd.outputs.masters import read_master_inputs
from tests.daemon import (
    NotifySocket,
    flat_sequence,
    wait_for,
    write_atomically,
    write_frames,
    write_slowly_in_place,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def masters_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("flat_*.fits"))


def test_a_settled_sequence_becomes_a_master_with_status_and_log(daemon):
    flatd = daemon(quiet=1.0).start()
    seq = flat_sequence(5)
    for i, (data, header) in enumerate(zip(seq.frames, seq.headers, strict=True)):
        write_atomically(flatd.incoming / f"r_{i:03d}.fits", data, header)
    last_landed = time.time()
    event = flatd.wait_event("master_written")[0]
    written = time.time()

    [master] = masters_in(flatd.masters)
    assert master.name == "flat_r_SIMCAM_1_1_20261123T173000.fits"
    # latency: quiet period + combination + 2 s
    print(f"latency: {written - last_landed:.2f} s (quiet 1.0 s, combine {event['duration_s']} s)")
    assert written - last_landed <= 1.0 + event["duration_s"] + 2.0
    ccd = CCDData.read(master)
    assert (ccd.data.dtype.kind, ccd.data.dtype.itemsize) == ("f", 4)
    assert abs(np.median(ccd.data) - 1) < 1e-6
    assert len(read_master_inputs(master)) == 5
    assert (flatd.masters / "latest" / "flat_r_SIMCAM_1_1.fits").exists()

    status = wait_for(
        lambda: (s := flatd.status())["groups"] and s["groups"][0]["state"] == "done" and s,
        what="group done",
    )
    assert status["schema"] == 1
    assert status["daemon"]["state"] == "running"
    assert status["daemon"]["pid"] == flatd.proc.pid
    assert status["index"] == {"frames": 5, "flats": 5, "skipped": 0, "rejected": 0}
    assert status["masters"][0]["path"] == str(master) == event["path"]
    assert status["masters"][0]["n_frames"] == 5
    assert status["groups"][0]["latest_master"] == str(master)
    assert flatd.stop() == 0
    final = flatd.status()
    assert final["daemon"]["state"] == "stopped"


def test_restart_redoes_nothing_and_late_frames_recombine_one_master(daemon):
    flatd = daemon(quiet=0.5).start()
    seq = flat_sequence(7, seed=3)
    write_frames(flatd.incoming, seq, range(5))
    flatd.wait_event("master_written")
    [master] = masters_in(flatd.masters)
    first_mtime = master.stat().st_mtime_ns
    assert flatd.stop() == 0

    again = daemon(quiet=0.5).start()
    wait_for(
        lambda: again.status()["groups"] and again.status()["groups"][0]["state"] == "done",
        what="done after restart",
    )
    assert again.named("master_written") == []
    assert master.stat().st_mtime_ns == first_mtime

    write_frames(again.incoming, seq, (5, 6))
    again.wait_event("master_written")
    assert masters_in(again.masters) == [master]
    assert len(read_master_inputs(master)) == 7
    # both late frames were written before the quiet period ended: one re-combination
    time.sleep(1.5)
    assert len(again.named("master_written")) == 1
    assert again.stop() == 0


def test_frames_written_slowly_in_place_or_renamed_are_indexed_once(daemon):
    flatd = daemon(quiet=1.0).start()
    seq = flat_sequence(4, seed=5, shape=(256, 256))
    write_slowly_in_place(
        flatd.incoming / "r_000.fits", seq.frames[0], seq.headers[0], chunks=3, pause=1.2
    )
    write_slowly_in_place(
        flatd.incoming / "r_001.fits", seq.frames[1], seq.headers[1], chunks=5, pause=0.3
    )
    write_atomically(flatd.incoming / "r_002.fits", seq.frames[2], seq.headers[2])
    rsync_temp = flatd.incoming / ".r_003.fits.a1B2c3"
    fits.PrimaryHDU(seq.frames[3], seq.headers[3]).writeto(rsync_temp)
    os.replace(rsync_temp, flatd.incoming / "r_003.fits")
    flatd.wait_event("master_written")
    indexed = Counter(Path(e["path"]).name for e in flatd.named("frame_indexed"))
    assert indexed == {f"r_{i:03d}.fits": 1 for i in range(4)}
    assert flatd.status()["errors"] == []
    assert not flatd.named("frame_rejected")
    assert flatd.stop() == 0


def test_bad_files_are_named_and_the_good_frames_still_combine(daemon):
    flatd = daemon(quiet=1.0).start()
    (flatd.incoming / "junk.fits").write_bytes(os.urandom(5000))
    seq = flat_sequence(4, seed=7)
    write_frames(flatd.incoming, seq, range(4))
    bias = seq.headers[0].copy()
    bias["IMAGETYP"] = "Bias Frame"
    write_atomically(flatd.incoming / "bias.fits", seq.frames[0], bias)
    flatd.wait_event("master_written")
    status = wait_for(
        lambda: (s := flatd.status())["index"]["frames"] == 6 and s, what="six files indexed"
    )
    assert status["index"] == {"frames": 6, "flats": 4, "skipped": 1, "rejected": 1}
    [error] = status["errors"]
    assert error["path"].endswith("junk.fits") and "not a FITS file" in error["reason"]
    assert flatd.named("frame_rejected")[0]["path"].endswith("junk.fits")
    [skipped] = wait_for(lambda: flatd.status()["skipped"], what="the bias in status")
    assert skipped["path"].endswith("bias.fits")
    assert skipped["reason"] == "IMAGETYP = 'Bias Frame' is not a flat"
    assert flatd.stop() == 0


def test_files_that_landed_while_down_are_picked_up(daemon, tmp_path: Path):
    seq = flat_sequence(3, seed=11)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_frames(incoming, seq, range(3))
    flatd = daemon(quiet=0.5).start()
    flatd.wait_event("master_written")
    assert len(masters_in(flatd.masters)) == 1
    assert flatd.stop() == 0


def test_polling_observer_for_network_mounts(daemon):
    flatd = daemon(quiet=0.5, watch="polling = true\npoll_interval_seconds = 0.2").start()
    assert flatd.named("watching")[0]["observer"] == "polling"
    seq = flat_sequence(3, seed=13)
    for i in range(3):
        write_slowly_in_place(
            flatd.incoming / f"r_{i:03d}.fits", seq.frames[i], seq.headers[i], chunks=2, pause=0.3
        )
    flatd.wait_event("master_written")
    assert flatd.status()["watch"]["observer"] == "polling"
    assert Counter(Path(e["path"]).name for e in flatd.named("frame_indexed")) == {
        f"r_{i:03d}.fits": 1 for i in range(3)
    }
    assert flatd.stop() == 0


def test_systemd_notifications(daemon, tmp_path: Path):
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        flatd = daemon(env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "400000"})
        flatd.start()
        wait_for(lambda: any(m.startswith("READY=1") for m in sock.messages), what="READY=1")
        wait_for(lambda: "WATCHDOG=1" in sock.messages, what="WATCHDOG=1")
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in sock.messages)
        assert flatd.stop() == 0
        wait_for(lambda: "STOPPING=1" in sock.messages, what="STOPPING=1")
    finally:
        sock.close()


def test_sigterm_exits_cleanly(daemon):
    flatd = daemon().start()  # (SIGHUP reloads: tests/faults/test_signals.py)
    assert flatd.stop(timeout=10) == 0
    assert flatd.status()["daemon"]["state"] == "stopped"
    assert flatd.named("stopped")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_daemon_uses_no_measurable_cpu(daemon):
    flatd = daemon(quiet=0.5).start()
    seq = flat_sequence(3, seed=21)
    write_frames(flatd.incoming, seq, range(3))
    flatd.wait_event("master_written")
    wait_for(lambda: flatd.status()["groups"][0]["state"] == "done", what="group done")
    before, started = cpu_seconds(flatd.proc.pid), time.monotonic()
    # idle: only the health tick and the status heartbeat may run
    wait_for(lambda: time.monotonic() - started >= 4.0, timeout=10, what="4 s of idling")
    used = cpu_seconds(flatd.proc.pid) - before
    print(f"idle CPU: {used:.3f} s in 4 s")
    assert used <= 0.08, f"idle daemon used {used:.2f} s of CPU in 4 s"
    assert flatd.stop() == 0
