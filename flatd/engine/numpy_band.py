"""The numpy engine's band: scale, leave out, clip and average one band of every frame's
rows with whole-row numpy operations. It does every setting (median, mean center, std and
noise deviations, float64) and is the reference the compiled kernel matches bit for bit.

Values are left out of a pixel's combination when they are not finite or reach their
frame's saturation level: they become NaN, which every statistic here skips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flatd.config import CombineConfig
from flatd.engine.rejection import (
    MAD_TO_STD,
    NoiseModel,
    center_and_deviation,
    first_present,
    noise_keep,
)


@dataclass(frozen=True)
class PlaneInputs:
    """What every band of one image plane's combination shares."""

    settings: CombineConfig
    scales: np.ndarray  # per frame: multiply by
    saturations: np.ndarray  # per frame: values at or above are left out (0: none)
    noise: Sequence[NoiseModel] | None  # per frame, for deviation = "noise"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.settings.dtype)


class BandBuffers:
    """One worker's band buffers: the stack, its sorting copy, the keep masks."""

    def __init__(self, n: int, rows: int, nx: int, dtype: np.dtype) -> None:
        self.stack = np.empty((n, rows, nx), dtype)
        self.work = np.empty((n, rows, nx), dtype)
        self.keep = np.empty((n, rows, nx), bool)
        self.spare = np.empty((rows, nx), dtype)
        self.spare2 = np.empty((rows, nx), dtype)
        self.offset = np.empty((rows, nx), dtype)
        self.flags = np.empty((rows, nx), bool)


def prepare(stack: np.ndarray, big_endian: np.ndarray, inputs: PlaneInputs) -> bool:
    """Byte order, left-out values (NaN), scaling; whether every value is present."""
    kind = inputs.dtype.type
    for i, plane in enumerate(stack):
        if big_endian[i]:
            plane.byteswap(inplace=True)
        if inputs.saturations[i] > 0:
            np.copyto(plane, np.nan, where=plane >= kind(inputs.saturations[i]))
        if inputs.scales[i] != 1.0:
            plane *= kind(inputs.scales[i])
    finite = bool(np.isfinite(stack).all())
    if not finite:  # infinities become NaN, which every nan-statistic below skips
        np.copyto(stack, np.nan, where=np.isinf(stack))
    return finite


def combine_band(
    stack: np.ndarray,
    finite: bool,
    inputs: PlaneInputs,
    buffers: BandBuffers,
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray],
    clipped: np.ndarray,
) -> None:
    """Combine a prepared band (n, rows, nx) into outputs (data, uncertainty, empty)."""
    rows = stack.shape[1]
    settings = inputs.settings
    keep_all = buffers.keep[:, :rows]
    if settings.sigma_clip:
        center, dev = center_and_deviation(
            stack,
            buffers.work[:, :rows],
            (buffers.spare[:rows], buffers.spare2[:rows]),
            finite,
            settings,
        )
    else:
        center, dev = (stack[0].copy() if finite else first_present(stack)), None
    if settings.sigma_clip and inputs.noise is not None:
        noise_keep(
            stack, keep_all, center, buffers.work[:, :rows], inputs.scales, inputs.noise, settings
        )
    sums = _sums(stack, finite, center, dev, inputs, buffers, clipped)
    _finish(stack, keep_all, center, sums, settings.method, outputs)


def _sums(
    stack: np.ndarray,
    finite: bool,
    center: np.ndarray,
    dev: np.ndarray | None,
    inputs: PlaneInputs,
    buffers: BandBuffers,
    clipped: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of the kept values' offsets from `center` and of their squares, and counts:
    exact enough in float32, since the offsets are small, and the variance needs no
    difference of large numbers. Frame order, as the kernel."""
    settings, dtype = inputs.settings, inputs.dtype
    rows, nx = stack.shape[1:]
    offset_sum = np.zeros((rows, nx), dtype)
    offset_sq = np.zeros((rows, nx), dtype)
    count = np.zeros((rows, nx), np.int32)
    offset, flags = buffers.offset[:rows], buffers.flags[:rows]
    clip_around = settings.sigma_clip and inputs.noise is None
    if clip_around:
        assert dev is not None
        low, high = dev * dtype.type(-settings.sigma_low), dev * dtype.type(settings.sigma_high)
    for i in range(stack.shape[0]):
        keep = buffers.keep[i, :rows]
        np.subtract(stack[i], center, out=offset)
        if clip_around:
            np.greater_equal(offset, low, out=keep)
            np.less_equal(offset, high, out=flags)
            keep &= flags
        elif not settings.sigma_clip:
            np.isfinite(offset, out=keep)
        if settings.sigma_clip:
            present = rows * nx if finite else np.count_nonzero(np.isfinite(offset))
            clipped[i] += present - np.count_nonzero(keep)
        np.multiply(offset, keep, out=offset)
        if not finite:
            np.copyto(offset, 0, where=~keep)
        # offset is 0 wherever the value is not kept
        np.add(offset_sum, offset, out=offset_sum)
        np.multiply(offset, offset, out=offset)
        np.add(offset_sq, offset, out=offset_sq)
        count += keep
    return offset_sum, offset_sq, count


def _finish(
    stack: np.ndarray,
    keep: np.ndarray,
    center: np.ndarray,
    sums: tuple[np.ndarray, np.ndarray, np.ndarray],
    method: str,
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    import bottleneck as bn  # only off the kernel's path

    offset_sum, offset_sq, count = sums
    data, uncertainty, empty = outputs
    np.equal(count, 0, out=empty)
    inverse = np.reciprocal(np.maximum(count, 1), dtype=stack.dtype)
    if method == "average":
        np.multiply(offset_sum, inverse, out=offset_sum)  # the mean offset
        np.add(center, offset_sum, out=data)
        np.multiply(offset_sq, inverse, out=offset_sq)
        np.multiply(offset_sum, offset_sum, out=offset_sum)
        np.subtract(offset_sq, offset_sum, out=offset_sq)  # the variance
        np.maximum(offset_sq, 0, out=offset_sq)
        np.multiply(offset_sq, inverse, out=offset_sq)
        np.sqrt(offset_sq, out=uncertainty)
    else:
        stack[~keep] = np.nan
        data[...] = bn.nanmedian(stack, axis=0)
        uncertainty[...] = (
            MAD_TO_STD * bn.nanmedian(np.abs(stack - data), axis=0) * np.sqrt(inverse)
        )
    if empty.any():
        data[empty] = np.nan
        uncertainty[empty] = 0.0
