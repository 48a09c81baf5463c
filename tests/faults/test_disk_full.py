"""Case 6: a master cannot be written (file size limit = EFBIG; a full tmpfs = ENOSPC):
the error is logged and in the status, the previous master is untouched, the daemon keeps
running and retries (first retry after $FLATD_RETRY_SECONDS) until the write succeeds."""

from __future__ import annotations

import contextlib
import hashlib
import resource
import subprocess
from pathlib import Path

import pytest

from flatd.lock import is_lock_file
from flatd.masters import read_master_inputs
from tests.daemon import flat_sequence, wait_for, write_frames
from tests.faults.conftest import masters_in

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


def assert_failed_then_recovered(
    flatd, master: Path, before: str, latest_before: str, words: str, recover
) -> None:
    failed = flatd.wait_event("combine_failed", timeout=30)[0]
    assert words in failed["reason"]
    retry = flatd.wait_event("combine_retry_scheduled")[0]
    assert retry["retry_seconds"] == 1.0
    status = wait_for(lambda: (s := flatd.status())["errors"] and s, what="error in status")
    assert status["errors"][0]["path"] == str(master)
    assert words in status["errors"][0]["reason"]
    assert status["groups"][0]["state"] in ("waiting", "pending", "combining")
    # the previous master and latest/ are intact, nothing half-written is visible
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
    # it keeps retrying, with a growing delay, while the disk stays full
    flatd.wait_event("combine_failed", count=2, timeout=30)
    assert flatd.proc.poll() is None
    recover()
    flatd.wait_event("master_written", count=2, timeout=30)
    assert len(read_master_inputs(master)) == 5
    assert digest(latest) != latest_before
    assert flatd.stop() == 0


def test_a_file_size_limit_fails_the_write_and_the_daemon_retries(daemon):
    flatd = daemon(quiet=0.5, min_frames=3, env=RETRY).start()
    seq = flat_sequence(5, seed=61, shape=(256, 256))
    master, before, latest_before = first_master_then_late_frames(flatd, seq)
    # "disk full" for the daemon alone: no file of it may grow beyond 200 kB (EFBIG)
    limit = 200_000
    resource.prlimit(flatd.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    write_frames(flatd.incoming, seq, (3, 4))

    def unlimited() -> None:
        resource.prlimit(
            flatd.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )

    assert_failed_then_recovered(flatd, master, before, latest_before, "requested and", unlimited)


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


def test_a_full_output_filesystem_fails_the_write_and_the_daemon_retries(daemon, tiny_tmpfs):
    flatd = daemon(quiet=0.5, min_frames=3, env=RETRY).start()
    seq = flat_sequence(5, seed=62, shape=(256, 256))
    master, before, latest_before = first_master_then_late_frames(flatd, seq)
    filler = tiny_tmpfs / "filler.bin"  # fill the disk, leaving less than a master
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    filler.write_bytes(b"\0" * (filler.stat().st_size - 300_000))
    write_frames(flatd.incoming, seq, (3, 4))

    assert_failed_then_recovered(
        flatd, master, before, latest_before, "Not enough space on disk", filler.unlink
    )
