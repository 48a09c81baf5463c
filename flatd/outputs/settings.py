"""The settings a master was made with, and how they differ from the configuration now.

A master's header records the recipe it was combined with (`CMB*` cards, written by
`masters`) and the QA limits it was judged by (`QA*` limit cards, added here). After the
recipe or a limit is changed, `differences()` says which masters were made otherwise —
`flatd status`, the status file and the page list them — and `flatd remake` makes them
again with the settings of today. Settings that do not change a master (the memory limit)
are not compared; a card an older master lacks is not a difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flatd.config import Config

__all__ = ["SETTINGS", "Setting", "differences", "limit_cards"]


@dataclass(frozen=True)
class Setting:
    """One setting recorded in a master's header: its card and its configuration key."""

    card: str
    section: str
    key: str
    comment: str = ""

    def value(self, config: Config) -> Any:
        return getattr(getattr(config, self.section), self.key)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


RECIPE = (  # written by masters.write_master
    Setting("CMBMETH", "combine", "method"),
    Setting("CMBSCALE", "combine", "scale"),
    Setting("CMBCLIP", "combine", "sigma_clip"),
    Setting("CMBSLOW", "combine", "sigma_low"),
    Setting("CMBSHIGH", "combine", "sigma_high"),
    Setting("CMBCENT", "combine", "center"),
    Setting("CMBDEV", "combine", "deviation"),
    Setting("CMBNMODE", "combine", "normalise"),  # a mosaic's master only
)
LIMITS = (  # written here, with the QA cards
    Setting("QAMINLVL", "qa", "min_level", "qa.min_level: fainter inputs rejected (ADU)"),
    Setting("QAMAXLVL", "qa", "max_level", "qa.max_level: brighter inputs rejected (ADU)"),
    Setting("QASATLVL", "qa", "saturation_level", "qa.saturation_level (0: SATURATE)"),
    Setting("QAMAXSAT", "qa", "max_saturated_fraction", "qa.max_saturated_fraction"),
    Setting("QAMINRSP", "qa", "min_response", "qa.min_response: weaker pixels masked"),
    Setting("QAMAXCHG", "qa", "max_change", "qa.max_change: larger changes flagged"),
)
SETTINGS = RECIPE + LIMITS


def limit_cards(config: Config) -> list[tuple[str, Any, str]]:
    """The QA limits as header cards (keyword, value, comment)."""
    return [(s.card, s.value(config), s.comment) for s in LIMITS]


def differences(recorded: Mapping[str, Any], config: Config) -> list[str]:
    """How a master's recorded settings (card -> value) differ from `config`, one line
    each (`combine.sigma_high = 3.0 (now 5.0)`); [] when it was made as it would be now."""
    found = []
    for setting in SETTINGS:
        if setting.card not in recorded:
            continue
        then, now = recorded[setting.card], setting.value(config)
        if not _same(then, now):
            found.append(f"{setting.name} = {_text(then)} (now {_text(now)})")
    return found


def _same(then: Any, now: Any) -> bool:
    if isinstance(now, bool) or isinstance(then, bool):
        return bool(then) == bool(now)
    if isinstance(now, int | float) and isinstance(then, int | float):
        return abs(float(then) - float(now)) <= 1e-9 * max(1.0, abs(float(now)))
    return str(then).strip() == str(now)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
