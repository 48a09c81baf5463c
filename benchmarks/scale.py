"""`make bench-scale`: the daemon on months of data, before (the `main` branch) and after
(this tree), whole process against whole process on the same files.

For archives of 10k, 100k and 1M small FITS flats in nightly directories (100 files a
night for 10k and 100k, 1,000 for 1M; one night a day going back, so the last seven are
inside `sequence.keep_days`) it measures:

  start-up   seconds from `flatd run` to READY=1 (sd_notify, on a socket of this script)
  RSS        the daemon's VmRSS once started (the highest of 5 s of samples after READY)
  burst      20,000 files in 200 new night directories written at 300 files/s: seconds
             from the last write until the status file counts them all, and the longest
             gap between WATCHDOG=1 pings (WATCHDOG_USEC = 60 s, as the unit's WatchdogSec)

and the acceptance figures of issue 14:

  A  100k files in 1,000 night directories 60 days old: RSS after start-up (< 100 MB)
  B  100k recent files (100 directories inside keep_days), then 10,000 frames in 100 new
     directories as fast as this script writes: indexed within 30 s of the last write,
     no gap between watchdog pings above 30 s

Archives are made once into `bench-data/scale/` (git-ignored; 1M files need ~8 GB and ~1.1M
inodes) and their file times re-anchored to now when they are older than 12 h. `main` (or
`--main REF`) is exported with `git archive` into `bench-data/scale/main-src-<commit>` and
run with the same Python, the editable install of this tree kept out of the way. Quiet
periods are an hour, so no combination runs while measuring. Usage:

  python benchmarks/scale.py [--sizes 10k,100k,1m] [--versions main,branch] [--main REF]
                             [--acceptance] [--timeout 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data" / "scale"
ARCHIVE_FORMAT = 2  # 2: distinct frames (1 repeated bytes, which flatd counts once)
BLOCK = 2880
PYTHON = sys.executable
WATCHDOG_USEC = 60_000_000
FILTERS = ("g", "r", "i", "z")
REANCHOR_HOURS = 12
T = TypeVar("T")

SIZES = {  # name: (nights, files a night), one night a day back from yesterday
    "10k": (100, 100),
    "100k": (1000, 100),
    "1m": (1000, 1000),
}

CONFIG = """
[watch]
directories = ["{archive}"]
[sequence]
quiet_seconds = 3600
[output]
directory = "masters"
preview = false
[status]
file = "status.json"
[log]
format = "json"
level = "info"
"""

# run flatd from `source`, not from the editable install of this tree
LAUNCHER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, sys.argv[1])
import flatd
assert flatd.__file__.startswith(sys.argv[1]), flatd.__file__
from flatd.cli import main
sys.exit(main(["run", "--config", sys.argv[2]]))
"""


# -- archives ---------------------------------------------------------------------------------
def template(filter_name: str) -> bytes:
    """A 16x16 float32 flat whose DATE-OBS value is patched per file."""
    import numpy as np
    from astropy.io import fits

    header = fits.Header()
    for key, value in {
        "IMAGETYP": "Flat Field",
        "FILTER": filter_name,
        "INSTRUME": "BENCHCAM",
        "XBINNING": 1,
        "YBINNING": 1,
        "DATE-OBS": "2000-01-01T00:00:00.000",
    }.items():
        header[key] = value
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.full((16, 16), 20000.0, np.float32), header).writeto(buffer)
    return buffer.getvalue()


class FrameMaker:
    """Distinct frames: each one's first pixel is its serial number, so no two files of an
    archive or a burst are byte-identical (flatd counts a copy of a frame once)."""

    def __init__(self) -> None:
        self._templates = [template(f) for f in FILTERS]
        self._offset = self._templates[0].index(b"DATE-OBS= '") + len(b"DATE-OBS= '")
        self._serial = 0

    def write(self, path: Path, n: int, taken: datetime) -> None:
        """File number `n` of a night: the filters in turn, 30 s apart, file time = taken."""
        data = bytearray(self._templates[n % len(FILTERS)])
        data[self._offset : self._offset + 23] = taken.strftime("%Y-%m-%dT%H:%M:%S.000").encode()
        self._serial += 1
        data[BLOCK : BLOCK + 4] = struct.pack(">f", float(self._serial))
        path.write_bytes(data)
        stamp = taken.timestamp()
        os.utime(path, (stamp, stamp))


def make_archive(name: str, nights: list[tuple[str, float, int]]) -> Path:
    """`nights`: (directory name, days ago, files). Made once; re-anchored to now."""
    archive = DATA / f"{name}-v{ARCHIVE_FORMAT}"
    marker = archive / ".complete"
    if marker.exists():
        made = datetime.fromisoformat(marker.read_text().strip())
        if datetime.now(UTC) - made > timedelta(hours=REANCHOR_HOURS):
            reanchor(archive, datetime.now(UTC) - made)
        return archive
    shutil.rmtree(archive, ignore_errors=True)
    archive.mkdir(parents=True)
    maker, now = FrameMaker(), datetime.now(UTC)
    print(f"making {name}: {sum(n for _, _, n in nights):,} files ...", flush=True)
    for directory, days_ago, files in nights:
        night_dir = archive / directory
        night_dir.mkdir()
        start = now - timedelta(days=days_ago)
        for i in range(files):
            maker.write(night_dir / f"flat_{i:05d}.fits", i, start + timedelta(seconds=30 * i))
        stamp = (start + timedelta(seconds=30 * files)).timestamp()
        os.utime(night_dir, (stamp, stamp))
    marker.write_text(now.isoformat())
    return archive


def reanchor(archive: Path, shift: timedelta) -> None:
    """Move every file and directory time forward by `shift` (keeps the archive's age)."""
    print(f"re-anchoring {archive.name} by {shift} ...", flush=True)
    seconds = shift.total_seconds()
    for directory, _, files in os.walk(archive):
        for name in files:
            if name != ".complete":
                path = os.path.join(directory, name)
                stamp = os.stat(path).st_mtime + seconds
                os.utime(path, (stamp, stamp))
    for directory, _, _ in os.walk(archive, topdown=False):
        if directory != str(archive):
            stamp = os.stat(directory).st_mtime + seconds
            os.utime(directory, (stamp, stamp))
    (archive / ".complete").write_text(datetime.now(UTC).isoformat())


def nightly(size: str) -> list[tuple[str, float, int]]:
    count, files = SIZES[size]
    return [(f"night-{i:04d}", i + 1.0, files) for i in range(count)]


def acceptance_plans() -> list[tuple[Path, Burst | None]]:
    """Issue 14's acceptance cases A (old archive, RSS) and B (recent archive, burst)."""
    old = [(f"night-{i:04d}", 60 + i / 24, 100) for i in range(1000)]
    recent = [(f"run-{i:03d}", 6 * i / 100, 1000) for i in range(100)]
    return [
        (make_archive("old-100k", old), None),
        (make_archive("recent-100k", recent), Burst(100, 100, 0.0)),
    ]


def main_source(ref: str = "main") -> Path:
    """`ref` exported once per commit into bench-data (the tree of `main` when this runs)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    source = DATA / f"main-src-{commit}"
    if not (source / "flatd").is_dir():
        print(f"exporting {ref} ({commit}) into {source} ...", flush=True)
        source.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            archive.extractall(source, filter="data")
    return source


# -- one daemon run ---------------------------------------------------------------------------
@dataclass
class Run:
    version: str
    archive: str
    files: int
    startup_s: float | None = None
    rss_mb: float | None = None
    burst_files: int = 0
    burst_write_s: float | None = None
    catch_up_s: float | None = None
    max_ping_gap_s: float | None = None
    notes: list[str] = field(default_factory=list)


class Notifications:
    """sd_notify's socket, every datagram timestamped."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.path = path
        self.received: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._open = True
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while self._open:
            try:
                self.received.append((time.monotonic(), self._sock.recv(4096).decode()))
            except TimeoutError:
                continue
            except OSError:
                return

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.received) if line in m.split("\n")]

    def close(self) -> None:
        self._open = False
        self._sock.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def indexed_files(status: Path) -> int:
    try:
        return int(json.loads(status.read_text())["index"]["frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def run_daemon(
    version: str, source: Path, archive: Path, files: int, burst: Burst | None, timeout: float
) -> Run:
    work = DATA / "runs" / f"{archive.name}-{version}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "config.toml").write_text(CONFIG.format(archive=archive))
    notes = Notifications(work / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notes.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    result = Run(version, archive.name, files)
    with (work / "daemon.log").open("w") as log:
        started = time.monotonic()
        daemon = subprocess.Popen(
            [PYTHON, "-c", LAUNCHER, str(source), str(work / "config.toml")],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            measure(daemon, notes, started, work, (archive, burst), timeout, result)
        finally:
            stop(daemon)
            notes.close()
            if burst is not None:
                burst.remove(archive)
    return result


def measure(
    daemon: subprocess.Popen[bytes],
    notes: Notifications,
    started: float,
    work: Path,
    planned: tuple[Path, Burst | None],
    timeout: float,
    result: Run,
) -> None:
    archive, burst = planned
    ready = wait_until(lambda: notes.times("READY=1"), 3 * timeout, daemon)
    if not ready:
        result.notes.append(f"no READY=1 within {3 * timeout:.0f} s")
        return
    result.startup_s = round(ready[0] - started, 2)
    samples = []
    until = time.monotonic() + 5
    while time.monotonic() < until:
        samples.append(rss_mb(daemon.pid))
        time.sleep(0.25)
    result.rss_mb = round(max(samples), 1)
    if burst is None:
        return
    wait_until(lambda: indexed_files(work / "status.json") >= result.files, timeout, daemon)
    begun = time.monotonic()
    written = burst.write(archive)
    last_write = time.monotonic()
    result.burst_files, result.burst_write_s = written, round(last_write - begun, 1)
    target = result.files + written
    done = wait_until(lambda: indexed_files(work / "status.json") >= target, timeout, daemon)
    finished = time.monotonic()
    if done:
        result.catch_up_s = round(finished - last_write, 1)
    else:
        got = indexed_files(work / "status.json") - result.files
        result.notes.append(f"{got} of {written} indexed {timeout:.0f} s after the last write")
    pings = [begun, *(t for t in notes.times("WATCHDOG=1") if t > begun), finished]
    result.max_ping_gap_s = round(max(b - a for a, b in itertools.pairwise(pings)), 1)


def wait_until(condition: Callable[[], T], timeout: float, daemon: subprocess.Popen[bytes]) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def stop(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@dataclass
class Burst:
    """`directories` new night directories of `per_directory` files, at `rate` files a
    second (0: as fast as this process writes)."""

    directories: int
    per_directory: int
    rate: float

    def write(self, archive: Path) -> int:
        maker, now, n = FrameMaker(), datetime.now(UTC), 0
        begun = time.monotonic()
        for d in range(self.directories):
            directory = archive / f"burst-{d:03d}"
            directory.mkdir()
            for i in range(self.per_directory):
                maker.write(directory / f"flat_{i:05d}.fits", i, now + timedelta(seconds=i))
                n += 1
                if self.rate and (ahead := begun + n / self.rate - time.monotonic()) > 0:
                    time.sleep(ahead)
        return n

    def remove(self, archive: Path) -> None:
        for directory in archive.glob("burst-*"):
            shutil.rmtree(directory)


# -- the report ---------------------------------------------------------------------------------
def table(runs: list[Run]) -> str:
    head = (
        "archive",
        "version",
        "files",
        "start-up s",
        "RSS MB",
        "burst",
        "catch-up s",
        "max ping gap s",
    )
    rows = [
        (
            r.archive,
            r.version,
            f"{r.files:,}",
            _fmt(r.startup_s),
            _fmt(r.rss_mb),
            f"{r.burst_files:,} in {r.burst_write_s} s" if r.burst_files else "-",
            _fmt(r.catch_up_s) if r.burst_files else "-",
            _fmt(r.max_ping_gap_s) if r.burst_files else "-",
        )
        for r in runs
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True))
        for row in (head, *rows)
    ]
    lines += [f"  note {r.archive}/{r.version}: {n}" for r in runs for n in r.notes]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1m")
    parser.add_argument("--versions", default="main,branch")
    parser.add_argument("--main", default="main", help="the commit that is 'before'")
    parser.add_argument("--acceptance", action="store_true", help="also cases A and B")
    parser.add_argument("--only-acceptance", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0, help="catch-up cap, seconds")
    parser.add_argument("--json", type=Path, help="write the runs here too")
    args = parser.parse_args()
    sources = {"main": main_source(args.main), "branch": ROOT}
    versions = [v for v in args.versions.split(",") if v]
    runs: list[Run] = []
    plans: list[tuple[Path, Burst | None]] = []
    if not args.only_acceptance:
        for size in (s for s in args.sizes.split(",") if s):
            plans.append((make_archive(f"nightly-{size}", nightly(size)), Burst(200, 100, 300.0)))
    if args.acceptance or args.only_acceptance:
        plans += acceptance_plans()
    empty = DATA / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    for version in versions:
        runs.append(run_daemon(version, sources[version], empty, 0, None, args.timeout))
        print(table(runs[-1:]), flush=True)
    for archive, burst in plans:
        files = sum(1 for _ in archive.rglob("*.fits"))
        for version in versions:
            runs.append(run_daemon(version, sources[version], archive, files, burst, args.timeout))
            print(table(runs[-1:]), flush=True)
    print("\n" + table(runs))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))


if __name__ == "__main__":
    main()
