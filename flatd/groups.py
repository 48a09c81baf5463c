"""The daemon's groups: their state for the status file, and the job that combines them.

Every frame that joins a group pushes its job back to `now + quiet_seconds`. When the
job runs it makes a master of each of the group's sequences whose inputs differ from
those of the master already on disk (read back from its INPUTS table, so a restart
redoes nothing and finishes what a crash interrupted). One combination runs at a time
(the memory limit is per combination); a group's runs never overlap.

Every sequence that makes no master is one warning event with its reason, once for its
inputs (`too_few_frames`; `combine_failed`). A failed combination is retried once
(`combine_retry_scheduled`); failing again the same way on the same frames makes it
`failed`, and it is tried again only when its frames change or flatd restarts
(`flatd.retries`). Raw frames with no master bias or dark that fits yet leave their
group `waiting` with that reason (`calibration_waiting`, once), not failed and not
retried: its job runs again when its frames change or when a master bias or dark
arrives (`check_calibration`, from the daemon's health check).
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

from flatd import masters
from flatd.calibrate import MasterLibraries
from flatd.config import Config
from flatd.frames import Skip, canonical_group, group_notes
from flatd.index import GroupKey, Index, Sequence
from flatd.pipeline import Result, make_master
from flatd.reasons import one_line, reason_of
from flatd.retries import Failures
from flatd.schedule import Debouncer, utcnow

log = structlog.get_logger("flatd.groups")

RETRY_FIRST_SECONDS = 30.0
RETRY_MAX_SECONDS = 1800.0
RETRY_ENV = "FLATD_RETRY_SECONDS"  # the retry's delay; for tests and drills, not a config key
GIVEN_UP = "tried again when its frames change or flatd restarts"
AGAIN = "the sequence will be combined again with its new content"


def retry_first_seconds() -> float:
    """The delay before the retry of a failed combination: `$FLATD_RETRY_SECONDS` when it
    is a positive number, else 30 s."""
    try:
        value = float(os.environ.get(RETRY_ENV, ""))
    except ValueError:
        return RETRY_FIRST_SECONDS
    return value if 0 < value <= RETRY_MAX_SECONDS else RETRY_FIRST_SECONDS


class Cancelled(Exception):
    """The daemon is stopping: abandon the combination (nothing has been written)."""


@dataclass
class GroupState:
    group: GroupKey
    state: str = "waiting"
    stable_at: datetime | None = None
    last_frame_at: datetime | None = None
    latest_master: str | None = None
    reason: str = ""
    rejected: dict[str, str] = field(default_factory=dict)

    def to_dict(self, frames: int, notes: list[str] | None = None) -> dict[str, Any]:
        return {
            "group": dict(self.group),
            "name": masters.group_slug(self.group),
            "frames": frames,
            "state": self.state,
            "stable_at": _iso(self.stable_at),
            "last_frame_at": _iso(self.last_frame_at),
            "latest_master": self.latest_master,
            "reason": one_line(self.reason),
            "rejected": [{"path": p, "reason": one_line(r)} for p, r in self.rejected.items()],
            "notes": notes or [],
        }


class Groups:
    """Group states plus the scheduler job that combines a group's sequences."""

    def __init__(
        self,
        index: Index,
        config: Config,
        *,
        on_master: Callable[[masters.MasterRecord], None],
        on_error: Callable[[str, str], None],
        on_change: Callable[[], None],
        on_skipped: Callable[[str, str], None] | None = None,
        on_outcome: Callable[[Result], None] | None = None,
    ) -> None:
        self._index = index
        self._config = config
        self._on_master = on_master
        self._on_error = on_error
        self._on_change = on_change
        self._on_skipped = on_skipped
        self._on_outcome = on_outcome  # every combination attempted (for the metrics)
        self._states: dict[GroupKey, GroupState] = {}
        self._lock = threading.Lock()
        self._group_locks: dict[GroupKey, threading.Lock] = {}
        self._combine_lock = threading.Lock()
        self._made: dict[Path, frozenset] = {}
        self._owners: dict[Path, GroupKey] = {}  # master path -> the group it belongs to
        self._failures = Failures(retry_first_seconds(), RETRY_MAX_SECONDS)
        self._too_few_told: dict[GroupKey, dict[Path, frozenset]] = {}  # reported once
        self._notes: dict[GroupKey, list[str]] = {}  # group_notes, as of the last snapshot
        self._notes_stale: set[GroupKey] = set()  # groups whose frames changed since
        self._waiting_told: dict[Path, tuple[frozenset, str]] = {}  # reported once
        self._libraries = MasterLibraries.from_settings(config.calibrate, Path.cwd())
        self._libraries_version = self._libraries.version()
        self._stopping = threading.Event()
        self._scheduling = False
        self._debouncer = Debouncer(self.run)

    # -- events ------------------------------------------------------------------------
    def frame_arrived(self, group: GroupKey) -> None:
        """A frame joined, left or changed in `group`: push its job back."""
        now = utcnow()
        with self._lock:
            self._notes_stale.add(group)
            state = self._state(group)
            state.last_frame_at = now
            if not self._scheduling:
                return
            state.state, state.stable_at = "waiting", now + self._quiet
        self._debouncer.arm(group, now + self._quiet)
        self._on_change()

    def start(self) -> None:
        """Start the scheduler and arm every group with work left from before: the quiet
        period counts from the newest file's modification time."""
        with self._lock:
            self._scheduling = True
        self._debouncer.start()
        if self._config.calibrate.raw == "calibrate":  # what the bias/dark sources hold
            log.info("calibration_masters", sources=self._libraries.describe())
        now = utcnow()
        for group, frames in self._index.groups().items():
            newest = max(datetime.fromtimestamp(f.mtime_ns / 1e9, UTC) for f in frames)
            with self._lock:
                state = self._state(group)
                state.last_frame_at = newest
                state.stable_at = max(now, newest + self._quiet)
            self._debouncer.arm(group, state.stable_at)
        self._on_change()

    def check_calibration(self) -> None:
        """When a master bias or dark arrived, changed or left, run the job of every group
        with raw frames now (those whose master is up to date return at once)."""
        if self._config.calibrate.raw != "calibrate":
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
        now = utcnow()
        for group in groups:
            self._debouncer.arm(group, now)
        return len(groups)

    def reconfigure(self, config: Config) -> None:
        """Run with `config` from now on (a reload): each job reads it when it runs, and a
        combination in progress finishes with the settings it started with. A new quiet
        period re-times the groups waiting for theirs, a new `min_frames` runs the groups
        that had too few frames, new calibration settings reload the master libraries and
        run the groups with raw frames."""
        old, self._config = self._config, config
        if config.calibrate != old.calibrate:
            self._libraries = MasterLibraries.from_settings(config.calibrate, Path.cwd())
            self._libraries_version = self._libraries.version()
        if not self._scheduling:
            return  # `start()` arms every group with the new settings
        if config.calibrate != old.calibrate and config.calibrate.raw == "calibrate":
            self._run_raw_groups()
        quiet = timedelta(seconds=old.sequence.quiet_seconds)
        now = utcnow()
        armed: list[tuple[GroupKey, datetime]] = []
        with self._lock:
            for group, state in self._states.items():
                if _quiet_wait(state, quiet) and quiet != self._quiet:
                    assert state.last_frame_at is not None
                    state.stable_at = max(now, state.last_frame_at + self._quiet)
                    armed.append((group, state.stable_at))
                elif state.state == "too_few" and old.sequence.min_frames != self._min_frames:
                    armed.append((group, now))
        for group, at in armed:
            self._debouncer.arm(group, at)
        self._on_change()

    def abandon(self) -> None:
        """Make a running combination give up at its next band or stage (returns at once)."""
        self._stopping.set()

    def stop(self) -> None:
        """Abandon a running combination at its next band or stage and wait for the jobs."""
        self.abandon()
        self._debouncer.shutdown()

    # -- the job -----------------------------------------------------------------------
    def run(self, group: GroupKey) -> None:
        """Combine every sequence of `group` whose inputs changed since its master."""
        with (
            self._group_lock(group),
            structlog.contextvars.bound_contextvars(group=masters.group_slug(group)),
        ):
            try:
                self._run(group)
            except Cancelled:
                log.warning("combine_abandoned", reason="daemon stopping")
            except Exception as exc:  # never let a job die silently in the pool
                log.exception("combine_crashed")
                reason = f"combination crashed: {reason_of(exc)}"
                self._on_error(masters.group_slug(group), reason)
                self._set(group, state="failed", reason=f"{reason}; {GIVEN_UP}", stable_at=None)
            self._on_change()

    def _run(self, group: GroupKey) -> None:
        self._set(group, state="pending")
        sequences = self._index.sequences(group)
        self._failures.keep_only(group, [self._path(s) for s in sequences])
        results = [r for r in map(self._outcome, sequences) if r is not None]
        self._report_too_few(group, [r for r in results if r.outcome == "too_few"])
        self._report_waiting([r for r in results if r.outcome == "waiting"])
        self._settle(group, sequences, results)

    def _outcome(self, sequence: Sequence) -> Result | None:
        """What becomes of one sequence now: None when its master is up to date."""
        minimum = self._min_frames
        if len(sequence.frames) < minimum:
            reason = f"{len(sequence.frames)} frame(s), sequence.min_frames = {minimum}"
            return Result(sequence, "too_few", reason=reason)
        if not self._needs_master(sequence):
            return None
        path = self._path(sequence)
        standing = self._failures.given_up(path, sequence.identities)
        if standing is not None:  # failed twice on these very frames: told once already
            return Result(sequence, "failed", reason=standing)
        return self._combine(sequence)

    def _settle(self, group: GroupKey, sequences: list[Sequence], results: list[Result]) -> None:
        """The group's state after a run: failed (a sequence given up), waiting for a
        retry, too few (its newest sequence) or done; a pending retry is armed."""
        newest = sequences[-1] if sequences else None
        failed = [r for r in results if r.outcome == "failed"]
        hopeless = [r for r in failed if self._given_up(r.sequence)]
        retrying = [r for r in failed if r not in hopeless]
        retry_at = self._retry_at(retrying[-1].sequence) if retrying else None
        changed = [r for r in results if r.outcome == "changed"]  # combined again once quiet
        retry_at = retry_at or (utcnow() + self._quiet if changed else None)
        with self._lock:
            state = self._state(group)
            for result in results:
                state.rejected.update({str(p): r for p, r in result.rejected.items()})
                if result.record is not None:
                    state.latest_master = str(result.record.path)
            state.state, state.reason, state.stable_at = "done", "", retry_at or state.stable_at
            too_few = [r for r in results if r.outcome == "too_few" and r.sequence == newest]
            if too_few:
                state.state, state.reason = "too_few", too_few[0].reason
            waiting = [r for r in results if r.outcome == "waiting"]
            if waiting:  # until a master bias or dark arrives: no time to show
                state.state, state.reason = "waiting", waiting[-1].reason
                state.stable_at = retry_at
            if changed:
                state.state, state.reason = "waiting", f"{changed[-1].reason}; {AGAIN}"
            if retrying:
                state.state = "waiting"
                state.reason = f"retrying after failure: {retrying[-1].reason}"
            if hopeless:
                state.state, state.stable_at = "failed", retry_at
                state.reason = f"{hopeless[-1].reason}; {GIVEN_UP}"
        if retry_at is not None and not self._stopping.is_set():
            self._debouncer.arm(group, retry_at)

    def _retry_at(self, sequence: Sequence) -> datetime:
        delay = self._failures.retry_seconds(self._path(sequence)) or retry_first_seconds()
        return utcnow() + timedelta(seconds=delay)

    def _needs_master(self, sequence: Sequence) -> bool:
        path = self._path(sequence)
        if path not in self._made and path.exists():
            try:
                owner, rows = masters.read_master(path, [key for key, _ in sequence.group])
                self._made[path] = frozenset(
                    (row["PATH"], int(row["SIZE"]), int(row["MTIME_NS"])) for row in rows
                )
                if owner is not None:  # as today's frames say it (binning '2' -> 2)
                    self._owners.setdefault(path, canonical_group(owner))
            except (OSError, KeyError, ValueError) as exc:
                log.warning("master_unreadable", path=str(path), reason=reason_of(exc))
        made = self._made.get(path) == sequence.identities
        if made:
            self._set(sequence.group, latest_master=str(path))
        return not made

    def _combine(self, sequence: Sequence) -> Result:
        path = self._path(sequence)
        with self._combine_lock:
            if self._stopping.is_set():
                raise Cancelled
            taken = self._claim(path, sequence.group)
            if taken:
                result = Result(sequence, "failed", reason=taken)
            else:
                self._set(sequence.group, state="combining")
                log.info(
                    "combine_started", frames=len(sequence.frames), start=sequence.start.isoformat()
                )
                result = self._make_master(sequence)
                if self._on_outcome is not None and result.outcome not in ("waiting", "changed"):
                    self._on_outcome(result)  # waiting for a master bias: nothing combined
        if result.outcome == "waiting":  # nothing was made or tried: no failure either
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
            return result
        self._made[path] = sequence.identities
        self._failures.succeeded(path)
        if result.record is not None:
            self._on_master(result.record)
        return result

    def _make_master(self, sequence: Sequence) -> Result:
        """`make_master`, with anything it raises (but the daemon stopping) a failure."""
        try:
            return make_master(
                sequence, self._config, progress=self._check_stop, libraries=self._libraries
            )
        except Cancelled:
            raise
        except Exception as exc:  # a bug must cost this sequence, not the daemon
            log.exception("combine_crashed")
            return Result(sequence, "failed", reason=f"combination crashed: {reason_of(exc)}")

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

    def _given_up(self, sequence: Sequence) -> bool:
        return self._failures.given_up(self._path(sequence), sequence.identities) is not None

    def _report_too_few(self, group: GroupKey, results: list[Result]) -> None:
        """One `too_few_frames` warning per sequence and set of inputs, however often the
        group's job runs."""
        told = self._too_few_told.get(group, {})
        now: dict[Path, frozenset] = {}
        for result in results:
            path = self._path(result.sequence)
            now[path] = result.sequence.identities
            if told.get(path) != now[path]:
                log.warning(
                    "too_few_frames",
                    start=result.sequence.start.isoformat(),
                    frames=len(result.sequence.frames),
                    reason=one_line(result.reason),
                )
        self._too_few_told[group] = now

    def _report_waiting(self, results: list[Result]) -> None:
        """One `calibration_waiting` warning per sequence, set of inputs and reason."""
        for result in results:
            path = self._path(result.sequence)
            told = (result.sequence.identities, result.reason)
            if self._waiting_told.get(path) != told:
                self._waiting_told[path] = told
                log.warning(
                    "calibration_waiting",
                    start=result.sequence.start.isoformat(),
                    frames=len(result.sequence.frames),
                    reason=one_line(result.reason),
                )

    def _path(self, sequence: Sequence) -> Path:
        return masters.master_path(self._config.output.directory, sequence.group, sequence.start)

    def _claim(self, path: Path, group: GroupKey) -> str:
        """Make sure `path` is not another group's master: distinct header values can make
        the same safe name (`g'` and `gp` both give `gp`). Return why not, or ""."""
        owner = self._owners.get(path)  # read with its INPUTS by `_needs_master`
        if owner is not None and owner != group:
            return (
                f"master name {path.name} already belongs to group {dict(owner)}, not "
                f"{dict(group)}: their header values make the same file name; rename "
                "one of them (e.g. FILTER) or move the other master away"
            )
        self._owners[path] = group
        return ""

    def _check_stop(self, done: int, total: int) -> None:
        if self._stopping.is_set():
            raise Cancelled

    # -- state -------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        counts = self._index.group_sizes()
        notes = self._notes_of(counts)
        with self._lock:
            return [
                s.to_dict(counts.get(g, 0), notes.get(g))
                for g, s in sorted(self._states.items(), key=lambda kv: masters.group_slug(kv[0]))
            ]

    def _notes_of(self, groups: Iterable[GroupKey]) -> dict[GroupKey, list[str]]:
        """Each group's notes, worked out again only for the groups whose frames changed
        since the last snapshot: a status write must not go over every flat."""
        groups = list(groups)
        with self._lock:
            stale = [g for g in groups if g not in self._notes or g in self._notes_stale]
            self._notes_stale.difference_update(stale)
            for gone in set(self._notes) - set(groups):
                del self._notes[gone]
        fresh = {g: group_notes(self._index.group_frames(g), self._config.frames) for g in stale}
        with self._lock:
            self._notes.update(fresh)
            return dict(self._notes)

    def settled(self, group: GroupKey) -> bool:
        """Whether `group` has nothing left to do (its old sequences may leave memory)."""
        with self._lock:
            state = self._states.get(group)
            return state is not None and state.state in ("done", "too_few", "failed")

    def forget(self, sequences: Iterable[Sequence]) -> None:
        """Sequences that left the index: drop what was remembered of their masters (it is
        read back from the master's INPUTS if they ever come back)."""
        for sequence in sequences:
            path = masters.master_path(
                self._config.output.directory, sequence.group, sequence.start
            )
            self._made.pop(path, None)
            self._owners.pop(path, None)
            with self._lock:
                self._notes_stale.add(sequence.group)

    def note_skip(self, skip: Skip) -> None:
        """Rejected files are errors of the status file; skipped ones go to its bounded
        `skipped` list (through `on_skipped`)."""
        if skip.kind == "rejected":
            log.warning("frame_rejected", path=str(skip.path), reason=skip.reason)
            self._on_error(str(skip.path), skip.reason)
        else:
            log.info("frame_skipped", path=str(skip.path), reason=skip.reason)
            if self._on_skipped is not None:
                self._on_skipped(str(skip.path), skip.reason)

    @property
    def _quiet(self) -> timedelta:
        return timedelta(seconds=self._config.sequence.quiet_seconds)

    @property
    def _min_frames(self) -> int:
        return self._config.sequence.min_frames

    def _state(self, group: GroupKey) -> GroupState:
        return self._states.setdefault(group, GroupState(group))

    def _set(self, group: GroupKey, **values: Any) -> None:
        with self._lock:
            state = self._state(group)
            for key, value in values.items():
                setattr(state, key, value)
        self._on_change()

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


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
