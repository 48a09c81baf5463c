"""`make bench`: flatd against the astropy guide's recipe in ccdproc, whole process against
whole process, on the same files in the same run.

Cases (files made once into `bench-data/` by the simulated camera, with stars):
  A  10 frames of 4096x4096 float32        flatd combine vs ccdproc.combine, alternating runs
  E  the same frames as float64            same (what ccdproc writes by default)
  F  the same frames as uint16             same (BITPIX 16, BZERO 32768, as cameras write)
  B   6 frames of 4096x2048 float32        same
  C  50 frames of 4096x4096 at 350 MB      flatd only: peak RSS above the import baseline
  G  A's frames landing in a running daemon: one combination, combine_started to
     master_written in the daemon's own log
  D  10,000 small FITS files               start-up scan (flatd's index) vs ImageFileCollection
  R  10 raw 4096x4096 uint16 + overscan     calibrate + combine vs the guide's ccdproc steps
                                           (benchmarks/raw.py)
  M  10 frames x 4 extensions of 2048x2048 a four-amplifier camera (`flatd simulate
     float32 (flatd simulate --extensions 4)   --extensions 4`): flatd combine vs the guide's
                                           recipe run by ccdproc.combine on each extension
                                           (hdu=name), written as one file, whole process
  N  M's frames tile-compressed (.fits.fz)  flatd only: time and peak RSS above imports

Wall time is measured around each child process (interpreter start included), after
writing out the page cache's dirty pages (flatd fsyncs its master; ccdproc does not, and
would otherwise leave its writes for flatd's fsync to wait on); peak RSS
comes from the rusage of a small launcher's child, minus the peak of a process that only
imports the same modules. Usage: `python benchmarks/run.py [--repeat N] [--cases AEFBCGDRMN]`.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data"
PYTHON = sys.executable
MEM_LIMIT_MB = 350

CCDPROC_RECIPE = """
import sys
import numpy as np
import ccdproc
from astropy.stats import mad_std
files, output = sys.argv[1:-1], sys.argv[-1]
master = ccdproc.combine(files, method="average", scale=lambda a: 1 / np.ma.median(a),
                         sigma_clip=True, sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
                         sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std,
                         mem_limit=350e6, unit="adu")
master.write(output, overwrite=True)
"""
CCDPROC_MOSAIC = """
import sys
import numpy as np
import ccdproc
from astropy.io import fits
from astropy.stats import mad_std
files, output = sys.argv[1:-1], sys.argv[-1]
with fits.open(files[0]) as hdul:
    names = [hdu.name for hdu in hdul[1:]]
fits.PrimaryHDU().writeto(output, overwrite=True)
for name in names:  # the guide's recipe on each extension, appended as it is done
    master = ccdproc.combine(files, method="average", scale=lambda a: 1 / np.ma.median(a),
                             sigma_clip=True, sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
                             sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std,
                             mem_limit=350e6, unit="adu", hdu=name)
    fits.append(output, master.data, fits.Header({"EXTNAME": name}))
    fits.append(output, master.uncertainty.array, fits.Header({"EXTNAME": name + "_UNCERT"}))
"""
FLATD_IMPORTS = (
    "import flatd.cli, flatd.oneshot, flatd.pipeline, flatd.engine, flatd.outputs.masters, "
    "flatd.logs"
)
CCDPROC_IMPORTS = "import numpy, ccdproc, astropy.stats"
CONFIG = f"""
[sequence]
min_frames = 1
[combine]
mem_limit_mb = {MEM_LIMIT_MB}
[output]
preview = false
[log]
format = "json"
level = "warning"
"""


LAUNCHER = """
import resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - started
print(code, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def run_child(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process.

    The child is started by a small launcher process, whose own RSS is what the child's
    peak starts from: Linux carries a parent's RSS at fork into the child's `ru_maxrss`,
    so children of this (large) runner would all report at least its size. Dirty pages
    are written out before (not timed), so that no run waits for the previous one's."""
    os.sync()
    out = subprocess.run(
        [PYTHON, "-c", LAUNCHER, *argv], capture_output=True, text=True, check=False
    )
    try:
        code, wall, peak = out.stdout.split()
    except ValueError:
        code, wall, peak = "1", "0", "0"
    if code != "0":
        raise SystemExit(f"benchmark child failed: {' '.join(argv[:4])}...\n{out.stderr[-2000:]}")
    return float(wall), float(peak)


def baseline(imports: str) -> float:
    return run_child([PYTHON, "-c", imports])[1]


def make_frames(name: str, n: int, shape: tuple[int, int]) -> list[Path]:
    """One simulated twilight sequence (one true flat, levels falling 40000 -> 5000 ADU)
    of n frames, made five at a time to keep the generator's memory small."""
    import numpy as np

    from flatd.simulation.flats import DEFAULT_START, simulate_sequence, write_sequence

    directory = DATA / name
    files = sorted(directory.glob("*.fits"))
    if len(files) == n and (directory / "complete").exists():
        return files
    print(f"  making {n} frames of {shape[1]}x{shape[0]} in {directory} ...", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    levels = np.geomspace(40000.0, 5000.0, n)
    true_flat = None
    for start in range(0, n, 5):
        count = min(5, n - start)
        seq = simulate_sequence(
            shape=shape,
            n_frames=count,
            seed=start,
            filter_name="r",
            true_flat=true_flat,
            levels=(levels[start], levels[start + count - 1]),
            start=DEFAULT_START + timedelta(seconds=30 * start),
        )
        true_flat = seq.true_flat
        for i, path in enumerate(write_sequence(seq, directory, prefix=f"b{start:03d}")):
            path.rename(directory / f"frame_{start + i:03d}.fits")
    (directory / "complete").touch()
    return sorted(directory.glob("*.fits"))


def converted_frames(name: str, source: list[Path], kind: str) -> list[Path]:
    """`source`'s frames stored as float64, or as uint16 (BITPIX 16 + BZERO 32768)."""
    import numpy as np
    from astropy.io import fits

    directory = DATA / name
    if (directory / "complete").exists():
        return sorted(directory.glob("*.fits"))
    print(f"  converting {len(source)} frames to {kind} in {directory} ...", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    for path in source:
        with fits.open(path) as hdul:
            data, header = hdul[0].data, hdul[0].header.copy()
        if kind == "float64":
            stored = data.astype(np.float64)
        else:
            stored = np.clip(np.round(data), 0, 65535).astype(np.uint16)
        fits.PrimaryHDU(stored, header).writeto(directory / path.name, overwrite=True)
    (directory / "complete").touch()
    return sorted(directory.glob("*.fits"))


def make_mosaic_frames(name: str, n: int, shape: tuple[int, int], compress: str) -> list[Path]:
    """One simulated twilight sequence of a four-amplifier camera (`flatd simulate
    --extensions 4`), n frames of 4 extensions of `shape` each."""
    from flatd.simulation.flats import write_atomic
    from flatd.simulation.mosaic import simulate_mosaic

    directory = DATA / name
    suffix = ".fits.fz" if compress == "tile" else ".fits"
    if (directory / "complete").exists():
        return sorted(directory.glob(f"*{suffix}"))
    print(f"  making {n} frames of 4 x {shape[1]}x{shape[0]} in {directory} ...", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    camera = simulate_mosaic(shape, 4, n, seed=0).camera
    for i in range(n):
        write_atomic(directory / f"frame_{i:03d}{suffix}", camera.file_bytes(i, compress))
    (directory / "complete").touch()
    return sorted(directory.glob(f"*{suffix}"))


def compare(
    label: str, files: list[Path], repeat: int, work: Path, recipe: str = CCDPROC_RECIPE
) -> None:
    config = work / "bench.toml"
    config.write_text(CONFIG)

    def flatd_cmd(run: int) -> list[str]:
        # a fresh output directory each run: a one-shot combine, like ccdproc's (with an
        # earlier master in latest/, flatd would also compare the new one with it)
        return [
            PYTHON,
            "-m",
            "flatd",
            "combine",
            "--config",
            str(config),
            "--output",
            str(work / f"flatd-out-{label[0]}-{run}"),
            *map(str, files),
        ]

    ccd_cmd = [PYTHON, "-c", recipe, *map(str, files), str(work / "ccdproc.fits")]
    flatd_base, ccd_base = baseline(FLATD_IMPORTS), baseline(CCDPROC_IMPORTS)
    run_child(flatd_cmd(-1))  # warm the page cache for both
    results: dict[str, list[tuple[float, float]]] = {"flatd": [], "ccdproc": []}
    for run in range(repeat):
        results["ccdproc"].append(run_child(ccd_cmd))
        results["flatd"].append(run_child(flatd_cmd(run)))
    f_time = statistics.median(t for t, _ in results["flatd"])
    c_time = statistics.median(t for t, _ in results["ccdproc"])
    f_mem = max(m for _, m in results["flatd"]) - flatd_base
    c_mem = max(m for _, m in results["ccdproc"]) - ccd_base
    print(
        f"{label}: flatd {f_time:6.2f} s, {f_mem:5.0f} MB above imports | ccdproc "
        f"{c_time:6.2f} s, {c_mem:5.0f} MB above imports | flatd is {c_time / f_time:4.1f}x "
        f"faster; memory {f_mem:.0f} MB vs limit {MEM_LIMIT_MB} MB "
        f"({'within' if f_mem <= MEM_LIMIT_MB else 'OVER'})",
        flush=True,
    )
    for name, runs in results.items():
        print(f"    {name:8} runs: {', '.join(f'{t:.2f}' for t, _ in runs)} s", flush=True)


def memory_only(label: str, files: list[Path], work: Path) -> None:
    config = work / "bench.toml"
    config.write_text(CONFIG)
    base = baseline(FLATD_IMPORTS)
    for run in ("warm-up", "measured"):  # the first run fills the page cache
        wall, peak = run_child(
            [
                PYTHON,
                "-m",
                "flatd",
                "combine",
                "--config",
                str(config),
                "--output",
                str(work / f"flatd-out-{label[0]}-{run}"),
                *map(str, files),
            ]
        )
    print(
        f"{label}: flatd {wall:6.2f} s, peak {peak:.0f} MB, {peak - base:.0f} MB above "
        f"imports ({base:.0f} MB) vs limit {MEM_LIMIT_MB} MB "
        f"({'within' if peak - base <= MEM_LIMIT_MB else 'OVER'})",
        flush=True,
    )


DAEMON_CONFIG = f"""
[watch]
directories = ["incoming"]
[sequence]
quiet_seconds = 1
min_frames = 1
[combine]
mem_limit_mb = {MEM_LIMIT_MB}
[output]
directory = "masters"
preview = false
[status]
file = "status.json"
[log]
format = "json"
level = "info"
"""


def in_daemon(label: str, files: list[Path], repeat: int, work: Path) -> None:
    """One combination inside a running `flatd run`: the frames are hard-linked into
    its watched directory; the time from its `combine_started` to its `master_written`
    event, by the timestamps in its log."""
    times = []
    for run in range(repeat + 1):  # the first run warms the page cache and the imports
        root = work / f"daemon-{run}"
        (root / "incoming").mkdir(parents=True)
        (root / "flatd.toml").write_text(DAEMON_CONFIG)
        events = _daemon_events(root, files)
        started = events["combine_started"]
        written = events["master_written"]
        if run:
            times.append((written - started).total_seconds())
    print(
        f"{label}: combine_started -> master_written {statistics.median(times):5.2f} s "
        f"(median of {repeat}: {', '.join(f'{t:.2f}' for t in times)})",
        flush=True,
    )


def _daemon_events(root: Path, files: list[Path], timeout: float = 300.0) -> dict[str, datetime]:
    command = [PYTHON, "-m", "flatd", "run", "--config", str(root / "flatd.toml")]
    daemon = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    seen: dict[str, datetime] = {}
    deadline = time.monotonic() + timeout
    try:
        assert daemon.stdout is not None
        for line in daemon.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            name = event.get("event", "")
            seen.setdefault(name, datetime.fromisoformat(event.get("timestamp", "1970-01-01")))
            if name == "ready":
                for path in files:
                    os.link(path, root / "incoming" / path.name)
            if name == "master_written" or time.monotonic() > deadline:
                break
    finally:
        daemon.terminate()
        daemon.wait(60)
    if "master_written" not in seen:
        raise SystemExit(f"benchmark daemon wrote no master: {sorted(seen)}")
    return seen


def scan(n_files: int, sample: int) -> None:
    """Start-up scan: flatd's index of n_files against ImageFileCollection on a sample."""
    import numpy as np
    from astropy.io import fits

    directory = DATA / "scan"
    if len(list(directory.glob("*.fits"))) != n_files:
        print(f"  making {n_files} small FITS files in {directory} ...", flush=True)
        directory.mkdir(parents=True, exist_ok=True)
        data = np.zeros((64, 64), np.float32)
        for i in range(n_files):
            header = fits.Header(
                {
                    "IMAGETYP": "Flat Field" if i % 3 else "Light Frame",
                    "FILTER": "gri"[i % 3],
                    "INSTRUME": "SIMCAM",
                    "XBINNING": 1,
                    "YBINNING": 1,
                    "DATE-OBS": f"2026-11-23T17:{i // 600 % 60:02d}:{i // 10 % 60:02d}",
                    "EXPTIME": 5.0,
                    **{f"KEY{k:03d}": k for k in range(60)},
                }
            )
            fits.PrimaryHDU(data, header).writeto(directory / f"frame_{i:05d}.fits")
    code_flatd = (
        "import sys, time; from pathlib import Path; from flatd.config import Config;"
        "from flatd.inputs.index import index_paths; t = time.perf_counter();"
        "index = index_paths([Path(sys.argv[1])], Config());"
        "print(time.perf_counter() - t, index.counts()['frames'])"
    )
    code_ifc = (
        "import sys, time; from ccdproc import ImageFileCollection;"
        "from pathlib import Path; files = sorted(Path(sys.argv[1]).glob('*.fits'))"
        f"[:{sample}]; t = time.perf_counter();"
        "c = ImageFileCollection(filenames=[str(f) for f in files]);"
        "print(time.perf_counter() - t, len(c.summary))"
    )
    runs = [
        subprocess.run(
            [PYTHON, "-c", code_flatd, str(directory)], capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(3)
    ]
    flatd_s, indexed = min(float(r[0]) for r in runs[1:]), int(runs[-1][1])  # warm cache
    out = subprocess.run(
        [PYTHON, "-c", code_ifc, str(directory)], capture_output=True, text=True, check=True
    ).stdout.split()
    ifc_s = float(out[0]) * n_files / sample
    print(
        f"D scan of {n_files} files: flatd indexed {indexed} in {flatd_s:.2f} s "
        f"({flatd_s / n_files * 1e3:.3f} ms/file); ImageFileCollection {ifc_s:.1f} s "
        f"(extrapolated from {sample} files, {ifc_s / n_files * 1e3:.2f} ms/file): "
        f"{ifc_s / flatd_s:.0f}x",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="AEFBCGDRMN")
    args = parser.parse_args()
    # a pip install compiles flatd's bytecode; an editable checkout run with
    # PYTHONDONTWRITEBYTECODE would otherwise recompile it in every run
    compileall.compile_dir(ROOT / "flatd", quiet=1)
    from flatd.engine import kernel

    chosen = kernel.choice()
    print(
        f"engine: {chosen.engine} ({chosen.reason}); page cache warm; medians of "
        f"{args.repeat} alternating runs; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="flatd-bench-", dir=DATA.parent) as tmp:
        work = Path(tmp)
        a = make_frames("a", 10, (4096, 4096)) if set("AEFG") & set(args.cases) else []
        if "A" in args.cases:
            compare("A 10 x 4096x4096 float32", a, args.repeat, work)
        if "E" in args.cases:
            e = converted_frames("e", a, "float64")
            compare("E 10 x 4096x4096 float64", e, args.repeat, work)
        if "F" in args.cases:
            f = converted_frames("f", a, "uint16")
            compare("F 10 x 4096x4096 uint16 ", f, args.repeat, work)
        if "B" in args.cases:
            compare("B  6 x 4096x2048", make_frames("b", 6, (2048, 4096)), args.repeat, work)
        if "C" in args.cases:
            memory_only("C 50 x 4096x4096", make_frames("c", 50, (4096, 4096)), work)
        if "G" in args.cases:
            in_daemon("G 10 x 4096x4096 float32 in the daemon", a, args.repeat, work)
        if "D" in args.cases:
            scan(10_000, 1000)
        if "R" in args.cases:
            from raw import compare_raw  # benchmarks/raw.py, beside this file

            compare_raw(run_child, baseline, args.repeat, work)
        if "M" in args.cases:
            m = make_mosaic_frames("m", 10, (2048, 2048), "none")
            compare("M 10 x 4 x 2048x2048 mosaic", m, args.repeat, work, CCDPROC_MOSAIC)
        if "N" in args.cases:
            fz = make_mosaic_frames("n", 10, (2048, 2048), "tile")
            memory_only("N 10 x 4 x 2048x2048 mosaic .fits.fz", fz, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
