"""The binding of the compiled kernel (`_kernel.c`): one `ctypes.Structure` per call, an
ABI check at load, and which engine runs and why.

The C file is built at install as an optional extension module, `flatd.engine._kernel`
(importable, so its file name says what it is); its functions are called through ctypes,
which releases the GIL for each call, so the engine's two threads run it at once. Without
a compiler the install still succeeds and the engine does everything with numpy.

A library is used only when it reports the ABI version and struct sizes this file was
written for: a stale build is refused with one warning, never called with the wrong
arguments. `FLATD_ENGINE=numpy` in the environment turns the kernel off (to compare).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import structlog

log = structlog.get_logger("flatd.engine")

ABI_VERSION = 2  # as FLATD_KERNEL_ABI in _kernel.c
TILE = 64  # as in _kernel.c
READ_EOF = -1  # as in _kernel.c
BAND_READ_FAILED = 2
TALLY_FULL, TALLY_READ_FAILED = -1, -2
RAW_SCRATCH_BYTES = 1 << 20  # conversion buffer for stored values other than float32
NO_SATURATION = float("inf")

_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_F32 = ctypes.c_float
_F64 = ctypes.c_double
_PTR = ctypes.c_void_p


class Source(ctypes.Structure):
    """flatd_source: where one image plane's stored values are."""

    _fields_ = [("fd", _I64), ("offset", _I64), ("bitpix", _I64), ("bscale", _F64), ("bzero", _F64)]


class Plane(ctypes.Structure):
    """flatd_plane: one frame's plane of a band."""

    _fields_ = [("source", Source), ("big_endian", _I32), ("scale", _F32), ("saturation", _F32)]


class Band(ctypes.Structure):
    """flatd_band: everything one band's call reads and writes."""

    _fields_ = [
        ("stack", _PTR),
        ("plane_stride", _I64),
        ("n", _I64),
        ("rows", _I64),
        ("nx", _I64),
        ("planes", _PTR),
        ("clip", _I32),
        ("sigma_low", _F32),
        ("sigma_high", _F32),
        ("pairs", _PTR),
        ("npairs", _I64),
        ("scratch", _PTR),
        ("scratch_floats", _I64),
        ("raw", _PTR),
        ("raw_bytes", _I64),
        ("data", _PTR),
        ("uncert", _PTR),
        ("empty", _PTR),
        ("clipped", _PTR),
        ("error", _I32),
        ("error_plane", _I32),
    ]


class Tally(ctypes.Structure):
    """flatd_tally: a streaming tally of a frame's values (levels.Tally)."""

    _fields_ = [
        ("bracket", _I32),
        ("low", _F32),
        ("high", _F32),
        ("saturation", _F32),
        ("sum", _F64),
        ("finite", _I64),
        ("below", _I64),
        ("saturated", _I64),
        ("inside", _PTR),
        ("capacity", _I64),
        ("count", _I64),
        ("error", _I32),
    ]


STRUCTS = (Source, Plane, Band, Tally)  # in flatd_struct_size's order


@dataclass(frozen=True)
class EngineChoice:
    """Which engine combines, and why."""

    engine: Literal["compiled", "numpy"]
    reason: str


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str]:
    """The checked library, or None and why not."""
    try:
        module = importlib.import_module("flatd.engine._kernel")
    except ImportError as exc:
        return None, f"not built ({exc})"
    path = getattr(module, "__file__", None)
    if path is None:
        return None, "not built (no library file)"
    library, reason = load_library(path)
    if library is None:
        log.warning("kernel_refused", path=path, reason=reason, engine="numpy")
    return library, reason


def load_library(path: str) -> tuple[ctypes.CDLL | None, str]:
    """Load the kernel at `path` if it is the ABI this binding speaks; else None and why."""
    try:
        library = ctypes.CDLL(path)
        library.flatd_abi_version.restype = _I64
        library.flatd_abi_version.argtypes = []
        version = int(library.flatd_abi_version())
    except (OSError, AttributeError) as exc:
        return None, f"ABI mismatch: {path} reports no ABI version ({exc})"
    if version != ABI_VERSION:
        return None, f"ABI mismatch: library version {version}, flatd expects {ABI_VERSION}"
    library.flatd_struct_size.restype = _I64
    library.flatd_struct_size.argtypes = [_I64]
    for which, struct in enumerate(STRUCTS):
        size = int(library.flatd_struct_size(which))
        if size != ctypes.sizeof(struct):
            return None, (
                f"ABI mismatch: {struct.__name__} is {size} bytes in the library, "
                f"{ctypes.sizeof(struct)} in flatd"
            )
    try:
        return _declare(library), "built"
    except AttributeError as exc:  # a function of this ABI is missing
        return None, f"ABI mismatch: {exc}"


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    library.flatd_combine_band.restype = ctypes.c_int
    library.flatd_combine_band.argtypes = [ctypes.POINTER(Band)]
    library.flatd_tally_values.restype = _I64
    library.flatd_tally_values.argtypes = [ctypes.POINTER(Tally), _PTR, _I64, _I32]
    library.flatd_tally_source.restype = _I64
    library.flatd_tally_source.argtypes = [
        ctypes.POINTER(Tally),
        ctypes.POINTER(Source),
        _I64,
        _PTR,
        _I64,
        _PTR,
        _I64,
    ]
    library.flatd_count_positive.restype = _I64
    library.flatd_count_positive.argtypes = [_PTR, _I64]
    library.flatd_normalise.restype = _I64
    library.flatd_normalise.argtypes = [_PTR, _PTR, _PTR, _I64, _F32, _F32]
    return library


def _library() -> ctypes.CDLL:
    library = _loaded()[0]
    assert library is not None, "the kernel is called only when available()"
    return library


def built() -> bool:
    """Whether the compiled kernel was built, loads and speaks this ABI."""
    return _loaded()[0] is not None


def choice() -> EngineChoice:
    """The engine this process combines with, and why."""
    if os.environ.get("FLATD_ENGINE", "") == "numpy":
        return EngineChoice("numpy", "FLATD_ENGINE=numpy")
    library, reason = _loaded()
    return (
        EngineChoice("compiled", "built") if library is not None else EngineChoice("numpy", reason)
    )


def build_note() -> str:
    """One line for whoever installed flatd: whether the kernel was built (the install
    itself cannot say: pip hides the output of a skipped optional extension)."""
    library, reason = _loaded()
    if library is not None:
        return "flatd: compiled kernel built"
    return (
        f"flatd: compiled kernel NOT built ({reason}): the engine runs on numpy, with the "
        "same masters, about four times slower; install a C compiler and the Python "
        "headers (e.g. apt install gcc python3-dev) and reinstall (make clean test)"
    )


def available() -> bool:
    """Whether the compiled kernel is built and enabled."""
    return choice().engine == "compiled"


def log_choice() -> EngineChoice:
    """Log the engine in use once (daemon start, `flatd combine`): a warning when the
    kernel is there but refused."""
    chosen = choice()
    event = log.warning if chosen.reason.startswith("ABI mismatch") else log.info
    event("engine_selected", engine=chosen.engine, reason=chosen.reason)
    return chosen


def _address(array: np.ndarray) -> int:
    return int(array.ctypes.data)


def read_failure(code: int, path: str) -> OSError | EOFError:
    """The exception for the kernel's read error `code` on `path`."""
    if code == READ_EOF:
        return EOFError(f"{path}: data ends early (file shrank?)")
    return OSError(code, os.strerror(code), path)


def source(fd: int, offset: int, bitpix: int, bscale: float, bzero: float) -> Source:
    return Source(fd, offset, bitpix, bscale, bzero)


def worker_bytes(n: int) -> int:
    """What a `BandKernel` for n frames holds besides the band itself."""
    return RAW_SCRATCH_BYTES + (3 * n + 2) * TILE * 4


class BandKernel:
    """What one engine worker needs to combine bands with the kernel: the fixed inputs
    (scales, saturation levels, sorting network) and its own scratch memory."""

    def __init__(
        self,
        paths: Sequence[str],
        scales: Sequence[float] | np.ndarray,
        saturations: Sequence[float] | np.ndarray,
        pairs: Sequence[tuple[int, int]],
        clip: bool,
        sigma_low: float,
        sigma_high: float,
    ) -> None:
        self.paths = list(paths)
        self.n = len(scales)
        self.scales = [float(s) for s in scales]
        self.saturations = [float(s) if s > 0 else NO_SATURATION for s in saturations]
        self.pairs = np.ascontiguousarray(np.asarray(pairs, np.int32).reshape(-1))
        self.scratch = np.empty((3 * self.n + 2) * TILE, np.float32)
        self.raw = np.empty(RAW_SCRATCH_BYTES, np.uint8)
        self.clipped = np.zeros(self.n, np.int64)
        self.planes = (Plane * self.n)()
        self.band = Band(
            n=self.n,
            clip=int(clip),
            sigma_low=sigma_low,
            sigma_high=sigma_high,
            pairs=_address(self.pairs),
            npairs=self.pairs.size // 2,
            scratch=_address(self.scratch),
            scratch_floats=self.scratch.size,
            raw=_address(self.raw),
            raw_bytes=self.raw.size,
            clipped=_address(self.clipped),
            planes=ctypes.addressof(self.planes),
        )

    def combine_band(
        self,
        stack: np.ndarray,
        sources: Sequence[Source | None],
        big_endian: np.ndarray,
        data: np.ndarray,
        uncertainty: np.ndarray,
        empty: np.ndarray,
    ) -> None:
        """Combine `stack` (n, rows, nx; float32, C order; plane k big-endian bytes where
        `big_endian[k]`) into data/uncertainty/empty (rows, nx; C-contiguous). A plane
        with a source (file and offset of the band's first value) is read from there
        instead. The band's clipped counts are in `clipped` (reset first). A failed read
        raises OSError (EOFError for a file that ends early)."""
        n, rows, nx = stack.shape
        assert n == self.n and stack.dtype == np.float32 and stack.strides[1:] == (nx * 4, 4)
        for array in (data, uncertainty, empty):
            assert array.flags.c_contiguous and array.shape == (rows, nx)
        assert data.dtype == uncertainty.dtype == np.float32 and empty.dtype == np.bool_
        self.clipped[:] = 0
        for k, plane in enumerate(self.planes):
            plane.source = sources[k] or Source(fd=-1)
            plane.big_endian = int(big_endian[k])
            plane.scale = self.scales[k]
            plane.saturation = self.saturations[k]
        band = self.band
        band.stack, band.plane_stride = _address(stack), stack.strides[0] // 4
        band.rows, band.nx = rows, nx
        band.data, band.uncert = _address(data), _address(uncertainty)
        band.empty = _address(empty.view(np.uint8))
        code = _library().flatd_combine_band(ctypes.byref(band))
        if code == BAND_READ_FAILED:
            raise read_failure(band.error, self.paths[band.error_plane])
        if code != 0:
            raise OSError(code, f"compiled kernel refused the band: {os.strerror(code)}")


def new_tally(bracket: tuple[float, float] | None, saturation: float) -> Tally:
    low, high = bracket if bracket is not None else (0.0, 0.0)
    return Tally(bracket=int(bracket is not None), low=low, high=high, saturation=saturation)


def tally_values(tally: Tally, values: np.ndarray, big_endian: bool, inside: np.ndarray) -> int:
    """Add the chunk `values` (1-D float32, big-endian bytes when `big_endian`) to
    `tally`, its values within the bracket written to `inside` (room for values.size);
    returns how many."""
    assert values.dtype.itemsize == 4 and values.flags.c_contiguous
    tally.inside, tally.capacity, tally.count = _address(inside), inside.size, 0
    code = _library().flatd_tally_values(
        ctypes.byref(tally), _address(values), values.size, int(big_endian)
    )
    assert code == 0, "inside holds at least values.size floats"
    return int(tally.count)


def tally_source(
    tally: Tally, where: Source, count: int, path: str, buffer: np.ndarray, inside: np.ndarray
) -> int | None:
    """Add `count` values read from `where` to `tally` in one call (through `buffer`),
    the values within the bracket written to `inside`. Returns how many, or None when
    more than inside.size would be (nothing usable was added)."""
    raw = np.empty(RAW_SCRATCH_BYTES, np.uint8)
    tally.inside, tally.capacity, tally.count = _address(inside), inside.size, 0
    code = _library().flatd_tally_source(
        ctypes.byref(tally),
        ctypes.byref(where),
        count,
        _address(buffer),
        buffer.size,
        _address(raw),
        raw.size,
    )
    if code == TALLY_READ_FAILED:
        raise read_failure(tally.error, path)
    return None if code == TALLY_FULL else int(tally.count)


def count_positive(values: np.ndarray) -> int:
    """How many of `values` (1-D float32, C order) are positive."""
    assert values.dtype == np.float32 and values.flags.c_contiguous
    return int(_library().flatd_count_positive(_address(values), values.size))


def normalise(
    data: np.ndarray, uncertainty: np.ndarray, mask: np.ndarray, level: float, min_response: float
) -> int:
    """normalise.normalise_plane's arithmetic on float32 planes, in place (data and
    uncertainty left big-endian in native-typed arrays); returns how many are masked."""
    for array in (data, uncertainty, mask):
        assert array.flags.c_contiguous and array.shape == data.shape
    assert data.dtype == uncertainty.dtype == np.float32 and mask.dtype == np.bool_
    return int(
        _library().flatd_normalise(
            _address(data),
            _address(uncertainty),
            _address(mask.view(np.uint8)),
            data.size,
            level,
            min_response,
        )
    )
