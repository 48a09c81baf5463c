"""The status file: what the daemon is doing, for `flatd status`, the page, the metrics,
scripts and dashboards.

- `schema`: the schema-1 document of SPEC.md as types, its times, reading it back;
- `board`: the daemon's side, `StatusBoard`, which keeps the file up to date;
- `view`: `flatd status`, which reads it, says whether the daemon is alive and prints it;
- `page`: the observer's `index.html` beside the status file, rewritten with it;
- `present`: the words and tones both `view` and `page` say the document with.
"""

from flatd.status.board import StatusBoard
from flatd.status.schema import (
    SCHEMA,
    STALE_SECONDS,
    GroupEntry,
    MasterEntry,
    StatusDocument,
    parse_iso,
    read_status,
    utc_iso,
)
from flatd.status.view import (
    EXIT_NOT_RUNNING,
    EXIT_RUNNING,
    daemon_running,
    render_status,
    status_command,
    why_not_running,
)

__all__ = [
    "EXIT_NOT_RUNNING",
    "EXIT_RUNNING",
    "SCHEMA",
    "STALE_SECONDS",
    "GroupEntry",
    "MasterEntry",
    "StatusBoard",
    "StatusDocument",
    "daemon_running",
    "parse_iso",
    "read_status",
    "render_status",
    "status_command",
    "utc_iso",
    "why_not_running",
]
