"""Flat QA (issue 6): bad frames rejected with their reasons, masters compared with the
master of their group's previous sequence (never an earlier combination of the same
sequence), a flagged change confirmed by the next sequence, and the noise-model clip for
small stacks.

Every case runs the real pipeline (`combine_and_publish`: the master, then `latest/` by
the rule) on simulated flats written as FITS files, and measures the master against the
true flat the simulator used."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.outputs.masters import latest_path, read_master_inputs
from flatd.simulation.flats import simulate_sequence
from tests.sequences import (
    config_for,
    dome_half_closed,
    error_against_truth,
    make_master,
    poisson_limit,
    sequence_of,
    write_simulated,
)

SHAPE = (256, 256)
N_GOOD = 8


# -- one bad frame of each kind ----------------------------------------------------------------
def too_faint(i, data, header):
    return data * 0.02, header  # ~ 800 ADU at the end of a 40000 -> 5000 sequence


def saturated(i, data, header):
    data[:20, :] = 65535.0  # ~15% of the pixels at SATURATE
    return data, header


def other_shape(i, data, header):
    return data[:, :-16].copy(), header


def other_binning(i, data, header):
    header["XBINNING"] = 2
    return data, header


def other_readout(i, data, header):
    header["GAIN"] = 2.5
    return data, header


BAD_FRAMES = [
    ("too faint", too_faint, "too faint: median"),
    ("saturated", saturated, "saturated:"),
    ("dome half closed", dome_half_closed, "differs from the sequence's median image"),
    ("other shape", other_shape, "shape 240x256 differs"),
    ("other binning", other_binning, "binning 2x1 differs"),
    ("other readout", other_readout, "readout GAIN 2.5"),
]


@pytest.mark.parametrize(("kind", "spoil", "expected"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_one_bad_frame_is_rejected_with_its_reason_and_the_master_stays_good(
    tmp_path, kind, spoil, expected
):
    seq = simulate_sequence(shape=SHAPE, n_frames=N_GOOD + 1, seed=11)
    bad = N_GOOD // 2
    paths = write_simulated(
        seq, tmp_path / "in", edit=lambda i, d, h: spoil(i, d, h) if i == bad else (d, h)
    )
    # binning must not be a group key here, or the odd frame would simply be another group
    config = config_for(tmp_path, frames={"group_by": ["FILTER", "INSTRUME"]})

    result = make_master(sequence_of(paths, config), config)

    assert result.outcome == "done", result.reason
    assert list(result.rejected) == [paths[bad]]
    assert expected in result.rejected[paths[bad]]
    rows = {row["FILE"]: row for row in read_master_inputs(result.record.path)}
    assert rows[paths[bad].name]["USED"] is False
    assert expected in rows[paths[bad].name]["REASON"]
    assert sum(row["USED"] for row in rows.values()) == N_GOOD
    good_levels = [level for i, level in enumerate(seq.levels) if i != bad]
    err = error_against_truth(result, seq.true_flat)
    limit = poisson_limit(good_levels)
    assert err.std() <= 1.05 * limit, (kind, err.std() / limit)
    assert np.abs(err).max() <= 10 * limit


def test_good_frames_are_never_rejected_as_odd(tmp_path):
    seq = simulate_sequence(shape=SHAPE, n_frames=10, seed=5)
    config = config_for(tmp_path)
    result = make_master(sequence_of(write_simulated(seq, tmp_path / "in"), config), config)
    assert result.outcome == "done"
    assert result.rejected == {}
    assert all(s.structure < 0.01 for s in result.stats), [s.structure for s in result.stats]


def test_too_few_usable_frames_make_the_group_too_few_with_the_reasons(tmp_path):
    seq = simulate_sequence(shape=SHAPE, n_frames=6, seed=3)
    paths = write_simulated(
        seq, tmp_path / "in", edit=lambda i, d, h: too_faint(i, d, h) if i >= 3 else (d, h)
    )
    config = config_for(tmp_path)  # min_frames = 5
    result = make_master(sequence_of(paths, config), config)
    assert result.outcome == "too_few"
    assert "3 usable frame(s), sequence.min_frames = 5" in result.reason
    assert "3x too faint" in result.reason
    assert not (tmp_path / "masters").exists() or not list((tmp_path / "masters").glob("*.fits"))


# -- the master against the previous one ----------------------------------------------------------
def add_dust_donut(flat: np.ndarray, depth: float = 0.08) -> np.ndarray:
    ny, nx = flat.shape
    y, x = np.mgrid[:ny, :nx]
    r = np.hypot(y - ny * 0.3, x - nx * 0.6)
    ring = (r > 6) & (r < 11)
    return flat * np.where(ring, 1 - depth, 1.0)


@pytest.mark.parametrize("changed", [False, True], ids=["same flat", "new dust donut"])
def test_a_changed_master_is_flagged_and_not_promoted(tmp_path, changed):
    first = simulate_sequence(shape=SHAPE, n_frames=8, seed=21)
    flat = add_dust_donut(first.true_flat) if changed else first.true_flat
    second = simulate_sequence(
        shape=SHAPE, n_frames=8, seed=22, true_flat=flat, start=datetime(2026, 11, 24, 17, 30)
    )
    config = config_for(tmp_path)
    one = make_master(sequence_of(write_simulated(first, tmp_path / "n1"), config), config)
    two = make_master(sequence_of(write_simulated(second, tmp_path / "n2"), config), config)

    assert one.record.promoted and not one.record.qa["flagged"]
    latest = latest_path(config.output.directory, one.sequence.group)
    header = fits.getheader(two.record.path)
    assert header["QAPREV"] == one.record.path.name
    assert two.record.qa["previous"] == str(one.record.path)
    if changed:
        assert header["QAFLAG"] is True
        assert two.record.qa["flagged"] and "changed by more than" in two.record.qa["reason"]
        assert not two.record.promoted
        assert latest.samefile(one.record.path)
    else:
        assert header["QAFLAG"] is False
        assert two.record.qa["change_rms"] < config.qa.max_change
        assert two.record.promoted
        assert latest.samefile(two.record.path)


def test_a_flagged_master_is_promoted_when_configured(tmp_path):
    first = simulate_sequence(shape=SHAPE, n_frames=6, seed=31)
    second = simulate_sequence(
        shape=SHAPE,
        n_frames=6,
        seed=32,
        true_flat=add_dust_donut(first.true_flat),
        start=datetime(2026, 11, 24, 17, 30),
    )
    config = config_for(tmp_path, qa={"promote_changed": True})
    one = make_master(sequence_of(write_simulated(first, tmp_path / "n1"), config), config)
    two = make_master(sequence_of(write_simulated(second, tmp_path / "n2"), config), config)
    assert two.record.qa["flagged"] and two.record.promoted
    assert latest_path(config.output.directory, one.sequence.group).samefile(two.record.path)


def test_master_qa_keywords_measure_mask_and_noise(tmp_path):
    seq = simulate_sequence(shape=SHAPE, n_frames=8, seed=41)
    config = config_for(tmp_path)
    result = make_master(sequence_of(write_simulated(seq, tmp_path / "in"), config), config)
    header = fits.getheader(result.record.path)
    assert header["QAMASK"] == 0 and header["QAMASKFR"] == 0.0
    assert header["QAFLAG"] is False
    # the master's uncertainty matches the Poisson noise its inputs should have
    assert 0.8 < header["QANOISE"] / header["QAEXPNS"] < 1.1
    assert "QAPREV" not in header


# -- small stacks: the noise-model clip ----------------------------------------------------------
def three_frame_errors(tmp_path: Path, deviation: str) -> tuple[float, float]:
    seq = simulate_sequence(shape=SHAPE, n_frames=3, seed=51, levels=(30000, 15000))
    config = config_for(
        tmp_path / deviation, sequence={"min_frames": 3}, combine={"deviation": deviation}
    )
    result = make_master(
        sequence_of(write_simulated(seq, tmp_path / deviation / "in"), config), config
    )
    assert result.outcome == "done", result.reason
    err = error_against_truth(result, seq.true_flat)
    # per-pixel sigma of the mean of the three scaled frames
    sigma = poisson_limit(seq.levels) * np.sqrt(1 + 0.0)
    return float(np.abs(err).max() / sigma), float(err.std() / sigma)


def test_noise_deviation_removes_the_stars_mad_std_leaves_in_three_frames(tmp_path):
    noise_max, noise_rms = three_frame_errors(tmp_path, "noise")
    mad_max, mad_rms = three_frame_errors(tmp_path, "mad_std")
    print(
        f"3 frames with stars: noise max {noise_max:.1f} sigma (rms {noise_rms:.2f}); "
        f"mad_std max {mad_max:.1f} sigma (rms {mad_rms:.2f})"
    )
    assert noise_max <= 10
    assert mad_max > 10
    assert noise_rms <= 1.1


def test_noise_deviation_without_gain_is_a_clear_error(tmp_path):
    seq = simulate_sequence(shape=(32, 32), n_frames=3, seed=1)
    for header in seq.headers:
        del header["GAIN"]
    config = config_for(tmp_path, sequence={"min_frames": 3}, combine={"deviation": "noise"})
    result = make_master(sequence_of(write_simulated(seq, tmp_path / "in"), config), config)
    assert result.outcome == "failed"
    assert "combine.gain" in result.reason


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 1001, 40000])
def test_robust_rms_is_astropys_mad_std(dtype, size) -> None:
    from astropy.stats import mad_std

    from flatd.quality.qa import _nan_mad_std

    rng = np.random.default_rng(size)
    sample = (rng.normal(0, 0.01, size) * rng.uniform(0.1, 10)).astype(dtype)
    sample[rng.random(size) < 0.1] = np.nan
    sample[0] = 0.5
    ours, theirs = _nan_mad_std(sample), mad_std(sample, ignore_nan=True)
    assert ours.dtype == theirs.dtype and float(ours) == float(theirs)
