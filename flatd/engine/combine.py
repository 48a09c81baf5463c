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

Frames of several image extensions (a mosaic, a multi-amplifier camera) take the same
steps extension by extension, normalised once over them all (`mosaic`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flatd.config import CombineConfig
from flatd.engine import kernel
from flatd.engine.bands import Progress
from flatd.engine.levels import Saturation, measure, plane_saturations
from flatd.engine.memory import Ledger
from flatd.engine.mosaic import MosaicJob, layouts_differ
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
    saturation: Mapping[Path, Saturation] | None = None,
    min_response: float = 0.0,
    progress: Progress | None = None,
    scratch: Path | None = None,
) -> CombineResult:
    """Combine `frames` (minus `rejected`, whose reasons go into the stats) into a master.

    `levels` are the frames' measured levels (measured here when missing); `saturation`
    each frame's saturation level (0 or missing: none; for a mosaic one level, or one per
    extension); pixels of the normalised master below `min_response` (and any not finite
    or not positive) are masked. Frames of several image extensions are combined plane by
    plane into a mosaic's master (`mosaic`), whose planes wait in a scratch file in
    `scratch` (default: the temporary directory) when they do not all fit the memory
    limit. Raises ValueError for unusable input (no frames, mixed shapes or layouts, a
    non-positive level, missing gain for the noise deviation) and MemoryError when
    `mem_limit_mb` cannot hold even the outputs; an exception raised by `progress`
    abandons the combination.
    """
    rejected = rejected or {}
    used = _usable(frames, rejected)
    known = {**(levels or {})}
    per_plane = settings.normalise == "extension"  # a mosaic's planes scaled each alone
    known.update(
        {f.path: measure(f, 0.0, settings.dtype, per_plane) for f in used if f.path not in known}
    )
    if used[0].extensions:
        job = MosaicJob(used, settings, known, saturation or {}, scratch)
        return _mosaic_result(job, frames, rejected, known, min_response, progress)
    scales = [scale_of(known[f.path], settings.scale, f.path.name) for f in used]
    noise = None
    if settings.deviation == "noise":
        noise = noise_models([f.path.name for f in used], [f.extras for f in used], settings)
    ledger = Ledger()
    plane = combine_plane(
        [PixelSource.of(f) for f in used],
        scales,
        settings,
        saturations=[plane_saturations((saturation or {}).get(f.path, 0.0), 1)[0] for f in used],
        noise=noise,
        progress=progress,
        ledger=ledger,
    )
    level = normalisation(plane, ledger)
    data, uncertainty, mask, masked = normalise_plane(
        plane.data, plane.uncertainty, plane.empty, level, min_response
    )
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
    if any(f.extensions for f in used) and (different := layouts_differ(used)):
        raise ValueError(different)
    shapes = {f.shape for f in used}
    if len(shapes) > 1:
        raise ValueError(f"frames of different shapes: {sorted(shapes)}")
    return used


def _mosaic_result(
    job: MosaicJob,
    frames: Sequence[Frame],
    rejected: Mapping[Path, str],
    known: dict[Path, FrameLevels],
    min_response: float,
    progress: Progress | None,
) -> CombineResult:
    """`combine` for frames of several image extensions (see `mosaic`)."""
    settings, used = job.settings, job.used
    extensions, clipped, last = job.run(progress, min_response)
    paths = [f.path for f in used]
    scales = {f.path: scale_of(known[f.path], settings.scale, f.path.name) for f in used}
    npix = sum(e.shape[0] * e.shape[1] for e in extensions)
    stats = frame_stats(
        frames, rejected, known, scales, dict(zip(paths, clipped.tolist(), strict=True)), npix
    )
    if settings.normalise == "extension":
        own = {p: tuple(s[i] for s in job.scales) for i, p in enumerate(paths)}
        stats = [dataclasses.replace(s, plane_scales=own.get(s.path, ())) for s in stats]
    levels = [e.normalisation for e in extensions]
    empty = np.empty((0, 0), settings.dtype)
    return CombineResult(
        data=empty,
        uncertainty=empty,
        mask=np.empty((0, 0), bool),
        stats=stats,
        normalisation=levels[0] if len(set(levels)) == 1 else float(np.median(levels)),
        peak_bytes=job.ledger.peak,
        threads=last.threads,
        rows_per_band=last.rows_per_band,
        engine=last.engine,
        engine_reason=_engine_reason(settings),
        masked_pixels=sum(e.masked_pixels for e in extensions),
        extensions=tuple(extensions),
        outputs=job.outputs,
    )


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
