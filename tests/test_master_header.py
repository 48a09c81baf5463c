"""A master's header: no input card can stop it, and it says what it is.

The hostile cards (tests/hostile.py says which rule of the FITS Standard each one breaks)
are written byte for byte as 80-character card images, the way real files break them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData
from structlog.testing import capture_logs

from flatd.config import Config, parse_config
from flatd.frames import Skip, read_frame
from flatd.inputs.index import index_paths
from flatd.outputs import cards, masters
from flatd.pipeline import make_master
from flatd.quality import qa
from flatd.simulation.flats import fits_bytes, simulate_sequence
from tests.hostile import LONG_PIECE, hostile_file

ccdproc = pytest.importorskip("ccdproc")

SHAPE = (32, 48)
DROPPED = {  # keyword as flatd names it -> a word of the reason it was dropped
    "NONASCII": "non-ASCII",
    "TAB": "control",
    "CMT\\xe9": "non-ASCII",
    "EQNOSP": "value indicator",
    "DUPKEY": "duplicate",
    "CONTINUE": "CONTINUE",
    "BIGNUM": "cannot be written",
}


@contextlib.contextmanager
def debug_events() -> Iterator[list[dict[str, Any]]]:
    """structlog's events down to debug level, whatever level another test configured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as events:
            yield events
    finally:
        structlog.configure(**saved)


@pytest.fixture
def hostile_sequence(tmp_path: Path) -> tuple[list[Path], Config]:
    seq = simulate_sequence(SHAPE, 5, seed=3, stars=False, cosmic_rays=False)
    incoming = tmp_path / "in"
    incoming.mkdir()
    paths = [
        hostile_file(incoming / f"hostile_{i}.fits", data, header)
        for i, (data, header) in enumerate(zip(seq.frames, seq.headers, strict=True))
    ]
    config = parse_config({"output": {"directory": str(tmp_path / "out"), "preview": False}})
    return paths, config


def test_the_hostile_cards_are_what_astropy_refuses_to_write(hostile_sequence) -> None:
    """The premise: copying such a header as it is makes astropy's writer fail."""
    paths, _ = hostile_sequence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(paths[0]) as hdul:
            copied = fits.Header([c for c in hdul[0].header.cards if c.keyword[:5] != "NAXIS"])
        with pytest.raises(fits.VerifyError):
            fits.PrimaryHDU(np.ones((2, 2), np.float32), copied).writeto(paths[0].parent / "x")


def test_a_hostile_header_still_makes_a_master_that_reads_back(hostile_sequence) -> None:
    paths, config = hostile_sequence
    [sequence] = index_paths([paths[0].parent], config).sequences()
    with debug_events() as events:
        result = make_master(sequence, config)
    assert result.outcome == "done", result.reason
    path = result.record.path

    ccd = CCDData.read(path)
    assert ccd.unit == u.dimensionless_unscaled and ccd.data.shape == SHAPE
    with fits.open(path) as hdul:
        hdul.verify("exception")  # every card of the master is standard FITS
        header = hdul[0].header
    # fixed where astropy can: quoted, upper-cased, kept once
    assert header["SITE"] == "Kitt Peak" and header["PROGRAM"] == "T1"
    assert header["FLAG"] == "Y" and header["BADLOG"] == "t"
    assert header["QUOTE"] == "'unterminated"
    assert header["FILTER"] == "r"  # the group's value; the lower-case card was a duplicate
    assert header["DUPKEY"] == 1
    assert header["ESO DET WIN1 BINX"] == 1
    odd = [c.value for c in header.cards if c.keyword == "odd/key!*?"]  # (* and ? are globs)
    assert odd == ["hierarch with odd characters"]
    assert header["LONGSTR"] == "a" * 66 + LONG_PIECE * 40 + "the end"
    assert header["ORPHAN"] == 7
    # dropped, each with a debug event naming it and why
    for keyword in ("NONASCII", "TAB", "EQNOSP", "BIGNUM", "RA"):
        assert keyword not in header
    assert "CONTINUE" not in header and "" not in header
    dropped = {e["keyword"]: e for e in events if e["event"] == "header_card_dropped"}
    for keyword, word in DROPPED.items():
        assert keyword in dropped, sorted(dropped)
        assert word in dropped[keyword]["reason"] and dropped[keyword]["log_level"] == "debug"
        assert dropped[keyword]["path"] == str(sequence.frames[0].path)
    assert "\n" not in "".join(e["reason"] for e in dropped.values())

    # and it flat-fields a science frame as it is
    science = CCDData(np.full(SHAPE, 1000.0, np.float32), unit="adu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corrected = ccdproc.flat_correct(science, ccd)
    assert corrected.unit == u.adu and np.all(np.isfinite(corrected.data))


def test_cards_are_read_from_gzip_and_tile_compressed_inputs(tmp_path: Path) -> None:
    seq = simulate_sequence(SHAPE, 1, seed=4)
    header = seq.headers[0].copy()
    header["SITENAME"] = ("Mount Nowhere", "a card only the input has")
    for compress, suffix, hdu in (("gzip", ".fits.gz", 0), ("tile", ".fits.fz", 1)):
        path = tmp_path / f"frame{suffix}"
        path.write_bytes(fits_bytes(seq.frames[0], header, compress=compress))
        kept, dropped = cards.checked_cards(path, hdu)
        keywords = [card.keyword for card in kept]
        assert "SITENAME" in keywords and "IMAGETYP" in keywords and not dropped
        copied = [k for k in keywords if masters.copied(k, Config())]
        assert "SITENAME" in copied
        # the table that holds a compressed image says nothing a master copies
        assert not [k for k in copied if k.startswith(("Z", "TTYPE", "TFORM", "NAXIS"))]
        assert "XTENSION" not in copied and "EXTNAME" not in copied


def test_an_unreadable_header_costs_its_cards_not_the_master(tmp_path: Path) -> None:
    path = tmp_path / "cut.fits"
    path.write_bytes(b"SIMPLE  =                    T".ljust(80) * 5)  # no END, short block
    kept, dropped = cards.checked_cards(path, 0)
    assert kept == [] and "header unreadable" in dropped[0].reason


# -- what the master says it is ------------------------------------------------------------
FRAME_TYPES = {  # each convention's keyword for the kind of frame, and a flat's value there
    "IMAGETYP": "Flat Field",  # IRAF, MaxIm DL, N.I.N.A., most capture programs
    "OBSTYPE": "SKYFLAT",  # LCO (BANZAI), Gemini, Lowell
    "FRAME": "Flat",  # INDI/KStars
    "HIERARCH ESO DPR TYPE": "FLAT,SKY",  # ESO Data Interface Control Document, DPR.TYPE
    "DATA-TYP": "DOMEFLAT",  # Subaru (NAOJ FITS dictionary)
}
SINGLE_EXPOSURE = {
    "EXPTIME": 5.0,
    "EXPOSURE": 5.0,
    "TIME-OBS": "17:30:00",
    "UT": "17:30:00",
    "UTC-OBS": "17:30:00",
    "UTCSTART": "17:30:00",
    "MJD-OBS": 61367.729,
    "DATE-END": "2026-11-23T17:30:05",
    "JD": 2461368.229,
    "AIRMASS": 1.02,
    "RA": "15:58:11.37",
    "DEC": "+12:00:00",
    "OBJCTRA": "15 58 11.37",
    "CCD-TEMP": -20.1,
    "FOCUSPOS": 12345,
    "CTYPE1": "RA---TAN",
    "CRVAL1": 239.5,
    "CD1_1": 1e-4,
}


@pytest.fixture
def master_of_every_convention(tmp_path: Path):
    seq = simulate_sequence(SHAPE, 5, seed=5, stars=False, cosmic_rays=False)
    incoming = tmp_path / "in"
    incoming.mkdir()
    for i, (data, header) in enumerate(zip(seq.frames, seq.headers, strict=True)):
        header = header.copy()
        for keyword, value in {**FRAME_TYPES, **SINGLE_EXPOSURE}.items():
            header[keyword] = value
        header["TELESCOP"] = "a telescope"  # the same for every frame: kept
        fits.PrimaryHDU(data, header).writeto(incoming / f"flat_{i}.fits")
    config = parse_config({"output": {"directory": str(tmp_path / "out"), "preview": False}})
    [sequence] = index_paths([incoming], config).sequences()
    result = make_master(sequence, config)
    assert result.outcome == "done", result.reason
    return result, config


def test_the_master_says_it_is_a_master_in_every_frame_type_keyword(
    master_of_every_convention,
) -> None:
    result, _ = master_of_every_convention
    header = fits.getheader(result.record.path)
    for keyword in FRAME_TYPES:
        assert header[keyword.removeprefix("HIERARCH ")] == masters.MASTER_IMAGE_TYPE, keyword
    assert header["BUNIT"] == "" and header["COMBINED"] is True
    assert header["TELESCOP"] == "a telescope"
    for keyword in SINGLE_EXPOSURE:
        assert keyword not in header, keyword
    assert "DATE-OBS" not in header  # SEQSTART and SEQEND say when
    assert header["SEQSTART"] == "2026-11-23T17:30:00"
    assert header["QAMASK"] == int(CCDData.read(result.record.path).mask.sum())


def test_flatd_refuses_its_master_as_a_flat_by_its_image_type_alone(
    master_of_every_convention, tmp_path: Path
) -> None:
    result, config = master_of_every_convention
    assert isinstance(read_frame(result.record.path, config.frames), Skip)
    # even with flatd's own marks gone (a script that rewrote the header), the image type
    # alone keeps a master from being taken for a raw flat
    with fits.open(result.record.path) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data.copy()
    for keyword in ("FLATDVER", "COMBINED"):
        del header[keyword]
    stripped = tmp_path / "stripped.fits"
    fits.PrimaryHDU(data, header).writeto(stripped)
    skip = read_frame(stripped, config.frames)
    assert isinstance(skip, Skip) and skip.kind == "skipped", skip
    assert masters.MASTER_IMAGE_TYPE in skip.reason


def test_qamask_counts_the_masked_pixels() -> None:
    data = np.ones(SHAPE, np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[:, 7] = True  # a dead column
    mask[3:5, 20:30] = True  # and a dead block
    assessment = qa.assess(
        data, np.full(SHAPE, 0.01, np.float32), mask, [20000.0], qa.Baseline(), 0.02
    )
    cards_ = {k: v for k, v, _ in assessment.header_cards()}
    assert cards_["QAMASK"] == SHAPE[0] + 20 == assessment.masked_pixels
    assert cards_["QAMASKFR"] == pytest.approx((SHAPE[0] + 20) / mask.size)


def test_a_group_value_astropy_cannot_write_costs_its_card_only(tmp_path: Path) -> None:
    header = fits.Header()
    with debug_events() as events:
        masters._set_checked(header, "FILTER", "g\u00e9")  # non-ASCII: not writable
        masters._set_checked(header, "INSTRUME", "SIMCAM")
    assert "FILTER" not in header and header["INSTRUME"] == "SIMCAM"
    assert [e["keyword"] for e in events if e["event"] == "group_card_dropped"] == ["FILTER"]
