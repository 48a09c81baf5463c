"""Where a raw frame's overscan and image lie, and the numpy slices ccdproc is given.

The overscan is combined across its strip: a strip of columns beside the image (it covers
more of the rows than of the columns) gives one value per row (`overscan_axis=1`, the
guide's case), a strip of rows one value per column (`overscan_axis=0`). ccdproc subtracts
that vector from every row (column) of the frame, so the strip must reach along the whole
frame; IRAF-style sections often leave out a first row or column (`[411:431,2:573]`). Then
the frame is first cut to the rows (columns) the overscan covers, provided the trim section
keeps none of the others. The steps are then the guide's own:

    ccd = ccd[cut]                                          # only when needed
    ccd = subtract_overscan(ccd, overscan=ccd[overscan], overscan_axis=axis, ...)
    ccd = trim_image(ccd[trim])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flatd.calibrate.detect import card_name
from flatd.calibrate.errors import CalibrationError
from flatd.calibrate.sections import Section, parse_section

Slices = tuple[slice, slice]
HINTS = {
    "overscan": "set [calibrate] overscan = false to calibrate with the master bias alone",
    "trim": "set [calibrate] trim = false to keep the whole readout",
}


@dataclass(frozen=True)
class Geometry:
    """One raw frame's layout, as the calibration uses it."""

    raw_shape: tuple[int, int]
    overscan: Section | None
    axis: int | None  # numpy axis the overscan is combined along
    trim: Section | None
    cut: Slices  # of the raw frame, kept before the overscan is subtracted

    @property
    def needs_cut(self) -> bool:
        return self.cut != (slice(0, self.raw_shape[0]), slice(0, self.raw_shape[1]))

    @property
    def overscan_slices(self) -> Slices:
        """The overscan, in the cut frame."""
        assert self.overscan is not None
        return self._relative(self.overscan)

    @property
    def trim_slices(self) -> Slices:
        """The section kept, in the cut frame."""
        assert self.trim is not None
        return self._relative(self.trim)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the calibrated frame."""
        if self.trim is not None:
            return self.trim.shape
        rows, columns = self.cut
        return (rows.stop - rows.start, columns.stop - columns.start)

    def _relative(self, section: Section) -> Slices:
        rows, columns = self.cut
        return (_shift(section.rows, rows.start), _shift(section.columns, columns.start))


def frame_geometry(
    values: Mapping[str, Any],
    raw_shape: tuple[int, int],
    overscan_keywords: tuple[str, ...] | None,
    trim_keywords: tuple[str, ...] | None,
) -> Geometry:
    """The layout of a raw frame of `raw_shape` from its header `values` (upper-case keys);
    None for the keywords of a step that is not wanted. CalibrationError names any misfit."""
    overscan = find_section(values, overscan_keywords, raw_shape, "overscan")
    trim = find_section(values, trim_keywords, raw_shape, "trim")
    if overscan is not None and trim is not None and trim.overlaps(overscan):
        raise CalibrationError(
            f"{trim.keyword} = '{trim.text}' overlaps the overscan "
            f"{overscan.keyword} = '{overscan.text}'"
        )
    ny, nx = raw_shape
    full = (slice(0, ny), slice(0, nx))
    if overscan is None:
        return Geometry(raw_shape, None, None, trim, full)
    axis = 1 if overscan.shape[0] / ny >= overscan.shape[1] / nx else 0
    cut = _cut(overscan, axis, trim, full)
    return Geometry(raw_shape, overscan, axis, trim, cut)


def find_section(
    values: Mapping[str, Any],
    keywords: tuple[str, ...] | None,
    image_shape: tuple[int, int],
    role: str,
) -> Section | None:
    """The first of `keywords` present, as a validated section (None when no keywords)."""
    if keywords is None:
        return None
    for keyword in keywords:
        value = values.get(card_name(keyword))
        if isinstance(value, str) and value.strip():
            return parse_section(card_name(keyword), value, image_shape)
    raise CalibrationError(
        f"no {role} section ({', '.join(keywords)}) in the header; {HINTS[role]}"
    )


def _cut(overscan: Section, axis: int, trim: Section | None, full: Slices) -> Slices:
    """The raw frame cut to the rows (axis 1) or columns (axis 0) the overscan covers."""
    along = overscan.rows if axis == 1 else overscan.columns
    if along == full[1 - axis]:
        return full
    what = "rows" if axis == 1 else "columns"
    covered = f"{along.start + 1}-{along.stop}"
    if trim is None:
        raise CalibrationError(
            f"{overscan.keyword} = '{overscan.text}' covers {what} {covered} only and trim = "
            f"false: the other {what} cannot be overscan-corrected"
        )
    kept = trim.rows if axis == 1 else trim.columns
    if kept.start < along.start or kept.stop > along.stop:
        raise CalibrationError(
            f"{trim.keyword} = '{trim.text}' keeps {what} that the overscan "
            f"{overscan.keyword} = '{overscan.text}' does not cover ({what} {covered})"
        )
    return (along, full[1]) if axis == 1 else (full[0], along)


def _shift(part: slice, offset: int) -> slice:
    return slice(part.start - offset, part.stop - offset)
