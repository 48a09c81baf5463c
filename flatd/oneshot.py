"""The one-shot commands' work and what they print: `flatd scan` and `flatd combine` (the
same `frames` → `index` → `pipeline` path as the daemon, once, without watch, ingest or
the scheduler)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog

from flatd import engine
from flatd.calibrate import CalibrationUnavailable, MasterLibraries
from flatd.calibrate.stage import CalibrationPlan, plan_sequence
from flatd.config import Config, FramesConfig
from flatd.frames import Frame, Skip, SkipKind, describe_layout, group_notes
from flatd.frames import sources as frame_sources
from flatd.inputs.index import FlatSequence, Index, index_paths
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.latest import Curator
from flatd.outputs.masters import group_slug
from flatd.pipeline import Result, combine_and_publish
from flatd.quality.checks import saturation_levels
from flatd.reasons import crash_reason, one_line

log = structlog.get_logger("flatd.oneshot")


@dataclass
class ScanReport:
    """What `flatd scan` found: the index, each flat's levels, and how the headers were
    read (the keyword of each group key, the notes of each group, the files not taken
    summarised by reason); for sequences of raw frames, what calibrating them would do
    (a plan, or why they wait)."""

    index: Index
    levels: dict[Path, engine.FrameLevels]
    frames_config: FramesConfig = field(default_factory=FramesConfig)
    calibration: dict[FlatSequence, CalibrationPlan | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        skips = self.index.skips()
        return {
            "index": self.index.counts(),
            "groups": [self._group(key, seqs) for key, seqs in _by_group(self.index)],
            "skipped": [_skip_dict(s) for s in skips if not s.refused],
            "rejected": [_skip_dict(s) for s in skips if s.refused],
            "duplicates": [
                {"path": str(d.path), "duplicate_of": str(d.of)} for d in self.index.duplicates()
            ],
            "not_taken": [
                {"kind": kind, "reason": reason, "count": len(paths), "examples": paths[:3]}
                for kind, reason, paths in _not_taken(skips)
            ],
        }

    def _group(self, key: Any, sequences: list[FlatSequence]) -> dict[str, Any]:
        frames = [f for seq in sequences for f in seq.frames]
        return {
            "group": dict(key),
            "name": group_slug(key),
            "keywords": frame_sources(frames),
            "notes": group_notes(frames, self.frames_config, len(sequences)),
            "sequences": [
                {
                    "start": seq.start.isoformat(),
                    "end": seq.end.isoformat(),
                    **self._calibration_dict(seq),
                    "frames": [
                        {
                            "path": str(f.path),
                            "date": f.date.isoformat(),
                            "date_from_header": f.date_from_header,
                            "date_source": f.date_source,
                            "date_note": f.date_note,
                            "shape": list(f.shape),
                            "median": _rounded(self.levels.get(f.path)),
                            "raw": f.raw,
                            "layout": _layout_dicts(f),
                        }
                        for f in seq.frames
                    ],
                }
                for seq in sequences
            ],
        }

    def _calibration_dict(self, sequence: FlatSequence) -> dict[str, Any]:
        plan = self.calibration.get(sequence)
        if plan is None:
            return {}
        if isinstance(plan, str):
            return {"calibration": {"action": "wait", "reason": plan}}
        return {"calibration": plan.to_dict()}

    def _calibration_lines(self, sequence: FlatSequence) -> list[str]:
        plan = self.calibration.get(sequence)
        if plan is None:
            return []
        if isinstance(plan, str):
            return [f"    calibration: {plan}"]
        refused = [f"    refused: {p.name}: {reason}" for p, reason in plan.refused.items()]
        return [f"    calibration: {plan.describe()}", *refused]

    def render(self) -> str:
        counts = self.index.counts()
        lines = [
            f"{counts['frames']} files: {counts['flats']} flats, "
            f"{counts['skipped']} skipped, {counts['rejected']} rejected"
            + (f", {n} duplicates" if (n := self.index.duplicate_count()) else "")
        ]
        for key, sequences in _by_group(self.index):
            lines.extend(self._render_group(key, sequences))
        skips = self.index.skips()
        if skips:
            lines.append("\nnot taken:")
            lines.extend(
                f"  {len(paths)} file{'s' if len(paths) != 1 else ''} {kind}: {reason}"
                for kind, reason, paths in _not_taken(skips)
            )
        rejected = [s for s in skips if s.refused]
        if rejected:
            lines.append("\nrejected:")
            lines.extend(f"  {s.path}: {s.reason}" for s in rejected)
        duplicates = self.index.duplicates()
        if duplicates:
            lines.append("\nduplicates (the same frame at another path, used once):")
            lines.extend(f"  {d.path}: duplicate of {d.of}" for d in duplicates)
        return "\n".join(lines)

    def _render_group(self, key: Any, sequences: list[FlatSequence]) -> list[str]:
        frames = [f for seq in sequences for f in seq.frames]
        lines = [
            f"\ngroup {group_slug(key)}  ({_describe_group(key)}): {len(frames)} frames "
            f"in {len(sequences)} sequence(s)",
            f"  read from: {_describe_sources(frame_sources(frames))}",
        ]
        lines.extend(
            f"  note: {note}" for note in group_notes(frames, self.frames_config, len(sequences))
        )
        for seq in sequences:
            lines.append(
                f"  sequence {seq.start:%Y-%m-%d %H:%M:%S} .. {seq.end:%H:%M:%S}"
                f"  {len(seq.frames)} frames"
            )
            lines.extend(_layout_lines(seq))
            lines.extend(self._calibration_lines(seq))
            lines.extend(
                f"    {f.path.name:<40} {f.date:%H:%M:%S}{'' if f.date_from_header else '*'} "
                f"median {_level_text(self.levels.get(f.path))}{'  raw' if f.raw else ''}"
                for f in seq.frames
            )
        if any(not f.date_from_header for f in frames):
            lines.append("    (* dated by the file's time)")
        return lines


def scan_report(paths: Iterable[Path], config: Config) -> ScanReport:
    """Index `paths` and measure every flat's median level."""
    index = index_paths(paths, config)
    frames = index.frames()
    levels = {}
    measured = engine.measure_frames(
        frames, [saturation_levels(f, config) for f in frames], config.combine
    )
    for frame, level in zip(frames, measured, strict=True):
        if isinstance(level, str):
            index.add(Skip(frame.path, SkipKind.REFUSED, level, frame.size, frame.mtime_ns))
        else:
            levels[frame.path] = level
    return ScanReport(index, levels, config.frames, _calibration_plans(index, config))


def _calibration_plans(index: Index, config: Config) -> dict[FlatSequence, CalibrationPlan | str]:
    """What calibrating each sequence of raw frames would do, or why it would wait."""
    if config.calibrate.raw != "calibrate":
        return {}
    libraries = MasterLibraries.from_settings(config.calibrate, Path.cwd())
    plans: dict[FlatSequence, CalibrationPlan | str] = {}
    for sequence in index.sequences():
        if any(f.raw for f in sequence.frames):
            try:
                plans[sequence] = plan_sequence(sequence, config, libraries)
            except CalibrationUnavailable as exc:
                plans[sequence] = exc.waiting()
    return plans


def _layout_dicts(frame: Frame) -> list[dict[str, Any]]:
    """For `flatd scan --json`: each image plane of a frame (one for a single image)."""
    return [
        {
            "name": plane.name,
            "hdu": plane.hdu,
            "shape": list(plane.shape),
            "bitpix": plane.bitpix,
            "compression": plane.compression,
            "detsec": plane.detsec,
        }
        for plane in frame.planes
    ]


def _layout_lines(sequence: FlatSequence) -> list[str]:
    """`    layout: 4 extensions AMP1, AMP2, AMP3, AMP4 of 2048x2048` for a sequence of
    mosaic frames (each layout with its count when they differ); nothing for single
    images."""
    if not any(f.extensions for f in sequence.frames):
        return []
    counts = Counter(f.layout for f in sequence.frames)
    if len(counts) == 1:
        return [f"    layout: {describe_layout(next(iter(counts)))}"]
    return [
        f"    layout: {describe_layout(layout)} ({n} frame{'s' if n != 1 else ''})"
        for layout, n in counts.most_common()
    ]


def _not_taken(skips: list[Skip]) -> list[tuple[str, str, list[str]]]:
    """Skipped and rejected files by (kind, reason), most frequent first; the reasons
    name the keywords looked for ("no frame type keyword (looked for IMAGETYP, ...)")."""
    by_reason: dict[tuple[str, str], list[str]] = {}
    for skip in skips:
        by_reason.setdefault((skip.kind, skip.reason), []).append(str(skip.path))
    ordered = sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0]))
    return [(kind, reason, paths) for (kind, reason), paths in ordered]


def _describe_sources(sources: dict[str, str]) -> str:
    """`type IMAGETYP, FILTER FILTER1+FILTER2, XBINNING/YBINNING CCDSUM, INSTRUME none`."""
    parts = []
    for key, source in sources.items():
        if key == "YBINNING" and sources.get("XBINNING") == source:
            continue
        name = (
            "XBINNING/YBINNING" if key == "XBINNING" and sources.get("YBINNING") == source else key
        )
        parts.append(f"{name} {source or 'none'}")
    return ", ".join(parts)


@dataclass
class CombineSummary:
    results: list[Result]
    index: Index

    @property
    def failed(self) -> bool:
        """Whether `flatd combine` failed: a group failed, waits for a master bias or
        dark (which a one-shot command cannot wait for) or had an input rewritten while it
        was combined, or no master was written."""
        unfinished = ("failed", "waiting", "changed")
        return any(r.outcome in unfinished for r in self.results) or not self.written

    @property
    def written(self) -> list[Result]:
        return [r for r in self.results if r.record is not None]

    def why_no_master(self) -> str:
        """Why no master was written at all, in one line ("" when some was)."""
        if self.written:
            return ""
        counts = self.index.counts()
        if counts["frames"] == 0:
            return "no files matching watch.patterns in the paths given"
        if counts["flats"] == 0:
            skips = Counter(_reason_kind(s.reason) for s in self.index.skips())
            reasons = ", ".join(f"{kind} ({n})" for kind, n in skips.most_common(5))
            return f"{counts['frames']} files, none a flat: {reasons}"
        outcomes = "; ".join(
            f"{group_slug(r.sequence.group)} {r.sequence.start:%Y-%m-%d %H:%M}: {r.reason}"
            for r in self.results[:3]
        )
        more = f"; and {len(self.results) - 3} more" if len(self.results) > 3 else ""
        return (
            f"{counts['flats']} flats in {len(self.results)} sequence(s), none combined: "
            f"{outcomes}{more}"
        )

    def render(self) -> str:
        header = ("group", "sequence start", "used", "rejected", "median levels", "master", "s")
        rows = [_summary_row(r) for r in self.results]
        lines = [_table(header, rows)] if rows else ["no flat sequences found"]
        notes = [
            f"  {r.sequence.frames[0].path.parent}: {group_slug(r.sequence.group)}: "
            f"{one_line(r.reason)}"
            for r in self.results
            if r.outcome != "done"
        ]
        rejected = [f"  {p.name}: {why}" for r in self.results for p, why in r.rejected.items()]
        skips = [f"  {s.path.name}: {s.reason}" for s in self.index.skips() if s.refused]
        for title, block in (
            ("not combined", notes),
            ("frames rejected", rejected),
            ("files rejected", skips),
        ):
            if block:
                lines += ["", f"{title}:", *block]
        counts = self.index.counts()
        lines.append(
            f"\n{counts['frames']} files: {counts['flats']} flats, "
            f"{counts['skipped']} skipped (not flats), {counts['rejected']} rejected"
        )
        return "\n".join(lines)


def combine_paths(
    paths: Iterable[Path],
    config: Config,
    *,
    output_dir: Path | None = None,
    show_progress: bool = False,
) -> CombineSummary:
    """Index `paths` and make a master of every sequence; nothing is raised for bad data.
    Each master is compared with the previous sequence's master in the output directory,
    supersedes the masters that claimed its frames, and `latest/` follows the rule
    (`latest.Curator`)."""
    index = index_paths(paths, config)
    for skip in index.skips():
        log.info("frame_skipped", path=str(skip.path), kind=skip.kind, reason=skip.reason)
    for duplicate in index.duplicates():
        log.info("frame_duplicate", path=str(duplicate.path), duplicate_of=str(duplicate.of))
    results = []
    libraries = MasterLibraries.from_settings(config.calibrate, Path.cwd())
    curator = Curator(Catalogue(output_dir or config.output.directory), config)
    curator.catalogue.refresh(force=True)
    line = ProgressLine(sys.stderr) if show_progress else None
    for sequence in index.sequences():
        name = group_slug(sequence.group)
        with structlog.contextvars.bound_contextvars(group=name):
            progress = None
            if line is not None:
                line.show(f"{name}: {len(sequence.frames)} frames, measuring")
                progress = line.for_group(name)
            try:
                result = _make_master(sequence, config, progress, libraries, curator)
            finally:
                if line is not None:
                    line.clear()
            _log_result(result)
        results.append(result)
    return CombineSummary(results, index)


def _make_master(
    sequence: FlatSequence,
    config: Config,
    progress: engine.Progress | None,
    libraries: MasterLibraries,
    curator: Curator,
) -> Result:
    """`make_master`, with anything it raises a failure of this sequence alone (its
    traceback logged at debug level): the other groups are still combined."""
    try:
        return combine_and_publish(
            sequence, config, curator, progress=progress, libraries=libraries
        )
    except Exception as exc:
        log.debug("combine_crashed", exc_info=True)
        return Result(sequence, "failed", reason=crash_reason(exc))


class ProgressLine:
    """One line on a terminal, rewritten in place (`r_SIMCAM_1_1: 37% (1520/4096 rows)`)
    and cleared when a group is done, so that only the summary stays on the screen. A
    terminal that goes away only ends the display, never the combination."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.width = 0
        self.last: tuple[str, int] | None = None

    def show(self, text: str) -> None:
        self._write("\r" + text + " " * max(0, self.width - len(text)))
        self.width = len(text)

    def clear(self) -> None:
        if self.width:
            self._write("\r" + " " * self.width + "\r")
            self.width = 0
        self.last = None

    def _write(self, text: str) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None  # type: ignore[assignment]

    def for_group(self, name: str) -> engine.Progress:
        def progress(done: int, total: int) -> None:
            percent = 100 * done // total if total else 100
            if self.last == (name, percent):
                return  # the same text again: a terminal needs no more than 101 updates
            self.last = (name, percent)
            self.show(f"{name}: {percent}% ({done}/{total} rows)")

        return progress


def _log_result(result: Result) -> None:
    """One event per sequence: `master_written`, or a warning with the reason why not."""
    if result.record is not None:
        log.info("master_written", **result.record.to_dict())
        return
    events = {
        "too_few": "too_few_frames",
        "waiting": "calibration_waiting",
        "changed": "frame_changed_while_combining",
    }
    event = events.get(result.outcome, "combine_failed")
    log.warning(
        event,
        start=result.sequence.start.isoformat(),
        frames=len(result.sequence.frames),
        reason=one_line(result.reason),
    )


def _reason_kind(reason: str) -> str:
    """A skip reason without its particulars: `truncated: 6976 bytes expected, ...` ->
    `truncated`."""
    return reason.split(": ", 1)[0] if ": " in reason else reason


def _summary_row(result: Result) -> tuple[str, ...]:
    used = [s for s in result.stats if s.used]
    levels = (
        f"{max(s.median for s in used):.0f}..{min(s.median for s in used):.0f}" if used else "-"
    )
    master = str(result.record.path) if result.record else result.outcome.replace("_", " ")
    return (
        group_slug(result.sequence.group),
        f"{result.sequence.start:%Y-%m-%d %H:%M:%S}",
        str(result.n_used),
        str(len(result.rejected)),
        levels,
        master,
        f"{result.seconds:.1f}",
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _by_group(index: Index) -> list[tuple[Any, list[FlatSequence]]]:
    grouped: dict[Any, list[FlatSequence]] = {}
    for seq in index.sequences():
        grouped.setdefault(seq.group, []).append(seq)
    return list(grouped.items())


def _describe_group(key: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in key)


def _skip_dict(skip: Skip) -> dict[str, str]:
    return {"path": str(skip.path), "reason": skip.reason}


def _rounded(levels: engine.FrameLevels | None) -> float | None:
    return None if levels is None else round(levels.median, 2)


def _level_text(levels: engine.FrameLevels | None) -> str:
    return "?" if levels is None else f"{levels.median:9.1f}"
