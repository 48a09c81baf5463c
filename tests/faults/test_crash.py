"""Case 4: `kill -9` in the middle of writing a master: no partial file is ever visible,
the temporary is cleaned at the next start, the restarted daemon makes the master; the
status file is never seen half-written."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from astropy.nddata import CCDData

from flatd.atomic import is_temporary
from flatd.daemon.lock import is_lock_file
from flatd.outputs.masters import read_master_inputs
from tests.daemon import flat_sequence, wait_for
from tests.faults.helpers import StatusReader, flat_bytes, masters_in

pytestmark = pytest.mark.timeout(120)

N_FRAMES, SHAPE = 5, (2048, 2048)  # a master whose write stays visible for 80-120 ms


def test_kill_9_while_a_master_is_written_leaves_no_partial_file(daemon, tmp_path):
    reader = StatusReader(tmp_path / "status.json")
    try:
        flatd = daemon(quiet=0.5, min_frames=3).start()
        seq = flat_sequence(N_FRAMES, seed=51, shape=SHAPE, stars=False, cosmic_rays=False)
        for i in range(N_FRAMES):
            (flatd.incoming / f"r_{i:03d}.fits").write_bytes(
                flat_bytes(seq.frames[i], seq.headers[i])
            )

        def master_temporary():
            if flatd.masters.is_dir():
                for entry in os.scandir(flatd.masters):
                    if entry.name.startswith(".flatd-tmp-flat_"):
                        return entry.name
            assert not flatd.named("master_written"), "the write finished before the kill"
            return None

        caught = wait_for(
            master_temporary, timeout=60, interval=0.002, what="a master being written"
        )
        os.kill(flatd.proc.pid, signal.SIGKILL)
        flatd.proc.wait(10)
        assert flatd.proc.returncode == -signal.SIGKILL
        assert not flatd.named("master_written")

        # what a reader of the output directory sees now: finished masters or temporaries
        # (recognisable, never matching `flat_*.fits`), nothing else
        files = [p for p in flatd.masters.rglob("*") if p.is_file() and not is_lock_file(p)]
        assert masters_in(flatd.masters) == []
        assert files and all(is_temporary(p) for p in files), files
        assert caught in {p.name for p in files}

        # a kill during a status write leaves the same kind of temporary beside it
        status_temp = tmp_path / ".flatd-tmp-status.json.k9x2ab.part"
        status_temp.write_text('{"schema": 1, "daemon": {"pid"')
        assert json.loads((tmp_path / "status.json").read_text())["schema"] == 1

        again = daemon(quiet=0.5, min_frames=3).start()
        removed = {os.path.basename(e["path"]) for e in again.named("stale_temporary_removed")}
        assert {caught, status_temp.name} <= removed
        assert not status_temp.exists()
        again.wait_event("master_written", timeout=60)
        [master] = masters_in(again.masters)
        assert CCDData.read(master).data.shape == SHAPE
        assert len(read_master_inputs(master)) == N_FRAMES
        assert not [p for p in again.masters.rglob("*") if is_temporary(p)]
        assert again.stop() == 0
        time.sleep(0.2)
    finally:
        reader.close()
    assert reader.invalid == []
    assert reader.reads > 10
