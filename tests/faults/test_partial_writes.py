"""Case 1: frames that arrive in pieces are read once, when whole, and never reported."""

from __future__ import annotations

import os
import threading

import pytest

from tests.daemon import flat_sequence, write_in_chunks
from tests.faults.helpers import flat_bytes, per_path

pytestmark = pytest.mark.timeout(90)

CHUNKS, PAUSE = 4, 1.1


def test_large_frames_written_in_chunks_renamed_or_rsynced_are_indexed_once_when_whole(daemon):
    flatd = daemon(quiet=1.0, min_frames=3).start()
    seq = flat_sequence(3, seed=21, shape=(1024, 1024), stars=False, cosmic_rays=False)
    contents = [flat_bytes(d, h) for d, h in zip(seq.frames, seq.headers, strict=True)]
    assert len(contents[0]) > 4_000_000
    early: list[str] = []  # anything the daemon said about a file before it was whole

    def watch_for_early(name: str) -> None:
        early.extend(
            f"{e['event']} {name}"
            for e in list(flatd.events)
            if str(e.get("path", "")).endswith(name)
        )

    def in_place(name: str, content: bytes) -> None:
        """A camera writing where the file lands, with pauses of more than a second."""
        write_in_chunks(
            flatd.incoming / name, content, CHUNKS, PAUSE, between=lambda: watch_for_early(name)
        )

    def renamed(name: str, content: bytes) -> None:
        """A writer that uses a temporary name and renames, also slowly."""
        temp = flatd.incoming / f"{name}.part"
        write_in_chunks(temp, content, CHUNKS, PAUSE / 2)
        watch_for_early(name)
        os.replace(temp, flatd.incoming / name)

    def rsynced(name: str, content: bytes) -> None:
        """rsync: `.name.XXXXXX` in the same directory, then a rename."""
        temp = flatd.incoming / f".{name}.Xa9b3c"
        write_in_chunks(temp, content, CHUNKS, PAUSE / 2)
        watch_for_early(name)
        os.replace(temp, flatd.incoming / name)

    writers = [
        threading.Thread(target=w, args=(f"r_{i:03d}.fits", c))
        for i, (w, c) in enumerate(zip((in_place, renamed, rsynced), contents, strict=True))
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert early == []
    flatd.wait_event("master_written", timeout=30)
    assert flatd.named("master_written")[0]["n_frames"] == 3
    assert per_path(flatd, "frame_indexed") == {f"r_{i:03d}.fits": 1 for i in range(3)}
    assert not flatd.named("frame_rejected") and not flatd.named("frame_skipped")
    assert not flatd.named("ingest_failed")
    status = flatd.status()
    assert status["errors"] == []
    assert status["index"] == {"frames": 3, "flats": 3, "skipped": 0, "rejected": 0}
    assert flatd.stop() == 0
