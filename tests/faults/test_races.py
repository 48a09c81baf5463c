"""An expected race, reported as what it is: a frame rewritten in place while its sequence
is being combined is one warning naming the file, not a crash, and the sequence is
combined again with the frame's new content."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flatd.outputs.masters import read_master_inputs
from tests.daemon import flat_sequence, write_in_chunks
from tests.faults.helpers import flat_bytes, masters_in, set_config

pytestmark = pytest.mark.timeout(120)

N_FRAMES = 16  # 256 MB of input in bands of a few MB: the combination takes 0.3 s or more
REWRITTEN = "r_005.fits"


def test_a_frame_rewritten_during_a_combination_is_a_warning_and_combined_again(daemon):
    flatd = daemon(quiet=0.5, min_frames=3)
    set_config(flatd, "sequence", gap_minutes=600)
    flatd.config.write_text(flatd.config.read_text() + "[combine]\nmem_limit_mb = 64\n")
    flatd.start()
    seq = flat_sequence(N_FRAMES, seed=73, shape=(2048, 2048), stars=False, cosmic_rays=False)
    again = flat_sequence(N_FRAMES, seed=74, shape=(2048, 2048), stars=False, cosmic_rays=False)
    new_content = flat_bytes(again.frames[5], seq.headers[5])  # same header: same sequence
    target = flatd.incoming / REWRITTEN
    rewrites: list[threading.Thread] = []

    def rewrite_in_place(_event: dict) -> None:
        # the camera writes the file again where it lies: first half, a pause, the rest;
        # whichever stage reads it meanwhile finds it short
        writer = threading.Thread(target=write_in_chunks, args=(target, new_content, 2, 1.0))
        writer.start()
        rewrites.append(writer)

    flatd.on_event("combine_started", rewrite_in_place)
    for i in range(N_FRAMES):
        (flatd.incoming / f"r_{i:03d}.fits").write_bytes(flat_bytes(seq.frames[i], seq.headers[i]))

    [warning] = flatd.wait_event("frame_changed_while_combining", timeout=60)[:1]
    assert warning["level"] == "warning"
    assert Path(warning["path"]) == target
    assert "changed while being combined" in warning["reason"]
    assert "combined again with its new content" in warning["reason"]
    rewrites[0].join(10)
    written = flatd.wait_event("master_written", timeout=60)
    [master] = masters_in(flatd.masters)
    rows = {Path(row["PATH"]).name: row for row in read_master_inputs(master)}
    stat = target.stat()
    assert (int(rows[REWRITTEN]["SIZE"]), int(rows[REWRITTEN]["MTIME_NS"])) == (
        stat.st_size,
        stat.st_mtime_ns,
    ), "the master was made from the frame's new content"
    assert len(rows) == N_FRAMES and all(bool(row["USED"]) for row in rows.values())
    time.sleep(1.5)  # the quiet period again: nothing more is combined
    assert len(flatd.named("master_written")) == len(written) == 1
    for crash in ("combine_crashed", "combine_failed", "combine_retry_scheduled", "frame_rejected"):
        assert flatd.named(crash) == [], crash
    assert not any("Traceback" in line for line in flatd.raw)
    assert not [e for e in flatd.status()["errors"] if REWRITTEN in e["path"]]
    assert np.isfinite(written[0]["qa"]["masked_fraction"])
    assert flatd.stop() == 0
