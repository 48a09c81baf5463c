"""Each group's recent masters (the page's QA over time): kept as they are written, one entry
per file, newest sequence first, a few per group, and read back from the masters on disk
after a restart."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from flatd.outputs.history import PER_GROUP, MasterHistory, name_parts
from tests.daemon import FlatdProcess, flat_sequence, wait_for, write_atomically
from tests.sequences import donut, two_masters

pytestmark = pytest.mark.timeout(120)


def record(day: int, written: str, rms: float | None = None, group: str = "r_SIMCAM_1_1") -> dict:
    return {
        "group": {"FILTER": group[0]},
        "path": f"/m/flat_{group}_202611{day:02d}T173000.fits",
        "created_at": written,
        "n_frames": 5,
        "n_rejected": 0,
        "qa": {"change_rms": rms},
        "promoted": True,
    }


def test_one_entry_per_file_newest_sequence_first_and_bounded() -> None:
    history = MasterHistory()
    history.add(record(22, "2026-11-22T18:00:00Z"))
    history.add(record(24, "2026-11-24T18:00:00Z", 0.01))
    history.add(record(23, "2026-11-24T19:00:00Z", 0.002))  # a late sequence, written last
    history.add(record(24, "2026-11-24T20:00:00Z", 0.003))  # a re-combination: replaces
    history.add(record(24, "x", group="g_SIMCAM_1_1"))
    history.add({"path": "/m/not-a-master.fits"})
    entries = history.entries("r_SIMCAM_1_1")
    assert [e["start"] for e in entries] == [
        "2026-11-24T17:30:00Z",
        "2026-11-23T17:30:00Z",
        "2026-11-22T17:30:00Z",
    ]
    assert entries[0]["qa"]["change_rms"] == 0.003
    for day in range(1, 21):
        history.add(record(day, "2026-11-25T00:00:00Z"))
    assert len(history.entries("r_SIMCAM_1_1")) == PER_GROUP
    assert history.entries("r_SIMCAM_1_1")[0]["start"] == "2026-11-24T17:30:00Z"
    annotated = history.annotate([{"name": "g_SIMCAM_1_1", "state": "done"}, {"name": "i"}])
    assert [len(g["history"]) for g in annotated] == [1, 0]
    assert name_parts("flat_gp_SIMCAM_1_1_20261124T173000.fits") == (
        "gp_SIMCAM_1_1",
        "20261124T173000",
    )


def test_masters_on_disk_are_read_back_with_their_qa(tmp_path: Path) -> None:
    one, two, _ = two_masters(tmp_path, donut((256, 256)))  # the second one is flagged
    output = one.record.path.parent
    (output / "flat_r_SIMCAM_1_1_20261125T173000.fits").write_bytes(b"not a FITS file")
    history = MasterHistory()
    assert history.load(output) == 2  # the broken one is logged and left out
    entries = history.entries("r_SIMCAM_1_1")
    assert [e["path"] for e in entries] == [str(two.record.path), str(one.record.path)]
    for entry, made in zip(entries, (two, one), strict=True):
        assert entry["n_frames"] == made.record.n_frames
        assert entry["n_rejected"] == made.record.n_rejected
        assert entry["qa"]["flagged"] == made.record.qa["flagged"]
        assert entry["created_at"] == made.record.to_dict()["created_at"]
        assert entry["promoted"] == made.record.promoted  # what latest/ names
    assert entries[0]["qa"]["change_rms"] == pytest.approx(two.record.qa["change_rms"], abs=1e-6)
    assert entries[0]["qa"]["previous"] == str(one.record.path)
    assert "change_rms" not in entries[1]["qa"]


@pytest.mark.slow
def test_the_history_survives_a_restart(tmp_path: Path) -> None:
    flatd = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
    again = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
    try:
        flatd.start()
        for day, seed in ((23, 1), (24, 2)):
            seq = flat_sequence(3, seed=seed, start=datetime(2026, 11, day, 17, 30))
            for i in range(3):
                path = flatd.incoming / f"r{day}_{i:03d}.fits"
                write_atomically(path, seq.frames[i], seq.headers[i])
            flatd.wait_event("master_written", count=day - 22)
        assert flatd.stop() == 0
        (tmp_path / "status.json").unlink()
        again.start()
        status = wait_for(
            lambda: (s := again.status())["groups"] and len(s["groups"][0]["history"]) == 2 and s,
            what="the history read back",
        )
        assert status["daemon"]["pid"] == again.proc.pid
        assert again.stop() == 0
    finally:
        flatd.kill()
        again.kill()
    assert again.named("master_written") == []  # nothing was combined again: read from disk
    names = [Path(m["path"]).name for m in status["masters"]]  # as they are on disk, once each
    assert sorted(names) == [
        "flat_r_SIMCAM_1_1_20261123T173000.fits",
        "flat_r_SIMCAM_1_1_20261124T173000.fits",
    ]
    assert [Path(h["path"]).name for h in status["groups"][0]["history"]] == [
        "flat_r_SIMCAM_1_1_20261124T173000.fits",
        "flat_r_SIMCAM_1_1_20261123T173000.fits",
    ]
