"""The raw header reader: 2880-byte blocks in, the values of the wanted cards out.

Only the cards whose keyword is wanted are parsed (plain values directly, anything else by
astropy's `Card`, imported only then): parsing a card costs ~20 us with astropy, so a
100-card header would cost 2 ms instead of the few hundredths of a millisecond a file
costs here. ESO's `HIERARCH` cards carry their keyword in the card body
(`HIERARCH ESO DPR TYPE = 'FLAT,SKY'`); they are found under their full name with single
spaces, upper case (`HIERARCH ESO DPR TYPE`).
"""

from __future__ import annotations

import functools
import re
from typing import BinaryIO

BLOCK = 2880
CARD = 80
MAX_HEADER_BLOCKS = 1000  # 36,000 cards: anything longer is not a camera frame
HIERARCH = b"HIERARCH"

Cards = dict[str, object]


class Broken(Exception):
    """A file that cannot be a frame; `incomplete` when it may still be being written."""

    def __init__(self, reason: str, incomplete: bool = False) -> None:
        super().__init__(reason)
        self.incomplete = incomplete


def read_header(
    stream: BinaryIO, first: bool, wanted: frozenset[bytes] | None = None
) -> tuple[Cards, int]:
    """Parse the header at the stream's position; return its cards (only the `wanted`
    ones, when given; the first of repeated keywords) and the data offset.

    A long string value (`'...&'` followed by `CONTINUE` cards) is read whole, so two
    values that differ only after the first card's 68 characters stay distinct."""
    cards: Cards = {}
    start = stream.tell()
    hierarchical = wanted is None or _wants_hierarch(wanted)
    pending: list[bytes] = []  # the card images of a value that may go on in CONTINUE cards
    pending_name, pending_at = "", 0
    for block_number in range(MAX_HEADER_BLOCKS):
        block = stream.read(BLOCK)
        if block_number == 0 and first and not b"SIMPLE  =".startswith(block[:9]):
            raise Broken("not a FITS file (no SIMPLE card)")
        if len(block) < BLOCK:
            raise Broken(
                "truncated header" if block else "truncated: extension missing", incomplete=True
            )
        for offset in range(0, BLOCK, CARD):
            raw = block[offset : offset + CARD]
            keyword = raw[:8].rstrip()
            if pending and keyword == b"CONTINUE":
                pending.append(raw)
                continue
            if pending:
                cards[pending_name] = card_value(pending, pending_at)
                pending = []
            if keyword == b"END":
                return cards, start + (block_number + 1) * BLOCK
            if raw[8:10] == b"= ":
                name, value_at = keyword, 10
            elif keyword == HIERARCH and hierarchical:
                name, value_at = _hierarch_name(raw)
            else:
                continue
            if (wanted is None or name in wanted) and name:
                text = name.decode("ascii", "replace")
                if text not in cards:
                    pending, pending_name, pending_at = [raw], text, value_at
    raise Broken(f"header longer than {MAX_HEADER_BLOCKS} blocks")


@functools.lru_cache(maxsize=16)
def _wants_hierarch(wanted: frozenset[bytes]) -> bool:
    return any(name.startswith(HIERARCH + b" ") for name in wanted)


def _hierarch_name(raw: bytes) -> tuple[bytes, int]:
    """`HIERARCH ESO DPR TYPE = ...` -> (b"HIERARCH ESO DPR TYPE", offset of the value);
    (b"", 0) for a HIERARCH card without a value."""
    equals = raw.find(b"=", 9)
    if equals < 0:
        return b"", 0
    words = raw[9:equals].upper().split()
    return (HIERARCH + b" " + b" ".join(words), equals + 1) if words else (b"", 0)


def card_value(images: list[bytes], value_at: int = 10) -> object:
    """A card's value (with its CONTINUE cards); `value_at` is where the value field
    starts (10, or after the `=` of a HIERARCH card). A value astropy cannot parse
    (non-ASCII bytes, control characters) is kept as printable text with those bytes
    escaped (`\\xNN`), so that different raw values never become the same value; a card
    without a value gives None."""
    try:
        text = b"".join(images).decode("ascii")
        if not text.isprintable():
            raise ValueError("not printable ASCII")
        if len(images) == 1:
            value = simple_value(text, value_at)
            if value is not NOT_SIMPLE:
                return value
    except (ValueError, UnicodeDecodeError):
        return _raw_string(images, value_at)
    from astropy.io import fits

    try:
        value = fits.Card.fromstring(text).value
    except (ValueError, fits.VerifyError):
        return _raw_string(images, value_at)
    return None if isinstance(value, fits.card.Undefined) else value


NOT_SIMPLE = object()
_INTEGER = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([ED][+-]?\d+)?")


def simple_value(card: str, value_at: int = 10) -> object:
    """The value of a plain card (string, logical, integer, real or empty) as astropy's
    `Card` gives it, or NOT_SIMPLE for anything else (which astropy then parses). About
    twenty times faster than `Card.fromstring(card).value`, which looks up astropy's
    configuration on every call; the start-up scan reads a dozen cards per file."""
    body = card[value_at:].lstrip()
    if body.startswith("'"):
        index = 1
        while True:
            end = body.find("'", index)
            if end < 0:
                return NOT_SIMPLE
            if body[end + 1 : end + 2] != "'":
                break
            index = end + 2
        inner = body[1:end].replace("''", "'").rstrip()
        rest = body[end + 1 :].lstrip()
        return inner if not inner.endswith("&") and (not rest or rest[0] == "/") else NOT_SIMPLE
    token = body.split("/", 1)[0].strip()
    if token in ("T", "F"):
        return token == "T"
    if not token:
        return None
    if _INTEGER.fullmatch(token):
        return int(token)
    if _REAL.fullmatch(token):
        return float(token.replace("D", "E"))
    return NOT_SIMPLE


def _raw_string(images: list[bytes], value_at: int) -> str | None:
    """The quoted string of raw card images, its odd bytes escaped; None if unquoted."""
    parts: list[str] = []
    for number, image in enumerate(images):
        body = image[value_at:].lstrip() if number == 0 else image[8:].lstrip()
        if not body.startswith(b"'"):
            return None if number == 0 else "".join(parts)
        end, index = None, 1
        while index < len(body):
            if body[index : index + 2] == b"''":
                index += 2
                continue
            if body[index : index + 1] == b"'":
                end = index
                break
            index += 1
        inner = body[1:end].replace(b"''", b"'")
        if inner.endswith(b"&") and number + 1 < len(images):
            inner = inner[:-1]
        parts.append("".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in inner))
    return "".join(parts).rstrip()


def int_value(cards: Cards, key: str, default: int) -> int:
    """An integer card's value (not a logical), else `default`."""
    value = cards.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def number_value(cards: Cards, key: str, default: float) -> float:
    """A numeric card's value as a float (not a logical), else `default`."""
    value = cards.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default
