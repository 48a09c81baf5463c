"""The raw camera: uint16 readouts with a bias level, a row pattern in image and overscan
alike, a prescan, FITS sections that say where things are, and the masters behind them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.calibrate import detect_raw
from flatd.cli import main
from flatd.simulation.raw import (
    RawLayout,
    SimulatedRawSequence,
    simulate_raw_sequence,
    write_raw_sequence,
)

SHAPE = (96, 128)  # image area, (ny, nx)
LAYOUT = RawLayout()


@pytest.fixture(scope="module")
def raw() -> SimulatedRawSequence:
    return simulate_raw_sequence(
        SHAPE, 4, seed=3, stars=False, cosmic_rays=False, dark_current=True
    )


def image_columns(layout: RawLayout = LAYOUT) -> slice:
    return slice(layout.prescan, layout.prescan + SHAPE[1])


def test_frames_are_uint16_readouts_with_prescan_and_overscan(raw: SimulatedRawSequence) -> None:
    ny, nx = SHAPE
    for frame, header in zip(raw.frames, raw.headers, strict=True):
        assert frame.dtype == np.uint16
        assert frame.shape == (ny, LAYOUT.prescan + nx + LAYOUT.overscan)
        assert header["BIASSEC"] == f"[{8 + nx + 3}:{8 + nx + 32},1:{ny}]"
        assert header["TRIMSEC"] == header["DATASEC"] == f"[9:{8 + nx},1:{ny}]"
        assert detect_raw(header).is_raw
    for level in raw.bias_levels:
        assert 1000 <= level <= 1600
    assert max(raw.bias_levels) - min(raw.bias_levels) < 30  # a few ADU of drift


def test_overscan_and_prescan_carry_the_bias_and_its_row_pattern(
    raw: SimulatedRawSequence,
) -> None:
    """A bias readout (no light, no exposure): the overscan tracks a per-row offset that is
    also in the image rows; subtracting each row's overscan median removes it, which the
    bias level alone does not."""
    detector = raw.detector
    frame, level = detector.readout(np.zeros(SHAPE, np.float32), 0.0, np.random.default_rng(1))
    frame = frame.astype(np.float64)
    overscan = np.median(frame[:, -(LAYOUT.overscan - LAYOUT.skip) :], axis=1)
    prescan = np.median(frame[:, : LAYOUT.prescan], axis=1)
    image = frame[:, image_columns()] - detector.structure
    assert np.median(overscan) == pytest.approx(level, abs=1.0)
    assert 1000 <= level <= 1600
    assert np.ptp(overscan - level) > 6  # a row pattern of several ADU
    assert np.corrcoef(overscan, prescan)[0, 1] > 0.8  # the same pattern in the prescan
    assert np.corrcoef(np.median(image, axis=1), overscan)[0, 1] > 0.9  # and in the image
    per_row = np.median(image - overscan[:, None], axis=1)
    level_only = np.median(image - level, axis=1)
    assert np.std(per_row) < 0.3 * np.std(level_only)


def test_the_image_columns_hold_the_light_through_the_flat(raw: SimulatedRawSequence) -> None:
    last = len(raw.frames) - 1
    frame = raw.frames[last].astype(np.float64)[:, image_columns()]
    exposure = float(raw.headers[last]["EXPTIME"])
    signal = frame - raw.bias_levels[last] - raw.master_bias - raw.detector.dark_rate * exposure
    ratio = signal / (raw.levels[last] * raw.true_flat)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.002)  # up to the row pattern


def test_masters_are_what_the_guide_makes(raw: SimulatedRawSequence) -> None:
    assert raw.master_bias.shape == SHAPE and raw.master_bias.dtype == np.float32
    assert abs(np.median(raw.master_bias)) < 10  # overscan-subtracted: structure only
    assert np.std(raw.master_bias - raw.detector.structure) < raw.detector.sigma / 4
    assert raw.bias_header["IMAGETYP"] == "BIAS" and raw.bias_header["COMBINED"] is True
    assert not detect_raw(raw.bias_header).is_raw  # its processing is recorded
    assert raw.master_dark is not None and raw.dark_header is not None
    hot = raw.detector.dark_rate > 1
    assert 0.003 < hot.mean() < 0.03
    exposure = raw.dark_header["EXPTIME"]
    assert np.median(raw.master_dark[hot] / (raw.detector.dark_rate[hot] * exposure)) == (
        pytest.approx(1.0, abs=0.02)
    )


def test_seeded_and_written_as_bzero_uint16(tmp_path: Path, raw: SimulatedRawSequence) -> None:
    again = simulate_raw_sequence(
        SHAPE, 4, seed=3, stars=False, cosmic_rays=False, dark_current=True
    )
    assert all(np.array_equal(a, b) for a, b in zip(raw.frames, again.frames, strict=True))
    files = write_raw_sequence(raw, tmp_path / "night")
    assert [p.name for p in files.frames] == [f"raw_r_{i:03d}.fits" for i in range(4)]
    assert files.bias.parent == tmp_path / "night" / "calibration"
    assert files.dark is not None and files.dark.exists()
    with fits.open(files.frames[0], do_not_scale_image_data=True) as hdul:
        assert hdul[0].header["BITPIX"] == 16 and hdul[0].header["BZERO"] == 32768
    np.testing.assert_array_equal(fits.getdata(files.frames[0]), raw.frames[0])
    np.testing.assert_array_equal(fits.getdata(files.bias), raw.master_bias)


def test_cli_raw_writes_raw_frames_and_masters(tmp_path: Path) -> None:
    out = tmp_path / "cam"
    argv = ["simulate", str(out), "--raw", "--dark", "--filters", "g,r", "--frames", "2"]
    assert main([*argv, "--shape", "40x24", "--quiet", "--truth"]) == 0
    raws = sorted(out.glob("raw_*.fits"))
    assert [p.name for p in raws] == [f"raw_{f}_{i:03d}.fits" for f in "gr" for i in range(2)]
    assert not list(out.glob("flat_*"))
    masters = sorted(p.name for p in (out / "calibration").iterdir())
    assert masters == ["master_bias_20261123T153000.fits", "master_dark_20261123T153000.fits"]
    data, header = fits.getdata(raws[0], header=True)
    assert data.dtype == np.uint16 and data.shape == (24, 8 + 40 + 32)
    assert fits.getdata(out / "calibration" / masters[0]).shape == (24, 40)
    assert fits.getdata(out / "truth" / "true_flat_g.fits").shape == (24, 40)
    assert detect_raw(header).is_raw


def test_cli_dark_needs_raw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(tmp_path / "x"), "--dark", "--quiet"]) == 2
    assert "--dark needs --raw" in capsys.readouterr().err
