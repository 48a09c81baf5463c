"""The combination engine: a sequence of flat frames in, one normalised master out.

The recipe is the astropy CCD guide's (scale each frame by 1/median, sigma-clip 5/5
around the per-pixel median with `mad_std`, average), with two differences: the clip
works on the *scaled* values, so stars in twilight flats whose level falls during the
sequence are still rejected (ccdproc clips the unscaled frames), and the memory limit
counts every buffer, outputs included.

Work is done band by band of rows: every frame's rows for the band are read straight
into one stack (each file is opened once; see `pixels`), scaled, and reduced. The
per-pixel median and MAD come from a sorting network run along the frame axis — a fixed
sequence of element-wise min/max operations, which for the usual 5-50 frames is several
times faster than a per-pixel quickselect (bottleneck). Two bands are combined at once on
two cores, outside the GIL. Bands are sized to stay in the CPU cache and within
`mem_limit_mb`.

For the default recipe the compiled kernel (`kernel`, `_kernel.c`) does each band, and
each frame's tally, in one call, with the same float32 operations in the same order as
the numpy code here, which does everything else (other settings, bands holding NaN or
infinity) and everything when the kernel is not built.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flatd import kernel
from flatd.config import CombineConfig
from flatd.frames import Frame
from flatd.pixels import FramePixels, raw_dtype

MAD_TO_STD = 1.482602218505602  # astropy.stats.mad_std's factor
MB = 1_000_000  # mem_limit_mb counts like ccdproc's mem_limit=350e6
CACHE_BYTES = 6 * MB  # a band's stack this size stays in the CPU caches
ROW_TEMPORARIES = 16  # float64 row-sized temporaries of one band, per pixel of the band
MAX_THREADS = 2
GRID = 8  # blocks a side over which each frame is compared with the median image
CHUNK = 1 << 18  # elements per step when scanning a whole frame (stays in the CPU cache)
SAMPLE_ROWS = 64  # rows read first to bracket a frame's median
SMALL = 1 << 16  # frames of fewer pixels are measured in memory; samples have about this many
BRACKET_SIGMAS = 8  # bracket half-width, in standard errors of the sample's median rank
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 32 * MB  # buffers this large are unmapped when freed; smaller ones reused


@dataclass(frozen=True)
class FrameLevels:
    """What the first pass measured on one whole frame."""

    median: float
    mean: float
    saturated_fraction: float  # of pixels >= the saturation level (0 when not checked)


@dataclass(frozen=True)
class FrameStats:
    """One input's part in a master (a row of the INPUTS table)."""

    path: Path
    median: float
    mean: float
    scale: float  # factor the frame was multiplied by (1/median, 1/mean or 1)
    used: bool
    reason: str  # why not used ("" when used)
    clipped_fraction: float  # of its pixels rejected by the sigma clip
    structure: float = float("nan")  # largest large-scale departure from the median image


@dataclass
class CombineResult:
    data: np.ndarray  # normalised to median 1
    uncertainty: np.ndarray  # standard deviation of the mean
    mask: np.ndarray  # bool, True where no value survived
    stats: list[FrameStats]
    normalisation: float  # median of the combined, scaled frames before normalising
    peak_bytes: int  # largest total of buffers the engine held at once
    threads: int = 1
    rows_per_band: int = 0
    engine: str = "numpy"  # or "kernel": the compiled kernel did the finite bands


Progress = Callable[[int, int], None]


def measure(frame: Frame, saturation_level: float = 0.0, dtype: str = "float32") -> FrameLevels:
    """Median and mean level of one frame and its fraction of saturated pixels.

    The median is exact, found in one streaming pass (see `_Tally`): a sample of evenly
    spaced rows brackets it, then every band of rows, small enough to stay in the CPU
    cache, is counted and gives up its few values inside the bracket. Only when the
    bracket misses, or for a gzip stream (which cannot be read out of order), is the
    whole frame read and its median found in memory."""
    ny, nx = frame.shape
    with FramePixels(frame) as pixels:
        if not pixels.ordered_reads_only and ny * nx > SMALL:
            tally = _Tally(_sample_rows(pixels, np.dtype(dtype)), saturation_level)
            if not (dtype == "float32" and tally.add_file(pixels)):
                for band, swapped in _row_bands(pixels, np.dtype(dtype)):
                    tally.add(band, swapped)
            median = tally.median()
            if median is not None:
                return tally.levels(median, ny * nx)
        values = np.empty(ny * nx, dtype)
        pixels.read_rows(0, ny, values.reshape(frame.shape))
    tally = _Tally(values[:: max(1, values.size // SMALL)], saturation_level)
    for start in range(0, values.size, CHUNK):
        tally.add(values[start : start + CHUNK])
    if tally.count == 0:
        raise ValueError(f"{frame.path.name}: no finite pixel values")
    median = tally.median()
    if median is None:
        median = _partitioned_median(values[np.isfinite(values)])
    return tally.levels(median, ny * nx)


class _Tally:
    """Sum, count, saturated count and the median's bracket, over chunks of one array.

    A sorted sample brackets the median (BRACKET_SIGMAS standard errors of its rank each
    side); each chunk then adds its count below the bracket and its values inside it,
    and the exact median is the right rank among those few values — one pass, about
    four times faster than partitioning everything."""

    def __init__(self, sample: np.ndarray, saturation_level: float = 0.0) -> None:
        sample = sample[np.isfinite(sample)]
        self.low = self.high = None
        self.inside_fraction = 1.0  # expected share of the values within the bracket
        if sample.size:
            middle = sample.size // 2
            half = int(BRACKET_SIGMAS * np.sqrt(sample.size) / 2) + 1
            ends = [max(0, middle - half), min(sample.size - 1, middle + half)]
            sample.partition(ends)
            self.low, self.high = sample[ends[0]], sample[ends[1]]
            self.inside_fraction = (ends[1] - ends[0] + 1) / sample.size
        self.saturation_level = saturation_level
        self.total, self.count, self.saturated, self.below = 0.0, 0, 0, 0
        self.inside: list[np.ndarray] = []
        self._scratch: np.ndarray | None = None

    def add(self, values: np.ndarray, swapped: bool = False) -> None:
        """Add a chunk of values (1-D; big-endian bytes in a float32 array when
        `swapped`, which only the kernel reads)."""
        if values.dtype == np.float32 and kernel.available():
            self._add_with_kernel(values, swapped)
            return
        assert not swapped
        subtotal = float(np.add.reduce(values, dtype=np.float64))
        if not np.isfinite(subtotal):
            values = values[np.isfinite(values)]
            subtotal = float(np.add.reduce(values, dtype=np.float64))
        self.total += subtotal
        self.count += values.size
        if self.saturation_level > 0:
            self.saturated += np.count_nonzero(values >= self.saturation_level)
        if self.low is not None:
            self.below += np.count_nonzero(values < self.low)
            self.inside.append(values[(values >= self.low) & (values <= self.high)])

    def add_file(self, pixels: FramePixels) -> bool:
        """Add all of a frame's pixels in one kernel call, reading the file there; False
        (nothing added) when the kernel cannot read this file, or the bracket holds far
        more values than the sample promised."""
        source = pixels.raw_source(0)
        if source is None or not kernel.available():
            return False
        count = pixels.frame.shape[0] * pixels.frame.shape[1]
        buffer = np.empty(min(count, CHUNK), np.float32)
        expected = self.inside_fraction * count
        inside = np.empty(min(count, int(4 * expected) + buffer.size), np.float32)
        totals = kernel.TallyResult()
        bracket = self._bracket()
        chosen = kernel.tally_file(
            source[0],
            source[1],
            count,
            str(pixels.frame.path),
            bracket,
            self.saturation_level,
            totals,
            buffer,
            inside,
        )
        if chosen is None:
            return False
        self._add_totals(totals)
        if bracket is not None:
            self.inside.append(chosen)
        return True

    def _bracket(self) -> tuple[float, float] | None:
        return None if self.low is None else (float(self.low), float(self.high))

    def _add_totals(self, totals: kernel.TallyResult) -> None:
        self.total += totals.sum
        self.count += totals.finite
        self.below += totals.below
        self.saturated += totals.saturated

    def _add_with_kernel(self, values: np.ndarray, swapped: bool) -> None:
        if self._scratch is None or self._scratch.size < values.size:
            self._scratch = np.empty(values.size, np.float32)
        totals = kernel.TallyResult()
        bracket = self._bracket()
        inside = kernel.tally(
            values, swapped, bracket, self.saturation_level, totals, self._scratch
        )
        self._add_totals(totals)
        if bracket is not None:
            self.inside.append(inside.copy())

    def median(self) -> float | None:
        """The exact median, or None when the bracket missed it."""
        if self.low is None or self.count == 0:
            return None
        local = [r - self.below for r in _middle_ranks(self.count)]
        chosen = np.concatenate(self.inside)
        if local[0] < 0 or local[-1] >= chosen.size:
            return None
        chosen.partition(local)
        return float(np.mean([float(chosen[r]) for r in local]))

    def levels(self, median: float, pixels: int) -> FrameLevels:
        return FrameLevels(
            median=median, mean=self.total / self.count, saturated_fraction=self.saturated / pixels
        )


def _sample_rows(pixels: FramePixels, dtype: np.dtype) -> np.ndarray:
    ny, nx = pixels.frame.shape
    rows = np.unique(np.linspace(0, ny - 1, min(ny, SAMPLE_ROWS)).astype(int))
    sample = np.empty((rows.size, nx), dtype)
    for k, y in enumerate(rows):
        pixels.read_rows(int(y), int(y) + 1, sample[k : k + 1])
    return sample.reshape(-1)


def _row_bands(pixels: FramePixels, dtype: np.dtype) -> Iterator[tuple[np.ndarray, bool]]:
    """The frame's pixels, a cache-sized band of rows at a time (one reused buffer), each
    with whether it was left in big-endian byte order for the kernel."""
    ny, nx = pixels.frame.shape
    rows = max(1, CHUNK // nx)
    band = np.empty((rows, nx), dtype)
    big_endian_ok = dtype == np.float32 and kernel.available()
    for first in range(0, ny, rows):
        part = band[: min(rows, ny - first)]
        swapped = pixels.read_rows(first, first + part.shape[0], part, big_endian_ok=big_endian_ok)
        yield part.reshape(-1), swapped


def measure_frames(
    frames: Sequence[Frame], saturation_levels: Sequence[float], settings: CombineConfig
) -> list[FrameLevels | str]:
    """`measure` for many frames, two at a time when the memory limit allows a whole
    frame per worker (the fallback's need). A frame whose pixels cannot be read gets the
    reason instead of its levels."""
    if not frames:
        return []
    release_freed_memory()
    largest = max(f.shape[0] * f.shape[1] for f in frames)
    one = largest * np.dtype(settings.dtype).itemsize * 1.2
    threads = min(
        len(frames), MAX_THREADS if MAX_THREADS * one <= settings.mem_limit_mb * MB else 1
    )

    def measured(pair: tuple[Frame, float]) -> FrameLevels | str:
        try:
            return measure(pair[0], pair[1], settings.dtype)
        except (OSError, EOFError, ValueError) as exc:
            return f"unreadable pixels: {exc}"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(measured, zip(frames, saturation_levels, strict=True)))


def combine(
    frames: Sequence[Frame],
    settings: CombineConfig,
    *,
    rejected: dict[Path, str] | None = None,
    levels: dict[Path, FrameLevels] | None = None,
    progress: Progress | None = None,
) -> CombineResult:
    """Combine `frames` (minus `rejected`, whose reasons go into the stats) into a master.

    `levels` are the frames' measured levels (measured here when missing). Raises
    ValueError for unusable input (no frames, mixed shapes, a non-positive level, missing
    gain for the noise deviation) and MemoryError when `mem_limit_mb` cannot hold even
    the outputs; an exception raised by `progress` abandons the combination.
    """
    release_freed_memory()
    rejected = rejected or {}
    levels = dict(levels or {})
    used = [f for f in frames if f.path not in rejected]
    if not used:
        raise ValueError("no usable frames to combine")
    shapes = {f.shape for f in used}
    if len(shapes) > 1:
        raise ValueError(f"frames of different shapes: {sorted(shapes)}")
    for frame in used:
        if frame.path not in levels:
            levels[frame.path] = measure(frame, 0.0, settings.dtype)
    scales = [_scale(levels[f.path], settings.scale, f) for f in used]
    noise = _noise_model(used, settings) if settings.deviation == "noise" else None
    with ExitStack() as stack:
        readers = [stack.enter_context(FramePixels(f)) for f in used]
        engine = _Engine(readers, np.array(scales), settings, noise, progress)
        engine.run()
    stats = _stats(
        frames,
        rejected,
        levels,
        dict(zip((f.path for f in used), scales, strict=True)),
        dict(zip((f.path for f in used), engine.clipped, strict=True)),
        dict(zip((f.path for f in used), engine.structure(), strict=True)),
        np.prod(next(iter(shapes))),
    )
    return CombineResult(
        data=engine.data,
        uncertainty=engine.uncertainty,
        mask=engine.mask,
        stats=stats,
        normalisation=engine.normalisation,
        peak_bytes=engine.ledger.peak,
        threads=engine.threads,
        rows_per_band=engine.rows_per_band,
        engine="kernel" if engine.uses_kernel else "numpy",
    )


# -- the engine ----------------------------------------------------------------------------
class _Ledger:
    """Counts the bytes of the engine's buffers; `peak` is the most held at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held = 0
        self.peak = 0

    def hold(self, nbytes: int) -> None:
        with self._lock:
            self.held += nbytes
            self.peak = max(self.peak, self.held)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.held -= nbytes


class _Engine:
    def __init__(
        self,
        readers: list[FramePixels],
        scales: np.ndarray,
        settings: CombineConfig,
        noise: list[tuple[float, float]] | None,
        progress: Progress | None,
    ) -> None:
        self.readers = readers
        self.scales = scales
        self.settings = settings
        self.noise = noise
        self.progress = progress
        self.dtype = np.dtype(settings.dtype)
        self.n = len(readers)
        self.ny, self.nx = readers[0].frame.shape
        self.ledger = _Ledger()
        self.clipped = np.zeros(self.n, np.int64)
        self.grid_rows = min(GRID, self.ny)
        self.grid_cols = min(GRID, self.nx)
        self.col_starts = np.linspace(0, self.nx, self.grid_cols + 1).astype(int)[:-1]
        self.offset_blocks = np.zeros((self.n, self.grid_rows, self.grid_cols))
        self.center_blocks = np.zeros((self.grid_rows, self.grid_cols))
        self._plan()
        self.data = self._allocate((self.ny, self.nx), self.dtype)
        self.uncertainty = self._allocate((self.ny, self.nx), self.dtype)
        self.mask = self._allocate((self.ny, self.nx), bool)
        self.normalisation = 1.0
        self.uses_kernel = kernel.available() and self._kernel_recipe()
        self._lock = threading.Lock()
        self._next_band = 0
        self._rows_done = 0
        self._failed = threading.Event()

    def _kernel_recipe(self) -> bool:
        """Whether the compiled kernel does these settings (else numpy does all)."""
        settings = self.settings
        clip_ok = not settings.sigma_clip or (
            settings.center == "median" and settings.deviation == "mad_std"
        )
        return self.dtype == np.float32 and settings.method == "average" and clip_ok

    def _band_kernel(self) -> kernel.BandKernel | None:
        if not self.uses_kernel:
            return None
        return kernel.BandKernel(
            [str(r.frame.path) for r in self.readers],
            self.scales,
            _network(self.n),
            [*self.col_starts, self.nx],
            self.grid_rows,
            self.settings.sigma_clip,
            self.settings.sigma_low,
            self.settings.sigma_high,
        )

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        array = np.empty(shape, dtype)
        self.ledger.hold(array.nbytes)
        return array

    def _plan(self) -> None:
        """Choose threads and rows per band so that every buffer fits `mem_limit_mb`."""
        limit = int(self.settings.mem_limit_mb * MB)
        npix = self.ny * self.nx
        outputs = npix * (2 * self.dtype.itemsize + 1)
        normalising = npix * self.dtype.itemsize  # a copy of the master for its median
        raw_row = max(r.raw_bytes_per_row() for r in self.readers)
        per_row = (
            self.n * self.nx * (2 * self.dtype.itemsize + 1)
            + raw_row
            + ROW_TEMPORARIES * 8 * self.nx
        )
        available = limit - outputs
        if available < max(per_row, normalising):
            need = (outputs + max(per_row, normalising)) / MB
            raise MemoryError(
                f"combine.mem_limit_mb = {self.settings.mem_limit_mb:g} is too small for "
                f"{self.n} frames of {self.nx}x{self.ny}: at least {need:.0f} MB needed"
            )
        ordered = any(r.ordered_reads_only for r in self.readers)
        threads = 1 if ordered or self.ny < 2 else MAX_THREADS
        fit = available // (threads * per_row)
        if fit < 1:
            threads, fit = 1, available // per_row
        cache_rows = max(1, CACHE_BYTES // (self.n * self.nx * self.dtype.itemsize))
        self.threads = threads
        self.rows_per_band = int(max(1, min(fit, cache_rows, -(-self.ny // threads))))
        self.band_bytes = per_row * self.rows_per_band

    def run(self) -> None:
        bands = -(-self.ny // self.rows_per_band)
        workers = min(self.threads, bands)
        if workers == 1:
            self._work()
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(self._work) for _ in range(workers)]
                for future in futures:
                    future.result()
        self._normalise()

    def _work(self) -> None:
        self.ledger.hold(self.band_bytes)
        try:
            buffers = _Buffers(self.n, self.rows_per_band, self.nx, self.dtype)
            band_kernel = self._band_kernel()
            clipped = np.zeros(self.n, np.int64)
            offset_blocks = np.zeros_like(self.offset_blocks)
            center_blocks = np.zeros_like(self.center_blocks)
            while not self._failed.is_set():
                with self._lock:
                    first = self._next_band * self.rows_per_band
                    self._next_band += 1
                if first >= self.ny:
                    break
                stop = min(first + self.rows_per_band, self.ny)
                self._band(
                    first, stop, buffers, clipped, (offset_blocks, center_blocks), band_kernel
                )
                self._advance(stop - first)
            with self._lock:
                self.clipped += clipped
                self.offset_blocks += offset_blocks
                self.center_blocks += center_blocks
        except BaseException:
            self._failed.set()
            raise
        finally:
            self.ledger.release(self.band_bytes)

    def _advance(self, rows: int) -> None:
        with self._lock:
            self._rows_done += rows
            done = self._rows_done
        if self.progress is not None:
            self.progress(done, self.ny)

    def _band(
        self,
        first: int,
        stop: int,
        buffers: _Buffers,
        clipped: np.ndarray,
        blocks: tuple[np.ndarray, np.ndarray],
        band_kernel: kernel.BandKernel | None,
    ) -> None:
        rows = stop - first
        stack = buffers.stack[:, :rows]
        sources: list[tuple[int, int] | None] = []
        swapped = np.zeros(self.n, bool)
        for i, reader in enumerate(self.readers):
            source = reader.raw_source(first) if band_kernel is not None else None
            if source is None:
                swapped[i] = reader.read_rows(
                    first, stop, stack[i], big_endian_ok=band_kernel is not None
                )
            else:
                swapped[i] = True  # the kernel reads the file's bytes itself
            sources.append(source)
        if band_kernel is not None:
            row_blocks = np.arange(first, stop) * self.grid_rows // self.ny
            if band_kernel.combine_band(
                stack,
                sources,
                swapped,
                row_blocks,
                self.data[first:stop],
                self.uncertainty[first:stop],
                self.mask[first:stop],
            ):
                clipped += band_kernel.clipped
                if self.settings.sigma_clip:
                    blocks[0][...] += band_kernel.offset_blocks
                    blocks[1][...] += band_kernel.center_blocks
                return
            # a value is not finite: the numpy engine below does this band
        for i in range(self.n):
            if swapped[i]:
                stack[i].byteswap(inplace=True)
            if self.scales[i] != 1.0:
                stack[i] *= self.dtype.type(self.scales[i])
        finite = bool(np.isfinite(stack).all())
        if not finite:  # infinities become NaN, which every nan-statistic below skips
            np.copyto(stack, np.nan, where=np.isinf(stack))
        settings = self.settings
        if settings.sigma_clip:
            center, dev = self._center_and_deviation(stack, buffers, rows, finite)
        else:
            center, dev = self._reference(stack, finite), None
        # sums of the kept values' offsets from `center`: exact enough in float32, since
        # the offsets are small, and the variance needs no difference of large numbers
        offset_sum = np.zeros((rows, self.nx), self.dtype)
        offset_sq = np.zeros((rows, self.nx), self.dtype)
        count = np.zeros((rows, self.nx), np.int32)
        offset = buffers.offset[:rows]
        keep_all = buffers.keep[:, :rows]
        flags = buffers.flags[:rows]
        if settings.sigma_clip:
            self._add_blocks(blocks[1], first, center)
        if settings.sigma_clip and self.noise is not None:
            self._noise_keep(stack, keep_all, center, buffers.work[:, :rows])
        elif settings.sigma_clip:
            low = dev * self.dtype.type(-settings.sigma_low)
            high = dev * self.dtype.type(settings.sigma_high)
        for i in range(self.n):
            keep = keep_all[i]
            np.subtract(stack[i], center, out=offset)
            if settings.sigma_clip:
                if self.noise is None:
                    np.greater_equal(offset, low, out=keep)
                    np.less_equal(offset, high, out=flags)
                    keep &= flags
                kept = np.count_nonzero(keep)
                present = rows * self.nx if finite else np.count_nonzero(np.isfinite(offset))
                clipped[i] += present - kept
                np.multiply(offset, keep, out=offset)
                if not finite:
                    np.copyto(offset, 0, where=~keep)
                self._add_blocks(blocks[0][i], first, offset)
            else:
                np.isfinite(offset, out=keep)
                if not finite:
                    np.copyto(offset, 0, where=~keep)
            # offset is 0 wherever the value is not kept
            np.add(offset_sum, offset, out=offset_sum)
            np.multiply(offset, offset, out=offset)
            np.add(offset_sq, offset, out=offset_sq)
            count += keep
        self._finish_band(first, stop, stack, keep_all, center, offset_sum, offset_sq, count)

    def _finish_band(
        self,
        first: int,
        stop: int,
        stack: np.ndarray,
        keep: np.ndarray,
        center: np.ndarray,
        offset_sum: np.ndarray,
        offset_sq: np.ndarray,
        count: np.ndarray,
    ) -> None:
        import bottleneck as bn  # only off the kernel's path

        data, uncertainty = self.data[first:stop], self.uncertainty[first:stop]
        empty = self.mask[first:stop]
        np.equal(count, 0, out=empty)
        inverse = np.reciprocal(np.maximum(count, 1), dtype=self.dtype)
        if self.settings.method == "average":
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

    def _add_blocks(self, blocks: np.ndarray, first: int, rows: np.ndarray) -> None:
        """Add the sums of `rows` (image rows from `first`) over each GRID block."""
        stop = first + rows.shape[0]
        block = first * self.grid_rows // self.ny
        while first < stop:
            block_end = min(stop, -(-(block + 1) * self.ny // self.grid_rows))
            part = rows[first - (stop - rows.shape[0]) : block_end - (stop - rows.shape[0])]
            blocks[block] += np.add.reduceat(part.sum(axis=0), self.col_starts, dtype=np.float64)
            first, block = block_end, block + 1

    def structure(self) -> np.ndarray:
        """Per frame: the largest departure of a block's mean from the median image,
        relative, after removing the frame's typical departure (NaN without clipping)."""
        if not self.settings.sigma_clip:
            return np.full(self.n, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = self.offset_blocks / self.center_blocks
        typical = np.nanmedian(relative.reshape(self.n, -1), axis=1)
        departure = np.abs(relative - typical[:, None, None]).reshape(self.n, -1)
        return np.nanmax(np.where(np.isfinite(departure), departure, -np.inf), axis=1)

    def _reference(self, stack: np.ndarray, finite: bool) -> np.ndarray:
        """Without clipping: any value near the pixel's level keeps the sums small."""
        import bottleneck as bn  # only off the kernel's path

        if finite:
            return stack[0].copy()
        return np.nan_to_num(bn.nanmean(stack, axis=0), nan=0.0).astype(self.dtype)

    def _center_and_deviation(
        self, stack: np.ndarray, buffers: _Buffers, rows: int, finite: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-pixel center and deviation of the scaled values (None for 'noise', which
        has one deviation per frame)."""
        import bottleneck as bn  # only off the kernel's path

        work = buffers.work[:, :rows]
        np.copyto(work, stack)
        if finite:
            ordered = sort_rows(list(work), buffers.spare[:rows])
            median = (ordered[(self.n - 1) // 2] + ordered[self.n // 2]) / 2
        else:
            work[~np.isfinite(work)] = np.inf  # sorts last, out of every median's reach
            counts = np.isfinite(stack).sum(axis=0)
            work.sort(axis=0)
            median = _sorted_median(work, counts)
        center = (
            median
            if self.settings.center == "median"
            else bn.nanmean(stack, axis=0).astype(self.dtype)
        )
        if self.settings.deviation == "mad_std":
            if finite:
                mad = sorted_mad(ordered, median, buffers.spare2[:rows])
            else:
                np.subtract(work, median, out=work)
                np.abs(work, out=work)
                work.sort(axis=0)
                mad = _sorted_median(work, counts)
            return center, MAD_TO_STD * mad
        if self.settings.deviation == "std":
            return center, bn.nanstd(stack, axis=0).astype(self.dtype)
        return center, None

    def _noise_variance(self, i: int, center: np.ndarray) -> np.ndarray:
        """The expected variance of frame i's scaled value where the sequence's scaled
        level is `center`: Poisson noise of its unscaled level plus read noise."""
        gain, read_noise = self.noise[i]  # type: ignore[index]
        scale = float(self.scales[i])
        level = np.maximum(center / scale, 0.0)
        return scale * scale * (level / gain + (read_noise / gain) ** 2)

    def _noise_keep(
        self, stack: np.ndarray, keep: np.ndarray, center: np.ndarray, variance: np.ndarray
    ) -> None:
        """deviation = 'noise': which values to keep, judged by each frame's expected
        noise (gain and read noise at the pixel's level) rather than by the spread of a
        few values.

        Stars and cosmic rays only add light. So the highest value is dropped while it
        exceeds the lowest by more than sigma_high times the noise of their difference;
        then, where at least three values are left, a value more than sigma_low below
        the mean of the others is dropped. Unlike a clip around the median, this keeps
        the one clean value when two frames of three are hit at the same pixel."""
        settings = self.settings
        for i in range(self.n):
            variance[i] = self._noise_variance(i, center)
        np.isfinite(stack, out=keep)
        shape = center.shape
        for _ in range(self.n - 1):
            highest = np.full(shape, -np.inf, self.dtype)
            lowest = np.full(shape, np.inf, self.dtype)
            highest_var = np.zeros(shape, self.dtype)
            lowest_var = np.zeros(shape, self.dtype)
            which = np.zeros(shape, np.int16)
            for i in range(self.n):
                higher = keep[i] & (stack[i] > highest)
                np.copyto(highest, stack[i], where=higher)
                np.copyto(highest_var, variance[i], where=higher)
                which[higher] = i
                lower = keep[i] & (stack[i] < lowest)
                np.copyto(lowest, stack[i], where=lower)
                np.copyto(lowest_var, variance[i], where=lower)
            with np.errstate(invalid="ignore"):
                out = highest - lowest > settings.sigma_high * np.sqrt(highest_var + lowest_var)
            if not out.any():
                break
            for i in range(self.n):
                keep[i] &= ~(out & (which == i))
        alive = keep.sum(axis=0)
        total = np.zeros(shape)
        total_var = np.zeros(shape)
        for i in range(self.n):
            np.add(total, stack[i], out=total, where=keep[i])
            np.add(total_var, variance[i], out=total_var, where=keep[i])
        others = np.maximum(alive - 1, 1)
        for i in range(self.n):
            others_mean = (total - np.where(keep[i], stack[i], 0)) / others
            others_var = (total_var - np.where(keep[i], variance[i], 0)) / (others * others)
            spread = np.sqrt(variance[i] + others_var)
            with np.errstate(invalid="ignore"):
                low = stack[i] < others_mean - settings.sigma_low * spread
            keep[i] &= ~(low & (alive >= 3))

    def _normalise(self) -> None:
        """Divide by the master's median; leave data and uncertainty in FITS (big-endian)
        byte order, so that writing them needs no swapped copy."""
        if self.mask.all():
            raise ValueError("no pixel has a surviving value")
        if self.mask.any():
            good = self.data[~self.mask]
            self.ledger.hold(good.nbytes)
            self.normalisation = _median_in_place(good)
            self.ledger.release(good.nbytes)
            del good
        else:
            self.normalisation = self._median_of_data()
        if not np.isfinite(self.normalisation) or self.normalisation <= 0:
            raise ValueError(f"combined level {self.normalisation} cannot be normalised")
        self.data /= self.dtype.type(self.normalisation)
        self.uncertainty /= self.dtype.type(self.normalisation)
        self.data[self.mask] = 1.0
        self.data = _to_big_endian(self.data)
        self.uncertainty = _to_big_endian(self.uncertainty)

    def _median_of_data(self) -> float:
        """The exact median of the (all finite) data, without a copy unless the tally's
        bracket misses."""
        values = self.data.reshape(-1)
        median = _tally_median(values)
        if median is None:
            copy = values.copy()
            self.ledger.hold(copy.nbytes)
            median = _partitioned_median(copy)
            self.ledger.release(copy.nbytes)
        return median


class _Buffers:
    """One worker's band buffers: the stack, its sorting copy, the keep masks."""

    def __init__(self, n: int, rows: int, nx: int, dtype: np.dtype) -> None:
        self.stack = np.empty((n, rows, nx), dtype)
        self.work = np.empty((n, rows, nx), dtype)
        self.keep = np.empty((n, rows, nx), bool)
        self.spare = np.empty((rows, nx), dtype)
        self.spare2 = np.empty((rows, nx), dtype)
        self.offset = np.empty((rows, nx), dtype)
        self.flags = np.empty((rows, nx), bool)


# -- small pieces ----------------------------------------------------------------------------
@functools.cache
def release_freed_memory() -> None:
    """Make glibc return every large freed buffer to the system at once.

    By default glibc raises its mmap threshold after large frees, so later buffers of a
    tens of MB come from the heap and stay in the process after use, and the process
    exceeds `mem_limit_mb` without the engine holding more. A fixed threshold keeps
    every buffer above it in its own mapping, unmapped when freed, while the band-sized
    temporaries below it are reused from the heap instead of being mapped (and paged
    in) afresh for every band."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: nothing to tune


def sort_along_frames(stack: np.ndarray) -> None:
    """Sort `stack` in place along axis 0 (see `sort_rows`)."""
    ordered = sort_rows(list(stack), np.empty_like(stack[0]))
    result = [row.copy() for row in ordered]
    for target, row in zip(stack, result, strict=True):
        target[...] = row


def sort_rows(rows: list[np.ndarray], spare: np.ndarray) -> list[np.ndarray]:
    """Sort equal-shaped arrays element-wise (the i-th result holds every pixel's i-th
    smallest value) with Batcher's odd-even merge network. Two passes per comparator:
    the minimum goes to a free buffer and buffers are swapped instead of copied, so the
    results are views of `rows`' buffers and `spare`, in a new order."""
    rows = list(rows)
    for a, b in _network(len(rows)):
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
    result = [_merged_rank(lower, upper, rank, scratch) for rank in ranks]
    return result[0] if len(result) == 1 else (result[0] + result[1]) / 2


def _merged_rank(
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


@functools.lru_cache(maxsize=64)
def _network(n: int) -> tuple[tuple[int, int], ...]:
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


def _sorted_median(ordered: np.ndarray, counts: np.ndarray | int) -> np.ndarray:
    """Median along axis 0 of a stack sorted along axis 0 whose first `counts` values
    (per pixel) are the real ones."""
    if isinstance(counts, int):
        return (ordered[(counts - 1) // 2] + ordered[counts // 2]) / 2
    low = np.take_along_axis(ordered, np.maximum(counts - 1, 0)[None] // 2, axis=0)[0]
    high = np.take_along_axis(ordered, (counts // 2)[None], axis=0)[0]
    high = np.where(counts > 0, high, np.nan).astype(ordered.dtype)
    return (low + high) / 2


def _median_in_place(values: np.ndarray) -> float:
    """Exact median of a 1-D array of finite values (which may be reordered)."""
    median = _tally_median(values)
    return median if median is not None else _partitioned_median(values)


def _tally_median(values: np.ndarray) -> float | None:
    """Exact median of a 1-D array of finite values, or None when the bracket misses."""
    tally = _Tally(values[:: max(1, values.size // SMALL)])
    for start in range(0, values.size, CHUNK):
        tally.add(values[start : start + CHUNK])
    return tally.median()


def _to_big_endian(array: np.ndarray) -> np.ndarray:
    """The same buffer, byte-swapped in place and viewed as big-endian."""
    big_endian = array.dtype.newbyteorder(">")
    if array.dtype == big_endian:
        return array
    return array.byteswap(inplace=True).view(big_endian)


def _partitioned_median(values: np.ndarray) -> float:
    ranks = _middle_ranks(values.size)
    values.partition(ranks)
    return float(np.mean([float(values[r]) for r in ranks]))


def _middle_ranks(n: int) -> list[int]:
    return sorted({(n - 1) // 2, n // 2})


def _scale(levels: FrameLevels, scale: str, frame: Frame) -> float:
    if scale == "none":
        return 1.0
    level = levels.median if scale == "median" else levels.mean
    if not np.isfinite(level) or level <= 0:
        raise ValueError(f"{frame.path.name}: {scale} level {level:g} cannot scale a flat")
    return 1.0 / level


def _noise_model(frames: list[Frame], settings: CombineConfig) -> list[tuple[float, float]]:
    """(gain e-/ADU, read noise e-) of each frame, from the settings or its header."""
    model = []
    for frame in frames:
        gain = settings.gain or frame.extras.get("GAIN", 0.0)
        read_noise = settings.read_noise or frame.extras.get("RDNOISE", 0.0)
        if gain <= 0:
            raise ValueError(
                f"deviation = 'noise' needs the gain: set combine.gain or a "
                f"GAIN header ({frame.path.name} has none)"
            )
        model.append((gain, read_noise))
    return model


def _stats(
    frames: Sequence[Frame],
    rejected: dict[Path, str],
    levels: dict[Path, FrameLevels],
    scales: dict[Path, float],
    clipped: dict[Path, int],
    structure: dict[Path, float],
    npix: int,
) -> list[FrameStats]:
    rows = []
    for frame in frames:
        level = levels.get(frame.path)
        rows.append(
            FrameStats(
                path=frame.path,
                median=level.median if level else float("nan"),
                mean=level.mean if level else float("nan"),
                scale=scales.get(frame.path, 0.0),
                used=frame.path not in rejected,
                reason=rejected.get(frame.path, ""),
                clipped_fraction=clipped.get(frame.path, 0) / npix,
                structure=float(structure.get(frame.path, np.nan)),
            )
        )
    return rows


__all__ = [
    "CombineResult",
    "FrameLevels",
    "FrameStats",
    "Progress",
    "combine",
    "measure",
    "measure_frames",
    "raw_dtype",
    "sort_along_frames",
]
