"""Rejection: which scaled values of a band each pixel keeps (the numpy engine's side;
the kernel does the default clip itself, with the same arithmetic).

`clip_bounds` gives the per-pixel center and the band of kept offsets for a sigma clip
around the median (or mean) with `mad_std` (or `std`); `noise_keep` is `deviation =
"noise"`, which judges each value by its frame's expected noise instead of the spread of
a few values, for small stacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flatd.config import CombineConfig
from flatd.engine.ordering import sort_rows, sorted_mad, sorted_median

MAD_TO_STD = 1.482602218505602  # astropy.stats.mad_std's factor


@dataclass(frozen=True)
class NoiseModel:
    """Gain (e-/ADU) and read noise (e-) of one frame."""

    gain: float
    read_noise: float


def noise_models(
    names: Sequence[str], headers: Sequence[dict[str, float]], settings: CombineConfig
) -> list[NoiseModel]:
    """Each frame's noise model, from the settings or its header (GAIN, RDNOISE)."""
    models = []
    for name, header in zip(names, headers, strict=True):
        gain = settings.gain or header.get("GAIN", 0.0)
        read_noise = settings.read_noise or header.get("RDNOISE", 0.0)
        if gain <= 0:
            raise ValueError(
                f"deviation = 'noise' needs the gain: set combine.gain or a "
                f"GAIN header ({name} has none)"
            )
        models.append(NoiseModel(gain, read_noise))
    return models


def center_and_deviation(
    stack: np.ndarray,
    work: np.ndarray,
    spare: tuple[np.ndarray, np.ndarray],
    finite: bool,
    settings: CombineConfig,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-pixel center and deviation of the scaled values (missing ones NaN unless
    `finite`); the deviation is None for 'noise', which has one per frame."""
    import bottleneck as bn  # only off the kernel's path

    n = stack.shape[0]
    np.copyto(work, stack)
    if finite:
        ordered = sort_rows(list(work), spare[0])
        median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    else:
        work[~np.isfinite(work)] = np.inf  # sorts last, out of every median's reach
        counts = np.isfinite(stack).sum(axis=0)
        work.sort(axis=0)
        median = sorted_median(work, counts)
    center = median if settings.center == "median" else bn.nanmean(stack, axis=0)
    center = center.astype(stack.dtype, copy=False)
    if settings.deviation == "mad_std":
        if finite:
            mad = sorted_mad(ordered, median, spare[1])
        else:
            np.subtract(work, median, out=work)
            np.abs(work, out=work)
            work.sort(axis=0)
            mad = sorted_median(work, counts)
        return center, MAD_TO_STD * mad
    if settings.deviation == "std":
        return center, bn.nanstd(stack, axis=0).astype(stack.dtype)
    return center, None


def first_present(stack: np.ndarray) -> np.ndarray:
    """Per pixel, the first frame's value that is present (0 where none): without a
    clip, any value near the pixel's level keeps the sums of offsets small."""
    center = np.zeros(stack.shape[1:], stack.dtype)
    for plane in stack[::-1]:
        np.copyto(center, plane, where=np.isfinite(plane))
    return center


def noise_keep(
    stack: np.ndarray,
    keep: np.ndarray,
    center: np.ndarray,
    variance: np.ndarray,
    scales: np.ndarray,
    models: Sequence[NoiseModel],
    settings: CombineConfig,
) -> None:
    """deviation = 'noise': which values to keep, judged by each frame's expected noise
    (gain and read noise at the pixel's level) rather than by the spread of a few values.

    Stars and cosmic rays only add light. So the highest value is dropped while it
    exceeds the lowest by more than sigma_high times the noise of their difference;
    then, where at least three values are left, a value more than sigma_low below the
    mean of the others is dropped. Unlike a clip around the median, this keeps the one
    clean value when two frames of three are hit at the same pixel."""
    for i, model in enumerate(models):
        variance[i] = _noise_variance(model, float(scales[i]), center)
    np.isfinite(stack, out=keep)
    for _ in range(stack.shape[0] - 1):
        if not _drop_highest(stack, keep, variance, settings.sigma_high):
            break
    _drop_low(stack, keep, variance, settings.sigma_low)


def _noise_variance(model: NoiseModel, scale: float, center: np.ndarray) -> np.ndarray:
    """The expected variance of a frame's scaled value where the sequence's scaled level
    is `center`: Poisson noise of its unscaled level plus read noise."""
    level = np.maximum(center / scale, 0.0)
    return scale * scale * (level / model.gain + (model.read_noise / model.gain) ** 2)


def _drop_highest(
    stack: np.ndarray, keep: np.ndarray, variance: np.ndarray, sigma_high: float
) -> bool:
    """Drop each pixel's highest kept value where it stands out from the lowest; whether
    any was dropped."""
    shape, dtype = stack.shape[1:], stack.dtype
    highest = np.full(shape, -np.inf, dtype)
    lowest = np.full(shape, np.inf, dtype)
    highest_var = np.zeros(shape, dtype)
    lowest_var = np.zeros(shape, dtype)
    which = np.zeros(shape, np.int16)
    for i in range(stack.shape[0]):
        higher = keep[i] & (stack[i] > highest)
        np.copyto(highest, stack[i], where=higher)
        np.copyto(highest_var, variance[i], where=higher)
        which[higher] = i
        lower = keep[i] & (stack[i] < lowest)
        np.copyto(lowest, stack[i], where=lower)
        np.copyto(lowest_var, variance[i], where=lower)
    with np.errstate(invalid="ignore"):
        out = highest - lowest > sigma_high * np.sqrt(highest_var + lowest_var)
    if not out.any():
        return False
    for i in range(stack.shape[0]):
        keep[i] &= ~(out & (which == i))
    return True


def _drop_low(stack: np.ndarray, keep: np.ndarray, variance: np.ndarray, sigma_low: float) -> None:
    """Where three or more values are kept, drop one far below the mean of the others."""
    shape = stack.shape[1:]
    alive = keep.sum(axis=0)
    total = np.zeros(shape)
    total_var = np.zeros(shape)
    for i in range(stack.shape[0]):
        np.add(total, stack[i], out=total, where=keep[i])
        np.add(total_var, variance[i], out=total_var, where=keep[i])
    others = np.maximum(alive - 1, 1)
    for i in range(stack.shape[0]):
        others_mean = (total - np.where(keep[i], stack[i], 0)) / others
        others_var = (total_var - np.where(keep[i], variance[i], 0)) / (others * others)
        spread = np.sqrt(variance[i] + others_var)
        with np.errstate(invalid="ignore"):
            low = stack[i] < others_mean - sigma_low * spread
        keep[i] &= ~(low & (alive >= 3))
