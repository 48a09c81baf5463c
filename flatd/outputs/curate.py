"""The operator's commands on masters: `flatd promote` and `flatd remake`.

`flatd promote PATH` accepts a master (one QA held back may become `latest/`), `--demote`
refuses one (`latest/` moves to the newest accepted master before it), `--reset` forgets
the operator's word. The decision is recorded in the output directory (`decisions`) and
`latest/` is put right at once under the decisions lock, by the rule of `latest` — so it
works with or without a daemon, and a running daemon, which reads the same file, agrees.

`flatd remake [PATH ...] [--group G] [--all]` makes masters again (`remake`): with a
daemon running on the output directory (it holds its lock), the request is left in the
decisions file and the command waits for the daemon's results; without one, the command
makes them itself.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Any

from flatd.config import Config
from flatd.daemon.lock import OUTPUT_LOCK_NAME, AlreadyRunning, InstanceLock
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.decisions import Decision
from flatd.outputs.latest import Curator
from flatd.outputs.masters import latest_path, name_group
from flatd.outputs.remake import ALL, GROUP_PREFIX, SINCE_SEPARATOR, describe, remake_now

__all__ = ["promote_command", "remake_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
POLL_SECONDS = 0.25


def promote_command(config: Config, path: Path, decision: Decision | None) -> int:
    """Record the operator's `decision` on the master at `path` (None: forget it) and put
    its group's `latest/` right; print what `latest/` names now."""
    curator = Curator(Catalogue(config.output.directory), config)
    master = _master_path(curator, path)
    if isinstance(master, str):
        print(f"flatd promote: {master}")
        return EXIT_USAGE
    slug = name_group(master) or ""
    curator.catalogue.refresh(force=True)
    if curator.catalogue.read(master) is None:
        print(f"flatd promote: {master} is not a readable master")
        return EXIT_FAILED
    with curator.decisions.locked() as decisions:
        decisions.decide(master, decision)
        named = curator.settle(slug, decisions)
    word = {"promote": "promoted", "demote": "demoted", None: "left to QA"}[decision]
    print(f"{master.name}: {word}")
    print(_latest_line(config, slug, master, named))
    return EXIT_OK


def _master_path(curator: Curator, path: Path) -> Path | str:
    """The master in the output directory that `path` names (a master's path or name, or
    its group's `latest/` entry); a string says why there is none."""
    output = curator.output_dir
    if path.parent.name == "latest" and path.exists():
        slug = path.name.removeprefix("flat_").removesuffix(".fits")
        for listed in (m for m in _listed(curator) if m.slug == slug):
            if listed.path.samefile(path):
                return listed.path
        return f"{path} names no master in {output}"
    candidate = output / path.name
    if name_group(candidate) is None or not candidate.is_file():
        return f"no master {path.name} in {output} (masters are named flat_<group>_<start>.fits)"
    return candidate


def _listed(curator: Curator) -> list[Any]:
    curator.catalogue.refresh(force=True)
    return curator.catalogue.listed()


def _latest_line(config: Config, slug: str, master: Path, named: Path | None) -> str:
    if not config.output.latest:
        return "latest/ is not kept (output.latest = false)"
    target = latest_path(config.output.directory, slug)
    if named is None:
        return f"{target}: removed (the group has no accepted master)"
    if named == master:
        return f"{target} -> {master.name}"
    return (
        f"{target} -> {named.name} (the newest accepted sequence's master; "
        f"demote it to make an older one latest)"
    )


def remake_command(
    config: Config,
    paths: list[Path],
    group: str | None,
    everything: bool,
    timeout: float,
    since: date | None = None,
) -> int:
    """Make masters again, through the running daemon or here; print each result."""
    chosen = ([GROUP_PREFIX + group] if group else []) + ([ALL] if everything else [])
    if since is not None:
        chosen = [spec + SINCE_SEPARATOR + since.isoformat() for spec in chosen or [ALL]]
    specs = [p.name for p in paths] + chosen
    if not specs:
        print("flatd remake: name masters (PATH ...), --group G, --all or --since DATE")
        return EXIT_USAGE
    curator = Curator(Catalogue(config.output.directory), config)
    lock = InstanceLock({config.output.directory / OUTPUT_LOCK_NAME: "the output directory"})
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        print(f"flatd remake: asking the running daemon (pid {exc.pid or '?'})")
        results = _through_daemon(curator, specs, timeout)
    else:
        try:
            results = [r for spec in specs for r in remake_now(spec, config, curator)]
        finally:
            lock.release()
    if results is None:
        print(f"flatd remake: no answer from the daemon within {timeout:g} s; see flatd status")
        return EXIT_FAILED
    for line in describe(results):
        print(line)
    return EXIT_OK if all(r.get("outcome") in ("done", "none") for r in results) else EXIT_FAILED


def _through_daemon(
    curator: Curator, specs: list[str], timeout: float
) -> list[dict[str, Any]] | None:
    """Leave the requests for the daemon; wait for all of them to be done."""
    with curator.decisions.locked() as decisions:
        ids = [decisions.request_remake(spec).id for spec in specs]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = {d.get("id"): d for d in curator.decisions.read().done}
        if all(i in done for i in ids):
            return [r for i in ids for r in done[i].get("results", [])]
        time.sleep(POLL_SECONDS)
    return None
