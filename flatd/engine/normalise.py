"""Normalising a combined plane to median 1, and masking the pixels no flat can correct:
those where no value survived, and dead or weak ones (not finite, zero, negative, or a
response below `qa.min_response`). A masked pixel holds 1.0 and uncertainty 0, so that
dividing a science frame by the master can never make it infinite, NaN or huge there;
MASK says which they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from flatd.engine import kernel
from flatd.engine.levels import CHUNK, median_in_place, tally_median
from flatd.engine.memory import Ledger
from flatd.engine.results import PlaneResult


def normalisation(planes: Sequence[PlaneResult], ledger: Ledger) -> float:
    """The exact median of the planes' positive combined values (ValueError when there
    is none): without a copy when every value is usable, as is usual."""
    counts = [_usable_count(p) for p in planes]
    total = sum(counts)
    if total == 0:
        raise ValueError("no pixel has a surviving value")
    if len(planes) == 1 and total == planes[0].data.size:
        values = planes[0].data.reshape(-1)
        median = tally_median(values)
        if median is None:
            median = _median_of_copy(values, ledger)
    else:
        good = np.empty(total, planes[0].data.dtype)
        ledger.hold(good.nbytes)
        filled = 0
        for plane in planes:
            filled = _copy_usable(plane.data.reshape(-1), good, filled)
        median = median_in_place(good)
        ledger.release(good.nbytes)
        del good
    if not np.isfinite(median) or median <= 0:
        raise ValueError(f"combined level {median} cannot be normalised")
    return median


def _usable_count(plane: PlaneResult) -> int:
    values = plane.data.reshape(-1)
    if values.dtype == np.float32 and kernel.available():
        return kernel.count_positive(values)
    return sum(
        int(np.count_nonzero(values[start : start + CHUNK] > 0))
        for start in range(0, values.size, CHUNK)
    )


def _copy_usable(values: np.ndarray, good: np.ndarray, filled: int) -> int:
    for start in range(0, values.size, CHUNK):
        chunk = values[start : start + CHUNK]
        usable = chunk[chunk > 0]
        good[filled : filled + usable.size] = usable
        filled += usable.size
    return filled


def _median_of_copy(values: np.ndarray, ledger: Ledger) -> float:
    copy = values.copy()
    ledger.hold(copy.nbytes)
    median = median_in_place(copy)
    ledger.release(copy.nbytes)
    return median


def normalise_plane(
    plane: PlaneResult, normalisation: float, min_response: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Data and uncertainty divided by `normalisation` (in place, then left in FITS
    big-endian byte order, so writing them needs no swapped copy), the mask and how many
    pixels it holds."""
    dtype = plane.data.dtype
    if dtype == np.float32 and kernel.available():
        masked = _normalise_compiled(plane, normalisation, min_response)
        big_endian = dtype.newbyteorder(">")
        return plane.data.view(big_endian), plane.uncertainty.view(big_endian), plane.empty, masked
    plane.data /= dtype.type(normalisation)
    plane.uncertainty /= dtype.type(normalisation)
    mask = plane.empty  # reused: empty pixels are masked too
    rows = max(1, CHUNK // plane.data.shape[1])
    masked = 0
    for first in range(0, plane.data.shape[0], rows):
        data = plane.data[first : first + rows]
        uncertainty = plane.uncertainty[first : first + rows]
        dead = mask[first : first + rows]
        with np.errstate(invalid="ignore"):
            dead |= ~np.isfinite(data) | (data <= 0) | (data < min_response)
        data[dead] = 1.0
        uncertainty[dead] = 0.0
        masked += int(np.count_nonzero(dead))
    return _to_big_endian(plane.data), _to_big_endian(plane.uncertainty), mask, masked


def _normalise_compiled(plane: PlaneResult, normalisation: float, min_response: float) -> int:
    """`normalise_plane` in the kernel, the two halves of the rows on two threads."""
    half = (plane.data.shape[0] + 1) // 2
    parts = [slice(0, half), slice(half, None)]
    with ThreadPoolExecutor(len(parts)) as pool:
        counts = pool.map(
            lambda rows: kernel.normalise(
                plane.data[rows],
                plane.uncertainty[rows],
                plane.empty[rows],
                normalisation,
                min_response,
            ),
            parts,
        )
        return sum(counts)


def _to_big_endian(array: np.ndarray) -> np.ndarray:
    """The same buffer, byte-swapped in place and viewed as big-endian."""
    big_endian = array.dtype.newbyteorder(">")
    if array.dtype == big_endian:
        return array
    return array.byteswap(inplace=True).view(big_endian)
