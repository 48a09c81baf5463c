"""FITS image sections (`BIASSEC = '[1388:1432,1:1370]'`) checked against an image.

The FITS/IRAF convention: 1-based, inclusive, x (column) first, `*` for a whole axis.
ccdproc's `slice_from_string(..., fits_convention=True)` turns one into numpy slices; this
module only makes sure the text is a plain two-axis section lying inside the image, so a
header card can never make ccdproc read the wrong pixels (it accepts `[5,1:3]` and
reversed ranges, which no camera means for an overscan or trim section).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flatd.calibrate.errors import CalibrationError

_AXIS = r"\s*(?:\*|\d+\s*:\s*\d+)\s*"
_SECTION = re.compile(rf"\[{_AXIS},{_AXIS}\]")


@dataclass(frozen=True)
class Section:
    """A validated section of an image of `image_shape` (ny, nx)."""

    keyword: str  # where it came from, e.g. "BIASSEC"
    text: str  # as written, e.g. "[1388:1432,1:1370]"
    rows: slice  # numpy slices, 0-based, end exclusive, start and stop given
    columns: slice
    image_shape: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the section."""
        return (len(self._row_range), len(self._column_range))

    def overlaps(self, other: Section) -> bool:
        """Whether the two sections share a pixel."""
        return _meet(self._row_range, other._row_range) and _meet(
            self._column_range, other._column_range
        )

    @property
    def _row_range(self) -> range:
        return range(self.image_shape[0])[self.rows]

    @property
    def _column_range(self) -> range:
        return range(self.image_shape[1])[self.columns]


def _concrete(part: slice, length: int) -> slice:
    """`part` with its start and stop filled in (`*` gives slice(None, None))."""
    span = range(length)[part]
    return slice(span.start, span.stop)


def _meet(a: range, b: range) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)


def parse_section(keyword: str, text: object, image_shape: tuple[int, int]) -> Section:
    """The section `keyword = text` of an image of `image_shape`; CalibrationError when it is
    not a plain FITS section inside the image."""
    from ccdproc.utils.slices import slice_from_string

    written = str(text).strip() if text is not None else ""
    if not _SECTION.fullmatch(written):
        raise CalibrationError(
            f"{keyword} = '{written}' is not a FITS section like '[1388:1432,1:1370]'"
        )
    try:
        rows, columns = slice_from_string(written, fits_convention=True)
    except ValueError as exc:
        raise CalibrationError(f"{keyword} = '{written}': {exc}") from None
    if any(s.step is not None for s in (rows, columns)):
        raise CalibrationError(f"{keyword} = '{written}' is reversed; flatd does not flip images")
    ny, nx = image_shape
    if (rows.stop or 0) > ny or (columns.stop or 0) > nx:
        raise CalibrationError(
            f"{keyword} = '{written}' lies outside the {nx}x{ny} image (columns x rows)"
        )
    section = Section(keyword, written, _concrete(rows, ny), _concrete(columns, nx), (ny, nx))
    if 0 in section.shape:
        raise CalibrationError(f"{keyword} = '{written}' is empty")
    return section
