"""Where a mosaic's extensions lie on the detector, for the pictures of its master.

Each extension goes where its DETSEC says (`[x1:x2,y1:y2]`, 1-based detector pixels,
inclusive; a range that runs backwards, `[2048:1025,...]`, is an amplifier read out from
the far edge, whose image is drawn reversed along that axis), so that the picture shows
the detector as it is, with the amplifiers' gain steps at their seams. When any extension
has no DETSEC, one cannot be read, or two overlap, the extensions are drawn side by side
in file order instead, with a gap between them.

A placement is an `imshow` extent (left, right, bottom, top, for `origin="lower"`): the
image is stretched over it and drawn reversed where left > right or bottom > top.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SECTION = re.compile(r"\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]")
GAP = 0.03  # of the widest extension, between extensions drawn side by side


@dataclass(frozen=True)
class Placement:
    """One extension's place in the picture."""

    left: float
    right: float
    bottom: float
    top: float

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return self.left, self.right, self.bottom, self.top

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.bottom + self.top) / 2

    def _span(self) -> tuple[float, float, float, float]:
        return (
            min(self.left, self.right),
            max(self.left, self.right),
            min(self.bottom, self.top),
            max(self.bottom, self.top),
        )

    def overlaps(self, other: Placement) -> bool:
        a, b = self._span(), other._span()
        return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def placements(detsecs: Sequence[str], shapes: Sequence[tuple[int, int]]) -> list[Placement]:
    """Each extension's place: by its DETSEC, or side by side (see the module docstring)."""
    by_detsec = [_from_detsec(text) for text in detsecs]
    found = [p for p in by_detsec if p is not None]
    if len(found) == len(shapes) and not _any_overlap(found):
        return found
    return side_by_side(shapes)


def side_by_side(shapes: Sequence[tuple[int, int]]) -> list[Placement]:
    """The extensions left to right in file order, each at its own size."""
    gap = GAP * max((nx for _, nx in shapes), default=0)
    placed, x = [], 0.0
    for ny, nx in shapes:
        placed.append(Placement(x, x + nx, 0.0, float(ny)))
        x += nx + gap
    return placed


def bounds(placed: Sequence[Placement]) -> tuple[float, float, float, float]:
    """The picture's limits: left, right, bottom, top."""
    spans = [p._span() for p in placed]
    return (
        min(s[0] for s in spans),
        max(s[1] for s in spans),
        min(s[2] for s in spans),
        max(s[3] for s in spans),
    )


def _from_detsec(text: str) -> Placement | None:
    match = SECTION.fullmatch(text.strip()) if text else None
    if match is None:
        return None
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    if min(x1, x2, y1, y2) < 1:
        return None
    return Placement(*_edges(x1, x2), *_edges(y1, y2))


def _edges(first: int, last: int) -> tuple[float, float]:
    """The outer pixel edges of a 1-based range, in the range's own direction."""
    return (first - 0.5, last + 0.5) if first <= last else (first + 0.5, last - 0.5)


def _any_overlap(placed: list[Placement]) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(placed) for b in placed[i + 1 :])
