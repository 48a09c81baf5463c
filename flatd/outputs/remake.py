"""Making masters again on the operator's word (`flatd remake`): which masters, and from
which frames.

`flatd remake PATH...` makes those masters again; `--group G` and `--all` make again the
masters (of one group, or all) that were made with other settings than the configuration's
(`flatd.outputs.settings`): after the recipe or a QA limit changed. `--since DATE` narrows those
to the sequences that started on or after DATE (a night's date, UTC; alone, it means
`--all --since DATE`). A master is made again from its
sequence as the daemon holds it (the frames on disk now, new ones included), else from the
frames its INPUTS table lists that are still on disk with the same content. The new master
replaces the old one (`latest.Curator.published(replaces=...)`).

With a daemon running, `flatd remake` asks it (`decisions`) and the daemon does the work
between its combinations; without one, the command does it itself (`remake_now`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from flatd.config import Config
from flatd.frames import Frame, read_frame
from flatd.inputs.fingerprint import Fingerprints
from flatd.inputs.index import FlatSequence
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.latest import Curator
from flatd.outputs.masters import MasterFile
from flatd.outputs.settings import differences
from flatd.pipeline import combine_and_publish

__all__ = [
    "ALL",
    "GROUP_PREFIX",
    "SINCE_SEPARATOR",
    "Target",
    "describe",
    "outcome",
    "remake_now",
    "sequence_from_inputs",
    "targets",
]

ALL = "all"
GROUP_PREFIX = "group:"
SINCE_SEPARATOR = " since:"


@dataclass(frozen=True)
class Target:
    """One master to make again, and why it was chosen."""

    master: MasterFile
    why: str


def targets(catalogue: Catalogue, spec: str, config: Config) -> list[Target] | str:
    """The masters a request names: a master's file name (always), `group:<name>` or `all`
    (those made with other settings), either followed by ` since:YYYY-MM-DD` (only the
    sequences that started that day or later). A string says why there are none."""
    catalogue.refresh(force=True)
    spec, _, since_text = spec.partition(SINCE_SEPARATOR)
    if spec != ALL and not spec.startswith(GROUP_PREFIX):
        path = catalogue.output_dir / Path(spec).name
        master = catalogue.read(path)
        if master is None:
            return f"no master {Path(spec).name} in {catalogue.output_dir}"
        return [Target(master, "asked for")]
    since = date.fromisoformat(since_text) if since_text else None
    slug = spec.removeprefix(GROUP_PREFIX) if spec != ALL else None
    found = []
    for listed in catalogue.listed(slug):
        if since is not None and listed.start.date() < since:
            continue
        master = catalogue.read(listed.path)
        other = differences(master.settings, config) if master is not None else []
        if master is not None and other:
            found.append(Target(master, "; ".join(other)))
    if not found:
        where = f"group {slug}" if slug else "the output directory"
        when = f" since {since.isoformat()}" if since is not None else ""
        return f"every master of {where}{when} was made with the configuration's settings"
    return found


def sequence_from_inputs(
    master: MasterFile, config: Config, fingerprints: Fingerprints
) -> FlatSequence | str:
    """The master's frames that are still on disk as they were (same content), read
    again; a string says why there are none."""
    frames: list[Frame] = []
    for row in master.rows:
        if row.is_duplicate or not Path(row.path).is_file():
            continue
        item = fingerprints.identified(read_frame(Path(row.path), config.frames, config.calibrate))
        if isinstance(item, Frame) and master.claims(item):
            frames.append(item)
    inputs = sum(not r.is_duplicate for r in master.rows)
    if not frames:
        return f"none of its {inputs} inputs is on disk as it was"
    group = Counter(f.group for f in frames).most_common(1)[0][0]
    chosen = sorted((f for f in frames if f.group == group), key=lambda f: (f.date, str(f.path)))
    return FlatSequence(group, tuple(chosen))


def outcome(master: Path, result: Any) -> dict[str, Any]:
    """A remake's result as the decisions file and the command report it."""
    record = getattr(result, "record", None)
    return {
        "path": str(master),
        "outcome": getattr(result, "outcome", "failed"),
        "reason": getattr(result, "reason", ""),
        "written": str(record.path) if record is not None else None,
    }


def describe(results: Iterable[dict[str, Any]]) -> list[str]:
    """One line per remade master, for the command's output."""
    lines = []
    for r in results:
        done = r.get("outcome") == "done"
        tail = f"-> {r.get('written')}" if done else f"{r.get('outcome')}: {r.get('reason')}"
        lines.append(f"{r.get('path')}: {tail}")
    return lines


def remake_now(spec: str, config: Config, curator: Curator) -> list[dict[str, Any]]:
    """Make the masters `spec` names again in this process (no daemon runs): each from the
    frames its INPUTS lists that are still on disk; the results, one dict per master."""
    found = targets(curator.catalogue, spec, config)
    if isinstance(found, str):
        return [{"path": spec, "outcome": "none", "reason": found}]
    fingerprints = Fingerprints()
    results = []
    for target in found:
        master = target.master
        sequence = sequence_from_inputs(master, config, fingerprints)
        if isinstance(sequence, str):
            results.append({"path": str(master.path), "outcome": "failed", "reason": sequence})
            continue
        claimers = [master, *(c for c in curator.catalogue.claimers(sequence) if c != master)]
        result = combine_and_publish(
            sequence, config, curator, claimers=claimers, replaces=[master.path]
        )
        results.append(outcome(master.path, result))
    return results
