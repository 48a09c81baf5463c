"""Which master bias (or dark) calibrates a sequence: the newest one taken before it with
its shape and binning; every misfit a named reason, none used wrongly."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.calibrate import (
    CalibrationError,
    CalibrationUnavailable,
    MasterLibrary,
    read_master,
)

SHAPE = (24, 32)  # calibrated frames (ny, nx)
START = datetime(2026, 11, 23, 17, 30, tzinfo=UTC)  # the sequence's first frame


def master(
    path: Path, date: str | None = "2026-11-23T15:00:00", shape=SHAPE, kind="BIAS", **cards
) -> Path:
    header = fits.Header({"IMAGETYP": kind, "XBINNING": 1, "YBINNING": 1, "COMBINED": True})
    if date is not None:
        header["DATE-OBS"] = date
    for keyword, value in cards.items():
        if value is None:
            del header[keyword]
        else:
            header[keyword] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(np.zeros(shape, np.float32), header).writeto(path)
    return path


def test_newest_fitting_master_before_the_sequence_is_chosen(tmp_path: Path) -> None:
    biases = tmp_path / "biases"
    master(biases / "old.fits", "2026-11-20T15:00:00")
    chosen = master(biases / "afternoon.fits", "2026-11-23T15:00:00")
    master(biases / "morning_after.fits", "2026-11-24T08:00:00")  # after the sequence
    master(biases / "small.fits", "2026-11-23T16:00:00", shape=(12, 16))
    master(biases / "binned.fits", "2026-11-23T16:00:00", XBINNING=2, YBINNING=2)
    master(biases / "dark.fits", "2026-11-23T16:30:00", kind="DARK", EXPTIME=300.0)
    master(biases / "flat.fits", "2026-11-23T16:30:00", kind="Flat Field")
    (biases / "notes.txt").write_text("not a frame")
    selected = MasterLibrary(biases, "bias").select(SHAPE, (1, 1), START)
    assert selected.path == chosen and selected.date_from_header
    assert selected.describe() == "afternoon.fits (32x24, binning 1x1, 2026-11-23T15:00:00)"
    dark = MasterLibrary(biases, "dark").select(SHAPE, (1, 1), START)
    assert dark.path.name == "dark.fits" and dark.exptime == 300.0


def test_binning_from_ccdsum_and_unknown_binning(tmp_path: Path) -> None:
    path = master(tmp_path / "b.fits", XBINNING=None, YBINNING=None, CCDSUM="2 2")
    assert read_master(path, "bias").binning == (2, 2)
    with pytest.raises(CalibrationError, match=r"binned 2x2, the frames 1x1"):
        MasterLibrary(path, "bias").select(SHAPE, (1, 1), START)
    unknown = master(tmp_path / "u.fits", XBINNING=None, YBINNING=None)
    assert MasterLibrary(unknown, "bias").select(SHAPE, (1, 1), START).binning is None


def test_no_fitting_master_yet_is_unavailable_with_what_was_there(tmp_path: Path) -> None:
    biases = tmp_path / "biases"
    master(biases / "morning_after.fits", "2026-11-24T08:00:00")
    master(biases / "small.fits", shape=(12, 16))
    with pytest.raises(CalibrationUnavailable) as info:
        MasterLibrary(biases, "bias").select(SHAPE, (1, 1), START)
    assert info.value.reason == (
        f"no master bias in {biases} for 32x24, binning 1x1, taken before "
        "2026-11-23T17:30:00 (yet): morning_after.fits taken 2026-11-24T08:00:00, after the "
        "sequence; small.fits is 16x12, the calibrated frames 32x24"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationUnavailable, match=r"no master bias in .*empty"):
        MasterLibrary(empty, "bias").select(SHAPE, None, START)
    with pytest.raises(CalibrationUnavailable, match="does not exist"):
        MasterLibrary(tmp_path / "missing.fits", "bias").select(SHAPE, None, START)


def test_a_master_arriving_later_is_found_on_the_next_look(tmp_path: Path) -> None:
    biases = tmp_path / "biases"
    biases.mkdir()
    library = MasterLibrary(biases, "bias")
    with pytest.raises(CalibrationUnavailable):
        library.select(SHAPE, (1, 1), START)
    arrived = master(biases / "bias.fits")
    assert library.select(SHAPE, (1, 1), START).path == arrived


def test_a_named_file_is_used_whatever_its_date_but_must_fit(tmp_path: Path) -> None:
    later = master(tmp_path / "later.fits", "2026-12-01T00:00:00")
    assert MasterLibrary(later, "bias").select(SHAPE, (1, 1), START).path == later
    with pytest.raises(CalibrationError, match=r"later.fits is 32x24, the calibrated frames 16x8"):
        MasterLibrary(later, "bias").select((8, 16), (1, 1), START)


@pytest.mark.parametrize(
    ("cards", "reason"),
    [
        ({"BUNIT": "electron"}, "is in 'electron', raw frames are in ADU"),
        (
            {"BIASSEC": "[33:40,1:24]"},
            "is itself raw (BIASSEC and no overscan/bias subtraction recorded)",
        ),
        ({"kind": "Flat Field"}, "is a 'Flat Field', not a master bias"),
    ],
)
def test_unusable_masters_are_named(tmp_path: Path, cards: dict, reason: str) -> None:
    path = master(tmp_path / "m.fits", **cards)
    with pytest.raises(CalibrationError) as info:
        MasterLibrary(path, "bias").select(SHAPE, None, START)
    assert reason in info.value.reason


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_unreadable_masters_and_a_dark_without_exposure(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"not a FITS file at all" * 200)
    with pytest.raises(CalibrationError, match=r"master bias garbage\.fits is unreadable"):
        MasterLibrary(garbage, "bias").select(SHAPE, None, START)
    dark = master(tmp_path / "dark.fits", kind="DARK")
    with pytest.raises(CalibrationError, match=r"master dark dark\.fits has no EXPTIME"):
        MasterLibrary(dark, "dark").select(SHAPE, None, START)
    # in a directory, an unreadable file is one note among the candidates
    biases = tmp_path / "biases"
    biases.mkdir()
    (biases / "broken.fits").write_bytes(b"SIMPLE  = T" + b" " * 100)
    with pytest.raises(CalibrationUnavailable, match=r"broken\.fits is unreadable"):
        MasterLibrary(biases, "bias").select(SHAPE, None, START)


def test_undated_master_takes_its_file_time(tmp_path: Path) -> None:
    path = master(tmp_path / "undated.fits", date=None)
    found = read_master(path, "bias")
    assert not found.date_from_header
    assert abs(found.date.timestamp() - path.stat().st_mtime) < 1


def test_binning_is_the_frames_binning_role_eso_hierarch_included(tmp_path: Path) -> None:
    """ESO's data interface dictionary: `HIERARCH ESO DET WIN1 BINX/BINY`; the frames
    package's binning role reads it for the masters as for the flats."""
    path = master(
        tmp_path / "eso.fits",
        XBINNING=None,
        YBINNING=None,
        **{"HIERARCH ESO DET WIN1 BINX": 2, "HIERARCH ESO DET WIN1 BINY": 2},
    )
    assert read_master(path, "bias").binning == (2, 2)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_a_master_still_being_written_is_not_a_candidate_until_whole(tmp_path: Path) -> None:
    biases = tmp_path / "biases"
    whole = master(tmp_path / "whole.fits").read_bytes()
    biases.mkdir()
    library = MasterLibrary(biases, "bias")
    empty = library.version()
    (biases / "bias.fits").write_bytes(whole[: len(whole) // 2])  # a copy under way
    half = library.version()
    with pytest.raises(CalibrationUnavailable, match=r"bias.fits is truncated \(still being"):
        library.select(SHAPE, (1, 1), START)
    (biases / "bias.fits").write_bytes(whole)
    assert len({empty, half, library.version()}) == 3  # each step is a change to look at
    assert library.select(SHAPE, (1, 1), START).path == biases / "bias.fits"
    assert library.describe() == f"1 master bias file(s) in {biases}"
    assert MasterLibrary(tmp_path / "none", "bias").describe().endswith("does not exist (yet)")


def test_an_undated_master_fits_any_sequence_after_the_dated_ones(tmp_path: Path) -> None:
    """A master bias without DATE-OBS copied into the directory after the sequence (its
    mtime later than the frames) is still used: the sequence must not wait for it."""
    biases = tmp_path / "biases"
    undated = master(biases / "undated.fits", date=None)
    later = START.timestamp() + 86400
    os.utime(undated, (later, later))
    assert MasterLibrary(biases, "bias").select(SHAPE, (1, 1), START).path == undated
    dated = master(biases / "afternoon.fits", "2026-11-23T15:00:00")
    assert MasterLibrary(biases, "bias").select(SHAPE, (1, 1), START).path == dated
    master(biases / "next_day.fits", "2026-11-24T15:00:00")  # dated after: still not used
    assert MasterLibrary(biases, "bias").select(SHAPE, (1, 1), START).path == dated
