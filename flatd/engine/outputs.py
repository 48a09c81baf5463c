"""Where a mosaic's combined planes wait between the combination and the master file.

A mosaic's master is normalised once over all its planes, so no plane can be normalised
(or written) before the last one is combined. When every plane's outputs fit
`combine.mem_limit_mb` beside the band buffers of the largest, they are all held in
memory (`Outputs(spill=None)`). Otherwise each plane goes, as soon as it is combined,
into a scratch file (data, uncertainty, empty flags: 2 x itemsize + 1 bytes a pixel)
and its memory is released; planes are read back one at a time to be normalised (and
written back normalised), then once more each for the QA and once for the master file,
so that no more than one plane's outputs are ever in memory again. The scratch file is
anonymous (`tempfile.TemporaryFile`, O_TMPFILE on Linux) in the output directory, where
the master goes anyway: the kernel frees it when it is closed, even after a crash.

Each plane also keeps a strided sample of its positive values, from which the mosaic's
median is bracketed (`mosaic_median`); one streaming pass over the planes then finds it
exactly, as the levels pass finds a frame's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from flatd.engine.levels import CHUNK, STRIDED_SAMPLE, STRIDED_SIGMAS, Tally, partitioned_median
from flatd.engine.memory import Ledger
from flatd.engine.normalise import checked_level, normalise_plane
from flatd.engine.results import MasterPlane, PlaneResult


@dataclass
class _Stored:
    shape: tuple[int, int]
    dtype: np.dtype
    offset: int  # in the scratch file
    sample: np.ndarray  # positive values, strided
    plane: PlaneResult | MasterPlane | None = None  # in memory: the plane itself
    masked: int = -1  # once normalised

    @property
    def npix(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return self.npix * (2 * self.dtype.itemsize + 1)


class Outputs:
    """A mosaic's combined planes, in memory or spilled to a scratch file in `spill`."""

    def __init__(self, total_pixels: int, ledger: Ledger, spill: Path | None = None) -> None:
        self._ledger = ledger
        self._stride = max(1, total_pixels // STRIDED_SAMPLE)
        self._planes: list[_Stored] = []
        self._file: BinaryIO | None = None
        if spill is not None:
            spill.mkdir(parents=True, exist_ok=True)  # the output directory, maybe not yet made
            # closed by close(); the kernel frees it with its last descriptor in any case
            self._file = tempfile.TemporaryFile(dir=spill, prefix=".flatd-tmp-planes-")  # noqa: SIM115
        self._end = 0

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def put(self, plane: PlaneResult) -> None:
        """Keep a combined (not yet normalised) plane; a spilled one leaves memory."""
        values = plane.data.reshape(-1)[:: self._stride]
        sample = values[values > 0]
        stored = _Stored(plane.data.shape, plane.data.dtype, self._end, sample)
        self._planes.append(stored)
        if self._file is None:
            stored.plane = plane
            return
        for array in (plane.data, plane.uncertainty, plane.empty):
            self._write(array, self._end)
            self._end += array.nbytes
        self._ledger.release(stored.nbytes)

    def median(self, planes: Sequence[int]) -> float:
        """The exact median of the positive values of `planes` (ValueError when none)."""
        chosen = [self._planes[e] for e in planes]
        sample = np.concatenate([s.sample for s in chosen])
        tally = Tally(sample, sigmas=STRIDED_SIGMAS)
        for e in planes:
            for chunk in self._chunks(e):
                tally.add(chunk[chunk > 0])
        if tally.count == 0:
            raise ValueError("no pixel has a surviving value")
        median = tally.median()
        if median is None:  # the bracket missed: every positive value, in memory
            positive = [chunk[chunk > 0] for e in planes for chunk in self._chunks(e)]
            median = partitioned_median(np.concatenate(positive))
        return checked_level(median)

    def normalise(self, e: int, level: float, min_response: float) -> int:
        """Normalise plane `e` by `level`, mask what no flat can correct; its masked count."""
        stored = self._planes[e]
        if self._file is None:
            assert isinstance(stored.plane, PlaneResult)
            combined = (stored.plane.data, stored.plane.uncertainty, stored.plane.empty)
        else:
            combined = self._read_combined(stored)
        data, uncertainty, mask, masked = normalise_plane(*combined, level, min_response)
        stored.masked = masked
        if self._file is None:
            stored.plane = MasterPlane(data, uncertainty, mask, masked)
            return masked
        offset = stored.offset
        for array in (data, uncertainty, mask):
            self._write(array, offset)
            offset += array.nbytes
        self._ledger.release(stored.nbytes)
        return masked

    def load(self, e: int) -> MasterPlane:
        """Plane `e`, normalised (read back from the scratch file when spilled)."""
        stored = self._planes[e]
        if self._file is None:
            assert isinstance(stored.plane, MasterPlane)
            return stored.plane
        big_endian = stored.dtype.newbyteorder(">")
        data, offset = self._read(stored.shape, big_endian, stored.offset)
        uncertainty, offset = self._read(stored.shape, big_endian, offset)
        mask, _ = self._read(stored.shape, np.dtype(bool), offset)
        return MasterPlane(data, uncertainty, mask, stored.masked)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    # -- the scratch file ------------------------------------------------------------------
    def _chunks(self, e: int) -> Iterator[np.ndarray]:
        stored = self._planes[e]
        if self._file is None:
            assert isinstance(stored.plane, PlaneResult)
            values = stored.plane.data.reshape(-1)
            for start in range(0, values.size, CHUNK):
                yield values[start : start + CHUNK]
            return
        buffer = np.empty(min(CHUNK, stored.npix), stored.dtype)
        for start in range(0, stored.npix, CHUNK):
            part = buffer[: min(CHUNK, stored.npix - start)]
            self._read_into(part, stored.offset + start * stored.dtype.itemsize)
            yield part

    def _read_combined(self, stored: _Stored) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A spilled combined plane read back: its data, uncertainty and empty pixels."""
        self._ledger.hold(stored.nbytes)
        data, offset = self._read(stored.shape, stored.dtype, stored.offset)
        uncertainty, offset = self._read(stored.shape, stored.dtype, offset)
        empty, _ = self._read(stored.shape, np.dtype(bool), offset)
        return data, uncertainty, empty

    def _read(self, shape: tuple[int, int], dtype: np.dtype, offset: int) -> tuple[np.ndarray, int]:
        array = np.empty(shape, dtype)
        self._read_into(array, offset)
        return array, offset + array.nbytes

    def _read_into(self, array: np.ndarray, offset: int) -> None:
        assert self._file is not None
        self._file.seek(offset)
        view = array.reshape(-1).view(np.uint8).data
        if self._file.readinto(view) != array.nbytes:  # type: ignore[attr-defined]
            raise EOFError("the scratch file of a mosaic's planes ends early")

    def _write(self, array: np.ndarray, offset: int) -> None:
        assert self._file is not None
        self._file.seek(offset)
        self._file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
