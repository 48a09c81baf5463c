"""From "something happened to this path" to the index (`flatd.daemon.ingest`), on its real worker
thread and real files: a closed file is read at once, a growing one once it stood still, a
truncated one is refused only after standing still for `incomplete_seconds`; a deleted flat
leaves its group; a copy of a frame is a duplicate that tells no group; what is not an
input goes straight to `on_skip`, after one log event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from structlog.testing import capture_logs

from flatd.config import FramesConfig
from flatd.daemon.ingest import Ingest
from flatd.frames import GroupKey, Skip
from flatd.inputs.index import Index
from tests.daemon import wait_for
from tests.helpers import FLAT_HEADER, write_frame

pytestmark = pytest.mark.timeout(30)


class Harness:
    def __init__(self) -> None:
        self.index = Index(gap_minutes=120, keep_days=7)
        self.changed: list[GroupKey] = []
        self.skips: list[Skip] = []
        self.index_changes = 0
        self.ingest = Ingest(
            self.index,
            FramesConfig(),
            on_group_changed=self.changed.append,
            on_skip=self.skips.append,
            on_index_changed=self._index_changed,
            settle_seconds=0.2,
            incomplete_seconds=0.5,
            recheck_seconds=0.05,
        )
        self.ingest.start()

    def _index_changed(self) -> None:
        self.index_changes += 1

    def idle(self) -> None:
        wait_for(lambda: self.ingest.pending() == 0, timeout=10, what="ingest idle")


@pytest.fixture
def harness():
    made = Harness()
    yield made
    made.ingest.stop()


def named(events: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in events if e["event"] == name]


def test_a_closed_file_is_read_at_once_and_once(harness, tmp_path: Path) -> None:
    path = write_frame(tmp_path / "r_000.fits")
    with capture_logs() as events:
        harness.ingest.submit(path, "closed")
        harness.idle()
        harness.ingest.submit(path, "closed")  # an event again, nothing changed
        harness.idle()
    assert len(named(events, "frame_indexed")) == 1
    [group] = harness.changed
    assert harness.index.group_sizes() == {group: 1}


def test_a_growing_file_is_read_once_it_stood_still(harness, tmp_path: Path) -> None:
    whole = write_frame(tmp_path / "staging.fits").read_bytes()
    path = tmp_path / "r_000.fits"
    path.write_bytes(whole[:2880])  # the header so far: its data is still to come
    harness.ingest.submit(path, "changed")
    wait_for(lambda: harness.ingest.pending() == 1, what="looked at")
    with path.open("ab") as out:
        out.write(whole[2880:])
    harness.ingest.submit(path, "changed")
    harness.idle()
    assert not harness.skips  # never refused while it grew
    assert len(harness.changed) == 1 and harness.index.counts()["flats"] == 1


def test_a_file_a_scan_found_is_read_at_once_unless_it_is_still_growing(tmp_path: Path) -> None:
    """A new directory's first frames land before its watch exists; the scan that finds
    them must not make them wait for the settle time (the sequence would be combined
    without them), and one still being written waits for its close."""
    index = Index(gap_minutes=120, keep_days=7)
    skips: list[Skip] = []
    ingest = Ingest(
        index,
        FramesConfig(),
        on_group_changed=lambda g: None,
        on_skip=skips.append,
        settle_seconds=60,
    )
    ingest.start()
    try:
        ingest.submit(write_frame(tmp_path / "r_000.fits"), "found")
        wait_for(lambda: index.counts()["flats"] == 1, timeout=5, what="read before settling")
        staging = write_frame(
            tmp_path / "staging" / "x.fits", **{"DATE-OBS": "2026-11-23T17:31:00"}
        )
        whole = staging.read_bytes()
        growing = tmp_path / "r_001.fits"
        growing.write_bytes(whole[:2880])
        ingest.submit(growing, "found")
        wait_for(lambda: ingest.pending() == 1, what="looked at")
        with growing.open("ab") as out:
            out.write(whole[2880:])
        ingest.submit(growing, "closed")
        wait_for(lambda: index.counts()["flats"] == 2, timeout=5, what="read when closed")
        assert not skips
    finally:
        ingest.stop()


def test_a_truncated_file_is_refused_once_it_stood_still(harness, tmp_path: Path) -> None:
    whole = write_frame(tmp_path / "staging.fits").read_bytes()
    path = tmp_path / "r_000.fits"
    path.write_bytes(whole[:3000])
    with capture_logs() as events:
        harness.ingest.submit(path, "closed")
        wait_for(lambda: harness.skips, what="refused")
    [skip] = harness.skips
    assert skip.kind == "rejected" and skip.path == path
    assert "truncated" in skip.reason and skip.reason.endswith("(unchanged for 0.5 s)")
    [event] = named(events, "frame_rejected")
    assert event["log_level"] == "warning" and event["path"] == str(path)
    assert harness.index.counts()["rejected"] == 1


def test_a_file_whose_nextend_says_more_than_it_holds_is_read_once_at_rest(
    harness, tmp_path: Path
) -> None:
    """NEXTEND = 4 over one extension: a mosaic still being written, or one CCD split off
    a mosaic with its primary header; once it stood still it is read as it is."""
    primary = fits.PrimaryHDU(header=fits.Header({**FLAT_HEADER, "NEXTEND": 4}))
    path = tmp_path / "ccd1.fits"
    fits.HDUList([primary, fits.ImageHDU(np.full((16, 20), 2e4, np.float32), name="CCD1")]).writeto(
        path
    )
    harness.ingest.submit(path, "closed")
    wait_for(lambda: harness.index.counts()["flats"] == 1, timeout=10, what="read at rest")
    assert not harness.skips


def test_a_deleted_flat_leaves_its_group(harness, tmp_path: Path) -> None:
    path = write_frame(tmp_path / "r_000.fits")
    harness.ingest.submit(path, "closed")
    harness.idle()
    path.unlink()
    harness.ingest.submit(path, "deleted")
    harness.idle()
    assert len(harness.changed) == 2 and harness.index.counts()["flats"] == 0


def test_a_copy_of_a_frame_is_a_duplicate_that_tells_no_group(harness, tmp_path: Path) -> None:
    path = write_frame(tmp_path / "r_000.fits")
    copy = tmp_path / "backup" / "r_000.fits"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    with capture_logs() as events:
        for p in (path, copy):
            harness.ingest.submit(p, "closed")
            harness.idle()
    [duplicate] = named(events, "frame_duplicate")
    assert duplicate == {
        "event": "frame_duplicate",
        "path": str(copy),
        "duplicate_of": str(path),
        "log_level": "info",
    }
    assert len(harness.changed) == 1
    assert harness.index.counts() == {"frames": 2, "flats": 1, "skipped": 0, "rejected": 0}
    assert harness.index_changes == 2  # the duplicate changes no group, but the status
    copy.unlink()
    harness.ingest.submit(copy, "deleted")
    harness.idle()
    assert len(harness.changed) == 1 and harness.index_changes == 3


def test_what_is_not_a_flat_goes_to_on_skip_after_one_event(harness, tmp_path: Path) -> None:
    bias = write_frame(tmp_path / "bias.fits", IMAGETYP="Bias Frame")
    with capture_logs() as events:
        harness.ingest.submit(bias, "closed")
        harness.idle()
    [skip] = harness.skips
    assert skip.kind == "skipped" and "not a flat" in skip.reason
    assert named(events, "frame_skipped")[0]["path"] == str(bias)
    assert harness.changed == [] and harness.index.counts()["skipped"] == 1
