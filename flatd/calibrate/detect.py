"""Is a frame raw? A pure function of its header cards, cheap enough for every file indexed.

A frame is raw when it has an overscan section (`BIASSEC`, or the configured keywords) and
no record of the bias having been removed. The records looked for are the ones the common
reduction tools write:

- IRAF `noao.imred.ccdred.ccdproc` processing flags (ccdred `instruments` help: "for
  processing flags the package assumes that the absence of a keyword means that the
  processing has not been done"; NOAO's old convention writes 0 for "not done"):
  `OVERSCAN = 'Jun  2 18:18 Overscan section is [520:540,*] with mean=481.8784'`,
  `ZEROCOR`, `DARKCOR`, `CCDPROC = 'CCD processing done'`;
- astropy's ccdproc (`ccdproc.log_meta.log_to_metadata` with `ccdproc.core._short_names`):
  a FITS header gets `HIERARCH SUBTRACT_OVERSCAN = 'suboscan'` and `SUBOSCAN = '<the
  call's arguments>'`; likewise `SUBTRACT_BIAS`/`SUBBIAS`, `SUBTRACT_DARK`/`SUBDARK`,
  `CCD_PROCESS`/`CCDPROC`;
- BANZAI (LCO): `L1STATOV = 1` (overscan) and `L1STATBI = 1` (bias), 0 when not done;
- MaxIm DL: `CALSTAT` holding `B` (bias) or `D` (dark);
- flatd's own calibration cards (`CALOSCAN`, `CALBIAS`; see `provenance`).

Trimming alone (IRAF `TRIM`, ccdproc `TRIM_IMAGE`/`TRIMIM`) removes no bias: it is reported
but leaves a frame raw. Nothing here imports astropy: the cards are a mapping of keyword to
value (as flatd's header reader produces) or anything with astropy's `Header.cards`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# keyword -> what its presence (with a "done" value) records
BIAS_REMOVAL_RECORDS: dict[str, str] = {
    "OVERSCAN": "IRAF ccdproc overscan",
    "ZEROCOR": "IRAF ccdproc zero level",
    "DARKCOR": "IRAF ccdproc dark",
    "CCDPROC": "IRAF ccdproc / ccdproc.ccd_process",
    "SUBOSCAN": "ccdproc.subtract_overscan",
    "SUBTRACT_OVERSCAN": "ccdproc.subtract_overscan",
    "SUBBIAS": "ccdproc.subtract_bias",
    "SUBTRACT_BIAS": "ccdproc.subtract_bias",
    "SUBDARK": "ccdproc.subtract_dark",
    "SUBTRACT_DARK": "ccdproc.subtract_dark",
    "CCD_PROCESS": "ccdproc.ccd_process",
    "L1STATOV": "BANZAI overscan",
    "L1STATBI": "BANZAI bias",
    "CALOSCAN": "flatd overscan",
    "CALBIAS": "flatd bias",
}
TRIM_RECORDS: dict[str, str] = {
    "TRIM": "IRAF ccdproc trim",
    "TRIMIM": "ccdproc.trim_image",
    "TRIM_IMAGE": "ccdproc.trim_image",
}
CALSTAT = "CALSTAT"  # MaxIm DL: letters B (bias), D (dark), F (flat)
DEFAULT_OVERSCAN_KEYWORDS = ("BIASSEC",)
_NOT_DONE = frozenset({"", "0", "F", "FALSE", "NO", "N", "NONE"})


@dataclass(frozen=True)
class RawSigns:
    """What a header says about its frame's calibration state."""

    overscan_keyword: str | None  # the keyword holding the overscan section, e.g. "BIASSEC"
    overscan_section: str | None  # its value, e.g. "[1388:1432,1:1370]"
    bias_removed: tuple[str, ...]  # records of bias/overscan/dark removal found
    trimmed: tuple[str, ...]  # records of trimming found (no sign of bias removal)
    looked_for: tuple[str, ...]  # the overscan keywords that were looked for

    @property
    def is_raw(self) -> bool:
        """An overscan section and no record of the bias having been removed."""
        return self.overscan_section is not None and not self.bias_removed

    def reason(self) -> str:
        """One line saying why the frame counts as raw (or why not), for refusals and logs."""
        if self.overscan_section is None:
            return f"not raw: no overscan section ({', '.join(self.looked_for)})"
        if self.bias_removed:
            return f"not raw: {self.overscan_keyword} present but {self._records()} recorded"
        trimmed = f" (trimmed: {', '.join(self.trimmed)})" if self.trimmed else ""
        return (
            f"raw frame: {self.overscan_keyword} = '{self.overscan_section}' and no "
            f"overscan/bias subtraction recorded (no OVERSCAN, ZEROCOR, CCDPROC, SUBOSCAN, "
            f'SUBBIAS, …){trimmed}; set [calibrate] raw = "calibrate" and a master bias '
            f"to use it"
        )

    def _records(self) -> str:
        return ", ".join(self.bias_removed)


def detect_raw(
    cards: Mapping[str, Any] | Any, overscan_keywords: Sequence[str] = DEFAULT_OVERSCAN_KEYWORDS
) -> RawSigns:
    """Read a frame's calibration state from its header cards (keyword -> value, or an
    astropy Header); keyword case does not matter, HIERARCH keywords count by their name."""
    values = header_values(cards)
    overscan_keyword = overscan_section = None
    for keyword in overscan_keywords:
        value = values.get(card_name(keyword))
        if isinstance(value, str) and value.strip():
            overscan_keyword, overscan_section = card_name(keyword), value.strip()
            break
    return RawSigns(
        overscan_keyword=overscan_keyword,
        overscan_section=overscan_section,
        bias_removed=tuple(_found(values, BIAS_REMOVAL_RECORDS)) + _calstat(values),
        trimmed=tuple(_found(values, TRIM_RECORDS)),
        looked_for=tuple(card_name(k) for k in overscan_keywords),
    )


def detection_keywords(
    overscan_keywords: Iterable[str] = DEFAULT_OVERSCAN_KEYWORDS,
) -> frozenset[str]:
    """Every keyword `detect_raw` reads: a header reader that parses only the cards it
    needs must parse these too."""
    return frozenset(
        {
            *(card_name(k) for k in overscan_keywords),
            *BIAS_REMOVAL_RECORDS,
            *TRIM_RECORDS,
            CALSTAT,
        }
    )


def card_name(keyword: str) -> str:
    """A keyword as `header_values` names it: upper case, a HIERARCH one without the prefix."""
    return keyword.upper().removeprefix("HIERARCH ").strip()


def header_values(cards: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Header cards as {KEYWORD: value}: upper-case, HIERARCH keywords by their name."""
    if hasattr(cards, "cards"):  # an astropy Header: HIERARCH keywords without the prefix
        return {str(card.keyword).upper(): card.value for card in cards.cards}
    normal = {}
    for keyword, value in cards.items():
        name = str(keyword).upper()
        normal[name.removeprefix("HIERARCH ").strip()] = value
    return normal


def _found(values: Mapping[str, Any], records: Mapping[str, str]) -> Iterable[str]:
    return (keyword for keyword in records if keyword in values and _done(values[keyword]))


def _done(value: Any) -> bool:
    """Whether a processing flag's value says "done": any text or a true/non-zero number;
    empty, 0, F/false/no and undefined say "not done"."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().upper() not in _NOT_DONE
    return True  # an unusual value type: something was recorded


def _calstat(values: Mapping[str, Any]) -> tuple[str, ...]:
    value = values.get(CALSTAT)
    if isinstance(value, str) and {"B", "D"} & set(value.strip().upper()):
        return (CALSTAT,)
    return ()
