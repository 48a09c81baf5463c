"""The header cards of an input frame, each one checked before a master may copy it.

Capture programs and old pipelines write cards that astropy reads but refuses to write
(`RA = 15:58:11.37` unquoted, `OBSERVER = T1`, a lower-case keyword), cards it can never
write (non-ASCII or control bytes, an illegal keyword, an infinite value), keywords twice,
and `CONTINUE` cards that continue nothing. A master copies its first input's header, and
no such card may stop it: every card is read raw from the file, parsed on its own, fixed
where astropy can fix it (`silentfix`) and parsed again from the image it would be written
as; a card that fails anywhere on the way is dropped with the reason why.

The header is read as raw 2880-byte blocks (plain or gzip, any HDU; for a tile-compressed
image, the table header that holds the image's own cards), so the master costs no second
`fits.open` of its first input.
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from flatd.frames.extensions import data_bytes, padded
from flatd.reasons import one_line

if TYPE_CHECKING:
    from astropy.io import fits

BLOCK = 2880
CARD = 80
MAX_HEADER_BLOCKS = 1000
COMMENTARY = frozenset({"COMMENT", "HISTORY", ""})
_WITHOUT_VALUE_INDICATOR = ("COMMENT ", "HISTORY ", " " * 8, "HIERARCH ")
# a card whose string value ends in "&": the next CONTINUE card carries on with it
_OPENS_LONG_STRING = re.compile(rb"^(?:= )? *'(?:[^']|'')*&' *(?:/.*)?$")


@dataclass(frozen=True)
class Dropped:
    """A card that could not be copied: its keyword, its text and why."""

    keyword: str
    card: str  # the card as it is in the file, odd bytes escaped
    reason: str


def checked_cards(path: Path, hdu: int) -> tuple[list[fits.Card], list[Dropped]]:
    """The cards of HDU `hdu` of the file at `path` that can be written as they are (after
    astropy's fixes), in order, each keyword once (the first); and the cards dropped.
    A header that cannot be read at all gives no cards and one `Dropped` saying why."""
    return checked_headers(path, [hdu])[hdu]


def checked_headers(
    path: Path, hdus: Iterable[int]
) -> dict[int, tuple[list[fits.Card], list[Dropped]]]:
    """`checked_cards` of several HDUs, their headers read in one pass over the file."""
    wanted = sorted(set(hdus))
    try:
        headers = read_header_images(path, wanted)
    except (OSError, EOFError, ValueError) as exc:
        unreadable = Dropped("", "", f"header unreadable: {one_line(exc)}")
        return {hdu: ([], [unreadable]) for hdu in wanted}
    return {hdu: _checked(images) for hdu, images in headers.items()}


def _checked(images: list[bytes]) -> tuple[list[fits.Card], list[Dropped]]:
    cards: list[fits.Card] = []
    dropped: list[Dropped] = []
    seen: set[str] = set()
    for image in joined_continues(images):
        card = check_card(image)
        if isinstance(card, str):
            dropped.append(Dropped(_keyword_of(image), _text_of(image), card))
        elif card.keyword not in COMMENTARY and card.keyword in seen:
            dropped.append(
                Dropped(card.keyword, _text_of(image), f"duplicate of an earlier {card.keyword}")
            )
        else:
            seen.add(card.keyword)
            cards.append(card)
    return cards, dropped


def check_card(image: bytes) -> fits.Card | str:
    """The card written as `image` as astropy would write it (fixed where it can be), or
    the reason it cannot be written."""
    from astropy.io import fits

    try:
        text = image.decode("ascii")
    except UnicodeDecodeError:
        return "non-ASCII bytes"
    if not text.isprintable():
        return "control characters"
    if text.startswith("CONTINUE"):
        return "CONTINUE card without a long string before it"
    if text[8:10] != "= " and not text.startswith(_WITHOUT_VALUE_INDICATOR):
        return "no value indicator ('= ' in columns 9-10)"
    try:
        card = fits.Card.fromstring(text)
        card.verify("silentfix+exception")
        written = fits.Card.fromstring(card.image)
        written.verify("exception")
        value = written.value
    except Exception as exc:  # astropy's parser raises many kinds on a hostile card
        return one_line(exc) or type(exc).__name__
    if isinstance(value, float | complex) and not _finite(value):
        return f"value {value} cannot be written to a FITS header"
    return written


def read_header_images(path: Path, hdus: Iterable[int]) -> dict[int, list[bytes]]:
    """The 80-byte card images of each HDU in `hdus` (0 = primary), up to END, in one
    pass over the file (a gzip stream is read once, in order)."""
    wanted = set(hdus)
    found: dict[int, list[bytes]] = {}
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if gzipped else raw  # type: ignore[assignment]
        last = max(wanted, default=-1)
        for hdu in range(last + 1):
            images = _header_images(stream)
            if hdu in wanted:
                found[hdu] = images
            if hdu < last:
                stream.seek(stream.tell() + _data_bytes(images))
    return found


def joined_continues(images: list[bytes]) -> list[bytes]:
    """Card images with each long string's `CONTINUE` cards joined to the card they
    continue (as astropy's `Card.fromstring` takes them); an orphan CONTINUE stays alone."""
    joined: list[bytes] = []
    for image in images:
        if image[:8] == b"CONTINUE" and joined and _opens_long_string(joined[-1]):
            joined[-1] += image
        else:
            joined.append(image)
    return joined


def _opens_long_string(image: bytes) -> bool:
    return bool(_OPENS_LONG_STRING.match(image[-CARD + 8 :].rstrip()))


def _header_images(stream: BinaryIO) -> list[bytes]:
    images: list[bytes] = []
    for _ in range(MAX_HEADER_BLOCKS):
        block = stream.read(BLOCK)
        if len(block) < BLOCK:
            raise EOFError("header ends before its END card")
        for offset in range(0, BLOCK, CARD):
            image = block[offset : offset + CARD]
            if image[:8].rstrip() == b"END":
                return images
            if image.strip():
                images.append(image)
    raise ValueError(f"header longer than {MAX_HEADER_BLOCKS} blocks")


def _data_bytes(images: list[bytes]) -> int:
    """The padded size of the data that follows a header (`frames.extensions`)."""
    structural: dict[str, object] = {}
    for image in images:
        keyword = image[:8].rstrip().decode("ascii", "replace")
        if keyword in ("BITPIX", "NAXIS", "PCOUNT", "GCOUNT") or keyword.startswith("NAXIS"):
            structural[keyword] = int(image[10:].split(b"/")[0])
    return padded(data_bytes(structural))


def _finite(value: float | complex) -> bool:
    return math.isfinite(value.real) and math.isfinite(value.imag)


def _keyword_of(image: bytes) -> str:
    if image.startswith(b"HIERARCH "):
        return _printable(image[9:].split(b"=")[0]).strip()
    return _printable(image[:8]).strip()


def _text_of(image: bytes) -> str:
    return _printable(image[:CARD]).rstrip()


def _printable(raw: bytes) -> str:
    """Bytes as text with anything but printable ASCII escaped (`\\xNN`)."""
    return "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in raw)
