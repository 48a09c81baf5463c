"""When a failed combination is tried again: once, soon; after that only when its frames change.

A combination fails for a passing reason (the disk was full for a minute) or for one that
comes back every time on the same frames (a master name another group owns, a bug). The
first failure on a set of inputs is retried once, after `first_delay`. A second failure
*the same way* (`failure_kind`) on the *same inputs* gives up: the sequence is `failed`
with its reason and is not tried again until its inputs change (a frame joins, leaves or
is rewritten) or flatd restarts. Failing a different way each time is bounded as well: at
most MAX_ATTEMPTS on the same inputs, the delay doubling between them. A failure known to
repeat (`certain`) gives up at once.

Bookkeeping only (no clock, no scheduling; safe to call from any thread): the caller
(`groups`) says what happened and schedules the retry it is told to.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

MAX_ATTEMPTS = 3
_EXCEPTION_PREFIX = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Warning)):")
_ERRNO = re.compile(r"\[Errno (\d+)\]")
_NUMBER = re.compile(r"\d+")


def failure_kind(reason: str) -> str:
    """What makes two failures the same: the exception type and errno a reason starts
    with (`OSError 28`); for any other reason, its text with the numbers left out (a disk
    that fills further changes the bytes requested, not the failure)."""
    match = _EXCEPTION_PREFIX.match(reason)
    if match is None:
        return _NUMBER.sub("#", reason)
    errno = _ERRNO.search(reason)
    return match.group(1) + (f" {errno.group(1)}" if errno else "")


@dataclass(frozen=True)
class Verdict:
    """What to do after a failure: retry after `retry_seconds`, or (None) give up."""

    attempts: int
    retry_seconds: float | None

    @property
    def given_up(self) -> bool:
        return self.retry_seconds is None


@dataclass
class _Failure:
    owner: Hashable  # the group the sequence belongs to
    inputs: frozenset
    kind: str
    reason: str
    attempts: int
    retry_seconds: float | None  # None: given up


class Failures:
    """The failures of sequences (by `key`, e.g. their master's path) on given inputs."""

    def __init__(self, first_delay: float, max_delay: float) -> None:
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._failures: dict[Hashable, _Failure] = {}
        self._lock = threading.Lock()

    def record(
        self,
        key: Hashable,
        owner: Hashable,
        inputs: frozenset,
        reason: str,
        *,
        certain: bool = False,
    ) -> Verdict:
        """A combination of `inputs` under `key` failed with `reason`: retry or give up."""
        kind = failure_kind(reason)
        with self._lock:
            previous = self._failures.get(key)
            attempts, same_way = 1, False
            if previous is not None and previous.inputs == inputs:
                attempts, same_way = previous.attempts + 1, previous.kind == kind
            delay: float | None = None
            if not (certain or same_way or attempts >= MAX_ATTEMPTS):
                delay = min(self._first_delay * 2 ** (attempts - 1), self._max_delay)
            self._failures[key] = _Failure(owner, inputs, kind, reason, attempts, delay)
        return Verdict(attempts, delay)

    def given_up(self, key: Hashable, inputs: frozenset) -> str | None:
        """The reason `key` gave up on exactly these `inputs`, or None (try it)."""
        with self._lock:
            failure = self._failures.get(key)
        if failure is None or failure.retry_seconds is not None or failure.inputs != inputs:
            return None
        return failure.reason

    def retry_seconds(self, key: Hashable) -> float | None:
        """The delay before `key`'s retry (None: none pending)."""
        with self._lock:
            failure = self._failures.get(key)
        return failure.retry_seconds if failure is not None else None

    def succeeded(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def keep_only(self, owner: Hashable, keys: Iterable[Hashable]) -> None:
        """Forget `owner`'s failures under any key but `keys` (its sequences now): a
        sequence whose start moved or that merged into another has a new key."""
        current = set(keys)
        with self._lock:
            for key in [k for k, f in self._failures.items() if f.owner == owner]:
                if key not in current:
                    del self._failures[key]
