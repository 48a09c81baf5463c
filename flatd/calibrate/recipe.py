"""What calibrating one sequence of raw frames means: the steps and the masters chosen.

`plan()` turns `[calibrate]` and the first raw frame's header into a `Recipe`: overscan
subtraction (and how), the trim, and the master bias and dark picked for the sequence's
calibrated shape, binning and start. It reads headers only; pixels are `frame`'s work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flatd.calibrate.detect import header_values
from flatd.calibrate.errors import CalibrationError
from flatd.calibrate.geometry import frame_geometry
from flatd.calibrate.library import MasterFile, MasterLibrary
from flatd.frames import binning_of
from flatd.frames.dialects import BINNING_KEYWORDS

if TYPE_CHECKING:
    from flatd.config import CalibrateConfig

FITTED_MODELS = ("chebyshev", "legendre", "polynomial")


@dataclass(frozen=True)
class Recipe:
    """The calibration of one sequence: which steps, with what."""

    overscan: bool
    overscan_model: str  # "median" | "mean" | "chebyshev" | "legendre" | "polynomial"
    overscan_degree: int  # of a fitted model
    trim: bool
    overscan_keywords: tuple[str, ...]
    trim_keywords: tuple[str, ...]
    bias: MasterFile | None
    dark: MasterFile | None
    binning_keywords: tuple[str, ...] = BINNING_KEYWORDS  # the frames' (frames.binning_keywords)

    @property
    def steps(self) -> tuple[str, ...]:
        """The steps in the order they run, by ccdproc's names."""
        chosen = (
            ("subtract_overscan", self.overscan),
            ("trim_image", self.trim),
            ("subtract_bias", self.bias is not None),
            ("subtract_dark", self.dark is not None),
        )
        return tuple(name for name, wanted in chosen if wanted)

    def overscan_method(self) -> str:
        """The overscan model in words, e.g. 'median' or 'chebyshev of degree 3'."""
        if self.overscan_model in FITTED_MODELS:
            return f"{self.overscan_model} of degree {self.overscan_degree}"
        return self.overscan_model


@dataclass
class MasterLibraries:
    """The configured master bias and dark sources, kept between sequences (the daemon
    refreshes them when their directories change)."""

    bias: MasterLibrary | None
    dark: MasterLibrary | None

    @classmethod
    def from_settings(cls, settings: CalibrateConfig, base: Path) -> MasterLibraries:
        """The libraries of `settings`; relative paths are relative to `base` (the config
        file's directory; `load_config` has already made them absolute)."""
        return cls(
            bias=MasterLibrary(base / settings.bias, "bias") if settings.bias else None,
            dark=MasterLibrary(base / settings.dark, "dark") if settings.dark else None,
        )

    def version(self) -> tuple[object, ...]:
        """What the sources hold now (see `MasterLibrary.version`): a new master bias or
        dark changes it."""
        return tuple(source.version() if source else None for source in (self.bias, self.dark))

    def describe(self) -> list[str]:
        """One line per configured source: how many masters it holds, or that it is missing."""
        return [source.describe() for source in (self.bias, self.dark) if source is not None]


def settings_problems(settings: CalibrateConfig) -> list[str]:
    """Cross-key problems of `[calibrate]`, worded like the config loader's."""
    problems = []
    if settings.raw == "calibrate" and not settings.overscan and not settings.bias:
        problems.append(
            'calibrate.raw = "calibrate" needs calibrate.overscan = true or a calibrate.bias: '
            "nothing else removes the bias level"
        )
    if settings.overscan_model not in FITTED_MODELS and settings.overscan_degree != 1:
        problems.append(
            "calibrate.overscan_degree applies to a fitted overscan_model "
            f'({", ".join(FITTED_MODELS)}), not to "{settings.overscan_model}"'
        )
    return problems


def settings_notes(settings: CalibrateConfig) -> list[str]:
    """What `flatd check-config` warns about without refusing the file: a master bias or
    dark path that does not exist yet (flatd waits for it), masters configured while raw
    frames are refused. Paths as `load_config` left them (absolute)."""
    notes = []
    if settings.raw != "calibrate":
        named = [key for key in ("bias", "dark") if getattr(settings, key)]
        if named:
            keys = " and ".join(f"calibrate.{key}" for key in named)
            notes.append(
                f'{keys} not used: calibrate.raw = "reject" refuses raw frames (set "calibrate")'
            )
        return notes
    for key in ("bias", "dark"):
        path = getattr(settings, key)
        if path and not Path(path).exists():
            notes.append(
                f"calibrate.{key} = {path} does not exist (yet): raw flats wait for a master "
                f"{key} there"
            )
    return notes


def plan(
    settings: CalibrateConfig,
    cards: Mapping[str, Any] | Any,
    start: datetime,
    libraries: MasterLibraries,
    binning_keywords: tuple[str, ...] = BINNING_KEYWORDS,
) -> Recipe:
    """The recipe for a sequence whose first raw frame has header `cards` and which starts
    at `start` (aware); the frames' binning is read from `binning_keywords` (the frames
    package's binning role). Raises CalibrationError (CalibrationUnavailable while no
    master fits yet) naming what is wrong."""
    problems = settings_problems(settings)
    if problems:
        raise CalibrationError(problems[0])
    values = header_values(cards)
    geometry = frame_geometry(
        values,
        raw_shape(values),
        tuple(settings.overscan_keywords) if settings.overscan else None,
        tuple(settings.trim_keywords) if settings.trim else None,
    )
    shape = geometry.shape
    binning = binning_of(values, binning_keywords)
    return Recipe(
        overscan=settings.overscan,
        overscan_model=settings.overscan_model,
        overscan_degree=settings.overscan_degree,
        trim=settings.trim,
        overscan_keywords=tuple(k.upper() for k in settings.overscan_keywords),
        trim_keywords=tuple(k.upper() for k in settings.trim_keywords),
        bias=libraries.bias.select(shape, binning, start) if libraries.bias else None,
        dark=libraries.dark.select(shape, binning, start) if libraries.dark else None,
        binning_keywords=binning_keywords,
    )


def raw_shape(values: Mapping[str, Any]) -> tuple[int, int]:
    """(ny, nx) of a frame from its header."""
    for prefix in ("Z", ""):  # a tile-compressed image's own axes first
        nx, ny = values.get(f"{prefix}NAXIS1"), values.get(f"{prefix}NAXIS2")
        if isinstance(nx, int) and isinstance(ny, int) and nx > 0 and ny > 0:
            return (ny, nx)
    raise CalibrationError("no 2-D image size (NAXIS1, NAXIS2) in the header")
