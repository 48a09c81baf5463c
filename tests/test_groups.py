"""The daemon's groups with the real scheduler: a failure is reported once, retried once,
then `failed` until the frames change; a group without a master says why once.

`Groups` runs here in-process on real files, a real index and a real APScheduler (quiet
period 0, retry delay $FLATD_RETRY_SECONDS = 0.2 s); the failure is a real one (the
output directory is a file, so every write fails with the same OSError)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits
from structlog.testing import capture_logs

from flatd.config import Config, parse_config
from flatd.frames import read_frame
from flatd.groups import GIVEN_UP, Groups
from flatd.index import Index, index_paths
from flatd.masters import MasterRecord
from flatd.retries import MAX_ATTEMPTS, Failures, failure_kind
from flatd.simulate import simulate_sequence, write_sequence
from tests.daemon import wait_for

pytestmark = pytest.mark.timeout(60)
RETRY_SECONDS = 0.2


class Harness:
    """`Groups` on the frames under `incoming`, with what it reports collected."""

    def __init__(self, tmp_path: Path, n_frames: int = 5, min_frames: int = 3) -> None:
        self.incoming = tmp_path / "incoming"
        self.output = tmp_path / "masters"
        self.sequence = simulate_sequence((24, 24), n_frames + 1, seed=8, stars=False)
        self.paths = write_sequence(self.sequence, self.incoming)
        self.paths[-1].unlink()  # the late frame, written by `add_late_frame`
        self.config: Config = parse_config(
            {
                "output": {"directory": str(self.output), "preview": False},
                "sequence": {"quiet_seconds": 0, "min_frames": min_frames},
            }
        )
        self.index: Index = index_paths([self.incoming], self.config)
        self.masters: list[MasterRecord] = []
        self.errors: list[tuple[str, str]] = []
        self.on_error = lambda path, reason: None
        self.groups = Groups(
            self.index,
            self.config,
            on_master=self.masters.append,
            on_error=self._error,
            on_change=lambda: None,
        )
        [self.group] = self.index.groups()

    def _error(self, path: str, reason: str) -> None:
        self.errors.append((path, reason))
        self.on_error(path, reason)

    def add_late_frame(self) -> None:
        data, header = self.sequence.frames[-1], self.sequence.headers[-1]
        fits.PrimaryHDU(data, header).writeto(self.paths[-1])
        self.index.add(read_frame(self.paths[-1], self.config.frames))
        self.groups.frame_arrived(self.group)

    def state(self) -> dict[str, Any]:
        [state] = self.groups.snapshot()
        return state

    def armed(self) -> list[Any]:
        """The scheduler's pending jobs (what would run next, whatever the state says)."""
        return self.groups._debouncer._scheduler.get_jobs()


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLATD_RETRY_SECONDS", str(RETRY_SECONDS))
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        made.append(Harness(tmp_path, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.groups.stop()


def test_a_failure_is_retried_once_then_failed_until_the_frames_change(harness) -> None:
    h = harness()
    h.output.write_text("a file where the output directory should be")
    with capture_logs() as events:
        h.groups.start()
        failed = wait_for(lambda: named(events, "combine_failed"), what="combine_failed")
        state = h.state()

        # one retry, then given up: two attempts, each reported once, as warnings
        assert len(named(events, "combine_started")) == 2
        [retry] = named(events, "combine_retry_scheduled")
        assert retry["log_level"] == failed[0]["log_level"] == "warning"
        assert retry["retry_seconds"] == RETRY_SECONDS and retry["attempts"] == 1
        assert failed[0]["attempts"] == 2 and failed[0]["retry"] == GIVEN_UP
        assert "FileExistsError" in failed[0]["reason"]
        assert state["state"] == "failed" and state["stable_at"] is None
        assert "FileExistsError" in state["reason"] and GIVEN_UP in state["reason"]
        assert "\n" not in state["reason"]
        assert h.armed() == []  # nothing will try it again by itself
        assert len(h.errors) == 2 and all("FileExistsError" in r for _, r in h.errors)

        # the cause goes away; the same frames are not tried again, even when the job
        # runs for another reason (here: by hand, as a new frame in another sequence would)
        h.output.unlink()
        h.groups.run(h.group)
        assert len(named(events, "combine_started")) == 2
        assert h.state()["state"] == "failed" and not h.masters
        assert len(named(events, "combine_failed")) == 1  # not reported again

        # a frame joins: its sequence is tried again, and succeeds
        h.add_late_frame()
        wait_for(lambda: h.masters, what="the master")
    assert h.state()["state"] == "done"
    assert h.masters[0].n_frames == 6
    assert len(named(events, "combine_started")) == 3


def test_a_passing_failure_recovers_on_its_retry(harness) -> None:
    h = harness()
    h.output.write_text("the disk is full, for a moment")
    h.on_error = lambda path, reason: h.output.unlink(missing_ok=True)  # then it is freed
    with capture_logs() as events:
        h.groups.start()
        wait_for(lambda: h.masters, what="the master, on the retry")
    assert len(named(events, "combine_retry_scheduled")) == 1
    assert not named(events, "combine_failed")
    assert h.state()["state"] == "done" and h.state()["reason"] == ""


def test_too_few_frames_is_one_warning_per_set_of_frames(harness) -> None:
    h = harness(n_frames=2)
    with capture_logs() as events:
        h.groups.start()
        wait_for(lambda: h.state()["state"] == "too_few", what="too_few")
        h.groups.run(h.group)  # the job again, with the same frames: nothing new to say
        [warning] = named(events, "too_few_frames")
        assert warning["log_level"] == "warning"
        assert warning["reason"] == "2 frame(s), sequence.min_frames = 3"
        h.add_late_frame()  # three frames: enough
        wait_for(lambda: h.masters, what="the master")
    assert len(named(events, "too_few_frames")) == 1


# -- the rule on its own ---------------------------------------------------------------------
INPUTS = frozenset({("a.fits", 1, 1), ("b.fits", 1, 1)})
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
    joined = INPUTS | {("c.fits", 1, 1)}
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
