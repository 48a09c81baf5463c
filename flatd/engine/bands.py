"""Band scheduling: how many rows per band and how many workers, so that every buffer
fits `combine.mem_limit_mb` (and a band's stack stays in the CPU caches); and the
workers that take bands in turn until the plane is done, a worker fails, or `progress`
raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flatd.engine.memory import MAX_THREADS, MB, Ledger

CACHE_BYTES = 6 * MB  # a band's stack this size stays in the CPU caches
ROW_TEMPORARIES = 16  # float64 row-sized temporaries of one band, per pixel of the band

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BandPlan:
    threads: int
    rows_per_band: int
    band_bytes: int  # what one worker holds for its band buffers


def plan_bands(
    n: int,
    shape: tuple[int, int],
    itemsize: int,
    raw_row_bytes: int,
    ordered_reads_only: bool,
    mem_limit_mb: float,
    worker_bytes: int = 0,
    held: int = 0,
) -> BandPlan:
    """Threads and rows per band for n frames of `shape` so that the outputs and every
    worker's buffers (rows, plus `worker_bytes` of fixed scratch) fit the limit, less the
    `held` bytes the combination already holds (a mosaic's planes combined before this
    one); MemoryError (naming the limit) when not even one row does."""
    ny, nx = shape
    limit = int(mem_limit_mb * MB) - held
    npix = ny * nx
    outputs = npix * (2 * itemsize + 1)
    normalising = npix * itemsize  # a copy of the master for its median
    per_row = n * nx * (2 * itemsize + 1) + raw_row_bytes + ROW_TEMPORARIES * 8 * nx
    available = limit - outputs
    if available < max(per_row + worker_bytes, normalising):
        need = (held + outputs + max(per_row + worker_bytes, normalising)) / MB
        raise MemoryError(
            f"combine.mem_limit_mb = {mem_limit_mb:g} is too small for "
            f"{n} frames of {nx}x{ny}: at least {need:.0f} MB needed"
        )
    threads = 1 if ordered_reads_only or ny < 2 else MAX_THREADS
    fit = (available - threads * worker_bytes) // (threads * per_row)
    if fit < 1:
        threads, fit = 1, (available - worker_bytes) // per_row
    cache_rows = max(1, CACHE_BYTES // (n * nx * itemsize))
    rows = int(max(1, min(fit, cache_rows, -(-ny // threads))))
    return BandPlan(threads, rows, per_row * rows + worker_bytes)


class BandRunner:
    """Runs `work(first, stop, state)` for every band of `ny` rows on the plan's workers;
    `start()` makes each worker's state (its buffers), `finish(state)` folds it back."""

    def __init__(self, ny: int, plan: BandPlan, ledger: Ledger, progress: Progress | None):
        self.ny, self.plan, self.ledger, self.progress = ny, plan, ledger, progress
        self._lock = threading.Lock()
        self._next_band = 0
        self._rows_done = 0
        self._failed = threading.Event()

    def run(
        self,
        start: Callable[[], object],
        work: Callable[[int, int, object], None],
        finish: Callable[[object], None],
    ) -> None:
        bands = -(-self.ny // self.plan.rows_per_band)
        workers = min(self.plan.threads, bands)
        if workers == 1:
            self._worker(start, work, finish)
            return
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(self._worker, start, work, finish) for _ in range(workers)]
            for future in futures:
                future.result()

    def _worker(
        self,
        start: Callable[[], object],
        work: Callable[[int, int, object], None],
        finish: Callable[[object], None],
    ) -> None:
        self.ledger.hold(self.plan.band_bytes)
        try:
            state = start()
            while not self._failed.is_set():
                band = self._take()
                if band is None:
                    break
                work(*band, state)
                self._advance(band[1] - band[0])
            with self._lock:
                finish(state)
        except BaseException:
            self._failed.set()
            raise
        finally:
            self.ledger.release(self.plan.band_bytes)

    def _take(self) -> tuple[int, int] | None:
        with self._lock:
            first = self._next_band * self.plan.rows_per_band
            self._next_band += 1
        if first >= self.ny:
            return None
        return first, min(first + self.plan.rows_per_band, self.ny)

    def _advance(self, rows: int) -> None:
        with self._lock:
            self._rows_done += rows
            done = self._rows_done
        if self.progress is not None:
            self.progress(done, self.ny)
