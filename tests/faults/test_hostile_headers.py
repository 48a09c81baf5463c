"""Case 3: header values chosen to escape, collide or break: every master stays inside the
output directory under its own safe name, no group overwrites another, and input cards
astropy refuses to write never stop a master."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from astropy.nddata import CCDData

from flatd.atomic import is_temporary
from flatd.daemon.lock import is_lock_file
from flatd.outputs.masters import read_master_inputs
from tests.daemon import flat_sequence, wait_for
from tests.faults.helpers import flat_bytes, masters_in, with_raw_value
from tests.hostile import hostile_file

pytestmark = pytest.mark.timeout(90)

LONG = "L" * 90
FILTERS: dict[str, str | bytes] = {  # file prefix -> FILTER value (bytes: raw card bytes)
    "up": "../../../etc/x",
    "abs": "/abs/path",
    "dots": "..",
    "blank": " ",
    "ctl1": b"a\x01b",
    "ctl2": b"a\x1bb",
    "del": b"a\x7fb",
    "long1": LONG + "1",
    "long2": LONG + "2",
    "utf1": "gé".encode(),
    "utf2": "gü".encode(),
    "latin": b"g\xe9",
    "lower": "g",
    "upper": "G",
    "quote": "g'",
    "gp": "gp",
}


def test_hostile_filter_values_make_safe_distinct_masters_inside_the_output(daemon, tmp_path):
    flatd = daemon(quiet=1.0, min_frames=3).start()
    seq = flat_sequence(3, seed=41, shape=(32, 32), stars=False, cosmic_rays=False)
    for n, (prefix, value) in enumerate(FILTERS.items()):
        for i in range(3):
            header = seq.headers[i].copy()
            header["FILTER"] = "PLACEHOLDER" if isinstance(value, bytes) else value
            content = flat_bytes(seq.frames[i] * (1 + n / 100), header)
            if isinstance(value, bytes):
                content = with_raw_value(content, "FILTER", value)
            (flatd.incoming / f"{prefix}_{i}.fits").write_bytes(content)

    expected = len(FILTERS)
    wait_for(
        lambda: len(flatd.named("master_written")) + len(flatd.named("combine_failed")) >= expected,
        timeout=45,
        what=f"{expected} groups combined or refused",
    )
    written = flatd.named("master_written")
    status = flatd.status()
    assert flatd.proc.poll() is None

    # every group reached the index as its own group, whatever its value
    assert status["index"]["flats"] == 3 * expected and status["index"]["rejected"] == 0
    assert len(status["groups"]) == expected

    # masters: only inside the output directory, safe names, one per written group
    output = flatd.masters.resolve()
    safe = re.compile(r"flat_[A-Za-z0-9.-]+(_[A-Za-z0-9.-]+)*\.fits")
    for event in written:
        path = Path(event["path"])
        assert path.resolve().parent == output
        assert safe.fullmatch(path.name), path.name
    paths = [e["path"] for e in written]
    assert len(set(paths)) == len(paths), "two groups wrote the same master"
    for master in masters_in(flatd.masters):
        prefixes = {row["FILE"].rsplit("_", 1)[0] for row in read_master_inputs(master)}
        assert len(prefixes) == 1, f"{master.name} mixes groups {prefixes}"
    latest = sorted(p.name for p in (flatd.masters / "latest").iterdir())
    assert len(latest) == len(set(latest)) == len(written)
    for p in (flatd.masters / "latest").iterdir():
        assert safe.fullmatch(p.name)

    # nothing was written anywhere else
    directories = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_dir()}
    assert directories == {Path("incoming"), Path("masters"), Path("masters/latest")}
    outside = [p for p in tmp_path.iterdir() if p.name not in ("incoming", "masters")]
    assert all(
        p.is_file()
        and (p.suffix in (".json", ".toml", ".html") or is_temporary(p) or is_lock_file(p))
        for p in outside
    ), outside  # the status file (and page), maybe mid-write
    assert not Path("/abs/path").exists() and not Path("/etc/x").exists()
    assert not (tmp_path.parent / "etc").exists()

    # g' and gp make the same file name by the spec's rule (' -> p): the second group
    # must be refused with a reason, not overwrite the first
    refused = flatd.named("combine_failed")
    assert len(written) + len(refused) == expected
    assert len(refused) <= 1
    for event in refused:
        assert "already" in event["reason"] and "gp" in event["reason"]
    assert flatd.stop() == 0


def test_input_cards_astropy_refuses_to_write_still_make_a_master(daemon, tmp_path):
    """Issue 10: IRAF's `RA = 15:58:11.37` (and the other cards of tests/test_master_header)
    in the inputs made every write of the master fail, retried every 30 s forever."""
    flatd = daemon(quiet=0.5, min_frames=3).start()
    seq = flat_sequence(3, seed=43, shape=(32, 32), stars=False, cosmic_rays=False)
    for i, (data, header) in enumerate(zip(seq.frames, seq.headers, strict=True)):
        staging = tmp_path / f"staging_{i}.fits"
        hostile_file(staging, data, header)
        staging.rename(flatd.incoming / f"iraf_{i}.fits")
    [event] = flatd.wait_event("master_written")
    ccd = CCDData.read(event["path"])
    assert ccd.data.shape == (32, 32) and ccd.header["IMAGETYP"] == "MASTERFLAT"
    status = wait_for(
        lambda: (s := flatd.status())["groups"][0]["state"] == "done" and s, what="done"
    )
    assert status["errors"] == []
    assert not flatd.named("combine_failed") and not flatd.named("combine_retry_scheduled")
    dropped = {e["keyword"] for e in flatd.named("header_card_dropped")}  # level = "debug"
    assert {"NONASCII", "TAB", "BIGNUM", "CONTINUE"} <= dropped
    assert flatd.stop() == 0
