"""Ordering along the frame axis: each pixel's sorted values, median and MAD, for a whole
band at once with element-wise numpy operations (the kernel does the same per tile).

A sorting network — a fixed sequence of element-wise min/max operations — sorts the
usual 5-50 frames several times faster than a per-pixel quickselect; the MAD comes from
the two sorted halves by the merge-path rule instead of a second sort.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparator pairs of Batcher's odd-even merge sort for n elements."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_rows(rows: list[np.ndarray], spare: np.ndarray) -> list[np.ndarray]:
    """Sort equal-shaped arrays element-wise (the i-th result holds every pixel's i-th
    smallest value) with Batcher's odd-even merge network. Two passes per comparator:
    the minimum goes to a free buffer and buffers are swapped instead of copied, so the
    results are views of `rows`' buffers and `spare`, in a new order."""
    rows = list(rows)
    for a, b in network(len(rows)):
        np.minimum(rows[a], rows[b], out=spare)
        np.maximum(rows[a], rows[b], out=rows[b])
        rows[a], spare = spare, rows[a]
    return rows


def sorted_mad(ordered: list[np.ndarray], median: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Median absolute deviation from `median` of element-wise sorted rows (`sort_rows`'s
    result, overwritten with the deviations).

    The deviations of the values at and below the median, read downwards, are sorted;
    so are those of the values above it. The median of the two sorted lists comes from
    the merge-path rule (the r-th smallest of lists A and B is the least, over every
    split i + j = r + 1, of max(A[i-1], B[j-1])), a few element-wise max/min per rank
    instead of sorting the deviations again."""
    n = len(ordered)
    a = (n - 1) // 2 + 1
    lower = ordered[:a][::-1]
    upper = ordered[a:]
    for row in lower:
        np.subtract(median, row, out=row)
    for row in upper:
        np.subtract(row, median, out=row)
    ranks = sorted({(n - 1) // 2, n // 2})
    result = [merged_rank(lower, upper, rank, scratch) for rank in ranks]
    return result[0] if len(result) == 1 else (result[0] + result[1]) / 2


def merged_rank(
    first: list[np.ndarray], second: list[np.ndarray], rank: int, scratch: np.ndarray
) -> np.ndarray:
    """Element-wise `rank`-th smallest (from 0) of the union of two sorted row lists."""
    best: np.ndarray | None = None
    for i in range(max(0, rank + 1 - len(second)), min(len(first), rank + 1) + 1):
        j = rank + 1 - i
        if i == 0:
            candidate = second[j - 1]
        elif j == 0:
            candidate = first[i - 1]
        else:
            candidate = np.maximum(first[i - 1], second[j - 1], out=scratch)
        if best is None:
            best = candidate.copy()
        else:
            np.minimum(best, candidate, out=best)
    assert best is not None
    return best


def sorted_median(ordered: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median along axis 0 of a stack sorted along axis 0 whose first `counts` values
    (per pixel) are the real ones: the mean of the two middle values (NaN where none)."""
    low = np.take_along_axis(ordered, np.maximum(counts - 1, 0)[None] // 2, axis=0)[0]
    high = np.take_along_axis(ordered, (counts // 2)[None], axis=0)[0]
    high = np.where(counts > 0, high, np.nan).astype(ordered.dtype)
    return (low + high) / 2
