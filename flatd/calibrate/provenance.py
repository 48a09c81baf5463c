"""The header cards that say how raw frames were calibrated, for their master (and for each
calibrated copy): the steps, the overscan model and section, the trim section, the master
bias and dark by file name and SHA-256, the ccdproc version.

Keywords (8 characters, FITS-safe values):

    CALSTEPS  'subtract_overscan,trim_image,subtract_bias'  ccdproc steps, in order
    CALOSCAN  'median'                  overscan model ('chebyshev of degree 3', ...)
    CALOSAX   1                         overscan combined along this numpy axis (1 = rows)
    CALOSSEC  '[1388:1432,1:1370]'      overscan section (comment names its keyword)
    CALOSLVL  1612.4                    [ADU] median overscan level subtracted (mean of frames)
    CALTRIM   '[18:1382,1:1370]'        section kept (comment names its keyword)
    CALBIAS   'bias_20261123.fits'      master bias subtracted
    CALBSHA   '<64 hex digits>'         SHA-256 of that file
    CALDARK / CALDSHA / CALDEXP         master dark, its SHA-256, its exposure time
    CALTOOL   'ccdproc 2.5.1'

After trimming, the overscan and trim section keywords of the raw header describe pixels
the result no longer has: `remove` lists them, so a later reader neither takes the
result for raw (`detect`) nor trims it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flatd.calibrate.frame import CalibratedFrame
    from flatd.calibrate.recipe import Recipe

Card = tuple[str, Any, str]
VARIES = "varies"


@dataclass(frozen=True)
class Provenance:
    """Cards to set, keywords to remove and HISTORY lines, for a calibrated header."""

    cards: list[Card]
    remove: tuple[str, ...] = ()
    history: list[str] = field(default_factory=list)

    def apply(self, header: Any) -> None:
        """Update an astropy Header in place."""
        for keyword in self.remove:
            while keyword in header:
                del header[keyword]
        for keyword, value, comment in self.cards:
            header[keyword] = (value, comment if _comment_fits(value, comment) else "")
        for line in self.history:
            header.add_history(line)


def provenance(recipe: Recipe, frames: Sequence[CalibratedFrame], tool: str) -> Provenance:
    """What was done to `frames` (all calibrated with `recipe`; `tool` e.g. 'ccdproc 2.5.1').
    A section that differs between frames is given as 'varies'."""
    cards: list[Card] = [("CALSTEPS", ",".join(recipe.steps), "ccdproc steps")]
    if recipe.overscan:
        cards += _overscan_cards(recipe, frames)
    if recipe.trim:
        trims = [f.trim for f in frames if f.trim is not None]
        cards.append(("CALTRIM", _common([t.text for t in trims]), _from("section kept", trims)))
    for kind, used in (("bias", [f.bias for f in frames]), ("dark", [f.dark for f in frames])):
        if any(u is not None for u in used):
            cards += _master_cards(kind, [u for u in used if u is not None])
    cards.append(("CALTOOL", tool, "software that calibrated the raw frames"))
    return Provenance(
        cards=cards,
        remove=recipe.overscan_keywords + recipe.trim_keywords if recipe.trim else (),
        history=[_summary(recipe, len(frames), tool)],
    )


def _overscan_cards(recipe: Recipe, frames: Sequence[CalibratedFrame]) -> list[Card]:
    sections = [f.overscan for f in frames if f.overscan is not None]
    levels = [f.overscan_level for f in frames if f.overscan_level is not None]
    axes = {f.overscan_axis for f in frames if f.overscan_axis is not None}
    cards: list[Card] = [
        ("CALOSCAN", recipe.overscan_method(), "overscan model, ccdproc.subtract_overscan"),
        ("CALOSAX", axes.pop() if len(axes) == 1 else VARIES, "overscan combined along axis"),
        ("CALOSSEC", _common([s.text for s in sections]), _from("overscan section", sections)),
    ]
    if levels:
        mean = round(sum(levels) / len(levels), 3)
        cards.append(("CALOSLVL", mean, "[ADU] median overscan level subtracted (mean)"))
    return cards


def _master_cards(kind: str, used: Sequence[Any]) -> list[Card]:
    letter = kind[0].upper()
    names = _common([ascii_text(u.path.name) for u in used])
    digests = _common([u.sha256 for u in used])
    cards: list[Card] = [
        (f"CAL{kind.upper()}", names, f"master {kind} subtracted, ccdproc.subtract_{kind}"),
        (f"CAL{letter}SHA", digests, f"SHA-256 of the master {kind} file"),
    ]
    if kind == "dark":
        exposures = {u.exptime for u in used}
        exposure = exposures.pop() if len(exposures) == 1 else VARIES
        cards.append(("CALDEXP", exposure, "[s] master dark exposure, scaled by EXPTIME"))
    return cards


def _summary(recipe: Recipe, n_frames: int, tool: str) -> str:
    parts = []
    if recipe.overscan:
        parts.append(f"overscan ({recipe.overscan_method()})")
    if recipe.trim:
        parts.append("trim")
    if recipe.bias is not None:
        parts.append(f"bias {ascii_text(recipe.bias.path.name)}")
    if recipe.dark is not None:
        parts.append(f"dark {ascii_text(recipe.dark.path.name)} scaled by exposure")
    return f"flatd calibrated {n_frames} raw frame(s) with {tool}: {', '.join(parts)}"


def _comment_fits(value: Any, comment: str) -> bool:
    """Whether `comment` fits on the card beside `value` (astropy would warn and cut it)."""
    if isinstance(value, str):
        if len(value) > 68:
            return False
        width = max(len(value.replace("'", "''")), 8) + 2
    else:
        width = max(len(str(value)), 20)
    return 10 + width + 3 + len(comment) <= 80


def _common(values: Sequence[str]) -> str:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else VARIES


def _from(what: str, sections: Sequence[Any]) -> str:
    keywords = sorted({s.keyword for s in sections})
    return f"{what} ({', '.join(keywords)})" if keywords else what


def ascii_text(text: str) -> str:
    """`text` with anything outside printable ASCII escaped (a file name in a FITS card)."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode() for c in text)
