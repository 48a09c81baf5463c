"""The combination engine against ccdproc, against the truth of simulated sequences, and
against plain numpy: every test reads real FITS files written into tmp_path."""

from __future__ import annotations

import dataclasses
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import mad_std

from flatd.config import CombineConfig
from flatd.engine import CombineResult, combine
from flatd.simulation.flats import simulate_sequence, write_sequence
from tests.helpers import frames_of, write_frame

ccdproc = pytest.importorskip("ccdproc")


def run(paths: list[Path], **settings: object) -> CombineResult:
    return combine(frames_of(paths), CombineConfig(**settings))


def ccdproc_combine(paths: list[Path], **kwargs: object):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ccdproc.combine(
            [str(p) for p in paths],
            method="average",
            scale=lambda a: 1 / np.ma.median(a),
            unit="adu",
            **kwargs,
        )


def guide_recipe(paths: list[Path]):
    """The CCD reduction guide's flat combination, with `sigma_clip_dev_func` spelled right."""
    return ccdproc_combine(
        paths,
        sigma_clip=True,
        sigma_clip_low_thresh=5,
        sigma_clip_high_thresh=5,
        sigma_clip_func=np.ma.median,
        sigma_clip_dev_func=mad_std,
    )


def error_vs_truth(master: np.ndarray, true_flat: np.ndarray) -> np.ndarray:
    err = master / true_flat
    return err / np.median(err) - 1


def poisson_limit(levels: list[float], gain: float = 1.0) -> float:
    """Relative noise of the average of frames at `levels` (ADU), where the flat is 1."""
    return float(np.sqrt(sum(1 / (gain * level) for level in levels)) / len(levels))


def raw_stack(paths: list[Path]) -> np.ndarray:
    return np.array([fits.getdata(p).astype(np.float64) for p in paths])


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a / b - 1)))


@pytest.fixture(scope="module")
def twilight(tmp_path_factory: pytest.TempPathFactory):
    """10 frames of 256x256, stars and cosmic rays, levels falling 40000 -> 5000."""
    seq = simulate_sequence((256, 256), 10, seed=0)
    outdir = tmp_path_factory.mktemp("twilight")
    return seq, write_sequence(seq, outdir)


# -- 1. equivalence with ccdproc -------------------------------------------------------------
def test_without_clipping_equals_ccdproc_average(tmp_path: Path) -> None:
    seq = simulate_sequence((96, 128), 8, seed=1)
    paths = write_sequence(seq, tmp_path)
    result = run(paths, sigma_clip=False)
    reference = ccdproc_combine(paths)
    median = np.median(reference.data)
    assert rel_diff(result.data, reference.data / median) < 1e-5
    assert rel_diff(result.uncertainty, reference.uncertainty.array / median) < 1e-4
    assert not result.mask.any()
    assert result.normalisation == pytest.approx(median, rel=1e-6)


def test_clipping_at_equal_levels_equals_ccdproc(tmp_path: Path) -> None:
    """With every frame's median exactly 20000, scaled and unscaled clipping decide alike."""
    seq = simulate_sequence((96, 128), 8, seed=2, levels=(20000.0, 20000.0))
    seq.frames[:] = [(f * (20000.0 / np.median(f))).astype(np.float32) for f in seq.frames]
    paths = write_sequence(seq, tmp_path)
    result = run(paths)
    assert sum(s.clipped_fraction for s in result.stats) > 0  # the clip did something
    reference = guide_recipe(paths)
    median = np.median(reference.data)
    differ = np.abs(result.data / (reference.data / median) - 1) > 1e-5
    # float32 against float64: a value within 1e-5 sigma of the 5-sigma threshold may be
    # decided either way (measured: 1 pixel of 12288, at 4.99999 sigma)
    assert differ.sum() <= 3
    same = ~differ
    assert rel_diff(result.uncertainty[same], reference.uncertainty.array[same] / median) < 1e-3


def test_clipping_at_nominally_equal_levels_differs_from_ccdproc_on_few_pixels(
    tmp_path: Path,
) -> None:
    """Levels equal only up to noise: the scaled and unscaled clips differ at a few pixels,
    and flatd is exactly the scaled-clip reference computed in numpy."""
    seq = simulate_sequence((96, 128), 8, seed=2, levels=(20000.0, 20000.0))
    paths = write_sequence(seq, tmp_path)
    result = run(paths)
    raw = raw_stack(paths)
    scaled = raw / np.array([np.median(r) for r in raw])[:, None, None]
    center, spread = np.median(scaled, axis=0), mad_std(scaled, axis=0)
    keep = (scaled >= center - 5 * spread) & (scaled <= center + 5 * spread)
    mean = np.where(keep, scaled, 0).sum(axis=0) / keep.sum(axis=0)
    # (float32: one pixel at 4.99999 sigma may go either way)
    assert np.sum(np.abs(result.data / (mean / np.median(mean)) - 1) > 1e-5) <= 3
    reference = guide_recipe(paths)
    unnormalised = result.data * result.normalisation
    differ = np.abs(unnormalised / reference.data - 1) > 1e-5
    assert 0.001 < differ.mean() < 0.15  # measured: 4.0 % of pixels


# -- 2. the documented difference: scaled vs unscaled clipping --------------------------------
def test_twilight_master_reaches_the_poisson_limit_and_ccdproc_does_not(twilight) -> None:
    seq, paths = twilight
    limit = poisson_limit(seq.levels, seq.gain)
    err = error_vs_truth(run(paths).data, seq.true_flat)
    assert np.std(err) <= 1.05 * limit  # measured 1.02
    assert np.abs(err).max() <= 10 * limit  # measured 5.6
    ccd = error_vs_truth(guide_recipe(paths).data, seq.true_flat)
    # measured: rms 5.2x the limit, worst pixel 99x (stars of the faint frames kept)
    assert np.std(ccd) > 2 * limit
    assert np.abs(ccd).max() > 30 * limit


def test_stars_are_what_unscaled_clipping_keeps(tmp_path: Path) -> None:
    """The same sequence without stars and cosmic rays: ccdproc is as good as flatd."""
    seq = simulate_sequence((128, 128), 10, seed=0, stars=False, cosmic_rays=False)
    paths = write_sequence(seq, tmp_path)
    limit = poisson_limit(seq.levels, seq.gain)
    ccd = error_vs_truth(guide_recipe(paths).data, seq.true_flat)
    ours = error_vs_truth(run(paths).data, seq.true_flat)
    assert np.std(ccd) < 1.1 * limit
    assert np.std(ours) < 1.1 * limit


# -- 3. compressed inputs ---------------------------------------------------------------------
def test_gzip_and_tile_compressed_inputs_give_the_same_master(tmp_path: Path) -> None:
    seq = simulate_sequence((64, 80), 6, seed=3)
    plain = run(write_sequence(seq, tmp_path / "plain"))
    gzipped = run(write_sequence(seq, tmp_path / "gzip", compress="gzip"))
    tile_paths = write_sequence(seq, tmp_path / "tile", compress="tile")
    tiled = run(tile_paths)
    np.testing.assert_array_equal(gzipped.data, plain.data)
    np.testing.assert_array_equal(gzipped.uncertainty, plain.uncertainty)
    assert gzipped.threads == 1  # a gzip stream is read in order
    noise = poisson_limit(seq.levels)
    # tile compression quantises floats to ~1/16 of the noise, which also moves a few
    # values across a (6-frame, mad_std) clip threshold: measured rms 0.18, max 3.7 x noise
    diff = tiled.data / plain.data - 1
    assert 0 < np.std(diff) < 0.3 * noise
    # without the clip only the quantisation remains: measured max 0.11 x noise
    diff = (
        run(tile_paths, sigma_clip=False).data
        / run(write_sequence(seq, tmp_path / "plain"), sigma_clip=False).data
        - 1
    )
    assert 0 < np.abs(diff).max() < 0.2 * noise
    assert np.std(diff) < 0.03 * noise


# -- 4. memory ----------------------------------------------------------------------------------
def test_memory_limit_bounds_peak_and_does_not_change_the_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    truth = 1 + 0.1 * rng.standard_normal((512, 512))
    seq = simulate_sequence((16, 16), 24, seed=4, stars=False, cosmic_rays=False)
    seq.frames[:] = [rng.poisson(level * truth).astype(np.float32) for level in seq.levels]
    paths = write_sequence(seq, tmp_path)
    free = run(paths, mem_limit_mb=2000)
    tight = run(paths, mem_limit_mb=16)
    assert tight.peak_bytes <= 16 * 1_000_000
    assert tight.rows_per_band < free.rows_per_band
    assert tight.rows_per_band * tight.threads < 512 // 4  # many bands
    np.testing.assert_array_equal(tight.data, free.data)
    np.testing.assert_array_equal(tight.uncertainty, free.uncertainty)
    assert [s.clipped_fraction for s in tight.stats] == [s.clipped_fraction for s in free.stats]
    assert free.peak_bytes <= 2000 * 1_000_000


def test_memory_limit_too_small_for_the_outputs_is_a_named_error(tmp_path: Path) -> None:
    seq = simulate_sequence((512, 512), 2, seed=5, stars=False, cosmic_rays=False)
    paths = write_sequence(seq, tmp_path)
    with pytest.raises(MemoryError, match=r"combine\.mem_limit_mb"):
        run(paths, mem_limit_mb=2)  # 512x512 outputs alone take 2.4 MB


# -- 5. non-finite values ---------------------------------------------------------------------
def _nan_sequence(tmp_path: Path, n: int = 7) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(6)
    truth = 1 + 0.05 * rng.standard_normal((40, 50))
    stack = np.array(
        [
            rng.normal(level * truth, np.sqrt(level * truth))
            for level in np.geomspace(30000, 8000, n)
        ],
        np.float32,
    )
    stack[0, 3, 4] = np.nan  # one frame
    stack[1:4, 10, 11] = np.nan  # three frames
    stack[:, 20, 21] = np.nan  # every frame
    stack[2, 30, 31] = np.inf
    stack[5, 30, 31] = 1e6  # a cosmic ray for the clip
    paths = [tmp_path / f"nan_{i}.fits" for i in range(n)]
    for path, frame in zip(paths, stack, strict=True):
        write_frame(path, frame)
    return paths, stack.astype(np.float64)


@pytest.mark.parametrize("clip", [False, True])
def test_non_finite_pixels_are_ignored(tmp_path: Path, clip: bool) -> None:
    paths, stack = _nan_sequence(tmp_path)
    result = run(paths, sigma_clip=clip)
    stack[~np.isfinite(stack)] = np.nan
    scaled = stack / np.nanmedian(stack.reshape(len(stack), -1), axis=1)[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if clip:
            center = np.nanmedian(scaled, axis=0)
            spread = mad_std(scaled, axis=0, ignore_nan=True)
            scaled[(scaled < center - 5 * spread) | (scaled > center + 5 * spread)] = np.nan
        mean = np.nanmean(scaled, axis=0)
    expected = mean / np.nanmedian(mean)
    assert result.mask.sum() == 1 and result.mask[20, 21]
    assert result.data[20, 21] == 1.0
    assert result.uncertainty[20, 21] == 0.0
    good = ~result.mask
    assert rel_diff(result.data[good], expected[good]) < 1e-5
    assert np.isfinite(result.data).all() and np.isfinite(result.uncertainty).all()
    assert result.data[30, 31] == pytest.approx(expected[30, 31], rel=1e-5)
    if clip:
        assert result.stats[5].clipped_fraction > 0


# -- 6. other methods, scales and deviations --------------------------------------------------
def _small_sequence(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    seq = simulate_sequence((48, 64), 7, seed=7)
    paths = write_sequence(seq, tmp_path)
    return paths, raw_stack(paths)


def test_median_method_equals_numpy_median_of_the_scaled_stack(tmp_path: Path) -> None:
    paths, raw = _small_sequence(tmp_path)
    result = run(paths, method="median", sigma_clip=False)
    median = np.median(raw / np.median(raw, axis=(1, 2))[:, None, None], axis=0)
    assert rel_diff(result.data, median / np.median(median)) < 1e-6
    clipped = run(paths, method="median")
    assert np.isfinite(clipped.data).all() and not clipped.mask.any()
    assert abs(np.median(clipped.data) - 1) < 1e-6


@pytest.mark.parametrize("scale", ["mean", "none"])
def test_mean_and_no_scaling(tmp_path: Path, scale: str) -> None:
    paths, raw = _small_sequence(tmp_path)
    result = run(paths, scale=scale, sigma_clip=False)
    factors = 1 / raw.mean(axis=(1, 2)) if scale == "mean" else np.ones(len(raw))
    mean = (raw * factors[:, None, None]).mean(axis=0)
    assert rel_diff(result.data, mean / np.median(mean)) < 1e-5
    assert [s.scale for s in result.stats] == pytest.approx(list(factors), rel=1e-6)
    assert np.median(result.data) == pytest.approx(1.0, abs=1e-6)


def test_std_deviation_clips_like_numpy(tmp_path: Path) -> None:
    paths, raw = _small_sequence(tmp_path)
    result = run(paths, deviation="std", sigma_low=2.0, sigma_high=2.0)
    scaled = raw / np.median(raw, axis=(1, 2))[:, None, None]
    center, spread = np.median(scaled, axis=0), np.std(scaled, axis=0)
    keep = (scaled >= center - 2 * spread) & (scaled <= center + 2 * spread)
    mean = np.where(keep, scaled, 0).sum(axis=0) / keep.sum(axis=0)
    assert rel_diff(result.data, mean / np.median(mean)) < 1e-5
    assert all(s.clipped_fraction > 0.01 for s in result.stats)


def test_mean_center(tmp_path: Path) -> None:
    paths, raw = _small_sequence(tmp_path)
    result = run(paths, center="mean", sigma_low=3.0, sigma_high=3.0)
    scaled = raw / np.median(raw, axis=(1, 2))[:, None, None]
    center, spread = scaled.mean(axis=0), mad_std(scaled, axis=0)
    keep = (scaled >= center - 3 * spread) & (scaled <= center + 3 * spread)
    mean = np.where(keep, scaled, 0).sum(axis=0) / np.maximum(keep.sum(axis=0), 1)
    good = keep.any(axis=0)
    assert rel_diff(result.data[good], (mean / np.median(mean[good]))[good]) < 1e-4


# -- 7. the noise deviation, for small stacks --------------------------------------------------
def test_noise_deviation_removes_stars_from_three_frames(tmp_path: Path) -> None:
    gain = 2.5
    seq = simulate_sequence((256, 256), 3, seed=0, gain=gain)
    paths = write_sequence(seq, tmp_path)
    limit = poisson_limit(seq.levels, gain)
    sigma = limit / np.sqrt(seq.true_flat)  # the master's expected noise, per pixel
    # pixels where two of the three frames hold a star cannot be recovered by any clip
    deviations = [
        np.abs(f / (level * seq.true_flat) - 1) * np.sqrt(gain * level)
        for f, level in zip(seq.frames, seq.levels, strict=True)
    ]
    majority = np.sum(np.array(deviations) > 8, axis=0) >= 2
    noise = np.abs(error_vs_truth(run(paths, deviation="noise").data, seq.true_flat)) / sigma
    mad = np.abs(error_vs_truth(run(paths).data, seq.true_flat)) / sigma
    assert noise[~majority].max() < 10  # measured 6.3
    assert mad[~majority].max() > noise[~majority].max()  # measured 24.7
    # gain and read noise from the settings instead of the headers: the same
    settings = run(paths, deviation="noise", gain=gain, read_noise=5.0)
    np.testing.assert_array_equal(
        np.abs(error_vs_truth(settings.data, seq.true_flat)) / sigma, noise
    )


def test_noise_deviation_clips_no_good_value(tmp_path: Path) -> None:
    """Without stars or cosmic rays nothing should be clipped at 5 sigma, also in the
    brightest frame, whose noise is far below that of the median of a 3-frame stack."""
    seq = simulate_sequence((256, 256), 3, seed=0, stars=False, cosmic_rays=False)
    result = run(write_sequence(seq, tmp_path), deviation="noise")
    # a 5-sigma test over 3 x 65536 values may fire once or twice by chance; the bug this
    # guards against clipped ~80 pixels of the brightest frame
    assert all(s.clipped_fraction <= 4 / 65536 for s in result.stats), result.stats


def test_noise_deviation_needs_a_gain(tmp_path: Path) -> None:
    seq = simulate_sequence((16, 16), 3, seed=0)
    paths = write_sequence(seq, tmp_path)
    for path in paths:
        with fits.open(path, mode="update") as hdul:
            del hdul[0].header["GAIN"]
    with pytest.raises(ValueError, match="gain"):
        run(paths, deviation="noise")


# -- 8. progress ----------------------------------------------------------------------------
def test_progress_reaches_total(twilight) -> None:
    _, paths = twilight
    calls: list[tuple[int, int]] = []
    result = combine(
        frames_of(paths),
        CombineConfig(mem_limit_mb=20),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert len(calls) >= 2 and calls[-1] == (256, 256)
    assert all(total == 256 for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert len(calls) == -(-256 // result.rows_per_band)


def test_an_exception_in_progress_propagates_and_stops_the_workers(twilight) -> None:
    _, paths = twilight
    before = set(threading.enumerate())
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        raise KeyboardInterrupt("stop")

    frames = frames_of(paths)
    with pytest.raises(KeyboardInterrupt, match="stop"):
        combine(frames, CombineConfig(mem_limit_mb=20), progress=progress)
    assert len(calls) <= 2  # one per worker at most: the others stop at the next band
    assert set(threading.enumerate()) <= before
    # and the same frames combine fine afterwards (no file left open or locked)
    assert combine(frames, CombineConfig()).data.shape == (256, 256)


def test_settings_are_a_frozen_dataclass() -> None:
    # the tests above build settings by keyword; a renamed field must fail loudly here
    names = {f.name for f in dataclasses.fields(CombineConfig)}
    assert {"method", "scale", "sigma_clip", "deviation", "mem_limit_mb", "dtype"} <= names
