"""A mosaic's frames combined into one master: extension by extension, band by band.

Frames of several image planes (a mosaic's CCDs, a multi-amplifier camera's amplifiers)
are combined one extension at a time (`plane.combine_plane`, the kernel where it
applies, on plain, gzip and tile-compressed files alike), each with its frames' scales
and saturation levels, its own sigma clip, within `combine.mem_limit_mb`:

- `combine.normalise = "mosaic"` (the default): each frame is scaled by 1/its level
  over all its extensions (the levels pass measures all of them at once), and the master
  is normalised once, by the median of all its extensions' good pixels: the relative
  gains of the amplifiers and CCDs stay in the master, where flat-fielding corrects them;
- `"extension"`: each extension of each frame scaled by 1/its own level, and each of the
  master's extensions normalised to median 1 on its own (as if each were combined alone).

The combined planes wait in memory when they all fit, else in a scratch file
(`outputs.Outputs`), until the master is normalised; the result hands them out one at a
time (`CombineResult.plane(e)`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flatd.config import CombineConfig
from flatd.engine import kernel
from flatd.engine.bands import Progress, plan_bands
from flatd.engine.levels import Saturation, measure, plane_saturations
from flatd.engine.memory import Ledger
from flatd.engine.outputs import Outputs
from flatd.engine.pixels import PixelSource
from flatd.engine.plane import combine_plane
from flatd.engine.rejection import NoiseModel, noise_models
from flatd.engine.results import ExtensionResult, FrameLevels, PlaneResult
from flatd.frames import describe_layout

if TYPE_CHECKING:
    from flatd.frames import Frame

MIN_BAND_ROWS = 16  # planes are kept in memory only while bands stay at least this tall


def layouts_differ(frames: Sequence[Frame]) -> str:
    """Why `frames` cannot be combined plane by plane ("" when they can)."""
    layouts = {f.layout for f in frames}
    if len(layouts) > 1:
        return f"frames of different layouts: {sorted(map(describe_layout, layouts))}"
    return ""


class MosaicJob:
    """One mosaic's combination: the frames' planes, scales and saturation levels."""

    def __init__(
        self,
        used: Sequence[Frame],
        settings: CombineConfig,
        levels: dict[Path, FrameLevels],
        saturation: Mapping[Path, Saturation],
        scratch: Path | None,
    ) -> None:
        self.used, self.settings = list(used), settings
        self.extensions = used[0].extensions
        self.sources = [PixelSource.planes_of(f) for f in used]
        count = len(self.extensions)
        self.saturations = [plane_saturations(saturation.get(f.path, 0.0), count) for f in used]
        self.scales = self._scales(levels)
        self.ledger = Ledger()
        total = sum(e.shape[0] * e.shape[1] for e in self.extensions)
        spill = None if self._outputs_fit() else (scratch or Path(tempfile.gettempdir()))
        self.outputs = Outputs(total, self.ledger, spill)

    def _scales(self, levels: dict[Path, FrameLevels]) -> list[list[float]]:
        """Per extension, each frame's scale: its mosaic's, or the extension's own."""
        from flatd.engine.combine import scale_of  # combine imports this module

        count, how = len(self.extensions), self.settings.scale
        if self.settings.normalise != "extension":
            frame_scales = [scale_of(levels[f.path], how, f.path.name) for f in self.used]
            return [frame_scales] * count
        for i, frame in enumerate(self.used):
            if not levels[frame.path].plane_levels:
                levels[frame.path] = measure(
                    frame, self.saturations[i], self.settings.dtype, per_plane=True
                )
        return [
            [
                scale_of(_plane_level(levels[f.path], e), how, f"{f.path.name}[{name}]")
                for f in self.used
            ]
            for e, name in enumerate(x.name for x in self.extensions)
        ]

    def _outputs_fit(self) -> bool:
        """Whether every plane's outputs fit in memory beside the bands of any plane."""
        itemsize = np.dtype(self.settings.dtype).itemsize
        outputs = [e.shape[0] * e.shape[1] * (2 * itemsize + 1) for e in self.extensions]
        ordered = any(e.compression == "gzip" for e in self.extensions)
        n = len(self.used)
        for extension, own in zip(self.extensions, outputs, strict=True):
            ny, nx = extension.shape
            try:
                plan = plan_bands(
                    n,
                    extension.shape,
                    itemsize,
                    nx * 8,
                    ordered,
                    self.settings.mem_limit_mb,
                    kernel.worker_bytes(n),
                    held=sum(outputs) - own,
                )
            except MemoryError:
                return False
            if plan.rows_per_band < min(MIN_BAND_ROWS, ny):
                return False
        return True

    def run(
        self, progress: Progress | None, min_response: float
    ) -> tuple[list[ExtensionResult], np.ndarray, PlaneResult]:
        """Combine every extension, then normalise: the extensions' results, the values
        each frame lost to the clip, and the last plane's result (threads, engine)."""
        clipped = np.zeros(len(self.used), np.int64)
        total_rows = sum(e.shape[0] for e in self.extensions)
        done_rows = 0
        last: PlaneResult | None = None
        for e, extension in enumerate(self.extensions):
            last = combine_plane(
                [sources[e] for sources in self.sources],
                self.scales[e],
                self.settings,
                saturations=[levels[e] for levels in self.saturations],
                noise=self._noise(e),
                progress=_offset(progress, done_rows, total_rows),
                ledger=self.ledger,
            )
            clipped += last.clipped
            done_rows += extension.shape[0]
            self.outputs.put(last)
        assert last is not None
        return self._normalise(min_response), clipped, last

    def _noise(self, e: int) -> list[NoiseModel] | None:
        if self.settings.deviation != "noise":
            return None
        names = [f"{f.path.name}[{f.extensions[e].name}]" for f in self.used]
        return noise_models(names, [f.extensions[e].extras for f in self.used], self.settings)

    def _normalise(self, min_response: float) -> list[ExtensionResult]:
        count = len(self.extensions)
        if self.settings.normalise == "extension":
            levels = [self.outputs.median([e]) for e in range(count)]
        else:
            levels = [self.outputs.median(range(count))] * count
        results = []
        for e, (extension, level) in enumerate(zip(self.extensions, levels, strict=True)):
            masked = self.outputs.normalise(e, level, min_response)
            results.append(
                ExtensionResult(
                    extension.name,
                    extension.hdu,
                    extension.shape,
                    extension.detsec,
                    level,
                    masked,
                )
            )
        return results


def _plane_level(levels: FrameLevels, e: int) -> FrameLevels:
    median, mean = levels.plane_levels[e]
    return FrameLevels(median, mean, levels.saturated_fraction)


def _offset(progress: Progress | None, before: int, total: int) -> Progress | None:
    """`progress` counting the rows of the extensions combined before this one."""
    if progress is None:
        return None
    report: Callable[[int, int], None] = progress
    return lambda done, _: report(before + done, total)
