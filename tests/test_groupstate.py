"""The groups as the status file shows them (`flatd.daemon.groupstate`): states set by the jobs, a
snapshot in the schema-1 shape with the duplicates, gone inputs and held frames of each
group, and which groups are settled (their old sequences may leave memory)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flatd.config import Config
from flatd.daemon.groupstate import LISTED, NOTES_EVERY_SECONDS, GroupStates
from flatd.frames import Frame, read_frame
from flatd.inputs.fingerprint import identified
from flatd.inputs.index import Index
from tests.helpers import write_frame

NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def indexed(index: Index, path: Path) -> Frame:
    frame = identified(read_frame(path, Config().frames))
    assert isinstance(frame, Frame)
    index.add(frame)
    return frame


def test_a_group_waits_until_its_quiet_period_ends_then_settles(tmp_path: Path) -> None:
    index = Index(gap_minutes=120)
    frame = indexed(index, write_frame(tmp_path / "a.fits"))
    states = GroupStates(index, Config().frames)
    assert states.snapshot() == [] and not states.settled(frame.group)
    states.frames_changed(frame.group, NOW, NOW + timedelta(seconds=300))
    [entry] = states.snapshot()
    assert entry["state"] == "waiting" and entry["frames"] == 1
    assert entry["stable_at"] == "2026-11-23T18:05:00Z"
    assert entry["last_frame_at"] == "2026-11-23T18:00:00Z"
    assert entry["name"] == "r_SIMCAM_1_1" and entry["group"]["FILTER"] == "r"
    assert not states.settled(frame.group)
    for state, settled in (("pending", False), ("done", True), ("too_few", True)):
        states.set(frame.group, state=state)
        assert states.settled(frame.group) is settled
    states.frames_changed(frame.group, NOW)  # a frame seen while starting: no time yet
    assert states.snapshot()[0]["state"] == "too_few"


def test_the_snapshot_lists_duplicates_inputs_gone_and_frames_held(tmp_path: Path) -> None:
    index = Index(gap_minutes=120)
    frame = indexed(index, write_frame(tmp_path / "a.fits"))
    copy = tmp_path / "copy.fits"
    copy.write_bytes(frame.path.read_bytes())
    indexed(index, copy)
    states = GroupStates(index, Config().frames)
    gone = [{"path": f"/old/f{i}.fits", "master": "/m/flat.fits"} for i in range(LISTED + 5)]
    states.set(
        frame.group,
        state="done",
        gone=gone,
        held="2 new frame(s) not combined:\nsee flatd remake",
        reason="",
    )
    [entry] = states.snapshot()
    assert entry["duplicates"] == [{"path": str(copy), "duplicate_of": str(frame.path)}]
    assert entry["gone"] == gone[:LISTED] and entry["gone_count"] == LISTED + 5
    assert entry["held"] == "2 new frame(s) not combined: see flatd remake"  # one line
    assert entry["frames"] == 1  # the copy is not a second frame


def test_a_copy_of_the_group_state_is_not_the_state(tmp_path: Path) -> None:
    index = Index(gap_minutes=120)
    frame = indexed(index, write_frame(tmp_path / "a.fits"))
    states = GroupStates(index, Config().frames)
    states.set(frame.group, rejected={"x.fits": "too faint"})
    copy = states.get(frame.group)
    copy.rejected["y.fits"] = "saturated"
    copy.state = "failed"
    [entry] = states.snapshot()
    assert entry["state"] == "waiting" and len(entry["rejected"]) == 1


def test_notes_are_worked_out_again_for_groups_whose_frames_changed(tmp_path: Path) -> None:
    index = Index(gap_minutes=120)
    frame = indexed(index, write_frame(tmp_path / "a.fits", FILTER=None))
    clock = FakeClock()
    states = GroupStates(index, Config().frames, clock=clock)
    states.frames_changed(frame.group, NOW)
    [entry] = states.snapshot()
    assert any("no filter keyword" in note for note in entry["notes"])
    os.remove(frame.path)
    index.remove(frame.path)
    fixed = indexed(index, write_frame(tmp_path / "b.fits"))
    states.frames_changed(fixed.group, NOW)
    by_name = {e["name"]: e for e in states.snapshot()}
    assert by_name["r_SIMCAM_1_1"]["notes"] == []


def test_a_group_in_a_burst_has_its_notes_worked_out_at_most_every_few_seconds(
    tmp_path: Path,
) -> None:
    """Several status writes a second while frames arrive must not each go over all of a
    group's frames: its notes are worked out again once NOTES_EVERY_SECONDS passed."""
    index = Index(gap_minutes=120)
    first = indexed(index, write_frame(tmp_path / "a.fits"))
    clock = FakeClock()
    states = GroupStates(index, Config().frames, clock=clock)
    states.frames_changed(first.group, NOW)
    assert states.snapshot()[0]["notes"] == []
    undated = indexed(index, write_frame(tmp_path / "b.fits", **{"DATE-OBS": None}))
    assert undated.group == first.group and not undated.date_from_header
    states.frames_changed(first.group, NOW)
    clock.now += 1.0
    assert states.snapshot()[0]["notes"] == []  # worked out a second ago: as they were
    clock.now += NOTES_EVERY_SECONDS
    [note] = states.snapshot()[0]["notes"]
    assert note.startswith("1 of 2 frames: no date keyword") and "file time used" in note
