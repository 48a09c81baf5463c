"""The compiled kernel against the numpy engine it replaces: the same masters, bit for
bit, on real FITS files (partial tiles, several threads, every BITPIX with BZERO/BSCALE,
saturated and non-finite values done per pixel), the same frame levels; and a library of
another ABI refused with a warning, the numpy engine taking over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.config import CombineConfig
from flatd.engine import CombineResult, combine, kernel, measure
from flatd.simulation.flats import simulate_sequence, write_sequence
from tests.helpers import frames_of

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="compiled kernel not built")


def both_engines(
    paths: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    saturation: float = 0.0,
    **settings: object,
) -> tuple[CombineResult, CombineResult]:
    frames = frames_of(paths)
    limits = {f.path: saturation for f in frames}
    fast = combine(frames, CombineConfig(**settings), saturation=limits)
    monkeypatch.setenv("FLATD_ENGINE", "numpy")
    slow = combine(frames, CombineConfig(**settings), saturation=limits)
    monkeypatch.delenv("FLATD_ENGINE")
    assert (fast.engine, slow.engine) == ("compiled", "numpy")
    return fast, slow


def assert_same_master(fast: CombineResult, slow: CombineResult) -> None:
    np.testing.assert_array_equal(fast.data, slow.data)
    np.testing.assert_array_equal(fast.uncertainty, slow.uncertainty)
    np.testing.assert_array_equal(fast.mask, slow.mask)
    assert fast.normalisation == slow.normalisation
    assert fast.masked_pixels == slow.masked_pixels
    for a, b in zip(fast.stats, slow.stats, strict=True):
        assert (a.median, a.scale, a.clipped_fraction) == (b.median, b.scale, b.clipped_fraction)
        assert a.structure == b.structure or (np.isnan(a.structure) and np.isnan(b.structure))


@needs_kernel
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 16, 33, 150])
@pytest.mark.parametrize("clip", [True, False])
def test_kernel_equals_numpy_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, clip: bool
) -> None:
    # 150 columns: tiles of 64 end part-way, and structure blocks are not tile-aligned
    seq = simulate_sequence((70, 150) if n < 100 else (8, 70), n, seed=n)
    fast, slow = both_engines(write_sequence(seq, tmp_path), monkeypatch, sigma_clip=clip)
    assert fast.threads == 2 or n == 150
    if clip and n >= 3:
        assert sum(s.clipped_fraction for s in fast.stats) > 0  # stars were clipped
    assert_same_master(fast, slow)


def rewrite(path: Path, data: np.ndarray, **cards: float) -> None:
    """Replace a frame's data, keeping its header; `cards` (BZERO, BSCALE) as given."""
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
    hdu = fits.PrimaryHDU(data, header)
    if cards:  # write these stored values with these cards, unscaled by astropy
        hdu.header.update(cards)
    path.unlink()
    hdu.writeto(path)


def stored_as(kind: str, physical: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Stored values and the cards that make them `physical` (FITS standard, section
    4.4.2.5: physical = BZERO + BSCALE * stored; uint16 is BITPIX 16 with BZERO 32768)."""
    if kind == "float64":
        return physical.astype(np.float64), {}
    if kind == "uint16":
        stored = np.clip(np.round(physical), 0, 65535) - 32768
        return stored.astype(np.int16), {"BZERO": 32768.0}
    if kind == "int32 scaled":
        return np.round(physical / 0.25 - 1000).astype(np.int32), {"BSCALE": 0.25, "BZERO": 250.0}
    if kind == "uint8":
        return np.clip(physical / 200, 0, 255).astype(np.uint8), {"BSCALE": 200.0}
    if kind == "int64":
        return np.round(physical).astype(np.int64), {}
    assert kind == "float32 scaled"
    return (physical / 2).astype(np.float32), {"BSCALE": 2.0, "BZERO": 0.5}


KINDS = ["float64", "uint16", "int32 scaled", "uint8", "int64", "float32 scaled"]


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_reads_every_bitpix_like_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The kernel reads (and converts) the files itself; one stack mixes stored types."""
    seq = simulate_sequence((40, 90), 6, seed=3)
    paths = write_sequence(seq, tmp_path)
    for path, physical in list(zip(paths, seq.frames, strict=True))[:3]:
        stored, cards = stored_as(kind, physical)
        rewrite(path, stored, **cards)
    fast, slow = both_engines(paths, monkeypatch, saturation=60000.0)
    assert_same_master(fast, slow)
    # astropy reads the stored values back as the physical ones the test meant
    assert np.median(fits.getdata(paths[0]) / seq.frames[0]) == pytest.approx(1, abs=0.01)


@needs_kernel
@pytest.mark.parametrize("kind", ["float32", *KINDS])
def test_frame_levels_of_every_bitpix_equal_numpys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    seq = simulate_sequence((300, 260), 1, seed=9)
    path = write_sequence(seq, tmp_path)[0]
    if kind != "float32":
        rewrite(path, *stored_as(kind, seq.frames[0])[:1], **stored_as(kind, seq.frames[0])[1])
    frame = frames_of([path])[0]
    fast = measure(frame, saturation_level=30000.0)
    monkeypatch.setenv("FLATD_ENGINE", "numpy")
    slow = measure(frame, saturation_level=30000.0)
    assert fast.median == slow.median
    assert fast.saturated_fraction == slow.saturated_fraction > 0
    assert fast.mean == pytest.approx(slow.mean, rel=1e-12)
    assert fast.median == pytest.approx(np.median(fits.getdata(path)), rel=1e-6)


@needs_kernel
@pytest.mark.parametrize("clip", [True, False])
def test_saturated_and_non_finite_pixels_are_done_per_pixel_like_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip: bool
) -> None:
    """Saturated star cores (0.5 % of each frame's pixels), NaN and infinities: the
    kernel keeps the band and redoes those pixels alone, bit for bit like numpy."""
    seq = simulate_sequence((64, 150), 7, seed=5)
    rng = np.random.default_rng(5)
    for frame in seq.frames:
        frame.reshape(-1)[rng.choice(frame.size, frame.size // 200, replace=False)] = 65535.0
    seq.frames[1][50, 3] = np.nan
    seq.frames[2][51, 70] = np.inf
    seq.frames[3][20, :] = -np.inf
    for frame in seq.frames[:-1]:
        frame[10, 10] = 70000.0  # one value left at (10, 10)
    for frame in seq.frames:
        frame[30, 40:45] = np.nan  # none left
    paths = write_sequence(seq, tmp_path)
    fast, slow = both_engines(paths, monkeypatch, saturation=65535.0, sigma_clip=clip)
    assert_same_master(fast, slow)
    assert fast.engine == "compiled"
    data = fast.data.astype(np.float32)
    assert fast.mask[30, 40:45].all() and (data[30, 40:45] == 1.0).all()
    assert not fast.mask[10, 10] and not fast.mask[20, :].any()
    assert np.isfinite(data).all() and (data > 0.5).all() and (data < 1.5).all()


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
