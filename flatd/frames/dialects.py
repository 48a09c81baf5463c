"""The header dialects flatd reads, as data: which keywords may say a frame's type, its
filter, binning and instrument, and its date; which type values make a flat.

A new camera is one line of config (`[frames]` in config.toml) or one entry here. The
defaults read every convention in docs/cameras.md; each list is tried in order and the
first keyword present with a non-empty value wins. An entry `A+B` reads two keywords
as one value: two filter wheels (`FILTER1+FILTER2`: the filters that are not an empty
position, joined by `+`), or the x and y binning (`XBINNING+YBINNING`). A binning
keyword on its own holds both factors (`CCDSUM = '2 2'`, `BINNING = '2x2'`) or one
factor for both axes.
"""

from __future__ import annotations

import re

TYPE_KEYWORDS = ("IMAGETYP", "OBSTYPE", "FRAME", "HIERARCH ESO DPR TYPE", "DATA-TYP")

FILTER_KEYWORDS = (
    "FILTER",
    "FILTNAME",
    "FILTERS",
    "FILTER1+FILTER2",
    "HIERARCH ESO INS FILT1 NAME",
    "FILTER01",
)
INSTRUMENT_KEYWORDS = ("INSTRUME", "CAMERA", "DETECTOR")
BINNING_KEYWORDS = (
    "XBINNING+YBINNING",
    "CCDSUM",
    "BINX+BINY",
    "HIERARCH ESO DET WIN1 BINX+HIERARCH ESO DET WIN1 BINY",
    "BIN-FCT1+BIN-FCT2",
    "CCDXBIN+CCDYBIN",
    "BINNING",
)

DATE_KEYWORDS = ("DATE-OBS", "DATE-BEG", "MJD-OBS")
TIME_KEYWORDS = ("TIME-OBS", "UT", "UTC-OBS", "UTCSTART", "UTC")

# -- roles: the canonical group keys and the role each one is read from ------------------
FILTER, INSTRUMENT, XBINNING, YBINNING = "FILTER", "INSTRUME", "XBINNING", "YBINNING"
ROLE_OF_KEY = {FILTER: "filter", INSTRUMENT: "instrument", XBINNING: "binning", YBINNING: "binning"}
DEFAULT_GROUP_BY = (FILTER, INSTRUMENT, XBINNING, YBINNING)


def missing_value(key: str) -> str:
    """The group value of a key the frame has no keyword for: `no-filter`,
    `no-instrument`, `no-binning`, `no-<key>` for the user's keys. A safe, readable
    part of a master's name (letters, digits and `-`, never shortened), so that the
    parts of a name keep their places: `flat_no-filter_SIMCAM_1_1_<start>.fits`."""
    role = ROLE_OF_KEY.get(key) or re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")
    return f"no-{role[:29]}"


# -- the flat rule ---------------------------------------------------------------------------
FLAT_WORD = "flat"
# words that make a type value something other than a raw flat, wherever they appear in it:
# darks for flats (DARKFLAT, Dark Flat, FlatDark), bias ('ZERO' in IRAF), flatd's and other
# pipelines' products (Master Flat, MASTERFLAT, SUPERFLAT, normalised or combined flats) and
# lights
NOT_FLAT_WORDS = ("dark", "bias", "zero", "master", "super", "norm", "combined", "stack", "light")
# words that contain one of NOT_FLAT_WORDS but do not make a flat something else
HARMLESS_WORDS = ("twilight",)


def is_flat_type(value: str) -> bool:
    """Whether a frame type value is a common spelling of a raw flat: it has `flat` in
    it (FLAT, Flat Field, Flat Frame, SKYFLAT, DOMEFLAT, TWIFLAT, LAMPFLAT, FLAT,SKY,
    FLAT,LAMP, dome flat, twilight flat, ...) and none of NOT_FLAT_WORDS, compared on the
    letters alone, case-insensitively."""
    letters = "".join(c for c in value.lower() if c.isalpha())
    for word in HARMLESS_WORDS:
        letters = letters.replace(word, " ")
    return FLAT_WORD in letters and not any(word in letters for word in NOT_FLAT_WORDS)


# -- normalisers -----------------------------------------------------------------------------
# a filter wheel position with nothing in the beam: ignored when two wheels make one value
EMPTY_POSITION = re.compile(r"(open|clear|empty|none|air|blank|no ?filter|-+)([\s_-]?\d.*)?")
_BIN_NUMBER = re.compile(r"\d+")


def is_empty_position(value: object) -> bool:
    """`open`, `Clear`, `open1-6` (Gemini), `air` (LCO), `NONE`, '' ...: no filter."""
    return isinstance(value, str) and EMPTY_POSITION.fullmatch(value.strip().lower()) is not None


def binning_factors(value: object) -> tuple[int, ...] | None:
    """The binning factors one card holds: 2 -> (2,), '2' -> (2,), '2 2' / '2x2' /
    '[2,2]' / '(1 x 1)' -> (2, 2); None when it holds no positive whole number."""
    if type(value) is int:  # the usual XBINNING = 1: the fast way
        return (value,) if value > 0 else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        return (int(number),) if number.is_integer() and number > 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if not re.fullmatch(r"[\[(]?\s*\d+(\s*[x*,\s]\s*\d+)?\s*[\])]?", text):
        return None
    factors = tuple(int(n) for n in _BIN_NUMBER.findall(text))
    return factors if all(f > 0 for f in factors) else None


def plain_value(value: object) -> str | int | float | bool:
    """A group value: strings stripped of surrounding spaces, numbers and logicals kept."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool | int | float):
        return value
    return str(value)


def is_present(value: object) -> bool:
    """Whether a card holds a value at all (a blank string or an undefined value does not)."""
    return value is not None and not (isinstance(value, str) and not value.strip())


# -- keywords that differ from frame to frame: never a group key ---------------------------
PER_FRAME_KEYWORDS = frozenset(
    {
        *("DATE", "DATE-OBS", "DATE-BEG", "DATE-END", "DATE-AVG", "DATE-LOC", "DATE-UTC"),
        *("TIME-OBS", "TIME-END", "UT", "UTC", "UTC-OBS", "UTCSTART", "UT-STR", "UT-END"),
        *("MJD", "MJD-OBS", "MJD-AVG", "MJD-STR", "MJD-END", "JD", "HJD", "BJD", "LST"),
        *("EXPTIME", "EXPOSURE", "DARKTIME", "ELAPTIME", "IRAF-TLM"),
        *("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO"),
        *("BSCALE", "DATAMIN", "DATAMAX", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "END"),
        *("FRAMEID", "EXP-ID", "OBSID", "FILENAME", "ORIGFILE", "FRAMENUM", "SEQNUM"),
        *("RA", "DEC", "OBJCTRA", "OBJCTDEC", "AIRMASS", "ALTITUDE", "AZIMUTH", "HA", "ZD"),
        *("CCD-TEMP", "FOCPOS", "FOCUSPOS", "FOCTEMP", "FOCUSTEM"),
    }
)
