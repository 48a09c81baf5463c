"""The compiled kernel against the numpy engine it replaces: the same masters, bit for
bit, on real FITS files (partial tiles, both byte orders, several threads, non-finite
bands handed back to numpy), and the same frame levels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.config import CombineConfig
from flatd.engine import CombineResult, combine, kernel, measure
from flatd.simulate import simulate_sequence, write_sequence
from tests.conftest import frames_of

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="compiled kernel not built")


def test_kernel_is_built_where_a_compiler_is() -> None:
    if not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler here: flatd runs on numpy alone, as designed")
    assert kernel.built(), (
        "flatd's compiled kernel (flatd/_kernel.c) did not build: install a C compiler "
        "(e.g. apt install gcc) and reinstall (make clean test); flatd still works, slower"
    )


def both_engines(
    paths: list[Path], monkeypatch: pytest.MonkeyPatch, **settings: object
) -> tuple[CombineResult, CombineResult]:
    frames = frames_of(paths)
    fast = combine(frames, CombineConfig(**settings))
    monkeypatch.setenv("FLATD_ENGINE", "numpy")
    slow = combine(frames, CombineConfig(**settings))
    monkeypatch.delenv("FLATD_ENGINE")
    assert (fast.engine, slow.engine) == ("compiled", "numpy")
    return fast, slow


def assert_same_master(fast: CombineResult, slow: CombineResult) -> None:
    np.testing.assert_array_equal(fast.data, slow.data)
    np.testing.assert_array_equal(fast.uncertainty, slow.uncertainty)
    np.testing.assert_array_equal(fast.mask, slow.mask)
    assert fast.normalisation == slow.normalisation
    for a, b in zip(fast.stats, slow.stats, strict=True):
        assert (a.median, a.scale, a.clipped_fraction) == (b.median, b.scale, b.clipped_fraction)
        np.testing.assert_allclose(a.structure, b.structure, rtol=1e-5, atol=1e-9)


@needs_kernel
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 16, 33])
@pytest.mark.parametrize("clip", [True, False])
def test_kernel_equals_numpy_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, clip: bool
) -> None:
    # 150 columns: tiles of 64 end part-way, and structure blocks are not tile-aligned
    seq = simulate_sequence((70, 150), n, seed=n)
    fast, slow = both_engines(write_sequence(seq, tmp_path), monkeypatch, sigma_clip=clip)
    assert fast.threads == 2
    if clip and n >= 3:
        assert sum(s.clipped_fraction for s in fast.stats) > 0  # stars were clipped
    assert_same_master(fast, slow)


@needs_kernel
def test_kernel_reads_native_and_big_endian_frames_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float64 and scaled-integer frames reach the kernel converted, float32 frames as
    their file's bytes; one stack can hold both."""
    seq = simulate_sequence((40, 90), 6, seed=3)
    paths = write_sequence(seq, tmp_path)
    for path in paths[:2]:
        with fits.open(path, mode="update") as hdul:
            hdul[0].data = hdul[0].data.astype(np.float64)
    with fits.open(paths[2]) as hdul:
        header, data = hdul[0].header, hdul[0].data
    scaled = fits.PrimaryHDU(np.round(data).astype(np.int32), header)
    scaled.scale("int16", bzero=32768)
    paths[2].unlink()
    scaled.writeto(paths[2])
    fast, slow = both_engines(paths, monkeypatch)
    assert_same_master(fast, slow)


@needs_kernel
def test_bands_with_non_finite_values_fall_back_to_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seq = simulate_sequence((64, 80), 7, seed=5)
    paths = write_sequence(seq, tmp_path)
    with fits.open(paths[1], mode="update") as hdul:
        hdul[0].data[50, 3] = np.nan
        hdul[0].data[51, 70] = np.inf
    fast, slow = both_engines(paths, monkeypatch)
    assert_same_master(fast, slow)
    assert np.isfinite(fast.data).all()


@needs_kernel
def test_frame_levels_equal_numpy_tally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seq = simulate_sequence((300, 260), 2, seed=9)
    paths = write_sequence(seq, tmp_path)
    with fits.open(paths[0], mode="update") as hdul:
        hdul[0].data[10, :5] = [np.nan, np.inf, -np.inf, 70000.0, 80000.0]
    for frame in frames_of(paths):
        fast = measure(frame, saturation_level=60000.0)
        monkeypatch.setenv("FLATD_ENGINE", "numpy")
        slow = measure(frame, saturation_level=60000.0)
        monkeypatch.delenv("FLATD_ENGINE")
        assert fast.median == slow.median
        assert fast.saturated_fraction == slow.saturated_fraction
        assert fast.mean == pytest.approx(slow.mean, rel=1e-12)


@needs_kernel
def test_a_file_that_shrinks_is_named_by_the_kernel_reads(tmp_path: Path) -> None:
    seq = simulate_sequence((200, 300), 4, seed=11)
    paths = write_sequence(seq, tmp_path)
    frames = frames_of(paths)
    levels = {f.path: measure(f) for f in frames}
    with paths[2].open("r+b") as fh:
        fh.truncate(paths[2].stat().st_size * 3 // 4)
    with pytest.raises(EOFError, match=paths[2].name):
        measure(frames[2])
    with pytest.raises(EOFError) as failure:
        combine(frames, CombineConfig(), levels=levels)
    assert paths[2].name in str(failure.value)
    assert not any(p.name in str(failure.value) for p in paths if p != paths[2])
