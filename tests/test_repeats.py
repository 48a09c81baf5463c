"""A repeating failure is logged once, again when it fails another way, and when it ends,
with how many times it happened (`flatd.daemon.repeats`)."""

from __future__ import annotations

from structlog.testing import capture_logs

from flatd.daemon.repeats import RepeatedFailure

FULL = "OSError: [Errno 28] No space left on device: '/var/lib/flatd/.status.json.{}.tmp'"
READ_ONLY = "OSError: [Errno 30] Read-only file system: '/var/lib/flatd/.status.json.tmp'"


def test_the_same_failure_is_logged_once_and_its_end_with_the_count() -> None:
    failures = RepeatedFailure("status_write", path="/var/lib/flatd/status.json")
    with capture_logs() as events:
        logged = [failures.failed(FULL.format(n)) for n in range(22)]
        assert failures.failing
        assert failures.succeeded()
        assert not failures.succeeded()
    assert logged == [True] + [False] * 21
    assert [e["event"] for e in events] == ["status_write_failed", "status_write_recovered"]
    assert events[0]["reason"] == FULL.format(0)
    assert events[0]["path"] == "/var/lib/flatd/status.json"
    assert events[0]["log_level"] == "error"
    assert events[1]["failures"] == 22
    assert events[1]["last_reason"] == FULL.format(0)
    assert not failures.failing


def test_failing_another_way_is_logged_with_the_count_of_the_way_before() -> None:
    failures = RepeatedFailure("page_write", level="warning")
    with capture_logs() as events:
        for n in range(3):
            failures.failed(FULL.format(n))
        failures.failed(READ_ONLY)
        failures.failed(READ_ONLY)
        failures.succeeded()
    assert [e["event"] for e in events] == ["page_write_failed"] * 2 + ["page_write_recovered"]
    assert "previous_reason" not in events[0]
    assert events[1]["reason"] == READ_ONLY
    assert events[1]["previous_failures"] == 3
    assert events[1]["previous_reason"] == FULL.format(0)
    assert events[1]["log_level"] == "warning"
    assert events[2]["failures"] == 5


def test_after_a_recovery_a_new_failure_is_logged_again() -> None:
    failures = RepeatedFailure("metrics_write")
    with capture_logs() as events:
        failures.failed(FULL.format(1))
        failures.succeeded()
        failures.failed(FULL.format(2))
    assert [e["event"] for e in events] == [
        "metrics_write_failed",
        "metrics_write_recovered",
        "metrics_write_failed",
    ]
    assert "previous_failures" not in events[2]
