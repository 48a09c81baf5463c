"""Checks on a finished master: masked fraction, noise against the inputs' Poisson limit,
and change against the master of the previous sequence of its group.

The master it is compared with (`Baseline.previous`) is the one of the group's previous
sequence by observation date — never an earlier combination of the same sequence. When
that master was itself held back (flagged, not `latest/`), the new one is also compared
with the master in use (`Baseline.reference`): agreeing with the held-back one but not
with the one in use, it *confirms* the change (`confirmed`: promoted, "change confirmed");
agreeing with the one in use, the held-back one was a one-off; it is flagged only when it
differs from both.

A moved dust donut or a slipped filter wheel changes a small part of the flat by a few
per cent: the global robust rms of new/previous barely moves, so the ratio is also
averaged in blocks (cutting the pixel noise of both masters) and the fraction of blocks
that changed by more than `qa.max_change` is counted. Either measure above its limit
flags the master.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

BLOCK = 8  # pixels a side over which the ratio is averaged before counting changes
MAX_CHANGED_BLOCK_FRACTION = 0.001  # more changed blocks than this flags the master
ROWS_PER_STEP = 512  # the previous master is read this many rows at a time


@dataclass(frozen=True)
class Baseline:
    """What a new master is compared with: the master of the group's previous sequence,
    and, when that one was held back, the master in use (`latest/`)."""

    previous: Path | None = None
    reference: Path | None = None


@dataclass(frozen=True)
class MasterQA:
    masked_fraction: float
    noise: float | None  # median uncertainty of the master (std of the mean, relative)
    expected_noise: float | None  # Poisson limit of its used inputs
    previous: str | None = None
    change_rms: float | None = None  # robust rms of new/previous - 1
    changed_fraction: float | None = None  # of BLOCKxBLOCK blocks beyond max_change
    flagged: bool = False
    reason: str = ""
    masked_pixels: int = 0  # pixels set in MASK (dead, weak or never finite)
    reference: str | None = None  # the master in use, when `previous` was held back
    reference_change_rms: float | None = None
    confirmed: bool = False  # agrees with the held-back `previous`, not with `reference`
    # the block map behind change_rms/changed_fraction (not part of the record)
    comparison: Comparison | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (round(v, 6) if isinstance(v, float) else v)
            for k, v in self.__dict__.items()
            if k != "comparison"
        }

    def header_cards(self) -> list[tuple[str, Any, str]]:
        cards: list[tuple[str, Any, str]] = [
            ("QAMASK", self.masked_pixels, "number of pixels set in MASK"),
            ("QAMASKFR", self.masked_fraction, "fraction of pixels set in MASK"),
            ("QAFLAG", self.flagged, "master differs from the previous one"),
            ("QACONFIR", self.confirmed, "a change confirmed by this master"),
        ]
        optional = [
            ("QANOISE", self.noise, "median uncertainty of the master"),
            ("QAEXPNS", self.expected_noise, "Poisson limit of the inputs"),
            ("QACHGRMS", self.change_rms, "robust rms of new/previous - 1"),
            ("QACHGFR", self.changed_fraction, "fraction of 8x8 blocks changed"),
        ]
        cards += [(k, float(v), c) for k, v, c in optional if v is not None]
        if self.previous:
            cards.append(("QAPREV", Path(self.previous).name[:68], "compared with"))
        if self.reference:
            cards.append(("QAREF", Path(self.reference).name[:68], "and with (in use)"))
        if self.reference_change_rms is not None:
            cards.append(("QAREFRMS", float(self.reference_change_rms), "rms vs QAREF"))
        return cards


def assess(
    data: np.ndarray,
    uncertainty: np.ndarray,
    mask: np.ndarray,
    used_levels: Sequence[float],
    baseline: Baseline,
    max_change: float,
    hdu: int | str = 0,
) -> MasterQA:
    """Measure a normalised master and compare it with its `baseline` (its HDU `hdu`
    in each: a mosaic's extension by name); `used_levels` are the used inputs' levels in
    electrons (ADU times gain)."""
    masked_pixels = int(np.count_nonzero(mask))
    masked_fraction = masked_pixels / mask.size if mask.size else 0.0
    sampled = uncertainty[::4, ::4][~mask[::4, ::4]]
    noise = float(np.median(sampled)) if sampled.size else None
    expected = (
        float(np.sqrt(np.sum(1.0 / np.asarray(used_levels, float)))) / len(used_levels)
        if len(used_levels)
        else None
    )
    measured = MasterQA(masked_fraction, noise, expected, masked_pixels=masked_pixels)
    previous = baseline.previous
    if previous is None or not previous.exists():
        return measured
    try:
        comparison = compare(data, mask, previous, max_change, hdu)
    except (OSError, ValueError) as exc:
        reason = f"previous master unreadable: {exc}"
        return replace(measured, previous=str(previous), reason=reason)
    reasons = _changes(comparison, max_change)
    judged = replace(
        measured,
        previous=str(previous),
        change_rms=comparison.change_rms,
        changed_fraction=comparison.changed_fraction,
        flagged=bool(reasons),
        reason="; ".join(reasons),
        comparison=comparison,
    )
    reference = in_use(baseline)
    if reference is None:
        return judged
    return _against_reference(judged, data, mask, reference, max_change, hdu)


def in_use(baseline: Baseline) -> Path | None:
    """The master in use to judge against as well, when the previous one was held back
    (None: there is none, or it is the previous master, or it is gone)."""
    reference = baseline.reference
    if reference is None or reference == baseline.previous or not reference.exists():
        return None
    return reference


def _changes(comparison: Comparison, max_change: float) -> list[str]:
    """Why a comparison flags a master ([] when it does not)."""
    reasons = []
    if comparison.change_rms > max_change:
        reasons.append(f"rms change {comparison.change_rms:.4f} > qa.max_change {max_change:g}")
    if comparison.changed_fraction > MAX_CHANGED_BLOCK_FRACTION:
        reasons.append(
            f"{comparison.changed_fraction:.4f} of the image changed by more than {max_change:g}"
        )
    return reasons


def _against_reference(
    judged: MasterQA,
    data: np.ndarray,
    mask: np.ndarray,
    reference: Path,
    max_change: float,
    hdu: int | str = 0,
) -> MasterQA:
    """The previous master was held back: judge against the master in use as well."""
    measured = reference_changes(data, mask, reference, max_change, hdu)
    if measured is None:
        return judged
    return confirm(judged, reference, *measured)


def reference_changes(
    data: np.ndarray,
    mask: np.ndarray,
    reference: Path,
    max_change: float,
    hdu: int | str = 0,
) -> tuple[float, list[str]] | None:
    """The change rms against the master in use (its HDU `hdu`), and why it differs from
    it ([]: it does not); None when it cannot be read."""
    try:
        comparison = compare(data, mask, reference, max_change, hdu)
    except (OSError, ValueError):
        return None
    return comparison.change_rms, _changes(comparison, max_change)


Judged = TypeVar("Judged", bound="MasterQA")


def confirm(judged: Judged, reference: Path, reference_rms: float, differs: list[str]) -> Judged:
    """The verdict once the master is also compared with the one in use (`reference`):
    like it, the held-back previous master was a one-off (not flagged); unlike it but like
    the previous one, the change is confirmed; unlike both, flagged."""
    record = replace(judged, reference=str(reference), reference_change_rms=reference_rms)
    if not differs:  # the held-back previous master was a one-off
        return replace(record, flagged=False, reason="")
    if not judged.flagged:  # like the held-back one, unlike the one in use
        reason = (
            f"change confirmed: agrees with {Path(str(judged.previous)).name} (held back), "
            f"differs from {reference.name} ({'; '.join(differs)})"
        )
        return replace(record, confirmed=True, reason=reason)
    return replace(record, reason=f"{judged.reason}; also unlike {reference.name} in use")


@dataclass(frozen=True)
class Comparison:
    """A master against the previous one: the measures QA judges by, and the ratio
    averaged in BLOCKxBLOCK blocks (what they were counted on), for the ratio picture."""

    change_rms: float
    changed_fraction: float
    blocks: np.ndarray  # mean of new/previous - 1 per block; NaN where mostly masked
    blocks_masked: np.ndarray  # blocks holding any masked or non-finite pixel


def compare(
    data: np.ndarray, mask: np.ndarray, previous: Path, max_change: float, hdu: int | str = 0
) -> Comparison:
    """Robust rms of new/previous - 1, the fraction of blocks changed by more than
    `max_change`, and the block map they were counted on (1/BLOCK² of the image's size);
    the previous master's HDU `hdu` is read in steps of rows."""
    from astropy.io import fits

    with fits.open(previous, memmap=False, lazy_load_hdus=True) as hdul:
        try:
            old = hdul[hdu]
        except (KeyError, IndexError):
            raise ValueError(f"it has no extension {hdu}") from None
        if old.shape != data.shape:
            raise ValueError(f"shape {old.shape} differs from {data.shape}")
        deviations, binned_steps, masked_steps = [], [], []
        step = ROWS_PER_STEP // BLOCK * BLOCK
        for y0 in range(0, data.shape[0], step):
            ratio = data[y0 : y0 + step] / old.section[y0 : y0 + step, :] - 1.0
            bad = mask[y0 : y0 + step] | ~np.isfinite(ratio)
            ratio[bad] = np.nan
            deviations.append(ratio[::4, ::4].ravel())  # a sample is enough for a robust rms
            binned_steps.append(_block_mean(ratio))
            masked_steps.append(_block_any(bad))
    sample = np.concatenate(deviations)
    change_rms = float(_nan_mad_std(sample))
    blocks = np.concatenate(binned_steps) if binned_steps else np.empty((0, 0))
    changed_blocks = int(np.sum(np.abs(blocks) > max_change))
    counted = int(np.sum(np.isfinite(blocks)))
    return Comparison(
        change_rms,
        changed_blocks / counted if counted else 0.0,
        blocks,
        np.concatenate(masked_steps) if masked_steps else np.empty((0, 0), bool),
    )


def _nan_mad_std(sample: np.ndarray) -> np.floating:
    """`astropy.stats.mad_std(sample, ignore_nan=True)`, in the sample's precision."""
    return np.nanmedian(np.abs(sample - np.nanmedian(sample))) * 1.482602218505602


def _blocks_of(values: np.ndarray) -> np.ndarray:
    """`values` as (ny, BLOCK, nx, BLOCK) blocks, the last partial rows and columns left out."""
    ny, nx = values.shape[0] // BLOCK * BLOCK, values.shape[1] // BLOCK * BLOCK
    return values[:ny, :nx].reshape(ny // BLOCK, BLOCK, nx // BLOCK, BLOCK)


def _block_any(flags: np.ndarray) -> np.ndarray:
    return np.asarray(_blocks_of(flags).any(axis=(1, 3)))


def _block_mean(ratio: np.ndarray) -> np.ndarray:
    blocks = _blocks_of(ratio)
    counts = np.sum(np.isfinite(blocks), axis=(1, 3))
    sums = np.nansum(blocks, axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > BLOCK * BLOCK // 2, sums / counts, np.nan)
