"""The quiet-period debounce on the real APScheduler (`flatd.daemon.schedule.Debouncer`): a key's
job runs once, after the last time it was armed for; keys are independent; a task runs at
its interval; shutdown waits for a running job."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from flatd.daemon.schedule import Debouncer, utcnow
from tests.daemon import wait_for


def test_arming_again_pushes_the_one_job_back() -> None:
    ran: list[tuple[str, float]] = []
    debouncer: Debouncer[str] = Debouncer(lambda key: ran.append((key, time.monotonic())))
    debouncer.start()
    try:
        armed = time.monotonic()
        for _ in range(5):  # five frames of one group, in quick succession
            debouncer.arm("r", utcnow() + timedelta(seconds=0.3))
            time.sleep(0.05)
        debouncer.arm("g", utcnow() + timedelta(seconds=0.1))
        wait_for(lambda: len(ran) == 2, timeout=5, what="both jobs")
        time.sleep(0.3)
    finally:
        debouncer.shutdown()
    assert [key for key, _ in ran] == ["g", "r"]  # g's own time; r's after its last push
    assert ran[1][1] - armed >= 0.2 + 0.3 - 0.05
    assert len(ran) == 2  # r ran once, not five times


def test_a_job_armed_while_its_previous_run_is_going_still_runs() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def job(key: str) -> None:
        runs.append(key)
        if len(runs) == 1:
            started.set()
            release.wait(5)

    debouncer: Debouncer[str] = Debouncer(job)
    debouncer.start()
    try:
        debouncer.arm("r", utcnow())
        assert started.wait(5)
        debouncer.arm("r", utcnow())  # a frame joins while the group is being combined
        wait_for(lambda: len(runs) == 2, timeout=5, what="the second run")  # not dropped
        release.set()
    finally:
        release.set()
        debouncer.shutdown()


def test_a_task_runs_at_its_interval_and_shutdown_waits_for_a_running_job() -> None:
    ticks: list[float] = []
    finished = threading.Event()

    def slow(key: str) -> None:
        time.sleep(0.3)
        finished.set()

    debouncer: Debouncer[str] = Debouncer(slow)
    debouncer.start()
    debouncer.every(0.1, lambda: ticks.append(time.monotonic()), "tick")
    wait_for(lambda: len(ticks) >= 3, timeout=5, what="three ticks")
    debouncer.arm("r", utcnow())
    time.sleep(0.1)
    debouncer.shutdown()
    assert finished.is_set()  # waited for the running job
    count = len(ticks)
    time.sleep(0.3)
    assert len(ticks) == count  # and nothing runs after it
