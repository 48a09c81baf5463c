"""The raw-frame case of `make bench`: raw 4096x4096 uint16 frames with an overscan, the
astropy guide's ccdproc steps (calibrate each frame, then combine) against flatd's
calibration and combination, whole process against whole process, on the same files.

    ccdproc  CCDData.read -> subtract_overscan(BIASSEC, median, axis 1) -> trim_image(TRIMSEC)
             -> subtract_bias -> write (the guide writes each calibrated flat), then
             ccdproc.combine of those files with the guide's settings, mem_limit 350e6
    flatd    `flatd combine --config` with `[calibrate] raw = "calibrate"` and the master
             bias: the same ccdproc steps (float32, one frame at a time, into a workspace),
             then the engine with mem_limit_mb 350, the master written (no preview)

`compare_raw()` takes the runner's measuring functions (`run_child`, `baseline` of
benchmarks/run.py), so run.py can add it as a case; alone:
`python benchmarks/raw.py [--repeat N] [--frames N] [--size N]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data"
PYTHON = sys.executable
MEM_LIMIT_MB = 350

CCDPROC_RAW = """
import sys, tempfile
from pathlib import Path
import numpy as np
import ccdproc
from astropy.nddata import CCDData
from astropy.stats import mad_std
files, bias_path, output = sys.argv[1:-2], sys.argv[-2], sys.argv[-1]
bias = CCDData.read(bias_path, unit="adu")
with tempfile.TemporaryDirectory(dir=Path(output).parent) as reduced:
    calibrated = []
    for name in files:
        ccd = CCDData.read(name, unit="adu")
        ccd = ccdproc.subtract_overscan(ccd, fits_section=ccd.header["BIASSEC"], median=True,
                                        overscan_axis=1)
        ccd = ccdproc.trim_image(ccd, fits_section=ccd.header["TRIMSEC"])
        ccd = ccdproc.subtract_bias(ccd, bias)
        calibrated.append(str(Path(reduced) / ("flat-" + Path(name).name)))
        ccd.write(calibrated[-1])
    master = ccdproc.combine(calibrated, method="average", scale=lambda a: 1 / np.ma.median(a),
                             sigma_clip=True, sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
                             sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std,
                             mem_limit=350e6, unit="adu")
    master.write(output, overwrite=True)
"""
FLATD_CONFIG = f"""
[sequence]
min_frames = 1
[combine]
mem_limit_mb = {MEM_LIMIT_MB}
[output]
preview = false
[calibrate]
raw = "calibrate"
bias = "{{bias}}"
[log]
format = "json"
level = "warning"
"""
FLATD_RAW_IMPORTS = (
    "import flatd.cli, flatd.oneshot, flatd.pipeline, flatd.engine, flatd.outputs.masters, "
    "flatd.logs, flatd.calibrate.stage, ccdproc"
)
CCDPROC_RAW_IMPORTS = "import numpy, ccdproc, astropy.stats, astropy.nddata"

Runner = Callable[[list[str]], tuple[float, float]]


def make_raw_frames(n: int = 10, size: int = 4096) -> tuple[list[Path], Path]:
    """n raw size x size frames (uint16, prescan and overscan, one twilight sequence with
    stars) and their master bias, made one frame at a time into bench-data/raw-<n>-<size>/
    and kept for the next run."""
    from flatd.simulation.flats import DEFAULT_START, _Camera, fits_bytes, write_atomic
    from flatd.simulation.raw import MASTERS_BEFORE, RawCamera, RawDetector, write_masters

    directory = DATA / f"raw-{n}-{size}"
    files = sorted(directory.glob("raw_*.fits"))
    masters = sorted((directory / "calibration").glob("master_bias_*.fits"))
    if len(files) == n and masters and (directory / "complete").exists():
        return files, masters[0]
    print(f"  making {n} raw frames of {size}x{size} in {directory} ...", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    for old in [*directory.glob("*.fits"), directory / "complete"]:
        old.unlink(missing_ok=True)
    camera = _Camera(
        (size, size), n, "r", DEFAULT_START, 0, True, True, (40000.0, 5000.0),
        1.0, 5.0, "SIMCAM", 1, True, 5.0, 30.0,
    )  # fmt: skip
    detector = RawDetector((size, size), 0)
    bias, _ = write_masters(detector, directory / "calibration", DEFAULT_START - MASTERS_BEFORE)
    raw = RawCamera(camera, detector, 0)
    for i in range(n):
        write_atomic(directory / f"raw_{i:03d}.fits", fits_bytes(raw.frame(i), raw.header(i)))
    (directory / "complete").touch()
    return sorted(directory.glob("raw_*.fits")), bias


def ccdproc_command(files: list[Path], bias: Path, output: Path) -> list[str]:
    return [PYTHON, "-c", CCDPROC_RAW, *map(str, files), str(bias), str(output)]


def flatd_command(files: list[Path], bias: Path, output: Path) -> list[str]:
    """`flatd combine --config` with `[calibrate] raw = "calibrate"` and the master bias;
    the master goes into the directory `output` (fresh for each run, like ccdproc's)."""
    config = output.with_suffix(".toml")
    config.write_text(FLATD_CONFIG.format(bias=bias))
    return [PYTHON, "-m", "flatd", "combine", "--config", str(config), "--output", str(output)] + [
        str(f) for f in files
    ]


def compare_raw(
    run_child: Runner,
    baseline: Callable[[str], float],
    repeat: int,
    work: Path,
    n: int = 10,
    size: int = 4096,
) -> str:
    """Time and peak RSS (above each side's imports) of both whole processes, median of
    `repeat` alternating runs after a warm-up; the line printed is returned."""
    files, bias = make_raw_frames(n, size)
    flatd_base, ccd_base = baseline(FLATD_RAW_IMPORTS), baseline(CCDPROC_RAW_IMPORTS)
    run_child(flatd_command(files, bias, work / "flatd-warm"))  # warm the page cache
    results: dict[str, list[tuple[float, float]]] = {"flatd": [], "ccdproc": []}
    for run in range(repeat):
        results["ccdproc"].append(run_child(ccdproc_command(files, bias, work / "ccdproc.fits")))
        results["flatd"].append(run_child(flatd_command(files, bias, work / f"flatd-{run}")))
    f_time = statistics.median(t for t, _ in results["flatd"])
    c_time = statistics.median(t for t, _ in results["ccdproc"])
    f_mem = max(m for _, m in results["flatd"]) - flatd_base
    c_mem = max(m for _, m in results["ccdproc"]) - ccd_base
    line = (
        f"R {n:2d} raw {size}x{size} uint16 + overscan: flatd {f_time:6.2f} s, {f_mem:5.0f} MB "
        f"above imports | ccdproc (guide's steps) {c_time:6.2f} s, {c_mem:5.0f} MB above "
        f"imports | flatd is {c_time / f_time:4.1f}x faster, {c_mem / max(f_mem, 1):4.1f}x "
        f"less memory"
    )
    print(line, flush=True)
    return line


def agreement(work: Path, n: int = 10, size: int = 4096) -> str:
    """How far flatd's master lies from the guide's (rms of the ratio), after compare_raw."""
    import numpy as np
    from astropy.io import fits

    master = next((work / "flatd-0").glob("flat_*.fits"))
    ours = fits.getdata(master).astype(np.float64)
    guide = fits.getdata(work / "ccdproc.fits").astype(np.float64)
    ratio = ours / (guide / np.median(guide))
    line = f"  masters: rms {np.std(ratio / np.median(ratio) - 1):.2e} apart (twilight, stars)"
    print(line, flush=True)
    return line


def main() -> int:
    import tempfile

    from run import baseline, run_child  # benchmarks/run.py, beside this file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flatd-bench-raw-", dir=DATA.parent) as tmp:
        compare_raw(run_child, baseline, args.repeat, Path(tmp), args.frames, args.size)
        agreement(Path(tmp), args.frames, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
