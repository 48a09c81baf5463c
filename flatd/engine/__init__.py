"""The combination engine: flat frames in, one normalised master out.

Its face is `combine()` (a sequence's frames → `CombineResult`) and the levels pass
(`measure_frames` → `FrameLevels`, `score_structure`). The files show the steps:

- `levels`     frame levels: the exact streaming median tally, mean, saturated fraction,
               and a sample of rows for `structure`: each frame's departure from the
               sequence's median image, judged before anything is combined;
- `ordering`   each pixel's sorted values: the sorting network and the merge-path MAD;
- `rejection`  which values a pixel keeps: the clip, and the `noise` deviation;
- `numpy_band` the numpy engine's band (every setting; the reference);
- `bands`      band scheduling: rows per band, workers; `memory`: the ledger;
- `plane`      one image plane of N frames combined given N scales (the reusable step);
- `normalise`  median 1, dead and weak pixels masked;
- `pixels`     where a plane's values are (`PixelSource`) and reading them;
- `kernel`     the binding of the compiled kernel, `_kernel.c` its source;
- `mosaic`     a mosaic's frames: extension by extension, normalised once over all;
- `outputs`    a mosaic's combined planes, in memory or in a scratch file until written;
- `combine`    the steps in order.
"""

from flatd.engine.bands import Progress
from flatd.engine.combine import combine
from flatd.engine.kernel import EngineChoice, log_choice
from flatd.engine.levels import measure, measure_frames, measure_planes
from flatd.engine.memory import tune_allocator
from flatd.engine.pixels import PixelSource
from flatd.engine.plane import combine_plane
from flatd.engine.results import (
    CombineResult,
    ExtensionResult,
    FrameLevels,
    FrameStats,
    MasterPlane,
    PlaneResult,
    PlaneSample,
)
from flatd.engine.structure import score_structure

__all__ = [
    "CombineResult",
    "EngineChoice",
    "ExtensionResult",
    "FrameLevels",
    "FrameStats",
    "MasterPlane",
    "PixelSource",
    "PlaneResult",
    "PlaneSample",
    "Progress",
    "combine",
    "combine_plane",
    "log_choice",
    "measure",
    "measure_frames",
    "measure_planes",
    "score_structure",
    "tune_allocator",
]
