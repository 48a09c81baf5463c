"""Shared test helpers: small real FITS frames written into tmp_path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import structlog
from astropy.io import fits

from flatd.config import Config
from flatd.frames import Frame, read_frame

FLAT_HEADER = {
    "IMAGETYP": "Flat Field",
    "FILTER": "r",
    "INSTRUME": "SIMCAM",
    "XBINNING": 1,
    "YBINNING": 1,
    "DATE-OBS": "2026-11-23T17:30:00",
}


def write_frame(path: Path, data: np.ndarray | None = None, **header: object) -> Path:
    """A flat (by default) with the given header values; `None` values delete the key."""
    cards = {**FLAT_HEADER, **header}
    hdr = fits.Header({k: v for k, v in cards.items() if v is not None})
    if data is None:
        data = np.full((16, 20), 20000.0, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data, hdr).writeto(path)
    return path


def frames_of(paths: list[Path], raw: bool = False) -> list[Frame]:
    """The frames of `paths`, read with the default settings (all must be frames); `raw`:
    raw frames are taken as they are (`[calibrate] raw = "calibrate"`, uncalibrated)."""
    config = Config()
    calibrate = replace(config.calibrate, raw="calibrate") if raw else config.calibrate
    frames = [read_frame(p, config.frames, calibrate) for p in paths]
    assert all(isinstance(f, Frame) for f in frames), frames
    return frames  # type: ignore[return-value]


@pytest.fixture
def frame_writer(tmp_path: Path):
    return lambda name, data=None, **header: write_frame(tmp_path / name, data, **header)


@pytest.fixture(autouse=True)
def _structlog_defaults():
    """Each test starts from structlog's defaults: a command run in-process configures it
    to print to pytest's captured stream, which is closed once that test is over."""
    yield
    structlog.reset_defaults()
