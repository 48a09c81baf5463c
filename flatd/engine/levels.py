"""Frame levels: each frame's exact median, mean, saturated fraction and large-scale
pattern, in one streaming pass over its pixels; and the exact median of any large array.

The median is exact without sorting the frame: a sorted sample of evenly spaced rows
brackets it (BRACKET_SIGMAS standard errors of the sample median's rank each side), then
every cache-sized chunk adds its count below the bracket and its few values inside it,
and the median is the right rank among those (`Tally`). Only when the bracket misses, or
for a gzip stream (which cannot be read out of order), is the whole frame read and its
median found in memory. With the compiled kernel a plain file is tallied in one call.

The same row sample, thinned to a few hundred columns, is kept with the levels: compared
with the other frames' (`structure.score_structure`) it says how far a frame departs from
the sequence on large scales before anything is combined.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np

from flatd.engine import kernel
from flatd.engine.memory import MAX_THREADS, MB
from flatd.engine.pixels import PixelSource, PlaneReader
from flatd.engine.results import FrameLevels, PlaneSample

if TYPE_CHECKING:
    from flatd.config import CombineConfig
    from flatd.frames import Frame

CHUNK = 1 << 18  # elements per step when scanning a whole frame (stays in the CPU cache)
SAMPLE_ROWS = 64  # rows read first to bracket a frame's median
SMALL = 1 << 16  # frames of fewer pixels are measured in memory
BRACKET_SIGMAS = 16  # bracket half-width, in standard errors of the sample median's rank:
# the sample rows are not independent values (a flat varies from row to row), so its
# median strays further than a random sample's would (8 missed on 1 frame in 10)
STRIDED_SIGMAS = 8  # the same for a strided sample of an array's values (no such bias)
STRIDED_SAMPLE = 1 << 18  # values in that sample
SAMPLE_COLUMNS = 256  # columns of the sample rows kept for the structure check
GRID = 8  # blocks a side over which each frame is compared with the median image


class Tally:
    """Sum, count, saturated count and the median's bracket, over chunks of values."""

    def __init__(
        self, sample: np.ndarray, saturation_level: float = 0.0, sigmas: float = BRACKET_SIGMAS
    ) -> None:
        sample = sample[np.isfinite(sample)]
        self.bracket: tuple[float, float] | None = None
        self.inside_fraction = 1.0  # expected share of the values within the bracket
        if sample.size:
            middle = sample.size // 2
            half = int(sigmas * np.sqrt(sample.size) / 2) + 1
            ends = [max(0, middle - half), min(sample.size - 1, middle + half)]
            sample.partition(ends)
            self.bracket = (float(sample[ends[0]]), float(sample[ends[1]]))
            self.inside_fraction = (ends[1] - ends[0] + 1) / sample.size
        self.saturation_level = saturation_level
        self.total, self.count, self.saturated, self.below = 0.0, 0, 0, 0
        self.inside: list[np.ndarray] = []
        self._scratch: np.ndarray | None = None

    def add(self, values: np.ndarray, big_endian: bool = False) -> None:
        """Add a chunk of values (1-D; big-endian bytes in a float32 array when
        `big_endian`, which only the kernel reads)."""
        if values.dtype == np.float32 and kernel.available():
            self._add_compiled(values, big_endian)
            return
        assert not big_endian
        subtotal = float(np.add.reduce(values, dtype=np.float64))
        if not np.isfinite(subtotal):
            values = values[np.isfinite(values)]
            subtotal = float(np.add.reduce(values, dtype=np.float64))
        self.total += subtotal
        self.count += values.size
        if self.saturation_level > 0:
            self.saturated += int(np.count_nonzero(values >= self.saturation_level))
        if self.bracket is not None:
            low, high = self.bracket
            self.below += int(np.count_nonzero(values < low))
            self.inside.append(values[(values >= low) & (values <= high)])

    def _add_compiled(self, values: np.ndarray, big_endian: bool) -> None:
        if self._scratch is None or self._scratch.size < values.size:
            self._scratch = np.empty(values.size, np.float32)
        compiled = kernel.new_tally(self.bracket, self.saturation_level)
        got = kernel.tally_values(compiled, values, big_endian, self._scratch)
        self._merge(compiled)
        if self.bracket is not None:
            self.inside.append(self._scratch[:got].copy())

    def add_plane(self, reader: PlaneReader) -> bool:
        """Add all of a plane's values in one kernel call, reading the file there; False
        (nothing added) when the kernel cannot read this plane, or the bracket holds far
        more values than the sample promised."""
        where = reader.kernel_source(0)
        if where is None or not kernel.available():
            return False
        count = reader.source.shape[0] * reader.source.shape[1]
        buffer = np.empty(min(count, CHUNK), np.float32)
        inside = np.empty(
            min(count, int(4 * self.inside_fraction * count) + buffer.size), np.float32
        )
        fresh = kernel.new_tally(self.bracket, self.saturation_level)
        got = kernel.tally_source(fresh, where, count, str(reader.source.path), buffer, inside)
        if got is None:
            return False
        self._merge(fresh)
        if self.bracket is not None:
            self.inside.append(inside[:got])
        return True

    def _merge(self, compiled: kernel.Tally) -> None:
        self.total += compiled.sum
        self.count += compiled.finite
        self.below += compiled.below
        self.saturated += compiled.saturated

    def median(self) -> float | None:
        """The exact median, or None when the bracket missed it."""
        if self.bracket is None or self.count == 0:
            return None
        local = [r - self.below for r in middle_ranks(self.count)]
        chosen = np.concatenate(self.inside)
        if local[0] < 0 or local[-1] >= chosen.size:
            return None
        chosen.partition(local)
        return float(np.mean([float(chosen[r]) for r in local]))


# -- one frame ---------------------------------------------------------------------------
Saturation = float | Sequence[float]  # one level for every image plane, or one per plane


def measure(
    frame: Frame,
    saturation_level: Saturation = 0.0,
    dtype: str = "float32",
    per_plane: bool = False,
) -> FrameLevels:
    """The levels of a frame over all its image planes (see `measure_planes`); with
    `per_plane`, a frame of several planes also gets each plane's own median and mean
    (`FrameLevels.plane_levels`), measured in a second pass."""
    planes = PixelSource.planes_of(frame)
    levels = measure_planes(planes, saturation_level, dtype)
    if not per_plane or len(planes) == 1:
        return levels
    saturations = plane_saturations(saturation_level, len(planes))
    each = [
        measure_planes([plane], [level], dtype)
        for plane, level in zip(planes, saturations, strict=True)
    ]
    return dataclasses.replace(levels, plane_levels=tuple((e.median, e.mean) for e in each))


def plane_saturations(saturation: Saturation, planes: int) -> list[float]:
    """One saturation level per image plane (0: none)."""
    if not isinstance(saturation, Sequence):  # a number (numpy's too)
        return [float(saturation)] * planes
    if len(saturation) != planes:
        raise ValueError(f"{len(saturation)} saturation levels for {planes} image planes")
    return [float(level) for level in saturation]


def measure_planes(
    planes: Sequence[PixelSource], saturation_level: Saturation = 0.0, dtype: str = "float32"
) -> FrameLevels:
    """Median and mean level of one frame (all its image planes together), its fraction
    of saturated pixels (each plane against its own level in `saturation_level`) and each
    plane's large-scale pattern. Raises ValueError when no value is finite,
    OSError/EOFError when the file cannot be read."""
    kind = np.dtype(dtype)
    saturations = plane_saturations(saturation_level, len(planes))
    with ExitStack() as stack:
        readers = [stack.enter_context(PlaneReader(p)) for p in planes]
        pixels = sum(p.shape[0] * p.shape[1] for p in planes)
        if pixels > SMALL and not any(r.ordered_reads_only for r in readers):
            samples = [_sample_rows(r, kind) for r in readers]
            tally = Tally(np.concatenate([s.reshape(-1) for s in samples]))
            for reader, level in zip(readers, saturations, strict=True):
                tally.saturation_level = level
                _add_plane(tally, reader, kind)
            median = tally.median()
            if median is not None:
                kept = [_thinned(s, r.source.shape) for s, r in zip(samples, readers, strict=True)]
                return _levels(tally, median, pixels, kept)
        return _measure_in_memory(readers, saturations, kind)


def _measure_in_memory(
    readers: Sequence[PlaneReader], saturations: Sequence[float], kind: np.dtype
) -> FrameLevels:
    planes = []
    for reader in readers:
        plane = np.empty(reader.source.shape, kind)
        reader.read_rows(0, plane.shape[0], plane)
        planes.append(plane)
    sample = np.concatenate([p[sample_row_indices(p.shape[0])].reshape(-1) for p in planes])
    tally = Tally(sample)
    for plane, level in zip(planes, saturations, strict=True):
        tally.saturation_level = level
        values = plane.reshape(-1)
        for start in range(0, values.size, CHUNK):
            tally.add(values[start : start + CHUNK])
    if tally.count == 0:
        raise ValueError(f"{readers[0].source.path.name}: no finite pixel values")
    median = tally.median()
    if median is None:
        finite = np.concatenate([p[np.isfinite(p)] for p in planes])
        median = partitioned_median(finite)
    kept = [_thinned(p[sample_row_indices(p.shape[0])], p.shape) for p in planes]
    return _levels(tally, median, sum(p.size for p in planes), kept)


def _levels(tally: Tally, median: float, pixels: int, samples: list[PlaneSample]) -> FrameLevels:
    return FrameLevels(
        median=median,
        mean=tally.total / tally.count,
        saturated_fraction=tally.saturated / pixels,
        samples=tuple(samples),
    )


def _add_plane(tally: Tally, reader: PlaneReader, kind: np.dtype) -> None:
    if kind == np.float32 and tally.add_plane(reader):
        return
    ny, nx = reader.source.shape
    rows = max(1, CHUNK // nx)
    band = np.empty((rows, nx), kind)
    big_endian_ok = kind == np.float32 and kernel.available()
    for first in range(0, ny, rows):
        part = band[: min(rows, ny - first)]
        swapped = reader.read_rows(first, first + part.shape[0], part, big_endian_ok=big_endian_ok)
        tally.add(part.reshape(-1), swapped)


def sample_row_indices(ny: int) -> np.ndarray:
    """The evenly spaced rows that bracket a frame's median and show its structure."""
    return np.unique(np.linspace(0, ny - 1, min(ny, SAMPLE_ROWS)).astype(int))


def _sample_rows(reader: PlaneReader, kind: np.dtype) -> np.ndarray:
    rows = sample_row_indices(reader.source.shape[0])
    sample = np.empty((rows.size, reader.source.shape[1]), kind)
    for k, y in enumerate(rows):
        reader.read_rows(int(y), int(y) + 1, sample[k : k + 1])
    return sample


def _thinned(sample: np.ndarray, shape: tuple[int, int]) -> PlaneSample:
    """The sample rows at most SAMPLE_COLUMNS columns wide, with their GRID blocks."""
    ny, nx = shape
    columns = np.arange(0, nx, -(-nx // SAMPLE_COLUMNS))
    return PlaneSample(
        values=np.ascontiguousarray(sample[:, columns], np.float32),
        block_rows=sample_row_indices(ny) * min(GRID, ny) // ny,
        block_cols=columns * min(GRID, nx) // nx,
    )


# -- many frames -------------------------------------------------------------------------
def measure_frames(
    frames: Sequence[Frame], saturation_levels: Sequence[Saturation], settings: CombineConfig
) -> list[FrameLevels | str]:
    """`measure` for many frames, two at a time when the memory limit allows a whole
    frame per worker (the fallback's need); each plane's own levels too when a mosaic's
    extensions are normalised alone (`combine.normalise = "extension"`). A frame whose
    pixels cannot be read gets the reason instead of its levels."""
    if not frames:
        return []
    largest = max(sum(p.shape[0] * p.shape[1] for p in f.planes) for f in frames)
    one = largest * np.dtype(settings.dtype).itemsize * 1.2
    fits_two = MAX_THREADS * one <= settings.mem_limit_mb * MB
    threads = min(len(frames), MAX_THREADS if fits_two else 1)
    per_plane = settings.normalise == "extension"

    def measured(pair: tuple[Frame, Saturation]) -> FrameLevels | str:
        try:
            return measure(pair[0], pair[1], settings.dtype, per_plane)
        except (OSError, EOFError, ValueError) as exc:
            return f"unreadable pixels: {exc}"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(measured, zip(frames, saturation_levels, strict=True)))


# -- exact medians of large arrays ------------------------------------------------------
def median_in_place(values: np.ndarray) -> float:
    """Exact median of a 1-D array of finite values (which may be reordered)."""
    median = tally_median(values)
    return median if median is not None else partitioned_median(values)


def tally_median(values: np.ndarray) -> float | None:
    """Exact median of a 1-D array of finite values, or None when the bracket misses."""
    tally = Tally(values[:: max(1, values.size // STRIDED_SAMPLE)], sigmas=STRIDED_SIGMAS)
    for start in range(0, values.size, CHUNK):
        tally.add(values[start : start + CHUNK])
    return tally.median()


def partitioned_median(values: np.ndarray) -> float:
    ranks = middle_ranks(values.size)
    values.partition(ranks)
    return float(np.mean([float(values[r]) for r in ranks]))


def middle_ranks(n: int) -> list[int]:
    return sorted({(n - 1) // 2, n // 2})
