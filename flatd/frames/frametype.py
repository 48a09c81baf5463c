"""Whether a header is a raw flat flatd should combine, and why not when it is not.

The type is the value of the first of `frames.type_keywords` the header holds. It is a
flat by `dialects.is_flat_type` (any common spelling of a flat, never a dark for flats, a
master or a bias, dark or light), or, when the user listed `frames.flat_types`, when it
is one of those (case-insensitively). A header with none of the type keywords is not a
flat, unless `frames.untyped_are_flats` says that such files are (a directory that only
ever receives flats from a program that writes no type, such as SharpCap). flatd's own
masters (`FLATDVER`) and anything
marked combined (`COMBINED = T`) are never inputs, whatever their type says.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flatd.frames.cards import Cards
from flatd.frames.dialects import is_flat_type, is_present

if TYPE_CHECKING:
    from flatd.config import FramesConfig


@dataclass(frozen=True)
class FrameType:
    """The type value and the keyword it came from; `not_flat` says why it is not a flat
    ("" when it is one)."""

    value: str
    keyword: str
    not_flat: str


def frame_type(cards: Cards, config: FramesConfig) -> FrameType:
    """Classify a header by its frame type (see the module docstring)."""
    if "FLATDVER" in cards:
        return FrameType("", "", "a flatd master (FLATDVER), never an input")
    if cards.get("COMBINED") is True:
        return FrameType("", "", "already combined (COMBINED = T)")
    for keyword in config.type_keywords:
        raw = cards.get(keyword)
        if is_present(raw):
            value = str(raw).strip()
            if _is_flat(value, config.flat_types):
                return FrameType(value, keyword, "")
            return FrameType(value, keyword, f"{keyword} = '{value}' is not a flat")
    if config.untyped_are_flats:
        return FrameType("", "", "")
    looked = ", ".join(config.type_keywords)
    return FrameType("", "", f"no frame type keyword (looked for {looked})")


@functools.lru_cache(maxsize=256)  # a camera writes a handful of distinct type values
def _is_flat(value: str, flat_types: tuple[str, ...]) -> bool:
    if flat_types:
        wanted = {" ".join(t.split()).lower() for t in flat_types}
        return " ".join(value.split()).lower() in wanted
    return is_flat_type(value)
