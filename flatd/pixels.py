"""Rows of a frame's image, read straight into the engine's buffers.

A plain FITS file is read with positional reads (`os.preadv`) at the data offset that
`frames` found in the header: no astropy open, no memory map whose pages would count
against the process, safe from several threads on one descriptor, and each file is
opened once per combination. Gzip files are decompressed as a forward stream (bands
must then be read in order); tile-compressed files go through astropy's
`CompImageHDU.section`, which decompresses only the tiles a band needs. Plain big-endian
float32 data can be left in its file byte order, or not read here at all: `raw_source`
gives the compiled kernel the descriptor and offset to read it itself.
"""

from __future__ import annotations

import gzip
import os
import threading
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from flatd.frames import Frame

if TYPE_CHECKING:
    from astropy.io import fits

_RAW_TYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def raw_dtype(bitpix: int) -> np.dtype:
    """The on-disk (big-endian) dtype of FITS `bitpix`."""
    return np.dtype(_RAW_TYPES[bitpix])


class FramePixels:
    """An open frame whose rows can be read into float arrays; use as a context manager."""

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._stream: gzip.GzipFile | None = None
        self._hdul: fits.HDUList | None = None
        if frame.compression == "none":
            self._fd = os.open(frame.path, os.O_RDONLY)
        elif frame.compression == "gzip":
            self._stream = gzip.GzipFile(frame.path, "rb")
        else:
            from astropy.io import fits

            self._hdul = fits.open(frame.path, memmap=False, lazy_load_hdus=True)

    @property
    def ordered_reads_only(self) -> bool:
        """True when reading bands out of order would be slow (a gzip stream)."""
        return self._stream is not None

    def raw_bytes_per_row(self) -> int:
        """Scratch bytes one row needs on its way to float (0 when read in place)."""
        return self.frame.shape[1] * raw_dtype(self.frame.bitpix).itemsize

    def raw_source(self, first: int) -> tuple[int, int] | None:
        """(file descriptor, byte offset of row `first`) when the rows are stored as
        plain big-endian float32, which the kernel reads itself; else None."""
        frame = self.frame
        if self._fd is None or frame.bitpix != -32 or frame.bscale != 1.0 or frame.bzero != 0.0:
            return None
        return self._fd, frame.data_offset + first * frame.shape[1] * 4

    def read_rows(
        self, first: int, stop: int, out: np.ndarray, *, big_endian_ok: bool = False
    ) -> bool:
        """Fill `out` (shape (stop-first, nx), float) with the physical values of rows
        first..stop-1 (BSCALE and BZERO applied). With `big_endian_ok`, values stored
        as big-endian floats of out's size may be left in their file byte order (for
        the kernel, which swaps them as it loads them); returns whether they were."""
        if self._hdul is not None:
            with self._lock:
                out[...] = self._hdul[self.frame.hdu].section[first:stop, :]
            return False
        raw_type = raw_dtype(self.frame.bitpix)
        offset = self.frame.data_offset + first * self.frame.shape[1] * raw_type.itemsize
        if raw_type.kind == "f" and raw_type.itemsize == out.itemsize and out.flags.c_contiguous:
            self._read_into(memoryview(out.reshape(-1).view(np.uint8)), offset)
            plain = self.frame.bscale == 1.0 and self.frame.bzero == 0.0
            if big_endian_ok and plain:
                return True
            out.byteswap(inplace=True)
        else:
            raw = np.empty(out.shape, raw_type)
            self._read_into(memoryview(raw.reshape(-1).view(np.uint8)), offset)
            np.copyto(out, raw, casting="unsafe")
        if self.frame.bscale != 1.0:
            out *= self.frame.bscale
        if self.frame.bzero != 0.0:
            out += self.frame.bzero
        return False

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        if self._stream is not None:
            with self._lock:
                self._stream.seek(offset)
                got = self._stream.readinto(buffer)
            if got != len(buffer):
                raise EOFError(f"{self.frame.path}: data ends early")
            return
        assert self._fd is not None
        done = 0
        while done < len(buffer):
            got = os.preadv(self._fd, [buffer[done:]], offset + done)
            if got == 0:
                raise EOFError(f"{self.frame.path}: data ends early (file shrank?)")
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

    def __enter__(self) -> FramePixels:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
