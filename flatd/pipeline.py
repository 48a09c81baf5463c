"""One sequence to one published master: frame checks, the engine, the write, `latest/`.

The one place where the stages meet for a single sequence, so that `flatd combine` and
the daemon make masters in exactly the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flatd import combine as engine
from flatd import masters
from flatd.config import Config
from flatd.frames import Frame
from flatd.index import Sequence

Outcome = Literal["done", "too_few", "failed"]


@dataclass
class Result:
    """What became of one sequence."""

    sequence: Sequence
    outcome: Outcome
    reason: str = ""
    record: masters.MasterRecord | None = None
    stats: list[engine.FrameStats] = field(default_factory=list)
    rejected: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_used(self) -> int:
        return len(self.sequence.frames) - len(self.rejected)


def make_master(sequence: Sequence, config: Config, *, output_dir: Path | None = None,
                progress: engine.Progress | None = None,
                promote: Callable[[masters.MasterRecord], bool] | None = None) -> Result:
    """Check, combine and write one sequence. Never raises for bad data: a failure is an
    outcome with its reason (the caller logs it and carries on)."""
    started = time.perf_counter()
    result = Result(sequence, "failed")
    try:
        _fill(result, config, output_dir or config.output.directory, progress, promote)
    except (OSError, ValueError, MemoryError) as exc:
        result.outcome, result.reason = "failed", f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - started
    if result.record is not None:
        result.record.duration_s = round(result.seconds, 3)
    return result


def _fill(result: Result, config: Config, output_dir: Path,
          progress: engine.Progress | None,
          promote: Callable[[masters.MasterRecord], bool] | None) -> None:
    frames = list(result.sequence.frames)
    result.rejected = odd_shapes(frames)
    if _too_few(result, config):
        return
    to_measure = [f for f in frames if f.path not in result.rejected]
    measured = engine.measure_frames(to_measure, [saturation_level(f, config) for f in to_measure],
                                     config.combine)
    levels = {}
    for frame, level in zip(to_measure, measured, strict=True):
        if isinstance(level, str):
            result.rejected[frame.path] = level
        else:
            levels[frame.path] = level
    result.rejected.update(level_rejections(levels, config))
    if _too_few(result, config):
        return
    combined = engine.combine(frames, config.combine, rejected=result.rejected,
                              levels=levels, progress=progress)
    result.stats = combined.stats
    record = masters.write_master(combined, frames, result.sequence.group,
                                  result.sequence.start, config, output_dir=output_dir)
    if config.output.latest and (promote is None or promote(record)):
        masters.promote_latest(record.path, result.sequence.group, output_dir)
        record.promoted = True
    result.record, result.outcome = record, "done"


def _too_few(result: Result, config: Config) -> bool:
    if result.n_used >= config.sequence.min_frames:
        return False
    result.outcome = "too_few"
    result.reason = (f"{result.n_used} usable frame(s), sequence.min_frames = "
                     f"{config.sequence.min_frames}")
    if result.rejected:
        reasons = Counter(r.split(":")[0] for r in result.rejected.values())
        result.reason += "; rejected: " + ", ".join(f"{n}x {r}" for r, n in reasons.items())
    return True


def odd_shapes(frames: list[Frame]) -> dict[Path, str]:
    """Frames whose shape differs from the sequence's most common one."""
    if not frames:
        return {}
    majority = Counter(f.shape for f in frames).most_common(1)[0][0]
    return {f.path: f"shape {f.shape[1]}x{f.shape[0]} differs from the sequence's "
                    f"{majority[1]}x{majority[0]}"
            for f in frames if f.shape != majority}


def level_rejections(levels: dict[Path, engine.FrameLevels], config: Config) -> dict[Path, str]:
    """Frames too faint, too bright or too saturated to use, with the measured values."""
    qa = config.qa
    reasons = {}
    for path, level in levels.items():
        if level.median < qa.min_level:
            reasons[path] = f"too faint: median {level.median:.0f} < qa.min_level {qa.min_level:g}"
        elif level.median > qa.max_level:
            reasons[path] = (f"too bright: median {level.median:.0f} > qa.max_level "
                             f"{qa.max_level:g}")
        elif level.saturated_fraction > qa.max_saturated_fraction:
            reasons[path] = (f"saturated: {level.saturated_fraction:.4f} of pixels > "
                             f"qa.max_saturated_fraction {qa.max_saturated_fraction:g}")
    return reasons


def saturation_level(frame: Frame, config: Config) -> float:
    """The configured saturation level, else the frame's SATURATE; 0 means not checked."""
    return config.qa.saturation_level or frame.extras.get("SATURATE", 0.0)
