"""Pixel reading: where an image plane's values are stored (`PixelSource`), and rows of it
read straight into the engine's buffers (`PlaneReader`).

A `PixelSource` is a plain value: a file, the HDU and byte offset of one image plane, its
shape, BITPIX, BSCALE/BZERO and compression. `PixelSource.of(frame)` is a frame's image,
`PixelSource.planes_of(frame)` each of a mosaic's extensions; a calibrated temporary file
is a source too, so the engine never needs more than this to read a plane.

A plain FITS file is read with positional reads (`os.preadv`) at the data offset: no
astropy open, no memory map whose pages would count against the process, safe from several
threads on one descriptor, and each file is opened once per combination. Gzip files are
decompressed as a forward stream (bands must then be read in order); tile-compressed files
go through astropy's `CompImageHDU.section`, which decompresses only the tiles a band
needs. Plain files of any BITPIX need not be read here at all: `kernel_source` gives the
compiled kernel the descriptor and offset to read (and convert) them itself.

Physical values are `stored * BSCALE + BZERO` computed in double precision and rounded to
the engine's type once; the kernel does exactly the same, so both engines see the same
values. Plain float32 can be left in its file byte order for the kernel to swap.
"""

from __future__ import annotations

import gzip
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from flatd.engine import kernel

if TYPE_CHECKING:
    from astropy.io import fits

    from flatd.frames import Frame

_RAW_TYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
CONVERT_BYTES = 1 << 20  # stored values are converted this many bytes at a time

Compression = Literal["none", "gzip", "tile"]


def raw_dtype(bitpix: int) -> np.dtype:
    """The on-disk (big-endian) dtype of FITS `bitpix`."""
    return np.dtype(_RAW_TYPES[bitpix])


@dataclass(frozen=True)
class PixelSource:
    """Where one image plane's values are stored."""

    path: Path
    shape: tuple[int, int]  # (ny, nx)
    bitpix: int
    hdu: int = 0
    compression: Compression = "none"
    data_offset: int | None = None  # byte offset of the values (None for tile compression)
    bscale: float = 1.0
    bzero: float = 0.0

    @classmethod
    def of(cls, frame: Frame) -> PixelSource:
        """A frame's (first) image plane, where `frames` found it."""
        return cls(
            path=frame.path,
            shape=frame.shape,
            bitpix=frame.bitpix,
            hdu=frame.hdu,
            compression=frame.compression,
            data_offset=frame.data_offset,
            bscale=frame.bscale,
            bzero=frame.bzero,
        )

    @classmethod
    def planes_of(cls, frame: Frame) -> list[PixelSource]:
        """Every image plane of a frame (a mosaic's extensions), in file order."""
        if not frame.extensions:
            return [cls.of(frame)]
        return [
            cls(
                path=frame.path,
                shape=plane.shape,
                bitpix=plane.bitpix,
                hdu=plane.hdu,
                compression=plane.compression,
                data_offset=plane.data_offset,
                bscale=plane.bscale,
                bzero=plane.bzero,
            )
            for plane in frame.extensions
        ]

    def offset_of_row(self, row: int) -> int:
        if self.data_offset is None:
            raise ValueError(f"{self.path.name}: tile-compressed data has no byte offset")
        return self.data_offset + row * self.shape[1] * raw_dtype(self.bitpix).itemsize


class PlaneReader:
    """An open image plane whose rows can be read into float arrays; a context manager."""

    def __init__(self, source: PixelSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._stream: gzip.GzipFile | None = None
        self._hdul: fits.HDUList | None = None
        if source.compression == "none":
            self._fd = os.open(source.path, os.O_RDONLY)
        elif source.compression == "gzip":
            self._stream = gzip.GzipFile(source.path, "rb")
        else:
            from astropy.io import fits

            self._hdul = fits.open(source.path, memmap=False, lazy_load_hdus=True)

    @property
    def ordered_reads_only(self) -> bool:
        """True when reading bands out of order would be slow (a gzip stream)."""
        return self._stream is not None

    def raw_bytes_per_row(self) -> int:
        """Scratch bytes one row needs on its way to float."""
        return self.source.shape[1] * raw_dtype(self.source.bitpix).itemsize

    def kernel_source(self, first: int) -> kernel.Source | None:
        """Where the kernel reads rows from `first` on itself (plain files); else None."""
        if self._fd is None:
            return None
        source = self.source
        return kernel.source(
            self._fd, source.offset_of_row(first), source.bitpix, source.bscale, source.bzero
        )

    def read_rows(
        self, first: int, stop: int, out: np.ndarray, *, big_endian_ok: bool = False
    ) -> bool:
        """Fill `out` (shape (stop-first, nx), float) with the physical values of rows
        first..stop-1. With `big_endian_ok`, plain float32 values may be left in their
        file byte order (for the kernel, which swaps them as it loads them); returns
        whether they were."""
        if self._hdul is not None:
            with self._lock:
                out[...] = self._hdul[self.source.hdu].section[first:stop, :]
            return False
        source = self.source
        offset = source.offset_of_row(first)
        raw_type = raw_dtype(source.bitpix)
        if raw_type == out.dtype.newbyteorder(">") and source.bscale == 1.0 and source.bzero == 0:
            self._read_into(out.reshape(-1).view(np.uint8).data, offset)
            if big_endian_ok:
                return True
            out.byteswap(inplace=True)
            return False
        rows = max(1, CONVERT_BYTES // (raw_type.itemsize * source.shape[1]))
        for start in range(0, stop - first, rows):
            part = out[start : start + rows]
            raw = np.empty(part.shape, raw_type)
            self._read_into(raw.reshape(-1).view(np.uint8).data, offset)
            offset += raw.nbytes
            convert(raw, source.bscale, source.bzero, part)
        return False

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        if self._stream is not None:
            with self._lock:
                self._stream.seek(offset)
                got = self._stream.readinto(buffer)
            if got != len(buffer):
                raise EOFError(f"{self.source.path}: data ends early")
            return
        assert self._fd is not None
        done = 0
        while done < len(buffer):
            got = os.preadv(self._fd, [buffer[done:]], offset + done)
            if got == 0:
                raise EOFError(f"{self.source.path}: data ends early (file shrank?)")
            done += got

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._hdul is not None:
            self._hdul.close()
            self._hdul = None

    def __enter__(self) -> PlaneReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def convert(raw: np.ndarray, bscale: float, bzero: float, out: np.ndarray) -> None:
    """out = raw * bscale + bzero, in double precision, rounded to out's type once (the
    kernel's `physical`)."""
    value = raw.astype(np.float64)
    if bscale != 1.0:
        value *= bscale
    if bzero != 0.0:
        value += bzero
    with np.errstate(over="ignore"):
        out[...] = value
