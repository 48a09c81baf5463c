"""The in-memory index: groups, sequences split by gap, re-sightings, removals, counts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np

from flatd.config import FramesConfig, load_config
from flatd.frames import Frame, Skip, read_frame
from flatd.index import Index, index_paths
from tests.conftest import write_frame


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
    write_frame(tmp_path / "in" / "b.fit")
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
