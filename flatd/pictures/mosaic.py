"""The pictures beside a mosaic's master: the preview (every extension, where it lies on
the detector) and the ratio picture (each extension's block map of new/previous from its
QA), from the engine's result and the QA, one extension's values in memory at a time.
The drawing is `preview`'s, the placement `placement`'s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flatd.engine import CombineResult
from flatd.pictures.placement import placements
from flatd.pictures.preview import (
    mosaic_tiles,
    ratio_path,
    write_mosaic_preview,
    write_mosaic_ratio_picture,
)
from flatd.quality.mosaic import MosaicQA


def draw_preview(
    master: Path,
    combined: CombineResult,
    title: str,
    levels: Sequence[tuple[str, float, float, bool, str]],
) -> Path:
    """`<master>.png`: the mosaic and its inputs' levels."""
    extensions = combined.extensions
    shapes = [e.shape for e in extensions]
    placed = placements([e.detsec for e in extensions], shapes)

    def load(e: int) -> tuple[np.ndarray, np.ndarray]:
        plane = combined.plane(e)
        return plane.data, plane.mask

    tiles = mosaic_tiles([e.name for e in extensions], shapes, placed, load)
    return write_mosaic_preview(master, tiles, combined.masked_pixels, title, levels)


def draw_ratio_picture(
    master: Path, combined: CombineResult, assessment: MosaicQA, title: str
) -> Path | None:
    """`<master stem>_ratio.png` from each extension's comparison with the previous
    master; None (and an older picture removed) when no extension was compared."""
    comparisons = [each.comparison for _, each in assessment.extensions]
    if any(c is None for c in comparisons):
        ratio_path(master).unlink(missing_ok=True)
        return None
    extensions = combined.extensions
    shapes = [e.shape for e in extensions]
    placed = placements([e.detsec for e in extensions], shapes)
    # a block map leaves out an extension's last partial blocks: stretched over the whole
    # extension it is off by less than one block
    block_shapes = [c.blocks.shape for c in comparisons if c is not None]

    def load(e: int) -> tuple[np.ndarray, np.ndarray]:
        comparison = comparisons[e]
        assert comparison is not None
        return comparison.blocks, comparison.blocks_masked

    tiles = mosaic_tiles([e.name for e in extensions], block_shapes, placed, load)
    return write_mosaic_ratio_picture(master, tiles, title)
