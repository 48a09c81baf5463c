"""Normalising a combined plane to median 1, and masking the pixels no flat can correct:
those where no value survived, and dead or weak ones (not finite, zero, negative, or a
response below `qa.min_response`). A masked pixel holds 1.0 and uncertainty 0, so that
dividing a science frame by the master can never make it infinite, NaN or huge there;
MASK says which they are.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from flatd.engine import kernel
from flatd.engine.levels import CHUNK, median_in_place, tally_median
from flatd.engine.memory import Ledger
from flatd.engine.results import PlaneResult


def normalisation(plane: PlaneResult, ledger: Ledger) -> float:
    """The exact median of the plane's positive combined values (ValueError when there
    is none): without a copy when every value is usable, as is usual."""
    usable = _usable_count(plane)
    if usable == 0:
        raise ValueError("no pixel has a surviving value")
    values = plane.data.reshape(-1)
    if usable == values.size:
        median = tally_median(values)
        if median is None:
            median = _median_of_copy(values, ledger)
    else:
        good = np.empty(usable, values.dtype)
        ledger.hold(good.nbytes)
        _copy_usable(values, good)
        median = median_in_place(good)
        ledger.release(good.nbytes)
        del good
    return checked_level(median)


def checked_level(median: float) -> float:
    """`median` as a level to divide by: ValueError unless finite and positive."""
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


def _copy_usable(values: np.ndarray, good: np.ndarray) -> None:
    filled = 0
    for start in range(0, values.size, CHUNK):
        chunk = values[start : start + CHUNK]
        usable = chunk[chunk > 0]
        good[filled : filled + usable.size] = usable
        filled += usable.size


def _median_of_copy(values: np.ndarray, ledger: Ledger) -> float:
    copy = values.copy()
    ledger.hold(copy.nbytes)
    median = median_in_place(copy)
    ledger.release(copy.nbytes)
    return median


def normalise_plane(
    data: np.ndarray,
    uncertainty: np.ndarray,
    empty: np.ndarray,
    normalisation: float,
    min_response: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A combined plane's data and uncertainty divided by `normalisation` (in place, then
    left in FITS big-endian byte order, so writing them needs no swapped copy), the mask
    (`empty`, reused: empty pixels are masked too) and how many pixels it holds."""
    dtype = data.dtype
    if dtype == np.float32 and kernel.available():
        masked = _normalise_compiled(data, uncertainty, empty, normalisation, min_response)
        big_endian = dtype.newbyteorder(">")
        return data.view(big_endian), uncertainty.view(big_endian), empty, masked
    data /= dtype.type(normalisation)
    uncertainty /= dtype.type(normalisation)
    rows = max(1, CHUNK // data.shape[1])
    masked = 0
    for first in range(0, data.shape[0], rows):
        band = data[first : first + rows]
        band_uncertainty = uncertainty[first : first + rows]
        dead = empty[first : first + rows]
        with np.errstate(invalid="ignore"):
            dead |= ~np.isfinite(band) | (band <= 0) | (band < min_response)
        band[dead] = 1.0
        band_uncertainty[dead] = 0.0
        masked += int(np.count_nonzero(dead))
    return _to_big_endian(data), _to_big_endian(uncertainty), empty, masked


def _normalise_compiled(
    data: np.ndarray,
    uncertainty: np.ndarray,
    empty: np.ndarray,
    normalisation: float,
    min_response: float,
) -> int:
    """`normalise_plane` in the kernel, the two halves of the rows on two threads."""
    half = (data.shape[0] + 1) // 2
    parts = [slice(0, half), slice(half, None)]
    with ThreadPoolExecutor(len(parts)) as pool:
        counts = pool.map(
            lambda rows: kernel.normalise(
                data[rows], uncertainty[rows], empty[rows], normalisation, min_response
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
