"""A fake camera: calibrated twilight flat sequences with a known true flat.

Used by the demo, by the tests (which need the TRUE flat to compare a master against) and by
`flatd simulate OUTDIR`, which plays a camera in real time, writing frames one by one.

Every frame is what a bias- and dark-subtracted twilight sky flat looks like:

    frame = Poisson(gain * (level + stars) * true_flat) / gain + Normal(0, read_noise / gain)
            + cosmic rays, clipped at SATURATE

where `true_flat` = vignetting x pixel response non-uniformity x dust donuts, normalised to
median 1, and `level` falls geometrically across the sequence as the twilight fades. Stars land
at different positions in every frame (the telescope tracks, or dithers, during the flats);
their peaks are kept below saturation so that the QA's saturated-pixel limit does not reject
the frames. Everything is deterministic from `seed`; frame i has its own sub-seed, so frames
can be made one at a time (the CLI does) and memory stays bounded for 4096x4096 frames.

`flatd simulate --raw` reads the same frames out as a raw camera would (`simulate_raw`):
uint16 with a bias level, overscan and prescan, and the master bias (and dark) beside them.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

__all__ = ["SimulatedSequence", "add_arguments", "run", "simulate_sequence", "write_sequence"]

DEFAULT_START = datetime(2026, 11, 23, 17, 30, 0)  # UTC, naive
SATURATE = 65535.0
ORIGIN = "flatd simulate"
COMPRESSIONS = ("none", "gzip", "tile")
WRITE_MODES = ("rename", "inplace", "slow")
SUFFIXES = {"none": ".fits", "gzip": ".fits.gz", "tile": ".fits.fz"}
_BLOCK_PIXELS = 1 << 20  # Poisson/normal draws per block: bounds the float64 temporaries


@dataclass
class SimulatedSequence:
    """A simulated flat sequence and the truth behind it."""

    frames: list[np.ndarray]  # float32 images, ADU, shape (ny, nx)
    headers: list[fits.Header]
    true_flat: np.ndarray  # float64, the true pixel response, normalised to median 1
    levels: list[float]  # the illumination level (ADU) of each frame before the flat
    gain: float  # e-/ADU
    read_noise: float  # e-


# --------------------------------------------------------------------------------- the physics


def _true_flat(shape: tuple[int, int], seed: int, dust: bool) -> np.ndarray:
    """Vignetting x PRNU x dust donuts, normalised to median 1 (float64)."""
    ny, nx = shape
    vig_seq, prnu_seq, dust_seq = np.random.SeedSequence([seed, 0]).spawn(3)
    rng = np.random.default_rng(vig_seq)
    # Vignetting: a smooth radial falloff about a slightly decentred optical axis,
    # `depth` (15-20 %) at a distance of one half-diagonal.
    cy = (ny - 1) / 2 + rng.uniform(-0.03, 0.03) * ny
    cx = (nx - 1) / 2 + rng.uniform(-0.03, 0.03) * nx
    half_diagonal = 0.5 * float(np.hypot(ny, nx)) or 1.0
    depth = rng.uniform(0.15, 0.20)
    y2 = ((np.arange(ny) - cy) / half_diagonal) ** 2
    x2 = ((np.arange(nx) - cx) / half_diagonal) ** 2
    flat = np.add.outer(y2, x2)  # r**2, float64
    flat *= -depth
    flat += 1.0
    # Pixel response non-uniformity: gaussian, ~1 %.
    prnu = np.random.default_rng(prnu_seq).standard_normal(shape, dtype=np.float32)
    prnu *= 0.01
    prnu += 1.0
    flat *= prnu
    del prnu
    if dust:
        _add_dust(flat, np.random.default_rng(dust_seq))
    flat /= np.median(flat)
    return flat


def _add_dust(flat: np.ndarray, rng: np.random.Generator) -> None:
    """Multiply a few out-of-focus dust shadows (annuli, 5-10 % deep) into `flat`."""
    ny, nx = flat.shape
    size = min(ny, nx)
    n = int(rng.integers(3, 7))
    for _ in range(n):
        radius = max(2.0, rng.uniform(0.02, 0.05) * size)
        width = max(0.8, rng.uniform(0.2, 0.35) * radius)
        depth = rng.uniform(0.06, 0.10)
        y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
        reach = radius + 4 * width
        ya, yb = max(0, int(y0 - reach)), min(ny, int(y0 + reach) + 1)
        xa, xb = max(0, int(x0 - reach)), min(nx, int(x0 + reach) + 1)
        if ya >= yb or xa >= xb:
            continue
        dy = np.arange(ya, yb) - y0
        dx = np.arange(xa, xb) - x0
        distance = np.sqrt(np.add.outer(dy * dy, dx * dx))
        # the shadow of a defocused speck: a ring with a shallower centre
        ring = np.exp(-0.5 * ((distance - radius) / width) ** 2)
        ring = np.maximum(ring, 0.4 * (distance < radius))
        flat[ya:yb, xa:xb] *= 1.0 - depth * ring


def _levels(n_frames: int, levels: Sequence[float]) -> list[float]:
    """The geometric fall from levels[0] to levels[1] over n_frames."""
    high, low = float(levels[0]), float(levels[1])
    if n_frames <= 1:
        return [high] * max(n_frames, 0)
    if high <= 0 or low <= 0:
        return [float(v) for v in np.linspace(high, low, n_frames)]
    return [float(v) for v in np.geomspace(high, low, n_frames)]


def _n_stars(rng: np.random.Generator, area: int) -> int:
    base = 5 + 15 * min(1.0, area / (2048 * 2048))
    return int(np.clip(round(base + rng.integers(-1, 3)), 5, 20))


def _add_stars(
    expected: np.ndarray, flat: np.ndarray, level: float, gain: float, rng: np.random.Generator
) -> None:
    """Add gaussian stars (in electrons, seen through the flat) to `expected`."""
    ny, nx = expected.shape
    cap = 0.85 * SATURATE - 1.1 * level  # keep the peaks below saturation
    for _ in range(_n_stars(rng, ny * nx)):
        y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
        sigma = rng.uniform(1.0, 2.5)
        amplitude = level * rng.uniform(0.5, 3.0)
        amplitude = min(amplitude, max(cap, 0.2 * level))
        reach = 5 * sigma
        ya, yb = max(0, int(y0 - reach)), min(ny, int(y0 + reach) + 1)
        xa, xb = max(0, int(x0 - reach)), min(nx, int(x0 + reach) + 1)
        gy = np.exp(-0.5 * ((np.arange(ya, yb) - y0) / sigma) ** 2)
        gx = np.exp(-0.5 * ((np.arange(xa, xb) - x0) / sigma) ** 2)
        star = np.outer(gy, gx) * (amplitude * gain) * flat[ya:yb, xa:xb]
        expected[ya:yb, xa:xb] += star.astype(np.float32)


def _add_cosmic_rays(image: np.ndarray, rng: np.random.Generator) -> None:
    """A few single- or few-pixel hits of several thousand ADU."""
    ny, nx = image.shape
    n = int(rng.integers(2, 6)) + min(100, (ny * nx) // (512 * 512))
    for _ in range(n):
        y, x = int(rng.integers(0, ny)), int(rng.integers(0, nx))
        dy, dx = (int(v) for v in rng.integers(-1, 2, size=2))
        for _step in range(int(rng.integers(1, 4))):
            if 0 <= y < ny and 0 <= x < nx:
                image[y, x] += rng.uniform(2000.0, 8000.0)
            y, x = y + dy, x + dx


class _Camera:
    """Makes the frames of one sequence, one at a time, each from its own sub-seed."""

    def __init__(
        self,
        shape: tuple[int, int],
        n_frames: int,
        filter_name: str,
        start: datetime | None,
        seed: int,
        stars: bool,
        cosmic_rays: bool,
        levels: Sequence[float],
        gain: float,
        read_noise: float,
        instrument: str,
        binning: int,
        dust: bool,
        exposure: float,
        cadence_seconds: float,
    ) -> None:
        ny, nx = (int(v) for v in shape)
        if ny < 1 or nx < 1:
            raise ValueError(f"shape must be positive, got {tuple(shape)}")
        if gain <= 0:
            raise ValueError(f"gain must be positive, got {gain}")
        if len(levels) != 2:
            raise ValueError("levels must be (first, last)")
        self.shape = (ny, nx)
        self.n_frames = int(n_frames)
        self.filter_name = filter_name
        self.start = _utc_naive(start) if start is not None else DEFAULT_START
        self.stars, self.cosmic_rays = stars, cosmic_rays
        self.gain, self.read_noise = float(gain), float(read_noise)
        self.instrument, self.binning = instrument, int(binning)
        self.exposure, self.cadence = float(exposure), float(cadence_seconds)
        self.true_flat = _true_flat(self.shape, seed, dust)
        self.levels = _levels(self.n_frames, levels)
        self._seeds = np.random.SeedSequence([seed, 1]).spawn(max(self.n_frames, 0))

    def header(self, i: int) -> fits.Header:
        when = self.start + timedelta(seconds=i * self.cadence)
        header = fits.Header()
        header["IMAGETYP"] = ("Flat Field", "type of image")
        header["FILTER"] = (self.filter_name, "filter name")
        header["INSTRUME"] = (self.instrument, "instrument")
        header["XBINNING"] = (self.binning, "binning factor in x")
        header["YBINNING"] = (self.binning, "binning factor in y")
        header["DATE-OBS"] = (_iso(when), "UTC start of exposure")
        header["EXPTIME"] = (self.exposure, "[s] exposure time")
        header["GAIN"] = (self.gain, "[e-/ADU] detector gain")
        header["RDNOISE"] = (self.read_noise, "[e-] read noise")
        header["SATURATE"] = (SATURATE, "[ADU] saturation level")
        header["BUNIT"] = ("adu", "bias- and dark-subtracted")
        header["ORIGIN"] = (ORIGIN, "a simulated camera, not the sky")
        header["OBSERVER"] = (ORIGIN, "nobody was cold tonight")
        header["SIMLEVEL"] = (round(self.levels[i], 3), "[ADU] simulated sky level")
        header["COMMENT"] = "Simulated twilight flat written by flatd simulate."
        return header

    def frame(self, i: int) -> np.ndarray:
        rng = np.random.default_rng(self._seeds[i])
        level, gain = self.levels[i], self.gain
        # expected electrons per pixel, float32 (stars are seen through the flat too)
        expected = np.empty(self.shape, np.float32)
        np.multiply(self.true_flat, max(level, 0.0) * gain, out=expected, casting="same_kind")
        if self.stars:
            _add_stars(expected, self.true_flat, max(level, 0.0), gain, rng)
        image = np.empty(self.shape, np.float32)
        flat_expected, flat_image = expected.reshape(-1), image.reshape(-1)
        sigma_read = self.read_noise / gain
        for a in range(0, flat_expected.size, _BLOCK_PIXELS):
            b = min(a + _BLOCK_PIXELS, flat_expected.size)
            block = rng.poisson(flat_expected[a:b]).astype(np.float32)
            block /= gain
            if sigma_read > 0:
                noise = rng.standard_normal(b - a, dtype=np.float32)
                noise *= sigma_read
                block += noise
            flat_image[a:b] = block
        del expected
        if self.cosmic_rays:
            _add_cosmic_rays(image, rng)
        np.minimum(image, SATURATE, out=image)
        return image


def simulate_sequence(
    shape: tuple[int, int] = (256, 256),
    n_frames: int = 10,
    filter_name: str = "r",
    start: datetime | None = None,
    seed: int = 0,
    stars: bool = True,
    cosmic_rays: bool = True,
    levels: Sequence[float] = (40000.0, 5000.0),
    gain: float = 1.0,
    read_noise: float = 5.0,
    instrument: str = "SIMCAM",
    binning: int = 1,
    dust: bool = True,
    exposure: float = 5.0,
    cadence_seconds: float = 30.0,
    true_flat: np.ndarray | None = None,
) -> SimulatedSequence:
    """A calibrated twilight flat sequence of `n_frames` frames of `shape` (ny, nx).

    `true_flat` replaces the simulated pixel response (it is normalised to median 1), so
    that two sequences can share one flat, or differ by a known change.
    `start` is the UTC time of the first frame (naive = UTC; None = 2026-11-23T17:30:00);
    frame i is taken `i * cadence_seconds` later. The illumination falls geometrically from
    `levels[0]` to `levels[1]`.
    """
    camera = _Camera(
        shape,
        n_frames,
        filter_name,
        start,
        seed,
        stars,
        cosmic_rays,
        levels,
        gain,
        read_noise,
        instrument,
        binning,
        dust,
        exposure,
        cadence_seconds,
    )
    if true_flat is not None:
        if true_flat.shape != camera.shape:
            raise ValueError(f"true_flat has shape {true_flat.shape}, not {camera.shape}")
        camera.true_flat = np.asarray(true_flat, np.float64) / np.median(true_flat)
    return SimulatedSequence(
        frames=[camera.frame(i) for i in range(camera.n_frames)],
        headers=[camera.header(i) for i in range(camera.n_frames)],
        true_flat=camera.true_flat,
        levels=list(camera.levels),
        gain=camera.gain,
        read_noise=camera.read_noise,
    )


# ------------------------------------------------------------------------------------ writing


def _utc_naive(when: datetime) -> datetime:
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def sanitise(name: str) -> str:
    """`name` with every character outside [A-Za-z0-9.-] replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", name) or "none"


def file_name(prefix: str, filter_name: str, index: int, compress: str = "none") -> str:
    """The name a simulated frame is written under, e.g. flat_r_000.fits."""
    if compress not in SUFFIXES:
        raise ValueError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    return f"{prefix}_{sanitise(filter_name)}_{index:03d}{SUFFIXES[compress]}"


def fits_bytes(data: np.ndarray, header: fits.Header, compress: str = "none") -> bytes:
    """The bytes of a FITS file holding `data` and `header`, compressed as asked."""
    buffer = io.BytesIO()
    if compress == "tile":
        hdus = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)])
    elif compress in ("none", "gzip"):
        hdus = fits.HDUList([fits.PrimaryHDU(data, header)])
    else:
        raise ValueError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    hdus.writeto(buffer)
    content = buffer.getvalue()
    if compress == "gzip":
        content = gzip.compress(content, compresslevel=6, mtime=0)
    return content


def write_atomic(path: Path, content: bytes) -> None:
    """Write under a dot-name in the same directory, then rename over `path`."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("wb") as fh:
            fh.write(content)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_in_place(path: Path, content: bytes) -> None:
    """Open the final name and write everything in one go."""
    with path.open("wb") as fh:
        fh.write(content)


def write_slowly(path: Path, content: bytes, pace: float, chunks: int = 4) -> None:
    """Write the final name in `chunks` pieces with pace/chunks pauses: a slow camera."""
    step = max(1, -(-len(content) // chunks))
    with path.open("wb") as fh:
        for offset in range(0, len(content), step):
            if offset:
                time.sleep(pace / chunks)
            fh.write(content[offset : offset + step])
            fh.flush()


def _writer(mode: str, pace: float) -> Callable[[Path, bytes], None]:
    if mode == "rename":
        return write_atomic
    if mode == "inplace":
        return write_in_place
    if mode == "slow":
        return lambda path, content: write_slowly(path, content, pace)
    raise ValueError(f"write mode must be one of {', '.join(WRITE_MODES)}, got {mode!r}")


def write_sequence(
    sequence: SimulatedSequence, outdir: Path, prefix: str = "flat", compress: str = "none"
) -> list[Path]:
    """Write every frame of `sequence` atomically into `outdir`; return the paths.

    Names are `{prefix}_{filter}_{i:03d}.fits` (`.fits.gz` for gzip, `.fits.fz` for tile
    compression, where the image is a CompImageHDU after an empty primary HDU).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (data, header) in enumerate(zip(sequence.frames, sequence.headers, strict=True)):
        path = outdir / file_name(prefix, str(header.get("FILTER", "none")), i, compress)
        write_atomic(path, fits_bytes(data, header, compress))
        paths.append(path)
    return paths


def truth_header(filter_name: str, instrument: str = "SIMCAM", binning: int = 1) -> fits.Header:
    """The header of a true-flat file: IMAGETYP 'TRUTH', so nothing takes it for a flat."""
    header = fits.Header()
    header["IMAGETYP"] = ("TRUTH", "the true flat of a simulation, not a frame")
    header["FILTER"] = (filter_name, "filter name")
    header["INSTRUME"] = (instrument, "instrument")
    header["XBINNING"] = (binning, "binning factor in x")
    header["YBINNING"] = (binning, "binning factor in y")
    header["ORIGIN"] = (ORIGIN, "a simulated camera, not the sky")
    return header


def broken_bytes(header: fits.Header, shape: tuple[int, int] = (32, 32)) -> bytes:
    """A flat FITS file cut off in the middle of its data: what a crashed camera leaves."""
    content = fits_bytes(np.full(shape, 20000.0, np.float32), header)
    data_start = content.find(b"END" + b" " * 77) + 80
    data_start = -(-data_start // 2880) * 2880
    return content[: data_start + (len(content) - data_start) // 2 + 123]


# ---------------------------------------------------------------------------------------- CLI


def _shape(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 512x512, got {text!r}")
    width, height = int(match[1]), int(match[2])
    return height, width  # numpy order (ny, nx)


def _filters(text: str) -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated filter list, got {text!r}")
    return names


def _number(kind: type, minimum: float, what: str) -> Callable[[str], float]:
    """An argparse type: `kind(text)`, finite and at least `minimum`, else an error
    naming `what` was expected."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1, "a positive integer")
_count = _number(int, 0, "a non-negative integer")
_seconds = _number(float, 0.0, "a non-negative number")


def _start(text: str) -> datetime:
    try:
        return _utc_naive(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time, e.g. 2026-11-23T17:30:00, got {text!r}"
        ) from None


def _level_pair(text: str) -> tuple[float, float]:
    try:
        high, low = (float(v) for v in text.split(","))
    except ValueError:
        high = low = -1.0
    if not (high > 0 and low > 0):
        raise argparse.ArgumentTypeError(f"expected FIRST,LAST levels in ADU, got {text!r}")
    return high, low


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `flatd simulate` arguments to `parser`."""
    parser.description = (
        "A fake camera: write calibrated twilight flat sequences (one per "
        "filter, consecutive in time) into OUTDIR, frame by frame."
    )
    parser.add_argument("outdir", type=Path, metavar="OUTDIR", help="where the frames go")
    parser.add_argument(
        "--filters",
        type=_filters,
        default=["g", "r", "i"],
        metavar="LIST",
        help="comma-separated filters, one sequence each (default: g,r,i)",
    )
    parser.add_argument(
        "--frames",
        type=_positive_int,
        default=7,
        metavar="N",
        help="frames per filter (default: 7)",
    )
    parser.add_argument(
        "--shape",
        type=_shape,
        default=(512, 512),
        metavar="WIDTHxHEIGHT",
        help="frame size as WIDTHxHEIGHT in pixels, like a camera spec: "
        "'32x48' is 32 columns by 48 rows, numpy shape (48, 32) "
        "(default: 512x512)",
    )
    parser.add_argument(
        "--pace",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="pause between files, to play a camera in real time (default: 0)",
    )
    parser.add_argument(
        "--write-mode",
        choices=WRITE_MODES,
        default="rename",
        help="rename: write a dot-file and rename it into place (atomic); "
        "inplace: write the final name in one go; slow: write the final "
        "name in 4 chunks with PACE/4 pauses (default: rename)",
    )
    parser.add_argument(
        "--broken",
        type=_count,
        default=0,
        metavar="N",
        help="also write N truncated FITS files broken_000.fits... (default: 0)",
    )
    parser.add_argument(
        "--truth",
        action="store_true",
        help="also write OUTDIR/truth/true_flat_<filter>.fits (IMAGETYP TRUTH)",
    )
    parser.add_argument("--seed", type=_count, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--compress",
        choices=COMPRESSIONS,
        default="none",
        help="none: .fits; gzip: .fits.gz; tile: tile-compressed .fits.fz (default: none)",
    )
    parser.add_argument(
        "--levels",
        type=_level_pair,
        default=(40000.0, 5000.0),
        metavar="FIRST,LAST",
        help="sky level (ADU) of the first and last frame (default: 40000,5000)",
    )
    parser.add_argument(
        "--start",
        type=_start,
        default=None,
        metavar="ISO8601",
        help="UTC time of the first frame (default: 2026-11-23T17:30:00)",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="write raw frames as the camera reads them out: uint16 with a bias level, a "
        "prescan, an overscan strip carrying the bias's row pattern, BIASSEC/TRIMSEC/"
        "DATASEC cards; and the master bias into OUTDIR/calibration/",
    )
    parser.add_argument(
        "--dark",
        action="store_true",
        help="with --raw: hot pixels' dark current in the frames, and a master dark too",
    )
    parser.add_argument(
        "--extensions",
        type=_positive_int,
        default=1,
        metavar="N",
        help="a multi-amplifier camera: each frame written as N image extensions (EXTNAME "
        "AMP1..AMPN, a DETSEC each, per-amplifier gains), each of --shape, an empty "
        "primary HDU before them (default: 1, a single image)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing per file")


def run(args: argparse.Namespace) -> int:
    """`flatd simulate`: write the sequences frame by frame; return the exit status."""
    outdir: Path = args.outdir
    ny, nx = args.shape
    pace: float = args.pace
    write = _writer(args.write_mode, pace)
    cadence = 30.0
    start = args.start or DEFAULT_START
    invalid = _conflict(args)
    if invalid:
        print(f"flatd simulate: {invalid}", file=sys.stderr)
        return 2
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"flatd simulate: cannot create {outdir}: {exc}", file=sys.stderr)
        return 1

    def say(text: str) -> None:
        if not args.quiet:
            print(text, flush=True)

    first = True

    def pause() -> None:
        nonlocal first
        if not first and pace > 0:
            time.sleep(pace)
        first = False

    cameras: list[_Camera] = []
    sources: list[Any] = []  # what wrote each camera's frames
    try:
        detector = _raw_detector(args, start, say) if args.raw else None
        for k, filter_name in enumerate(args.filters):
            camera = _Camera(
                _detector_shape(args.extensions, (ny, nx)),
                args.frames,
                filter_name,
                start + timedelta(seconds=k * args.frames * cadence),
                args.seed + 1000 * k,
                True,
                True,
                args.levels,
                1.0,
                5.0,
                "SIMCAM",
                1,
                True,
                5.0,
                cadence,
            )
            cameras.append(camera)
            source = _readout(camera, detector, args.seed + 1000 * k, args.extensions)
            sources.append(source)
            prefix = "flat" if detector is None else "raw"
            for i in range(camera.n_frames):
                pause()
                path = outdir / file_name(prefix, filter_name, i, args.compress)
                write(path, _file_bytes(source, i, args.compress))
                say(f"wrote {path}  level {camera.levels[i]:.0f}")
        for j in range(args.broken):
            pause()
            path = outdir / f"broken_{j:03d}.fits"
            header = cameras[0].header(0) if cameras else fits.Header()
            write(path, broken_bytes(header))
            say(f"wrote {path}  (truncated)")
        if args.truth:
            _write_truths(sources, outdir / "truth", say)
    except OSError as exc:
        print(f"flatd simulate: {exc}", file=sys.stderr)
        return 1
    return 0


def _conflict(args: argparse.Namespace) -> str:
    """Why these options cannot go together ("" when they can)."""
    if args.dark and not args.raw:
        return "--dark needs --raw"
    if args.extensions > 1 and args.raw:
        return "--extensions writes calibrated frames (no --raw)"
    return ""


def _write_truths(sources: list[Any], directory: Path, say: Callable[[str], None]) -> None:
    """Each camera's true flat as directory/true_flat_<filter>.fits (IMAGETYP TRUTH); a
    multi-amplifier camera's laid out as its frames are, one extension per amplifier."""
    directory.mkdir(exist_ok=True)
    for source in sources:
        camera = getattr(source, "camera", source)  # the raw or mosaic readout's camera
        path = directory / f"true_flat_{sanitise(camera.filter_name)}.fits"
        if hasattr(source, "truth_bytes"):
            content = source.truth_bytes()
        else:
            flat = camera.true_flat.astype(np.float32)
            content = fits_bytes(flat, truth_header(camera.filter_name))
        write_atomic(path, content)
        say(f"wrote {path}  true flat")


def _raw_detector(args: argparse.Namespace, start: datetime, say: Callable[[str], None]) -> Any:
    """The raw camera's readout, its master bias (and dark) written to OUTDIR/calibration/
    first: they were taken in the afternoon, before the flats."""
    from flatd.simulation.raw import MASTERS_BEFORE, RawDetector, write_masters

    detector = RawDetector(args.shape, args.seed, dark_current=args.dark)
    for path in write_masters(detector, args.outdir / "calibration", start - MASTERS_BEFORE):
        if path is not None:
            say(f"wrote {path}  master")
    return detector


def _detector_shape(extensions: int, shape: tuple[int, int]) -> tuple[int, int]:
    """The detector's shape: one amplifier's `shape`, or a mosaic of them."""
    if extensions == 1:
        return shape
    from flatd.simulation.mosaic import detector_shape

    return detector_shape(extensions, shape)


def _file_bytes(source: Any, i: int, compress: str) -> bytes:
    """Frame i of `source` as a FITS file's bytes."""
    if hasattr(source, "file_bytes"):  # a multi-amplifier camera
        return bytes(source.file_bytes(i, compress))
    return fits_bytes(source.frame(i), source.header(i), compress)


def _readout(camera: _Camera, detector: Any, seed: int, extensions: int = 1) -> Any:
    """What writes the frames: the calibrated camera itself, its amplifiers (a multi-
    amplifier camera's `extensions`), or its raw readout."""
    if extensions > 1:
        from flatd.simulation.mosaic import MosaicCamera, amplifiers

        ny, nx = camera.shape
        grid = _detector_shape(extensions, (1, 1))
        return MosaicCamera(camera, amplifiers(extensions, (ny // grid[0], nx // grid[1]), seed))
    if detector is None:
        return camera
    from flatd.simulation.raw import RawCamera

    return RawCamera(camera, detector, seed)
