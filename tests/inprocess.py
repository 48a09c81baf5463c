"""The daemon's combination side in-process, for unit tests: the groups' states, the masters
on disk and the combination jobs on a real index, a real output directory and (unless a
test passes a fake timer) a real APScheduler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flatd.config import Config
from flatd.daemon.groupstate import GroupStates
from flatd.daemon.jobs import CombinationJobs
from flatd.inputs.index import Index
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.latest import Curator, Published
from flatd.outputs.masters import MasterRecord


def combination_jobs(
    index: Index,
    config: Config,
    *,
    on_master: Callable[[MasterRecord, Published], None] = lambda record, published: None,
    on_error: Callable[[str, str], None] = lambda path, reason: None,
    **options: Any,
) -> tuple[CombinationJobs, GroupStates]:
    """`CombinationJobs` wired as the daemon wires them (without the status board)."""
    states = GroupStates(index, config.frames)
    curator = Curator(Catalogue(config.output.directory), config)
    jobs = CombinationJobs(
        index,
        config,
        states,
        curator,
        on_master=on_master,
        on_error=on_error,
        on_change=lambda: None,
        **options,
    )
    return jobs, states
