"""Case 9: SIGTERM in the middle of a combination: exit 0 within seconds, status `stopped`,
no partial master. (SIGHUP being ignored and logged is in tests/test_daemon.py.)"""

from __future__ import annotations

import signal
import time

import pytest

from tests.daemon import flat_sequence
from tests.faults.conftest import flat_bytes, masters_in, set_config

pytestmark = pytest.mark.timeout(90)

N_FRAMES = 16  # 64 MB of input: the combination takes about a second


def test_sigterm_during_a_combination_stops_cleanly_without_a_partial_master(daemon):
    flatd = daemon(quiet=0.5, min_frames=3)
    set_config(flatd, "sequence", gap_minutes=600)
    flatd.config.write_text(flatd.config.read_text() + "[combine]\nmem_limit_mb = 16\n")
    flatd.start()
    seq = flat_sequence(N_FRAMES, seed=71, shape=(1024, 1024), stars=False, cosmic_rays=False)
    for i in range(N_FRAMES):
        (flatd.incoming / f"r_{i:03d}.fits").write_bytes(flat_bytes(seq.frames[i],
                                                                    seq.headers[i]))
    flatd.wait_event("combine_started", timeout=30)
    sent = time.monotonic()
    flatd.proc.send_signal(signal.SIGTERM)
    assert flatd.proc.wait(15) == 0
    took = time.monotonic() - sent
    assert took < 5.0, f"took {took:.1f} s to stop"
    assert flatd.status()["daemon"]["state"] == "stopped"
    assert flatd.named("stopped")
    # abandoned, not half-written: no master, no temporary
    assert flatd.named("combine_abandoned"), "the combination ended before the signal"
    assert not flatd.named("master_written")
    assert masters_in(flatd.masters) == []
    assert [p for p in flatd.masters.rglob("*") if p.is_file()] == []
