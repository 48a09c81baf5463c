"""One daemon per output and status file: the flock lock files, whose PID they name, stale
locks of dead processes, whose PID a temporary carries and which temporaries are stale."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flatd.atomic import (
    TEMP_PREFIX,
    TEMP_SUFFIX,
    atomic_write_bytes,
    remove_stale_temporaries,
    remove_stale_temporaries_of,
    temporary_owner,
)
from flatd.daemon.lock import (
    AlreadyRunning,
    InstanceLock,
    is_lock_file,
    process_start,
    process_state,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_lock_on_the_same_files_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = InstanceLock.for_daemon(tmp_path / "masters", tmp_path / "status.json")
    first.acquire()
    lock_files = sorted(p.name for p in tmp_path.rglob("*") if is_lock_file(p))
    assert lock_files == [".flatd.lock", ".status.json.lock"]
    assert (tmp_path / "masters" / ".flatd.lock").read_text().strip() == str(os.getpid())

    # another daemon with its own output but the same status file
    second = InstanceLock.for_daemon(tmp_path / "other", tmp_path / "status.json")
    with pytest.raises(AlreadyRunning) as refused:
        second.acquire()
    assert refused.value.pid == os.getpid()
    assert f"pid {os.getpid()}" in str(refused.value) and "status file" in str(refused.value)
    assert not second.held  # all or nothing: the output lock it took first was given back
    third = InstanceLock.for_daemon(tmp_path / "other", tmp_path / "status2.json")
    third.acquire()  # ... so a daemon with nothing in common still starts
    third.release()

    first.release()
    second.acquire()  # released: free again
    second.release()


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    lock_file = tmp_path / "masters" / ".flatd.lock"
    lock_file.parent.mkdir()
    lock_file.write_text(f"{_dead_pid()}\n")  # what a kill -9 leaves: the file, no flock
    lock = InstanceLock.for_daemon(tmp_path / "masters", tmp_path / "status.json")
    lock.acquire()
    assert lock_file.read_text().strip() == str(os.getpid())
    lock.release()


def test_a_lock_held_by_another_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from flatd.daemon.lock import InstanceLock\n"
            "InstanceLock.for_daemon(Path(sys.argv[1]), Path(sys.argv[2])).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            str(tmp_path / "masters"),
            str(tmp_path / "status.json"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyRunning) as refused:
            InstanceLock.for_daemon(tmp_path / "masters", tmp_path / "s2.json").acquire()
        assert refused.value.pid == holder.pid
        holder.kill()
        holder.wait(10)
        InstanceLock.for_daemon(tmp_path / "masters", tmp_path / "s2.json").acquire()
    finally:
        holder.kill()


def test_process_state_gone_alive_or_reused() -> None:
    me = os.getpid()
    began = process_start(me)
    assert began is not None and began <= datetime.now(UTC)
    assert process_state(me) == "alive"
    assert process_state(me, started_at=datetime.now(UTC)) == "alive"  # started before that
    # a status document written by a process that started long before this one: the PID
    # now belongs to another program
    assert process_state(me, started_at=began - timedelta(hours=1)) == "reused"
    assert process_state(_dead_pid()) == "gone"


def test_temporaries_carry_their_writers_pid(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(fh) -> None:
        seen.extend(p.name for p in tmp_path.iterdir())
        fh.write(b"x")

    from flatd.atomic import atomic_write

    atomic_write(tmp_path / "flat_r.fits", write)
    [temporary] = seen
    assert temporary.startswith(TEMP_PREFIX + "flat_r.fits.pid") and temporary.endswith(TEMP_SUFFIX)
    assert temporary_owner(tmp_path / temporary) == os.getpid()
    assert temporary_owner(tmp_path / f"{TEMP_PREFIX}flat_r.fits.4321{TEMP_SUFFIX}") == 4321
    assert temporary_owner(tmp_path / f"{TEMP_PREFIX}status.json.k9x2ab{TEMP_SUFFIX}") is None


def test_start_up_removes_only_temporaries_whose_writer_is_gone(tmp_path: Path) -> None:
    output = tmp_path / "masters"
    (output / "latest").mkdir(parents=True)
    dead, alive = _dead_pid(), os.getpid()
    crashed = output / f"{TEMP_PREFIX}flat_r.fits.pid{dead}.a1b2c3{TEMP_SUFFIX}"
    legacy = output / "latest" / f"{TEMP_PREFIX}flat_g.fits.x7y8z9{TEMP_SUFFIX}"
    busy = output / f"{TEMP_PREFIX}flat_i.fits.pid{alive}.q1w2e3{TEMP_SUFFIX}"  # a live writer
    linking = output / "latest" / f"{TEMP_PREFIX}flat_i.fits.{alive}{TEMP_SUFFIX}"
    for path in (crashed, legacy, busy, linking):
        path.write_bytes(b"partial")
    removed = remove_stale_temporaries(output)
    assert sorted(removed) == sorted([crashed, legacy])
    assert busy.exists() and linking.exists()

    status = tmp_path / "status.json"
    atomic_write_bytes(status, b"{}")
    own = tmp_path / f"{TEMP_PREFIX}status.json.pid{dead}.zz{TEMP_SUFFIX}"
    other = tmp_path / f"{TEMP_PREFIX}other.json.pid{dead}.zz{TEMP_SUFFIX}"
    own.write_bytes(b"{")
    other.write_bytes(b"{")
    assert remove_stale_temporaries_of(status) == [own]
    assert other.exists()
