"""Raw frames that cannot be calibrated as configured: each a named, one-line reason, and
nothing written; and the `[calibrate]` settings themselves."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.calibrate import (
    CalibrationError,
    Calibrator,
    MasterLibraries,
    Workspace,
    plan,
    settings_problems,
)
from flatd.config import CalibrateConfig, ConfigError, load_config, parse_config
from flatd.simulation.raw import RawFiles, simulate_raw_sequence, write_raw_sequence

REPO = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> RawFiles:
    sequence = simulate_raw_sequence((24, 32), 3, seed=2, dark_current=True)
    return write_raw_sequence(sequence, tmp_path_factory.mktemp("night"))


def configured(files: RawFiles, **overrides: object) -> CalibrateConfig:
    return CalibrateConfig(raw="calibrate", bias=str(files.bias), **overrides)  # type: ignore[arg-type]


def calibrate_one(path: Path, files: RawFiles, output: Path, **overrides: object) -> None:
    config = configured(files, **overrides)
    first = fits.getheader(files.frames[0])
    recipe = plan(config, first, START, MasterLibraries.from_settings(config, Path("/")))
    with Workspace(output) as work, Calibrator(recipe) as calibrator:
        try:
            calibrator.calibrate(path, work)
        finally:
            assert not list(work.path.iterdir())  # nothing half-written is left behind


def edited(files: RawFiles, tmp_path: Path, **cards: object) -> Path:
    """A copy of the first raw frame with `cards` set (None deletes)."""
    data, header = fits.getdata(files.frames[0], header=True)
    for keyword, value in cards.items():
        if value is None:
            del header[keyword]
        else:
            header[keyword] = value
    path = tmp_path / "edited.fits"
    fits.PrimaryHDU(data, header).writeto(path)
    return path


@pytest.mark.parametrize(
    ("cards", "reason"),
    [
        ({"BIASSEC": "[41:80,1:24]"}, "BIASSEC = '[41:80,1:24]' lies outside the 72x24 image"),
        ({"BIASSEC": "[43:72,1]"}, "BIASSEC = '[43:72,1]' is not a FITS section"),
        ({"BIASSEC": "[72:43,1:24]"}, "is reversed"),
        ({"TRIMSEC": "[9:50,1:24]"}, "TRIMSEC = '[9:50,1:24]' overlaps the overscan BIASSEC"),
        ({"TRIMSEC": None, "DATASEC": None}, "no trim section (TRIMSEC, DATASEC) in the header"),
        ({"BIASSEC": None}, "no overscan section (BIASSEC) in the header"),
        ({"TRIMSEC": "[9:40,2:24]", "DATASEC": None}, "master bias"),
    ],
)
def test_frames_whose_sections_do_not_fit_are_named(
    night: RawFiles, tmp_path: Path, cards: dict, reason: str
) -> None:
    path = edited(night, tmp_path, **cards)
    with pytest.raises(CalibrationError) as info:
        calibrate_one(path, night, tmp_path / "out")
    assert reason in info.value.reason and "\n" not in info.value.reason


def test_a_frame_of_another_binning_is_named(night: RawFiles, tmp_path: Path) -> None:
    path = edited(night, tmp_path, XBINNING=2, YBINNING=2)
    with pytest.raises(CalibrationError, match="binned 1x1, the frames 2x2"):
        calibrate_one(path, night, tmp_path / "out")


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_unreadable_raw_frame_and_missing_exposure(night: RawFiles, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(night.frames[0].read_bytes()[:4000])
    with pytest.raises(CalibrationError, match=r"cannot read raw frame truncated\.fits"):
        calibrate_one(truncated, night, tmp_path / "out")
    no_exposure = edited(night, tmp_path, EXPTIME=None)
    with pytest.raises(CalibrationError, match="no EXPTIME to scale the master dark by"):
        calibrate_one(no_exposure, night, tmp_path / "out", dark=str(night.dark))


def test_a_master_replaced_after_it_was_chosen(night: RawFiles, tmp_path: Path) -> None:
    bias = tmp_path / "bias.fits"
    bias.write_bytes(night.bias.read_bytes())
    config = CalibrateConfig(raw="calibrate", bias=str(bias))
    first = fits.getheader(night.frames[0])
    recipe = plan(config, first, START, MasterLibraries.from_settings(config, Path("/")))
    fits.PrimaryHDU(np.zeros((5, 5), np.float32)).writeto(bias, overwrite=True)
    with (
        Workspace(tmp_path) as work,
        Calibrator(recipe) as calibrator,
        pytest.raises(CalibrationError, match=r"bias\.fits changed since chosen"),
    ):
        calibrator.calibrate(night.frames[0], work)


def test_settings_that_remove_no_bias_are_refused(night: RawFiles) -> None:
    assert settings_problems(CalibrateConfig()) == []
    nothing = CalibrateConfig(raw="calibrate", overscan=False)
    assert settings_problems(nothing) == [
        'calibrate.raw = "calibrate" needs calibrate.overscan = true or a calibrate.bias: '
        "nothing else removes the bias level"
    ]
    with pytest.raises(CalibrationError, match="nothing else removes the bias level"):
        plan(nothing, fits.getheader(night.frames[0]), START, MasterLibraries(None, None))
    degree = settings_problems(CalibrateConfig(overscan_degree=3))
    assert degree == [
        "calibrate.overscan_degree applies to a fitted overscan_model (chebyshev, legendre, "
        'polynomial), not to "median"'
    ]


def test_overscan_alone_and_bias_alone(night: RawFiles, tmp_path: Path) -> None:
    first = fits.getheader(night.frames[0])
    for config, steps in (
        (CalibrateConfig(raw="calibrate"), ("subtract_overscan", "trim_image")),
        (configured(night, overscan=False), ("trim_image", "subtract_bias")),
    ):
        libraries = MasterLibraries.from_settings(config, Path("/"))
        recipe = plan(config, first, START, libraries)
        assert recipe.steps == steps
        with Workspace(tmp_path) as work, Calibrator(recipe) as calibrator:
            frame = calibrator.calibrate(night.frames[0], work)
            assert fits.getval(frame.path, "CALSTEPS") == ",".join(steps)


def test_calibrate_section_of_the_config() -> None:
    assert parse_config({}).calibrate == CalibrateConfig()
    from_file = load_config(REPO / "config.toml")
    assert from_file.calibrate == CalibrateConfig()  # the repo's file is the default
    parsed = parse_config(
        {"calibrate": {"raw": "calibrate", "bias": "bias/", "overscan_model": "chebyshev"}}
    )
    assert parsed.calibrate.raw == "calibrate" and parsed.calibrate.bias == "bias/"
    with pytest.raises(ConfigError) as info:
        parse_config({"calibrate": {"raw": "yes", "overscan_modl": "mean", "trim": "no"}})
    assert info.value.problems == [
        'calibrate.raw = "yes" is not allowed; choose one of "reject", "calibrate"',
        "unknown key calibrate.overscan_modl; did you mean calibrate.overscan_model?",
        "calibrate.trim must be true or false, got str 'no'",
    ]


def test_relative_master_paths_are_relative_to_the_config_directory(tmp_path: Path) -> None:
    config = CalibrateConfig(raw="calibrate", bias="calibration/bias", dark="/abs/dark.fits")
    libraries = MasterLibraries.from_settings(config, tmp_path)
    assert libraries.bias is not None and libraries.bias.source == tmp_path / "calibration/bias"
    assert libraries.dark is not None and libraries.dark.source == Path("/abs/dark.fits")
    assert MasterLibraries.from_settings(CalibrateConfig(), tmp_path).bias is None
