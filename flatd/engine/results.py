"""What the engine hands back: a frame's levels, its part in a master, and the master."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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


@dataclass
class PlaneResult:
    """One image plane combined, not yet normalised."""

    data: np.ndarray  # the clipped mean of the scaled values (NaN where none was kept)
    uncertainty: np.ndarray  # standard deviation of the mean
    empty: np.ndarray  # bool, True where no value was kept
    clipped: np.ndarray  # per frame: values rejected by the clip
    peak_bytes: int  # largest total of buffers the engine held at once
    threads: int
    rows_per_band: int
    engine: str  # "compiled" or "numpy"


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
