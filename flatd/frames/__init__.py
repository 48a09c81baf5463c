"""One file's headers to a `Frame` (a flat to combine: its group, date and where its
pixels lie) or a `Skip` (why not), whichever header dialect its camera writes.

The rooms, in the order a header goes through them:

- `cards`: the raw 2880-byte header blocks; only the wanted cards parsed (HIERARCH too);
- `dialects`: the table of keywords each role may come from, the flat-type rule and the
  value normalisers (data, so that a new camera is one line of config or of the table);
- `frametype`: flat or not, and why not;
- `roles`: the group key (FILTER, INSTRUME, XBINNING, YBINNING and the user's keys) and
  the keyword each value came from;
- `dates`: when the frame was taken;
- `reader`: `read_frame`, which runs the above and checks the file holds its data;
- `notes`: what a group's frames say about how they were read, for scan and status.
"""

from flatd.frames.cards import NOT_SIMPLE, simple_value
from flatd.frames.dialects import is_flat_type, missing_value
from flatd.frames.model import (
    Compression,
    Extension,
    Frame,
    GroupKey,
    GroupValue,
    Layout,
    Skip,
    SkipKind,
    describe_layout,
)
from flatd.frames.notes import group_notes, sources
from flatd.frames.reader import read_frame, wanted_keywords
from flatd.frames.roles import binning_of, canonical_group

__all__ = [
    "NOT_SIMPLE",
    "Compression",
    "Extension",
    "Frame",
    "GroupKey",
    "GroupValue",
    "Layout",
    "Skip",
    "SkipKind",
    "binning_of",
    "canonical_group",
    "describe_layout",
    "group_notes",
    "is_flat_type",
    "missing_value",
    "read_frame",
    "simple_value",
    "sources",
    "wanted_keywords",
]
