"""One image plane of N frames combined, given the N scales: the band loop that hands each
band to the compiled kernel or to the numpy engine, every buffer counted in the ledger.

This is the reusable step under `combine`: a mosaic combines each extension with the
scales measured over whole frames, and any `PixelSource` (a calibrated temporary file, an
extension) can be an input.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from flatd.config import CombineConfig
from flatd.engine import kernel
from flatd.engine.bands import BandRunner, Progress, plan_bands
from flatd.engine.memory import Ledger
from flatd.engine.numpy_band import BandBuffers, PlaneInputs, combine_band, prepare
from flatd.engine.ordering import network
from flatd.engine.pixels import PixelSource, PlaneReader
from flatd.engine.rejection import NoiseModel
from flatd.engine.results import PlaneResult


def combine_plane(
    sources: Sequence[PixelSource],
    scales: Sequence[float],
    settings: CombineConfig,
    *,
    saturations: Sequence[float] | None = None,
    noise: Sequence[NoiseModel] | None = None,
    progress: Progress | None = None,
    ledger: Ledger | None = None,
) -> PlaneResult:
    """Scale each source's values, leave out those that are not finite or reach the
    source's saturation level (0: none), clip and average; not normalised. Raises
    ValueError for planes of different shapes, MemoryError when `mem_limit_mb` cannot
    hold even the outputs; an exception raised by `progress` abandons the plane."""
    shapes = {s.shape for s in sources}
    if len(shapes) != 1:
        raise ValueError(f"planes of different shapes: {sorted(shapes)}")
    inputs = PlaneInputs(
        settings,
        np.asarray(scales, np.float64),
        np.asarray(saturations if saturations is not None else [0.0] * len(sources), np.float64),
        noise,
    )
    with ExitStack() as stack:
        readers = [stack.enter_context(PlaneReader(s)) for s in sources]
        return _PlaneJob(readers, inputs, ledger or Ledger(), progress).run()


def compiled_recipe(settings: CombineConfig) -> str:
    """'' when the compiled kernel does these settings, else why numpy does."""
    if settings.dtype != "float32":
        return f"combine.dtype = {settings.dtype}"
    if settings.method != "average":
        return f"combine.method = {settings.method}"
    if settings.sigma_clip and settings.center != "median":
        return f"combine.center = {settings.center}"
    if settings.sigma_clip and settings.deviation != "mad_std":
        return f"combine.deviation = {settings.deviation}"
    return ""


@dataclass
class _WorkerState:
    buffers: BandBuffers | None
    stack: np.ndarray
    band_kernel: kernel.BandKernel | None
    clipped: np.ndarray


class _PlaneJob:
    def __init__(
        self,
        readers: list[PlaneReader],
        inputs: PlaneInputs,
        ledger: Ledger,
        progress: Progress | None,
    ) -> None:
        self.readers, self.inputs, self.ledger = readers, inputs, ledger
        self.n = len(readers)
        self.ny, self.nx = readers[0].source.shape
        dtype = inputs.dtype
        self.plan = plan_bands(
            self.n,
            (self.ny, self.nx),
            dtype.itemsize,
            max(r.raw_bytes_per_row() for r in readers),
            any(r.ordered_reads_only for r in readers),
            inputs.settings.mem_limit_mb,
            kernel.worker_bytes(self.n),
            ledger.held,
        )
        self.runner = BandRunner(self.ny, self.plan, ledger, progress)
        self.data = self._allocate(dtype)
        self.uncertainty = self._allocate(dtype)
        self.empty = self._allocate(np.dtype(bool))
        self.compiled = kernel.available() and not compiled_recipe(inputs.settings)
        self.clipped = np.zeros(self.n, np.int64)

    def _allocate(self, dtype: np.dtype) -> np.ndarray:
        array = np.empty((self.ny, self.nx), dtype)
        self.ledger.hold(array.nbytes)
        return array

    def run(self) -> PlaneResult:
        self.runner.run(self._start, self._band, self._finish)  # type: ignore[arg-type]
        return PlaneResult(
            data=self.data,
            uncertainty=self.uncertainty,
            empty=self.empty,
            clipped=self.clipped,
            threads=self.plan.threads,
            rows_per_band=self.plan.rows_per_band,
            engine="compiled" if self.compiled else "numpy",
        )

    def _start(self) -> _WorkerState:
        rows, dtype = self.plan.rows_per_band, self.inputs.dtype
        clipped = np.zeros(self.n, np.int64)
        if not self.compiled:
            buffers = BandBuffers(self.n, rows, self.nx, dtype)
            return _WorkerState(buffers, buffers.stack, None, clipped)
        settings = self.inputs.settings
        band_kernel = kernel.BandKernel(
            [str(r.source.path) for r in self.readers],
            self.inputs.scales,
            self.inputs.saturations,
            network(self.n),
            settings.sigma_clip,
            settings.sigma_low,
            settings.sigma_high,
        )
        stack = np.empty((self.n, rows, self.nx), dtype)
        return _WorkerState(None, stack, band_kernel, clipped)

    def _finish(self, state: _WorkerState) -> None:
        self.clipped += state.clipped

    def _band(self, first: int, stop: int, state: _WorkerState) -> None:
        stack = state.stack[:, : stop - first]
        outputs = (self.data[first:stop], self.uncertainty[first:stop], self.empty[first:stop])
        if state.band_kernel is not None:
            sources = [r.kernel_source(first) for r in self.readers]
            big_endian = np.zeros(self.n, bool)
            for i, reader in enumerate(self.readers):
                if sources[i] is None:
                    big_endian[i] = reader.read_rows(first, stop, stack[i], big_endian_ok=True)
            state.band_kernel.combine_band(stack, sources, big_endian, *outputs)
            state.clipped += state.band_kernel.clipped
            return
        assert state.buffers is not None
        big_endian = np.array(
            [r.read_rows(first, stop, stack[i]) for i, r in enumerate(self.readers)]
        )
        finite = prepare(stack, big_endian, self.inputs)
        combine_band(stack, finite, self.inputs, state.buffers, outputs, state.clipped)
