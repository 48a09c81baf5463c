"""The in-memory index: groups, sequences split by gap, re-sightings, removals, counts; one
frame, one input (a copy is a duplicate, a touched file the same frame)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from flatd.config import FramesConfig, load_config
from flatd.frames import Frame, Skip, read_frame
from flatd.inputs.fingerprint import identified
from flatd.inputs.index import Index, index_paths
from tests.helpers import write_frame


def frame_at(tmp_path: Path, name: str, when: str, **header) -> Frame:
    frame = read_frame(write_frame(tmp_path / name, **{"DATE-OBS": when, **header}), FramesConfig())
    assert isinstance(frame, Frame)
    return frame


def test_sequences_split_where_the_gap_is_longer_than_gap_minutes(tmp_path: Path):
    index = Index(gap_minutes=120)
    times = [
        "2026-11-23T17:30:00",
        "2026-11-23T17:31:00",
        "2026-11-23T19:30:00",
        "2026-11-24T06:00:00",
        "2026-11-24T06:01:00",
    ]
    for i, when in enumerate(times):
        index.add(frame_at(tmp_path, f"f{i}.fits", when))
    sequences = index.sequences()
    assert [len(s.frames) for s in sequences] == [3, 2]
    assert sequences[1].start - sequences[0].end > timedelta(minutes=120)


def test_groups_are_kept_apart(tmp_path: Path):
    index = Index(gap_minutes=120)
    index.add(frame_at(tmp_path, "r.fits", "2026-11-23T17:30:00", FILTER="r"))
    index.add(frame_at(tmp_path, "g.fits", "2026-11-23T17:30:00", FILTER="g"))
    index.add(frame_at(tmp_path, "g2.fits", "2026-11-23T17:30:00", FILTER="g", XBINNING=2))
    assert len(index.groups()) == 3


def test_a_file_seen_twice_unchanged_is_not_a_change(tmp_path: Path):
    index = Index(gap_minutes=120)
    frame = frame_at(tmp_path, "f.fits", "2026-11-23T17:30:00")
    first, again = index.add(frame), index.add(frame)
    assert first.changed and first.new and first.groups == {frame.group}
    assert not again.changed and not again.groups
    assert index.knows(frame.path, frame.size, frame.mtime_ns)
    assert not index.knows(frame.path, frame.size + 1, frame.mtime_ns)


def test_a_flat_rewritten_as_something_else_leaves_its_group(tmp_path: Path):
    index = Index(gap_minutes=120)
    frame = frame_at(tmp_path, "f.fits", "2026-11-23T17:30:00")
    index.add(frame)
    change = index.add(Skip(frame.path, "rejected", "truncated", 10, 1))
    assert change.groups == {frame.group}
    assert index.groups() == {}
    assert index.counts() == {"frames": 1, "flats": 0, "skipped": 0, "rejected": 1}
    assert index.remove(frame.path) is None
    assert index.counts()["frames"] == 0


def test_index_paths_walks_patterns_and_leaves_temporaries_and_output_alone(tmp_path: Path):
    config_file = tmp_path / "config.toml"
    config_file.write_text('[watch]\ndirectories = ["in"]\n[output]\ndirectory = "in/masters"\n')
    config = load_config(config_file)
    write_frame(tmp_path / "in" / "night1" / "a.fits")
    write_frame(tmp_path / "in" / "b.fit", **{"DATE-OBS": "2026-11-23T17:31:00"})
    write_frame(tmp_path / "in" / "bias.fits", IMAGETYP="BIAS")
    write_frame(tmp_path / "in" / ".a.fits.Xy12ab")  # rsync's temporary name
    write_frame(tmp_path / "in" / "c.fits.part")
    write_frame(tmp_path / "in" / "notes.txt")
    write_frame(tmp_path / "in" / "masters" / "flat_r.fits")
    index = index_paths([tmp_path / "in"], config)
    names = sorted(p.name for p in index.paths())
    assert names == ["a.fits", "b.fit", "bias.fits"]
    assert index.counts() == {"frames": 3, "flats": 2, "skipped": 1, "rejected": 0}
    assert np.all([f.group[0] == ("FILTER", "r") for f in index.frames()])


# -- the daemon's index: bounded by keep_days ------------------------------------------------
def _recount(index: Index, skips: dict[Path, str]) -> dict[str, int]:
    """The counts the hard way, from what the index holds and what the test added."""
    kinds = list(skips.values())
    return {
        "frames": len(index.frames()) + len(kinds),
        "flats": len(index.frames()),
        "skipped": kinds.count("skipped"),
        "rejected": kinds.count("rejected"),
    }


def test_the_daemon_index_records_skips_compactly_and_keeps_counts(tmp_path: Path):
    index = Index(gap_minutes=120, keep_days=7)
    flat = frame_at(tmp_path, "night/f.fits", "2026-11-23T17:30:00")
    bias = Skip(
        tmp_path / "night" / "bias.fits", "skipped", "IMAGETYP = 'Bias' is not a flat", 9, 1
    )
    junk = Skip(tmp_path / "night" / "junk.fits", "rejected", "not a FITS file", 5, 2)
    for item in (flat, bias, junk):
        assert index.add(item).changed
    assert not index.add(bias).changed and not index.add(junk).changed
    assert index.skips() == []  # not held as objects: only their counts and stamps
    assert index.knows(bias.path, 9, 1) and not index.knows(bias.path, 9, 2)
    skips = {bias.path: "skipped", junk.path: "rejected"}
    assert (
        index.counts()
        == _recount(index, skips)
        == {
            "frames": 3,
            "flats": 1,
            "skipped": 1,
            "rejected": 1,
        }
    )
    # the junk is rewritten as a flat, the bias goes away
    fixed = frame_at(tmp_path, "night/junk2.fits", "2026-11-23T17:31:00")
    fixed = Frame(**{**fixed.__dict__, "path": junk.path})
    change = index.add(fixed)
    assert change.changed and not change.new and change.groups == {fixed.group}
    assert index.remove(bias.path) is None
    assert index.counts() == {"frames": 2, "flats": 2, "skipped": 0, "rejected": 0}
    assert index.group_sizes() == {flat.group: 2}


def test_listed_files_are_known_without_being_read(tmp_path: Path):
    index = Index(gap_minutes=120, keep_days=7)
    old = tmp_path / "2026-09-01"
    assert index.record_listed(old, [("a.fits", 10, 100), ("b.fits", 20, 200)]) == 2
    assert index.record_listed(old, [("a.fits", 10, 100)]) == 0  # seen again: nothing new
    assert index.knows(old / "a.fits", 10, 100)
    assert not index.knows(old / "a.fits", 10, 101)
    assert index.counts() == {"frames": 2, "flats": 0, "skipped": 0, "rejected": 0}
    # one of them is rewritten, one deleted, one added: only that directory is compared
    to_read, gone = index.compare(old, {"a.fits": (10, 101), "c.fits": (5, 5)})
    assert to_read == ["a.fits", "c.fits"] and gone == []
    assert index.counts()["frames"] == 1  # b.fits forgotten
    assert index.forget_directory(old) == []
    assert index.counts()["frames"] == 0


def test_compare_names_held_frames_that_left_the_directory(tmp_path: Path):
    index = Index(gap_minutes=120, keep_days=7)
    a = frame_at(tmp_path, "n/a.fits", "2026-11-23T17:30:00")
    b = frame_at(tmp_path, "n/b.fits", "2026-11-23T17:31:00")
    index.add(a)
    index.add(b)
    to_read, gone = index.compare(tmp_path / "n", {"a.fits": (a.size, a.mtime_ns)})
    assert to_read == [] and gone == [b.path]
    assert index.counts()["flats"] == 2  # held frames leave through remove(), group and all
    assert index.forget_directory(tmp_path / "n") == [a.path, b.path]


def test_forget_retires_old_settled_sequences_but_keeps_each_groups_newest(tmp_path: Path):
    index = Index(gap_minutes=120, keep_days=7)
    nights = ["2026-10-01T18:00:00", "2026-10-02T18:00:00", "2026-10-03T18:00:00"]
    for n, when in enumerate(nights):
        for i in range(3):
            index.add(frame_at(tmp_path, f"n{n}/r{i}.fits", when.replace(":00:00", f":0{i}:00")))
    g_old = frame_at(tmp_path, "n0/g.fits", "2026-10-01T18:00:00", FILTER="g")
    index.add(g_old)
    r_group = index.frames()[0].group
    horizon = datetime(2026, 11, 24, tzinfo=UTC)

    assert index.forget(horizon, settled=lambda group: False) == []  # nothing settled yet
    assert index.counts()["flats"] == 10

    gone = index.forget(horizon, settled=lambda group: group == r_group)
    assert [s.start.day for s in gone] == [1, 2]  # r's newest night stays, g untouched
    assert index.counts() == {"frames": 10, "flats": 4, "skipped": 0, "rejected": 0}
    assert index.group_sizes() == {r_group: 3, g_old.group: 1}
    assert [len(s.frames) for s in index.sequences(r_group)] == [3]
    # a forgotten frame is still known (not read again) but no longer in any sequence
    first = gone[0].frames[0]
    assert index.knows(first.path, first.size, first.mtime_ns)
    assert index.remove(first.path) is None
    assert index.counts()["frames"] == 9


def test_group_keys_are_shared_by_the_frames_of_a_group(tmp_path: Path):
    index = Index(gap_minutes=120)
    for i in range(3):
        index.add(frame_at(tmp_path, f"f{i}.fits", f"2026-11-23T17:3{i}:00"))
    keys = {id(f.group) for f in index.frames()}
    assert len(keys) == 1


# -- one frame, one input ----------------------------------------------------------------------
def identified_frame(path: Path) -> Frame:
    frame = identified(read_frame(path, FramesConfig()))
    assert isinstance(frame, Frame) and frame.content
    return frame


def test_a_copy_is_a_duplicate_and_takes_the_place_of_the_frame_it_copies(tmp_path: Path):
    index = Index(gap_minutes=120, keep_days=7)
    original = identified_frame(write_frame(tmp_path / "a.fits"))
    copy = tmp_path / "backup" / "a.fits"
    copy.parent.mkdir()
    copy.write_bytes(original.path.read_bytes())
    assert index.add(original).groups == {original.group}
    change = index.add(identified_frame(copy))
    assert change.changed and change.duplicate_of == original.path and not change.groups
    assert index.counts() == {"frames": 2, "flats": 1, "skipped": 0, "rejected": 0}
    assert [(d.path, d.of) for d in index.duplicates()] == [(copy, original.path)]
    [sequence] = index.sequences()
    assert [f.path for f in sequence.frames] == [original.path]
    assert [d.path for d in sequence.duplicates] == [copy]

    assert index.remove(original.path) is None  # the copy takes its place: same frames
    [sequence] = index.sequences()
    assert [f.path for f in sequence.frames] == [copy] and sequence.duplicates == ()
    assert index.duplicates() == [] and index.duplicate_count() == 0
    assert index.counts() == {"frames": 1, "flats": 1, "skipped": 0, "rejected": 0}
    assert index.remove(copy) == original.group  # the last path: the frame leaves


def test_a_touched_frame_changes_no_group(tmp_path: Path):
    index = Index(gap_minutes=120)
    frame = identified_frame(write_frame(tmp_path / "a.fits"))
    index.add(frame)
    os.utime(frame.path, (1e9, 1e9))
    change = index.add(identified_frame(frame.path))
    assert change.changed and not change.new and change.groups == frozenset()
    assert index.knows(frame.path, frame.size, 1_000_000_000 * 10**9)


def test_duplicates_leave_memory_with_the_sequence_they_copy(tmp_path: Path):
    index = Index(gap_minutes=120, keep_days=7)
    old = identified_frame(write_frame(tmp_path / "old.fits", **{"DATE-OBS": "2026-10-01T17:30"}))
    new = identified_frame(write_frame(tmp_path / "new.fits"))
    copy = tmp_path / "copy.fits"
    copy.write_bytes(old.path.read_bytes())
    for frame in (old, new, identified_frame(copy)):
        index.add(frame)
    [gone] = index.forget(datetime(2026, 11, 1, tzinfo=UTC), lambda group: True)
    assert [f.path for f in gone.frames] == [old.path]
    assert index.duplicates() == []
    assert index.counts() == {"frames": 3, "flats": 1, "skipped": 0, "rejected": 0}
    assert index.knows(copy, copy.stat().st_size, copy.stat().st_mtime_ns)  # not read again
