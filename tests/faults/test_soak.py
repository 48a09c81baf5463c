"""Case 10: a steady trickle of frames for FLATD_SOAK_SECONDS (30 s by default; `make soak`
runs 30 min): the daemon's RSS and open file descriptors do not grow."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

import pytest

from tests.daemon import flat_sequence
from tests.faults.helpers import StatusReader, flat_bytes, open_fds, rss_kb, set_config

SECONDS = float(os.environ.get("FLATD_SOAK_SECONDS", "30"))
EVERY = 0.25  # one frame every quarter of a second
BURST = 3  # frames per sequence; each burst is a new sequence (a new master)
KEEP = 6  # bursts kept in the watched directory; older ones are archived (deleted)

pytestmark = pytest.mark.timeout(SECONDS + 120)


def test_a_steady_trickle_does_not_grow_memory_or_descriptors(daemon, tmp_path):
    flatd = daemon(quiet=0.5, min_frames=BURST)
    set_config(flatd, "sequence", gap_minutes=1)
    flatd.start()
    reader = StatusReader(tmp_path / "status.json")
    filters = ("g", "r", "i")
    seqs = {
        f: flat_sequence(BURST, filter_name=f, seed=n, shape=(64, 64))
        for n, f in enumerate(filters)
    }
    start = datetime(2026, 11, 23, 17, 30)
    warm_up = max(10.0, SECONDS / 4)
    began = time.monotonic()
    samples: list[tuple[float, int, int]] = []
    n = 0
    try:
        while (elapsed := time.monotonic() - began) < SECONDS:
            burst, k = divmod(n, BURST)
            name = filters[burst % len(filters)]
            seq = seqs[name]
            header = seq.headers[k].copy()
            when = start + timedelta(minutes=10 * burst, seconds=30 * k)
            header["DATE-OBS"] = when.isoformat()
            (flatd.incoming / f"{name}_{burst:05d}_{k}.fits").write_bytes(
                flat_bytes(seq.frames[k], header)
            )
            n += 1
            if k == BURST - 1 and burst >= KEEP:  # an archiver takes old frames away
                for old in flatd.incoming.glob(f"*_{burst - KEEP:05d}_*.fits"):
                    old.unlink()
            if elapsed >= warm_up and (not samples or elapsed - samples[-1][0] >= 5):
                samples.append((elapsed, rss_kb(flatd.proc.pid), open_fds(flatd.proc.pid)))
            time.sleep(EVERY)
        time.sleep(2.0)  # let the last burst settle
        samples.append((time.monotonic() - began, rss_kb(flatd.proc.pid), open_fds(flatd.proc.pid)))
    finally:
        reader.close()
    bursts = n // BURST
    masters = len(flatd.named("master_written"))
    assert masters >= bursts - 1, (masters, bursts)
    assert flatd.status()["errors"] == []
    assert reader.invalid == []
    (_, rss_start, fds_start), (_, rss_end, fds_end) = samples[0], samples[-1]
    print(
        f"soak {SECONDS:g} s: {n} frames, {masters} masters; RSS {rss_start} -> "
        f"{rss_end} kB, fds {fds_start} -> {fds_end}; samples {samples}"
    )
    assert rss_end - rss_start < max(8_000, rss_start * 0.08), samples
    assert fds_end <= fds_start + 2, samples
    assert flatd.stop() == 0
