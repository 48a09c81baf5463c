"""Saturation per pixel (issue 10): twilight flats whose stars saturate (0.1-1 % of their
pixels) are kept, the saturated values left out of their pixels' combination, and the
master reaches the Poisson limit of the truth; only a frame saturated over more than
`qa.max_saturated_fraction` is rejected. Both engines give the same master."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flatd.engine import kernel
from flatd.pipeline import make_master
from flatd.simulation.flats import SATURATE, simulate_sequence
from tests.sequences import (
    config_for,
    error_against_truth,
    poisson_limit,
    sequence_of,
    write_simulated,
)

SHAPE = (256, 256)


def saturated_stars(fraction: float, seed: int):
    """Star cores clipped at SATURATE over `fraction` of each frame's pixels, elsewhere
    in every frame (a sequence taken while the telescope moves)."""
    rng = np.random.default_rng(seed)

    def edit(i, data, header):
        cores = rng.choice(data.size, int(fraction * data.size), replace=False)
        data.reshape(-1)[cores] = SATURATE
        return data, header

    return edit


@pytest.mark.parametrize("fraction", [0.001, 0.004, 0.01])
def test_frames_with_saturated_star_cores_are_kept_and_the_master_is_good(
    tmp_path: Path, fraction: float
) -> None:
    seq = simulate_sequence(SHAPE, 9, seed=21)
    paths = write_simulated(seq, tmp_path / "in", edit=saturated_stars(fraction, 21))
    config = config_for(tmp_path)
    result = make_master(sequence_of(paths, config), config)
    assert result.outcome == "done" and result.rejected == {}
    err = error_against_truth(result, seq.true_flat)
    limit = poisson_limit(seq.levels)
    assert err.std() <= 1.05 * limit
    assert np.abs(err).max() <= 10 * limit  # no saturated value reached the master


def test_a_frame_saturated_beyond_the_fraction_is_rejected_the_rest_kept(tmp_path: Path) -> None:
    seq = simulate_sequence(SHAPE, 9, seed=22)
    stars = saturated_stars(0.005, 22)

    def edit(i, data, header):
        data, header = stars(i, data, header)
        if i == 3:
            data[:20, :] = SATURATE  # 8 % of the frame
        return data, header

    paths = write_simulated(seq, tmp_path / "in", edit=edit)
    config = config_for(tmp_path)
    result = make_master(sequence_of(paths, config), config)
    assert list(result.rejected) == [paths[3]]
    assert "saturated: 0.08" in result.rejected[paths[3]]
    assert "qa.max_saturated_fraction 0.05" in result.rejected[paths[3]]


@pytest.mark.skipif(not kernel.available(), reason="compiled kernel not built")
def test_both_engines_make_the_same_master_from_saturated_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from astropy.io import fits

    seq = simulate_sequence(SHAPE, 7, seed=23)
    paths = write_simulated(seq, tmp_path / "in", edit=saturated_stars(0.01, 23))
    masters = []
    for engine in ("compiled", "numpy"):
        monkeypatch.setenv("FLATD_ENGINE", engine)
        config = config_for(tmp_path / engine)
        result = make_master(sequence_of(paths, config), config)
        with fits.open(result.record.path) as hdul:
            assert hdul[0].header["CMBENGIN"] == engine
            masters.append([hdul[name].data.copy() for name in (0, "UNCERT", "MASK")])
    for ours, theirs in zip(*masters, strict=True):
        np.testing.assert_array_equal(ours, theirs)
