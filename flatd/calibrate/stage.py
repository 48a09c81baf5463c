"""The pipeline's first stage: a sequence's raw frames calibrated before anything else sees
them, frame by frame, into a private workspace.

    with calibrated_inputs(sequence, config, output_dir, libraries) as inputs:
        inputs.frames                  # what the frame checks and the engine read: the
                                       # calibrated copies (float32, trimmed) of raw frames
        inputs.rejected                # frames refused here, by their own (raw) path
        ...checks, engine...
        combined = inputs.identify(combined)   # its rows name the raw files again
        inputs.provenance              # the CAL* cards and HISTORY for the master's header
    # the workspace and its copies are gone

A sequence without raw frames passes through untouched (no workspace, no copy). The raw
file stays each frame's identity: the INPUTS table, the status file and the log name it,
with its size and modification time, so the daemon knows a master is up to date. A frame
that cannot be calibrated is refused with its reason; a sequence with no master bias or
dark that fits *yet* raises `CalibrationUnavailable` (its caller waits).

Raw and calibrated frames in one sequence are never combined together: the minority is
refused with a reason, as `checks.odd_frames` refuses a shape unlike the others' (on a
tie the calibrated frames are kept, which need nothing that could be missing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from flatd.calibrate.errors import CalibrationError, CalibrationUnavailable
from flatd.calibrate.frame import CalibratedFrame, Calibrator
from flatd.calibrate.provenance import Provenance, provenance
from flatd.calibrate.recipe import MasterLibraries, Recipe, plan
from flatd.calibrate.workspace import Workspace
from flatd.frames import Frame
from flatd.frames.cards import read_header

if TYPE_CHECKING:
    from flatd.config import Config
    from flatd.engine import CombineResult
    from flatd.inputs.index import FlatSequence

log = structlog.get_logger("flatd.calibrate")


@dataclass(frozen=True)
class CalibrationPlan:
    """What calibrating a sequence will do, from headers alone (`flatd scan` shows it)."""

    raw: tuple[Frame, ...]  # the frames to calibrate
    refused: dict[Path, str]  # frames left out, and why
    recipe: Recipe | None  # None: nothing is calibrated

    @property
    def to_calibrate(self) -> int:
        """How many of the raw frames are calibrated (not refused)."""
        return len(self.raw) - sum(f.path in self.refused for f in self.raw)

    def to_dict(self) -> dict[str, Any]:
        """For `flatd scan --json`."""
        recipe = self.recipe
        return {
            "action": "calibrate" if recipe else "none",
            "frames": self.to_calibrate,
            "steps": list(recipe.steps) if recipe else [],
            "overscan": recipe.overscan_method() if recipe and recipe.overscan else None,
            "bias": str(recipe.bias.path) if recipe and recipe.bias else None,
            "dark": str(recipe.dark.path) if recipe and recipe.dark else None,
            "refused": [{"path": str(p), "reason": r} for p, r in self.refused.items()],
        }

    def describe(self) -> str:
        """One line: the steps and the masters, e.g. `7 raw frames: subtract_overscan
        (median), trim_image, subtract_bias with master_bias_20261123T153000.fits`."""
        recipe = self.recipe
        if recipe is None:
            return "raw frames refused: the sequence's other frames are calibrated"
        masters = {"subtract_bias": recipe.bias, "subtract_dark": recipe.dark}
        steps = []
        for step in recipe.steps:
            master = masters.get(step)
            if step == "subtract_overscan":
                steps.append(f"{step} ({recipe.overscan_method()})")
            else:
                steps.append(f"{step} with {master.path.name}" if master else step)
        return f"{self.to_calibrate} raw frame(s) to calibrate: {', '.join(steps)}"


def plan_sequence(
    sequence: FlatSequence, config: Config, libraries: MasterLibraries
) -> CalibrationPlan:
    """The frames to calibrate, those refused and the recipe; headers only. Raises
    CalibrationUnavailable when no master bias or dark fits the sequence yet."""
    raw = tuple(f for f in sequence.frames if f.raw)
    calibrated = [f for f in sequence.frames if not f.raw]
    if not raw:
        return CalibrationPlan((), {}, None)
    if len(raw) <= len(calibrated):
        refused = {
            f.path: f"raw frame ({_overscan(f)}) in a sequence of {len(calibrated)} calibrated "
            "frames: not combined with them"
            for f in raw
        }
        return CalibrationPlan(raw, refused, None)
    refused = {
        f.path: f"calibrated frame (no overscan section, or its bias already subtracted) in a "
        f"sequence of {len(raw)} raw frames: not combined with them"
        for f in calibrated
    }
    recipe = _recipe(raw, sequence.start, config, libraries, refused)  # None: all refused
    return CalibrationPlan(raw, refused, recipe)


def _recipe(
    raw: tuple[Frame, ...],
    start: datetime,
    config: Config,
    libraries: MasterLibraries,
    refused: dict[Path, str],
) -> Recipe | None:
    """The recipe from the first raw frame whose header makes one; the frames before it are
    refused with the reason (a section outside the image, a named master that does not
    fit)."""
    for frame in raw:
        try:
            return plan(
                config.calibrate,
                _header(frame),
                start,
                libraries,
                config.frames.binning_keywords,
            )
        except CalibrationUnavailable:
            raise
        except CalibrationError as exc:
            refused[frame.path] = exc.reason
    return None


def _header(frame: Frame) -> Any:
    from astropy.io import fits

    try:
        return fits.getheader(frame.path, frame.hdu)
    except (OSError, ValueError, IndexError) as exc:
        raise CalibrationError(f"cannot read the header of {frame.path.name}: {exc}") from None


@dataclass
class Inputs:
    """A sequence's frames as the checks and the engine read them, and the way back to the
    indexed frames (the raw files)."""

    frames: list[Frame]  # what the checks and the engine read
    originals: list[Frame]  # the sequence's frames as indexed
    rejected: dict[Path, str] = field(default_factory=dict)  # refused here, by indexed path
    provenance: Provenance | None = None
    indexed_frames: dict[Path, Frame] = field(default_factory=dict)  # copy's path -> raw frame

    def indexed(self, path: Path) -> Path:
        """The indexed frame's path for a path the engine read (itself for a frame that
        needed no calibration)."""
        frame = self.indexed_frames.get(path)
        return frame.path if frame is not None else path

    def identify(self, combined: CombineResult) -> CombineResult:
        """`combined` with its rows naming the indexed frames, plus one row per frame
        refused here (not used, with the reason), for the INPUTS table."""
        if not self.indexed_frames and not self.rejected:
            return combined
        from flatd.engine import FrameStats

        stats = [replace(s, path=self.indexed(s.path)) for s in combined.stats]
        stats += [
            FrameStats(
                path=path,
                median=float("nan"),
                mean=float("nan"),
                scale=0.0,
                used=False,
                reason=reason,
                clipped_fraction=0.0,
            )
            for path, reason in self.rejected.items()
        ]
        return replace(combined, stats=stats)


@contextlib.contextmanager
def calibrated_inputs(
    sequence: FlatSequence,
    config: Config,
    output_dir: Path,
    libraries: MasterLibraries,
    before_each: Callable[[], None] = lambda: None,
) -> Iterator[Inputs]:
    """The calibration stage (see the module docstring); the workspace lives until the
    `with` block ends. Raises CalibrationUnavailable while no master fits yet.
    `before_each` is called before each raw frame is calibrated: what it raises abandons
    the stage (the workspace is removed)."""
    frames = list(sequence.frames)
    chosen = plan_sequence(sequence, config, libraries)
    if chosen.recipe is None:
        kept = [f for f in frames if f.path not in chosen.refused]
        yield Inputs(kept, frames, dict(chosen.refused))
        return
    with Workspace(output_dir) as workspace:
        yield _calibrate(frames, chosen, chosen.recipe, workspace, before_each)


def _calibrate(
    frames: list[Frame],
    chosen: CalibrationPlan,
    recipe: Recipe,
    workspace: Workspace,
    before_each: Callable[[], None],
) -> Inputs:
    """Calibrate the plan's raw frames one at a time (the masters released afterwards)."""
    rejected = dict(chosen.refused)
    done: list[CalibratedFrame] = []
    copies: dict[Path, Frame] = {}
    with Calibrator(recipe) as calibrator:
        for frame in chosen.raw:
            if frame.path in rejected:
                continue
            before_each()
            try:
                calibrated = calibrator.calibrate(frame.path, workspace)
            except CalibrationError as exc:
                rejected[frame.path] = exc.reason
                continue
            done.append(calibrated)
            copies[frame.path] = _engine_frame(frame, calibrated)
        tool = calibrator.tool
    log.debug("calibrated", frames=len(done), refused=len(rejected), steps=list(recipe.steps))
    engine_frames = [copies[f.path] for f in frames if f.path in copies]
    return Inputs(
        frames=engine_frames,
        originals=frames,
        rejected=rejected,
        provenance=provenance(recipe, done, tool) if done else None,
        indexed_frames={copies[f.path].path: f for f in frames if f.path in copies},
    )


def _engine_frame(raw: Frame, calibrated: CalibratedFrame) -> Frame:
    """The Frame the engine reads for a calibrated copy: plain float32 at the offset its
    header ends. Its saturation level is the raw one less the overscan level subtracted."""
    stat = calibrated.path.stat()
    with calibrated.path.open("rb") as stream:
        _, data_offset = read_header(stream, first=True, wanted=frozenset())
    extras = dict(raw.extras)
    if "SATURATE" in extras and calibrated.overscan_level is not None:
        extras["SATURATE"] -= calibrated.overscan_level
    return replace(
        raw,
        path=calibrated.path,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        shape=calibrated.shape,
        hdu=0,
        bitpix=-32,
        compression="none",
        data_offset=data_offset,
        bscale=1.0,
        bzero=0.0,
        extras=extras,
        raw=False,
        overscan=None,
    )


def _overscan(frame: Frame) -> str:
    keyword, section = frame.overscan or ("overscan", "?")
    return f"{keyword} = '{section}'"
