"""Frame checks, all settled before the engine combines anything: which inputs of a
sequence must not be combined, each with the measured value and the limit it broke (the
reason goes into the INPUTS table, the status file and one `frame_rejected` log event).

From the headers: a layout (a mosaic's image extensions: how many, their names and
shapes), a shape, binning or readout (GAIN/RDNOISE) unlike the sequence's majority. From
the levels pass (`engine.measure_frames`, over all of a frame's image extensions): a median
level outside `qa.min_level`..`qa.max_level`; more saturated pixels than
`qa.max_saturated_fraction` (fewer are only left out of their pixels' combination); a
large-scale pattern that departs from the sequence's median image far more than the others
do (dome light off, the dome slit in the beam, a cloud edge), measured by
`engine.score_structure` on the rows the levels pass sampled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path

import numpy as np

from flatd.config import Config
from flatd.engine import FrameLevels
from flatd.frames import Frame, describe_layout

STRUCTURE_FLOOR = 0.02  # a block departure below 2% is never a reason to reject
STRUCTURE_FACTOR = 5.0  # ... nor one below 5x the sequence's typical departure
STRUCTURE_MIN_FRAMES = 3  # a median image needs at least three frames
OUTLYING_FLOOR = 0.25  # a frame with more of its values far from the median image ...
OUTLYING_FACTOR = 5.0  # ... and than 5x the sequence's typical share is unlike the others


def odd_frames(frames: list[Frame]) -> dict[Path, str]:
    """Frames whose layout (a mosaic's extensions: their number, names and shapes),
    shape, binning or readout differs from the sequence's majority."""

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

    def layout(f: Frame) -> str:  # a mosaic's extensions: number, names, shapes
        return describe_layout(f.layout) if f.extensions else "one image"

    reasons: dict[Path, str] = {}
    checked = (("layout", layout), ("shape", shape), ("binning", binning), ("readout", readout))
    for what, key in checked:
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


def structure_outliers(levels: Mapping[Path, FrameLevels]) -> dict[Path, str]:
    """Frames unlike the sequence's median image (`levels` scored by
    `engine.score_structure`): either most of a region is far from it (more than
    OUTLYING_FLOOR of the frame's sampled values and OUTLYING_FACTOR times the typical
    share), or a block departs from it by more than STRUCTURE_FLOOR and STRUCTURE_FACTOR
    times the typical departure."""
    scored = {p: level for p, level in levels.items() if np.isfinite(level.structure)}
    if len(scored) < STRUCTURE_MIN_FRAMES:
        return {}
    typical_share = float(np.median([s.outlying_fraction for s in scored.values()]))
    share_limit = max(OUTLYING_FLOOR, OUTLYING_FACTOR * typical_share)
    typical = float(np.median([s.structure for s in scored.values()]))
    limit = max(STRUCTURE_FLOOR, STRUCTURE_FACTOR * typical)
    reasons = {}
    for path, level in scored.items():
        if level.outlying_fraction > share_limit:
            reasons[path] = (
                f"differs from the sequence's median image: {level.outlying_fraction:.3f} of "
                f"its pixels far from it > {share_limit:.3f} (max of {OUTLYING_FLOOR:g} and "
                f"{OUTLYING_FACTOR:g}x the typical {typical_share:.4f})"
            )
        elif level.structure > limit:
            reasons[path] = (
                f"differs from the sequence's median image: a region departs by "
                f"{level.structure:.3f} > {limit:.3f} (max of {STRUCTURE_FLOOR:g} and "
                f"{STRUCTURE_FACTOR:g}x the typical {typical:.4f})"
            )
    return reasons


def saturation_level(frame: Frame, config: Config) -> float:
    """The configured saturation level, else the frame's SATURATE; 0 means not checked."""
    return config.qa.saturation_level or frame.extras.get("SATURATE", 0.0)


def saturation_levels(frame: Frame, config: Config) -> tuple[float, ...]:
    """`saturation_level` for each of a frame's image planes: the configured level, else
    the plane's own SATURATE (a mosaic's extension's, else its primary header's)."""
    if config.qa.saturation_level:
        return (config.qa.saturation_level,) * len(frame.planes)
    return tuple(plane.extras.get("SATURATE", 0.0) for plane in frame.planes)
