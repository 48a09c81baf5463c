"""Raw detection on headers written the way each convention documents (or, for astropy's
ccdproc, as ccdproc itself writes them): raw frames and already processed ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.calibrate import detect_raw, detection_keywords

ccdproc = pytest.importorskip("ccdproc")

# IRAF noao.imred.ccdred, `help instruments`: the translation-file example's sections
IRAF_RAW = {
    "IMAGETYP": "flat",
    "NAXIS1": 431,
    "NAXIS2": 573,
    "BIASSEC": "[411:431,2:573]",
    "DATASEC": "[14:385,2:573]",
}
# `help ccdlist` (example 5): the processing records ccdproc leaves, one card each
IRAF_OVERSCAN = "Jun  2 18:18 Overscan section is [520:540,*] with mean=481.8784"
IRAF_TRIM = "Jun  2 18:18 Trim data section is [3:510,3:510]"


def test_iraf_raw_frame_is_raw_with_a_reason_that_says_what_to_configure() -> None:
    signs = detect_raw(IRAF_RAW)
    assert signs.is_raw
    assert (signs.overscan_keyword, signs.overscan_section) == ("BIASSEC", "[411:431,2:573]")
    assert signs.reason() == (
        "raw frame: BIASSEC = '[411:431,2:573]' and no overscan/bias subtraction recorded "
        "(no OVERSCAN, ZEROCOR, CCDPROC, SUBOSCAN, SUBBIAS, …); set [calibrate] raw = "
        '"calibrate" and a master bias to use it'
    )


@pytest.mark.parametrize(
    "records",
    [
        {"OVERSCAN": IRAF_OVERSCAN, "TRIM": IRAF_TRIM, "CCDPROC": "CCD processing done"},
        {"ZEROCOR": "Jun  2 18:19 Zero level correction image is Zero"},
        {"CCDPROC": "Jun  2 18:19 CCD processing done"},
    ],
)
def test_iraf_processed_frame_is_not_raw(records: dict[str, str]) -> None:
    signs = detect_raw({**IRAF_RAW, **records})
    assert not signs.is_raw
    assert signs.reason().startswith("not raw: BIASSEC present but ")


def test_trimming_alone_removes_no_bias() -> None:
    signs = detect_raw({**IRAF_RAW, "TRIM": IRAF_TRIM})
    assert signs.is_raw and signs.trimmed == ("TRIM",)
    assert "(trimmed: TRIM)" in signs.reason()


@pytest.mark.parametrize("not_done", [0, False, "0", "F", " ", None])
def test_a_flag_saying_not_done_is_no_record(not_done: object) -> None:
    """NOAO's old headers write 0 for 'not done' (ccdred `help instruments`); BANZAI writes
    L1STATOV = 0 when there was no overscan to subtract (banzai/bias.py)."""
    assert detect_raw({**IRAF_RAW, "OVERSCAN": not_done}).is_raw
    assert detect_raw({**IRAF_RAW, "L1STATOV": not_done}).is_raw


def test_banzai_and_maxim_records() -> None:
    # BANZAI OverscanSubtractor / BiasSubtractor (banzai/bias.py): status flags 1 = done
    assert not detect_raw({**IRAF_RAW, "L1STATOV": 1, "OVERSCAN": 1503.2}).is_raw
    assert not detect_raw({**IRAF_RAW, "L1STATBI": 1}).is_raw
    # MaxIm DL: CALSTAT letters B (bias), D (dark), F (flat)
    assert not detect_raw({**IRAF_RAW, "CALSTAT": "BDF"}).is_raw
    assert detect_raw({**IRAF_RAW, "CALSTAT": "F"}).is_raw


def ccdproc_header(tmp_path: Path, *steps: str) -> fits.Header:
    """The header of a frame run through ccdproc's `steps` and written by CCDData.write:
    whatever ccdproc's log_to_metadata records is what this test reads."""
    data = np.full((20, 30), 1500.0, np.float32)
    ccd = ccdproc.CCDData(data, unit="adu", meta=fits.Header({"BIASSEC": "[25:30,1:20]"}))
    if "subtract_overscan" in steps:
        ccd = ccdproc.subtract_overscan(ccd, fits_section="[25:30,1:20]", median=True)
    if "trim_image" in steps:
        ccd = ccdproc.trim_image(ccd, fits_section="[1:24,1:20]")
    if "subtract_bias" in steps:
        ccd = ccdproc.subtract_bias(ccd, ccdproc.CCDData(np.zeros(ccd.shape), unit="adu"))
    path = tmp_path / f"{'-'.join(steps) or 'raw'}.fits"
    ccd.write(path)
    return fits.getheader(path)


def test_astropy_ccdproc_records_as_ccdproc_writes_them(tmp_path: Path) -> None:
    assert detect_raw(ccdproc_header(tmp_path)).is_raw
    overscanned = ccdproc_header(tmp_path, "subtract_overscan")
    assert "SUBOSCAN" in overscanned and "SUBTRACT_OVERSCAN" in overscanned  # HIERARCH
    assert detect_raw(overscanned).bias_removed == ("SUBOSCAN", "SUBTRACT_OVERSCAN")
    trimmed = detect_raw(ccdproc_header(tmp_path, "trim_image"))
    assert trimmed.is_raw and trimmed.trimmed == ("TRIMIM", "TRIM_IMAGE")
    biased = detect_raw(ccdproc_header(tmp_path, "trim_image", "subtract_bias"))
    assert not biased.is_raw and "SUBBIAS" in biased.bias_removed


def test_plain_cards_from_a_header_reader() -> None:
    """As flatd's block reader gives them: upper-case keys, HIERARCH keys by their name."""
    cards = {"BIASSEC": "[1388:1432,1:1370]", "HIERARCH SUBTRACT_BIAS": "subbias"}
    assert not detect_raw(cards).is_raw
    assert detect_raw({"biassec": "[1388:1432,1:1370]"}).is_raw
    assert not detect_raw({"BIASSEC": ""}).is_raw  # an empty section is no overscan
    assert not detect_raw({"IMAGETYP": "flat"}).is_raw
    assert detect_raw({}).reason() == "not raw: no overscan section (BIASSEC)"


def test_configured_overscan_keywords() -> None:
    cards = {"OVSCSEC": "[2049:2080,1:2048]"}
    assert not detect_raw(cards).is_raw
    signs = detect_raw(cards, overscan_keywords=("BIASSEC", "ovscsec"))
    assert signs.is_raw and signs.overscan_keyword == "OVSCSEC"
    assert {"OVSCSEC", "SUBBIAS", "ZEROCOR", "CALSTAT"} <= detection_keywords(["OvScSec"])
