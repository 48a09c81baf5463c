"""A fake multi-amplifier (or mosaic) camera: each frame written as N image extensions.

The simulated twilight flat (`simulate`, with its known true flat) falls on one detector
of `rows x columns` amplifier regions, each `shape` pixels; each amplifier is read out
through its own electronics and written as one image extension (`EXTNAME` AMP1, AMP2,
...), as the four-amplifier CCDs of many observatory cameras are:

    amplifier k = clip(electrons[region k] / gain_k, SATURATE)

where `electrons` is the simulated frame (Poisson and read noise in electrons, stars and
cosmic rays) and `gain_k` (e-/ADU) differs from amplifier to amplifier by up to 15 %, so
that each extension's level differs too. An amplifier in the far half of the detector
reads out from the far edge: its extension holds the region reversed along that axis, and
its `DETSEC` (the region in detector pixels, FITS 1-based with the first index the
readout's start: `[2048:1025,1:1024]` for a reversed x axis) says so. Each extension's
header carries its own GAIN, RDNOISE, SATURATE, DETSEC, DATASEC and CCDSUM; the primary
header carries the frame's (IMAGETYP, FILTER, INSTRUME, binning, DATE-OBS, EXPTIME) and
NEXTEND, and no data.

The truth of each extension is what a master flat of this camera must hold there: the
detector's true flat over its region, in its readout order, divided by its gain (the
amplifiers' relative response), normalised to median 1 over the whole mosaic.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from astropy.io import fits

from flatd.simulation.flats import (
    DEFAULT_START,
    SATURATE,
    _Camera,
    file_name,
    truth_header,
    write_atomic,
)

GAIN_SPREAD = 0.15  # each amplifier's gain is 1 +- up to this
READ_NOISE = 5.0  # e-
MOVED_TO_EXTENSIONS = ("GAIN", "RDNOISE", "SATURATE", "BUNIT")


@dataclass(frozen=True)
class Amplifier:
    """One amplifier: its name, its region of the detector and how it reads it out."""

    name: str
    rows: slice  # of the detector
    columns: slice
    reverse_y: bool  # the extension's first row is the region's last
    reverse_x: bool
    gain: float  # e-/ADU

    def cut(self, detector: np.ndarray) -> np.ndarray:
        """The amplifier's region of a detector image, in its readout order."""
        region = detector[self.rows, self.columns]
        return region[:: -1 if self.reverse_y else 1, :: -1 if self.reverse_x else 1]

    @property
    def detsec(self) -> str:
        """`[x1:x2,y1:y2]`, 1-based, each range from the readout's first pixel."""
        x = (self.columns.start + 1, self.columns.stop)
        y = (self.rows.start + 1, self.rows.stop)
        x = x[::-1] if self.reverse_x else x
        y = y[::-1] if self.reverse_y else y
        return f"[{x[0]}:{x[1]},{y[0]}:{y[1]}]"


def amplifiers(count: int, shape: tuple[int, int], seed: int) -> list[Amplifier]:
    """`count` amplifiers of `shape` (ny, nx) on a grid of ceil(sqrt(count)) columns;
    those in the far half of a grid axis read out from that axis' far edge."""
    if count < 1:
        raise ValueError(f"extensions must be at least 1, got {count}")
    ny, nx = shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    gains = 1.0 + GAIN_SPREAD * rng.uniform(-1.0, 1.0, count)
    made = []
    for k in range(count):
        row, column = divmod(k, columns)
        made.append(
            Amplifier(
                name=f"AMP{k + 1}",
                rows=slice(row * ny, (row + 1) * ny),
                columns=slice(column * nx, (column + 1) * nx),
                reverse_y=rows > 1 and row >= rows / 2,
                reverse_x=columns > 1 and column >= columns / 2,
                gain=round(float(gains[k]), 4),
            )
        )
    return made


def detector_shape(count: int, shape: tuple[int, int]) -> tuple[int, int]:
    """The detector that `count` amplifiers of `shape` tile (numpy order)."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns) * shape[0], columns * shape[1]


class MosaicCamera:
    """The frames of one sequence as a multi-amplifier camera writes them, one at a time.

    `camera` simulates the whole detector in electrons (gain 1); the amplifiers turn it
    into ADU."""

    def __init__(self, camera: _Camera, amps: list[Amplifier]) -> None:
        self.camera, self.amplifiers = camera, amps

    def frame(self, i: int) -> list[np.ndarray]:
        """Frame i: one float32 image per amplifier (ADU), in extension order."""
        electrons = self.camera.frame(i)
        planes = []
        for amp in self.amplifiers:
            plane = amp.cut(electrons) / np.float32(amp.gain)
            np.minimum(plane, SATURATE, out=plane)
            planes.append(plane.astype(np.float32, copy=False))
        return planes

    def header(self, i: int) -> fits.Header:
        """The primary header of frame i: the frame's cards, no data."""
        header = self.camera.header(i)
        for keyword in MOVED_TO_EXTENSIONS:
            header.remove(keyword, ignore_missing=True)
        header["NEXTEND"] = (len(self.amplifiers), "image extensions: one per amplifier")
        return header

    def extension_header(self, k: int) -> fits.Header:
        amp = self.amplifiers[k]
        ny, nx = self.shape
        header = fits.Header()
        header["GAIN"] = (amp.gain, "[e-/ADU] this amplifier's gain")
        header["RDNOISE"] = (READ_NOISE, "[e-] read noise")
        header["SATURATE"] = (SATURATE, "[ADU] saturation level")
        header["DETSEC"] = (amp.detsec, "detector section of this amplifier")
        header["DATASEC"] = (f"[1:{nx},1:{ny}]", "data section")
        header["CCDSUM"] = (f"{self.camera.binning} {self.camera.binning}", "binning")
        header["BUNIT"] = ("adu", "bias- and dark-subtracted")
        return header

    @property
    def shape(self) -> tuple[int, int]:
        amp = self.amplifiers[0]
        return amp.rows.stop - amp.rows.start, amp.columns.stop - amp.columns.start

    def truth(self) -> list[np.ndarray]:
        """Each extension's true flat (see the module docstring), float64."""
        planes = [amp.cut(self.camera.true_flat) / amp.gain for amp in self.amplifiers]
        level = np.median(np.concatenate([p.ravel() for p in planes]))
        return [p / level for p in planes]

    def file_bytes(self, i: int, compress: str = "none") -> bytes:
        """Frame i as a FITS file: an empty primary HDU, then the amplifiers."""
        names = [amp.name for amp in self.amplifiers]
        headers = [self.extension_header(k) for k in range(len(names))]
        return mosaic_bytes(self.header(i), self.frame(i), headers, names, compress)

    def truth_bytes(self) -> bytes:
        """The true flat as a FITS file laid out like the frames (IMAGETYP TRUTH)."""
        header = truth_header(self.camera.filter_name, self.camera.instrument)
        names = [amp.name for amp in self.amplifiers]
        headers = [self.extension_header(k) for k in range(len(names))]
        planes = [p.astype(np.float32) for p in self.truth()]
        return mosaic_bytes(header, planes, headers, names, "none")


def mosaic_bytes(
    primary: fits.Header,
    planes: list[np.ndarray],
    headers: list[fits.Header],
    names: list[str],
    compress: str = "none",
) -> bytes:
    """A multi-extension FITS file: `primary` (no data), then one image extension per
    plane named as given (tile-compressed for "tile"; the whole file gzipped for "gzip")."""
    hdus: list[fits.hdu.base.ExtensionHDU] = []
    for plane, header, name in zip(planes, headers, names, strict=True):
        if compress == "tile":
            hdus.append(fits.CompImageHDU(plane, header, name=name))
        else:
            hdus.append(fits.ImageHDU(plane, header, name=name))
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(header=primary), *hdus]).writeto(buffer)
    content = buffer.getvalue()
    return gzip.compress(content, compresslevel=6, mtime=0) if compress == "gzip" else content


@dataclass
class SimulatedMosaic:
    """A simulated sequence of a multi-amplifier camera and the truth behind it."""

    camera: MosaicCamera
    levels: list[float]  # each frame's illumination (electrons, before the flat)

    @property
    def truth(self) -> list[np.ndarray]:
        return self.camera.truth()

    @property
    def gains(self) -> list[float]:
        return [amp.gain for amp in self.camera.amplifiers]

    @property
    def names(self) -> list[str]:
        return [amp.name for amp in self.camera.amplifiers]


def simulate_mosaic(
    shape: tuple[int, int] = (128, 128),
    extensions: int = 4,
    n_frames: int = 7,
    filter_name: str = "r",
    start: datetime | None = None,
    seed: int = 0,
    levels: tuple[float, float] = (40000.0, 5000.0),
    stars: bool = True,
) -> SimulatedMosaic:
    """A twilight sequence of `n_frames` frames of `extensions` amplifiers of `shape`
    (ny, nx) each; frames are made when written (`write_mosaic_sequence`)."""
    camera = _Camera(
        detector_shape(extensions, shape),
        n_frames,
        filter_name,
        start or DEFAULT_START,
        seed,
        stars,
        True,
        levels,
        1.0,
        READ_NOISE,
        "SIMCAM",
        1,
        True,
        5.0,
        30.0,
    )
    mosaic = MosaicCamera(camera, amplifiers(extensions, shape, seed))
    return SimulatedMosaic(mosaic, list(camera.levels))


def write_mosaic_sequence(
    sequence: SimulatedMosaic, outdir: Path, prefix: str = "flat", compress: str = "none"
) -> list[Path]:
    """Write every frame atomically into `outdir` (names as `simulate.write_sequence`)."""
    outdir.mkdir(parents=True, exist_ok=True)
    camera = sequence.camera
    paths = []
    for i in range(camera.camera.n_frames):
        path = outdir / file_name(prefix, camera.camera.filter_name, i, compress)
        write_atomic(path, camera.file_bytes(i, compress))
        paths.append(path)
    return paths
