"""Test harness for the real daemon: `flatd run` in a subprocess on tmp_path directories,
its JSON log lines collected, conditions awaited with deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from flatd.simulation.flats import simulate_sequence

DEFAULT_CONFIG = """
[watch]
directories = ["incoming"]
{watch}
[sequence]
quiet_seconds = {quiet}
min_frames = {min_frames}
[output]
directory = "masters"
preview = false
[status]
file = "status.json"
[log]
format = "json"
level = "debug"
{extra}
"""


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class FlatdProcess:
    """`flatd run` with a config in `root`; `events` are its parsed log lines."""

    def __init__(
        self,
        root: Path,
        *,
        quiet: float = 1.0,
        min_frames: int = 3,
        watch: str = "",
        extra: str = "",
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """`prefix`: a command the daemon runs under (e.g. `unshare ...`), which must
        exec it, so that `proc.pid` stays the daemon's."""
        self.root = root
        self.prefix = prefix
        (root / "incoming").mkdir(parents=True, exist_ok=True)
        self.config = root / "config.toml"
        self.config.write_text(
            DEFAULT_CONFIG.format(quiet=quiet, min_frames=min_frames, watch=watch, extra=extra)
        )
        self.env = {**os.environ, **(env or {})}
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._on_event: dict[str, Callable[[dict[str, Any]], None]] = {}

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def masters(self) -> Path:
        return self.root / "masters"

    def start(self, wait_ready: bool = True) -> FlatdProcess:
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "flatd", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.root,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait_ready:
            self.wait_event("ready", timeout=60)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                self.events.append(event)
                if (action := self._on_event.pop(event.get("event"), None)) is not None:
                    action(event)

    def on_event(self, event: str, action: Callable[[dict[str, Any]], None]) -> None:
        """Run `action` once, on the log reader's thread, as soon as `event` is logged:
        without a polling interval between the daemon's line and the test's reaction."""
        self._on_event[event] = action

    def named(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.events)
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_event(
        self, event: str, count: int = 1, timeout: float = 30.0, **fields: Any
    ) -> list[dict[str, Any]]:
        return wait_for(
            lambda: (found := self.named(event, **fields)) and len(found) >= count and found,
            timeout,
            what=f"{count} x {event} {fields or ''}\n" + "".join(self.raw[-30:]),
        )

    def status(self) -> dict[str, Any]:
        return json.loads((self.root / "status.json").read_text())

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def flat_sequence(n: int, filter_name: str = "r", seed: int = 0, shape=(64, 64), **kwargs):
    return simulate_sequence(shape=shape, n_frames=n, filter_name=filter_name, seed=seed, **kwargs)


def night(
    directory: Path,
    days_ago: float,
    n_flats: int,
    seed: int,
    others: int = 0,
    directory_time: bool = True,
) -> list[Path]:
    """A night directory written `days_ago` (headers and file times alike; the directory's
    own time too unless not `directory_time`): `n_flats` flats of one sequence and
    `others` bias frames."""
    taken = datetime.now(UTC) - timedelta(days=days_ago)
    seq = flat_sequence(n_flats, seed=seed, shape=(16, 16), start=taken.replace(tzinfo=None))
    directory.mkdir(parents=True)
    paths = []
    for i in range(n_flats):
        paths.append(directory / f"r_{i:03d}.fits")
        fits.PrimaryHDU(seq.frames[i], seq.headers[i]).writeto(paths[-1])
    for i in range(others):
        bias = seq.headers[0].copy()
        bias["IMAGETYP"] = "Bias Frame"
        paths.append(directory / f"bias_{i:03d}.fits")
        fits.PrimaryHDU(seq.frames[0], bias).writeto(paths[-1])
    when = taken.timestamp()
    for path in (*paths, directory) if directory_time else paths:
        os.utime(path, (when, when))
    return paths


def write_atomically(path: Path, data: np.ndarray, header: fits.Header) -> None:
    """A camera that writes under a temporary name and renames into place."""
    temp = path.with_name(f".{path.name}.tmp123")
    fits.PrimaryHDU(data, header).writeto(temp)
    os.replace(temp, path)


def write_frames(directory: Path, seq, indices: Iterable[int]) -> None:
    """Frames `indices` of a simulated sequence, written atomically as r_000.fits, ..."""
    for i in indices:
        write_atomically(directory / f"r_{i:03d}.fits", seq.frames[i], seq.headers[i])


def write_slowly_in_place(
    path: Path, data: np.ndarray, header: fits.Header, chunks: int = 4, pause: float = 0.6
) -> None:
    """A camera that writes the file where it lands, in chunks with pauses between them."""
    temp = path.with_name(f".staging-{path.name}")
    fits.PrimaryHDU(data, header).writeto(temp)
    content = temp.read_bytes()
    temp.unlink()
    write_in_chunks(path, content, chunks, pause)


def write_in_chunks(
    path: Path,
    content: bytes,
    chunks: int,
    pause: float,
    between: Callable[[], None] = lambda: None,
) -> None:
    """Write `content` to `path` in `chunks` flushed pieces, pausing (and calling
    `between`) after each piece but the last."""
    step = -(-len(content) // chunks)
    with path.open("wb") as out:
        for start in range(0, len(content), step):
            out.write(content[start : start + step])
            out.flush()
            if start + step < len(content):
                time.sleep(pause)
                between()


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.received: list[tuple[float, str]] = []  # (time.monotonic(), message)
        self._running = True
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while self._running:
            try:
                message = self.sock.recv(4096).decode()
                self.received.append((time.monotonic(), message))
                self.messages.append(message)
            except TimeoutError:
                continue
            except OSError:
                return

    def times_of(self, line: str) -> list[float]:
        """When each datagram holding `line` (e.g. "WATCHDOG=1") arrived."""
        return [t for t, m in list(self.received) if line in m.split("\n")]

    def close(self) -> None:
        self._running = False
        self.sock.close()


def numbered(content: bytes, n: int) -> bytes:
    """A FITS file's bytes with its first float32 pixel set to `n`: another frame (content
    identifies a frame: a byte-identical copy of one would be a duplicate of it)."""
    end = next(i for i in range(0, len(content), 80) if content[i : i + 8] == b"END     ")
    data = -(-(end + 80) // 2880) * 2880
    return content[:data] + struct.pack(">f", float(n)) + content[data + 4 :]
