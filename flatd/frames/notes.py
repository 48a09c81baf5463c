"""What a group's frames say about how they were read: the keyword each group key came
from, and the notes `flatd scan`, the status file and the page show once per group (a
key no frame had a keyword for, dates that are file times and why, a group cut into
sequences where some dates are file times)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from flatd.frames.model import Frame
from flatd.frames.roles import BINNING_KEYS, keywords_for

if TYPE_CHECKING:
    from flatd.config import FramesConfig

MAX_NAMES = 3  # files named in a note; the rest counted
LABELS = {"FILTER": "filter", "INSTRUME": "instrument"}


def sources(frames: Sequence[Frame]) -> dict[str, str]:
    """For the frame type and each group key, the keyword(s) its value came from across
    the group's frames ("type": "OBSTYPE", "FILTER": "FILTER1+FILTER2", "XBINNING":
    "CCDSUM", ...; several, comma-separated, when the frames differ; "" for none)."""
    seen: dict[str, dict[str, None]] = {"type": {}}
    for frame in frames:
        seen["type"].setdefault(frame.type_keyword, None)
        for key, source in frame.sources:
            seen.setdefault(key, {}).setdefault(source, None)
    return {key: ", ".join(s for s in found if s) for key, found in seen.items()}


def group_notes(
    frames: Sequence[Frame], config: FramesConfig, n_sequences: int | None = None
) -> list[str]:
    """The group's notes (see the module docstring), each one line; [] when nothing
    needs saying. `n_sequences`, when given, lets the notes say that file-time dates
    took part in cutting the group into sequences."""
    if not frames:
        return []
    notes = _missing_keys(frames, config)
    notes += _file_dates(frames)
    undated = sum(not f.date_from_header for f in frames)
    if n_sequences is not None and n_sequences > 1 and undated:
        notes.append(
            f"split into {n_sequences} sequences while {undated} of {len(frames)} frames "
            "are dated by their file time, which may not be when they were taken"
        )
    return notes


def _missing_keys(frames: Sequence[Frame], config: FramesConfig) -> list[str]:
    notes = []
    reported_binning = False
    missing = Counter(key for f in frames for key, source in f.sources if not source)
    for key in config.group_by:
        if not missing[key] or (key in BINNING_KEYS and reported_binning):
            continue
        reported_binning = reported_binning or key in BINNING_KEYS
        what = "binning" if key in BINNING_KEYS else LABELS.get(key, key)
        looked = ", ".join(keywords_for(key, config))
        share = "" if missing[key] == len(frames) else f" ({missing[key]} of {len(frames)} frames)"
        notes.append(f"no {what} keyword{share}: looked for {looked}")
    return notes


def _file_dates(frames: Sequence[Frame]) -> list[str]:
    by_reason: dict[str, list[Frame]] = {}
    for frame in frames:
        if frame.date_note:
            by_reason.setdefault(frame.date_note, []).append(frame)
    notes = []
    for reason, affected in by_reason.items():
        used = (
            "file time used"
            if not affected[0].date_from_header
            else (f"date from {affected[0].date_source}")
        )
        notes.append(f"{_count(affected, len(frames))}: {reason}; {used}{_names(affected)}")
    return notes


def _count(affected: Sequence[Frame], total: int) -> str:
    return "every frame" if len(affected) == total else f"{len(affected)} of {total} frames"


def _names(affected: Sequence[Frame]) -> str:
    names = [f.path.name for f in affected[:MAX_NAMES]]
    more = len(affected) - len(names)
    return f" ({', '.join(names)}{f' and {more} more' if more > 0 else ''})"
