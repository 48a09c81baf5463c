"""Dead and weak pixels (issue 10): after normalising, pixels that are not finite, zero,
negative or below `qa.min_response` are set in MASK and hold 1.0 (UNCERT 0), so that
`ccdproc.flat_correct` of a science frame with the master is finite and sane everywhere;
saturated values are left out of their pixel's combination. Real pipeline, real files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.nddata import CCDData

from flatd.engine import combine
from flatd.pipeline import make_master
from flatd.simulation.flats import SATURATE, simulate_sequence, write_sequence
from tests.sequences import config_for, error_against_truth, poisson_limit, sequence_of

ccdproc = pytest.importorskip("ccdproc")

SHAPE = (96, 128)
DEAD_COLUMN, WEAK_COLUMN, SATURATED_COLUMN = 10, 30, 50
DEAD_BLOCK = (slice(40, 50), slice(60, 80))
NAN_EVERYWHERE = (70, 100)


def spoil(image: np.ndarray, rng: np.random.Generator, science: bool = False) -> np.ndarray:
    """The detector's defects, as every frame from it shows them."""
    image = image.copy()
    image[:, DEAD_COLUMN] = 0.0
    image[DEAD_BLOCK] = -5.0  # bias-subtracted: a dead block reads a little below zero
    image[:, WEAK_COLUMN] *= 0.02
    image[:, SATURATED_COLUMN] = SATURATE
    if not science:
        image.reshape(-1)[rng.choice(image.size, 20, replace=False)] = np.nan
        image[NAN_EVERYWHERE] = np.nan
    return image


@pytest.fixture(scope="module")
def defective(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("defects")
    seq = simulate_sequence(SHAPE, 7, seed=12)
    config = config_for(directory)
    clean = make_master(sequence_of(write_sequence(seq, directory / "clean"), config), config)
    rng = np.random.default_rng(12)
    seq.frames[:] = [spoil(f, rng) for f in seq.frames]
    paths = write_sequence(seq, directory / "in")
    config = config_for(directory / "defects")
    return seq, make_master(sequence_of(paths, config), config), clean


def defects() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[:, [DEAD_COLUMN, WEAK_COLUMN, SATURATED_COLUMN]] = True
    mask[DEAD_BLOCK] = True
    mask[NAN_EVERYWHERE] = True
    return mask


def test_dead_weak_and_saturated_pixels_are_masked_and_hold_one(defective) -> None:
    seq, result, clean = defective
    assert result.outcome == "done", result.reason
    master = CCDData.read(result.record.path)
    expected = defects()
    np.testing.assert_array_equal(master.mask, expected)
    assert (master.data[expected] == 1.0).all()
    assert (master.uncertainty.array[expected] == 0.0).all()
    assert np.isfinite(master.uncertainty.array).all()
    # the rest of the master is what it is without the defects, but for the 20 NaN values
    # and each frame's median, moved 0.2 % by its defects, which decides a few values near
    # the clip's threshold otherwise (measured: 95 % of pixels within 2e-4 of the noise)
    err = error_against_truth(result, seq.true_flat)[~expected]
    clean_err = error_against_truth(clean, seq.true_flat)[~expected]
    assert err.std() <= 1.01 * clean_err.std() <= 1.2 * poisson_limit(seq.levels)
    same = CCDData.read(clean.record.path).data[~expected] / master.data[~expected]
    change = np.abs(same / np.median(same) - 1)
    assert np.percentile(change, 95) < 0.1 * poisson_limit(seq.levels)
    assert result.rejected == {}  # a saturated column is 0.8 % of a frame: kept


@pytest.mark.parametrize("sky", [20.0, 1000.0, 30000.0])
def test_flat_correct_with_the_master_is_finite_and_sane_outside_the_mask(
    defective, sky: float
) -> None:
    seq, result, _ = defective
    master = CCDData.read(result.record.path)
    rng = np.random.default_rng(int(sky))
    light = rng.poisson(sky * seq.true_flat).astype(np.float32)
    science = CCDData(spoil(light, rng, science=True), unit="adu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no division by zero, no NaN made
        corrected = ccdproc.flat_correct(science, master)
    outside = ~corrected.mask
    assert outside.sum() == SHAPE[0] * SHAPE[1] - defects().sum()
    assert np.isfinite(corrected.data).all()
    assert np.abs(corrected.data[outside]).max() < 2 * sky + 10 * np.sqrt(sky) + 50
    flat_fielded = corrected.data[outside] / np.median(corrected.data[outside])
    assert np.std(flat_fielded) < 3 / np.sqrt(sky) + 0.01  # the flat took the pattern out


def test_masked_pixels_are_counted(defective, tmp_path: Path) -> None:
    _, result, _ = defective
    frames = list(result.sequence.frames)
    combined = combine(
        frames,
        config_for(tmp_path).combine,
        saturation={f.path: SATURATE for f in frames},
        min_response=0.05,
    )
    assert combined.masked_pixels == defects().sum() == combined.mask.sum()
    # without a saturation level the saturated column is a (bright) value like any other
    plain = combine(frames, config_for(tmp_path).combine, min_response=0.05)
    assert not plain.mask[:, SATURATED_COLUMN].any()
    assert plain.masked_pixels == combined.masked_pixels - SHAPE[0]


@pytest.mark.parametrize("min_response", [0.01, 0.05])
def test_a_weak_column_is_masked_only_below_min_response(
    tmp_path: Path, min_response: float
) -> None:
    seq = simulate_sequence((48, 64), 5, seed=4, stars=False, cosmic_rays=False)
    seq.frames[:] = [f.copy() for f in seq.frames]
    for frame in seq.frames:
        frame[:, 7] *= 0.03
    frames = list(sequence_of(write_sequence(seq, tmp_path), config_for(tmp_path)).frames)
    result = combine(frames, config_for(tmp_path).combine, min_response=min_response)
    assert result.mask[:, 7].all() == (min_response > 0.03)
    assert result.masked_pixels == (48 if min_response > 0.03 else 0)
