"""A frame's content digest (`flatd.inputs.fingerprint`): the same for a symbolic link, a hard link,
a copy and a touched file; different for another frame, whatever its size; and cheap."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from flatd.inputs.fingerprint import PREFIX, WHOLE, Fingerprints, content_digest
from tests.helpers import write_frame


def test_links_copies_and_touched_files_have_the_same_digest(tmp_path: Path) -> None:
    frame = write_frame(tmp_path / "r_000.fits")
    (tmp_path / "link.fits").symlink_to(frame)
    os.link(frame, tmp_path / "hard.fits")
    shutil.copy(frame, tmp_path / "copy.fits")
    fingerprints = Fingerprints()
    digest = fingerprints.of(frame)
    assert len(digest) == 32
    for name in ("link.fits", "hard.fits", "copy.fits"):
        assert fingerprints.of(tmp_path / name) == digest
    os.utime(frame, (1e9, 1e9))
    assert Fingerprints().of(frame) == digest  # touched: the same bytes
    other = write_frame(tmp_path / "r_001.fits", **{"DATE-OBS": "2026-11-23T17:30:30"})
    assert fingerprints.of(other) != digest
    assert fingerprints.of(tmp_path / "gone.fits") == ""


def test_a_large_frame_is_sampled_and_each_sample_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(20000, 100, (512, 512)).astype(np.float32)  # 1 MiB: sampled
    path = write_frame(tmp_path / "big.fits", data)
    size = path.stat().st_size
    assert size > WHOLE
    digest, _ = content_digest(path)
    rest = size - PREFIX - 4096
    for offset in (100, PREFIX + rest // 5 + 10, size - 10):  # header, a sample, the last
        changed = bytearray(path.read_bytes())
        changed[offset] ^= 0xFF
        other = tmp_path / f"changed_{offset}.fits"
        other.write_bytes(bytes(changed))
        assert content_digest(other)[0] != digest


def test_the_cost_per_file_is_small(tmp_path: Path) -> None:
    """Printed, not asserted against a clock: the figure is for the report."""
    data = np.zeros((2048, 2048), np.float32)  # 16 MiB
    paths = [write_frame(tmp_path / f"f{i}.fits", data, OBJECT=str(i)) for i in range(20)]
    fingerprints = Fingerprints()
    started = time.perf_counter()
    digests = {fingerprints.of(p) for p in paths}
    per_file = (time.perf_counter() - started) / len(paths)
    print(f"content digest of a 16 MiB frame from the page cache: {per_file * 1e6:.0f} us")
    assert len(digests) == len(paths)
