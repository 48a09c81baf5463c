"""The combination engine: a sequence of flat frames in, one normalised master out.

(Skeleton: types fixed, implementation in progress.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flatd.config import CombineConfig
from flatd.frames import Frame


@dataclass(frozen=True)
class FrameLevels:
    """What the first pass measured on one whole frame."""

    median: float
    mean: float
    saturated_fraction: float  # of pixels >= the saturation level (0 when not checked)


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


@dataclass
class CombineResult:
    data: np.ndarray  # float32, normalised to median 1
    uncertainty: np.ndarray  # float32, standard deviation of the mean
    mask: np.ndarray  # bool, True where no value survived
    stats: list[FrameStats]
    normalisation: float  # median of the combined, scaled frames before normalising
    peak_bytes: int  # largest total of buffers the engine held at once


Progress = Callable[[int, int], None]


def combine(frames: Sequence[Frame], settings: CombineConfig, *,
            rejected: dict[Path, str] | None = None,
            progress: Progress | None = None) -> CombineResult:
    raise NotImplementedError
