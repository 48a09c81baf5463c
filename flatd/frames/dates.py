"""When a frame was taken, from whichever cards its camera writes.

In order of `frames.date_keywords` (default DATE-OBS, DATE-BEG, MJD-OBS): an ISO date
and time with any number of fractional digits (`2019-03-26T05:12:07.1234567`, a `Z` or
an offset allowed), a date alone (`2019-03-26`, or the pre-2000 FITS form `DD/MM/YY`,
which the FITS standard reads as 19YY) completed by the first of
`frames.time_keywords` (TIME-OBS, UT, UTC-OBS, UTCSTART, UTC), or a Modified Julian Date.
Seconds written as `010.0` or `60.00` (LOIS) are read as the moment they mean.

A date alone with no time card is not used: every frame of a night would be at 00:00 and
the evening and the morning flats would make one sequence. When the header gives no
usable date the file's modification time is used, and `problem` says why; a card that is
there but cannot be read is named in it (and logged by `read_frame`).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from flatd.frames.cards import Cards
from flatd.frames.dialects import is_present

if TYPE_CHECKING:
    from flatd.config import FramesConfig

MJD_ZERO = datetime(1858, 11, 17, tzinfo=UTC)
JD_OF_MJD_ZERO = 2400000.5
_ISO = re.compile(
    r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[T ](?P<time>\d{1,2}:\d{1,2}(?::\d{1,3}(?:\.\d*)?)?))?"
    r"\s*(?P<zone>Z|[+-]\d{2}:?\d{2})?"
)
_LEGACY = re.compile(r"(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{2}|\d{4})")
_TIME = re.compile(r"(?P<h>\d{1,2}):(?P<mi>\d{1,2})(?::(?P<s>\d{1,3}(?:\.\d*)?))?\s*Z?")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class ObservationDate:
    """A frame's date (aware, UTC) and where it came from: `source` names the card(s)
    ("" for the file time); `problem` says why a date card present in the header was not
    used, or why there was none; `unreadable` is the card that could not be read."""

    when: datetime
    source: str
    problem: str = ""
    unreadable: str = ""

    @property
    def from_header(self) -> bool:
        return bool(self.source)


def observation_date(cards: Cards, config: FramesConfig, file_time: float) -> ObservationDate:
    """The frame's date from its header, else its file time (see the module docstring)."""
    unreadable: list[tuple[str, str]] = []  # (card, why): present but not a date
    incomplete: list[tuple[str, str]] = []  # a date without a time of day
    for keyword in config.date_keywords:
        raw = cards.get(keyword)
        if not is_present(raw):
            continue
        parsed = parse_date(raw)
        if parsed is None:
            unreadable.append((keyword, f"{keyword} = {_shown(raw)} is not a date"))
            continue
        when, has_time = parsed
        source = keyword
        if not has_time:
            time, time_keyword = time_of_day(cards, config.time_keywords)
            if time is None:
                times = " / ".join(config.time_keywords)
                why = f"{keyword} = {_shown(raw)} has no time of day and no readable {times}"
                incomplete.append((keyword, why))
                continue
            when, source = when + time, f"{keyword}+{time_keyword}"
        return ObservationDate(when, source, _joined(unreadable), _first_card(unreadable))
    problems = unreadable + incomplete
    if not problems:
        looked = ", ".join(config.date_keywords)
        problems = [("", f"no date keyword (looked for {looked})")]
    file_date = datetime.fromtimestamp(file_time, UTC)
    return ObservationDate(file_date, "", _joined(problems), _first_card(problems))


def _joined(problems: list[tuple[str, str]]) -> str:
    return "; ".join(why for _, why in problems)


def _first_card(problems: list[tuple[str, str]]) -> str:
    return next((card for card, _ in problems if card), "")


def parse_date(value: object) -> tuple[datetime, bool] | None:
    """A date card's value as (UTC datetime, whether it had a time of day), or None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _julian(float(value))
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) > 16 and text[10] in "T ":  # a full ISO date and time, the usual: fast way
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                return moment.replace(tzinfo=UTC), True
            return moment.astimezone(UTC), True
    if _NUMBER.fullmatch(text):
        return _julian(float(text))
    try:
        return _calendar_date(text)
    except ValueError:  # no such day (2019-02-30)
        return None


def _calendar_date(text: str) -> tuple[datetime, bool] | None:
    """An ISO date (with or without a time; any fraction; seconds like `010.0` or
    `60.0`) or the old `DD/MM/YY` (19YY) or `DD/MM/YYYY`."""
    if match := _ISO.fullmatch(text):
        day = datetime(int(match["y"]), int(match["m"]), int(match["d"]), tzinfo=UTC)
        if match["time"] is None:
            return day, False
        offset = _time(match["time"])
        return None if offset is None else (day + offset - _zone(match["zone"]), True)
    if match := _LEGACY.fullmatch(text):
        year = int(match["y"]) + (1900 if len(match["y"]) == 2 else 0)
        return datetime(year, int(match["m"]), int(match["d"]), tzinfo=UTC), False
    return None


def time_of_day(cards: Cards, keywords: tuple[str, ...]) -> tuple[timedelta | None, str]:
    """The first readable time of day among `keywords` (hh:mm[:ss[.s]], or an ISO date
    and time whose time is taken), with the keyword it came from."""
    for keyword in keywords:
        raw = cards.get(keyword)
        if not isinstance(raw, str) or not raw.strip():
            continue
        text = raw.strip()
        offset = _time(text)
        if offset is None and (match := _ISO.fullmatch(text)) and match["time"]:
            offset = _time(match["time"])
        if offset is not None:
            return offset, keyword
    return None, ""


def _time(text: str) -> timedelta | None:
    match = _TIME.fullmatch(text)
    if match is None:
        return None
    hours, minutes = int(match["h"]), int(match["mi"])
    seconds = float(match["s"] or 0)
    if hours > 23 or minutes > 59 or seconds >= 61:
        return None
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _zone(text: str | None) -> timedelta:
    if not text or text == "Z":
        return timedelta(0)
    digits = text[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return offset if text[0] == "+" else -offset


def _julian(number: float) -> tuple[datetime, bool] | None:
    """A Modified Julian Date (or a Julian Date, when it is that large) as a datetime."""
    days = number - JD_OF_MJD_ZERO if number > JD_OF_MJD_ZERO else number
    if not 0 < days < 200_000:  # 1858 .. 2406
        return None
    return MJD_ZERO + timedelta(days=days), True


def _shown(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)
