"""Quicklook PNGs beside each master: the flat with a robust stretch, and the guide's plot
of each input frame's level in sequence order (rejected frames marked); and, when the
master has a previous one, the picture of what changed: their ratio (`_ratio.png`).

The stretch is taken over the pixels that are not masked, so a dead column or block does
not wash out the dust donuts the picture is for; masked pixels are drawn in magenta (a
binned pixel holding any masked one), which no grey level can be mistaken for.

The ratio picture is drawn from the ratio already averaged in blocks (`qa.compare` reads
the previous master in steps of rows and keeps 1/64 of the image), stretched symmetrically
around 1 so that a new dust donut, a moved filter or a shutter pattern stands out against
the noise; it does not know or care how the previous master was chosen.

A mosaic's master is drawn whole: each extension binned and placed where its DETSEC says
on the detector (`flatd.pictures.placement`; side by side when that cannot be told), named, on one
stretch, so the amplifiers' gain steps show; its ratio picture likewise, extension by
extension.

matplotlib's object API on the Agg canvas (no pyplot, so no global state: previews may be
drawn from several worker threads at once), imported only when a preview is drawn.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flatd.atomic import atomic_write_bytes
from flatd.pictures.placement import Placement, bounds

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PREVIEW_MAX_PIXELS = 1024  # the image is binned down to about this many pixels a side
MASKED_COLOUR = "#ff00ff"
STRETCH_PERCENTILES = (0.5, 99.5)
RATIO_STRETCH_PERCENTILE = 99.5  # of |ratio - 1|: the half-width of the symmetric stretch
RATIO_MIN_HALF_WIDTH = 1e-3  # never stretch pure noise wider than this
RATIO_SUFFIX = "_ratio.png"


def preview_path(master: Path) -> Path:
    return master.with_suffix(".png")


def ratio_path(master: Path) -> Path:
    """`flat_<group>_<start>_ratio.png` beside the master."""
    return master.with_name(master.stem + RATIO_SUFFIX)


def write_preview(
    master: Path,
    data: np.ndarray,
    mask: np.ndarray | None,
    title: str,
    levels: Sequence[tuple[str, float, float, bool, str]],
) -> Path:
    """Draw the master and its inputs' levels into `<master>.png`, atomically.

    `levels` holds, per input in sequence order: (name, median, mean, used, reason).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5.2))
    image_axes, level_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    _draw_image(figure, image_axes, data, mask)
    _draw_levels(level_axes, levels)
    figure.suptitle(title, fontsize=11)
    return _save(figure, preview_path(master))


def _draw_image(figure, axes, data: np.ndarray, mask: np.ndarray | None) -> None:
    from matplotlib import colormaps

    small, masked = display_image(data, mask)
    low, high = stretch(small, masked)
    shown = axes.imshow(
        np.ma.masked_array(small, masked | ~np.isfinite(small)),
        origin="lower",
        cmap=colormaps["gray"].with_extremes(bad=MASKED_COLOUR),
        vmin=low,
        vmax=high,
        interpolation="nearest",
    )
    n_masked = int(np.count_nonzero(mask)) if mask is not None else 0
    note = f"; {n_masked} masked pixels in magenta" if n_masked else ""
    axes.set_title(f"master flat (stretch {low:.3f} .. {high:.3f}{note})", fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="relative response")


def display_image(data: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The master binned for display (each binned pixel the mean of its pixels that are
    neither masked nor non-finite), and where a binned pixel holds any masked pixel."""
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= mask.astype(bool)
    values = np.where(bad, np.nan, data) if bad.any() else data
    return _binned(values), _binned_any(bad)


def stretch(small: np.ndarray, masked: np.ndarray) -> tuple[float, float]:
    """The display range: the STRETCH_PERCENTILES of the binned values, masked pixels left
    out (their binned pixels are the mean of the good pixels around them, if any)."""
    finite = small[np.isfinite(small)]
    if not finite.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, STRETCH_PERCENTILES))
    return (low, high) if high > low else (low - 0.5, low + 0.5)


def _draw_levels(axes, levels: Sequence[tuple[str, float, float, bool, str]]) -> None:
    order = np.arange(1, len(levels) + 1)
    medians = np.array([lv[1] for lv in levels], dtype=float)
    means = np.array([lv[2] for lv in levels], dtype=float)
    used = np.array([lv[3] for lv in levels], dtype=bool)
    n_rejected = int((~used).sum())
    axes.set_title(f"input levels: {int(used.sum())} used, {n_rejected} rejected", fontsize=10)
    axes.set_xlabel("frame in sequence")
    axes.set_ylabel("level [ADU]")
    axes.grid(alpha=0.3)
    if not levels:
        axes.text(
            0.5, 0.5, "no inputs recorded", ha="center", va="center", transform=axes.transAxes
        )
        return
    axes.plot(order, medians, "-o", color="tab:blue", label="median", zorder=2)
    axes.plot(order, means, "--x", color="tab:orange", label="mean", zorder=3)
    if n_rejected:
        axes.scatter(
            order[~used],
            medians[~used],
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            label="rejected",
            zorder=4,
        )
        for x, (_, median, _, used_frame, reason) in zip(order, levels, strict=True):
            if not used_frame and reason and np.isfinite(float(median)):
                axes.annotate(
                    str(reason)[:28],
                    (x, float(median)),
                    xytext=(8, 8),
                    textcoords="offset points",
                    fontsize=8,
                    color="tab:red",
                )
    axes.set_xticks(order if len(order) <= 30 else order[:: max(1, len(order) // 15)])
    axes.legend(fontsize=9)


def _binned(data: np.ndarray, factor: int | None = None) -> np.ndarray:
    blocks = _blocks(data, factor)
    if blocks is None:
        return np.asarray(data, dtype=np.float32)
    with warnings.catch_warnings():  # an all-masked block is NaN, and says so
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmean(blocks, axis=(1, 3), dtype=np.float32))


def _binned_any(flags: np.ndarray, factor: int | None = None) -> np.ndarray:
    blocks = _blocks(flags, factor)
    return flags if blocks is None else np.asarray(blocks.any(axis=(1, 3)))


def _blocks(data: np.ndarray, factor: int | None = None) -> np.ndarray | None:
    """`data` as (ny, factor, nx, factor) blocks for binning (by default to
    PREVIEW_MAX_PIXELS a side; the last partial rows and columns left out); None when it
    is small enough."""
    if factor is None:
        factor = max(1, int(np.ceil(max(data.shape) / PREVIEW_MAX_PIXELS)))
    factor = min(factor, *data.shape)
    if factor <= 1:
        return None
    ny, nx = (s // factor * factor for s in data.shape)
    return data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor)


# -- what changed: the ratio to the previous master -------------------------------------------
def write_ratio_picture(
    master: Path, deviation: np.ndarray, masked: np.ndarray, title: str
) -> Path:
    """Draw `1 + deviation` (new/previous, one value per block, NaN where unusable) into
    `<master stem>_ratio.png`, atomically; blocks in `masked` are drawn in MASKED_COLOUR."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    ratio, hidden = ratio_image(deviation, masked)
    half = ratio_half_width(ratio[~hidden])
    figure = Figure(figsize=(7.5, 6.2))
    axes = figure.subplots()
    shown = axes.imshow(
        np.ma.masked_array(ratio, hidden),
        origin="lower",
        cmap=colormaps["RdBu_r"].with_extremes(bad=MASKED_COLOUR),
        vmin=1.0 - half,
        vmax=1.0 + half,
        interpolation="nearest",
    )
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=10)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="new / previous")
    return _save(figure, ratio_path(master))


def ratio_image(deviation: np.ndarray, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ratio as drawn (binned further when larger than PREVIEW_MAX_PIXELS a side), and
    what is drawn apart: masked blocks, and blocks with no usable ratio."""
    values = _binned(np.asarray(deviation, dtype=np.float32) + np.float32(1.0))
    flags = _binned_any(np.asarray(masked, dtype=bool))
    return values, flags | ~np.isfinite(values)


def ratio_half_width(ratio: np.ndarray) -> float:
    """The symmetric stretch: 1 ± the RATIO_STRETCH_PERCENTILE of |ratio - 1| (over the
    values drawn, not those drawn apart)."""
    finite = np.abs(ratio[np.isfinite(ratio)] - 1.0)
    if not finite.size:
        return RATIO_MIN_HALF_WIDTH
    return max(float(np.percentile(finite, RATIO_STRETCH_PERCENTILE)), RATIO_MIN_HALF_WIDTH)


# -- a mosaic: its extensions placed on the detector ------------------------------------------
Load = Callable[[int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Tile:
    """One extension as drawn: binned values, what is drawn apart, where it goes."""

    name: str
    image: np.ndarray
    hidden: np.ndarray
    placement: Placement


def mosaic_tiles(
    names: Sequence[str], shapes: Sequence[tuple[int, int]], placed: Sequence[Placement], load: Load
) -> list[Tile]:
    """Each extension binned so that the whole mosaic is about PREVIEW_MAX_PIXELS a side;
    `load(e)` gives extension e's values and the flags of what is drawn apart (one
    extension in memory at a time)."""
    left, right, bottom, top = bounds(placed)
    per_pixel = max(right - left, top - bottom) / PREVIEW_MAX_PIXELS  # detector pixels
    tiles = []
    for e, (name, shape, place) in enumerate(zip(names, shapes, placed, strict=True)):
        scale = abs(place.right - place.left) / shape[1]  # detector pixels per pixel
        factor = max(1, int(np.ceil(per_pixel / scale)))
        values, flags = load(e)
        bad = flags.astype(bool) | ~np.isfinite(values)
        shown = _binned(np.where(bad, np.nan, values) if bad.any() else values, factor)
        tiles.append(Tile(name, shown, _binned_any(bad, factor) | ~np.isfinite(shown), place))
    return tiles


def write_mosaic_preview(
    master: Path,
    tiles: Sequence[Tile],
    n_masked: int,
    title: str,
    levels: Sequence[tuple[str, float, float, bool, str]],
) -> Path:
    """`write_preview` for a mosaic's master: its extensions drawn where they lie."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5.2))
    image_axes, level_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    shown = np.concatenate([t.image[~t.hidden] for t in tiles])
    low, high = stretch(shown, np.zeros(shown.shape, bool))
    cmap = colormaps["gray"].with_extremes(bad=MASKED_COLOUR)
    drawn = _draw_tiles(image_axes, tiles, cmap, low, high)
    note = f"; {n_masked} masked pixels in magenta" if n_masked else ""
    image_axes.set_title(f"master flat (stretch {low:.3f} .. {high:.3f}{note})", fontsize=10)
    figure.colorbar(drawn, ax=image_axes, fraction=0.046, pad=0.04, label="relative response")
    _draw_levels(level_axes, levels)
    figure.suptitle(title, fontsize=11)
    return _save(figure, preview_path(master))


def write_mosaic_ratio_picture(master: Path, tiles: Sequence[Tile], title: str) -> Path:
    """`write_ratio_picture` for a mosaic: each extension's block map of new/previous - 1
    (`Tile.image`) drawn where the extension lies."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    ratios = [replace(t, image=t.image + np.float32(1.0)) for t in tiles]
    half = ratio_half_width(np.concatenate([t.image[~t.hidden] for t in ratios]))
    figure = Figure(figsize=(7.5, 6.2))
    axes = figure.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad=MASKED_COLOUR)
    drawn = _draw_tiles(axes, ratios, cmap, 1.0 - half, 1.0 + half)
    axes.set_title(title, fontsize=10)
    figure.colorbar(drawn, ax=axes, fraction=0.046, pad=0.04, label="new / previous")
    return _save(figure, ratio_path(master))


def _draw_tiles(axes, tiles: Sequence[Tile], cmap, low: float, high: float):
    """Each tile where it lies, named, on one stretch; the last image (for a colour bar)."""
    drawn = None
    for tile in tiles:
        drawn = axes.imshow(
            np.ma.masked_array(tile.image, tile.hidden),
            origin="lower",
            extent=tile.placement.extent,
            cmap=cmap,
            vmin=low,
            vmax=high,
            interpolation="nearest",
        )
        x, y = tile.placement.centre
        axes.text(x, y, tile.name, ha="center", va="center", fontsize=8, color="tab:orange")
    left, right, bottom, top = bounds([t.placement for t in tiles])
    axes.set_xlim(left, right)
    axes.set_ylim(bottom, top)
    axes.set_aspect("equal")
    axes.set_xticks([])
    axes.set_yticks([])
    return drawn


def _save(figure: Figure, path: Path) -> Path:
    """The figure as a PNG at `path`, written atomically."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    atomic_write_bytes(path, buffer.getvalue())
    return path
