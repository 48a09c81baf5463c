"""QA of a mosaic's master, extension by extension, and its summary.

Each extension is measured as a single master is (`qa.assess`): its masked fraction, its
noise against its own inputs' Poisson limit (their levels there, in electrons through
that extension's GAIN), and its change against the same extension of the previous
sequence's master (`qa.Baseline.previous`), found by name. Its cards go into its own
header; the primary header, the status file, the history, the metrics and the page's
headline get the summary (`MosaicQA`):

- the masked pixels of all extensions, and their fraction of the whole mosaic;
- the noise and Poisson limit of the extension whose noise is furthest above its limit;
- the largest change (robust rms) and the largest fraction of changed blocks;
- flagged when any extension differs from the previous master, the reason naming each.

A mosaic is held back, promoted or confirmed as a whole (`latest/` names a file), so the
"change confirmed" verdict is the summary's, made as for a single image (`qa.confirm`):
when the previous master was held back, every extension is also compared with the same
extension of the master in use (`qa.Baseline.reference`); no extension unlike it: the
held-back master was a one-off (not flagged); some extension unlike it while none is
unlike the previous master: the change is confirmed; else flagged. The extensions' own
records keep their comparison with the previous master (their QAFLAG: that extension
differs from it) and their change against the master in use (QAREF, QAREFRMS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flatd.config import Config
from flatd.engine import CombineResult, FrameStats, MasterPlane
from flatd.frames import Frame
from flatd.quality import qa

SAMPLE_STEP = 4  # the master's level in an extension, from every 4th pixel each way


@dataclass(frozen=True)
class MosaicQA(qa.MasterQA):
    """A mosaic master's QA: the summary (the fields of `qa.MasterQA`) and each
    extension's own, by name."""

    extensions: tuple[tuple[str, qa.MasterQA], ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        summary = {k: v for k, v in super().to_dict().items() if k != "extensions"}
        summary["extensions"] = [{"name": name, **each.to_dict()} for name, each in self.extensions]
        return summary


def assess_mosaic(
    combined: CombineResult, frames: Sequence[Frame], baseline: qa.Baseline, config: Config
) -> MosaicQA:
    """`qa.assess` on every extension of a mosaic's master (read one at a time) against
    the baseline's extension of the same name, and the summary's verdict."""
    used = [s for s in combined.stats if s.used]
    by_path = {f.path: f for f in frames}
    previous_only = qa.Baseline(baseline.previous)
    reference = qa.in_use(baseline)
    results: list[tuple[str, qa.MasterQA]] = []
    against_reference: list[tuple[float, list[str]] | None] = []
    for e, extension in enumerate(combined.extensions):
        plane = combined.plane(e)
        levels = _levels_in_electrons(plane, e, used, by_path, config)
        assessed = qa.assess(
            plane.data,
            plane.uncertainty,
            plane.mask,
            levels,
            previous_only,
            config.qa.max_change,
            extension.name,
        )
        if reference is not None and assessed.change_rms is not None:
            measured = qa.reference_changes(
                plane.data, plane.mask, reference, config.qa.max_change, extension.name
            )
            against_reference.append(measured)
            if measured is not None:
                assessed = replace(
                    assessed, reference=str(reference), reference_change_rms=measured[0]
                )
        results.append((extension.name, assessed))
        del plane
    pixels = sum(e.shape[0] * e.shape[1] for e in combined.extensions)
    summary = summarise(results, pixels)
    return _verdict(summary, reference, [name for name, _ in results], against_reference)


def _verdict(
    summary: MosaicQA,
    reference: Path | None,
    names: list[str],
    against_reference: list[tuple[float, list[str]] | None],
) -> MosaicQA:
    """The summary judged against the master in use as well, as a whole (`qa.confirm`):
    only when the previous master was held back and every extension was compared with
    both."""
    if reference is None or not against_reference or len(against_reference) != len(names):
        return summary
    measured = [m for m in against_reference if m is not None]
    if len(measured) != len(names):  # some extension of it unreadable: as for one image
        return summary
    rms = max(change for change, _ in measured)
    differs = [
        f"{name}: {why}"
        for name, (_, reasons) in zip(names, measured, strict=True)
        for why in reasons
    ]
    return qa.confirm(summary, reference, rms, differs)


def _levels_in_electrons(
    plane: MasterPlane,
    e: int,
    used: list[FrameStats],
    frames: dict[Path, Frame],
    config: Config,
) -> list[float]:
    """Each used input's level in extension `e`, in electrons: its own level there when
    the extensions were scaled alone, else its mosaic's level times the master's there."""
    sample = plane.data[::SAMPLE_STEP, ::SAMPLE_STEP][~plane.mask[::SAMPLE_STEP, ::SAMPLE_STEP]]
    relative = float(np.median(sample)) if sample.size else 1.0
    levels = []
    for stats in used:
        frame = frames[stats.path]
        gain = config.combine.gain or frame.planes[e].extras.get("GAIN", 0.0) or 1.0
        level = 1 / stats.plane_scales[e] if stats.plane_scales else stats.median * relative
        levels.append(level * gain)
    return levels


def summarise(results: list[tuple[str, qa.MasterQA]], pixels: int) -> MosaicQA:
    """The summary of the extensions' QA (see the module docstring)."""
    each = [assessed for _, assessed in results]
    masked = sum(a.masked_pixels for a in each)
    measured = [a for a in each if a.noise is not None and a.expected_noise]
    worst = max(measured, key=lambda a: (a.noise or 0.0) / (a.expected_noise or 1.0), default=None)
    changes = [a.change_rms for a in each if a.change_rms is not None]
    changed = [a.changed_fraction for a in each if a.changed_fraction is not None]
    reasons = [f"{name}: {a.reason}" for name, a in results if a.reason]
    return MosaicQA(
        masked_fraction=masked / pixels if pixels else 0.0,
        noise=worst.noise if worst else None,
        expected_noise=worst.expected_noise if worst else None,
        previous=next((a.previous for a in each if a.previous), None),
        change_rms=max(changes) if changes else None,
        changed_fraction=max(changed) if changed else None,
        flagged=any(a.flagged for a in each),
        reason="; ".join(reasons),
        masked_pixels=masked,
        extensions=tuple(results),
    )


def extension_cards(assessment: qa.MasterQA) -> list[list[tuple[str, Any, str]]]:
    """Each extension's QA cards, in order ([] for a single image's master)."""
    if not isinstance(assessment, MosaicQA):
        return []
    return [assessed.header_cards() for _, assessed in assessment.extensions]
