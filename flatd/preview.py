"""Quicklook PNGs beside each master: the flat with a robust stretch, and the guide's plot
of each input frame's level in sequence order (rejected frames marked).

matplotlib on its headless Agg backend, imported only when a preview is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flatd.atomic import atomic_write_bytes

PREVIEW_MAX_PIXELS = 1024  # the image is binned down to about this many pixels a side


def preview_path(master: Path) -> Path:
    return master.with_suffix(".png")


def write_preview(master: Path, data: np.ndarray, mask: np.ndarray | None, title: str,
                  levels: Sequence[tuple[str, float, float, bool, str]]) -> Path:
    """Draw the master and its inputs' levels into `<master>.png`, atomically.

    `levels` holds, per input in sequence order: (name, median, mean, used, reason).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (image_axes, level_axes) = plt.subplots(
        1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [1.15, 1]})
    try:
        _draw_image(figure, image_axes, data, mask)
        _draw_levels(level_axes, levels)
        figure.suptitle(title, fontsize=11)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
    finally:
        plt.close(figure)
    path = preview_path(master)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _draw_image(figure, axes, data: np.ndarray, mask: np.ndarray | None) -> None:
    small = _binned(np.where(mask, np.nan, data) if mask is not None and mask.any() else data)
    finite = small[np.isfinite(small)]
    low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    shown = axes.imshow(small, origin="lower", cmap="gray", vmin=low, vmax=high,
                        interpolation="nearest")
    axes.set_title(f"master flat (stretch {low:.3f} .. {high:.3f})", fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="relative response")


def _draw_levels(axes, levels: Sequence[tuple[str, float, float, bool, str]]) -> None:
    order = np.arange(1, len(levels) + 1)
    medians = np.array([lv[1] for lv in levels], dtype=float)
    means = np.array([lv[2] for lv in levels], dtype=float)
    used = np.array([lv[3] for lv in levels], dtype=bool)
    axes.plot(order, medians, "-o", color="tab:blue", label="median", zorder=2)
    axes.plot(order, means, "--", color="tab:orange", label="mean", zorder=1)
    if (~used).any():
        axes.scatter(order[~used], medians[~used], s=140, facecolors="none",
                     edgecolors="tab:red", linewidths=2, label="rejected", zorder=3)
    axes.set_xlabel("frame in sequence")
    axes.set_ylabel("level [ADU]")
    axes.set_title("input levels", fontsize=10)
    axes.set_xticks(order)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=9)


def _binned(data: np.ndarray) -> np.ndarray:
    factor = max(1, int(np.ceil(max(data.shape) / PREVIEW_MAX_PIXELS)))
    if factor == 1:
        return np.asarray(data, dtype=np.float32)
    ny, nx = (s // factor * factor for s in data.shape)
    blocks = data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor)
    return np.nanmean(blocks, axis=(1, 3), dtype=np.float32)
