"""Where the overscan and the image lie: the axis the overscan is combined along, the cut
when it does not reach along the whole frame, and the slices ccdproc is given."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from flatd.calibrate import CalibrationError, Calibrator, MasterLibraries, Workspace, plan
from flatd.calibrate.geometry import frame_geometry
from flatd.config import CalibrateConfig

ccdproc = pytest.importorskip("ccdproc")

OVERSCAN, TRIM = ("BIASSEC",), ("TRIMSEC", "DATASEC")


def geometry(shape: tuple[int, int], **cards: str):
    return frame_geometry(cards, shape, OVERSCAN, TRIM)


def test_a_strip_of_columns_is_combined_per_row() -> None:
    # the camera: BIASSEC and TRIMSEC of a 1432x1370 readout
    layout = geometry((1370, 1432), BIASSEC="[1388:1432,1:1370]", TRIMSEC="[18:1382,1:1370]")
    assert layout.axis == 1 and not layout.needs_cut
    assert layout.overscan_slices == (slice(0, 1370), slice(1387, 1432))
    assert layout.trim_slices == (slice(0, 1370), slice(17, 1382))
    assert layout.shape == (1370, 1365)
    # wider than tall, still a strip of columns: it covers every row
    small = geometry((24, 72), BIASSEC="[43:72,1:24]", TRIMSEC="[9:40,1:24]")
    assert small.axis == 1 and small.overscan is not None and small.overscan.shape == (24, 30)


def test_a_strip_of_rows_is_combined_per_column() -> None:
    layout = geometry((1056, 1024), BIASSEC="[1:1024,1025:1056]", DATASEC="[1:1024,1:1024]")
    assert layout.axis == 0 and layout.shape == (1024, 1024)
    assert layout.trim is not None and layout.trim.keyword == "DATASEC"


def test_iraf_sections_with_star_and_a_first_row_left_out() -> None:
    # IRAF `help instruments`: biassec [411:431,2:573], datasec [14:385,2:573]
    layout = geometry((573, 431), BIASSEC="[411:431,2:573]", DATASEC="[14:385,2:573]")
    assert layout.axis == 1 and layout.needs_cut
    assert layout.cut == (slice(1, 573), slice(0, 431))
    assert layout.overscan_slices == (slice(0, 572), slice(410, 431))
    assert layout.trim_slices == (slice(0, 572), slice(13, 385))
    star = geometry((573, 431), BIASSEC="[411:431,*]", DATASEC="[14:385,*]")
    assert not star.needs_cut and star.shape == (573, 372)


def test_rows_without_overscan_are_never_kept() -> None:
    with pytest.raises(CalibrationError) as info:
        geometry((573, 431), BIASSEC="[411:431,2:573]", DATASEC="[14:385,1:573]")
    assert info.value.reason == (
        "DATASEC = '[14:385,1:573]' keeps rows that the overscan BIASSEC = '[411:431,2:573]' "
        "does not cover (rows 2-573)"
    )
    with pytest.raises(CalibrationError, match="covers rows 2-573 only and trim = false"):
        frame_geometry({"BIASSEC": "[411:431,2:573]"}, (573, 431), OVERSCAN, None)


def test_partial_overscan_calibrates_like_the_guides_steps_on_the_cut_frame(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    ny, nx = 20, 40
    raw = rng.normal(1500.0, 5.0, (ny, nx)).astype(np.float32)
    raw += np.arange(ny, dtype=np.float32)[:, None]  # a row pattern
    raw[:, 4:32] += 20000.0
    header = fits.Header(
        {"IMAGETYP": "flat", "BIASSEC": "[35:40,2:20]", "TRIMSEC": "[5:32,3:20]", "EXPTIME": 1.0}
    )
    path = tmp_path / "raw.fits"
    fits.PrimaryHDU(np.rint(raw).astype(np.uint16), header).writeto(path)
    config = CalibrateConfig(raw="calibrate")
    recipe = plan(config, fits.getheader(path), datetime.now(UTC), _none())
    with Workspace(tmp_path) as work, Calibrator(recipe) as calibrator:
        ours = fits.getdata(calibrator.calibrate(path, work).path)
    ccd = CCDData.read(path, unit="adu")[1:20, :]
    ccd = ccdproc.subtract_overscan(ccd, overscan=ccd[:, 34:40], median=True, overscan_axis=1)
    reference = ccdproc.trim_image(ccd[1:19, 4:32])
    assert ours.shape == (18, 28)
    np.testing.assert_allclose(ours, reference.data, atol=1e-3)


def _none() -> MasterLibraries:
    return MasterLibraries(bias=None, dark=None)
