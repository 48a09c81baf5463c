"""The fake camera: its true flat, its frames, its headers, its files and its CLI."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.config import Config
from flatd.frames import Frame, read_frame
from flatd.simulation import flats as simulate
from flatd.simulation.flats import SimulatedSequence, simulate_sequence, write_sequence

HEADER_KEYS = (
    "IMAGETYP",
    "FILTER",
    "INSTRUME",
    "XBINNING",
    "YBINNING",
    "DATE-OBS",
    "EXPTIME",
    "GAIN",
    "RDNOISE",
    "SATURATE",
    "BUNIT",
    "ORIGIN",
)


@pytest.fixture(scope="module")
def clean() -> SimulatedSequence:
    """No stars, no cosmic rays: only the flat and the noise."""
    return simulate_sequence(
        shape=(200, 240),
        n_frames=6,
        seed=4,
        stars=False,
        cosmic_rays=False,
        gain=2.0,
        read_noise=8.0,
    )


def test_true_flat_median_vignetting_and_dust() -> None:
    seq = simulate_sequence(shape=(256, 256), n_frames=1, seed=1)
    flat = seq.true_flat
    assert flat.dtype == np.float64 and flat.shape == (256, 256)
    assert np.median(flat) == pytest.approx(1.0, abs=1e-12)
    corners = [flat[:16, :16], flat[:16, -16:], flat[-16:, :16], flat[-16:, -16:]]
    centre = np.median(flat[112:144, 112:144])
    for corner in corners:
        assert 0.75 < np.median(corner) / centre < 0.9  # 10-25 % falloff
    # dust: compared with the same flat without dust, some pixels are >= 5 % lower
    no_dust = simulate_sequence(shape=(256, 256), n_frames=1, seed=1, dust=False).true_flat
    ratio = flat / no_dust
    ratio /= np.median(ratio)
    assert ratio.min() <= 0.95
    assert 0.0005 < np.mean(ratio < 0.97) < 0.2  # a few donuts, not the whole frame
    assert np.all(ratio < 1.0 + 1e-9)  # dust only takes light away


def _smooth(flat: np.ndarray) -> np.ndarray:
    """The local smooth response: a least-squares quadratic surface (vignetting is one)."""
    y, x = np.mgrid[: flat.shape[0], : flat.shape[1]] / max(flat.shape)
    basis = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y]).reshape(6, -1).T
    coefficients, *_ = np.linalg.lstsq(basis, flat.ravel(), rcond=None)
    return (basis @ coefficients).reshape(flat.shape)


def test_dust_visible_against_local_smooth_response() -> None:
    flat = simulate_sequence(shape=(256, 256), n_frames=1, seed=2, dust=True).true_flat
    assert (flat / _smooth(flat)).min() <= 0.95
    clean_flat = simulate_sequence(shape=(256, 256), n_frames=1, seed=2, dust=False).true_flat
    residual = clean_flat / _smooth(clean_flat)
    assert residual.min() > 0.95  # PRNU alone is ~1 %: 5 sigma away
    assert np.std(residual) == pytest.approx(0.01, rel=0.1)


def test_reproducible_with_seed() -> None:
    a = simulate_sequence(shape=(64, 80), n_frames=3, seed=7)
    b = simulate_sequence(shape=(64, 80), n_frames=3, seed=7)
    c = simulate_sequence(shape=(64, 80), n_frames=3, seed=8)
    np.testing.assert_array_equal(a.true_flat, b.true_flat)
    for fa, fb in zip(a.frames, b.frames, strict=True):
        np.testing.assert_array_equal(fa, fb)
    assert not np.allclose(a.true_flat, c.true_flat)
    assert not np.array_equal(a.frames[0], c.frames[0])


def test_frames_levels_and_noise(clean: SimulatedSequence) -> None:
    assert len(clean.frames) == len(clean.levels) == len(clean.headers) == 6
    assert clean.levels[0] == pytest.approx(40000.0)
    assert clean.levels[-1] == pytest.approx(5000.0)
    assert all(a > b for a, b in zip(clean.levels, clean.levels[1:], strict=False))
    ratios = np.array(clean.levels[1:]) / np.array(clean.levels[:-1])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)  # geometric fall
    for frame, level in zip(clean.frames, clean.levels, strict=True):
        assert frame.dtype == np.float32 and frame.shape == (200, 240)
        assert np.median(frame) / level == pytest.approx(1.0, abs=0.01)
        residual = frame[50:150, 60:180] / clean.true_flat[50:150, 60:180] - level
        expected = np.sqrt(level / clean.gain + clean.read_noise**2 / clean.gain**2)
        assert np.std(residual) == pytest.approx(expected, rel=0.10)
    assert (clean.gain, clean.read_noise) == (2.0, 8.0)


def test_read_noise_dominated_frames() -> None:
    seq = simulate_sequence(
        shape=(128, 128),
        n_frames=2,
        seed=9,
        stars=False,
        cosmic_rays=False,
        levels=(200.0, 100.0),
        gain=2.0,
        read_noise=20.0,
    )
    for frame, level in zip(seq.frames, seq.levels, strict=True):
        residual = frame[32:96, 32:96] / seq.true_flat[32:96, 32:96] - level
        expected = np.sqrt(level / 2.0 + 20.0**2 / 2.0**2)  # read noise 10 ADU dominates
        assert np.std(residual) == pytest.approx(expected, rel=0.10)
        assert np.mean(residual) == pytest.approx(0.0, abs=1.0)


def test_single_frame_uses_first_level() -> None:
    seq = simulate_sequence(shape=(16, 16), n_frames=1, levels=(30000.0, 1000.0))
    assert seq.levels == [30000.0]


def test_stars_and_cosmic_rays_stand_out() -> None:
    kwargs = {"shape": (128, 128), "n_frames": 3, "seed": 3, "levels": (8000.0, 4000.0)}
    plain = simulate_sequence(stars=False, cosmic_rays=False, **kwargs)
    busy = simulate_sequence(stars=True, cosmic_rays=True, **kwargs)
    bright = []
    for p, b, level in zip(plain.frames, busy.frames, busy.levels, strict=True):
        excess = (b - p) / level
        assert excess.max() > 0.4  # stars at >= 0.5 x level, cosmic rays of thousands of ADU
        assert b.max() <= 65535.0
        bright.append(excess > 0.3)
    # the stars move from frame to frame
    assert not np.array_equal(bright[0], bright[1])
    assert (bright[0] & bright[1]).sum() < 0.5 * min(bright[0].sum(), bright[1].sum())


def test_headers(clean: SimulatedSequence) -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, 250000)
    seq = simulate_sequence(
        shape=(8, 8),
        n_frames=4,
        filter_name="Ha",
        start=start,
        instrument="CAM2",
        binning=2,
        exposure=3.0,
        cadence_seconds=45.5,
        gain=1.5,
        read_noise=4.0,
    )
    for i, header in enumerate(seq.headers):
        assert isinstance(header, fits.Header)
        for key in HEADER_KEYS:
            assert key in header, key
        assert header["IMAGETYP"] == "Flat Field"
        assert (header["FILTER"], header["INSTRUME"]) == ("Ha", "CAM2")
        assert header["XBINNING"] == header["YBINNING"] == 2
        assert (header["EXPTIME"], header["GAIN"], header["RDNOISE"]) == (3.0, 1.5, 4.0)
        assert header["SATURATE"] == 65535.0 and header["BUNIT"] == "adu"
        assert header["ORIGIN"] == "flatd simulate"
        when = datetime.strptime(header["DATE-OBS"], "%Y-%m-%dT%H:%M:%S.%f")
        assert len(header["DATE-OBS"]) == len("2026-01-02T03:04:05.250")
        assert when == start + timedelta(seconds=45.5 * i)
    assert clean.headers[0]["DATE-OBS"] == "2026-11-23T17:30:00.000"
    assert clean.headers[1]["DATE-OBS"] == "2026-11-23T17:30:30.000"


@pytest.mark.parametrize(
    ("compress", "suffix"), [("none", ".fits"), ("gzip", ".fits.gz"), ("tile", ".fits.fz")]
)
def test_write_sequence(tmp_path: Path, compress: str, suffix: str) -> None:
    seq = simulate_sequence(shape=(40, 56), n_frames=3, filter_name="r", seed=5)
    paths = write_sequence(seq, tmp_path / "out", compress=compress)
    assert [p.name for p in paths] == [f"flat_r_{i:03d}{suffix}" for i in range(3)]
    assert sorted((tmp_path / "out").iterdir()) == paths  # no temporaries left behind
    for path, frame, header in zip(paths, seq.frames, seq.headers, strict=True):
        with fits.open(path) as hdus:
            if compress == "tile":
                assert isinstance(hdus[1], fits.CompImageHDU)
                data, read_header = hdus[1].data, hdus[1].header
                np.testing.assert_allclose(data, frame, rtol=0.01)
            else:
                data, read_header = hdus[0].data, hdus[0].header
                np.testing.assert_array_equal(data, frame)
            assert read_header["FILTER"] == "r"
            assert read_header["DATE-OBS"] == header["DATE-OBS"]
            assert read_header["IMAGETYP"] == "Flat Field"


def test_write_sequence_sanitises_filter(tmp_path: Path) -> None:
    seq = simulate_sequence(shape=(8, 8), n_frames=1, filter_name="H alpha/656")
    [path] = write_sequence(seq, tmp_path, prefix="sky")
    assert path.name == "sky_H-alpha-656_000.fits"
    assert fits.getheader(path)["FILTER"] == "H alpha/656"


def _cli(argv: list[str]) -> int:
    try:
        from flatd.cli import main
    except ImportError:  # pragma: no cover - only when the rest of flatd is missing
        parser = argparse.ArgumentParser()
        simulate.add_arguments(parser)
        return simulate.run(parser.parse_args(argv[1:]))
    return main(argv)


def test_cli_writes_flats_broken_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = _cli(
        [
            "simulate",
            str(out),
            "--filters",
            "g,r",
            "--frames",
            "3",
            "--shape",
            "32x48",
            "--broken",
            "1",
            "--truth",
            "--quiet",
        ]
    )
    assert code == 0
    flats = sorted(out.glob("flat_*.fits"))
    assert [p.name for p in flats] == [f"flat_{f}_{i:03d}.fits" for f in "gr" for i in range(3)]
    assert [p.name for p in out.glob("broken_*")] == ["broken_000.fits"]
    truth = sorted((out / "truth").iterdir())
    assert [p.name for p in truth] == ["true_flat_g.fits", "true_flat_r.fits"]
    assert not [p for p in out.rglob(".*")]  # no temporaries left
    times = []
    for path in flats:
        data, header = fits.getdata(path, header=True)
        assert data.shape == (48, 32)  # WIDTHxHEIGHT
        times.append(datetime.fromisoformat(header["DATE-OBS"]))
    assert times == sorted(times) and len(set(times)) == 6  # filters follow each other
    for path in truth:
        data, header = fits.getdata(path, header=True)
        assert header["IMAGETYP"] == "TRUTH" and data.shape == (48, 32)
        assert np.median(data) == pytest.approx(1.0, abs=1e-6)
    broken = (out / "broken_000.fits").read_bytes()
    assert broken.startswith(b"SIMPLE  =") and len(broken) % 2880 != 0  # truncated
    assert len(broken) < 2880 + 32 * 32 * 4
    g_truth, r_truth = (fits.getdata(p) for p in truth)
    assert not np.array_equal(g_truth, r_truth)  # each filter has its own seed


def test_cli_writes_a_multi_amplifier_camera(tmp_path: Path) -> None:
    """`flatd simulate --extensions 4`: each frame an empty primary HDU and four image
    extensions AMP1..AMP4 of --shape, each with its DETSEC; and flatd reads them as such."""
    out = tmp_path / "out"
    args = ["simulate", str(out), "--filters", "r", "--frames", "3", "--shape", "32x48"]
    assert _cli([*args, "--extensions", "4", "--quiet"]) == 0
    flats = sorted(out.glob("flat_*.fits"))
    assert len(flats) == 3
    with fits.open(flats[0]) as hdul:
        assert hdul[0].data is None
        assert [h.name for h in hdul[1:]] == ["AMP1", "AMP2", "AMP3", "AMP4"]
        assert all(h.data.shape == (48, 32) and h.header.get("DETSEC") for h in hdul[1:])
    frame = read_frame(flats[0], Config().frames)
    assert isinstance(frame, Frame) and [e.name for e in frame.extensions] == [
        "AMP1",
        "AMP2",
        "AMP3",
        "AMP4",
    ]


def test_cli_prints_and_compresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cam"
    code = _cli(
        [
            "simulate",
            str(out),
            "--filters",
            "i",
            "--frames",
            "2",
            "--shape",
            "16x8",
            "--compress",
            "tile",
            "--write-mode",
            "slow",
            "--start",
            "2027-01-01T00:00:00Z",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"wrote {out / 'flat_i_000.fits.fz'}  level 40000",
        f"wrote {out / 'flat_i_001.fits.fz'}  level 5000",
    ]
    with fits.open(out / "flat_i_001.fits.fz") as hdus:
        assert hdus[1].data.shape == (8, 16)
        assert hdus[1].header["DATE-OBS"] == "2027-01-01T00:00:30.000"


@pytest.mark.parametrize("shape", ["32", "32x", "0x5", "axb", "32x48x2"])
def test_cli_bad_shape_is_a_usage_error(shape: str) -> None:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["out", "--shape", shape])
    assert exc.value.code == 2


def test_cli_shape_is_width_by_height() -> None:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(["out", "--shape", "32x48"])
    assert args.shape == (48, 32) and args.outdir == Path("out")
    assert args.filters == ["g", "r", "i"] and args.frames == 7 and args.pace == 0.0
    assert args.write_mode == "rename" and args.compress == "none" and args.broken == 0
