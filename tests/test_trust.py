"""End-to-end (the real `flatd run` in a subprocess): one trustworthy master per sequence
(issue 14, items 2 and 3, and its findings).

A master survives the removal of some of its inputs; a late frame dated before the first
leaves one master on disk; a link, a hard link and a copy of a frame are one input; a file
touched or rewritten with the same bytes rewrites nothing; latest/ stays on the newest
night when an older night is imported; a change QA held back is confirmed by the next
sequence; `flatd promote` and `flatd remake` work with the daemon running; a master deleted
by hand is noticed while it runs."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.inputs.fingerprint import content_digest
from flatd.outputs.masters import read_master_inputs
from tests.daemon import FlatdProcess, flat_sequence, wait_for, write_frames

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

LATEST = "latest/flat_r_SIMCAM_1_1.fits"


@pytest.fixture
def daemon(daemon):
    """The real daemon (tests/conftest.py), with a short quiet period by default."""
    return lambda **kwargs: daemon(**{"quiet": 0.5, **kwargs})


def masters_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("flat_*.fits"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def group_entry(flatd: FlatdProcess) -> dict:
    [group] = flatd.status()["groups"]
    return group


def settled(flatd: FlatdProcess, **expected) -> dict:
    """The group's status entry once it is done and says what is `expected`."""
    return wait_for(
        lambda: (
            (g := group_entry(flatd))["state"] == "done"
            and all(g.get(k) == v for k, v in expected.items())
            and g
        ),
        what=f"group done with {expected}",
    )


def night(day: int, n: int = 5, seed: int = 0, **options):
    return flat_sequence(n, seed=seed, start=datetime(2026, 11, day, 17, 30), **options)


def night_master(flatd: FlatdProcess, day: int, n: int = 5) -> dict:
    """The `master_written` event of night `day`'s master made of all its `n` frames. (On
    a loaded machine a pause between two writes can outlast the 0.5 s quiet period: a
    master of the first frames is written, then replaced under the same name by this one.
    Counting events would take that one for the next night's.)"""
    path = flatd.masters / f"flat_r_SIMCAM_1_1_202611{day:02d}T173000.fits"
    return flatd.wait_event("master_written", path=str(path), n_frames=n)[-1]


def flatd_command(flatd: FlatdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flatd", *args, "--config", str(flatd.config)],
        capture_output=True,
        text=True,
        cwd=flatd.root,
        timeout=60,
        check=False,
    )


def test_a_master_survives_the_removal_of_some_of_its_inputs(daemon):
    flatd = daemon().start()
    write_frames(flatd.incoming, night(23), range(5))
    [written] = flatd.wait_event("master_written")
    master = Path(written["path"])
    before = digest(master)
    for i in (0, 3):  # an archiving script moves two frames away
        (flatd.incoming / f"r_{i:03d}.fits").unlink()
    flatd.wait_event("frame_removed", count=2)
    group = settled(flatd, gone_count=2)
    assert {Path(g["path"]).name for g in group["gone"]} == {"r_000.fits", "r_003.fits"}
    assert group["latest_master"] == str(master)
    assert len(flatd.named("combine_started")) == 1  # never combined again
    assert digest(master) == before
    assert (flatd.masters / LATEST).samefile(master)
    text = flatd_command(flatd, "status").stdout
    assert "2 input(s) of its masters gone from disk (the masters stay)" in text
    assert flatd.stop() == 0


def test_a_late_frame_dated_before_the_first_leaves_one_master_on_disk(daemon):
    flatd = daemon().start()
    seq = night(23, n=6)
    write_frames(flatd.incoming, seq, range(1, 6))
    [first] = flatd.wait_event("master_written")
    assert Path(first["path"]).name == "flat_r_SIMCAM_1_1_20261123T173030.fits"
    write_frames(flatd.incoming, seq, [0])  # copies arrive out of order
    second = flatd.wait_event("master_written", count=2)[-1]
    new = Path(second["path"])
    assert new.name == "flat_r_SIMCAM_1_1_20261123T173000.fits" and second["n_frames"] == 6
    [superseded] = flatd.wait_event("master_superseded")
    assert superseded["path"] == first["path"] and superseded["by"] == str(new)
    assert masters_in(flatd.masters) == [new.name]
    assert (flatd.masters / LATEST).samefile(new)
    listed = wait_for(
        lambda: [(m["path"], m["n_frames"]) for m in flatd.status()["masters"]] == [(str(new), 6)],
        what="the new master listed, once, and not the old one",
    )
    assert listed
    assert flatd.stop() == 0


def test_a_link_a_hard_link_and_a_copy_of_a_frame_are_one_input(daemon, tmp_path: Path):
    flatd = daemon()
    write_frames(flatd.incoming, night(23), range(3))
    frames = [flatd.incoming / f"r_{i:03d}.fits" for i in range(3)]
    backup = flatd.incoming / "backup"
    backup.mkdir()
    (backup / "r_000.fits").symlink_to(frames[0])
    os.link(frames[1], backup / "r_001.fits")
    shutil.copy2(frames[2], backup / "r_002.fits")  # a backup copy, times kept
    flatd.start()
    [written] = flatd.wait_event("master_written")
    assert written["n_frames"] == 3
    rows = read_master_inputs(Path(written["path"]))
    assert sum(r["USED"] for r in rows) == 3
    assert sorted((r["PATH"], r["REASON"]) for r in rows if not r["USED"]) == sorted(
        (str(backup / f.name), f"duplicate of {f}") for f in frames
    )
    group = settled(flatd)
    assert group["frames"] == 3
    assert {d["path"]: d["duplicate_of"] for d in group["duplicates"]} == {
        str(backup / f.name): str(f) for f in frames
    }
    assert flatd.status()["index"] == {"frames": 6, "flats": 3, "skipped": 0, "rejected": 0}

    # one more copy, while it runs: a duplicate, which makes no master again
    shutil.copy(frames[0], tmp_path / "elsewhere.fits")
    os.replace(tmp_path / "elsewhere.fits", flatd.incoming / "copy_of_r_000.fits")
    late = flatd.wait_event("frame_duplicate", count=4)[-1]  # three found at start
    assert late["path"] == str(flatd.incoming / "copy_of_r_000.fits")
    assert late["duplicate_of"] == str(frames[0])
    settled(flatd)
    assert len(flatd.named("combine_started")) == 1
    scan = flatd_command(flatd, "scan", str(flatd.incoming))
    assert f"{backup / 'r_001.fits'}: duplicate of {frames[1]}" in scan.stdout
    assert flatd.stop() == 0


def test_touching_or_rewriting_the_same_bytes_rewrites_no_master(daemon):
    flatd = daemon().start()
    write_frames(flatd.incoming, night(23), range(4))
    [written] = flatd.wait_event("master_written")
    master = Path(written["path"])
    mtime = master.stat().st_mtime_ns
    same = flatd.incoming / "r_001.fits"
    same.write_bytes(same.read_bytes())  # rewritten in place: new mtime, same content
    flatd.wait_event("frame_indexed", count=5)
    assert flatd.stop() == 0

    for path in flatd.incoming.glob("*.fits"):  # `touch`, while the daemon is down
        later = path.stat().st_mtime + 3600
        os.utime(path, (later, later))
    again = daemon().start()
    settled(again)
    assert len(again.named("frame_indexed")) == 4  # read again (new times) ...
    assert again.named("combine_started") == []  # ... and found to be the same frames
    assert master.stat().st_mtime_ns == mtime
    assert len(flatd.named("combine_started")) == 1
    assert again.stop() == 0


def test_latest_stays_on_the_newest_night_when_an_older_night_is_imported(daemon):
    flatd = daemon().start()
    newest = night(24, seed=2, stars=False)
    write_frames(flatd.incoming, newest, range(5))
    first = night_master(flatd, 24)
    older = flatd.incoming / "import" / "2026-11-20"
    older.mkdir(parents=True)
    write_frames(older, night(20, seed=1, stars=False, true_flat=newest.true_flat), range(5))
    second = night_master(flatd, 20)
    assert Path(second["path"]).name == "flat_r_SIMCAM_1_1_20261120T173000.fits"
    assert second["promoted"] is False  # written and listed as what it is
    assert (flatd.masters / LATEST).samefile(first["path"])
    settled(flatd, latest_master=first["path"])
    listed = {m["path"]: m["promoted"] for m in flatd.status()["masters"]}
    assert listed == {first["path"]: True, second["path"]: False}
    assert flatd.stop() == 0


def donut(flat: np.ndarray, depth: float = 0.1) -> np.ndarray:
    ny, nx = flat.shape
    y, x = np.mgrid[:ny, :nx]
    r = np.hypot(y - ny * 0.3, x - nx * 0.6)
    return flat * np.where((r > 6) & (r < 11), 1 - depth, 1.0)


def test_a_change_is_held_back_then_confirmed_by_the_next_sequence(daemon):
    flatd = daemon().start()
    shape = (128, 128)
    one = night(22, seed=1, shape=shape, stars=False)
    changed = donut(one.true_flat)
    write_frames(flatd.incoming, one, range(5))
    first = night_master(flatd, 22)
    two = flatd.incoming / "n2"
    two.mkdir()
    write_frames(two, night(23, seed=2, shape=shape, stars=False, true_flat=changed), range(5))
    second = night_master(flatd, 23)
    assert second["qa"]["flagged"] and second["promoted"] is False  # held back
    assert (flatd.masters / LATEST).samefile(first["path"])
    three = flatd.incoming / "n3"
    three.mkdir()
    write_frames(three, night(24, seed=3, shape=shape, stars=False, true_flat=changed), range(5))
    third = night_master(flatd, 24)
    qa = third["qa"]
    assert qa["previous"] == second["path"] and qa["reference"] == first["path"]
    assert qa["confirmed"] and not qa["flagged"] and third["promoted"]
    assert qa["reason"].startswith("change confirmed: agrees with")
    [confirmed] = flatd.wait_event("change_confirmed")
    assert confirmed["path"] == third["path"]
    assert (flatd.masters / LATEST).samefile(third["path"])
    assert fits.getheader(third["path"])["QACONFIR"] is True
    wait_for(lambda: "change confirmed" in flatd_command(flatd, "status").stdout, what="status")
    assert flatd.stop() == 0


def test_flatd_promote_and_demote_with_the_daemon_running(daemon):
    flatd = daemon().start()
    shape = (128, 128)
    one = night(22, seed=1, shape=shape, stars=False)
    write_frames(flatd.incoming, one, range(5))
    first = night_master(flatd, 22)
    (flatd.incoming / "n2").mkdir()
    changed = night(23, seed=2, shape=shape, stars=False, true_flat=donut(one.true_flat))
    write_frames(flatd.incoming / "n2", changed, range(5))
    second = night_master(flatd, 23)
    assert second["qa"]["flagged"]
    latest = flatd.masters / LATEST

    done = flatd_command(flatd, "promote", second["path"])
    assert done.returncode == 0, done.stderr
    assert latest.samefile(second["path"])  # at once, by the command
    assert f"-> {Path(second['path']).name}" in done.stdout
    settled(flatd, latest_master=second["path"])  # and the daemon follows
    wait_for(
        lambda: {m["path"]: m["promoted"] for m in flatd.status()["masters"]}[second["path"]],
        what="the status lists it promoted",
    )

    done = flatd_command(flatd, "promote", "--demote", str(latest))
    assert done.returncode == 0, done.stderr
    assert latest.samefile(first["path"])
    settled(flatd, latest_master=first["path"])
    assert flatd.proc.poll() is None and len(flatd.named("combine_started")) == 2
    assert flatd_command(flatd, "promote", "flat_nothing.fits").returncode == 2
    assert flatd.stop() == 0


def test_masters_made_with_other_settings_are_named_and_remade_through_the_daemon(daemon):
    flatd = daemon().start()
    write_frames(flatd.incoming, night(23), range(4))
    [written] = flatd.wait_event("master_written")
    assert flatd.stop() == 0
    again = daemon(extra="[combine]\nsigma_high = 4.0\n").start()
    expected = ["combine.sigma_high = 5 (now 4)"]
    wait_for(
        lambda: (m := again.status()["masters"]) and m[0]["other_settings"] == expected,
        what="the master listed as made with other settings",
    )
    assert "made with other settings: combine.sigma_high = 5 (now 4)" in (
        flatd_command(again, "status").stdout
    )
    done = flatd_command(again, "remake", "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{written['path']}: -> {written['path']}" in done.stdout
    assert fits.getheader(written["path"])["CMBSHIGH"] == 4.0
    wait_for(lambda: again.status()["masters"][0]["other_settings"] == [], what="up to date")
    assert "every master" in flatd_command(again, "remake", "--all").stdout
    assert again.stop() == 0


def test_a_master_deleted_by_hand_is_noticed_while_running(daemon):
    flatd = daemon().start()
    write_frames(flatd.incoming, night(23), range(4))
    [written] = flatd.wait_event("master_written")
    started = time.monotonic()
    Path(written["path"]).unlink()
    [deleted] = flatd.wait_event("master_deleted", timeout=10)
    assert deleted["path"] == written["path"]
    flatd.wait_event("master_written", count=2)
    assert time.monotonic() - started < 10
    assert (flatd.masters / LATEST).samefile(written["path"])
    errors = flatd.status()["errors"]
    assert any(e["path"] == written["path"] and "deleted by hand" in e["reason"] for e in errors)
    assert flatd.stop() == 0


def test_file_names_reused_the_next_night_leave_last_nights_master_as_it_was(daemon):
    """Camera software that names every night's frames r_000.fits, ... (overwriting the
    night before, one file at a time): each overwritten file belongs to the new night; the
    old night's master stays as it was (no partial re-combination of what is left of it),
    and its INPUTS checksums say its rows' files now hold other data."""
    flatd = daemon().start()
    last_night = night(23, seed=1, stars=False)
    write_frames(flatd.incoming, last_night, range(5))
    first = night_master(flatd, 23)
    before = digest(Path(first["path"]))
    tonight = night(24, seed=2, stars=False, true_flat=last_night.true_flat)
    write_frames(flatd.incoming, tonight, range(5))  # the same five names
    second = night_master(flatd, 24)
    settled(flatd, latest_master=second["path"])
    assert masters_in(flatd.masters) == [Path(first["path"]).name, Path(second["path"]).name]
    assert digest(Path(first["path"])) == before
    rows = read_master_inputs(Path(first["path"]))
    now = {str(p): content_digest(p)[0] for p in flatd.incoming.glob("r_*.fits")}
    assert len(rows) == 5 and all(row["CHECKSUM"] != now[row["PATH"]] for row in rows)
    assert flatd.stop() == 0


def test_a_sequence_combined_again_is_compared_with_the_previous_nights_master(daemon):
    """A late frame makes a night's master again: its QA compares it with the previous
    night's master, never with the earlier combination of its own sequence."""
    flatd = daemon().start()
    last_night = night(22, seed=1, stars=False)
    write_frames(flatd.incoming, last_night, range(5))
    first = night_master(flatd, 22)
    (flatd.incoming / "n23").mkdir()
    tonight = night(23, n=6, seed=2, stars=False, true_flat=last_night.true_flat)
    write_frames(flatd.incoming / "n23", tonight, range(5))
    night_master(flatd, 23)
    write_frames(flatd.incoming / "n23", tonight, [5])  # a late frame
    again = night_master(flatd, 23, n=6)
    assert again["qa"]["previous"] == first["path"]
    assert flatd.stop() == 0
