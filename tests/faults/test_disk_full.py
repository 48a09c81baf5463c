"""Case 6: a master cannot be written (file size limit = EFBIG; a full tmpfs = ENOSPC):
the error is logged and in the status, the previous master is untouched, the daemon keeps
running and retries once (after $FLATD_RETRY_SECONDS). A disk freed before the retry
recovers on it; a disk still full makes the group `failed`, reported once, until its frames
change (here: a late frame once the disk has room again)."""

from __future__ import annotations

import contextlib
import hashlib
import resource
import subprocess
from pathlib import Path

import pytest

from flatd.daemon.lock import is_lock_file
from flatd.outputs.masters import read_master_inputs
from tests.daemon import flat_sequence, wait_for, write_frames
from tests.faults.helpers import masters_in

pytestmark = pytest.mark.timeout(90)

RETRY = {"FLATD_RETRY_SECONDS": "1"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def first_master_then_late_frames(flatd, seq) -> tuple[Path, str, str]:
    write_frames(flatd.incoming, seq, range(3))
    flatd.wait_event("master_written")
    [master] = masters_in(flatd.masters)
    latest = flatd.masters / "latest" / master.name.replace("_20261123T173000", "")
    return master, digest(master), digest(latest)


def assert_intact(flatd, master: Path, before: str, latest_before: str) -> None:
    """The previous master and latest/ are intact, nothing half-written is visible."""
    assert digest(master) == before
    latest = flatd.masters / "latest" / master.name.replace("_20261123T173000", "")
    assert digest(latest) == latest_before
    assert masters_in(flatd.masters) == [master]
    assert [
        p
        for p in flatd.masters.rglob("*")
        if p.is_file()
        and p not in (master, latest, flatd.masters / "filler.bin")
        and not is_lock_file(p)
    ] == []


def assert_failed_then_given_up(flatd, master: Path, before: str, latest_before: str, words: str):
    retry = flatd.wait_event("combine_retry_scheduled", timeout=30)[0]
    assert words in retry["reason"] and retry["retry_seconds"] == 1.0
    assert retry["level"] == "warning"
    status = wait_for(lambda: (s := flatd.status())["errors"] and s, what="error in status")
    assert status["errors"][0]["path"] == str(master)
    assert words in status["errors"][0]["reason"]
    # the retry fails the same way: given up, reported once, one line
    failed = flatd.wait_event("combine_failed", timeout=30)[0]
    assert words in failed["reason"] and failed["level"] == "warning" and failed["attempts"] == 2
    group = wait_for(
        lambda: (g := flatd.status()["groups"][0])["state"] == "failed" and g, what="failed"
    )
    assert group["stable_at"] is None and words in group["reason"] and "\n" not in group["reason"]
    assert len(flatd.named("combine_started")) == 3  # the first master, the try, the retry
    assert_intact(flatd, master, before, latest_before)
    assert flatd.proc.poll() is None


def test_a_file_size_limit_fails_the_write_until_the_frames_change(daemon):
    flatd = daemon(quiet=0.5, min_frames=3, env=RETRY).start()
    seq = flat_sequence(6, seed=61, shape=(256, 256))
    master, before, latest_before = first_master_then_late_frames(flatd, seq)
    # "disk full" for the daemon alone: no file of it may grow beyond 200 kB (EFBIG)
    limit = 200_000
    resource.prlimit(flatd.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    write_frames(flatd.incoming, seq, (3, 4))
    assert_failed_then_given_up(flatd, master, before, latest_before, "requested and")

    # room again, and a frame joins the sequence: tried again, with all six frames
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    resource.prlimit(flatd.proc.pid, resource.RLIMIT_FSIZE, unlimited)
    write_frames(flatd.incoming, seq, (5,))
    flatd.wait_event("master_written", count=2, timeout=30)
    assert len(read_master_inputs(master)) == 6
    assert len(flatd.named("combine_failed")) == 1
    assert wait_for(lambda: flatd.status()["groups"][0]["state"] == "done", what="done")
    assert flatd.stop() == 0


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    mount = tmp_path / "masters"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_output_filesystem_freed_before_the_retry_recovers_on_it(daemon, tiny_tmpfs):
    flatd = daemon(quiet=0.5, min_frames=3, env=RETRY).start()
    seq = flat_sequence(5, seed=62, shape=(256, 256))
    master, before, latest_before = first_master_then_late_frames(flatd, seq)
    filler = tiny_tmpfs / "filler.bin"  # fill the disk, leaving less than a master
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    filler.write_bytes(b"\0" * (filler.stat().st_size - 300_000))
    freed: list[bool] = []

    def free_the_disk(event) -> None:  # at once, long before the retry (1 s)
        assert_intact(flatd, master, before, latest_before)
        filler.unlink()
        freed.append(True)

    flatd.on_event("combine_retry_scheduled", free_the_disk)
    write_frames(flatd.incoming, seq, (3, 4))

    retry = flatd.wait_event("combine_retry_scheduled", timeout=30)[0]
    assert "Not enough space on disk" in retry["reason"]
    flatd.wait_event("master_written", count=2, timeout=30)
    assert freed == [True]
    assert len(read_master_inputs(master)) == 5
    assert digest(flatd.masters / "latest" / master.name.replace("_20261123T173000", "")) != (
        latest_before
    )
    assert not flatd.named("combine_failed")
    assert flatd.stop() == 0
