"""What makes a frame the same frame wherever it is found: a digest of its bytes.

A symbolic link to a frame, a hard link, a byte-identical copy (a backup copy, an archive
synced back, a night imported twice) is one input, used once; and a frame whose file was
touched (a new modification time, the same bytes) is not a new frame. So a frame is known
by its content, not by its path or its times.

The digest is SHA-256 (truncated to 128 bits) of the file's size, its first PREFIX bytes
(the header and the start of the data) and SAMPLES blocks of SAMPLE bytes spread evenly
through the rest, the last block included; a file of up to WHOLE bytes is hashed whole.
Two different exposures never share it: their headers differ (the date, at least) and so
does every block of their pixels (noise). It costs a few positional reads from the page
cache (the header was just read) and ~20 us of hashing a file, whatever its size (see
`benchmarks/run.py`'s indexing case). A second path to a file already digested (a link)
costs a stat: digests are remembered by device, inode, size and modification time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

from flatd.frames import Frame, Skip

__all__ = ["Fingerprints", "content_digest", "identified"]

PREFIX = 16 * 1024
SAMPLE = 4 * 1024
SAMPLES = 5
WHOLE = 64 * 1024
REMEMBERED = 8192  # (device, inode) -> digest entries kept for links to known files


def content_digest(path: Path) -> tuple[str, os.stat_result]:
    """The content digest of the file at `path` (links followed) and the stat it was taken
    with. Raises OSError when the file cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        stat = os.fstat(fd)
        return _digest(fd, stat.st_size), stat
    finally:
        os.close(fd)


def _digest(fd: int, size: int) -> str:
    hasher = hashlib.sha256(size.to_bytes(8, "little"))
    if size <= WHOLE:
        hasher.update(os.pread(fd, size, 0))
        return hasher.hexdigest()[:32]
    hasher.update(os.pread(fd, PREFIX, 0))
    rest = size - PREFIX - SAMPLE
    for i in range(1, SAMPLES + 1):
        hasher.update(os.pread(fd, SAMPLE, PREFIX + rest * i // SAMPLES))
    return hasher.hexdigest()[:32]


class Fingerprints:
    """Content digests, remembered by (device, inode) with the size and time they were
    taken at, so that a second path to the same file is not read again. Thread-safe."""

    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._remembered = remembered
        self._known: OrderedDict[tuple[int, int], tuple[int, int, str]] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, path: Path) -> str:
        """The digest of `path`; "" when it cannot be read (gone since its header was)."""
        try:
            stat = os.stat(path)
        except OSError:
            return ""
        inode, stamp = (stat.st_dev, stat.st_ino), (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._known.get(inode)
            if known is not None and known[:2] == stamp:
                self._known.move_to_end(inode)
                return known[2]
        try:
            digest, stat = content_digest(path)
        except OSError:
            return ""
        with self._lock:
            self._known[(stat.st_dev, stat.st_ino)] = (stat.st_size, stat.st_mtime_ns, digest)
            while len(self._known) > self._remembered:
                self._known.popitem(last=False)
        return digest

    def identified(self, item: Frame | Skip) -> Frame | Skip:
        """A frame with its content digest (a skipped file as it is)."""
        if not isinstance(item, Frame) or item.content:
            return item
        return dataclasses.replace(item, content=self.of(item.path))


_SHARED = Fingerprints()


def identified(item: Frame | Skip) -> Frame | Skip:
    """`item` with its content digest, from the process-wide `Fingerprints`."""
    return _SHARED.identified(item)
