"""Case 2: junk in the watched directory is named, once, and never stops the good frames."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits

from flatd.outputs.masters import read_master_inputs
from tests.daemon import flat_sequence, wait_for, write_atomically, write_frames
from tests.faults.helpers import flat_bytes, masters_in, per_path

pytestmark = pytest.mark.timeout(90)


def test_every_bad_file_is_named_once_and_the_good_frames_still_combine(daemon):
    flatd = daemon(quiet=1.0, min_frames=4).start()
    incoming = flatd.incoming
    seq = flat_sequence(5, seed=31)
    header = seq.headers[0]
    write_frames(incoming, seq, range(4))
    # a flat of the same group with a different shape
    odd = seq.headers[4].copy()
    write_atomically(incoming / "r_odd_shape.fits", np.full((80, 64), 20000, np.float32), odd)

    rejected = {  # file -> words its reason must contain
        "empty.fits": "empty",
        "random.fits": "not a FITS file",
        "truncated.fits": "truncated",
        "no_data.fits": "no image data",
        "cube.fits": "not a 2-D image",
        "table_only.fits": "table",
    }
    (incoming / "empty.fits").write_bytes(b"")
    (incoming / "random.fits").write_bytes(os.urandom(10_000))
    whole = flat_bytes(seq.frames[0], header)
    (incoming / "truncated.fits").write_bytes(whole[: len(whole) // 2])
    fits.PrimaryHDU(None, header.copy()).writeto(incoming / "no_data.fits")
    fits.PrimaryHDU(np.ones((3, 64, 64), np.float32), header.copy()).writeto(incoming / "cube.fits")
    table = fits.BinTableHDU.from_columns([fits.Column("A", "E", array=np.ones(5))])
    fits.HDUList([fits.PrimaryHDU(header=header.copy()), table]).writeto(
        incoming / "table_only.fits"
    )
    no_filter = header.copy()  # a flat all the same: grouped as having no filter, and said so
    del no_filter["FILTER"]
    write_atomically(incoming / "no_filter.fits", seq.frames[0], no_filter)

    skipped = {}
    for kind in ("Bias Frame", "Dark Frame", "Light Frame"):
        other = header.copy()
        other["IMAGETYP"] = kind
        name = f"{kind.split()[0].lower()}.fits"
        write_atomically(incoming / name, seq.frames[0], other)
        skipped[name] = kind

    flatd.wait_event("master_written", timeout=30)
    # the empty and the truncated file may still be growing: they are judged once they
    # have stood still for ingest's incomplete_seconds (15 s)
    status = wait_for(
        lambda: (
            (s := flatd.status())["index"]["frames"] == 6 + len(rejected) + len(skipped)
            and len(s["errors"]) == len(rejected)
            and s
        ),
        timeout=40,
        what="every file judged",
    )
    assert status["index"] == {"frames": 15, "flats": 6, "skipped": 3, "rejected": 6}
    assert flatd.proc.poll() is None

    errors = {os.path.basename(e["path"]): e["reason"] for e in status["errors"]}
    assert set(errors) == set(rejected)
    for name, words in rejected.items():
        assert words in errors[name], (name, errors[name])
    events = per_path(flatd, "frame_rejected", "frame_skipped")
    for name in [*rejected, *skipped]:
        assert events[name] == 1, (name, events[name])
    assert "no_filter.fits" not in events
    for name, kind in skipped.items():
        [event] = [e for e in flatd.named("frame_skipped") if e["path"].endswith(name)]
        assert kind in event["reason"]

    groups = {g["name"]: g for g in status["groups"]}
    assert groups["no-filter_SIMCAM_1_1"]["notes"][0].startswith("no filter keyword: looked for")
    # the odd-shaped flat: rejected by its group, named in the group record and the master
    group = groups["r_SIMCAM_1_1"]
    assert [os.path.basename(r["path"]) for r in group["rejected"]] == ["r_odd_shape.fits"]
    assert "shape" in group["rejected"][0]["reason"]
    assert events["r_odd_shape.fits"] == 1
    [master] = masters_in(flatd.masters)
    rows = {r["FILE"]: r for r in read_master_inputs(master)}
    assert sum(r["USED"] for r in rows.values()) == 4
    assert not rows["r_odd_shape.fits"]["USED"]
    assert flatd.stop() == 0
