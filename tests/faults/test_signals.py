"""Case 9: SIGTERM in the middle of a combination: exit 0 within seconds, status `stopped`,
no partial master. (SIGHUP being ignored and logged is in tests/test_daemon.py.)"""

from __future__ import annotations

import signal
import time

import pytest

from flatd.lock import is_lock_file
from tests.daemon import flat_sequence
from tests.faults.conftest import flat_bytes, masters_in, set_config

pytestmark = pytest.mark.timeout(90)

N_FRAMES = 16  # 256 MB of input in bands of a few MB: the combination takes 0.3 s or more,
# and the signal leaves within a millisecond of `combine_started` being logged.


def test_sigterm_during_a_combination_stops_cleanly_without_a_partial_master(daemon):
    flatd = daemon(quiet=0.5, min_frames=3)
    set_config(flatd, "sequence", gap_minutes=600)
    flatd.config.write_text(flatd.config.read_text() + "[combine]\nmem_limit_mb = 64\n")
    flatd.start()
    sent: list[float] = []

    def terminate(_event: dict) -> None:
        flatd.proc.send_signal(signal.SIGTERM)
        sent.append(time.monotonic())

    flatd.on_event("combine_started", terminate)
    seq = flat_sequence(N_FRAMES, seed=71, shape=(2048, 2048), stars=False, cosmic_rays=False)
    for i in range(N_FRAMES):
        (flatd.incoming / f"r_{i:03d}.fits").write_bytes(flat_bytes(seq.frames[i], seq.headers[i]))
    assert flatd.proc.wait(60) == 0
    assert sent, "the daemon stopped without logging combine_started"
    took = time.monotonic() - sent[0]
    assert took < 5.0, f"took {took:.1f} s to stop"
    assert flatd.status()["daemon"]["state"] == "stopped"
    flatd.wait_event("stopped", timeout=5)  # the last line: the reader has parsed them all
    # abandoned, not half-written: no master, no temporary
    assert flatd.named("combine_abandoned"), "the combination ended before the signal"
    assert not flatd.named("master_written")
    assert masters_in(flatd.masters) == []
    assert [p for p in flatd.masters.rglob("*") if p.is_file() and not is_lock_file(p)] == []
