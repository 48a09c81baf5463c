"""One sequence to one master. The stages, in order:

    calibration   raw frames calibrated with ccdproc into a workspace (`flatd.calibrate.
                  stage`; a sequence of calibrated frames passes through untouched)
    checks        frames unlike the others, too faint, too bright, saturated (`checks`,
                  on the headers, then on the levels pass: `engine.measure_frames`)
    engine        the combination, once (`engine.combine`)
    QA            the master against its inputs and the previous sequence's master (`qa`;
                  the caller says which that is: `qa.Baseline`); a mosaic's extension by
                  extension, judged as a whole (`mosaic_qa`)
    write         the master, atomically, its INPUTS naming the indexed (raw) files and
                  their duplicates (`masters`), its settings, the preview

The one place where the stages meet for a single sequence, so that `flatd combine` and
the daemon make masters in exactly the same way. Where the master stands among the others
(`latest/`, the masters it supersedes) is the caller's to settle (`latest.Curator`);
`combine_and_publish` does both, for the daemon, `flatd combine` and `flatd remake`.

A combination is abandoned when its `cancel` event is set (the daemon stopping): before
each raw frame is calibrated, between the stages, and inside the engine after each band of
rows; nothing is written then and the outcome is "cancelled". An input rewritten, replaced
or removed while its sequence is combined (a camera writing a file again in place, an
archiving script) is the outcome "changed", naming the files, not a failure: the sequence
is to be combined again with their new content.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from flatd import engine
from flatd.calibrate import CalibrationUnavailable, MasterLibraries
from flatd.calibrate.stage import Inputs, calibrated_inputs
from flatd.config import Config
from flatd.frames import Frame
from flatd.inputs.index import FlatSequence
from flatd.outputs import masters
from flatd.outputs.latest import Curator, Published
from flatd.outputs.masters import MasterFile
from flatd.outputs.settings import limit_cards
from flatd.quality import checks, qa
from flatd.quality.checks import saturation_levels
from flatd.quality.mosaic import MosaicQA, assess_mosaic, extension_cards
from flatd.quality.qa import Baseline
from flatd.reasons import reason_of

log = structlog.get_logger("flatd.pipeline")

# waiting: for a master bias/dark; changed: an input changed on disk while being combined;
# cancelled: the daemon is stopping (nothing written)
Outcome = Literal["done", "too_few", "failed", "waiting", "changed", "cancelled"]


class _Cancelled(Exception):
    """Raised inside the pipeline (and the engine, through its progress callback) to
    abandon a combination whose `cancel` event is set; never leaves `make_master`."""


class InputsChanged(Exception):
    """Inputs that are no longer the files indexed (rewritten, replaced or removed) while
    their sequence was being combined."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        super().__init__(", ".join(p.name for p in paths) + " changed while being combined")


def changed_on_disk(frames: Iterable[Frame]) -> list[Path]:
    """The frames whose file on disk is not the one indexed any more: another size or
    modification time, or gone."""
    changed = []
    for frame in frames:
        try:
            found = os.stat(frame.path)
        except OSError:
            changed.append(frame.path)
            continue
        if (found.st_size, found.st_mtime_ns) != (frame.size, frame.mtime_ns):
            changed.append(frame.path)
    return changed


@dataclass
class Result:
    """What became of one sequence."""

    sequence: FlatSequence
    outcome: Outcome
    reason: str = ""
    record: masters.MasterRecord | None = None
    stats: list[engine.FrameStats] = field(default_factory=list)
    rejected: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0
    changed: list[Path] = field(default_factory=list)  # inputs that changed meanwhile
    published: Published | None = None  # where the master stands among the others

    @property
    def n_used(self) -> int:
        return len(self.sequence.frames) - len(self.rejected)


def make_master(
    sequence: FlatSequence,
    config: Config,
    *,
    output_dir: Path | None = None,
    progress: engine.Progress | None = None,
    cancel: threading.Event | None = None,
    libraries: MasterLibraries | None = None,
    baseline: Baseline | None = None,
) -> Result:
    """Calibrate, check, combine and write one sequence. Never raises for bad data: a
    failure is an outcome with its reason (the caller logs it and carries on); no master
    bias or dark for its raw frames yet is the outcome "waiting"; an input that changed on
    disk meanwhile, "changed"; `cancel` set before the master is written, "cancelled".
    `libraries` are the master biases and darks (kept by the daemon between sequences; by
    default from the config); `baseline` is what QA compares the master with (by default
    nothing). What `progress` raises is raised (nothing has been written then)."""
    started = time.perf_counter()
    result = Result(sequence, "failed")
    stage = _Stage(
        config,
        output_dir or config.output.directory,
        _cancellable(progress, cancel),
        baseline or Baseline(),
    )
    libraries = libraries or MasterLibraries.from_settings(config.calibrate, Path.cwd())
    rows = max((f.shape[0] for f in sequence.frames), default=0)  # raw ones, while calibrating
    try:
        stage.checkpoint(0, rows)
        with calibrated_inputs(
            sequence, config, stage.output_dir, libraries, lambda: stage.checkpoint(0, rows)
        ) as inputs:
            try:
                _fill(result, inputs, stage)
            finally:
                _name_indexed_frames(result, inputs)
    except _Cancelled:
        result.outcome, result.reason, result.record = "cancelled", "daemon stopping", None
    except CalibrationUnavailable as exc:
        result.outcome, result.reason = "waiting", exc.waiting()
    except Exception as exc:
        _failed_or_changed(result, exc)
    result.seconds = time.perf_counter() - started
    if result.record is not None:
        result.record.duration_s = round(result.seconds, 3)
    return result


def combine_and_publish(
    sequence: FlatSequence,
    config: Config,
    curator: Curator,
    *,
    claimers: list[MasterFile] | None = None,
    replaces: Iterable[Path] = (),
    progress: engine.Progress | None = None,
    cancel: threading.Event | None = None,
    libraries: MasterLibraries | None = None,
) -> Result:
    """`make_master` into the curator's output directory, compared with the master of the
    group's previous sequence; then published: the masters that claimed its frames
    (`claimers`, by default those on disk) are superseded and `latest/` follows the rule
    (`latest.Curator`); `replaces` are superseded whatever they hold (a remake)."""
    claimers = curator.catalogue.claimers(sequence) if claimers is None else claimers
    exclude = [m.path for m in claimers]
    result = make_master(
        sequence,
        config,
        output_dir=curator.output_dir,
        progress=progress,
        cancel=cancel,
        libraries=libraries,
        baseline=curator.baseline(sequence.group, sequence.start, exclude),
    )
    if result.record is not None:
        result.published = curator.publish(result.record, claimers, replaces)
    return result


def _failed_or_changed(result: Result, exc: Exception) -> None:
    """What an exception during the stages means: the outcome "changed" when an input is
    not the file indexed any more (whatever its read raised: the race explains it),
    "failed" for bad data, else raised again (a bug, or `progress` abandoning)."""
    if isinstance(exc, InputsChanged):
        changed = exc.paths
    else:
        changed = changed_on_disk(result.sequence.frames)
    if changed:
        result.outcome, result.changed = "changed", changed
        result.reason = str(InputsChanged(changed))
    elif isinstance(exc, OSError | ValueError | MemoryError):
        result.outcome, result.reason = "failed", reason_of(exc)
    else:
        raise exc


@dataclass(frozen=True)
class _Stage:
    """What every stage of one combination needs besides the frames."""

    config: Config
    output_dir: Path
    progress: engine.Progress | None  # the caller's, raising _Cancelled once `cancel` is set
    baseline: Baseline

    def checkpoint(self, done: int, total: int) -> None:
        """Between two stages: the combination may be abandoned here (by raising)."""
        if self.progress is not None:
            self.progress(done, total)


def _cancellable(
    progress: engine.Progress | None, cancel: threading.Event | None
) -> engine.Progress | None:
    """The engine's progress callback, which abandons the combination at its next band
    once `cancel` is set (the engine's documented way to be stopped)."""
    if cancel is None:
        return progress

    def report(done: int, total: int) -> None:
        if cancel.is_set():
            raise _Cancelled
        if progress is not None:
            progress(done, total)

    return report


def _fill(result: Result, inputs: Inputs, stage: _Stage) -> None:
    config = stage.config
    frames = inputs.frames  # calibrated copies of raw frames, until the engine is done
    rows = max((f.shape[0] for f in frames), default=0)
    result.rejected = {**inputs.rejected, **checks.odd_frames(frames)}
    if _too_few(result, config):
        return
    stage.checkpoint(0, rows)
    levels = _measure(frames, result, config)
    if _too_few(result, config):
        return
    stage.checkpoint(0, rows)
    combined = engine.combine(
        frames,
        config.combine,
        rejected=result.rejected,
        levels=levels,
        saturation={f.path: saturation_levels(f, config) for f in frames},
        min_response=config.qa.min_response,
        progress=stage.progress,
        scratch=stage.output_dir,
    )
    stage.checkpoint(rows, rows)
    combined, frames = inputs.identify(combined), inputs.originals  # the indexed files again
    result.stats = combined.stats
    if combined.extensions:  # a mosaic: extension by extension
        assessment: qa.MasterQA = assess_mosaic(combined, frames, stage.baseline, config)
    else:
        assessment = qa.assess(
            combined.data,
            combined.uncertainty,
            combined.mask,
            _used_levels_in_electrons(frames, combined.stats, config),
            stage.baseline,
            config.qa.max_change,
        )
    stage.checkpoint(rows, rows)
    record = masters.write_master(
        combined,
        frames,
        result.sequence.group,
        result.sequence.start,
        config,
        output_dir=stage.output_dir,
        qa_cards=assessment.header_cards() + limit_cards(config),
        calibration=inputs.provenance,
        extension_qa=extension_cards(assessment),
        duplicates=result.sequence.duplicates,
    )
    record.qa = assessment.to_dict()
    if config.output.preview:
        _preview(record, combined, frames)
        _ratio_picture(record, assessment, config.qa.max_change, combined)
    result.record, result.outcome = record, "done"


def _name_indexed_frames(result: Result, inputs: Inputs) -> None:
    """The result's rejections by the indexed frames' paths (the raw files rather than
    their calibrated copies), however far the sequence went (its rows are named so by
    `Inputs.identify` once combined)."""
    result.rejected = {inputs.indexed(p): reason for p, reason in result.rejected.items()}


def _measure(frames: list[Frame], result: Result, config: Config) -> dict[Path, engine.FrameLevels]:
    """Every frame's levels in one pass over its pixels, and the frame checks settled on
    them (levels, saturation, unlike the others), so that the sequence is combined once."""
    to_measure = [f for f in frames if f.path not in result.rejected]
    measured = engine.measure_frames(
        to_measure, [saturation_levels(f, config) for f in to_measure], config.combine
    )
    levels = {}
    for frame, level in zip(to_measure, measured, strict=True):
        if isinstance(level, str):
            result.rejected[frame.path] = level
        else:
            levels[frame.path] = level
    changed = changed_on_disk(f for f in to_measure if f.path not in levels)
    if changed:  # unreadable because a camera or a script is writing it again
        raise InputsChanged(changed)
    result.rejected.update(checks.level_rejections(levels, config))
    candidates = {p: level for p, level in levels.items() if p not in result.rejected}
    scored = engine.score_structure(candidates)
    levels.update(scored)
    result.rejected.update(checks.structure_outliers(scored))
    return levels


def _used_levels_in_electrons(
    frames: list[Frame], stats: list[engine.FrameStats], config: Config
) -> list[float]:
    gains = {f.path: config.combine.gain or f.extras.get("GAIN", 0.0) or 1.0 for f in frames}
    return [s.median * gains[s.path] for s in stats if s.used]


def _preview(
    record: masters.MasterRecord, combined: engine.CombineResult, frames: list[Frame]
) -> None:
    from flatd.pictures.preview import write_preview

    stats = {s.path: s for s in combined.stats}
    levels = [
        (
            f.path.name,
            stats[f.path].median,
            stats[f.path].mean,
            stats[f.path].used,
            stats[f.path].reason,
        )
        for f in frames
        if f.path in stats
    ]
    title = f"{record.path.name}: {record.n_frames} frames, {record.n_rejected} rejected"
    try:
        if combined.extensions:
            from flatd.pictures.mosaic import draw_preview

            draw_preview(record.path, combined, title, levels)
        else:
            write_preview(record.path, combined.data, combined.mask, title, levels)
    except Exception as exc:  # a quicklook must never cost the master
        log.warning("preview_failed", path=str(record.path), reason=reason_of(exc))


def _ratio_picture(
    record: masters.MasterRecord,
    assessment: qa.MasterQA,
    max_change: float,
    combined: engine.CombineResult,
) -> None:
    """What changed since the previous master, beside the master; none (and an older one
    removed) when there is nothing to compare with."""
    from flatd.pictures.preview import ratio_path, write_ratio_picture

    comparison = assessment.comparison
    try:
        if isinstance(assessment, MosaicQA) and assessment.previous is not None:
            from flatd.pictures.mosaic import draw_ratio_picture

            title = _ratio_title(record, assessment, max_change)
            draw_ratio_picture(record.path, combined, assessment, title)
            return
        if comparison is None or assessment.previous is None:
            ratio_path(record.path).unlink(missing_ok=True)
            return
        title = _ratio_title(record, assessment, max_change)
        write_ratio_picture(record.path, comparison.blocks, comparison.blocks_masked, title)
    except Exception as exc:  # a picture must never cost the master
        log.warning("ratio_picture_failed", path=str(record.path), reason=reason_of(exc))


def _ratio_title(record: masters.MasterRecord, assessment: qa.MasterQA, max_change: float) -> str:
    """The ratio picture's title: what was compared and what QA measured (a mosaic's
    largest change of any extension)."""
    return (
        f"{record.path.name} / {Path(assessment.previous or '?').name}\n"
        f"rms {assessment.change_rms or 0.0:.4f}, {assessment.changed_fraction or 0.0:.2%} of "
        f"{qa.BLOCK}x{qa.BLOCK} blocks changed by > {max_change:g}"
        + (" — QA FLAGGED" if assessment.flagged else "")
    )


def _too_few(result: Result, config: Config) -> bool:
    if result.n_used >= config.sequence.min_frames:
        return False
    result.outcome = "too_few"
    result.reason = (
        f"{result.n_used} usable frame(s), sequence.min_frames = {config.sequence.min_frames}"
    )
    if result.rejected:
        reasons = Counter(r.split(":")[0] for r in result.rejected.values())
        result.reason += "; rejected: " + ", ".join(f"{n}x {r}" for r, n in reasons.items())
    return True
