"""Helpers for tests: small real FITS frames written into tmp_path, and the frames read
back with the default settings. Tests import them (`from tests.helpers import ...`);
conftest.py holds only fixtures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.io import fits

from flatd.config import Config
from flatd.frames import Frame, read_frame
from flatd.outputs.masters import name_start

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


def find_masters(output_dir: Path) -> list[Path]:
    """Masters in `output_dir` (not `latest/`), oldest name first."""
    return sorted(p for p in output_dir.glob("flat_*.fits") if p.is_file() and name_start(p))
