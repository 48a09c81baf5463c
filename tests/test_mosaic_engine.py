"""The engine on frames of several image extensions (a four-amplifier camera from the
simulator, which knows each extension's true flat and gain): accuracy against the truth
per extension, the amplifiers' ratios kept, the arithmetic against numpy and against
ccdproc per extension, and the memory limit held whether the planes stay in memory or
wait in a scratch file."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.config import CombineConfig, Config
from flatd.engine import CombineResult, combine
from flatd.frames import Frame, read_frame
from flatd.simulation.mosaic import SimulatedMosaic, simulate_mosaic, write_mosaic_sequence

ROOT = Path(__file__).resolve().parents[1]


def frames_of(paths: list[Path]) -> list[Frame]:
    frames = [read_frame(p, Config().frames) for p in paths]
    assert all(isinstance(f, Frame) and f.extensions for f in frames), frames
    return frames  # type: ignore[return-value]


def poisson_limit(levels: list[float]) -> float:
    """Relative noise of the average of frames of `levels` electrons where the flat is 1."""
    return float(np.sqrt(sum(1 / level for level in levels)) / len(levels))


def master_planes(result: CombineResult) -> list[np.ndarray]:
    return [result.plane(e).data.astype(np.float64) for e in range(len(result.extensions))]


@pytest.fixture(scope="module")
def amplifiers(tmp_path_factory: pytest.TempPathFactory) -> SimulatedMosaic:
    return simulate_mosaic((96, 112), 4, 9, seed=5)


@pytest.mark.parametrize("compress", ["none", "gzip", "tile"])
def test_each_amplifier_at_its_poisson_limit_and_their_ratios_kept(
    tmp_path: Path, amplifiers: SimulatedMosaic, compress: str
) -> None:
    paths = write_mosaic_sequence(amplifiers, tmp_path, compress=compress)
    result = combine(frames_of(paths), CombineConfig(), min_response=0.05, scratch=tmp_path)
    assert [e.name for e in result.extensions] == amplifiers.names
    masters, truth = master_planes(result), amplifiers.truth
    limit = poisson_limit(amplifiers.levels)
    for master, true in zip(masters, truth, strict=True):
        error = master / true
        assert np.std(error / np.median(error) - 1) < 1.10 * limit
    # the mosaic is normalised once: each amplifier's level relative to the others is
    # the truth's (its gain), to far better than 0.5 %
    ratios = [np.median(m / t) for m, t in zip(masters, truth, strict=True)]
    assert np.ptp(ratios) / np.mean(ratios) < 0.001
    assert np.median(np.concatenate([m.ravel() for m in masters])) == pytest.approx(1, abs=1e-6)
    gains = amplifiers.gains
    assert np.median(masters[0]) / np.median(masters[1]) == pytest.approx(
        np.median(truth[0]) / np.median(truth[1]), rel=0.005
    )
    assert np.median(truth[0]) / np.median(truth[1]) != pytest.approx(1, abs=0.01), gains


def test_without_clipping_equals_numpy_over_the_whole_mosaic(
    tmp_path: Path, amplifiers: SimulatedMosaic
) -> None:
    """Each frame scaled by 1/its median over all extensions, averaged, divided by the
    median of the whole mosaic."""
    paths = write_mosaic_sequence(amplifiers, tmp_path)
    result = combine(frames_of(paths), CombineConfig(sigma_clip=False))
    stacks = [[fits.getdata(p, e).astype(np.float64) for e in range(1, 5)] for p in paths]
    scales = [1 / np.median(np.concatenate([a.ravel() for a in frame])) for frame in stacks]
    means = [
        np.mean([frame[e] * s for frame, s in zip(stacks, scales, strict=True)], axis=0)
        for e in range(4)
    ]
    level = np.median(np.concatenate([m.ravel() for m in means]))
    for master, expected in zip(master_planes(result), means, strict=True):
        np.testing.assert_allclose(master, expected / level, rtol=2e-5)
    assert result.normalisation == pytest.approx(level, rel=2e-5)
    assert [s.scale for s in result.stats] == pytest.approx(scales, rel=1e-6)


def test_per_extension_normalisation_is_ccdproc_per_extension(
    tmp_path: Path, amplifiers: SimulatedMosaic
) -> None:
    """`combine.normalise = "extension"`: each extension as ccdproc combines it alone
    (scaled by 1/its own median, averaged), normalised to its own median 1."""
    ccdproc = pytest.importorskip("ccdproc")
    paths = write_mosaic_sequence(amplifiers, tmp_path)
    settings = CombineConfig(sigma_clip=False, normalise="extension")
    result = combine(frames_of(paths), settings)
    for e, (name, master) in enumerate(zip(amplifiers.names, master_planes(result), strict=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alone = ccdproc.combine(
                [str(p) for p in paths],
                method="average",
                scale=lambda a: 1 / np.ma.median(a),
                unit="adu",
                hdu=name,
            )
        expected = np.asarray(alone.data, np.float64)
        np.testing.assert_allclose(master, expected / np.median(expected), rtol=2e-5)
        assert np.median(master) == pytest.approx(1.0, abs=1e-6)
        assert result.extensions[e].normalisation == pytest.approx(np.median(expected), 2e-5)
    first = [s.plane_scales[0] for s in result.stats]
    assert first == pytest.approx([1 / np.median(fits.getdata(p, 1)) for p in paths], rel=1e-6)


def test_planes_that_do_not_fit_wait_in_a_scratch_file(tmp_path: Path) -> None:
    """Four 800x600 extensions (17 MB of outputs) under a 16 MB limit: each plane is
    combined in bands under the limit and spilled; the master is bit for bit the one
    held in memory."""
    sequence = simulate_mosaic((600, 800), 4, 5, seed=8, stars=False)
    frames = frames_of(write_mosaic_sequence(sequence, tmp_path / "in"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tight = combine(frames, CombineConfig(mem_limit_mb=16), min_response=0.05, scratch=scratch)
    roomy = combine(frames, CombineConfig(mem_limit_mb=350), min_response=0.05)
    assert tight.outputs is not None and tight.outputs.spilled
    assert roomy.outputs is not None and not roomy.outputs.spilled
    assert tight.peak_bytes <= 16_000_000 < roomy.peak_bytes
    assert list(scratch.iterdir()) == []  # anonymous: nothing is left behind, even by a crash
    assert tight.normalisation == roomy.normalisation
    for e in range(4):
        a, b = tight.plane(e), roomy.plane(e)
        assert np.array_equal(a.data, b.data) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.uncertainty, b.uncertainty) and a.masked == b.masked


def test_each_extension_is_clipped_against_its_own_saturation(tmp_path: Path) -> None:
    """A SATURATE of one extension leaves that extension's values above it out, not the
    others' (which the frame's level still includes)."""
    sequence = simulate_mosaic((40, 48), 2, 5, seed=4, stars=False)
    paths = write_mosaic_sequence(sequence, tmp_path)
    for path in paths:
        with fits.open(path, mode="update") as hdul:
            hdul[2].header["SATURATE"] = 1.0  # everything of AMP2 is "saturated"
    frames = frames_of(paths)
    saturation = {f.path: tuple(e.extras["SATURATE"] for e in f.extensions) for f in frames}
    result = combine(frames, CombineConfig(), saturation=saturation)
    assert result.plane(0).masked == 0
    assert result.plane(1).masked == 40 * 48  # no value left in any of its pixels


CHILD = """
import sys
from pathlib import Path
from flatd.config import CombineConfig, FramesConfig
from flatd.engine import combine, tune_allocator
from flatd.frames import read_frame

tune_allocator()
frames = [read_frame(Path(p), FramesConfig()) for p in sys.argv[3:]]
combine(frames[:3], CombineConfig(mem_limit_mb=350))  # imports and first-use caches


def status_kb(name):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith(name)).split()[1])


Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on (Linux >= 4.0)
before = status_kb("VmRSS:")
result = combine(frames, CombineConfig(mem_limit_mb=float(sys.argv[1])), scratch=Path(sys.argv[2]))
for e in range(len(result.extensions)):  # as the QA and the master file read them
    plane = result.plane(e)
    del plane
after = status_kb("VmHWM:")
print(before, after, result.peak_bytes, result.outputs.spilled)
"""


@pytest.mark.slow
def test_a_mosaic_stays_within_its_memory_limit_in_a_real_process(tmp_path: Path) -> None:
    """8 frames of 4 extensions of 1000x600 (77 MB of float32) under 20 MB: the process's
    resident memory grows by no more than the limit, planes read back included."""
    sequence = simulate_mosaic((600, 1000), 4, 8, seed=6, stars=False)
    paths = write_mosaic_sequence(sequence, tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, "20", str(tmp_path), *map(str, paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "FLATD_ENGINE": ""},
        cwd=ROOT,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    before_kb, after_kb, peak, spilled = child.stdout.split()
    assert spilled == "True" and int(peak) <= 20_000_000
    grown_mb = (int(after_kb) - int(before_kb)) * 1024 / 1_000_000
    assert grown_mb <= 20, f"resident memory grew {grown_mb:.1f} MB, limit 20 MB"


def test_the_noise_deviation_takes_each_extensions_own_gain(tmp_path: Path) -> None:
    """`deviation = "noise"` judges each value by its frame's noise in that extension:
    from that extension's GAIN (an amplifier's), and an extension without one is named."""
    sequence = simulate_mosaic((32, 40), 2, 5, seed=9)
    paths = write_mosaic_sequence(sequence, tmp_path)
    result = combine(frames_of(paths), CombineConfig(deviation="noise"))
    assert len(result.extensions) == 2
    with fits.open(paths[0], mode="update") as hdul:
        del hdul["AMP2"].header["GAIN"]
    with pytest.raises(ValueError, match=r"flat_r_000.fits\[AMP2\] has none"):
        combine(frames_of(paths), CombineConfig(deviation="noise"))
