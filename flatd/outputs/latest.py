"""`latest/` and superseded masters: which master of a group is the one to use, and the
masters a newer one replaces.

The rule, in one place (`Curator.choose`), for the daemon, `flatd combine` and `flatd
promote` alike: `latest/flat_<group>.fits` is the group's *accepted* master of the newest
sequence, by observation date (its name's start), whatever order masters were written in —
an older night imported, or an older sequence made again, never moves it back. A master is
accepted unless QA flagged it (`QAFLAG`) and `qa.promote_changed` is false, or the operator
demoted it (`flatd promote --demote`); the operator's `flatd promote` accepts a flagged
one; a change confirmed by the next sequence (`QACONFIR`, see `qa`) is not flagged. The
rule reads the masters on disk and the operator's decisions (`decisions`), so a change of
`promote_changed` takes effect on what is already there at start or reload (`settle_all`).

A master superseded by a newer one — its sequence's start moved earlier, or two sequences
merged — is replaced in this order: the new master is written, `latest/` is moved off the
old one if it named it, then the old one (and its pictures) is removed; so there are never
two masters claiming the same frames for longer than that, and `latest/` is always a file
that exists as a master. A crash in between is repaired at start (`repair`): a master whose
frames are all claimed by a master written after it is superseded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from flatd.config import Config
from flatd.frames import GroupKey
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.decisions import Decisions, DecisionsFile
from flatd.outputs.masters import (
    MasterFile,
    MasterRecord,
    latest_path,
    name_group,
    promote_latest,
)
from flatd.pictures.preview import preview_path, ratio_path
from flatd.quality.qa import Baseline
from flatd.reasons import reason_of

__all__ = ["Curator", "Published"]

log = structlog.get_logger("flatd.outputs.latest")


@dataclass
class Published:
    """What publishing a master did: where `latest/` points now (None: nowhere) and the
    masters it superseded (removed)."""

    latest: Path | None
    superseded: list[Path] = field(default_factory=list)


class Curator:
    """`latest/` and supersession in one output directory."""

    def __init__(self, catalogue: Catalogue, config: Config) -> None:
        self.catalogue = catalogue
        self.config = config  # replaced on reload
        self.decisions = DecisionsFile(catalogue.output_dir)
        self._named: dict[str, Path | None] = {}  # slug -> what latest/ names, as last set

    def named(self, slug: str) -> Path | None:
        """What this curator last made `latest/` name for the group (no I/O)."""
        return self._named.get(slug)

    @property
    def output_dir(self) -> Path:
        return self.catalogue.output_dir

    # -- the rule ---------------------------------------------------------------------------
    def accepted(self, master: MasterFile, decisions: Decisions) -> bool:
        """Whether `master` may be `latest/`: not demoted, and not held back by QA (or
        promoted by the operator)."""
        decision = decisions.decision(master.path)
        if decision is not None:
            return decision == "promote"
        return not master.flagged or self.config.qa.promote_changed

    def choose(
        self, slug: str, decisions: Decisions, exclude: Iterable[Path] = ()
    ) -> MasterFile | None:
        """The group's accepted master of the newest sequence (None: it has none)."""
        skip = set(exclude)
        for listed in reversed(self.catalogue.listed(slug)):
            if listed.path in skip:
                continue
            master = self.catalogue.read(listed.path)
            if master is not None and self.accepted(master, decisions):
                return master
        return None

    # -- putting latest/ right ------------------------------------------------------------
    def settle(self, slug: str, decisions: Decisions, exclude: Iterable[Path] = ()) -> Path | None:
        """Point `latest/` at `choose()` (remove it when there is none); call with the
        decisions lock held. Returns the master it names."""
        if not self.config.output.latest:
            return None
        chosen = self.choose(slug, decisions, exclude)
        target = latest_path(self.output_dir, slug)
        self._named[slug] = chosen.path if chosen is not None else None
        if chosen is None:
            if target.exists():
                target.unlink()
                log.info("latest_removed", group=slug, reason="no accepted master")
            return None
        if not _same_file(target, chosen.path):
            promote_latest(chosen.path, slug, self.output_dir)
            log.info("latest_moved", group=slug, path=str(chosen.path))
        return chosen.path

    def settle_all(self) -> dict[str, Path | None]:
        """Put every group's `latest/` right (at start and reload: the decisions and
        `promote_changed` apply to the masters already there)."""
        self.catalogue.refresh(force=True)
        slugs = sorted({m.slug for m in self.catalogue.listed()} | self._latest_slugs())
        with self.decisions.locked() as decisions:
            return {slug: self.settle(slug, decisions) for slug in slugs}

    def latest_of(self, slug: str) -> Path | None:
        """The master `latest/` names for the group, as the rule says now (no change)."""
        chosen = self.choose(slug, self.decisions.read())
        return chosen.path if chosen is not None else None

    def _latest_slugs(self) -> set[str]:
        """Groups with a `latest/` entry (maybe naming a master deleted by hand)."""
        try:
            names = os.listdir(self.output_dir / "latest")
        except OSError:
            return set()
        return {
            name[len("flat_") : -len(".fits")]
            for name in names
            if name.startswith("flat_") and name.endswith(".fits")
        }

    # -- a new master ---------------------------------------------------------------------
    def baseline(self, group: GroupKey, start: datetime, exclude: Iterable[Path]) -> Baseline:
        """What a new master of the sequence starting at `start` is compared with: the
        master of the group's previous sequence (not one of `exclude`, the masters of this
        very sequence), and, when that one is not accepted, the newest accepted before it
        (the one in use)."""
        decisions = self.decisions.read()
        previous: MasterFile | None = None
        for master in self.catalogue.before(group, start, exclude):
            previous = previous or master
            if self.accepted(master, decisions):
                return Baseline(previous.path, master.path)
        return Baseline(previous.path if previous else None, None)

    def publish(
        self, record: MasterRecord, claimers: Iterable[MasterFile], replaces: Iterable[Path] = ()
    ) -> Published:
        """`published()` for a master the pipeline just wrote: its record says whether
        `latest/` names it now; a QA-flagged master or a confirmed change is one event."""
        published = self.published(record.path, claimers, replaces)
        record.promoted = published.latest == record.path
        qa = record.qa
        if qa.get("confirmed"):
            log.info(
                "change_confirmed",
                path=str(record.path),
                reason=qa.get("reason"),
                previous=qa.get("previous"),
                reference=qa.get("reference"),
                promoted=record.promoted,
            )
        elif qa.get("flagged"):
            log.warning(
                "master_suspect",
                path=str(record.path),
                reason=qa.get("reason"),
                previous=qa.get("previous"),
                promoted=record.promoted,
            )
        return published

    def published(
        self, written: Path, claimers: Iterable[MasterFile], replaces: Iterable[Path] = ()
    ) -> Published:
        """A master was written at `written` for a sequence that `claimers` (masters on
        disk) claimed frames of: supersede those whose frames it all holds (and those it
        `replaces`, made again on the operator's word), and put `latest/` right before they
        are removed."""
        self.catalogue.noted(written)
        new = self.catalogue.read(written)
        slug = name_group(written) or ""
        forced = set(replaces) - {written}
        superseded = [
            c.path
            for c in claimers
            if new is not None and c.path != written and c.identities <= new.identities
        ]
        superseded += sorted(forced - set(superseded))
        with self.decisions.locked() as decisions:
            latest = self.settle(slug, decisions, exclude=superseded)
            for old in superseded:
                self._remove(old, by=written)
                decisions.decide(old, None)
        return Published(latest, superseded)

    def repair(self, since: datetime) -> list[Path]:
        """After a crash between writing a master and removing the ones it superseded:
        remove every master (whose sequence started after `since`) all of whose frames are
        claimed by a master written after it. Returns what was removed."""
        self.catalogue.refresh(force=True)
        removed: list[Path] = []
        for slug in sorted({m.slug for m in self.catalogue.listed()}):
            recent = [m for m in self.catalogue.listed(slug) if m.start >= since]
            read = [m for m in (self.catalogue.read(r.path) for r in recent) if m is not None]
            old = [m for m in read if any(_supersedes(n, m) for n in read)]
            if not old:
                continue
            with self.decisions.locked() as decisions:
                self.settle(slug, decisions, exclude=[m.path for m in old])
                for master in old:
                    newer = next(n for n in read if _supersedes(n, master))
                    self._remove(master.path, by=newer.path)
                    decisions.decide(master.path, None)
                    removed.append(master.path)
        return removed

    def _remove(self, path: Path, *, by: Path) -> None:
        """Remove a superseded master and its pictures."""
        self.catalogue.forgot(path)
        for file in (path, preview_path(path), ratio_path(path)):
            try:
                file.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # it stays; the next start's repair tries again
                log.warning("master_not_removed", path=str(file), reason=reason_of(exc))
        log.info("master_superseded", path=str(path), by=str(by))


def _supersedes(new: MasterFile, old: MasterFile) -> bool:
    """Whether `new` holds every frame `old` claims and was written after it."""
    if new.path == old.path or not old.identities <= new.identities:
        return False
    return _mtime(new.path) > _mtime(old.path)


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False
