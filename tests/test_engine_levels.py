"""The levels pass: exact medians in one streaming pass (and when the sample's bracket
misses), every stored type read alike, and the structure check settled on the sample rows
before anything is combined, so a sequence is combined once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.engine import PixelSource, measure, score_structure
from flatd.engine.levels import SMALL, sample_row_indices
from flatd.engine.pixels import PlaneReader
from flatd.pipeline import make_master
from flatd.quality import checks
from flatd.simulation.flats import simulate_sequence
from tests.helpers import frames_of, write_frame
from tests.sequences import config_for, dome_half_closed, sequence_of, write_simulated


@pytest.mark.parametrize("shape", [(50, 60), (300, 400)], ids=["in memory", "streamed"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int16"])
def test_median_is_exact(tmp_path: Path, shape: tuple[int, int], dtype: str) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(20000, 300, shape).astype(dtype)
    if dtype != "int16":
        data[3, :7] = np.nan
    path = write_frame(tmp_path / "f.fits", data)
    levels = measure(frames_of([path])[0], saturation_level=20500)
    finite = data[np.isfinite(data)].astype(np.float64)
    assert levels.median == np.median(finite.astype(np.float32))
    assert levels.mean == pytest.approx(finite.mean(), rel=1e-9)
    assert levels.saturated_fraction == np.count_nonzero(finite >= 20500) / data.size
    assert (shape[0] * shape[1] > SMALL) == (shape == (300, 400))


def test_median_is_exact_when_the_sample_rows_mislead(tmp_path: Path) -> None:
    """The sample rows are dark, the rest bright: the bracket misses and the frame is
    read whole."""
    data = np.full((400, 300), 30000.0, np.float32)
    data += np.arange(data.size, dtype=np.float32).reshape(data.shape) % 97
    data[sample_row_indices(400)] = 100.0
    path = write_frame(tmp_path / "odd.fits", data)
    assert measure(frames_of([path])[0]).median == np.median(data)


def test_stored_integers_are_read_as_their_physical_values(tmp_path: Path) -> None:
    physical = np.arange(12 * 10, dtype=np.float64).reshape(12, 10) * 500
    path = tmp_path / "u16.fits"
    fits.PrimaryHDU(physical.astype(np.uint16)).writeto(path)  # BITPIX 16, BZERO 32768
    header = fits.getheader(path)
    assert (header["BITPIX"], header["BZERO"]) == (16, 32768)
    source = PixelSource(path, (12, 10), 16, data_offset=2880, bzero=32768.0)
    out = np.empty((5, 10), np.float32)
    with PlaneReader(source) as reader:
        reader.read_rows(3, 8, out)
    np.testing.assert_array_equal(out, physical[3:8])


# -- unlike the others, judged before combining -------------------------------------------
def frames_with(tmp_path: Path, spoil) -> tuple[list[Path], dict]:
    seq = simulate_sequence((256, 256), 8, seed=7)
    paths = write_simulated(seq, tmp_path, edit=lambda i, d, h: spoil(d, h) if i == 5 else (d, h))
    frames = frames_of(paths)
    return paths, score_structure({f.path: measure(f) for f in frames})


def cloud_edge(data, header):
    """A thin cloud over one corner: up to 5 % darker, fading out over 180 pixels."""
    y, x = np.mgrid[: data.shape[0], : data.shape[1]]
    cloud = 1 - 0.05 * np.clip(1 - np.hypot(y, x) / 180, 0, 1)
    return (data * cloud).astype(np.float32), header


def test_a_cloud_edge_departs_and_is_rejected(tmp_path: Path) -> None:
    paths, levels = frames_with(tmp_path, cloud_edge)
    reasons = checks.structure_outliers(levels)
    assert list(reasons) == [paths[5]]
    assert "a region departs by 0.02" in reasons[paths[5]]
    assert max(levels[p].structure for p in paths if p != paths[5]) < 0.01
    assert all(not level.samples for level in levels.values())  # dropped once scored


def test_a_half_closed_dome_is_far_from_the_median_image(tmp_path: Path) -> None:
    paths, levels = frames_with(tmp_path, lambda d, h: dome_half_closed(0, d, h))
    reasons = checks.structure_outliers(levels)
    assert list(reasons) == [paths[5]]
    assert "of its pixels far from it" in reasons[paths[5]]
    assert levels[paths[5]].outlying_fraction > 0.3


def test_fewer_than_three_frames_are_not_scored(tmp_path: Path) -> None:
    paths, _ = frames_with(tmp_path, cloud_edge)
    two = score_structure(
        {p: measure(f) for p, f in zip(paths[:2], frames_of(paths[:2]), strict=True)}
    )
    assert all(np.isnan(level.structure) for level in two.values())
    assert checks.structure_outliers(two) == {}


def test_a_sequence_with_a_rejected_frame_is_combined_once(tmp_path: Path) -> None:
    """Before, a frame rejected as unlike the others cost a second full combination; the
    progress of the one combination now runs from the first band to the last once."""
    seq = simulate_sequence((256, 256), 9, seed=11)
    paths = write_simulated(
        seq, tmp_path / "in", edit=lambda i, d, h: dome_half_closed(i, d, h) if i == 4 else (d, h)
    )
    config = config_for(tmp_path)
    calls: list[int] = []
    result = make_master(
        sequence_of(paths, config), config, progress=lambda done, total: calls.append(done)
    )
    assert result.outcome == "done" and list(result.rejected) == [paths[4]]
    # a second combination would start again from its first band: the calls would fall back
    assert calls == sorted(calls) and calls[-1] == 256 and calls.count(128) == 1
