"""The astropy CCD reduction guide's own steps, done with ccdproc in the tests, as the
references flatd's calibrated masters are compared with (chapters "Calibrating the flats"
and "Combining flats" of https://www.astropy.org/ccd-reduction-and-photometry-guide/).

Shared by tests/test_calibrate.py (the calibration unit) and tests/test_raw_frames.py
(`flatd combine` and `flatd run` end to end).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.nddata import CCDData
from astropy.stats import mad_std


def guide_calibrate(
    path: Path, bias: Path | None, dark: Path | None = None, model: object = None
) -> CCDData:
    """The astropy guide's "Calibrating the flats" on one raw file: overscan (median of each
    row), trim, master bias, master dark scaled by exposure time."""
    import ccdproc

    ccd = CCDData.read(path, unit="adu")
    ccd = ccdproc.subtract_overscan(
        ccd, fits_section=ccd.header["BIASSEC"], overscan_axis=1, median=True, model=model
    )
    ccd = ccdproc.trim_image(ccd, fits_section=ccd.header["TRIMSEC"])
    if bias is not None:
        ccd = ccdproc.subtract_bias(ccd, CCDData.read(bias, unit="adu"))
    if dark is not None:
        ccd = ccdproc.subtract_dark(
            ccd,
            CCDData.read(dark, unit="adu"),
            exposure_time="exptime",
            exposure_unit=u.second,
            scale=True,
        )
    return ccd


def write_guide_calibrated(paths: list[Path], bias: Path, directory: Path) -> list[Path]:
    """Each raw file calibrated the guide's way and written as float32, as the guide writes
    its calibrated flats (ccdproc's records in the header say what was done)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        ccd = guide_calibrate(path, bias)
        written.append(directory / f"guide_{path.name}")
        CCDData(ccd.data.astype(np.float32), unit="adu", meta=ccd.meta).write(written[-1])
    return written


def guide_combine(ccds: list) -> np.ndarray:
    """The guide's "Combining flats" (with `sigma_clip_dev_func` spelled right), median 1."""
    import ccdproc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        master = ccdproc.combine(
            ccds,
            method="average",
            scale=lambda a: 1 / np.ma.median(a),
            sigma_clip=True,
            sigma_clip_low_thresh=5,
            sigma_clip_high_thresh=5,
            sigma_clip_func=np.ma.median,
            sigma_clip_dev_func=mad_std,
            mem_limit=350e6,
        )
    return master.data / np.median(master.data)


def rms(a: np.ndarray, b: np.ndarray) -> float:
    """Robust rms of the ratio a/b about its median: how far two flats lie apart."""
    ratio = a / b
    return float(np.std(ratio / np.median(ratio) - 1))
