"""The pipeline's calibration stage on real raw files (`flatd.simulation.raw`): what the engine
reads, what the master says, and every way a raw frame or sequence is refused or waits."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.calibrate import WORK_DIRECTORY, MasterLibraries
from flatd.calibrate.stage import calibrated_inputs
from flatd.config import CalibrateConfig, Config, OutputConfig, SequenceConfig
from flatd.engine.pixels import PixelSource, PlaneReader
from flatd.inputs.index import FlatSequence, index_paths
from flatd.outputs.masters import read_master_inputs
from flatd.pipeline import make_master
from flatd.simulation.raw import RawFiles, simulate_raw_sequence, write_raw_sequence
from tests.guide import write_guide_calibrated

pytest.importorskip("ccdproc")

SHAPE = (24, 32)  # image area (ny, nx); the readout adds 8 prescan and 32 overscan columns


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> RawFiles:
    sequence = simulate_raw_sequence(SHAPE, 6, seed=3, levels=(30000.0, 10000.0))
    return write_raw_sequence(sequence, tmp_path_factory.mktemp("night"))


def configured(output: Path, bias: Path | str, **calibrate: object) -> Config:
    return replace(
        Config(),
        sequence=SequenceConfig(min_frames=3),
        output=OutputConfig(directory=output, preview=False),
        calibrate=CalibrateConfig(raw="calibrate", bias=str(bias), **calibrate),  # type: ignore[arg-type]
    )


def the_sequence(paths: list[Path], config: Config) -> FlatSequence:
    (sequence,) = index_paths(paths, config).sequences()
    return sequence


def libraries(config: Config) -> MasterLibraries:
    return MasterLibraries.from_settings(config.calibrate, Path("/"))


def test_the_engine_reads_trimmed_float32_copies_gone_afterwards(night, tmp_path: Path) -> None:
    config = configured(tmp_path / "masters", night.bias)
    sequence = the_sequence(night.frames, config)
    assert all(f.raw and f.shape == (24, 72) for f in sequence.frames)
    with calibrated_inputs(sequence, config, tmp_path / "masters", libraries(config)) as inputs:
        assert [inputs.indexed(f.path) for f in inputs.frames] == night.frames
        for copy in inputs.frames:
            assert copy.shape == SHAPE and copy.bitpix == -32 and not copy.raw
            assert copy.path.parent.parent == tmp_path / "masters" / WORK_DIRECTORY
            # the engine's reader, at the header's end
            with PlaneReader(PixelSource.of(copy)) as pixels:
                rows = np.empty(SHAPE, np.float32)
                pixels.read_rows(0, SHAPE[0], rows)
            np.testing.assert_array_equal(rows, fits.getdata(copy.path))
            # a raw pixel at SATURATE is calibrated down by the overscan level
            level = fits.getval(copy.path, "CALOSLVL")
            assert copy.extras["SATURATE"] == pytest.approx(65535.0 - level, abs=1e-3)
        assert inputs.provenance is not None and inputs.rejected == {}
    assert not (tmp_path / "masters" / WORK_DIRECTORY).exists()


def test_a_stop_between_two_frames_abandons_the_stage_and_its_workspace(night, tmp_path) -> None:
    """How the daemon stops at once: `make_master`'s progress is called before each raw
    frame is calibrated; what it raises abandons the sequence, with nothing left behind."""
    config = configured(tmp_path / "masters", night.bias)
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 3:
            raise KeyboardInterrupt  # what the daemon raises is its own; anything goes

    with pytest.raises(KeyboardInterrupt):
        make_master(the_sequence(night.frames, config), config, progress=progress)
    assert calls == [(0, 24)] * 3  # before the first, second and third frame
    assert not (tmp_path / "masters" / WORK_DIRECTORY).exists()
    assert list((tmp_path / "masters").glob("*.fits")) == []


def test_a_sequence_without_raw_frames_passes_through(night, tmp_path: Path) -> None:
    calibrated = write_guide_calibrated(night.frames, night.bias, tmp_path / "calibrated")
    config = configured(tmp_path / "masters", night.bias)
    sequence = the_sequence(calibrated, config)
    with calibrated_inputs(sequence, config, tmp_path / "masters", libraries(config)) as inputs:
        assert inputs.frames == list(sequence.frames) and inputs.provenance is None
    assert not (tmp_path / "masters").exists()


def test_calibrated_frames_among_raw_ones_are_refused(night, tmp_path: Path) -> None:
    calibrated = write_guide_calibrated(night.frames[:2], night.bias, tmp_path / "calibrated")
    config = configured(tmp_path / "masters", night.bias)
    result = make_master(the_sequence([*night.frames, *calibrated], config), config)
    assert result.outcome == "done" and result.record is not None
    assert result.rejected == {
        path: "calibrated frame (no overscan section, or its bias already subtracted) in a "
        "sequence of 6 raw frames: not combined with them"
        for path in calibrated
    }
    rows = {Path(row["PATH"]): row for row in read_master_inputs(result.record.path)}
    assert set(rows) == {*night.frames, *calibrated}
    assert [rows[p]["USED"] for p in calibrated] == [False, False]
    assert rows[calibrated[0]]["REASON"].startswith("calibrated frame (no overscan section")
    assert fits.getval(result.record.path, "NCOMBINE") == 6


def test_raw_frames_among_calibrated_ones_are_refused(night, tmp_path: Path) -> None:
    calibrated = write_guide_calibrated(night.frames[2:], night.bias, tmp_path / "calibrated")
    config = configured(tmp_path / "masters", night.bias)
    result = make_master(the_sequence([*night.frames[:2], *calibrated], config), config)
    assert result.outcome == "done" and result.record is not None
    biassec = fits.getval(night.frames[0], "BIASSEC")
    assert result.rejected == {
        path: f"raw frame (BIASSEC = '{biassec}') in a sequence of 4 calibrated frames: not "
        "combined with them"
        for path in night.frames[:2]
    }
    assert "CALSTEPS" not in fits.getheader(result.record.path)  # nothing was calibrated


def test_a_named_bias_of_another_shape_refuses_every_frame_by_name(night, tmp_path) -> None:
    small = tmp_path / "small_bias.fits"
    header = fits.getheader(night.bias)
    fits.PrimaryHDU(np.zeros((12, 16), np.float32), header).writeto(small)
    config = configured(tmp_path / "masters", small)
    result = make_master(the_sequence(night.frames, config), config)
    assert result.outcome == "too_few" and result.record is None
    reason = "master bias small_bias.fits is 16x12, the calibrated frames 32x24"
    assert result.rejected == dict.fromkeys(night.frames, reason)
    assert result.reason == f"0 usable frame(s), sequence.min_frames = 3; rejected: 6x {reason}"
    assert not (tmp_path / "masters" / WORK_DIRECTORY).exists()


def test_a_frame_whose_overscan_lies_outside_it_is_refused_alone(night, tmp_path) -> None:
    frames = [shutil.copy(p, tmp_path / p.name) for p in night.frames]
    fits.setval(frames[0], "BIASSEC", value="[900:910,1:24]")  # the first: the recipe's too
    config = configured(tmp_path / "masters", night.bias)
    result = make_master(the_sequence([Path(p) for p in frames], config), config)
    assert result.outcome == "done" and result.record is not None
    assert result.rejected == {
        Path(frames[0]): "BIASSEC = '[900:910,1:24]' lies outside the 72x24 image (columns x rows)"
    }
    assert fits.getval(result.record.path, "NCOMBINE") == 5


def test_no_master_bias_yet_is_waiting_not_failed(night, tmp_path: Path) -> None:
    (tmp_path / "biases").mkdir()
    config = configured(tmp_path / "masters", tmp_path / "biases")
    sequence = the_sequence(night.frames, config)
    result = make_master(sequence, config)
    assert result.outcome == "waiting" and result.record is None
    assert result.reason.startswith(
        f"waiting for a master bias: no master bias in {tmp_path / 'biases'} for 32x24, "
        "binning 1x1, taken before 2026-11-23T17:30:00 (yet)"
    )
    assert not (tmp_path / "masters" / WORK_DIRECTORY).exists()
    shutil.copy(night.bias, tmp_path / "biases")  # a master bias lands there
    assert make_master(sequence, config).outcome == "done"
