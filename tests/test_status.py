"""StatusBoard writes, coalescing, heartbeat, bounded history; reading and rendering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flatd.frames import Skip
from flatd.status import (
    StatusBoard,
    daemon_running,
    read_status,
    render_status,
    status_command,
    utc_iso,
    why_not_running,
)

GROUPS = [
    {
        "group": {"FILTER": "r", "INSTRUME": "SIMCAM", "XBINNING": 1, "YBINNING": 1},
        "name": "r_SIMCAM_1_1",
        "frames": 7,
        "state": "waiting",
        "stable_at": None,  # set to "in 42 s" by _snapshot()
        "last_frame_at": utc_iso(),
        "latest_master": None,
    },
    {
        "group": {"FILTER": "gp", "INSTRUME": "LFC", "XBINNING": 1, "YBINNING": 1},
        "frames": 10,
        "state": "done",
        "stable_at": None,
        "last_frame_at": utc_iso(),
        "latest_master": "masters/flat_gp_LFC_1_1_20261123T173000.fits",
    },
    {
        "group": {"FILTER": "Ha", "INSTRUME": "SIMCAM", "XBINNING": 2, "YBINNING": 2},
        "name": "Ha_SIMCAM_2_2",
        "frames": 2,
        "state": "too_few",
        "stable_at": None,
        "last_frame_at": None,
        "latest_master": None,
        "reason": "2 frames, need 5",
    },
]
COUNTS = {"frames": 21, "flats": 19, "skipped": 1, "rejected": 1}


def _snapshot() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    groups = [dict(g) for g in GROUPS]
    groups[0]["stable_at"] = utc_iso(datetime.now(UTC) + timedelta(seconds=42.5))
    return dict(COUNTS), groups


def _board(path: Path, **kwargs: Any) -> StatusBoard:
    return StatusBoard(
        path, directories=["/data/incoming"], observer="inotify", snapshot=_snapshot, **kwargs
    )


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_writes_a_schema_1_document(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    board = _board(path)
    board.set_state("running")
    raw = path.read_text()
    assert raw.endswith("}\n") and raw.startswith('{\n  "schema": 1')
    doc = json.loads(raw)
    assert doc["schema"] == 1
    assert set(doc) == {
        "schema",
        "daemon",
        "watch",
        "index",
        "groups",
        "masters",
        "errors",
        "skipped",
    }
    daemon = doc["daemon"]
    assert daemon["pid"] == os.getpid() and daemon["state"] == "running"
    assert daemon["version"]
    for key in ("started_at", "updated_at"):
        assert daemon[key].endswith("Z")
        datetime.fromisoformat(daemon[key].replace("Z", "+00:00"))
    assert doc["watch"] == {"directories": ["/data/incoming"], "observer": "inotify"}
    assert doc["index"] == COUNTS
    assert [g["frames"] for g in doc["groups"]] == [7, 10, 2]
    assert doc["masters"] == [] and doc["errors"] == []
    assert read_status(path) == doc


def test_burst_of_changes_is_coalesced(tmp_path: Path) -> None:
    documents: list[dict] = []
    board = _board(tmp_path / "status.json", on_write=documents.append, heartbeat_seconds=60)
    board.start()
    try:
        _wait_for(lambda: len(documents) >= 1)  # the first write on start
        started = time.monotonic()
        for _ in range(5000):
            board.mark_changed()
        board.put_master({"path": "masters/flat_a.fits", "n_frames": 9})
        _wait_for(lambda: bool(documents[-1]["masters"]))
        elapsed = time.monotonic() - started
        writes = len(documents) - 1
        assert 1 <= writes <= 2 + elapsed * 4.5
    finally:
        board.close("stopped")
    assert documents[-1]["daemon"]["state"] == "stopped"


def test_heartbeat_refreshes_updated_at(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    documents: list[dict] = []
    board = _board(path, on_write=documents.append, heartbeat_seconds=0.2)
    board.set_state("running")
    first = read_status(path)["daemon"]["updated_at"]
    board.start()
    try:
        _wait_for(lambda: len(documents) >= 4)
        assert read_status(path)["daemon"]["updated_at"] > first
    finally:
        board.close("stopped")


def test_close_writes_final_state(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    board = _board(path)
    board.set_state("running")
    board.start()
    board.set_state("stopping")
    assert read_status(path)["daemon"]["state"] == "stopping"
    board.close("stopped")
    assert read_status(path)["daemon"]["state"] == "stopped"
    assert not daemon_running(read_status(path))


def test_errors_bounded_newest_first_and_deduplicated(tmp_path: Path) -> None:
    board = _board(tmp_path / "status.json", history=5)
    for i in range(12):
        board.add_error(f"/data/f{i}.fits", "too faint")
    board.add_error("/data/f11.fits", "too faint")
    board.add_error("/data/f11.fits", "too faint")
    errors = board.document()["errors"]
    assert [e["path"] for e in errors] == [f"/data/f{i}.fits" for i in (11, 10, 9, 8, 7)]
    assert errors[0]["count"] == 3 and errors[1]["count"] == 1
    assert all(e["reason"] == "too faint" and e["at"].endswith("Z") for e in errors)
    for i in range(7):
        board.put_master({"path": f"m{i}.fits", "n_frames": i})
    masters = board.document()["masters"]
    assert [m["path"] for m in masters] == [f"m{i}.fits" for i in (6, 5, 4, 3, 2)]
    assert all(m["created_at"].endswith("Z") for m in masters)


def test_file_is_always_valid_json_while_hammered(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    board = _board(path, min_interval=0.0)
    board.set_state("running")
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                json.loads(path.read_bytes())
                reads += 1
            except (ValueError, OSError) as exc:
                problems.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    deadline = time.monotonic() + 1.0
    i = 0
    while time.monotonic() < deadline:
        board.add_error(f"/data/f{i}.fits", "x" * (i % 300))
        board.write_now()
        i += 1
    stop.set()
    thread.join()
    assert problems == []
    assert reads > 0 and board.writes > 10


def test_on_write_exception_is_not_raised(tmp_path: Path) -> None:
    def broken(document: dict) -> None:
        raise RuntimeError("listener broke")

    board = _board(tmp_path / "status.json", on_write=broken)
    assert board.write_now() is True


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_directory_does_not_raise(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        board = _board(locked / "status.json", heartbeat_seconds=0.1)
        board.set_state("running")
        assert board.write_now() is False
        board.start()
        board.mark_changed()
        board.close("stopped")
        assert not (locked / "status.json").exists()
    finally:
        locked.chmod(0o755)


def test_impossible_path_does_not_raise(tmp_path: Path) -> None:
    """Runs as root too: the status file's directory cannot be created under a file."""
    (tmp_path / "plain").write_text("not a directory")
    board = _board(tmp_path / "plain" / "status.json", heartbeat_seconds=0.1)
    board.set_state("running")
    assert board.write_now() is False
    board.start()
    board.mark_changed()
    board.close("stopped")
    assert board.writes == 0


def test_snapshot_failure_keeps_last_known(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky() -> tuple[dict, list[dict]]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("index busy")
        return _snapshot()

    board = StatusBoard(tmp_path / "s.json", directories=[], observer="polling", snapshot=flaky)
    assert board.write_now() and board.write_now()
    assert read_status(tmp_path / "s.json")["index"] == COUNTS


def test_read_status_missing_or_broken(tmp_path: Path) -> None:
    assert read_status(tmp_path / "nope.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_status(tmp_path / "bad.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_status(tmp_path / "list.json") is None


def _document(tmp_path: Path, state: str, pid: int | None = None) -> dict:
    board = _board(tmp_path / "status.json")
    board.put_master(
        {
            "path": "masters/flat_gp_LFC_1_1_20261123T173000.fits",
            "n_frames": 10,
            "group": GROUPS[1]["group"],
        }
    )
    board.add_error("/data/bad.fits", "saturated: 3% of pixels")
    doc = board.document()
    doc["daemon"]["state"] = state
    if pid is not None:
        doc["daemon"]["pid"] = pid
    return doc


def test_daemon_running(tmp_path: Path) -> None:
    doc = _document(tmp_path, "running")
    assert daemon_running(doc)
    assert daemon_running({**doc, "daemon": {**doc["daemon"], "state": "stopping"}})
    assert not daemon_running({**doc, "daemon": {**doc["daemon"], "state": "stopped"}})
    stale = utc_iso(datetime.now(UTC) - timedelta(seconds=120))
    assert not daemon_running({**doc, "daemon": {**doc["daemon"], "updated_at": stale}})
    assert not daemon_running({**doc, "daemon": {**doc["daemon"], "pid": 2**22 + 12345}})
    assert not daemon_running({})
    assert daemon_running({**doc, "daemon": {**doc["daemon"], "state": "starting"}})


def test_why_not_running_names_a_gone_or_reused_pid(tmp_path: Path) -> None:
    doc = _document(tmp_path, "running")
    assert why_not_running(doc) == ""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # what `kill -9` leaves: a status file naming a pid that is gone
    gone = why_not_running({**doc, "daemon": {**doc["daemon"], "pid": child.pid}})
    assert gone.startswith(f"pid {child.pid} is gone; last update ") and gone.endswith(" ago")
    # the pid now belongs to a process that started after the daemon did (here: this one,
    # under a daemon that claims to have started a day earlier and died)
    long_ago = utc_iso(datetime.now(UTC) - timedelta(days=1))
    reused = {**doc, "daemon": {**doc["daemon"], "pid": os.getpid(), "started_at": long_ago}}
    assert why_not_running(reused).startswith(f"pid {os.getpid()} is now another program")
    assert why_not_running({**doc, "daemon": {**doc["daemon"], "state": "stopped"}}) == (
        "state stopped"
    )


def test_render_status_plain(tmp_path: Path) -> None:
    text = render_status(_document(tmp_path, "running"), color=False)
    assert "\033[" not in text
    assert "running" in text and f"pid {os.getpid()}" in text
    for name in ("r_SIMCAM_1_1", "gp_LFC_1_1", "Ha_SIMCAM_2_2"):  # gp: no "name", joined
        assert name in text
    for state in ("waiting", "done", "too_few"):
        assert state in text
    assert "combines in 42 s" in text or "combines in 41 s" in text
    assert "flat_gp_LFC_1_1_20261123T173000.fits" in text
    assert "saturated: 3% of pixels" in text


def test_a_mosaic_master_says_its_qa_extension_by_extension(tmp_path: Path) -> None:
    doc = _document(tmp_path, "running")
    [master] = doc["masters"]
    amps = [{"name": f"AMP{i}", "flagged": i == 3} for i in range(1, 5)]
    master["qa"] = {"flagged": True, "extensions": amps}
    assert "QA flagged in AMP3" in render_status(doc, color=False)
    master["qa"] = {"flagged": False, "extensions": [{**a, "flagged": False} for a in amps]}
    text = render_status(doc, color=False)
    assert "QA ok in all 4 extensions" in text and "QA flagged" not in text


def test_render_status_color(tmp_path: Path) -> None:
    text = render_status(_document(tmp_path, "running"), color=True)
    assert "\033[32mrunning" in text and "\033[31mtoo_few" in text


def test_status_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "status.json"
    assert status_command(path, as_json=False, color=False) == 3
    assert f"no status file at {path}" in capsys.readouterr().out

    path.write_text(json.dumps(_document(tmp_path, "stopped")))
    assert status_command(path, as_json=False, color=False) == 3
    out = capsys.readouterr().out
    assert out.startswith("flatd is not running (status file") and "r_SIMCAM_1_1" in out

    path.write_text(json.dumps(_document(tmp_path, "running", pid=os.getpid())))
    assert status_command(path, as_json=False, color=False) == 0
    assert "r_SIMCAM_1_1" in capsys.readouterr().out
    assert status_command(path, as_json=True, color=False) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == 1


VERIFY_REPORT = (
    "VerifyError: \nVerification reported errors:\nHDU 0:\n    Card 6:\n        Card 'RA' is not "
    "FITS standard (invalid value string: '15:58:11.37').\nNote: astropy.io.fits uses "
    "zero-based indexing.\n"
)
ONE_LINE = "VerifyError: Card 'RA' is not FITS standard (invalid value string: '15:58:11.37')."


def test_reasons_are_one_line_in_the_document_and_the_summary(tmp_path: Path) -> None:
    board = _board(tmp_path / "status.json")
    board.add_error("/data/masters/flat_r.fits", VERIFY_REPORT)
    board.add_skip(Skip(Path("/data/x.fits"), "skipped", "first line\nsecond line"))
    document = board.document()
    assert document["errors"][0]["reason"] == ONE_LINE
    assert document["skipped"][0]["reason"] == "first line; second line"
    failed = {**GROUPS[0], "state": "failed", "reason": VERIFY_REPORT}
    document["groups"] = [failed]
    text = render_status(document, color=True)
    group_line = next(line for line in text.splitlines() if "r_SIMCAM_1_1" in line)
    assert "\033[31mfailed" in group_line and ONE_LINE in group_line
    assert "combines" not in group_line  # a failed group is not scheduled
    assert text.count("Note: astropy") == 0


# -- the board: masters once each, skips, a failing disk ---------------------------------------
def test_each_master_file_is_listed_once_as_it_is_on_disk(tmp_path: Path) -> None:
    board = _board(tmp_path / "status.json")
    board.put_master({"path": "/m/flat_r_20261123T173000.fits", "n_frames": 3})
    board.put_master({"path": "/m/flat_g_20261123T173000.fits", "n_frames": 5})
    board.put_master({"path": "/m/flat_r_20261123T173000.fits", "n_frames": 5})  # made again
    board.put_master({"path": "/m/flat_r_20261120T173000.fits", "n_frames": 4}, newest=False)
    masters = board.document()["masters"]
    assert [(Path(m["path"]).name, m["n_frames"]) for m in masters] == [
        ("flat_r_20261123T173000.fits", 5),
        ("flat_g_20261123T173000.fits", 5),
        ("flat_r_20261120T173000.fits", 4),  # found on disk: after those written
    ]
    board.drop_master("/m/flat_g_20261123T173000.fits")  # superseded, or deleted by hand
    assert [Path(m["path"]).name for m in board.document()["masters"]] == [
        "flat_r_20261123T173000.fits",
        "flat_r_20261120T173000.fits",
    ]
    text = render_status(board.document(), color=False)
    assert text.count("flat_r_20261123T173000.fits") == 1


def test_refused_files_are_errors_and_skipped_ones_are_listed(tmp_path: Path) -> None:
    board = _board(tmp_path / "status.json")
    board.add_skip(Skip(Path("/d/broken.fits"), "rejected", "truncated: 100 bytes expected"))
    board.add_skip(Skip(Path("/d/bias.fits"), "skipped", "IMAGETYP = 'Bias' is not a flat"))
    document = board.document()
    assert [(e["path"], e["reason"]) for e in document["errors"]] == [
        ("/d/broken.fits", "truncated: 100 bytes expected")
    ]
    assert [(s["path"], s["reason"]) for s in document["skipped"]] == [
        ("/d/bias.fits", "IMAGETYP = 'Bias' is not a flat")
    ]


FULL_DISK_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from flatd.logs import configure_logging
configure_logging("json", "info")
from flatd.status import StatusBoard
target = Path(sys.argv[1])
board = StatusBoard(target / "status.json", directories=[], observer="inotify",
                    snapshot=lambda: ({}, []), heartbeat_seconds=0.1)
i = 0
while True:  # use up the filesystem's inodes: every new temporary fails (ENOSPC)
    try:
        (target / f"f{i}").touch()
    except OSError:
        break
    i += 1
board.start()
for _ in range(30):
    board.mark_changed()
    time.sleep(0.1)
board.close()
"""


@pytest.mark.slow
def test_a_status_file_that_cannot_be_written_is_logged_once(tmp_path: Path) -> None:
    """A real filesystem out of inodes (a tmpfs with nr_inodes in a mount namespace of its
    own): each failed write names another temporary file, and is still one failure."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK_SCRIPT)
    root = str(Path(__file__).resolve().parents[1])
    shell = 'mount -t tmpfs -o size=1m,nr_inodes=8 tmpfs "$1" && exec "$2" "$3" "$1" "$4"'
    run = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", shell, "sh", str(mount), sys.executable, str(script), root],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if run.returncode != 0 and "mount" in run.stderr:
        pytest.skip(f"no mount namespace here: {run.stderr.strip()}")
    lines = (run.stdout + run.stderr).splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    failed = [e for e in events if e["event"] == "status_write_failed"]
    assert len(failed) == 1, run.stdout + run.stderr
    assert failed[0]["reason"] == "OSError: [Errno 28] No space left on device"
