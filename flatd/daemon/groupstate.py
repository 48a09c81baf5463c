"""The daemon's groups as the status file shows them: each group's state and why, its
latest master, the frames it rejected, and what is worth knowing about its frames (inputs
of its masters gone from disk, new frames not combined, duplicates, dialect notes).

States: `waiting` (frames arrive; combined once quiet, or waiting for a master bias or a
retry), `pending` (its job runs), `combining`, `done`, `too_few` (its newest sequence),
`failed` (given up until its frames change). The combination jobs (`jobs`) set them; the
status board reads `snapshot()`. Thread-safe, and cheap: a status write costs O(groups),
not O(frames) — a group's dialect notes are worked out again only when its frames changed,
and while frames keep arriving (a burst, several status writes a second) at most every
NOTES_EVERY_SECONDS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flatd.config import FramesConfig
from flatd.frames import GroupKey, group_notes
from flatd.inputs.index import FlatSequence, Index
from flatd.outputs.masters import group_slug
from flatd.reasons import one_line
from flatd.status.schema import DuplicateEntry, GoneInput, GroupEntry

__all__ = ["SETTLED_STATES", "GroupState", "GroupStates"]

SETTLED_STATES = ("done", "too_few", "failed")
LISTED = 20  # duplicates and gone inputs listed per group (the counts are whole)
NOTES_EVERY_SECONDS = 5.0  # a changing group's notes go over all its frames this often


@dataclass
class GroupState:
    group: GroupKey
    state: str = "waiting"
    stable_at: datetime | None = None
    last_frame_at: datetime | None = None
    latest_master: str | None = None
    reason: str = ""
    rejected: dict[str, str] = field(default_factory=dict)
    gone: list[GoneInput] = field(default_factory=list)
    held: str = ""  # why new frames were not combined

    def entry(self, frames: int, notes: list[str], duplicates: list[DuplicateEntry]) -> GroupEntry:
        return {
            "group": dict(self.group),
            "name": group_slug(self.group),
            "frames": frames,
            "state": self.state,
            "stable_at": _iso(self.stable_at),
            "last_frame_at": _iso(self.last_frame_at),
            "latest_master": self.latest_master,
            "reason": one_line(self.reason),
            "rejected": [{"path": p, "reason": one_line(r)} for p, r in self.rejected.items()],
            "notes": notes,
            "duplicates": duplicates,
            "gone": self.gone[:LISTED],
            "gone_count": len(self.gone),
            "held": one_line(self.held),
        }


class GroupStates:
    """Every group's state, by group key."""

    def __init__(
        self,
        index: Index,
        frames_config: FramesConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self._frames_config = frames_config
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[GroupKey, GroupState] = {}
        self._notes: dict[GroupKey, list[str]] = {}  # group_notes, as of the last snapshot
        self._notes_stale: set[GroupKey] = set()  # groups whose frames changed since
        self._notes_at: dict[GroupKey, float] = {}  # when each group's were worked out

    def frames_changed(
        self, group: GroupKey, now: datetime, stable_at: datetime | None = None
    ) -> None:
        """Frames joined or left `group` at `now`; with `stable_at`, it waits until then."""
        with self._lock:
            self._notes_stale.add(group)
            state = self._state(group)
            state.last_frame_at = now
            if stable_at is not None:
                state.state, state.stable_at = "waiting", stable_at

    def set(self, group: GroupKey, **values: Any) -> None:
        """Set some of a group's fields (`GroupState`'s names)."""
        with self._lock:
            state = self._state(group)
            for key, value in values.items():
                setattr(state, key, value)

    def get(self, group: GroupKey) -> GroupState:
        """A copy of the group's state."""
        with self._lock:
            state = self._state(group)
            return GroupState(**{**state.__dict__, "rejected": dict(state.rejected)})

    def items(self) -> list[tuple[GroupKey, GroupState]]:
        """Every group and a copy of its state."""
        with self._lock:
            groups = list(self._states)
        return [(group, self.get(group)) for group in groups]

    def settled(self, group: GroupKey) -> bool:
        """Whether `group` has nothing left to do (its old sequences may leave memory)."""
        with self._lock:
            state = self._states.get(group)
            return state is not None and state.state in SETTLED_STATES

    def forget(self, sequences: Iterable[FlatSequence]) -> None:
        """Sequences that left the index: their groups' notes are worked out again."""
        with self._lock:
            self._notes_stale.update(s.group for s in sequences)

    def snapshot(self) -> list[GroupEntry]:
        """The status file's `groups`, by name."""
        counts = self._index.group_sizes()
        notes = self._notes_of(counts)
        duplicates: dict[GroupKey, list[DuplicateEntry]] = {}
        for duplicate in self._index.duplicates():
            listed = duplicates.setdefault(duplicate.frame.group, [])
            if len(listed) < LISTED:
                listed.append({"path": str(duplicate.path), "duplicate_of": str(duplicate.of)})
        with self._lock:
            return [
                state.entry(counts.get(g, 0), notes.get(g, []), duplicates.get(g, []))
                for g, state in sorted(self._states.items(), key=lambda kv: group_slug(kv[0]))
            ]

    def _notes_of(self, groups: Iterable[GroupKey]) -> dict[GroupKey, list[str]]:
        """Each group's notes, worked out again only for the groups whose frames changed
        since the last snapshot: a status write must not go over every flat."""
        groups, now = list(groups), self._clock()
        with self._lock:
            stale = [g for g in groups if g not in self._notes or self._notes_due(g, now)]
            self._notes_stale.difference_update(stale)
            for gone in set(self._notes) - set(groups):
                del self._notes[gone]
                self._notes_at.pop(gone, None)
        fresh = {g: group_notes(self._index.group_frames(g), self._frames_config) for g in stale}
        with self._lock:
            self._notes.update(fresh)
            self._notes_at.update((g, now) for g in fresh)
            return dict(self._notes)

    def _notes_due(self, group: GroupKey, now: float) -> bool:
        if group not in self._notes_stale:
            return False
        return now - self._notes_at.get(group, -NOTES_EVERY_SECONDS) >= NOTES_EVERY_SECONDS

    def _state(self, group: GroupKey) -> GroupState:
        return self._states.setdefault(group, GroupState(group))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
