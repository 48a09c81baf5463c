"""`make demo`: an evening's twilight flats, watched and combined by the real daemon.

Runs `flatd run` on `demo-run/` with a short quiet period while `flatd simulate` plays a
camera taking flats in three filters (and one broken file), shows the daemon's log as
it goes, waits for the three masters (and for the broken file to be reported), prints
`flatd status`, names the files to open, then stops the daemon with SIGTERM. Exits 0
when the masters exist and the daemon's last status is `stopped`.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

FILTERS = ("g", "r", "i")
FRAMES = 7
QUIET_SECONDS = 3
TIMEOUT_SECONDS = 120  # a failure, not the expected time: the demo takes about half a minute
BROKEN_REPORT_SECONDS = 30  # a truncated file is reported once it stood still for 15 s
RULE = "-" * 78
CONFIG = f"""\
# the demo's configuration: the documented defaults, with a short quiet period
[watch]
directories = ["incoming"]

[sequence]
quiet_seconds = {QUIET_SECONDS}
min_frames = 5

[output]
directory = "masters"
preview = true

[status]
file = "status.json"

[log]
format = "console"
"""


def flatd(*args: str) -> list[str]:
    """The command line of a flatd subcommand, run by this Python."""
    return [sys.executable, "-m", "flatd", *args]


def main(root: Path = Path("demo-run")) -> int:
    """Run the demo in `root` (made afresh); 0 when the three masters exist and the daemon
    stopped cleanly."""
    try:
        return _demo(root)
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130


def _demo(root: Path) -> int:
    if root.exists():
        shutil.rmtree(root)
    (root / "incoming").mkdir(parents=True)
    config = root / "config.toml"
    config.write_text(CONFIG)
    print(
        f"flatd demo in {root}/: the daemon watches {root}/incoming/ (quiet period "
        f"{QUIET_SECONDS} s)\nwhile a simulated camera writes {FRAMES} twilight flats in "
        f"each of {', '.join(FILTERS)} and one broken file.\n"
    )
    print(f"the daemon's log (times UTC, paths shortened to {root}/):", flush=True)
    daemon = subprocess.Popen(
        flatd("run", "--config", str(config), "--log-format", "console"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    echo = threading.Thread(target=_echo, args=(daemon, root), daemon=True)
    echo.start()
    try:
        _wait(lambda: _daemon_state(root) == "running", daemon, TIMEOUT_SECONDS)
        camera = subprocess.run(
            flatd(
                "simulate",
                str(root / "incoming"),
                "--filters",
                ",".join(FILTERS),
                "--frames",
                str(FRAMES),
                "--shape",
                "512x512",
                "--pace",
                "0.2",
                "--broken",
                "1",
                "--quiet",
            ),
            check=False,
        )
        if camera.returncode != 0:
            print("demo failed: the simulated camera failed", file=sys.stderr)
            return 1
        _wait(lambda: _masters_done(root) >= len(FILTERS), daemon, TIMEOUT_SECONDS)
        try:
            _wait(lambda: bool(_status(root).get("errors")), daemon, BROKEN_REPORT_SECONDS)
        except TimeoutError:
            print(f"(the broken file was not reported within {BROKEN_REPORT_SECONDS} s)")
        print(f"\n{RULE}\n$ flatd status --config {config}", flush=True)
        subprocess.run(flatd("status", "--config", str(config)), check=False)
        print(RULE, flush=True)
    except TimeoutError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        code = _stop(daemon)
        echo.join(timeout=5)
    state = _daemon_state(root)
    print(f"\nthe daemon stopped on SIGTERM: exit status {code}, status file says {state!r}")
    _name_files(root)
    ok = code == 0 and state == "stopped" and _masters_done(root) >= len(FILTERS)
    return 0 if ok else 1


def _stop(daemon: subprocess.Popen[str]) -> int | None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        return daemon.wait()


def _echo(process: subprocess.Popen[str], root: Path) -> None:
    assert process.stdout is not None
    long_root = f"{root.resolve()}/"
    for line in process.stdout:
        print(f"  | {_shorten(line, long_root, f'{root}/')}", end="", flush=True)


def _shorten(line: str, long_root: str, short_root: str) -> str:
    """A console log line with its date dropped (the time stays, to the millisecond) and
    absolute demo paths made relative."""
    stamp = re.match(r"\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d\.\d{3})\d*Z? ", line)
    if stamp:
        line = f"{stamp.group(1)} {line[stamp.end() :]}"
    return line.replace(long_root, short_root)


def _status(root: Path) -> dict:
    try:
        document = json.loads((root / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _daemon_state(root: Path) -> str | None:
    return _status(root).get("daemon", {}).get("state")


def _masters_done(root: Path) -> int:
    groups = _status(root).get("groups", [])
    return sum(g.get("state") == "done" and bool(g.get("latest_master")) for g in groups)


def _wait(condition: Callable[[], bool], daemon: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if daemon.poll() is not None:
            raise TimeoutError(f"the daemon exited with status {daemon.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing after {seconds:g} s")
        time.sleep(0.2)


def _name_files(root: Path) -> None:
    masters = sorted((root / "masters").glob("flat_*.fits"))
    print("\nfiles to open:")
    for path in masters:
        print(f"  {path}    master flat (CCDData.read, ds9, fv)")
        if path.with_suffix(".png").exists():
            print(f"  {path.with_suffix('.png')}     its quicklook")
    if (root / "masters" / "latest").is_dir():
        print(f"  {root}/masters/latest/    the newest master of each group")
    page = root / "index.html"
    if page.exists():
        print(f"  {page.resolve().as_uri()}    the observer's page (open in a browser)")
    print(f"  {root}/status.json    what `flatd status` reads")
    print(f"\nlook again with:  .venv/bin/flatd scan {root}/incoming")
    print(f"                  .venv/bin/flatd status --config {root}/config.toml")


if __name__ == "__main__":
    sys.exit(main())
