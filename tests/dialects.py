"""A corpus of flat-frame headers, one per convention flatd reads, each written by hand from
where that convention is documented (no file copied from another project), and what
flatd must make of it: the type keyword, the group (canonical keys) and the date.

Shared by tests/test_dialects.py (read_frame, scan) and its end-to-end combine test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits


@dataclass(frozen=True)
class Dialect:
    name: str
    documented: str  # where the convention is written down
    header: dict[str, Any]
    type_keyword: str
    group: dict[str, Any]
    date: str  # ISO 8601 UTC, as flatd must read it
    extension: dict[str, Any] = field(default_factory=dict)  # cards of an image extension
    frames: dict[str, Any] = field(default_factory=dict)  # [frames] settings it needs

    def write(self, path: Path, data: np.ndarray | None = None, /, **changes: Any) -> Path:
        """The header (with `changes`; None deletes a card) over `data` in a real FITS
        file: a primary image, or an empty primary and an image extension when the
        convention puts its image (and some cards) in an extension."""
        if data is None:
            data = np.full((16, 20), 20000.0, np.float32)
        cards = {k: v for k, v in {**self.header, **changes}.items() if v is not None}
        header = fits.Header()
        for key, value in cards.items():
            header[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.extension:
            image = fits.ImageHDU(data, fits.Header(list(self.extension.items())))
            fits.HDUList([fits.PrimaryHDU(header=header), image]).writeto(path)
        else:
            fits.PrimaryHDU(data, header).writeto(path)
        return path


def group(filter_: Any, instrument: Any, xbin: Any, ybin: Any) -> dict[str, Any]:
    return {"FILTER": filter_, "INSTRUME": instrument, "XBINNING": xbin, "YBINNING": ybin}


CORPUS = [
    Dialect(
        "N.I.N.A.",
        "nighttime-imaging.eu/docs (advanced/file_formats/fits): IMAGETYP, FILTER, "
        "XBINNING/YBINNING, INSTRUME, DATE-LOC and DATE-OBS as .NET writes them (7 digits)",
        {
            "IMAGETYP": "FLAT",
            "EXPOSURE": 2.5,
            "EXPTIME": 2.5,
            "DATE-LOC": "2026-10-04T19:45:30.1234567",
            "DATE-OBS": "2026-10-04T17:45:30.1234567",
            "XBINNING": 1,
            "YBINNING": 1,
            "GAIN": 100,
            "OFFSET": 50,
            "EGAIN": 0.25,
            "INSTRUME": "ZWO ASI2600MM Pro",
            "READOUTM": "Normal",
            "FILTER": "Ha",
            "SWCREATE": "N.I.N.A. 3.1.2.9001",
        },
        "IMAGETYP",
        group("Ha", "ZWO ASI2600MM Pro", 1, 1),
        "2026-10-04T17:45:30.123456+00:00",
    ),
    Dialect(
        "SGP",
        "help.sequencegeneratorpro.com, 'Data Stored in the FITS Header': IMAGETYP, "
        "DATE-OBS (UTC) and DATE-LOC, XBINNING and CCDXBIN, FILTER, CREATOR",
        {
            "DATE-LOC": "2020-05-30T02:22:49.0968820",
            "DATE-OBS": "2020-05-30T00:22:49.0968820",
            "IMAGETYP": "FLAT",
            "CREATOR": "Sequence Generator Pro v3.1.0.479",
            "INSTRUME": "ZWO ASI294MC Pro",
            "FWHEEL": "Manual Filter Wheel",
            "FILTER": "HaOIII",
            "EXPOSURE": 3.0,
            "XBINNING": 2,
            "CCDXBIN": 2,
            "YBINNING": 2,
            "CCDYBIN": 2,
        },
        "IMAGETYP",
        group("HaOIII", "ZWO ASI294MC Pro", 2, 2),
        "2020-05-30T00:22:49.096882+00:00",
    ),
    Dialect(
        "MaxIm DL / ACP",
        "diffractionlimited.com MaxIm DL help, 'FITS File Header Definitions' (SBIG "
        "SBFITSEXT keywords): IMAGETYP 'Flat Field', XBINNING/YBINNING, ISO DATE-OBS",
        {
            "IMAGETYP": "Flat Field",
            "SWCREATE": "MaxIm DL Version 6.40",
            "INSTRUME": "SBIG STL-11000 3 CCD Camera",
            "FILTER": "R",
            "XBINNING": 2,
            "YBINNING": 2,
            "DATE-OBS": "2012-08-31T03:37:34",
            "EXPTIME": 4.0,
            "CCD-TEMP": -20.1,
        },
        "IMAGETYP",
        group("R", "SBIG STL-11000 3 CCD Camera", 2, 2),
        "2012-08-31T03:37:34+00:00",
    ),
    Dialect(
        "APT",
        "issue 10 (APT's own files: IMAGETYP 'Flat Frame'; a DSLR writes no FILTER); APT "
        "follows the SBIG/MaxIm keywords (XBINNING, INSTRUME, DATE-OBS)",
        {
            "IMAGETYP": "Flat Frame",
            "INSTRUME": "Canon EOS 6D",
            "XBINNING": 1,
            "YBINNING": 1,
            "DATE-OBS": "2023-03-01T18:32:05",
            "EXPTIME": 1.0,
        },
        "IMAGETYP",
        group("no-filter", "Canon EOS 6D", 1, 1),
        "2023-03-01T18:32:05+00:00",
    ),
    Dialect(
        "INDI/KStars",
        "indilib/indi libs/indibase/indiccd.cpp addFITSKeywords: FRAME 'Flat' and "
        "IMAGETYP 'Flat Frame', XBINNING/YBINNING, FILTER, DATE-OBS with milliseconds",
        {
            "ROWORDER": "TOP-DOWN",
            "INSTRUME": "ZWO CCD ASI1600MM Pro",
            "EXPTIME": 1.5,
            "XBINNING": 2,
            "YBINNING": 2,
            "FRAME": "Flat",
            "IMAGETYP": "Flat Frame",
            "FILTER": "Lum",
            "DATE-OBS": "2024-02-11T18:04:45.361",
        },
        "IMAGETYP",
        group("Lum", "ZWO CCD ASI1600MM Pro", 2, 2),
        "2024-02-11T18:04:45.361000+00:00",
    ),
    Dialect(
        "INDI driver (legacy)",
        "indilib/indi's older drivers (FLI, QSI, SBIG): FRAME 'Flat Field' only and "
        "BINNING '(2 x 2)' ('Binning HOR x VER'), no XBINNING",
        {
            "EXPOSURE": 1000.0,
            "BINNING": "(2 x 2)",
            "FRAME": "Flat Field",
            "INSTRUME": "Finger Lakes Instruments",
            "FILTER": "V",
            "DATE-OBS": "2014-06-02T03:12:44",
        },
        "FRAME",
        group("V", "Finger Lakes Instruments", 2, 2),
        "2014-06-02T03:12:44+00:00",
    ),
    Dialect(
        "SharpCap",
        "actionprojecteu/azotea-client FITS.md: SharpCap writes SWCREATE, BAYERPAT, "
        "INSTRUME, DATE-OBS, EXPTIME, XPIXSZ and no IMAGETYP (frames.untyped_are_flats)",
        {
            "SWCREATE": "SharpCap v4.1.11300.0",
            "BAYERPAT": "RGGB",
            "INSTRUME": "ZWO ASI294MC Pro",
            "DATE-OBS": "2024-05-01T20:11:12.1234567",
            "EXPTIME": 0.05,
            "XPIXSZ": 4.63,
            "YPIXSZ": 4.63,
        },
        "",
        group("no-filter", "ZWO ASI294MC Pro", "no-binning", "no-binning"),
        "2024-05-01T20:11:12.123456+00:00",
        frames={"untyped_are_flats": True},
    ),
    Dialect(
        "Seestar",
        "Seestar S50 sub-frames (hawkastro.blogspot.com 2024/05 'Seestar S50 FITS output "
        "images'; FILTER 'IRCUT' or 'LP', INSTRUME 'Seestar S50', no binning cards)",
        {
            "TELESCOP": "S50_40d24ed8",
            "INSTRUME": "Seestar S50",
            "CREATOR": "ZWO Seestar S50",
            "IMAGETYP": "Flat",
            "EXPTIME": 0.5,
            "GAIN": 80,
            "FILTER": "IRCUT",
            "BAYERPAT": "GRBG",
            "DATE-OBS": "2025-09-29T06:01:02.382641",
        },
        "IMAGETYP",
        group("IRCUT", "Seestar S50", "no-binning", "no-binning"),
        "2025-09-29T06:01:02.382641+00:00",
    ),
    Dialect(
        "PixInsight",
        "pixinsight.com/xisf: XISF FITSKeyword values are text, so FITS written from XISF "
        "can say XBINNING = '2' (issue 10: 'string binning')",
        {
            "IMAGETYP": "Flat",
            "INSTRUME": "QHY268M",
            "FILTER": "L",
            "XBINNING": "2",
            "YBINNING": "2",
            "DATE-OBS": "2023-11-02T17:02:11.034",
        },
        "IMAGETYP",
        group("L", "QHY268M", 2, 2),
        "2023-11-02T17:02:11.034000+00:00",
    ),
    Dialect(
        "IRAF/NOAO",
        "NOAO Mosaic keyword dictionary (iraf.noao.edu/projects/mosaic/imagedef): "
        "FILTERS, CCDSUM '2 2'; IRAF ccdred's IMAGETYP 'flat'; the pre-2000 DATE-OBS "
        "'DD/MM/YY' with UT (e.g. nfo.edu's headers)",
        {
            "IMAGETYP": "flat",
            "FILTERS": "V",
            "CCDSUM": "2 2",
            "DATE-OBS": "28/03/93",
            "UT": "07:18:51",
            "EXPTIME": 3.0,
        },
        "IMAGETYP",
        group("V", "no-instrument", 2, 2),
        "1993-03-28T07:18:51+00:00",
    ),
    Dialect(
        "LCO",
        "LCOGT/banzai banzai/lco.py (OBSTYPE, FILTER, INSTRUME, DATE-OBS) and its "
        "settings (SKYFLAT, LAMPFLAT, CCDSUM); Sinistro also writes FILTER1..3",
        {
            "OBSTYPE": "SKYFLAT",
            "SITEID": "lsc",
            "INSTRUME": "fa14",
            "FILTER1": "air",
            "FILTER2": "rp",
            "FILTER3": "air",
            "FILTER": "rp",
            "CCDSUM": "2 2",
            "DATE-OBS": "2019-03-26T23:40:07.123",
            "DAY-OBS": "20190326",
        },
        "OBSTYPE",
        group("rp", "fa14", 2, 2),
        "2019-03-26T23:40:07.123000+00:00",
    ),
    Dialect(
        "Lowell (LOIS)",
        "issue 10 (Lowell's OBSTYPE and FILTNAME); PypeIt ldt_deveny.py on LOIS headers: "
        "CCDSUM space-separated, DATE-OBS seconds rounded to '010.00'",
        {
            "OBSTYPE": "SKY FLAT",
            "INSTRUME": "LMI",
            "FILTNAME": "V",
            "CCDSUM": "2 2",
            "DATE-OBS": "2020-01-30T13:17:010.00",
        },
        "OBSTYPE",
        group("V", "LMI", 2, 2),
        "2020-01-30T13:17:10+00:00",
    ),
    Dialect(
        "NOAO/LOIS 42-inch",
        "issue 10 (an E2V CCD at a 42-inch telescope: date-only DATE-OBS, the time in "
        "UTCSTART, no INSTRUME)",
        {
            "OBSTYPE": "FLAT",
            "FILTERS": "R",
            "CCDSUM": "1 1",
            "DATE-OBS": "2019-03-26",
            "UTCSTART": "01:55:31.20",
        },
        "OBSTYPE",
        group("R", "no-instrument", 1, 1),
        "2019-03-26T01:55:31.200000+00:00",
    ),
    Dialect(
        "Gemini",
        "PypeIt gemini_gmos.py (FILTER1, CCDSUM in extension 1, GCALflat) and Gemini's "
        "keyword checks in DRAGONS/FitsStorage (OBSTYPE FLAT); DATE-OBS date-only with "
        "TIME-OBS",
        {
            "INSTRUME": "GMOS-N",
            "OBSTYPE": "FLAT",
            "OBSCLASS": "dayCal",
            "OBJECT": "GCALflat",
            "FILTER1": "open1-6",
            "FILTER2": "g_G0301",
            "DATE-OBS": "2019-03-26",
            "TIME-OBS": "05:12:07.5",
        },
        "OBSTYPE",
        group("g_G0301", "GMOS-N", 2, 2),
        "2019-03-26T05:12:07.500000+00:00",
        extension={"EXTNAME": "SCI", "CCDSUM": "2 2"},
    ),
    Dialect(
        "ESO",
        "ESO DICB dictionaries as PypeIt vlt_uves.py/vlt_fors.py read them: HIERARCH ESO "
        "DPR TYPE 'FLAT,SKY', ESO INS FILT1 NAME, ESO DET WIN1 BINX/BINY, MJD-OBS",
        {
            "INSTRUME": "FORS2",
            "DATE-OBS": "2019-03-26T23:40:07.1234",
            "MJD-OBS": 58568.98619,
            "HIERARCH ESO DPR CATG": "CALIB",
            "HIERARCH ESO DPR TYPE": "FLAT,SKY",
            "HIERARCH ESO INS FILT1 NAME": "R_SPECIAL",
            "HIERARCH ESO DET WIN1 BINX": 2,
            "HIERARCH ESO DET WIN1 BINY": 2,
        },
        "HIERARCH ESO DPR TYPE",
        group("R_SPECIAL", "FORS2", 2, 2),
        "2019-03-26T23:40:07.123400+00:00",
    ),
    Dialect(
        "Subaru",
        "Subaru FITS rule (subarutelescope.org/DATA/fits: DATA-TYP, BIN-FCT1/2, FILTER01, "
        "date-only DATE-OBS with UT) and PypeIt subaru_focas.py (DOMEFLAT)",
        {
            "INSTRUME": "FOCAS",
            "DATA-TYP": "DOMEFLAT",
            "FILTER01": "W-J-V",
            "BIN-FCT1": 2,
            "BIN-FCT2": 2,
            "DATE-OBS": "2019-03-26",
            "UT": "05:12:07.500",
            "MJD": 58568.21675,
        },
        "DATA-TYP",
        group("W-J-V", "FOCAS", 2, 2),
        "2019-03-26T05:12:07.500000+00:00",
    ),
]
