"""Frame checks before and after the engine: which inputs of a sequence must not be combined,
each with the measured value and the limit it broke (the reason goes into the INPUTS
table, the status file and one `frame_rejected` log event).

Before combining: a shape, binning or readout (GAIN/RDNOISE) unlike the sequence's
majority; a median level outside `qa.min_level`..`qa.max_level`; too many saturated
pixels. After a first combination: a frame whose large-scale pattern departs from the
sequence's median image far more than the others do (dome light off, the dome slit in
the beam, a cloud edge) — the engine measures each frame's largest block departure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np

from flatd.combine import FrameLevels, FrameStats
from flatd.config import Config
from flatd.frames import Frame

STRUCTURE_FLOOR = 0.02  # a block departure below 2% is never a reason to reject
STRUCTURE_FACTOR = 5.0  # ... nor one below 5x the sequence's typical departure
STRUCTURE_MIN_FRAMES = 3  # a median image needs at least three frames
CLIPPED_FLOOR = 0.25  # a frame with more of its pixels clipped than this ...
CLIPPED_FACTOR = 5.0  # ... and than 5x the sequence's typical fraction is unlike the others


def odd_frames(frames: list[Frame]) -> dict[Path, str]:
    """Frames whose shape, binning or readout differs from the sequence's majority."""

    def shape(f: Frame) -> str:
        return f"{f.shape[1]}x{f.shape[0]}"

    def binning(f: Frame) -> str:  # whichever keyword the camera writes it in
        return f"{f.binning[0]}x{f.binning[1]}" if f.binning else "?"

    def readout(f: Frame) -> str:
        return (
            f"GAIN {f.extras.get('GAIN', '?')}, RDNOISE {f.extras.get('RDNOISE', '?')}"
            if "GAIN" in f.extras or "RDNOISE" in f.extras
            else "?"
        )

    reasons: dict[Path, str] = {}
    for what, key in (("shape", shape), ("binning", binning), ("readout", readout)):
        for path, value, majority in _minority(frames, key):
            reasons.setdefault(path, f"{what} {value} differs from the sequence's {majority}")
    return reasons


def _minority(
    frames: list[Frame], key: Callable[[Frame], Hashable]
) -> list[tuple[Path, Hashable, Hashable]]:
    if not frames:
        return []
    counts = Counter(key(f) for f in frames)
    majority = counts.most_common(1)[0][0]
    return [(f.path, key(f), majority) for f in frames if key(f) != majority]


def level_rejections(levels: dict[Path, FrameLevels], config: Config) -> dict[Path, str]:
    """Frames too faint, too bright or too saturated to use, with the measured values."""
    qa = config.qa
    reasons = {}
    for path, level in levels.items():
        if level.median < qa.min_level:
            reasons[path] = f"too faint: median {level.median:.0f} < qa.min_level {qa.min_level:g}"
        elif level.median > qa.max_level:
            reasons[path] = f"too bright: median {level.median:.0f} > qa.max_level {qa.max_level:g}"
        elif level.saturated_fraction > qa.max_saturated_fraction:
            reasons[path] = (
                f"saturated: {level.saturated_fraction:.4f} of pixels > "
                f"qa.max_saturated_fraction {qa.max_saturated_fraction:g}"
            )
    return reasons


def structure_outliers(stats: list[FrameStats]) -> dict[Path, str]:
    """Used frames unlike the sequence's median image: either most of a region was
    clipped (more than CLIPPED_FLOOR of the frame and CLIPPED_FACTOR times the typical
    fraction), or the values that survived the clip depart from the median image by
    more than STRUCTURE_FLOOR and STRUCTURE_FACTOR times the typical departure."""
    scored = [s for s in stats if s.used and np.isfinite(s.structure)]
    if len(scored) < STRUCTURE_MIN_FRAMES:
        return {}
    reasons = {}
    typical_clip = float(np.median([s.clipped_fraction for s in scored]))
    clip_limit = max(CLIPPED_FLOOR, CLIPPED_FACTOR * typical_clip)
    typical = float(np.median([s.structure for s in scored]))
    limit = max(STRUCTURE_FLOOR, STRUCTURE_FACTOR * typical)
    for s in scored:
        if s.clipped_fraction > clip_limit:
            reasons[s.path] = (
                f"differs from the sequence's median image: {s.clipped_fraction:.3f} of its "
                f"pixels clipped > {clip_limit:.3f} (max of {CLIPPED_FLOOR:g} and "
                f"{CLIPPED_FACTOR:g}x the typical {typical_clip:.4f})"
            )
        elif s.structure > limit:
            reasons[s.path] = (
                f"differs from the sequence's median image: a region departs by "
                f"{s.structure:.3f} > {limit:.3f} (max of {STRUCTURE_FLOOR:g} and "
                f"{STRUCTURE_FACTOR:g}x the typical {typical:.4f})"
            )
    return reasons


def saturation_level(frame: Frame, config: Config) -> float:
    """The configured saturation level, else the frame's SATURATE; 0 means not checked."""
    return config.qa.saturation_level or frame.extras.get("SATURATE", 0.0)
