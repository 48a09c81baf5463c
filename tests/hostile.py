"""Hostile header cards, for the tests that show no input card can stop a master.

The cards are written byte for byte as 80-character card images, each breaking a
rule of the FITS Standard 4.0 (https://fits.gsfc.nasa.gov/fits_standard.html) the way real
files do:

- section 4.1.1: a header holds only printable ASCII (0x20-0x7E) - non-ASCII bytes, a tab;
- section 4.1.2.1: keywords are upper-case letters, digits, `-` and `_` - `filter`, `CMTé`;
- section 4.1.2.2: a value follows the indicator `= ` in columns 9-10 - `EQNOSP  ='x'`;
- section 4.2.1.1: a string is quoted - IRAF's `RA = 15:58:11.37` (issue 10), `SITE = Kitt
  Peak`, an unterminated quote;
- section 4.2.2: a logical is `T` or `F` - `BADLOG = t`, `FLAG = Y`;
- section 4.2.4: a real is finite - `BIGNUM = 1.0E999`;
- section 4.2.1.2: long strings continue in `CONTINUE` cards after a value ending in `&` - a
  chain of 40, and an orphan CONTINUE after an integer;
- section 4.4.2.1 / 4.1.2.1: a keyword is meant once - a duplicate;
- ESO's HIERARCH convention (https://fits.gsfc.nasa.gov/registry/hierarch_keyword.html)
  with characters no keyword may hold; a blank keyword with a value (section 4.4.2.4 allows
  commentary text only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

LONG_PIECE = "b" * 66
HOSTILE: list[bytes] = [  # card images (padded to 80 below); the flat's own cards come first
    b"RA      = 15:58:11.37",
    b"SITE    = Kitt Peak / unquoted",
    b"PROGRAM = T1",
    b"FLAG    = Y",
    b"BADLOG  = t",
    b"QUOTE   = 'unterminated",
    "NONASCII= 'gé'".encode(),
    b"TAB     = 'a\tb'",
    "CMT\xe9    = 'x'".encode("latin-1"),
    b"filter  = 'lower-case keyword'",
    b"EQNOSP  ='x'",
    b"        = 'a blank keyword with a value'",
    b"HIERARCH ESO DET WIN1 BINX = 1",
    b"HIERARCH odd/key!*? = 'hierarch with odd characters'",
    b"DUPKEY  = 1",
    b"DUPKEY  = 2",
    b"LONGSTR = '" + b"a" * 66 + b"&'",
    *[b"CONTINUE  '" + LONG_PIECE.encode() + b"&'" for _ in range(40)],
    b"CONTINUE  'the end'",
    b"ORPHAN  = 7",
    b"CONTINUE  'continues nothing'",
    b"BIGNUM  = 1.0E999",
    b"SATURATE= 65535.0",
]


def card_images(header: fits.Header, extra: list[bytes]) -> bytes:
    """A primary header block: SIMPLE..NAXISn, `header`'s cards, then `extra` as raw
    80-byte images, END, padded to whole 2880-byte blocks."""
    images = [str(card).encode("ascii") for card in header.cards]
    images += [image.ljust(80, b" ") for image in extra]
    assert all(len(image) % 80 == 0 for image in images)
    block = b"".join([*images, b"END".ljust(80)])
    return block.ljust(-(-len(block) // 2880) * 2880, b" ")


def hostile_file(path: Path, data: np.ndarray, header: fits.Header) -> Path:
    """A float32 flat whose header holds every HOSTILE card."""
    structural = fits.Header(
        [
            ("SIMPLE", True),
            ("BITPIX", -32),
            ("NAXIS", 2),
            ("NAXIS1", data.shape[1]),
            ("NAXIS2", data.shape[0]),
        ]
    )
    own = header.copy()
    for key in ("BUNIT", "SATURATE"):
        own.remove(key, ignore_missing=True)
    content = card_images(structural + own, HOSTILE)
    pixels = data.astype(">f4").tobytes()
    path.write_bytes(content + pixels.ljust(-(-len(pixels) // 2880) * 2880, b"\0"))
    return path
