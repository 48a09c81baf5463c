"""A sequence of flat frames in, one normalised master out: the steps in order.

The recipe is the astropy CCD guide's (scale each frame by 1/median, sigma-clip 5/5
around the per-pixel median with `mad_std`, average), with two differences: the clip
works on the *scaled* values, so stars in twilight flats whose level falls during the
sequence are still rejected (ccdproc clips the unscaled frames), and the memory limit
counts every buffer, outputs included.

1. levels: each frame's median (measured here when the caller has not: `levels`);
2. scales: 1/median (or 1/mean, or 1) per frame;
3. the plane: every frame's image combined band by band (`plane`), values that are not
   finite or reach the frame's saturation level left out of their pixel;
4. normalising to median 1, dead and weak pixels masked (`normalise`);
5. each input's row of the INPUTS table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flatd.config import CombineConfig
from flatd.engine import kernel
from flatd.engine.bands import Progress
from flatd.engine.levels import measure
from flatd.engine.memory import Ledger
from flatd.engine.normalise import normalisation, normalise_plane
from flatd.engine.pixels import PixelSource
from flatd.engine.plane import combine_plane, compiled_recipe
from flatd.engine.rejection import noise_models
from flatd.engine.results import CombineResult, FrameLevels, FrameStats

if TYPE_CHECKING:
    from flatd.frames import Frame


def combine(
    frames: Sequence[Frame],
    settings: CombineConfig,
    *,
    rejected: Mapping[Path, str] | None = None,
    levels: Mapping[Path, FrameLevels] | None = None,
    saturation: Mapping[Path, float] | None = None,
    min_response: float = 0.0,
    progress: Progress | None = None,
) -> CombineResult:
    """Combine `frames` (minus `rejected`, whose reasons go into the stats) into a master.

    `levels` are the frames' measured levels (measured here when missing); `saturation`
    each frame's saturation level (0 or missing: none); pixels of the normalised master
    below `min_response` (and any not finite or not positive) are masked. Raises
    ValueError for unusable input (no frames, mixed shapes, a non-positive level, missing
    gain for the noise deviation) and MemoryError when `mem_limit_mb` cannot hold even
    the outputs; an exception raised by `progress` abandons the combination.
    """
    rejected = rejected or {}
    used = _usable(frames, rejected)
    known = {**(levels or {})}
    known.update({f.path: measure(f, 0.0, settings.dtype) for f in used if f.path not in known})
    scales = [scale_of(known[f.path], settings.scale, f.path.name) for f in used]
    noise = None
    if settings.deviation == "noise":
        noise = noise_models([f.path.name for f in used], [f.extras for f in used], settings)
    ledger = Ledger()
    plane = combine_plane(
        [PixelSource.of(f) for f in used],
        scales,
        settings,
        saturations=[(saturation or {}).get(f.path, 0.0) for f in used],
        noise=noise,
        progress=progress,
        ledger=ledger,
    )
    level = normalisation([plane], ledger)
    data, uncertainty, mask, masked = normalise_plane(plane, level, min_response)
    paths = [f.path for f in used]
    scaled, clipped = (
        dict(zip(paths, scales, strict=True)),
        dict(zip(paths, plane.clipped.tolist(), strict=True)),
    )
    return CombineResult(
        data=data,
        uncertainty=uncertainty,
        mask=mask,
        stats=frame_stats(frames, rejected, known, scaled, clipped, plane.data.size),
        normalisation=level,
        peak_bytes=ledger.peak,
        threads=plane.threads,
        rows_per_band=plane.rows_per_band,
        engine=plane.engine,
        engine_reason=_engine_reason(settings),
        masked_pixels=masked,
    )


def _usable(frames: Sequence[Frame], rejected: Mapping[Path, str]) -> list[Frame]:
    used = [f for f in frames if f.path not in rejected]
    if not used:
        raise ValueError("no usable frames to combine")
    shapes = {f.shape for f in used}
    if len(shapes) > 1:
        raise ValueError(f"frames of different shapes: {sorted(shapes)}")
    return used


def _engine_reason(settings: CombineConfig) -> str:
    chosen = kernel.choice()
    if chosen.engine == "numpy":
        return chosen.reason
    return compiled_recipe(settings) or chosen.reason


def scale_of(levels: FrameLevels, scale: str, name: str) -> float:
    """The factor a frame is multiplied by: 1/median, 1/mean or 1."""
    if scale == "none":
        return 1.0
    level = levels.median if scale == "median" else levels.mean
    if not np.isfinite(level) or level <= 0:
        raise ValueError(f"{name}: {scale} level {level:g} cannot scale a flat")
    return 1.0 / level


def frame_stats(
    frames: Sequence[Frame],
    rejected: Mapping[Path, str],
    levels: Mapping[Path, FrameLevels],
    scales: Mapping[Path, float],
    clipped: Mapping[Path, int],
    npix: int,
) -> list[FrameStats]:
    """Each input's row of the INPUTS table, in the frames' order."""
    rows = []
    for frame in frames:
        level = levels.get(frame.path)
        rows.append(
            FrameStats(
                path=frame.path,
                median=level.median if level else float("nan"),
                mean=level.mean if level else float("nan"),
                scale=scales.get(frame.path, 0.0),
                used=frame.path not in rejected,
                reason=rejected.get(frame.path, ""),
                clipped_fraction=clipped.get(frame.path, 0) / npix,
                structure=level.structure if level else float("nan"),
            )
        )
    return rows
