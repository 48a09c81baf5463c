"""The combination jobs (`flatd.daemon.jobs`) in-process, on real files, a real index, real masters
in a real output directory:

- a failure is reported once, retried once, then `failed` until the frames change; a group
  without enough frames says why once;
- one trustworthy master per sequence: frames that leave never make a master again (the
  inputs gone are noted), a touched frame is the same frame, a late frame dated before the
  first or a frame that bridges two sequences leaves one master on disk, new frames whose
  master lost inputs wait for the operator (`flatd remake`), a master deleted by hand is
  noticed, the operator's decisions are followed;
- the timing logic (quiet period, start-up, retry) under a fake clock and a fake timer.

The jobs are run by hand (`jobs.run(group)`) where the order matters, and by the real
APScheduler (quiet period 0, retry delay $FLATD_RETRY_SECONDS = 0.2 s) where the retry is
under test. The failure is a real one: the output directory is a file."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from structlog.testing import capture_logs

from flatd.config import Config, parse_config
from flatd.daemon.jobs import GIVEN_UP, CombinationJobs
from flatd.frames import read_frame
from flatd.inputs.fingerprint import identified
from flatd.inputs.index import Index
from flatd.outputs.decisions import DecisionsFile
from flatd.outputs.latest import Published
from flatd.outputs.masters import MasterRecord, latest_path, read_master_inputs
from flatd.simulation.flats import SimulatedSequence, simulate_sequence
from tests.daemon import wait_for
from tests.helpers import find_masters
from tests.inprocess import combination_jobs

pytestmark = pytest.mark.timeout(60)
RETRY_SECONDS = 0.2
START = datetime(2026, 11, 23, 17, 30)


def write(seq: SimulatedSequence, directory: Path, prefix: str, indices: range | list[int]):
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        path = directory / f"{prefix}_{i:03d}.fits"
        fits.PrimaryHDU(seq.frames[i], seq.headers[i]).writeto(path)
        paths.append(path)
    return paths


class Harness:
    """The jobs on the frames under `incoming`, with what they report collected."""

    def __init__(self, tmp_path: Path, min_frames: int = 3, **options: Any) -> None:
        self.incoming = tmp_path / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.output = tmp_path / "masters"
        self.config: Config = parse_config(
            {
                "output": {"directory": str(self.output), "preview": False},
                "sequence": {"quiet_seconds": 0, "min_frames": min_frames},
            }
        )
        self.index: Index = Index(self.config.sequence.gap_minutes)
        self.masters: list[MasterRecord] = []
        self.superseded: list[Path] = []
        self.errors: list[tuple[str, str]] = []
        self.on_error: Callable[[str, str], None] = lambda path, reason: None
        self.jobs: CombinationJobs
        self.jobs, self.states = combination_jobs(
            self.index,
            self.config,
            on_master=self._master,
            on_error=self._error,
            **options,
        )

    def _master(self, record: MasterRecord, published: Published) -> None:
        self.masters.append(record)
        self.superseded += published.superseded

    def _error(self, path: str, reason: str) -> None:
        self.errors.append((path, reason))
        self.on_error(path, reason)

    def arrive(self, *paths: Path) -> None:
        """What ingest does with a file that landed (or changed)."""
        for path in paths:
            change = self.index.add(identified(read_frame(path, self.config.frames)))
            for group in change.groups:
                self.jobs.frames_changed(group)

    def leave(self, *paths: Path) -> None:
        """What ingest does with a file that went."""
        for path in paths:
            path.unlink()
            group = self.index.remove(path)
            if group is not None:
                self.jobs.frames_changed(group)

    @property
    def group(self) -> Any:
        [group] = self.index.groups()
        return group

    def run(self) -> None:
        self.jobs.run(self.group)

    def state(self) -> dict[str, Any]:
        [state] = self.states.snapshot()
        return dict(state)

    def on_disk(self) -> list[str]:
        return [p.name for p in find_masters(self.output)]

    def latest(self) -> Path:
        return latest_path(self.output, self.group)


def named(events: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
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
        h.jobs.stop()


def sequence(n: int = 6, seed: int = 8, **options: Any) -> SimulatedSequence:
    return simulate_sequence((24, 24), n, seed=seed, stars=False, **options)


# -- failures, retried once, reported once ---------------------------------------------------
def test_a_failure_is_retried_once_then_failed_until_the_frames_change(harness) -> None:
    h = harness()
    seq = sequence()
    h.arrive(*write(seq, h.incoming, "f", range(5)))
    h.output.write_text("a file where the output directory should be")
    with capture_logs() as events:
        h.jobs.start()
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
        assert [j for j in h.jobs._timer._scheduler.get_jobs() if j.id.startswith("combine")] == []
        assert len(h.errors) == 2 and all("FileExistsError" in r for _, r in h.errors)

        # the cause goes away; the same frames are not tried again, even when the job
        # runs for another reason (here: by hand, as a new frame in another sequence would)
        h.output.unlink()
        h.run()
        assert len(named(events, "combine_started")) == 2
        assert h.state()["state"] == "failed" and not h.masters
        assert len(named(events, "combine_failed")) == 1  # not reported again

        # a frame joins: its sequence is tried again, and succeeds
        h.arrive(*write(seq, h.incoming, "f", [5]))
        wait_for(lambda: h.masters, what="the master")
    wait_for(lambda: h.state()["state"] == "done", what="done")
    assert h.masters[0].n_frames == 6
    assert len(named(events, "combine_started")) == 3


def test_a_passing_failure_recovers_on_its_retry(harness) -> None:
    h = harness()
    h.arrive(*write(sequence(), h.incoming, "f", range(5)))
    h.output.write_text("the disk is full, for a moment")
    h.on_error = lambda path, reason: h.output.unlink(missing_ok=True)  # then it is freed
    with capture_logs() as events:
        h.jobs.start()
        wait_for(lambda: h.masters, what="the master, on the retry")
    assert len(named(events, "combine_retry_scheduled")) == 1
    assert not named(events, "combine_failed")
    wait_for(lambda: h.state()["state"] == "done", what="done")
    assert h.state()["reason"] == ""


def test_too_few_frames_is_one_warning_per_set_of_frames(harness) -> None:
    h = harness()
    seq = sequence()
    h.arrive(*write(seq, h.incoming, "f", range(2)))
    with capture_logs() as events:
        h.run()
        assert h.state()["state"] == "too_few"
        h.run()  # the job again, with the same frames: nothing new to say
        [warning] = named(events, "too_few_frames")
        assert warning["log_level"] == "warning"
        assert warning["reason"] == "2 frame(s), sequence.min_frames = 3"
        h.arrive(*write(seq, h.incoming, "f", [2]))  # three frames: enough
        h.run()
    assert len(h.masters) == 1
    assert len(named(events, "too_few_frames")) == 1


# -- one trustworthy master per sequence -----------------------------------------------------
def test_frames_that_leave_never_make_the_master_again(harness) -> None:
    h = harness()
    paths = write(sequence(), h.incoming, "f", range(5))
    h.arrive(*paths)
    h.run()
    [master] = h.masters
    before = master.path.read_bytes()
    with capture_logs() as events:
        h.leave(*paths[:3])  # an archiving script moves three of its five inputs away
        h.run()
    assert not named(events, "combine_started")  # neither re-combined nor "too few"
    assert not named(events, "too_few_frames")
    assert master.path.read_bytes() == before
    assert h.latest().samefile(master.path)
    state = h.state()
    assert state["state"] == "done" and state["latest_master"] == str(master.path)
    assert {Path(g["path"]).name for g in state["gone"]} == {p.name for p in paths[:3]}
    assert state["gone_count"] == 3 and state["gone"][0]["master"] == str(master.path)


def test_a_touched_frame_is_the_same_frame(harness) -> None:
    h = harness()
    paths = write(sequence(), h.incoming, "f", range(4))
    h.arrive(*paths)
    h.run()
    [master] = h.masters
    written = master.path.stat().st_mtime_ns
    later = paths[1].stat().st_mtime + 3600
    os.utime(paths[1], (later, later))  # touch: a new mtime, the same bytes
    change = h.index.add(identified(read_frame(paths[1], h.config.frames)))
    assert change.changed and change.groups == frozenset()  # no group is told
    with capture_logs() as events:
        h.run()  # and when the job runs anyway: up to date
    assert not named(events, "combine_started")
    assert master.path.stat().st_mtime_ns == written


def test_a_late_frame_dated_before_the_first_leaves_one_master(harness) -> None:
    h = harness()
    seq = sequence()
    h.arrive(*write(seq, h.incoming, "f", range(1, 6)))
    h.run()
    [first] = h.masters
    assert first.path.name.endswith("T173030.fits")  # started with frame 1
    h.arrive(*write(seq, h.incoming, "f", [0]))  # copies arrive out of order
    h.run()
    [new] = h.masters[1:]
    assert new.path.name.endswith("T173000.fits") and new.n_frames == 6
    assert h.on_disk() == [new.path.name]  # the superseded one is gone
    assert h.superseded == [first.path]
    assert h.latest().samefile(new.path)
    assert h.state()["latest_master"] == str(new.path)


def test_a_frame_bridging_two_sequences_leaves_one_master(harness) -> None:
    h = harness()
    one = sequence(4, seed=1)
    two = sequence(4, seed=2, start=START + timedelta(minutes=150), true_flat=one.true_flat)
    h.arrive(*write(one, h.incoming, "a", range(4)), *write(two, h.incoming, "b", range(4)))
    h.run()
    assert len(h.on_disk()) == 2
    bridge = sequence(1, seed=3, start=START + timedelta(minutes=75), true_flat=one.true_flat)
    h.arrive(*write(bridge, h.incoming, "c", [0]))
    h.run()
    [merged] = h.masters[2:]
    assert h.on_disk() == [merged.path.name] and merged.n_frames == 9
    assert merged.path == h.masters[0].path  # the earlier one's name, written over
    assert h.superseded == [h.masters[1].path]  # the later one's removed
    assert len(read_master_inputs(merged.path)) == 9


def test_new_frames_wait_when_the_master_lost_inputs_until_a_remake(harness) -> None:
    h = harness()
    seq = sequence(7)
    paths = write(seq, h.incoming, "f", range(5))
    h.arrive(*paths)
    h.run()
    [master] = h.masters
    h.leave(*paths[:2])
    h.arrive(*write(seq, h.incoming, "f", [5, 6]))  # late frames join a master missing two
    with capture_logs() as events:
        h.run()
    assert not named(events, "combine_started")  # 5 frames would replace 5: not by itself
    held = h.state()["held"]
    assert held.startswith("2 new frame(s) not combined: 2 of the 5 inputs")
    assert f"flatd remake {master.path.name}" in held
    with DecisionsFile(h.output).locked() as decisions:
        request = decisions.request_remake(master.path.name)
    h.jobs.remake(request)
    [remade] = h.masters[1:]
    assert remade.n_frames == 5 and h.on_disk() == [remade.path.name]
    assert {Path(r["PATH"]).name for r in read_master_inputs(remade.path)} == {
        f"f_{i:03d}.fits" for i in range(2, 7)
    }
    [done] = DecisionsFile(h.output).read().done
    assert done["results"][0]["outcome"] == "done"
    assert h.state()["held"] == ""


def test_a_master_deleted_by_hand_is_noticed_and_made_again(harness) -> None:
    h = harness()
    h.arrive(*write(sequence(), h.incoming, "f", range(4)))
    h.jobs.start()
    wait_for(lambda: h.masters, what="the master")
    gone: list[Path] = []
    h.jobs._on_master_gone = gone.append
    [master] = h.masters
    with capture_logs() as events:
        master.path.unlink()
        h.jobs.check_outputs()
        wait_for(lambda: len(h.masters) == 2, what="the master made again")
    assert gone == [master.path]
    assert named(events, "master_deleted")[0]["path"] == str(master.path)
    assert h.latest().samefile(master.path)


def test_the_operators_decision_is_followed(harness) -> None:
    h = harness()
    one = sequence(4, seed=1)
    two = sequence(4, seed=2, start=START + timedelta(days=1), true_flat=one.true_flat)
    h.arrive(*write(one, h.incoming, "a", range(4)), *write(two, h.incoming, "b", range(4)))
    h.run()
    older, newer = h.masters
    assert h.latest().samefile(newer.path)
    with DecisionsFile(h.output).locked() as decisions:  # what `flatd promote --demote` does
        decisions.decide(newer.path, "demote")
    h.jobs.check_outputs()
    assert h.latest().samefile(older.path)
    assert h.state()["latest_master"] == str(older.path)


# -- timing, under a fake clock -----------------------------------------------------------------
class FakeTimer:
    """Records what the jobs arm, instead of running anything."""

    def __init__(self) -> None:
        self.armed: dict[Hashable, datetime] = {}
        self.tasks: list[str] = []

    def start(self) -> None:
        pass

    def arm(self, key: Hashable, at: datetime) -> None:
        self.armed[key] = at

    def every(self, seconds: float, task: Callable[[], None], name: str) -> None:
        self.tasks.append(name)

    def shutdown(self) -> None:
        pass


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_every_frame_pushes_its_group_back_by_the_quiet_period(tmp_path: Path) -> None:
    clock, timer = FakeClock(datetime(2027, 1, 1, tzinfo=UTC)), FakeTimer()
    config = parse_config({"sequence": {"quiet_seconds": 300}, "output": {"directory": "m"}})
    index = Index(config.sequence.gap_minutes)
    jobs, states = combination_jobs(index, config, clock=clock, timer=timer)
    paths = write(sequence(), tmp_path, "f", range(3))
    index.add(identified(read_frame(paths[0], config.frames)))
    [group] = index.groups()
    jobs.start()
    assert timer.tasks == ["outputs"]
    jobs.frames_changed(group)
    assert timer.armed[group] == clock.now + timedelta(seconds=300)
    clock.now += timedelta(seconds=200)
    jobs.frames_changed(group)  # another frame: pushed back again
    assert timer.armed[group] == clock.now + timedelta(seconds=300)
    [entry] = states.snapshot()
    assert entry["state"] == "waiting"
    assert entry["stable_at"] == (clock.now + timedelta(seconds=300)).isoformat().replace(
        "+00:00", "Z"
    )


def test_at_start_the_quiet_period_counts_from_the_newest_file(tmp_path: Path) -> None:
    clock, timer = FakeClock(datetime(2027, 1, 1, tzinfo=UTC)), FakeTimer()
    config = parse_config({"sequence": {"quiet_seconds": 300}, "output": {"directory": "m"}})
    index = Index(config.sequence.gap_minutes)
    paths = write(sequence(), tmp_path, "f", range(3))
    for age, path in zip((3600, 100), paths[:2], strict=True):  # an old file, a recent one
        when = clock.now.timestamp() - age
        os.utime(path, (when, when))
        index.add(identified(read_frame(path, config.frames)))
    jobs, _ = combination_jobs(index, config, clock=clock, timer=timer)
    jobs.start()
    [at] = timer.armed.values()
    assert at == clock.now + timedelta(seconds=200)  # 300 s after the newest, 100 s ago
    os.utime(paths[1], (0, 0))  # everything long quiet: at once
    index.add(identified(read_frame(paths[1], config.frames)))
    jobs.start()
    assert min(timer.armed.values()) == clock.now


def test_a_failure_arms_its_retry_after_the_retry_delay(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLATD_RETRY_SECONDS", "42")
    clock, timer = FakeClock(datetime(2027, 1, 1, tzinfo=UTC)), FakeTimer()
    output = tmp_path / "masters"
    output.write_text("not a directory")
    config = parse_config(
        {"output": {"directory": str(output), "preview": False}, "sequence": {"min_frames": 3}}
    )
    index = Index(config.sequence.gap_minutes)
    for path in write(sequence(), tmp_path / "in", "f", range(3)):
        index.add(identified(read_frame(path, config.frames)))
    jobs, states = combination_jobs(index, config, clock=clock, timer=timer)
    [group] = index.groups()
    jobs.run(group)
    assert timer.armed[group] == clock.now + timedelta(seconds=42)
    [entry] = states.snapshot()
    assert entry["state"] == "waiting" and entry["reason"].startswith("retrying after failure")


def test_a_stopped_daemon_abandons_a_combination_before_it_is_written(harness) -> None:
    h = harness()
    h.arrive(*write(sequence(), h.incoming, "f", range(4)))
    h.jobs.cancel.set()  # what stop() sets
    with capture_logs() as events:
        h.run()
    assert not h.masters and not h.on_disk()
    assert not named(events, "combine_failed")


def test_a_remake_from_inputs_when_the_sequence_left_memory(harness) -> None:
    h = harness()
    paths = write(sequence(), h.incoming, "f", range(4))
    h.arrive(*paths)
    h.run()
    [master] = h.masters
    for path in paths:  # the sequence left memory (older than keep_days)
        h.index.remove(path)
    data = np.asarray(fits.getdata(master.path))
    with DecisionsFile(h.output).locked() as decisions:
        request = decisions.request_remake(master.path.name)
    h.jobs.remake(request)
    [remade] = h.masters[1:]
    assert remade.path == master.path and remade.n_frames == 4
    assert np.array_equal(np.asarray(fits.getdata(remade.path)), data)  # same frames, same recipe


def test_a_deletion_is_noticed_whichever_look_comes_first(harness) -> None:
    h = harness()
    one = sequence(4, seed=1)
    two = sequence(4, seed=2, start=START + timedelta(days=1), true_flat=one.true_flat)
    h.arrive(*write(one, h.incoming, "a", range(4)), *write(two, h.incoming, "b", range(4)))
    h.run()
    _, newer = h.masters
    gone: list[Path] = []
    h.jobs._on_master_gone = gone.append
    with capture_logs() as events:
        newer.path.unlink()
        h.run()  # the group's job looks at the output directory before check_outputs does
        h.jobs.check_outputs()
    assert gone == [newer.path]
    assert [e["path"] for e in named(events, "master_deleted")] == [str(newer.path)]
    assert h.latest().samefile(newer.path)  # made again: its sequence is still held
    assert len(h.masters) == 3 and not named(events, "master_superseded")


def test_a_reload_re_times_waiting_groups_and_applies_promote_changed(tmp_path: Path) -> None:
    clock, timer = FakeClock(datetime(2027, 1, 1, tzinfo=UTC)), FakeTimer()

    def configured(**sections: dict[str, Any]) -> Config:
        raw: dict[str, Any] = {
            "output": {"directory": str(tmp_path / "masters"), "preview": False},
            "sequence": {"quiet_seconds": 300, "min_frames": 3},
        }
        for name, values in sections.items():
            raw[name] = {**raw.get(name, {}), **values}
        return parse_config(raw)

    config = configured()
    index = Index(config.sequence.gap_minutes)
    jobs, states = combination_jobs(index, config, clock=clock, timer=timer)
    paths = write(sequence(), tmp_path / "in", "f", range(3))
    index.add(identified(read_frame(paths[0], config.frames)))
    [group] = index.groups()
    jobs.start()
    jobs.frames_changed(group)
    jobs.reconfigure(configured(sequence={"quiet_seconds": 60}))  # a shorter quiet period
    assert timer.armed[group] == clock.now + timedelta(seconds=60)

    states.set(group, state="too_few")
    clock.now += timedelta(seconds=10)
    jobs.reconfigure(configured(sequence={"quiet_seconds": 60, "min_frames": 1}))
    assert timer.armed[group] == clock.now  # enough frames now: at once

    for path in paths[1:]:  # a real master, flagged by hand as QA would, then the setting
        index.add(identified(read_frame(path, config.frames)))
    jobs.run(group)
    [master] = find_masters(tmp_path / "masters")
    fits.setval(master, "QAFLAG", value=True)
    held = configured(sequence={"quiet_seconds": 60, "min_frames": 1})
    promoting = configured(sequence=dict(held.sequence.__dict__), qa={"promote_changed": True})
    jobs.reconfigure(promoting)
    assert latest_path(tmp_path / "masters", group).samefile(master)
    jobs.reconfigure(held)  # promote_changed = false again: it applies to what is there
    assert not latest_path(tmp_path / "masters", group).exists()
    assert states.snapshot()[0]["latest_master"] is None
    jobs.reconfigure(promoting)
    assert latest_path(tmp_path / "masters", group).samefile(master)
    assert states.snapshot()[0]["latest_master"] == str(master)
