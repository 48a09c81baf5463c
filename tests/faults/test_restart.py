"""Case 5 (extends tests/test_daemon.py): a restart on an unchanged tree leaves every master
and the index as they were; what landed while the daemon was down is picked up, and only
the groups it touched are combined again."""

from __future__ import annotations

import pytest

from flatd.outputs.masters import read_master_inputs
from tests.daemon import flat_sequence, wait_for, write_atomically
from tests.faults.helpers import masters_in

pytestmark = pytest.mark.timeout(90)


def settled(flatd, groups: int) -> dict:
    return wait_for(
        lambda: (
            (s := flatd.status())["groups"]
            and len(s["groups"]) == groups
            and all(g["state"] == "done" for g in s["groups"])
            and s
        ),
        what=f"{groups} groups done",
    )


def test_restarts_keep_masters_and_index_and_pick_up_what_landed_while_down(daemon):
    r = flat_sequence(4, seed=111, filter_name="r")
    g = flat_sequence(3, seed=112, filter_name="g")
    i_ = flat_sequence(3, seed=113, filter_name="i")
    first = daemon(quiet=0.5, min_frames=3).start()
    for n in range(3):
        write_atomically(first.incoming / f"r_{n}.fits", r.frames[n], r.headers[n])
        write_atomically(first.incoming / f"g_{n}.fits", g.frames[n], g.headers[n])
    (first.incoming / "junk.fits").write_bytes(b"SIMPLE  = nonsense" * 200)
    first.wait_event("master_written", count=2)
    index = settled(first, 2)["index"]
    mtimes = {p: p.stat().st_mtime_ns for p in masters_in(first.masters)}
    latest = {p: p.stat().st_mtime_ns for p in (first.masters / "latest").iterdir()}
    assert first.stop() == 0

    second = daemon(quiet=0.5, min_frames=3).start()
    status = settled(second, 2)
    assert status["index"] == index
    assert second.named("ready")[0]["frames"] == index["frames"]
    assert second.named("master_written") == [] and second.named("combine_started") == []
    assert {p: p.stat().st_mtime_ns for p in masters_in(second.masters)} == mtimes
    assert {p: p.stat().st_mtime_ns for p in (second.masters / "latest").iterdir()} == latest
    assert second.stop() == 0

    # while down: a late frame of r, a new filter i; g untouched
    write_atomically(second.incoming / "r_3.fits", r.frames[3], r.headers[3])
    for n in range(3):
        write_atomically(second.incoming / f"i_{n}.fits", i_.frames[n], i_.headers[n])
    third = daemon(quiet=0.5, min_frames=3).start()
    third.wait_event("master_written", count=2)
    settled(third, 3)
    filters = sorted(e["group"]["FILTER"] for e in third.named("master_written"))
    assert filters == ["i", "r"]
    g_master = next(p for p in mtimes if "flat_g_" in p.name)
    r_master = next(p for p in mtimes if "flat_r_" in p.name)
    assert g_master.stat().st_mtime_ns == mtimes[g_master]
    assert len(read_master_inputs(r_master)) == 4
    assert len(masters_in(third.masters)) == 3
    assert third.status()["index"]["frames"] == index["frames"] + 4
    assert third.stop() == 0
