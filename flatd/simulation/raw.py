"""A fake camera that writes raw frames: what a CCD's readout looks like before calibration.

The simulated twilight flat (`simulate`, with its known true flat) is read out through
simulated electronics:

    raw[row, prescan | image | overscan] = round(bias_level + row_offset[row]
                                                 + (image + structure + dark * EXPTIME
                                                    on the image columns only)
                                                 + Normal(0, read_noise) on the others)

stored as uint16 (BITPIX 16, BZERO 32768). `bias_level` (1000-1600 ADU per detector, a few
ADU of drift per frame) and `row_offset` (a slow wave plus a per-frame jitter of each row:
the pattern an overscan is there to remove) are in every column of a row, prescan and
overscan included; `structure` (a fixed column pattern and gradient of a few ADU) and
`dark` (hot pixels) are in the image columns only, so that only a master bias (and dark)
removes them. The header says where things are in FITS terms: `BIASSEC` (the overscan
strip, less its first columns), `TRIMSEC` and `DATASEC` (the image).

With the frames come the masters a careful observer would have: the master bias as the
astropy guide makes it (overscan-subtracted, trimmed, combined: the structure plus a
little noise) and, optionally, a bias-subtracted master dark of 300 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from flatd.simulation.flats import ORIGIN, _Camera, _iso, fits_bytes, sanitise, write_atomic

RAW_SATURATE = 65535.0
MASTER_BIAS_FRAMES = 25
MASTER_DARK_FRAMES = 10
MASTER_DARK_EXPTIME = 300.0
MASTERS_BEFORE = timedelta(hours=2)  # the masters were taken in the afternoon


@dataclass(frozen=True)
class RawLayout:
    """Where the image lies in a readout row: prescan, image, overscan columns."""

    prescan: int = 8
    overscan: int = 32
    skip: int = 2  # first overscan columns left out of BIASSEC (charge trailing in)

    def width(self, nx: int) -> int:
        return self.prescan + nx + self.overscan

    def cards(self, ny: int, nx: int) -> list[tuple[str, str, str]]:
        """BIASSEC, TRIMSEC and DATASEC of a readout of `ny` rows and `nx` image columns."""
        first, last = self.prescan + 1, self.prescan + nx
        image = f"[{first}:{last},1:{ny}]"
        overscan = f"[{last + 1 + self.skip}:{self.width(nx)},1:{ny}]"
        return [
            ("BIASSEC", overscan, "overscan section (columns x rows, 1-based)"),
            ("TRIMSEC", image, "section to keep after calibration"),
            ("DATASEC", image, "image section"),
        ]


class RawDetector:
    """The readout electronics of a simulated CCD (one per camera, shared by its filters)."""

    def __init__(
        self,
        shape: tuple[int, int],
        seed: int = 0,
        layout: RawLayout = RawLayout(),
        gain: float = 1.0,
        read_noise: float = 5.0,
        dark_current: bool = False,
    ) -> None:
        if layout.overscan <= layout.skip or min(layout.prescan, layout.skip) < 0:
            raise ValueError(f"overscan ({layout.overscan}) must exceed skip ({layout.skip})")
        self.shape = (int(shape[0]), int(shape[1]))
        self.layout = layout
        self.gain, self.read_noise = float(gain), float(read_noise)
        self.seed = int(seed)
        level_seq, structure_seq, dark_seq = np.random.SeedSequence([seed, 7]).spawn(3)
        rng = np.random.default_rng(level_seq)
        self.base_level = float(rng.uniform(1000.0, 1600.0))
        self._wave = (
            rng.uniform(2.0, 5.0),
            rng.uniform(0.5, 3.0) * self.shape[0],
            rng.uniform(0, 6),
        )
        self.structure = _bias_structure(self.shape, np.random.default_rng(structure_seq))
        self.dark_rate = (
            _hot_pixels(self.shape, np.random.default_rng(dark_seq)) if dark_current else None
        )

    @property
    def sigma(self) -> float:
        """Read noise in ADU."""
        return self.read_noise / self.gain

    def readout(
        self, image: np.ndarray, exptime: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, float]:
        """The uint16 raw readout of a calibrated `image` (ADU) and its bias level."""
        ny, nx = self.shape
        level = self.base_level + float(rng.normal(0.0, 3.0))
        amplitude, period, phase = self._wave
        rows = np.arange(ny)
        offsets = amplitude * np.sin(2 * np.pi * rows / period + phase + rng.uniform(0, 0.5))
        offsets += rng.normal(0.0, 1.5, ny)  # each row's own jump, different in every frame
        raw = rng.standard_normal((ny, self.layout.width(nx)), dtype=np.float32)
        raw *= self.sigma
        start = self.layout.prescan
        raw[:, start : start + nx] = image  # the image already carries its read noise
        raw[:, start : start + nx] += self.structure
        if self.dark_rate is not None:
            raw[:, start : start + nx] += self.dark_rate * np.float32(exptime)
        raw += (level + offsets).astype(np.float32)[:, None]
        np.rint(raw, out=raw)
        np.clip(raw, 0, RAW_SATURATE, out=raw)
        return raw.astype(np.uint16), level

    def master_bias(self) -> np.ndarray:
        """The guide's master bias: overscan-subtracted, trimmed, combined (float32)."""
        rng = np.random.default_rng([self.seed, 8])
        noise = rng.standard_normal(self.shape, dtype=np.float32)
        noise *= self.sigma / np.sqrt(MASTER_BIAS_FRAMES)
        return self.structure + noise

    def master_dark(self) -> np.ndarray:
        """A bias-subtracted master dark of MASTER_DARK_EXPTIME seconds (float32)."""
        if self.dark_rate is None:
            raise ValueError("this detector has no dark current")
        rng = np.random.default_rng([self.seed, 9])
        electrons = self.dark_rate * (MASTER_DARK_EXPTIME * self.gain)
        variance = (electrons + self.read_noise**2) / MASTER_DARK_FRAMES
        noise = rng.standard_normal(self.shape, dtype=np.float32) * np.sqrt(variance)
        return ((electrons + noise) / self.gain).astype(np.float32)


def _bias_structure(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A fixed column pattern (~2 ADU) and a gentle gradient (a few ADU) across the image."""
    ny, nx = shape
    columns = rng.normal(0.0, 2.0, nx).astype(np.float32)
    gradient = np.linspace(0.0, rng.uniform(2.0, 6.0), ny, dtype=np.float32)
    return gradient[:, None] + columns[None, :]


def _hot_pixels(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Dark current in ADU/s: a low floor and 1 % hot pixels at 5-50 ADU/s."""
    rate = np.full(shape, 0.002, np.float32)
    hot = rng.random(shape) < 0.01
    rate[hot] = rng.uniform(5.0, 50.0, int(hot.sum())).astype(np.float32)
    return rate


class RawCamera:
    """One filter's raw frames: a simulated flat sequence read out by a detector."""

    def __init__(self, camera: _Camera, detector: RawDetector, seed: int) -> None:
        if camera.shape != detector.shape:
            raise ValueError(f"camera shape {camera.shape} is not the detector's {detector.shape}")
        self.camera, self.detector = camera, detector
        self._seeds = np.random.SeedSequence([seed, 11]).spawn(max(camera.n_frames, 0))
        self.bias_levels: dict[int, float] = {}

    def frame(self, i: int) -> np.ndarray:
        """Raw frame i (uint16); its bias level is kept in `bias_levels[i]`."""
        rng = np.random.default_rng(self._seeds[i])
        raw, level = self.detector.readout(self.camera.frame(i), self.camera.exposure, rng)
        self.bias_levels[i] = level
        return raw

    def header(self, i: int) -> fits.Header:
        header = self.camera.header(i)
        ny, nx = self.detector.shape
        header["BUNIT"] = ("adu", "raw: bias and overscan not subtracted")
        header["SATURATE"] = (RAW_SATURATE, "[ADU] raw saturation level")
        for keyword, value, comment in self.detector.layout.cards(ny, nx):
            header[keyword] = (value, comment)
        header["COMMENT"] = "Simulated raw readout written by flatd simulate --raw."
        return header


def master_header(
    kind: str, detector: RawDetector, when: datetime, instrument: str = "SIMCAM", binning: int = 1
) -> fits.Header:
    """The header of a simulated master bias or dark, as the guide's recipe leaves it."""
    ny, nx = detector.shape
    layout = detector.layout
    trim = f"[{layout.prescan + 1}:{layout.prescan + nx},1:{ny}]"
    header = fits.Header()
    header["IMAGETYP"] = (kind.upper(), "combined master")
    header["INSTRUME"] = (instrument, "instrument")
    header["XBINNING"] = (binning, "binning factor in x")
    header["YBINNING"] = (binning, "binning factor in y")
    header["DATE-OBS"] = (_iso(when), "UTC start of the first exposure")
    header["EXPTIME"] = (MASTER_DARK_EXPTIME if kind == "dark" else 0.0, "[s] exposure time")
    header["BUNIT"] = ("adu", "ADU")
    header["COMBINED"] = (True, "a combined master")
    frames = MASTER_DARK_FRAMES if kind == "dark" else MASTER_BIAS_FRAMES
    header["NCOMBINE"] = (frames, "frames combined")
    oscan = layout.cards(ny, nx)[0][1]
    # the records ccdproc's steps leave (ccdproc.log_meta), so nothing takes it for raw
    header["SUBOSCAN"] = f"ccd=<CCDData>, fits_section={oscan}, median=True"
    header["TRIMIM"] = f"ccd=<CCDData>, fits_section={trim}"
    if kind == "dark":
        header["SUBBIAS"] = "ccd=<CCDData>, master=<CCDData>"
    header["ORIGIN"] = (ORIGIN, "a simulated camera, not the sky")
    return header


@dataclass
class SimulatedRawSequence:
    """A simulated raw flat sequence, its masters, and the truth behind them."""

    frames: list[np.ndarray]  # uint16 raw readouts, (ny, prescan + nx + overscan)
    headers: list[fits.Header]
    true_flat: np.ndarray  # float64, median 1, (ny, nx)
    levels: list[float]  # illumination (ADU) of each frame
    bias_levels: list[float]  # bias level (ADU) of each frame, before the row pattern
    master_bias: np.ndarray  # float32 (ny, nx)
    bias_header: fits.Header
    master_dark: np.ndarray | None
    dark_header: fits.Header | None
    detector: RawDetector
    gain: float
    read_noise: float


def simulate_raw_sequence(
    shape: tuple[int, int] = (256, 256),
    n_frames: int = 10,
    *,
    seed: int = 0,
    dark_current: bool = False,
    layout: RawLayout = RawLayout(),
    start: datetime | None = None,
    **camera: Any,
) -> SimulatedRawSequence:
    """A raw twilight flat sequence of `n_frames` frames whose image area is `shape`
    (ny, nx), with its master bias (and master dark with `dark_current`). `camera` takes
    `simulate_sequence`'s other arguments (levels, stars, filter_name, ...)."""
    flat_camera = _camera(shape, n_frames, seed, start, camera)
    detector = RawDetector(
        shape,
        seed,
        layout,
        gain=flat_camera.gain,
        read_noise=flat_camera.read_noise,
        dark_current=dark_current,
    )
    raw = RawCamera(flat_camera, detector, seed)
    frames = [raw.frame(i) for i in range(n_frames)]
    taken = flat_camera.start - MASTERS_BEFORE
    return SimulatedRawSequence(
        frames=frames,
        headers=[raw.header(i) for i in range(n_frames)],
        true_flat=flat_camera.true_flat,
        levels=list(flat_camera.levels),
        bias_levels=[raw.bias_levels[i] for i in range(n_frames)],
        master_bias=detector.master_bias(),
        bias_header=master_header("bias", detector, taken, flat_camera.instrument),
        master_dark=detector.master_dark() if dark_current else None,
        dark_header=master_header("dark", detector, taken, flat_camera.instrument)
        if dark_current
        else None,
        detector=detector,
        gain=flat_camera.gain,
        read_noise=flat_camera.read_noise,
    )


def _camera(
    shape: tuple[int, int], n_frames: int, seed: int, start: datetime | None, options: dict
) -> _Camera:
    settings: dict[str, Any] = {
        "filter_name": "r",
        "stars": True,
        "cosmic_rays": True,
        "levels": (40000.0, 5000.0),
        "gain": 1.0,
        "read_noise": 5.0,
        "instrument": "SIMCAM",
        "binning": 1,
        "dust": True,
        "exposure": 5.0,
        "cadence_seconds": 30.0,
    }
    unknown = set(options) - set(settings)
    if unknown:
        raise TypeError(f"unknown camera option(s): {', '.join(sorted(unknown))}")
    settings.update(options)
    return _Camera(shape, n_frames, start=start, seed=seed, **settings)


@dataclass(frozen=True)
class RawFiles:
    """Where a raw sequence and its masters were written."""

    frames: list[Path]
    bias: Path
    dark: Path | None


def write_masters(
    detector: RawDetector, directory: Path, when: datetime, instrument: str = "SIMCAM"
) -> tuple[Path, Path | None]:
    """Write the detector's master bias (and dark) into `directory`, atomically."""
    bias = _write_master(
        directory, detector.master_bias(), master_header("bias", detector, when, instrument)
    )
    if detector.dark_rate is None:
        return bias, None
    header = master_header("dark", detector, when, instrument)
    return bias, _write_master(directory, detector.master_dark(), header)


def _write_master(directory: Path, data: np.ndarray, header: fits.Header) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(str(header["DATE-OBS"])).strftime("%Y%m%dT%H%M%S")
    path = directory / f"master_{str(header['IMAGETYP']).lower()}_{stamp}.fits"
    write_atomic(path, fits_bytes(data, header))
    return path


def write_raw_sequence(
    sequence: SimulatedRawSequence,
    outdir: Path,
    calibration: Path | None = None,
    prefix: str = "raw",
) -> RawFiles:
    """Write the raw frames into `outdir` and the masters into `calibration` (default
    `outdir/calibration`), each file atomically."""
    outdir.mkdir(parents=True, exist_ok=True)
    calibration = calibration or outdir / "calibration"
    bias = _write_master(calibration, sequence.master_bias, sequence.bias_header)
    dark = None
    if sequence.master_dark is not None and sequence.dark_header is not None:
        dark = _write_master(calibration, sequence.master_dark, sequence.dark_header)
    paths = []
    for i, (data, header) in enumerate(zip(sequence.frames, sequence.headers, strict=True)):
        path = outdir / f"{prefix}_{sanitise(str(header['FILTER']))}_{i:03d}.fits"
        write_atomic(path, fits_bytes(data, header))
        paths.append(path)
    return RawFiles(frames=paths, bias=bias, dark=dark)
