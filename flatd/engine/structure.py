"""Unlike the others: how far each frame departs from the sequence's median image on large
scales (dome light off, the dome slit in the beam, a cloud edge), measured on the sample
rows the levels pass kept, so the frame checks are settled before anything is combined.

On the sample rows, every frame is scaled by 1/median; each pixel's median over the frames
is the median image, and a value more than CLIP_SIGMAS mad_std from it is an outlier (a
star, a cosmic ray — or a region unlike the others). A frame's departure in each of
GRID x GRID blocks is the sum of its other values' offsets from the median image over the
sum of the median image there; its `structure` is the largest departure of a block from
the frame's typical one, and its `outlying_fraction` the share of its values that were
outliers (a region so unlike the others that all of it is, such as a half-closed dome).
These are the numbers the combination's clip gave before, on the sample rows alone.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from flatd.engine.levels import GRID
from flatd.engine.rejection import MAD_TO_STD
from flatd.engine.results import FrameLevels

CLIP_SIGMAS = 5.0  # as the default recipe's clip
MIN_FRAMES = 3  # a median image needs at least three frames


def score_structure(levels: Mapping[Path, FrameLevels]) -> dict[Path, FrameLevels]:
    """`levels` with each frame's `structure` and `outlying_fraction` set (NaN when fewer
    than three frames of one layout were sampled) and its samples dropped."""
    layouts = Counter(_layout(level) for level in levels.values() if _layout(level))
    alike: list[Path] = []
    if layouts:
        layout, count = layouts.most_common(1)[0]
        if count >= MIN_FRAMES:
            alike = [p for p, level in levels.items() if _layout(level) == layout]
    scores = dict(zip(alike, _scores([levels[p] for p in alike]), strict=True)) if alike else {}
    nan = (float("nan"), float("nan"))
    return {
        path: dataclasses.replace(
            level,
            samples=(),
            structure=scores.get(path, nan)[0],
            outlying_fraction=scores.get(path, nan)[1],
        )
        for path, level in levels.items()
    }


def _layout(level: FrameLevels) -> tuple[tuple[int, ...], ...]:
    if level.median <= 0 or not np.isfinite(level.median):
        return ()
    return tuple(s.values.shape for s in level.samples)


def _scores(levels: list[FrameLevels]) -> list[tuple[float, float]]:
    """(structure, outlying fraction) of each frame."""
    parts = [_blocks(levels, plane) for plane in range(len(levels[0].samples))]
    relative = np.concatenate([blocks for blocks, _, _ in parts], axis=1)
    outlying = np.sum([count for _, count, _ in parts], axis=0) / sum(s for _, _, s in parts)
    with np.errstate(invalid="ignore"):
        typical = np.nanmedian(relative, axis=1)
        departure = np.abs(relative - typical[:, None])
    departure[~np.isfinite(departure)] = -np.inf
    worst = departure.max(axis=1)
    return [
        (float(w) if np.isfinite(w) else float("nan"), float(f))
        for w, f in zip(worst, outlying, strict=True)
    ]


def _blocks(levels: list[FrameLevels], plane: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(frames, blocks): kept offsets from the median image summed over each block,
    relative to the median image's sum there; per frame, how many of its values were
    outliers; and how many values each frame has."""
    first = levels[0].samples[plane]
    scaled = np.stack([level.samples[plane].values / level.median for level in levels])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pixel NaN in every frame
        center = np.nanmedian(scaled, axis=0)
        offsets = scaled - center
        spread = MAD_TO_STD * np.nanmedian(np.abs(offsets), axis=0)
        kept = np.abs(offsets) <= CLIP_SIGMAS * spread
    outliers = np.count_nonzero(np.isfinite(offsets) & ~kept, axis=(1, 2))
    offsets = np.where(kept, offsets, 0.0)
    block = (first.block_rows[:, None] * GRID + first.block_cols[None, :]).ravel()
    blocks = GRID * GRID
    center_sums = np.bincount(block, np.nan_to_num(center).ravel(), blocks)
    offset_sums = np.stack([np.bincount(block, frame.ravel(), blocks) for frame in offsets])
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = offset_sums / np.where(center_sums != 0, center_sums, np.nan)
    return relative, outliers, first.values.size
