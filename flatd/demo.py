"""`make demo`: an evening's twilight flats, watched and combined by the real daemon.

Runs `flatd run` on `demo-run/` with a short quiet period while `flatd simulate` plays a
camera taking flats in three filters (and one broken file), shows the daemon's log as
it goes, waits for the three masters, prints `flatd status`, names the files to open,
then stops the daemon cleanly.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

FILTERS = ("g", "r", "i")
TIMEOUT_SECONDS = 120
CONFIG = """\
# the demo's configuration: the documented defaults, with a short quiet period
[watch]
directories = ["incoming"]

[sequence]
quiet_seconds = 3
min_frames = 5

[output]
directory = "masters"

[status]
file = "status.json"

[log]
format = "console"
"""


def flatd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flatd", *args]


def main(root: Path = Path("demo-run")) -> int:
    """Run the demo in `root` (made afresh); return 0 when the three masters exist."""
    if root.exists():
        shutil.rmtree(root)
    (root / "incoming").mkdir(parents=True)
    config = root / "config.toml"
    config.write_text(CONFIG)
    print(f"flatd demo in {root}/ — the daemon's log follows\n", flush=True)
    daemon = subprocess.Popen(flatd("run", "--config", str(config)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    threading.Thread(target=_echo, args=(daemon,), daemon=True).start()
    try:
        _wait(lambda: _status(root).get("daemon", {}).get("state") == "running", daemon)
        camera = subprocess.run(
            flatd("simulate", str(root / "incoming"), "--filters", ",".join(FILTERS),
                  "--frames", "7", "--shape", "512x512", "--pace", "0.2", "--broken", "1",
                  "--quiet"), check=False)
        if camera.returncode != 0:
            print("the simulated camera failed", file=sys.stderr)
            return 1
        _wait(lambda: _masters_done(root) >= len(FILTERS), daemon)
    except TimeoutError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
    print("\n" + "-" * 72)
    subprocess.run(flatd("status", "--config", str(config)), check=False)
    _name_files(root)
    print(f"\nthe daemon stopped with exit status {code}")
    return 0 if code == 0 and _status(root)["daemon"]["state"] == "stopped" else 1


def _echo(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        print(f"  | {line}", end="", flush=True)


def _status(root: Path) -> dict:
    try:
        return json.loads((root / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _masters_done(root: Path) -> int:
    groups = _status(root).get("groups", [])
    return sum(g.get("state") == "done" and bool(g.get("latest_master")) for g in groups)


def _wait(condition, daemon: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not condition():
        if daemon.poll() is not None:
            raise TimeoutError(f"the daemon exited with status {daemon.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing after {TIMEOUT_SECONDS} s")
        time.sleep(0.2)


def _name_files(root: Path) -> None:
    print("\nfiles to open:")
    for path in sorted((root / "masters").glob("flat_*")):
        print(f"  {path}")
    for extra in (root / "status.json", root / "index.html"):
        if extra.exists():
            print(f"  {extra}")
    print(f"\nlook again with:  .venv/bin/flatd scan {root}/incoming")


if __name__ == "__main__":
    sys.exit(main())
