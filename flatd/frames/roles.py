"""A frame's group: each key of `frames.group_by` read from the first of its keywords
that the header holds, normalised, and named by its canonical key.

FILTER, INSTRUME and XBINNING/YBINNING are roles with lists of alternative keywords
(`frames.filter_keywords`, ...); any other key is read from its own keyword or from the
alternatives the user gave in `[frames.keywords]`. A key the header has no keyword for
takes `dialects.missing_value(key)`, and says so (its source is "").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flatd.frames import dialects
from flatd.frames.cards import Cards
from flatd.frames.dialects import (
    FILTER,
    INSTRUMENT,
    XBINNING,
    YBINNING,
    binning_factors,
    is_empty_position,
    is_present,
    plain_value,
)
from flatd.frames.model import GroupKey, GroupValue

if TYPE_CHECKING:
    from flatd.config import FramesConfig

BINNING_KEYS = (XBINNING, YBINNING)


@dataclass(frozen=True)
class Roles:
    """What a header says about its group: the key, where each value came from, and the
    binning as numbers (None when no binning keyword could be read)."""

    group: GroupKey
    sources: tuple[tuple[str, str], ...]
    binning: tuple[int, int] | None

    def missing(self) -> list[str]:
        """The group keys the header had no keyword for."""
        return [key for key, source in self.sources if not source]


def keywords_for(key: str, config: FramesConfig) -> tuple[str, ...]:
    """The keywords a group key is read from, in order of preference."""
    if key == FILTER:
        return config.filter_keywords
    if key == INSTRUMENT:
        return config.instrument_keywords
    if key in BINNING_KEYS:
        return config.binning_keywords
    return dict(config.keywords).get(key, (key,))


def every_keyword(config: FramesConfig) -> set[str]:
    """Every single keyword the group keys may be read from (`A+B` entries split); the
    binning keywords always, as the frame checks compare binnings even when they are
    not part of the group."""
    entries = [e for key in config.group_by for e in keywords_for(key, config)]
    return {part for entry in (*entries, *config.binning_keywords) for part in entry.split("+")}


def read_roles(cards: Cards, config: FramesConfig) -> Roles:
    """The frame's group key, each value's source keyword and its binning."""
    plan, binning_entries = _plan(config)
    binning, binning_source = _binning(cards, binning_entries)
    values: list[tuple[str, GroupValue]] = []
    sources: list[tuple[str, str]] = []
    for key, entries in plan:
        if key in BINNING_KEYS:
            value: GroupValue | None = None if binning is None else binning[key == YBINNING]
            source = binning_source
        else:
            value, source = _first(cards, entries)
        values.append((key, dialects.missing_value(key) if value is None else value))
        sources.append((key, source))
    return Roles(tuple(values), tuple(sources), binning)


def binning_of(
    cards: Mapping[str, object], keywords: tuple[str, ...] = dialects.BINNING_KEYWORDS
) -> tuple[int, int] | None:
    """(x, y) binning by the binning role's keywords (`frames.binning_keywords`) from any
    header mapping: the reader's cards, or keyword -> value from an astropy Header, which
    names a HIERARCH card without its prefix. None when no binning keyword can be read."""
    named = {reader_name(key): value for key, value in cards.items() if isinstance(key, str)}
    return _binning(named, _split(keywords))[0]


def reader_name(keyword: str) -> str:
    """A keyword as the reader names it: `HIERARCH ...` for one that only fits a HIERARCH
    card (longer than 8 characters, or with spaces)."""
    keyword = keyword.upper()
    if keyword.startswith("HIERARCH ") or (len(keyword) <= 8 and " " not in keyword):
        return keyword
    return f"HIERARCH {keyword}"


def canonical_group(group: GroupKey) -> GroupKey:
    """A group key read back from a master's header, with its values as `read_roles`
    gives them today: older flatd kept a binning written as text (`XBINNING = '2'`) as
    text, in the group and in the master it wrote; it is the number 2 now."""
    return tuple(
        (key, factors[0])
        if key in BINNING_KEYS and (factors := binning_factors(value)) and len(factors) == 1
        else (key, value)
        for key, value in group
    )


Entries = tuple[tuple[str, tuple[str, ...]], ...]  # (entry as written, its keywords)


@functools.lru_cache(maxsize=16)
def _plan(config: FramesConfig) -> tuple[tuple[tuple[str, Entries], ...], Entries]:
    """Each group key's entries split into their keywords once per configuration."""

    keys = tuple((key, _split(keywords_for(key, config))) for key in config.group_by)
    return keys, _split(config.binning_keywords)


def _split(entries: Iterable[str]) -> Entries:
    return tuple((entry, tuple(entry.split("+"))) for entry in entries)


def _first(cards: Cards, entries: Entries) -> tuple[GroupValue | None, str]:
    """The value of the first entry the header holds; an `A+B` entry (two filter
    wheels) is the one value of its wheels."""
    for entry, keywords in entries:
        if len(keywords) == 1:
            value = cards.get(entry)
            if is_present(value):
                return plain_value(value), entry
            continue
        wheels = [plain_value(v) for k in keywords if is_present(v := cards.get(k))]
        if wheels:
            return _one_filter(wheels), entry
    return None, ""


def _one_filter(wheels: list[GroupValue]) -> GroupValue:
    """Several wheels' positions as one value: the filters in the beam, joined by `+`;
    when every wheel is at an empty position, the first wheel's value."""
    in_beam = [w for w in wheels if not is_empty_position(w)]
    if not in_beam:
        return wheels[0]
    return in_beam[0] if len(in_beam) == 1 else "+".join(str(w) for w in in_beam)


def _binning(cards: Cards, entries: Entries) -> tuple[tuple[int, int] | None, str]:
    for entry, keywords in entries:
        factors = [f for k in keywords if (f := binning_factors(cards.get(k))) is not None]
        if not factors:
            continue
        if len(keywords) == 1:
            both = factors[0]
            return (both[0], both[-1]), entry
        x = factors[0][0]
        y = factors[1][0] if len(factors) > 1 else x  # one axis given: square binning
        return (x, y), entry
    return None, ""
