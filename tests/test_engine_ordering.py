"""The engine's ordering step: the sorting network and the merge-path MAD against numpy
and astropy on random stacks (ties, infinities, every size from 1 to 40 frames)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import median_absolute_deviation

from flatd.engine.ordering import network, sort_rows, sorted_mad, sorted_median


def sort_along_frames(stack: np.ndarray) -> None:
    """Sort `stack` in place along axis 0 with the engine's `sort_rows`."""
    ordered = sort_rows(list(stack), np.empty_like(stack[0]))
    result = [row.copy() for row in ordered]
    for target, row in zip(stack, result, strict=True):
        target[...] = row


@pytest.mark.parametrize("n", range(1, 41))
def test_sort_along_frames_equals_np_sort(n: int) -> None:
    rng = np.random.default_rng(n)
    stack = rng.integers(0, 5 if n % 2 else 1000, size=(n, 7, 9)).astype(np.float32)
    stack[:, 0, 0] = np.inf
    stack[0, 1, 1] = -np.inf
    expected = np.sort(stack, axis=0)
    sort_along_frames(stack)
    np.testing.assert_array_equal(stack, expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 24])
def test_merge_path_mad_is_the_median_absolute_deviation(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    stack = rng.normal(1.0, 0.01, size=(n, 5, 6)).astype(np.float32)
    stack[:, 0, :] = np.round(stack[:, 0, :], 2)  # ties
    ordered = sort_rows(list(stack.copy()), np.empty_like(stack[0]))
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    mad = sorted_mad(ordered, median, np.empty_like(stack[0]))
    np.testing.assert_allclose(mad, median_absolute_deviation(stack, axis=0), rtol=1e-6)


def test_sorted_median_skips_missing_values() -> None:
    stack = np.array([[1.0, 5.0, np.inf], [3.0, np.inf, np.inf], [np.inf, np.inf, np.inf]])
    counts = np.array([2, 1, 0])
    median = sorted_median(stack.astype(np.float32), counts)
    np.testing.assert_array_equal(median[:2], [2.0, 5.0])
    assert np.isnan(median[2])


def test_network_sizes_are_batchers() -> None:
    # Batcher's odd-even merge sort: 19 comparators for 8 inputs, 63 for 16
    assert (len(network(8)), len(network(16))) == (19, 63)
