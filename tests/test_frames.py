"""One file's header to a Frame or a reason: flats, non-flats, broken files, formats."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.config import FramesConfig
from flatd.frames import Frame, Skip, read_frame

CONFIG = FramesConfig()


def test_a_flat_becomes_a_frame_with_group_date_and_geometry(frame_writer):
    path = frame_writer("f.fits", np.zeros((30, 40), np.uint16), FILTER="g'", GAIN=1.4)
    frame = read_frame(path, CONFIG)
    assert isinstance(frame, Frame)
    assert frame.group == (
        ("FILTER", "g'"),
        ("INSTRUME", "SIMCAM"),
        ("XBINNING", 1),
        ("YBINNING", 1),
    )
    assert frame.shape == (30, 40)
    assert (frame.bitpix, frame.bzero, frame.compression) == (16, 32768.0, "none")
    assert frame.date.isoformat() == "2026-11-23T17:30:00+00:00"
    assert frame.extras == {"GAIN": 1.4}
    assert frame.binning == (1, 1)
    assert frame.type_keyword == "IMAGETYP"
    assert dict(frame.sources) == {
        "FILTER": "FILTER",
        "INSTRUME": "INSTRUME",
        "XBINNING": "XBINNING+YBINNING",
        "YBINNING": "XBINNING+YBINNING",
    }
    assert (frame.date_source, frame.date_note) == ("DATE-OBS", "")
    with fits.open(path) as hdul:
        assert frame.data_offset == hdul[0].fileinfo()["datLoc"]


@pytest.mark.parametrize("imagetyp", ["FLAT", "flat field", "  SkyFlat ", "TWIFLAT"])
def test_flat_types_match_case_insensitively(frame_writer, imagetyp):
    assert isinstance(read_frame(frame_writer("f.fits", IMAGETYP=imagetyp), CONFIG), Frame)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"IMAGETYP": "Bias Frame"}, "IMAGETYP = 'Bias Frame' is not a flat"),
        (
            {"IMAGETYP": None},
            "no frame type keyword (looked for IMAGETYP, OBSTYPE, FRAME, HIERARCH ESO DPR "
            "TYPE, DATA-TYP)",
        ),
        ({"COMBINED": True}, "already combined"),
        ({"FLATDVER": "0.1.0"}, "a flatd master"),
    ],
)
def test_non_inputs_are_skipped_with_a_reason(frame_writer, header, reason):
    skip = read_frame(frame_writer("f.fits", **header), CONFIG)
    assert isinstance(skip, Skip)
    assert (skip.kind, reason in skip.reason) == ("skipped", True)


def test_a_flat_without_a_filter_keyword_is_grouped_as_having_none(frame_writer):
    frame = read_frame(frame_writer("f.fits", FILTER=None), CONFIG)
    assert isinstance(frame, Frame)
    assert dict(frame.group)["FILTER"] == "no-filter"
    assert dict(frame.sources)["FILTER"] == ""


def test_a_flat_without_a_required_key_is_rejected(frame_writer):
    config = FramesConfig(required=("FILTER",))
    skip = read_frame(frame_writer("f.fits", FILTER=None), config)
    assert isinstance(skip, Skip)
    assert skip.kind == "rejected"
    assert skip.reason == (
        "flat without FILTER (looked for FILTER, FILTNAME, FILTERS, FILTER1+FILTER2, "
        "HIERARCH ESO INS FILT1 NAME, FILTER01): frames.required"
    )


def test_broken_files_are_rejected_with_reasons(tmp_path: Path, frame_writer):
    good = frame_writer("good.fits", np.ones((50, 60), np.float32)).read_bytes()
    cases = {
        "empty.fits": (b"", "empty file"),
        "junk.fits": (bytes(range(256)) * 20, "not a FITS file"),
        "short-header.fits": (good[:1000], "truncated header"),
        "truncated.fits": (good[:4000], "truncated: 14880 bytes expected, 4000 on disk"),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    frame_writer("cube.fits", np.zeros((3, 5, 5), np.float32))
    fits.PrimaryHDU(
        None,
        fits.Header(
            {"IMAGETYP": "FLAT", "FILTER": "r", "INSTRUME": "X", "XBINNING": 1, "YBINNING": 1}
        ),
    ).writeto(tmp_path / "nodata.fits")
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
    ).writeto(tmp_path / "table.fits")
    cases |= {
        "cube.fits": (None, "not a 2-D image: NAXIS = 3"),
        "nodata.fits": (None, "no image data"),
        "table.fits": (None, "no image: first extension is a BINTABLE"),
    }
    for name, (_, reason) in cases.items():
        skip = read_frame(tmp_path / name, CONFIG)
        assert isinstance(skip, Skip), name
        assert skip.kind == "rejected", name
        assert reason in skip.reason, (name, skip.reason)


def test_gzip_and_tile_compressed_frames(tmp_path: Path, frame_writer):
    data = np.arange(24 * 32, dtype=np.float32).reshape(24, 32)
    plain = frame_writer("a.fits", data, FILTER="i")
    with gzip.open(tmp_path / "b.fits.gz", "wb") as out:
        out.write(plain.read_bytes())
    header = fits.getheader(plain)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)]).writeto(
        tmp_path / "c.fits.fz"
    )
    gz, fz = read_frame(tmp_path / "b.fits.gz", CONFIG), read_frame(tmp_path / "c.fits.fz", CONFIG)
    assert isinstance(gz, Frame) and isinstance(fz, Frame)
    assert (gz.compression, gz.hdu, gz.shape) == ("gzip", 0, (24, 32))
    assert (fz.compression, fz.hdu, fz.shape, fz.bitpix) == ("tile", 1, (24, 32), -32)
    assert gz.group == fz.group == read_frame(plain, CONFIG).group


def test_date_falls_back_to_file_time_and_says_so(frame_writer):
    frame = read_frame(frame_writer("f.fits", **{"DATE-OBS": "last tuesday"}), CONFIG)
    assert isinstance(frame, Frame)
    assert frame.date_from_header is False
    assert frame.date_source == ""
    assert frame.date_note == "DATE-OBS = 'last tuesday' is not a date"
    assert abs(frame.date.timestamp() - time.time()) < 60


def test_reading_a_header_is_cheap(tmp_path: Path, frame_writer):
    header = {f"KEY{i}": i for i in range(150)}
    paths = [
        frame_writer(f"f{i}.fits", np.zeros((64, 64), np.float32), **header) for i in range(200)
    ]
    started = time.perf_counter()
    for path in paths:
        read_frame(path, CONFIG)
    per_file = (time.perf_counter() - started) / len(paths)
    # generous bound (CI machines vary): ccdproc's ImageFileCollection needs ~4.5 ms
    assert per_file < 0.004


PLAIN_CARDS = [
    "FILTER  = 'r       '           / filter",
    "IMAGETYP= 'Flat Field'",
    "XBINNING=                    1 / bin",
    "GAIN    =                  1.4",
    "EXPTIME =               5.0E+0",
    "X       =                1.5D3",
    "SIMPLE  =                    T",
    "EXTEND  =                    F / ext",
    "NAME    = 'it''s   '",
    "DATE-OBS= '2026-11-23T17:30:00.000' / UTC",
    "EMPTY   =",
    "NEG     =                  -42",
    "NEGF    =                 -.25",
    "BZERO   =                32768",
    "STR2    = '  lead'",
    "CPLX    = (1.0, 2.0)",
    "LONG    = 'abc&'",
    "QUOTE   = 'a''''b'   / two quotes",
]


@pytest.mark.parametrize("card", PLAIN_CARDS)
def test_the_fast_card_parser_agrees_with_astropy(card: str):
    from flatd.frames import NOT_SIMPLE, simple_value

    image = card.ljust(80)
    value = simple_value(image)
    expected = fits.Card.fromstring(image).value
    if isinstance(expected, fits.card.Undefined):
        expected = None
    if value is not NOT_SIMPLE:
        assert (value, type(value)) == (expected, type(expected))


# -- raw frames (issue 12): refused by default, marked when they are to be calibrated -----------
# IRAF noao.imred.ccdred, `help ccdgeometry`: BIASSEC is the overscan strip, TRIMSEC the part
# kept, both as 1-based [columns,rows] sections.
RAW_CARDS = {"BIASSEC": "[33:40,1:24]", "TRIMSEC": "[1:32,1:24]", "BUNIT": "adu"}
RAW_DATA = np.full((24, 40), 1500, np.uint16)


def test_a_raw_flat_is_refused_by_default_saying_what_to_configure(frame_writer):
    skip = read_frame(frame_writer("raw.fits", RAW_DATA, **RAW_CARDS), CONFIG)
    assert isinstance(skip, Skip) and skip.kind == "rejected"
    assert skip.reason.startswith("raw frame: BIASSEC = '[33:40,1:24]' and no overscan/bias")
    assert skip.reason.endswith('set [calibrate] raw = "calibrate" and a master bias to use it')


def test_with_raw_calibrate_a_raw_flat_is_indexed_as_raw(frame_writer):
    from flatd.config import CalibrateConfig

    path = frame_writer("raw.fits", RAW_DATA, **RAW_CARDS)
    frame = read_frame(path, CONFIG, CalibrateConfig(raw="calibrate"))
    assert isinstance(frame, Frame) and frame.raw
    assert frame.overscan == ("BIASSEC", "[33:40,1:24]")
    assert frame.shape == (24, 40)  # as read out: the calibration trims it
    calibrated = read_frame(frame_writer("cal.fits", RAW_DATA), CONFIG)
    assert isinstance(calibrated, Frame) and not calibrated.raw and calibrated.overscan is None


def test_an_overscan_keyword_of_the_config_is_read(frame_writer):
    from flatd.config import CalibrateConfig

    path = frame_writer("raw.fits", RAW_DATA, BSEC1="[33:40,1:24]")
    assert isinstance(read_frame(path, CONFIG), Frame)  # BIASSEC only, by default
    settings = CalibrateConfig(overscan_keywords=("BIASSEC", "BSEC1"))
    skip = read_frame(path, CONFIG, settings)
    assert isinstance(skip, Skip) and skip.reason.startswith("raw frame: BSEC1 = ")


def test_processed_frames_are_not_raw_whatever_card_records_it(tmp_path: Path):
    """The records are parsed from the header blocks like any wanted card: IRAF's (`help
    ccdlist`, example 5) and those ccdproc itself writes, whose long names are HIERARCH
    cards (`HIERARCH SUBTRACT_OVERSCAN = 'suboscan'`)."""
    import ccdproc
    from astropy.nddata import CCDData

    header = fits.Header({**_flat_cards(), **RAW_CARDS})
    ccd = CCDData(RAW_DATA.astype(np.float32), unit="adu", meta=header)
    ccd = ccdproc.subtract_overscan(ccd, fits_section=RAW_CARDS["BIASSEC"], median=True)
    ccd.write(tmp_path / "ccdproc.fits")
    assert "HIERARCH SUBTRACT_OVERSCAN" in (tmp_path / "ccdproc.fits").read_bytes().decode()
    iraf = tmp_path / "iraf.fits"
    fits.PrimaryHDU(
        RAW_DATA,
        fits.Header(
            {**header, "OVERSCAN": "Jun  2 18:18 Overscan section is [33:40,*] with mean=1500"}
        ),
    ).writeto(iraf)
    only_hierarch = tmp_path / "hierarch.fits"
    only_hierarch.write_bytes((tmp_path / "ccdproc.fits").read_bytes())
    fits.delval(only_hierarch, "SUBOSCAN")  # the long-named record alone still says it
    for path in (tmp_path / "ccdproc.fits", only_hierarch, iraf):
        frame = read_frame(path, CONFIG)
        assert isinstance(frame, Frame) and not frame.raw, path.name


def test_the_binning_role_reads_any_header_mapping():
    """One rule for the frames' binning and the master biases' (`calibrate.library`): the
    reader's cards, or an astropy Header's keywords, whose HIERARCH ones lose the prefix."""
    from flatd.frames import binning_of

    assert binning_of({"CCDSUM": "2 2"}) == (2, 2)
    assert binning_of({"XBINNING": 3, "YBINNING": 1}) == (3, 1)
    eso = fits.Header()
    eso["HIERARCH ESO DET WIN1 BINX"] = 2  # ESO's DICB dictionary: DET WIN1 BINX/BINY
    eso["HIERARCH ESO DET WIN1 BINY"] = 2
    assert binning_of({card.keyword: card.value for card in eso.cards}) == (2, 2)
    assert binning_of({"HIERARCH ESO DET WIN1 BINX": 4}) == (4, 4)
    assert binning_of({"BINNING": "2x1"}, ("BINNING",)) == (2, 1)
    assert binning_of({"FILTER": "r"}) is None


def _flat_cards() -> dict[str, object]:
    from tests.helpers import FLAT_HEADER

    return dict(FLAT_HEADER)
