"""Where calibrated copies go (never where a watcher or a scan finds them, gone afterwards)
and what calibrating holds in memory: one frame's worth, whatever the number of frames."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
from astropy.io import fits

from flatd.calibrate import (
    WORK_DIRECTORY,
    Calibrator,
    MasterLibraries,
    Workspace,
    plan,
    remove_stale_workspaces,
)
from flatd.config import CalibrateConfig, Config
from flatd.inputs.discover import matches, walk
from flatd.simulation.raw import RawFiles, simulate_raw_sequence, write_raw_sequence


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> RawFiles:
    sequence = simulate_raw_sequence((256, 256), 4, seed=9, dark_current=True)
    return write_raw_sequence(sequence, tmp_path_factory.mktemp("night"))


def calibrator(files: RawFiles, dark: bool = True) -> Calibrator:
    config = CalibrateConfig(
        raw="calibrate", bias=str(files.bias), dark=str(files.dark) if dark else ""
    )
    start = datetime(2026, 11, 24, tzinfo=UTC)
    libraries = MasterLibraries.from_settings(config, Path("/"))
    return Calibrator(plan(config, fits.getheader(files.frames[0]), start, libraries))


def test_calibrated_copies_are_out_of_sight_and_gone_afterwards(
    night: RawFiles, tmp_path: Path
) -> None:
    watched = tmp_path / "incoming"  # the output directory may lie inside a watched one
    output = watched / "masters"
    patterns = Config().watch.patterns
    with Workspace(output) as work, calibrator(night) as calibrate:
        frame = calibrate.calibrate(night.frames[0], work)
        assert work.path.parent == output / WORK_DIRECTORY
        assert work.path.name.startswith(f"{os.getpid()}-")
        assert frame.path.parent == work.path and frame.path.name.startswith(".")
        assert not matches(frame.path, patterns)
        assert list(walk([watched], patterns, recursive=True)) == []
        assert frame.raw_path == night.frames[0]
    assert not work.path.exists()
    with pytest.raises(RuntimeError), Workspace(output) as work:
        (work.path / "left.fits").write_bytes(b"x")
        raise RuntimeError("the combination failed")
    assert not (output / WORK_DIRECTORY).exists()  # nothing in it: gone too


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def half(fh) -> None:
        fh.write(b"SIMPLE  =")
        raise OSError("disk full")

    with Workspace(tmp_path) as work:
        with pytest.raises(OSError, match="disk full"):
            work.write(work.path / ".cal-x", half)
        assert list(work.path.iterdir()) == []


def test_stale_workspaces_of_dead_processes_are_removed(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(finished.stdout)
    root = tmp_path / WORK_DIRECTORY
    for name in (f"{dead}-abc", f"{os.getppid()}-def", "notes"):
        (root / name).mkdir(parents=True)
    with Workspace(tmp_path) as mine:
        assert remove_stale_workspaces(tmp_path) == [root / f"{dead}-abc"]
        assert mine.path.exists() and (root / f"{os.getppid()}-def").exists()


@pytest.mark.parametrize(("dark", "bound"), [(False, 4.0), (True, 6.0)])
def test_calibrating_holds_one_frames_worth_of_memory(
    night: RawFiles, tmp_path: Path, dark: bool, bound: float
) -> None:
    """Peak traced allocations per frame, in raw frames of float32: measured 3.1 with a
    bias (ccdproc's copies), 5.0 with a scaled dark; nothing kept from frame to frame."""
    frame_bytes = fits.getdata(night.frames[0]).size * 4
    with Workspace(tmp_path) as work, calibrator(night, dark) as calibrate:
        calibrate.calibrate(night.frames[0], work)  # masters read, modules imported
        tracemalloc.start()
        try:
            peaks, kept = [], []
            for path in night.frames:
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                calibrate.calibrate(path, work)
                now, peak = tracemalloc.get_traced_memory()
                peaks.append((peak - before) / frame_bytes)
                kept.append((now - before) / frame_bytes)
        finally:
            tracemalloc.stop()
    assert max(peaks) < bound
    assert max(peaks) - min(peaks) < 0.1  # the fourth frame costs what the first did
    assert max(kept) < 0.1
