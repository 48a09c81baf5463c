"""The quiet-period debounce on APScheduler 3: one date job per group, pushed back by
every frame that joins it.

Set up around APScheduler's traps (PITFALLS.md): `add_job(..., replace_existing=True)`
rather than `reschedule_job` (a date job leaves the store while it is being submitted);
`misfire_grace_time=None` (a job that waits for a worker is never dropped);
`max_instances=2` (a job that fires while the group's previous run is still going must
not be skipped and deleted — the job itself serialises per group and finds no work
when there is none); UTC throughout.

`Timer` is what the combination jobs need of it (`jobs`): a unit test of their timing
logic passes a fake one, driven by a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

Key = TypeVar("Key", bound=Hashable)
KeyIn = TypeVar("KeyIn", bound=Hashable, contravariant=True)
Clock = Callable[[], datetime]


class Timer(Protocol[KeyIn]):
    """Runs a job per key at the time it was last armed for, and tasks at an interval."""

    def start(self) -> None: ...

    def arm(self, key: KeyIn, at: datetime) -> None: ...

    def every(self, seconds: float, task: Callable[[], None], name: str) -> None: ...

    def shutdown(self) -> None: ...


class Debouncer(Generic[Key]):
    """Runs `job(key)` once no `arm(key, ...)` has pushed it back past its time."""

    def __init__(self, job: Callable[[Key], None], workers: int = 4) -> None:
        self._job = job
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 2},
        )

    def start(self) -> None:
        self._scheduler.start()

    def arm(self, key: Key, at: datetime) -> None:
        """(Re)set `key`'s one job to run at `at`."""
        self._scheduler.add_job(
            self._job, "date", run_date=at, args=[key], id=_job_id(key), replace_existing=True
        )

    def every(self, seconds: float, task: Callable[[], None], name: str) -> None:
        """Run `task` every `seconds` (a run still going when the next is due is not
        doubled: that one is skipped)."""
        self._scheduler.add_job(
            task,
            "interval",
            seconds=seconds,
            id=f"every:{name}",
            replace_existing=True,
            max_instances=1,
        )

    def shutdown(self) -> None:
        """Wait for running jobs; pending ones are dropped (start-up rescans find them)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)


def _job_id(key: Hashable) -> str:
    return f"combine:{key!r}"


def utcnow() -> datetime:
    return datetime.now(UTC)
