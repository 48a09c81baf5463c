"""What reading a file's header gives: a `Frame` (a usable flat) or a `Skip` (why not).

Plain frozen values, handed from `frames` to the index, the engine and the reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

GroupValue = str | int | float | bool
GroupKey = tuple[tuple[str, GroupValue], ...]
"""A group's canonical keys and values, in `frames.group_by` order (hashable)."""

Compression = Literal["none", "gzip", "tile"]
Layout = tuple[tuple[str, tuple[int, int]], ...]
"""Each image plane's name and shape (`Frame.layout`)."""


@dataclass(frozen=True)
class Extension:
    """One image plane of a frame: an image HDU (or a tile-compressed image, a BINTABLE
    with ZIMAGE), where its values lie and the cards read from its own header.

    `name` is the HDU's EXTNAME, or `IM<n>` (the plane's number, from 1) where there is
    none or the names cannot tell the planes apart (`flatd.frames.extensions`). `extras`
    holds its GAIN, RDNOISE, SATURATE and EXPTIME (the primary header's where it has
    none); `detsec` its DETSEC card, the plane's place on the detector ("" when none)."""

    name: str
    hdu: int
    shape: tuple[int, int]  # (ny, nx), numpy order
    bitpix: int
    compression: Compression
    data_offset: int | None  # as Frame.data_offset
    bscale: float = 1.0
    bzero: float = 0.0
    extras: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    detsec: str = ""


class SkipKind(StrEnum):
    """Why a file is not an input. Its values are the status file's and `flatd scan`'s
    names (SPEC.md), and compare equal to them."""

    IGNORED = "skipped"  # not a flat flatd combines: a bias, a light, a master
    REFUSED = "rejected"  # should have been one but cannot be used: truncated, unreadable, raw


@dataclass(frozen=True)
class Frame:
    """A usable flat: where its pixels are and what group and sequence it belongs to.

    `group` is keyed by canonical names (FILTER, INSTRUME, XBINNING, YBINNING and the
    user's keys) whichever dialect keyword each value came from; `sources` says which
    keyword that was for each key ("" when the frame has none: the value is then a
    `dialects.missing_value` placeholder). `date_source` names the card(s) the date was
    read from ("" for the file time) and `date_note` says why the header's date was not
    used, when it was not. `raw` marks a raw frame (an overscan section, no record of
    bias removal: `flatd.calibrate.detect`), indexed only with `[calibrate] raw =
    "calibrate"`; `overscan` is then (keyword, section), e.g. ("BIASSEC", "[1:8,1:64]").
    `extensions` lists every image plane of a mosaic or multi-amplifier frame (the
    fields above then describe its first plane)."""

    path: Path
    size: int
    mtime_ns: int
    imagetyp: str
    group: GroupKey
    date: datetime
    date_from_header: bool
    shape: tuple[int, int]  # (ny, nx), numpy order
    hdu: int  # index of the HDU holding the image
    bitpix: int
    compression: Compression
    data_offset: int | None  # byte offset of the pixels (in the decompressed stream for gzip)
    bscale: float = 1.0
    bzero: float = 0.0
    extras: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    type_keyword: str = ""
    sources: tuple[tuple[str, str], ...] = ()
    binning: tuple[int, int] | None = None
    date_source: str = ""
    date_note: str = ""
    raw: bool = False
    overscan: tuple[str, str] | None = None
    content: str = (
        ""  # the digest of the file's bytes (`flatd.inputs.fingerprint`); "" if not taken
    )
    # every image plane, in file order, for a frame of several (a mosaic or a multi-
    # amplifier camera); () for a single image, which the fields above describe
    extensions: tuple[Extension, ...] = ()

    @property
    def planes(self) -> tuple[Extension, ...]:
        """The frame's image planes: its extensions, or its one image as an Extension."""
        if self.extensions:
            return self.extensions
        name = "PRIMARY" if self.hdu == 0 else "IM1"
        return (
            Extension(
                name,
                self.hdu,
                self.shape,
                self.bitpix,
                self.compression,
                self.data_offset,
                self.bscale,
                self.bzero,
                self.extras,
            ),
        )

    @property
    def layout(self) -> Layout:
        """What two frames must share to be combined plane by plane: each plane's name
        and shape, in order (a single image: its shape alone, wherever it is stored)."""
        if not self.extensions:
            return (("", self.shape),)
        return tuple((plane.name, plane.shape) for plane in self.extensions)

    @property
    def identity(self) -> str:
        """What makes two sightings of a frame the same frame: its content (a link, a copy
        or a touched file is the same frame); without a digest, its path, size and mtime."""
        return self.content or f"{self.path}|{self.size}|{self.mtime_ns}"


def describe_layout(layout: Layout) -> str:
    """`4 extensions AMP1, AMP2, AMP3, AMP4 of 1024x1024` (each with its size when they
    differ; the first and last names of a long list)."""
    if len(layout) == 1:
        (ny, nx) = layout[0][1]
        return f"one image of {nx}x{ny}"
    names = [name for name, _ in layout]
    shapes = {shape for _, shape in layout}
    if len(shapes) > 1:
        parts = [f"{name} {shape[1]}x{shape[0]}" for name, shape in layout]
        return f"{len(layout)} extensions {', '.join(parts)}"
    listed = ", ".join(names) if len(names) <= 8 else f"{names[0]} .. {names[-1]}"
    (ny, nx) = shapes.pop()
    return f"{len(layout)} extensions {listed} of {nx}x{ny}"


@dataclass(frozen=True)
class Skip:
    """A file that is not an input: IGNORED when it is simply not a flat we combine (a
    bias, a master), REFUSED when it should have been one but cannot be used."""

    path: Path
    kind: SkipKind
    reason: str
    size: int = 0
    mtime_ns: int = 0
    incomplete: bool = False  # shorter than its header says: maybe still being written

    @property
    def refused(self) -> bool:
        return self.kind == SkipKind.REFUSED
