"""A file's HDUs, header by header, and which of them are the frame's image planes.

A frame is all its image planes (a mosaic's CCDs, a multi-amplifier camera's amplifiers).
The headers are read in turn; each HDU's data is skipped by its size (FITS 4.0, section
4.4.1.1: |BITPIX|/8 x GCOUNT x (PCOUNT + NAXIS1 x ... x NAXISn), padded to 2880 bytes),
never read. It stays cheap: a file whose first HDU ends where the file ends has no more
(the length of a plain file is known from its stat; a gzip file's is its trailer's ISIZE,
RFC 1952), so a single-image file costs one header as before.

Which HDUs are planes: the primary HDU when it holds an image; IMAGE extensions holding
data; tile-compressed images (a BINTABLE with `ZIMAGE = T`, as `fpack` and astropy's
`CompImageHDU` write them). Not tables, not HDUs without data, and not the data-quality
planes that ride along with an image (`ANCILLARY`: CCDData's UNCERT, MASK and FLAGS;
BANZAI's BPM and ERR; the HST/JWST ERR, DQ, VAR and WHT; flatd's own `<NAME>_UNCERT`
and `<NAME>_MASK`).

Each plane is named by its EXTNAME; where a plane has none (or astropy's placeholders
PRIMARY and COMPRESSED_IMAGE), where the names repeat (SCI, SCI, ... are told apart by
EXTVER: SCI1, SCI2, ...) or where a name is unfit for a FITS keyword value, every plane
is named `IM<n>` (n from 1) instead, so that a master's extensions never share a name.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import BinaryIO, Literal, NamedTuple

from flatd.frames.cards import BLOCK, Broken, Cards, int_value, read_header

PlaneKind = Literal["image", "tile"]
XTENSION = b"XTENSION"
ANCILLARY = frozenset(
    {"UNCERT", "MASK", "FLAGS", "BPM", "ERR", "DQ", "VAR", "WHT", "WEIGHT", "VARIANCE"}
)
ANCILLARY_SUFFIXES = ("_UNCERT", "_MASK")
PLACEHOLDER_NAMES = frozenset({"", "PRIMARY", "COMPRESSED_IMAGE"})
RESERVED_NAMES = frozenset({"INPUTS"})  # a master's own table
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,59}")  # + "_UNCERT" fits a card
MAX_HDUS = 1000


class Hdu(NamedTuple):
    """One HDU's header as read: its number, its wanted cards, where its data starts and
    how many bytes the data holds (unpadded)."""

    number: int  # 0 for the primary HDU
    cards: Cards
    data_offset: int
    data_bytes: int

    @property
    def end(self) -> int:
        """Where the next HDU starts."""
        return self.data_offset + padded(self.data_bytes)

    @property
    def plane_kind(self) -> PlaneKind | None:
        """ "image" or "tile" for an image plane of the frame, None for anything else."""
        cards = self.cards
        if self.number > 0 and cards.get("XTENSION") == "BINTABLE":
            return "tile" if cards.get("ZIMAGE") is True and not self.ancillary else None
        if self.number > 0 and cards.get("XTENSION") != "IMAGE":
            return None
        return "image" if self.data_bytes > 0 and not self.ancillary else None

    @property
    def ancillary(self) -> bool:
        if self.number == 0:
            return False
        name = self.extname.upper()
        return name in ANCILLARY or name.endswith(ANCILLARY_SUFFIXES)

    @property
    def extname(self) -> str:
        value = self.cards.get("EXTNAME")
        return value.strip() if isinstance(value, str) else ""


def padded(size: int) -> int:
    """`size` rounded up to whole FITS blocks."""
    return -(-size // BLOCK) * BLOCK


def data_bytes(cards: Cards) -> int:
    """The size of an HDU's data from its header (unpadded). Every file indexed goes
    through here: plain lookups, no helper calls."""
    naxis = _whole(cards.get("NAXIS"))
    pixels = 1 if naxis > 0 else 0
    for name in AXES[:naxis]:
        pixels *= _whole(cards.get(name))
    gcount = _whole(cards.get("GCOUNT")) if "GCOUNT" in cards else 1
    bitpix = cards.get("BITPIX")
    size = abs(bitpix if type(bitpix) is int else 8) // 8 * max(1, gcount)
    return size * (_whole(cards.get("PCOUNT")) + pixels)


AXES = tuple(f"NAXIS{i}" for i in range(1, 1000))


def _whole(value: object) -> int:
    """An integer card's value (not a logical), else 0."""
    return value if type(value) is int else 0


def read_hdus(
    stream: BinaryIO, wanted: frozenset[bytes], length: int | None, gzip_size: int | None
) -> list[Hdu]:
    """The primary HDU and every HDU after it. `length` is the file's length when known
    (a plain file); `gzip_size` a gzip file's ISIZE (its length modulo 2**32), which says
    without decompressing that nothing follows the first HDU. Bytes after the last HDU
    that do not begin an extension are ignored (as astropy does); an extension whose
    header is cut short raises `Broken` (incomplete: it may still be being written)."""
    cards, offset = read_header(stream, first=True, wanted=wanted)
    hdus = [Hdu(0, cards, offset, data_bytes(cards))]
    while len(hdus) < MAX_HDUS and _more_after(hdus[-1], length, gzip_size):
        stream.seek(hdus[-1].end)
        if not _starts_extension(stream):
            break
        cards, offset = read_header(stream, first=False, wanted=wanted)
        hdus.append(Hdu(len(hdus), cards, offset, data_bytes(cards)))
    return hdus


def _more_after(hdu: Hdu, length: int | None, gzip_size: int | None) -> bool:
    if length is not None:
        return length > hdu.end
    if gzip_size is not None and hdu.number == 0:
        ends = {(hdu.data_offset + hdu.data_bytes) % 2**32, hdu.end % 2**32}
        return gzip_size not in ends
    return True  # a gzip stream past its first HDU: read on until it ends


def _starts_extension(stream: BinaryIO) -> bool:
    """Whether the next bytes begin an extension header (without consuming them)."""
    head = stream.peek(len(XTENSION))[: len(XTENSION)]  # type: ignore[attr-defined]
    if not head:
        return False
    if len(head) < len(XTENSION) and XTENSION.startswith(head):
        raise Broken("truncated: extension header cut short", incomplete=True)
    return head == XTENSION


def image_planes(hdus: list[Hdu]) -> list[Hdu]:
    """The HDUs that are the frame's image planes, in file order."""
    return [hdu for hdu in hdus if hdu.plane_kind is not None]


def plane_names(planes: list[Hdu]) -> list[str]:
    """Each plane's name (see the module docstring)."""
    names = [hdu.extname for hdu in planes]
    if _usable(names):
        return names
    versions = [int_value(hdu.cards, "EXTVER", 0) for hdu in planes]
    versioned = [f"{name}{version}" for name, version in zip(names, versions, strict=True)]
    if min(versions, default=0) > 0 and _usable(versioned):
        return versioned
    return [f"IM{n}" for n in range(1, len(planes) + 1)]


def _usable(names: list[str]) -> bool:
    upper = [name.upper() for name in names]
    return (
        all(SAFE_NAME.fullmatch(name) for name in names)
        and not set(upper) & (PLACEHOLDER_NAMES | RESERVED_NAMES)
        and max(Counter(upper).values(), default=0) <= 1
    )


def missing_extensions(hdus: list[Hdu]) -> str:
    """Why the file holds fewer extensions than its primary header's NEXTEND promises (a
    file still being written, or a header that says more than is there); "" when not."""
    promised = int_value(hdus[0].cards, "NEXTEND", 0)
    if promised <= len(hdus) - 1:
        return ""
    return f"truncated: NEXTEND = {promised}, {len(hdus) - 1} extension(s) in the file"
