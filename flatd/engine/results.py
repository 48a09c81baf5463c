"""What the engine hands back: a frame's levels, its part in a master, and the master."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flatd.engine.outputs import Outputs


@dataclass(frozen=True)
class PlaneSample:
    """A plane's sample rows, thinned to a few hundred columns, for `score_structure`."""

    values: np.ndarray  # (sample rows, sampled columns), float32
    block_rows: np.ndarray  # the GRID block row of each sample row
    block_cols: np.ndarray  # the GRID block column of each sampled column


@dataclass(frozen=True)
class FrameLevels:
    """What the levels pass measured on one whole frame."""

    median: float
    mean: float
    saturated_fraction: float  # of pixels >= the saturation level (0 when not checked)
    # one per image plane; dropped once the frame's structure is scored
    samples: tuple[PlaneSample, ...] = field(default=(), compare=False, repr=False)
    # unlike the others (`score_structure`): the largest departure of a block from the
    # sequence's median image, and the share of the frame's values far from it
    structure: float = float("nan")
    outlying_fraction: float = float("nan")
    # a mosaic's planes each on their own, (median, mean) in file order: only measured for
    # `combine.normalise = "extension"`
    plane_levels: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class FrameStats:
    """One input's part in a master (a row of the INPUTS table)."""

    path: Path
    median: float
    mean: float
    scale: float  # factor the frame was multiplied by (1/median, 1/mean or 1)
    used: bool
    reason: str  # why not used ("" when used)
    clipped_fraction: float  # of its pixels rejected by the sigma clip
    structure: float = float("nan")  # largest large-scale departure from the median pattern
    # a mosaic's extensions scaled each by its own factor (`combine.normalise = "extension"`)
    plane_scales: tuple[float, ...] = ()


@dataclass
class PlaneResult:
    """One image plane combined, not yet normalised."""

    data: np.ndarray  # the clipped mean of the scaled values (NaN where none was kept)
    uncertainty: np.ndarray  # standard deviation of the mean
    empty: np.ndarray  # bool, True where no value was kept
    clipped: np.ndarray  # per frame: values rejected by the clip
    threads: int
    rows_per_band: int
    engine: str  # "compiled" or "numpy"


@dataclass
class MasterPlane:
    """One plane of a master, normalised: data and uncertainty in FITS (big-endian) byte
    order, the mask, and how many pixels it holds."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    masked: int


@dataclass(frozen=True)
class ExtensionResult:
    """One extension of a mosaic's master: which input extension it is, and how it was
    normalised."""

    name: str  # the master's EXTNAME (the input's, or IM<n>)
    hdu: int  # its HDU in the inputs, whose own header cards it copies
    shape: tuple[int, int]
    detsec: str  # the input's DETSEC ("" when none): where it lies on the detector
    normalisation: float  # what its combined values were divided by
    masked_pixels: int


@dataclass
class CombineResult:
    data: np.ndarray  # normalised to median 1; 1.0 where masked
    uncertainty: np.ndarray  # standard deviation of the mean; 0 where masked
    mask: np.ndarray  # bool: no value survived, or a dead or weak pixel
    stats: list[FrameStats]
    normalisation: float  # median of the combined, scaled frames before normalising
    peak_bytes: int  # largest total of buffers the engine held at once
    threads: int = 1
    rows_per_band: int = 0
    engine: str = "numpy"  # "compiled" when the compiled kernel did the bands
    engine_reason: str = ""  # why this engine (e.g. "FLATD_ENGINE=numpy", "built")
    masked_pixels: int = 0  # pixels set in `mask`
    # a mosaic's master: one entry per extension, each plane read with `plane(e)`; `data`,
    # `uncertainty` and `mask` are then empty (the planes may not all fit in memory)
    extensions: tuple[ExtensionResult, ...] = ()
    outputs: Outputs | None = field(default=None, repr=False)

    def plane(self, e: int = 0) -> MasterPlane:
        """Image plane `e` of the master: a mosaic's extension, or the single image."""
        if self.outputs is None:
            return MasterPlane(self.data, self.uncertainty, self.mask, self.masked_pixels)
        return self.outputs.load(e)
