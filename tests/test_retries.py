"""When a failed combination is tried again (`flatd.daemon.retries`): the rule on its own."""

from __future__ import annotations

import pytest

from flatd.daemon.retries import MAX_ATTEMPTS, Failures, failure_kind

INPUTS = frozenset({"digest-a", "digest-b"})
DISK_FULL = "OSError: Not enough space on disk: requested 2880, available 1234"


def test_the_same_failure_twice_on_the_same_inputs_gives_up() -> None:
    failures = Failures(first_delay=30.0, max_delay=1800.0)
    first = failures.record("m.fits", "g", INPUTS, DISK_FULL)
    assert (first.attempts, first.retry_seconds) == (1, 30.0)
    assert failures.given_up("m.fits", INPUTS) is None
    again = failures.record("m.fits", "g", INPUTS, DISK_FULL.replace("1234", "99"))
    assert again.given_up and again.attempts == 2
    assert failures.given_up("m.fits", INPUTS) == DISK_FULL.replace("1234", "99")
    # other inputs (a frame joined): a fresh start
    joined = INPUTS | {"digest-c"}
    assert failures.given_up("m.fits", joined) is None
    assert failures.record("m.fits", "g", joined, DISK_FULL).retry_seconds == 30.0


def test_failing_differently_is_retried_but_bounded() -> None:
    failures = Failures(first_delay=1.0, max_delay=1800.0)
    reasons = ["OSError: [Errno 28] No space", "MemoryError: too big", "ValueError: odd"]
    verdicts = [failures.record("m", "g", INPUTS, r) for r in reasons]
    assert [v.retry_seconds for v in verdicts] == [1.0, 2.0, None]
    assert verdicts[-1].attempts == MAX_ATTEMPTS


def test_a_certain_failure_gives_up_at_once_and_success_forgets() -> None:
    failures = Failures(first_delay=30.0, max_delay=1800.0)
    assert failures.record("m", "g", INPUTS, "name taken", certain=True).given_up
    failures.succeeded("m")
    assert failures.given_up("m", INPUTS) is None
    failures.record("m", "g", INPUTS, "name taken", certain=True)
    failures.record("n", "other", INPUTS, "name taken", certain=True)
    failures.keep_only("g", [])  # g's sequence moved: its old key goes, n stays
    assert failures.given_up("m", INPUTS) is None and failures.given_up("n", INPUTS)


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("OSError: [Errno 28] No space left on device", "OSError: [Errno 28] x", True),
        ("OSError: [Errno 28] No space left", "OSError: [Errno 13] Permission denied", False),
        ("MemoryError: needs 17.6 MB", "MemoryError: needs 18.2 MB", True),
        ("combination crashed: KeyError: 'x'", "combination crashed: KeyError: 'x'", True),
        ("master name a.fits already belongs", "master name a.fits already belongs", True),
        ("VerifyError: Card 'RA' is not FITS standard", "ValueError: Card 'RA'", False),
    ],
)
def test_failure_kind(one: str, other: str, same: bool) -> None:
    assert (failure_kind(one) == failure_kind(other)) is same
