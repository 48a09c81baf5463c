"""The operator's word on masters, as a small file both `flatd` commands and the daemon read.

`flatd promote PATH` accepts a master QA held back (it may become `latest/`), `flatd
promote --demote PATH` refuses one (it never will); `flatd remake ...` asks for masters to
be made again. All of it is kept in `<output>/.flatd-decisions.json`, beside the masters it
speaks of, so it outlives restarts and needs no running daemon:

    {"schema": 1,
     "masters": {"flat_r_..._20261123T173000.fits":
                    {"decision": "promote", "at": ..., "by": ...}},
     "requests": [{"id": ..., "remake": "flat_....fits" | "group:<name>" | "all",
                   "at": ..., "by": ...}],
     "done": [{"id": ..., "at": ..., "results":
                  [{"path": ..., "outcome": ..., "reason": ...}]}]}

A command and the daemon never fight over it: every change is a read-modify-write under an
exclusive `flock` on `<output>/.flatd-decisions.lock` (held for milliseconds), and the file
is replaced atomically, so a reader without the lock sees the old file or the new one.
Whoever changes a decision also puts `latest/` right under the same lock (`latest.Curator`,
by the same rule), and the daemon, which looks at the file's identity every few seconds,
puts its own view (status, page) right when it changed. Remake requests are taken by the
daemon (moved from `requests` to `done` with their results once made).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from flatd.atomic import atomic_write_bytes
from flatd.status.schema import utc_iso

__all__ = ["DECISIONS_NAME", "Decision", "Decisions", "DecisionsFile", "Request"]

DECISIONS_NAME = ".flatd-decisions.json"
LOCK_NAME = ".flatd-decisions.lock"
SCHEMA = 1
DONE_KEPT = 20

Decision = Literal["promote", "demote"]
Stamp = tuple[int, int, int]  # (inode, size, mtime_ns)


@dataclass(frozen=True)
class Request:
    """A remake asked for: `target` is a master's file name, `group:<name>` or `all` (these
    two may end in ` since:YYYY-MM-DD`, `remake.targets`)."""

    id: str
    target: str
    at: str
    by: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "remake": self.target, "at": self.at, "by": self.by}


@dataclass
class Decisions:
    """The file's contents (see the module's docstring)."""

    masters: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)

    def decision(self, master: Path | str) -> Decision | None:
        entry = self.masters.get(Path(master).name)
        value = entry.get("decision") if entry else None
        return value if value in ("promote", "demote") else None  # type: ignore[return-value]

    def decide(self, master: Path, decision: Decision | None) -> None:
        """Record `decision` for the master (None: forget any)."""
        if decision is None:
            self.masters.pop(master.name, None)
        else:
            self.masters[master.name] = {"decision": decision, "at": _now(), "by": _who()}

    def request_remake(self, target: str) -> Request:
        request = Request(f"{_stamp_now()}-{os.getpid()}", target, _now(), _who())
        self.requests.append(request)
        return request

    def finish(self, request: Request, results: list[dict[str, Any]]) -> None:
        """Record what became of a request taken from `requests`."""
        self.done.insert(0, {**request.to_dict(), "done_at": _now(), "results": results})
        del self.done[DONE_KEPT:]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "masters": self.masters,
            "requests": [r.to_dict() for r in self.requests],
            "done": self.done,
        }

    @classmethod
    def from_dict(cls, document: Any) -> Decisions:
        if not isinstance(document, dict):
            return cls()
        masters = document.get("masters")
        requests = document.get("requests")
        done = document.get("done")
        return cls(
            masters={
                str(name): dict(entry)
                for name, entry in (masters.items() if isinstance(masters, dict) else ())
                if isinstance(entry, dict)
            },
            requests=[
                Request(str(r["id"]), str(r["remake"]), str(r.get("at", "")), str(r.get("by", "")))
                for r in (requests if isinstance(requests, list) else [])
                if isinstance(r, dict) and "id" in r and "remake" in r
            ],
            done=[d for d in (done if isinstance(done, list) else []) if isinstance(d, dict)],
        )


class DecisionsFile:
    """`.flatd-decisions.json` of one output directory."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / DECISIONS_NAME
        self.lock_path = output_dir / LOCK_NAME

    def read(self) -> Decisions:
        """The decisions as the file says now (none when it is missing or unreadable)."""
        try:
            return Decisions.from_dict(json.loads(self.path.read_bytes()))
        except (OSError, ValueError):
            return Decisions()

    def stamp(self) -> Stamp | None:
        """The file's identity: it changed when this did."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Decisions]:
        """Hold the lock; yield the decisions, written back (atomically) on a clean exit
        when they were changed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            decisions = self.read()
            before = _text(decisions)
            yield decisions
            after = _text(decisions)
            if after != before:
                atomic_write_bytes(self.path, after.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)  # releases the flock


def _text(decisions: Decisions) -> str:
    return json.dumps(decisions.to_dict(), indent=2, ensure_ascii=False) + "\n"


def _now() -> str:
    return utc_iso(timespec="seconds")


def _stamp_now() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"
