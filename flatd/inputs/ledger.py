"""A compact record of the files of one directory that the index does not hold as objects.

The daemon must remember files it will never combine again — frames older than
`sequence.keep_days`, files it listed at start-up without opening them, files that are not
flats — only well enough not to read them again: has this name been seen with this size and
modification time, and what was it? A `Ledger` answers that in 16 bytes a file (a hash of
the name and a hash of size and time, in two sorted `array`s), where a `Path` and a tuple
in a dict would cost ~300. Hashes are salted per process (Python's `hash`) and live only in
memory; two names of one directory colliding in 64 bits is not a practical concern.

Recent insertions wait in a small dict and are merged into the arrays in bulk, so a
directory filling up one file at a time costs O(log n) a file, not a memmove of the arrays.
Not thread-safe: the index guards it with its own lock.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from enum import IntEnum

__all__ = ["Kind", "Ledger"]

MERGE_AT = 2048  # pending insertions merged into the sorted arrays at this size


class Kind(IntEnum):
    """What a recorded file was (two bits, kept inside the stamp)."""

    OLD = 0  # older than the horizon: listed and never read, or a flat that left memory
    SKIPPED = 1  # read: not a flat flatd combines
    REJECTED = 2  # read: should have been a flat but cannot be used


def _name_key(name: str) -> int:
    return hash(name)


def _stamp(size: int, mtime_ns: int, kind: Kind) -> int:
    return (hash((size, mtime_ns)) & ~3) | int(kind)


class Ledger:
    """name → (size and mtime, kind) for one directory's files, compactly."""

    __slots__ = ("_keys", "_pending", "_stamps")

    def __init__(self) -> None:
        self._keys = array("q")
        self._stamps = array("q")
        self._pending: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._keys) + len(self._pending)

    def kind(self, name: str, size: int, mtime_ns: int) -> Kind | None:
        """The file's kind when it is recorded with exactly this size and time, else None."""
        stamp = self._get(_name_key(name))
        if stamp is None or stamp & ~3 != _stamp(size, mtime_ns, Kind.OLD):
            return None
        return Kind(stamp & 3)

    def put(self, name: str, size: int, mtime_ns: int, kind: Kind) -> Kind | None:
        """Record a file (replacing what was recorded under its name); return the kind it
        had, if it was recorded."""
        key = _name_key(name)
        old = self._pop(key)
        self._pending[key] = _stamp(size, mtime_ns, kind)
        if len(self._pending) >= MERGE_AT:
            self._merge()
        return None if old is None else Kind(old & 3)

    def pop(self, name: str) -> Kind | None:
        """Forget a file; return the kind it had, if it was recorded."""
        old = self._pop(_name_key(name))
        return None if old is None else Kind(old & 3)

    def extend(self, files: Iterable[tuple[str, int, int, Kind]]) -> list[Kind]:
        """Record many files at once (name, size, mtime_ns, kind); return the kinds of the
        records they replaced."""
        replaced = []
        for name, size, mtime_ns, kind in files:
            key = _name_key(name)
            old = self._pending.pop(key, None)
            if old is not None:
                replaced.append(Kind(old & 3))
            self._pending[key] = _stamp(size, mtime_ns, kind)
        self._merge(replaced)
        return replaced

    def retain(self, names: Iterable[str]) -> list[Kind]:
        """Forget every file whose name is not in `names`; return the kinds forgotten."""
        self._merge()
        keep = {_name_key(n) for n in names}
        gone = [Kind(s & 3) for k, s in zip(self._keys, self._stamps, strict=True) if k not in keep]
        if gone:
            pairs = [(k, s) for k, s in zip(self._keys, self._stamps, strict=True) if k in keep]
            self._keys = array("q", (k for k, _ in pairs))
            self._stamps = array("q", (s for _, s in pairs))
        return gone

    def kinds(self) -> list[Kind]:
        """The kind of every recorded file."""
        return [Kind(s & 3) for s in (*self._stamps, *self._pending.values())]

    # -- inside ------------------------------------------------------------------------
    def _get(self, key: int) -> int | None:
        if key in self._pending:
            return self._pending[key]
        i = bisect_left(self._keys, key)
        return self._stamps[i] if i < len(self._keys) and self._keys[i] == key else None

    def _pop(self, key: int) -> int | None:
        if key in self._pending:
            return self._pending.pop(key)
        i = bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            stamp = self._stamps[i]
            del self._keys[i], self._stamps[i]
            return stamp
        return None

    def _merge(self, replaced: list[Kind] | None = None) -> None:
        if not self._pending:
            return
        merged = dict(zip(self._keys, self._stamps, strict=True))
        for key, stamp in self._pending.items():
            old = merged.get(key)
            if old is not None and replaced is not None:
                replaced.append(Kind(old & 3))
            merged[key] = stamp
        self._pending.clear()
        keys = sorted(merged)
        self._keys = array("q", keys)
        self._stamps = array("q", (merged[k] for k in keys))
