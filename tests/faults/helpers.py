"""Helpers for the fault-injection tests: config edits, what the output tree holds, raw
FITS bytes, a status-file reader, a process's memory and descriptors."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np
from astropy.io import fits

from tests.daemon import FlatdProcess


def set_config(process: FlatdProcess, section: str, **values: object) -> None:
    """Add keys to a table the harness's config already has (TOML forbids a second one)."""
    text = process.config.read_text()
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    assert f"[{section}]\n" in text
    process.config.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{lines}", 1))


def masters_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("flat_*.fits"))


def leftovers(directory: Path) -> list[Path]:
    """Anything in the output tree that is not a finished master: temporaries, partials."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not (p.name.startswith("flat_") and p.name.endswith(".fits"))
    )


def per_path(process: FlatdProcess, *events: str) -> Counter:
    return Counter(
        Path(e["path"]).name
        for e in list(process.events)
        if e.get("event") in events and e.get("path")
    )


def flat_bytes(data: np.ndarray, header: fits.Header) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    fits.PrimaryHDU(data, header).writeto(buffer)
    return buffer.getvalue()


def with_raw_value(content: bytes, keyword: str, raw: bytes) -> bytes:
    """`content` (a FITS file) with `keyword`'s string value replaced by raw bytes that
    no FITS writer would accept (control characters, non-ASCII)."""
    start = content.index(keyword.ljust(8).encode() + b"= ")
    card = content[start : start + 80]
    image = (card[:10] + b"'" + raw.replace(b"'", b"''") + b"'").ljust(80, b" ")
    assert len(image) == 80, "raw value too long for one card"
    return content[:start] + image + content[start + 80 :]


class StatusReader:
    """Parses the status file in a loop on a thread; remembers every torn read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.invalid: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):  # often, without taking a whole core
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue
            try:
                document = json.loads(text)
                assert document["schema"] == 1
                self.reads += 1
            except (ValueError, KeyError, TypeError, AssertionError):
                self.invalid.append(text[:200])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
