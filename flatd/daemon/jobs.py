"""The combination jobs: when a group's sequences are combined, and what becomes of each.

Every frame that joins or leaves a group pushes its job back to `now + quiet_seconds`
(`frames_changed`). When the job runs it looks at each of the group's sequences against the
masters on disk (`catalogue`: a master claims the frames its INPUTS table lists, by
content):

- no master claims its frames: it is combined (too few frames: one `too_few_frames`);
- its masters claim all of its frames: it is up to date — frames that *left* never make a
  master again (the master stays; the status notes the inputs that are gone), and a file
  touched or copied is the same frame;
- frames joined it: it is combined again, and the new master supersedes the ones that
  claimed its frames (its start moved earlier, or two sequences merged: `latest.Curator`);
  unless some of those masters' inputs are gone from disk, when the new master would be
  made of fewer frames than the one it replaces: the frames wait (`held`, in the status)
  until the operator says `flatd remake`.

QA compares the new master with the master of the group's previous sequence, never with an
earlier combination of the same sequence (`Curator.baseline`); `latest/` follows the rule
of `latest` after every master. One combination runs at a time (the memory limit is per
combination); a group's runs never overlap.

Every sequence that makes no master is one warning event with its reason, once for its
inputs (`too_few_frames`; `combine_failed`). A failed combination is retried once
(`combine_retry_scheduled`); failing again the same way on the same frames makes it
`failed` until its frames change or flatd restarts (`retries`). Raw frames with no master
bias or dark yet leave their group `waiting` with that reason (`calibration_waiting`,
once); its job runs again when a master bias or dark arrives (`check_calibration`).

Every few seconds `check_outputs` looks at the output directory and the operator's
decisions file: a master deleted by hand is noticed (its sequence, still in memory, is
combined again, `latest/` moves off it), a `flatd promote` is applied to the status, and
`flatd remake` requests are run, one at a time, between the combinations. Stopping sets an
explicit cancel event that the pipeline checks between its stages and bands.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from flatd.calibrate import MasterLibraries
from flatd.config import Config
from flatd.daemon.groupstate import GroupState, GroupStates
from flatd.daemon.retries import Failures
from flatd.daemon.schedule import Clock, Debouncer, Timer, utcnow
from flatd.frames import Frame, GroupKey
from flatd.inputs.fingerprint import Fingerprints
from flatd.inputs.index import FlatSequence, Index
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.decisions import Request
from flatd.outputs.latest import Curator, Published
from flatd.outputs.masters import (
    InputRow,
    MasterFile,
    MasterRecord,
    group_slug,
    master_path,
    name_group,
)
from flatd.outputs.remake import outcome, sequence_from_inputs, targets
from flatd.pipeline import Result, combine_and_publish
from flatd.reasons import crash_reason, one_line
from flatd.status.schema import GoneInput

__all__ = ["GIVEN_UP", "CombinationJobs", "Remake", "retry_first_seconds"]

log = structlog.get_logger("flatd.daemon.jobs")
DELETED_BY_HAND = (
    "master deleted by hand: latest/ follows, and it is made again from its frames still on disk"
)

RETRY_FIRST_SECONDS = 30.0
RETRY_MAX_SECONDS = 1800.0
RETRY_ENV = "FLATD_RETRY_SECONDS"  # the retry's delay; for tests and drills, not a config key
GIVEN_UP = "tried again when its frames change or flatd restarts"
AGAIN = "the sequence will be combined again with its new content"
CHECK_SECONDS = 2.0  # how often the output directory and the decisions file are looked at
NOT_COMBINED = ("waiting", "cancelled", "changed")  # outcomes that are no combination


def retry_first_seconds() -> float:
    """The delay before the retry of a failed combination: `$FLATD_RETRY_SECONDS` when it
    is a positive number, else 30 s."""
    try:
        value = float(os.environ.get(RETRY_ENV, ""))
    except ValueError:
        return RETRY_FIRST_SECONDS
    return value if 0 < value <= RETRY_MAX_SECONDS else RETRY_FIRST_SECONDS


@dataclass(frozen=True)
class Remake:
    """The scheduler's key of a `flatd remake` request."""

    request: Request


@dataclass(frozen=True)
class Plan:
    """A sequence against the masters on disk: the masters claiming its frames, its frames
    none claims, and those masters' inputs that are no longer among the group's frames."""

    sequence: FlatSequence
    claimers: tuple[MasterFile, ...]
    new: tuple[Frame, ...]
    gone: tuple[tuple[InputRow, MasterFile], ...] = ()

    @property
    def up_to_date(self) -> bool:
        return bool(self.claimers) and not self.new


@dataclass
class _Run:
    """What one run of a group's job found, for the group's state."""

    results: list[Result] = field(default_factory=list)
    gone: list[GoneInput] = field(default_factory=list)
    held: str = ""


OnMaster = Callable[[MasterRecord, Published], None]


class CombinationJobs:
    """The scheduler's jobs that combine the groups' sequences."""

    def __init__(
        self,
        index: Index,
        config: Config,
        states: GroupStates,
        curator: Curator,
        *,
        on_master: OnMaster,
        on_error: Callable[[str, str], None],
        on_change: Callable[[], None],
        on_master_gone: Callable[[Path], None] = lambda path: None,
        on_outcome: Callable[[Result], None] | None = None,
        clock: Clock = utcnow,
        timer: Timer | None = None,
    ) -> None:
        self._index = index
        self.config = config  # replaced on reload: the next combination uses it
        self._states = states
        self._curator = curator
        self._catalogue: Catalogue = curator.catalogue
        self._on_master = on_master
        self._on_error = on_error
        self._on_change = on_change
        self._on_master_gone = on_master_gone
        self._on_outcome = on_outcome  # every combination attempted (for the metrics)
        self._clock = clock
        self._timer: Timer = timer or Debouncer(self._job)
        self._lock = threading.Lock()
        self._group_locks: dict[GroupKey, threading.Lock] = {}
        self._combine_lock = threading.Lock()
        self._failures = Failures(retry_first_seconds(), RETRY_MAX_SECONDS)
        self._told: dict[tuple[str, Path], tuple[frozenset[str], str]] = {}  # reported once
        self._fingerprints = Fingerprints()
        self._libraries = MasterLibraries.from_settings(config.calibrate, Path.cwd())
        self._libraries_version = self._libraries.version()
        self._decisions_stamp = curator.decisions.stamp()
        self.cancel = threading.Event()  # set when the daemon stops
        self._scheduling = False

    # -- events ------------------------------------------------------------------------
    def frames_changed(self, group: GroupKey) -> None:
        """Frames joined, left or changed in `group`: push its job back."""
        now = self._clock()
        stable_at = now + self._quiet if self._scheduling else None
        self._states.frames_changed(group, now, stable_at)
        if stable_at is not None:
            self._timer.arm(group, stable_at)
            self._on_change()

    def start(self) -> None:
        """Start the scheduler and arm every group with work left from before: the quiet
        period counts from the newest file's modification time."""
        self._scheduling = True
        self._timer.start()
        self._timer.every(CHECK_SECONDS, self.check_outputs, "outputs")
        if self.config.calibrate.raw == "calibrate":  # what the bias/dark sources hold
            log.info("calibration_masters", sources=self._libraries.describe())
        now = self._clock()
        for group, frames in self._index.groups().items():
            newest = min(datetime.fromtimestamp(max(f.mtime_ns for f in frames) / 1e9, UTC), now)
            stable_at = max(now, newest + self._quiet)  # a file time in the future: now
            self._states.set(group, last_frame_at=stable_at - self._quiet, stable_at=stable_at)
            self._timer.arm(group, stable_at)
        self._on_change()

    def check_calibration(self) -> None:
        """When a master bias or dark arrived, changed or left, run the job of every group
        with raw frames now (those whose master is up to date return at once)."""
        if self.config.calibrate.raw != "calibrate":
            return
        version = self._libraries.version()
        if version == self._libraries_version:
            return
        self._libraries_version = version
        sources = [str(s.source) for s in (self._libraries.bias, self._libraries.dark) if s]
        # no header is read here (the health check's thread): the jobs read what changed
        log.info("calibration_masters_changed", sources=sources, groups=self._run_raw_groups())

    def _run_raw_groups(self) -> int:
        groups = [g for g, frames in self._index.groups().items() if any(f.raw for f in frames)]
        now = self._clock()
        for group in groups:
            self._timer.arm(group, now)
        return len(groups)

    def reconfigure(self, config: Config) -> None:
        """Run with `config` from now on (a reload): each job reads it when it runs, and a
        combination in progress finishes with the settings it started with. A new quiet
        period re-times the groups waiting for theirs, a new `min_frames` runs the groups
        that had too few frames, new calibration settings reload the master libraries and
        run the groups with raw frames; `latest/` follows a new `promote_changed` (or
        `output.latest`) at once."""
        old, self.config = self.config, config
        self._curator.config = config
        if config.calibrate != old.calibrate:
            self._libraries = MasterLibraries.from_settings(config.calibrate, Path.cwd())
            self._libraries_version = self._libraries.version()
        if config.qa != old.qa or config.output != old.output:
            self._latest_follows()
        if not self._scheduling:
            return  # `start()` arms every group with the new settings
        if config.calibrate != old.calibrate and config.calibrate.raw == "calibrate":
            self._run_raw_groups()
        self._retime(old)
        self._on_change()

    def _retime(self, old: Config) -> None:
        """Arm again the groups a reload changed the wait of: those waiting for their
        quiet period (a new one), those with too few frames (a new `min_frames`)."""
        quiet, now = timedelta(seconds=old.sequence.quiet_seconds), self._clock()
        for group, state in self._states.items():
            if _quiet_wait(state, quiet) and quiet != self._quiet:
                assert state.last_frame_at is not None
                stable_at = max(now, state.last_frame_at + self._quiet)
                self._states.set(group, stable_at=stable_at)
                self._timer.arm(group, stable_at)
            elif state.state == "too_few" and old.sequence.min_frames != self._min_frames:
                self._timer.arm(group, now)

    def abandon(self) -> None:
        """Make a running combination give up at its next band or stage (returns at once)."""
        self.cancel.set()

    def stop(self) -> None:
        """Abandon a running combination at its next band or stage and wait for the jobs."""
        self.abandon()
        self._timer.shutdown()

    # -- the output directory and the operator ------------------------------------------
    def check_outputs(self) -> None:
        """Masters deleted by hand, decisions changed, remakes asked for (every few s)."""
        try:
            self._notice_deleted()
            stamp = self._curator.decisions.stamp()
            if stamp != self._decisions_stamp:
                self._decisions_stamp = stamp
                self._decisions_changed()
        except Exception:  # a check must never stop the checks to come
            log.exception("output_check_failed")

    def _notice_deleted(self) -> None:
        self._catalogue.refresh()
        for path in self._catalogue.take_gone():
            self._master_deleted(path)

    def _master_deleted(self, path: Path) -> None:
        log.warning("master_deleted", path=str(path), action="latest/ and the status follow")
        self._on_error(str(path), DELETED_BY_HAND)
        self._on_master_gone(path)
        slug = name_group(path)
        with self._curator.decisions.locked() as decisions:
            if slug is not None:
                self._curator.settle(slug, decisions)
        for group in self._index.group_sizes():
            if group_slug(group) == slug:
                self._timer.arm(group, self._clock())

    def _decisions_changed(self) -> None:
        """The operator promoted, demoted or asked for remakes: `latest/` and the states
        follow; each remake is a job of its own."""
        self._latest_follows()
        with self._curator.decisions.locked() as decisions:
            taken, decisions.requests = decisions.requests, []
        for request in taken:
            log.info("remake_requested", target=request.target, by=request.by)
            self._timer.arm(Remake(request), self._clock())

    def _latest_follows(self) -> None:
        """Every group's `latest/` by the rule as it is now, and the states with it."""
        self._curator.settle_all()
        for group in self._index.group_sizes():
            self._states.set(group, latest_master=_text(self._curator.named(group_slug(group))))
        self._on_change()

    # -- the job -----------------------------------------------------------------------
    def _job(self, key: GroupKey | Remake) -> None:
        if isinstance(key, Remake):
            self.remake(key.request)
        else:
            self.run(key)

    def run(self, group: GroupKey) -> None:
        """Combine every sequence of `group` whose frames are not all in a master."""
        with (
            self._group_lock(group),
            structlog.contextvars.bound_contextvars(group=group_slug(group)),
        ):
            try:
                self._run(group)
            except Exception as exc:  # never let a job die silently in the pool
                log.exception("combine_crashed")
                reason = crash_reason(exc)
                self._on_error(group_slug(group), reason)
                self._states.set(
                    group, state="failed", reason=f"{reason}; {GIVEN_UP}", stable_at=None
                )
            self._on_change()

    def _run(self, group: GroupKey) -> None:
        self._states.set(group, state="pending")
        self._on_change()
        self._notice_deleted()
        sequences = self._index.sequences(group)
        self._failures.keep_only(group, [self._path(s) for s in sequences])
        held = frozenset(k for s in sequences for f in s.frames for k in _keys(f))
        run = _Run()
        for sequence in sequences:
            if self.cancel.is_set():
                return
            plan = self._plan(sequence, held)
            run.gone += [{"path": r.path, "master": str(m.path)} for r, m in plan.gone]
            result = self._outcome(plan, run)
            if result is not None:
                run.results.append(result)
        self._report_once("too_few_frames", [r for r in run.results if r.outcome == "too_few"])
        self._report_once("calibration_waiting", [r for r in run.results if r.outcome == "waiting"])
        self._settle(group, sequences, run)

    def _plan(self, sequence: FlatSequence, held: frozenset[str]) -> Plan:
        claimers = tuple(self._catalogue.claimers(sequence))
        new = tuple(f for f in sequence.frames if not any(m.claims(f) for m in claimers))
        gone = tuple(
            (row, master)
            for master in claimers
            for row in master.rows
            if row.used and not held & {row.identity, row.stamp}
        )
        return Plan(sequence, claimers, new, gone)

    def _outcome(self, plan: Plan, run: _Run) -> Result | None:
        """What becomes of one sequence now: None when it has its master (or its new
        frames wait for the operator, noted in `run`)."""
        sequence = plan.sequence
        if plan.up_to_date:
            return None
        minimum = self._min_frames
        if len(sequence.frames) < minimum:
            reason = f"{len(sequence.frames)} frame(s), sequence.min_frames = {minimum}"
            return Result(sequence, "too_few", reason=reason)
        if plan.gone:
            run.held = _held_reason(plan)
            return None
        standing = self._failures.given_up(self._path(sequence), sequence.identities)
        if standing is not None:  # failed twice on these very frames: told once already
            return Result(sequence, "failed", reason=standing)
        return self._combine(plan)

    def _combine(self, plan: Plan, replaces: Iterable[Path] = ()) -> Result:
        sequence, path = plan.sequence, self._path(plan.sequence)
        with self._combine_lock:
            if self.cancel.is_set():
                return Result(sequence, "cancelled", reason="daemon stopping")
            taken = self._name_taken(path, sequence.group)
            if taken:
                result = Result(sequence, "failed", reason=taken)
            else:
                result = self._make_master(plan, replaces)
        if result.outcome == "cancelled":
            log.warning("combine_abandoned", reason=result.reason)
        if result.outcome in ("waiting", "cancelled"):  # nothing was made or tried
            return result
        if result.outcome == "changed":  # an expected race, not a failure: no retry either
            for frame_path in result.changed:
                log.warning(
                    "frame_changed_while_combining",
                    path=str(frame_path),
                    reason=f"changed while being combined; {AGAIN}",
                )
            return result
        for frame_path, reason in result.rejected.items():
            log.warning("frame_rejected", path=str(frame_path), reason=reason)
        if result.outcome == "failed":
            self._failed(path, result, certain=bool(taken))
        elif result.record is not None and result.published is not None:
            self._failures.succeeded(path)
            self._on_master(result.record, result.published)
        return result

    def _make_master(self, plan: Plan, replaces: Iterable[Path]) -> Result:
        """`combine_and_publish`, with anything it raises a failure of this sequence alone."""
        sequence = plan.sequence
        self._states.set(sequence.group, state="combining")
        self._on_change()
        log.info("combine_started", frames=len(sequence.frames), start=sequence.start.isoformat())
        try:
            result = combine_and_publish(
                sequence,
                self.config,
                self._curator,
                claimers=list(plan.claimers),
                replaces=replaces,
                cancel=self.cancel,
                libraries=self._libraries,
            )
        except Exception as exc:  # a bug must cost this sequence, not the daemon
            log.exception("combine_crashed")
            result = Result(sequence, "failed", reason=crash_reason(exc))
        if self._on_outcome is not None and result.outcome not in NOT_COMBINED:
            self._on_outcome(result)
        return result

    def _settle(self, group: GroupKey, sequences: list[FlatSequence], run: _Run) -> None:
        """The group's state after a run: failed (a sequence given up), waiting for a
        retry or a master bias, too few (its newest sequence) or done; a retry is armed."""
        results, newest = run.results, (sequences[-1] if sequences else None)
        failed = [r for r in results if r.outcome == "failed"]
        hopeless = [r for r in failed if self._given_up(r.sequence)]
        retrying = [r for r in failed if r not in hopeless]
        retry_at = self._retry_at(retrying[-1].sequence) if retrying else None
        changed = [r for r in results if r.outcome == "changed"]  # combined again once quiet
        retry_at = retry_at or (self._clock() + self._quiet if changed else None)
        state, reason, stable_at = "done", "", retry_at or self._states.get(group).stable_at
        too_few = [r for r in results if r.outcome == "too_few" and r.sequence == newest]
        waiting = [r for r in results if r.outcome == "waiting"]
        if too_few:
            state, reason = "too_few", too_few[0].reason
        if waiting:  # until a master bias or dark arrives: no time to show
            state, reason, stable_at = "waiting", waiting[-1].reason, retry_at
        if changed:
            state, reason = "waiting", f"{changed[-1].reason}; {AGAIN}"
        if retrying:
            state, reason = "waiting", f"retrying after failure: {retrying[-1].reason}"
        if hopeless:
            state, reason, stable_at = "failed", f"{hopeless[-1].reason}; {GIVEN_UP}", retry_at
        rejected = {str(p): r for result in results for p, r in result.rejected.items()}
        self._states.set(
            group,
            state=state,
            reason=reason,
            stable_at=stable_at,
            latest_master=_text(self._curator.latest_of(group_slug(group))),
            gone=run.gone,
            held=run.held,
            rejected={**self._states.get(group).rejected, **rejected},
        )
        if retry_at is not None and not self.cancel.is_set():
            self._timer.arm(group, retry_at)

    # -- remakes --------------------------------------------------------------------------
    def remake(self, request: Request) -> None:
        """Make the masters a `flatd remake` request names again; record the results in
        the decisions file (where the command waits for them)."""
        found = targets(self._catalogue, request.target, self.config)
        results = []
        if isinstance(found, str):
            results.append({"path": request.target, "outcome": "none", "reason": found})
        else:
            for target in found:
                with structlog.contextvars.bound_contextvars(group=name_group(target.master.path)):
                    log.info("remake_started", path=str(target.master.path), why=target.why)
                    results.append(self._remake(target.master))
        with self._curator.decisions.locked() as decisions:
            decisions.finish(request, results)
        self._decisions_stamp = self._curator.decisions.stamp()
        self._on_change()

    def _remake(self, master: MasterFile) -> dict[str, Any]:
        """One master made again from its sequence in memory, else from its INPUTS."""
        sequence = self._sequence_of(master) or sequence_from_inputs(
            master, self.config, self._fingerprints
        )
        if isinstance(sequence, str):
            log.warning("remake_failed", path=str(master.path), reason=sequence)
            return {"path": str(master.path), "outcome": "failed", "reason": sequence}
        claimers = (master, *(c for c in self._catalogue.claimers(sequence) if c != master))
        new = tuple(f for f in sequence.frames if not any(m.claims(f) for m in claimers))
        with self._group_lock(sequence.group):
            result = self._combine(Plan(sequence, claimers, new), replaces=[master.path])
            if result.record is not None:
                self._states.set(sequence.group, held="", gone=[])
        return outcome(master.path, result)

    def _sequence_of(self, master: MasterFile) -> FlatSequence | None:
        slug = name_group(master.path)
        for group in self._index.group_sizes():
            if group_slug(group) != slug:
                continue
            for sequence in self._index.sequences(group):
                if any(master.claims(f) for f in sequence.frames):
                    return sequence
        return None

    # -- failures -------------------------------------------------------------------------
    def _failed(self, path: Path, result: Result, *, certain: bool) -> None:
        """Record a failed combination: one warning event, retried once or given up."""
        sequence = result.sequence
        reason = one_line(result.reason)
        verdict = self._failures.record(
            path, sequence.group, sequence.identities, reason, certain=certain
        )
        self._on_error(str(path), reason)
        if verdict.given_up:
            log.warning(
                "combine_failed",
                path=str(path),
                reason=reason,
                attempts=verdict.attempts,
                retry=GIVEN_UP,
            )
        else:
            log.warning(
                "combine_retry_scheduled",
                path=str(path),
                reason=reason,
                attempts=verdict.attempts,
                retry_seconds=verdict.retry_seconds,
            )

    def _given_up(self, sequence: FlatSequence) -> bool:
        return self._failures.given_up(self._path(sequence), sequence.identities) is not None

    def _retry_at(self, sequence: FlatSequence) -> datetime:
        delay = self._failures.retry_seconds(self._path(sequence)) or retry_first_seconds()
        return self._clock() + timedelta(seconds=delay)

    def _report_once(self, event: str, results: list[Result]) -> None:
        """One warning `event` per sequence, set of inputs and reason, however often the
        group's job runs."""
        for result in results:
            key = (event, self._path(result.sequence))
            told = (result.sequence.identities, result.reason)
            if self._told.get(key) != told:
                self._told[key] = told
                log.warning(
                    event,
                    start=result.sequence.start.isoformat(),
                    frames=len(result.sequence.frames),
                    reason=one_line(result.reason),
                )

    def _name_taken(self, path: Path, group: GroupKey) -> str:
        """Why `path` may not be written for `group` ("" when it may): distinct header
        values can make the same safe name (`g'` and `gp` both give `gp`)."""
        owner = self._catalogue.owner(path, group)
        if owner is None or owner == group:
            return ""
        return (
            f"master name {path.name} already belongs to group {dict(owner)}, not "
            f"{dict(group)}: their header values make the same file name; rename "
            "one of them (e.g. FILTER) or move the other master away"
        )

    # -- helpers ------------------------------------------------------------------------
    def forget(self, sequences: Iterable[FlatSequence]) -> None:
        """Sequences that left the index: what was told of them may be told again."""
        paths = {self._path(s) for s in sequences}
        for key in [k for k in self._told if k[1] in paths]:
            del self._told[key]
        self._states.forget(sequences)

    def _path(self, sequence: FlatSequence) -> Path:
        return master_path(self.config.output.directory, sequence.group, sequence.start)

    @property
    def _quiet(self) -> timedelta:
        return timedelta(seconds=self.config.sequence.quiet_seconds)

    @property
    def _min_frames(self) -> int:
        return self.config.sequence.min_frames

    def _group_lock(self, group: GroupKey) -> threading.Lock:
        with self._lock:
            return self._group_locks.setdefault(group, threading.Lock())


def _quiet_wait(state: GroupState, quiet: timedelta) -> bool:
    """Whether `state` waits for its quiet period (with `quiet`): not for a retry, whose
    time lies past it, nor for a master bias, which has no time."""
    return (
        state.state == "waiting"
        and state.stable_at is not None
        and state.last_frame_at is not None
        and state.stable_at <= state.last_frame_at + quiet
    )


def _keys(frame: Frame) -> tuple[str, str]:
    """The names a master's INPUTS row may know a frame by: its content, or (masters from
    before content digests) its path, size and time."""
    return (frame.identity, f"{frame.path}|{frame.size}|{frame.mtime_ns}")


def _held_reason(plan: Plan) -> str:
    masters = sorted({m.path.name for _, m in plan.gone})
    inputs = sum(1 for m in plan.claimers for r in m.rows if r.used)
    return (
        f"{len(plan.new)} new frame(s) not combined: {len(plan.gone)} of the {inputs} inputs "
        f"of {', '.join(masters)} are gone from disk and a new master would have fewer; "
        f"`flatd remake {masters[0]}` combines the frames on disk"
    )


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None
