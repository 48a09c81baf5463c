"""The compiled kernel (`_kernel.c`) for the engine's default recipe, through ctypes.

The C file is built at install as an optional extension: without a compiler the install
still succeeds and `available()` is False, and the engine does everything with numpy.
`FLATD_ENGINE=numpy` in the environment turns the kernel off (to compare the two).
ctypes releases the GIL for each call, so the engine's two threads run it at once.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from collections.abc import Sequence

import numpy as np

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
TILE = 64  # as in _kernel.c


@functools.cache
def _library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("flatd._kernel")
    if spec is None or spec.origin is None:
        return None
    try:
        return _declare(ctypes.CDLL(spec.origin))
    except (OSError, AttributeError):  # not loadable, or built from an older _kernel.c
        return None


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    library.flatd_combine_band.restype = ctypes.c_int
    library.flatd_combine_band.argtypes = [
        _PTR,
        _I64,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _I64,
        _I64,
        _I64,
        ctypes.c_int,
        ctypes.c_float,
        ctypes.c_float,
        _PTR,
        _I64,
        _PTR,
        _I64,
        _I64,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
    ]
    library.flatd_tally.restype = _I64
    library.flatd_tally.argtypes = [
        _PTR,
        _I64,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_float,
        ctypes.c_float,
        ctypes.c_float,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
    ]
    library.flatd_tally_file.restype = _I64
    library.flatd_tally_file.argtypes = [
        ctypes.c_int,
        _I64,
        _I64,
        _PTR,
        ctypes.c_int,
        ctypes.c_float,
        ctypes.c_float,
        ctypes.c_float,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _I64,
        _PTR,
        _I64,
    ]
    return library


def built() -> bool:
    """Whether the compiled kernel was built and loads."""
    return _library() is not None


def available() -> bool:
    """Whether the compiled kernel is built and enabled."""
    return os.environ.get("FLATD_ENGINE", "") != "numpy" and built()


def _address(array: np.ndarray) -> int:
    return array.ctypes.data


READ_EOF = -1  # as in _kernel.c


def _read_failure(code: int, path: str) -> OSError | EOFError:
    if code == READ_EOF:
        return EOFError(f"{path}: data ends early (file shrank?)")
    return OSError(code, os.strerror(code), path)


class BandKernel:
    """What one engine worker needs to combine bands with the kernel: the fixed inputs
    (scales, sorting network, structure grid) and its own scratch memory."""

    def __init__(
        self,
        paths: Sequence[str],
        scales: Sequence[float],
        pairs: Sequence[tuple[int, int]],
        col_edges: Sequence[int],
        grid_rows: int,
        clip: bool,
        sigma_low: float,
        sigma_high: float,
    ) -> None:
        self.paths = list(paths)
        self.n = len(scales)
        self.scales = np.asarray(scales, np.float32)
        self.pairs = np.asarray(pairs, np.int32).reshape(-1)
        self.col_edges = np.asarray(col_edges, np.int64)
        self.grid_rows = grid_rows
        self.grid_cols = len(col_edges) - 1
        self.clip = clip
        self.sigma_low, self.sigma_high = sigma_low, sigma_high
        self.scratch = np.empty(4 * self.n * TILE, np.float32)
        self.clipped = np.zeros(self.n, np.int64)
        self.offset_blocks = np.zeros((self.n, grid_rows, self.grid_cols))
        self.center_blocks = np.zeros((grid_rows, self.grid_cols))

    def combine_band(
        self,
        stack: np.ndarray,
        sources: Sequence[tuple[int, int] | None],
        swapped: np.ndarray,
        row_block: np.ndarray,
        data: np.ndarray,
        uncertainty: np.ndarray,
        empty: np.ndarray,
    ) -> bool:
        """Combine `stack` (n, rows, nx; float32, C order; plane k big-endian where
        `swapped[k]`) into data/uncertainty/empty (rows, nx; C-contiguous). A plane whose
        source is (file descriptor, offset) is first read from there, as big-endian
        float32 (set its `swapped`). On True, the band's clipped counts and block sums are
        in this object's `clipped`, `offset_blocks` and `center_blocks` (reset first);
        False means a value is not finite: the planes are read but the outputs are not
        usable. A failed read raises OSError (EOFError for a file that ends early)."""
        library = _library()
        assert library is not None
        n, rows, nx = stack.shape
        assert n == self.n and stack.dtype == np.float32 and stack.strides[1:] == (nx * 4, 4)
        for array in (data, uncertainty, empty):
            assert array.flags.c_contiguous and array.shape == (rows, nx)
        self.clipped[:] = 0
        self.offset_blocks[:] = 0.0
        self.center_blocks[:] = 0.0
        swapped = np.ascontiguousarray(swapped, np.uint8)
        row_block = np.ascontiguousarray(row_block, np.int32)
        fds = np.array([-1 if s is None else s[0] for s in sources], np.int32)
        offsets = np.array([0 if s is None else s[1] for s in sources], np.int64)
        read_error = np.zeros(2, np.intc)
        code = library.flatd_combine_band(
            _address(stack),
            stack.strides[0] // 4,
            _address(fds),
            _address(offsets),
            _address(read_error),
            _address(swapped),
            _address(self.scales),
            n,
            rows,
            nx,
            int(self.clip),
            self.sigma_low,
            self.sigma_high,
            _address(self.pairs),
            self.pairs.size // 2,
            _address(self.col_edges),
            self.grid_rows,
            self.grid_cols,
            _address(row_block),
            _address(self.scratch),
            _address(data),
            _address(uncertainty),
            _address(empty.view(np.uint8)),
            _address(self.clipped),
            _address(self.offset_blocks),
            _address(self.center_blocks),
        )
        if code == 2:
            raise _read_failure(int(read_error[0]), self.paths[int(read_error[1])])
        return code == 0


class TallyResult(ctypes.Structure):
    """Running totals of `tally`."""

    _fields_ = [
        ("sum", ctypes.c_double),
        ("finite", ctypes.c_int64),
        ("below", ctypes.c_int64),
        ("saturated", ctypes.c_int64),
    ]


def _totals_addresses(totals: TallyResult) -> list[int]:
    base = ctypes.addressof(totals)
    return [
        base + getattr(TallyResult, name).offset for name in ("sum", "finite", "below", "saturated")
    ]


def tally_file(
    fd: int,
    offset: int,
    count: int,
    path: str,
    bracket: tuple[float, float] | None,
    saturation: float,
    totals: TallyResult,
    buffer: np.ndarray,
    inside: np.ndarray,
) -> np.ndarray | None:
    """`tally` over `count` big-endian float32 values read from `fd` at `offset`, in
    pieces of buffer.size, in one call. Returns the values within `bracket` (a view of
    `inside`), or None when more than inside.size - buffer.size of them would be."""
    library = _library()
    assert library is not None
    low, high = bracket if bracket is not None else (0.0, 0.0)
    read_error = ctypes.c_int(0)
    got = library.flatd_tally_file(
        fd,
        offset,
        count,
        ctypes.addressof(read_error),
        int(bracket is not None),
        low,
        high,
        saturation,
        *_totals_addresses(totals),
        _address(buffer),
        buffer.size,
        _address(inside),
        inside.size,
    )
    if got == -2:
        raise _read_failure(read_error.value, path)
    return None if got == -1 else inside[:got]


def tally(
    values: np.ndarray,
    swapped: bool,
    bracket: tuple[float, float] | None,
    saturation: float,
    totals: TallyResult,
    inside: np.ndarray,
) -> np.ndarray:
    """Add the chunk `values` (1-D float32, big-endian bytes when `swapped`) to `totals`
    and return its values within `bracket` (a view of `inside`, which holds at least
    values.size floats)."""
    library = _library()
    assert library is not None
    assert values.dtype.itemsize == 4 and values.flags.c_contiguous
    low, high = bracket if bracket is not None else (0.0, 0.0)
    count = library.flatd_tally(
        _address(values),
        values.size,
        int(swapped),
        int(bracket is not None),
        low,
        high,
        saturation,
        *_totals_addresses(totals),
        _address(inside),
    )
    return inside[:count]
