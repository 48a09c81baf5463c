"""The memory ledger: every buffer of a combination counted against `combine.mem_limit_mb`;
and the one process-wide allocator setting the engine relies on, made at process start."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading

MB = 1_000_000  # mem_limit_mb counts like ccdproc's mem_limit=350e6
MAX_THREADS = 2  # engine threads at most (each holds its own buffers within the limit)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 32 * MB  # buffers this large are unmapped when freed; smaller ones reused


class Ledger:
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


@functools.cache
def tune_allocator() -> None:
    """Make glibc return every large freed buffer to the system at once; call once at
    process start (`flatd run`, `flatd combine`), before any thread allocates.

    By default glibc raises its mmap threshold after large frees, so later buffers of
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
