"""Reasons as people read them: one line each, in the log, the status file and the page.

A reason often comes from an exception whose text runs over several lines (astropy's
`VerifyError` lists every card on its own line between a heading and a note about
zero-based indexing). `one_line` keeps what says what went wrong, joined by "; ", and
cuts the result to a length a status line can hold.
"""

from __future__ import annotations

import re

MAX_REASON_LENGTH = 300
CRASH_PREFIX = "combination crashed"  # a combination that raised (metrics count these)
# lines of astropy's verification report that say nothing about what went wrong
_NOISE = re.compile(
    r"^(Verification reported errors:|Note: astropy\.io\.fits uses zero-based indexing\."
    r"|HDU \d+:|Card \d+:)$"
)
_SPACES = re.compile(r"\s+")


def one_line(text: object, limit: int = MAX_REASON_LENGTH) -> str:
    """`text` on one line: its non-empty lines joined by "; " (by a space after a line
    ending in ":"), astropy's verification boilerplate left out, runs of white space made
    one space, cut to `limit` characters with a trailing "…"."""
    lines = [_SPACES.sub(" ", line).strip() for line in str(text).splitlines()]
    joined = ""
    for line in (line for line in lines if line and not _NOISE.match(line)):
        separator = " " if not joined or joined.endswith(":") else "; "
        joined = (joined + separator + line).lstrip()
    return joined if len(joined) <= limit else joined[: limit - 1].rstrip() + "…"


def reason_of(exc: BaseException) -> str:
    """An exception as a one-line reason: `TypeName: message`."""
    message = one_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def crash_reason(exc: BaseException) -> str:
    """The reason of a combination that raised: `combination crashed: TypeName: message`."""
    return f"{CRASH_PREFIX}: {reason_of(exc)}"
