"""The memory limit, measured where it matters: the resident memory of a real process that
combines frames far larger in total than `combine.mem_limit_mb`, against the limit (the
engine's own ledger is checked in test_engine_combine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tests.helpers import write_frame

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import os, sys
from pathlib import Path
from flatd.config import CombineConfig, FramesConfig
from flatd.engine import combine, tune_allocator
from flatd.frames import read_frame

tune_allocator()
frames = [read_frame(Path(p), FramesConfig()) for p in sys.argv[2:]]
small, frames = frames[:3], frames[3:]
combine(small, CombineConfig())  # imports and first-use caches, on small frames


def status_kb(name):  # VmRSS now, VmHWM the peak (ru_maxrss would start at the parent's)
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith(name)).split()[1])


before = status_kb("VmRSS:")
result = combine(frames, CombineConfig(mem_limit_mb=float(sys.argv[1])), min_response=0.05)
after = status_kb("VmHWM:")
print(before, after, result.peak_bytes, result.engine)
"""


@pytest.mark.parametrize(("engine", "limit_mb"), [("compiled", 24), ("numpy", 40)])
def test_a_combination_stays_within_its_memory_limit(
    tmp_path: Path, engine: str, limit_mb: int
) -> None:
    """12 frames of 1024x1536 (75 MB of float32, 40 MB stored as uint16) under a limit
    of 24 or 40 MB: the process grows by no more than the limit."""
    rng = np.random.default_rng(3)
    flat = 1 + 0.05 * rng.standard_normal((1024, 1536))
    header = {"IMAGETYP": "Flat", "FILTER": "r", "INSTRUME": "X", "XBINNING": 1, "YBINNING": 1}
    paths = [str(write_frame(tmp_path / f"small{i}.fits")) for i in range(3)]
    for i, level in enumerate(np.geomspace(30000, 8000, 12)):
        path = tmp_path / f"f{i:02d}.fits"
        data = rng.poisson(level * flat)
        stored = data.astype(np.float32) if i % 2 else data.astype(np.uint16)
        fits.PrimaryHDU(stored, fits.Header(header)).writeto(path)
        paths.append(str(path))
    env = {**os.environ, "FLATD_ENGINE": "numpy" if engine == "numpy" else ""}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(limit_mb), *paths],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    out = child.stdout.split()
    before_kb, after_kb, peak_bytes = int(out[0]), int(out[1]), int(out[2])
    if engine == "compiled" and out[3] != "compiled":
        pytest.skip("compiled kernel not built")
    assert peak_bytes <= limit_mb * 1_000_000  # the ledger
    grown_mb = (after_kb - before_kb) * 1024 / 1_000_000
    assert grown_mb <= limit_mb, f"resident memory grew {grown_mb:.1f} MB, limit {limit_mb} MB"
