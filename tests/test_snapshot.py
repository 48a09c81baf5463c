"""The status file's group entries cost what changed: frame counts from the index's
per-group summary, each group's notes worked out again only when its frames changed."""

from __future__ import annotations

from pathlib import Path

from flatd.config import Config
from flatd.daemon.groupstate import NOTES_EVERY_SECONDS, GroupStates
from flatd.frames import Frame, read_frame
from flatd.inputs.index import Index
from tests.helpers import write_frame


def test_counts_and_notes_follow_the_frames_without_regrouping_every_flat(tmp_path: Path):
    config = Config()
    index = Index(gap_minutes=120, keep_days=7)
    clock = [1000.0]
    groups = GroupStates(index, config.frames, clock=lambda: clock[0])

    def arrive(name: str, **header: object) -> Frame:
        frame = read_frame(write_frame(tmp_path / name, **header), config.frames)
        assert isinstance(frame, Frame)
        index.add(frame)
        groups.frames_changed(frame.group, frame.date)
        return frame

    first = arrive("r1.fits")
    arrive("r2.fits", **{"DATE-OBS": "2026-11-23T17:31:00"})
    [entry] = groups.snapshot()
    assert entry["frames"] == 2 and entry["notes"] == []

    calls = []
    real = index.group_frames
    index.group_frames = lambda group: calls.append(group) or real(group)  # type: ignore[method-assign]
    assert groups.snapshot()[0]["frames"] == 2
    assert calls == []  # nothing changed: nothing gone over again

    arrive("r3.fits", **{"DATE-OBS": "yesterday"})  # a date that is not one: a note
    assert groups.snapshot()[0]["notes"] == []  # at most every NOTES_EVERY_SECONDS ...
    assert calls == []
    clock[0] += NOTES_EVERY_SECONDS  # ... then the group that changed is gone over again
    [entry] = groups.snapshot()
    assert calls == [first.group]
    assert entry["frames"] == 3
    assert any("is not a date" in note for note in entry["notes"])
