"""Header dialects (issue 10): every convention in tests/dialects.py is read as a flat of the
right group and date, and goes all the way to a master; dates in every form; evening and
morning twilight stay two sequences; file names of any case; scan says what it read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from structlog.testing import capture_logs

from flatd.config import Config, FramesConfig, parse_config
from flatd.frames import Frame, Skip, read_frame
from flatd.inputs.index import index_paths
from flatd.oneshot import combine_paths
from flatd.outputs.masters import group_slug
from flatd.simulation.flats import simulate_sequence
from flatd.status import render_status
from flatd.status.page import render_page
from tests.daemon import FlatdProcess
from tests.dialects import CORPUS, Dialect

ROOT = Path(__file__).resolve().parents[1]
IDS = [d.name for d in CORPUS]


def frames_config(dialect: Dialect) -> FramesConfig:
    return parse_config({"frames": dialect.frames}).frames


def flat(path: Path, config: FramesConfig | None = None) -> Frame:
    """The Frame `read_frame` makes of `path` (failing the test if it is a Skip)."""
    item = read_frame(path, config or FramesConfig())
    assert isinstance(item, Frame), item
    return item


def not_taken(path: Path, config: FramesConfig | None = None) -> Skip:
    """The Skip `read_frame` makes of `path` (failing the test if it is a Frame)."""
    item = read_frame(path, config or FramesConfig())
    assert isinstance(item, Skip), item
    return item


@pytest.mark.parametrize("dialect", CORPUS, ids=IDS)
def test_each_convention_is_read_as_a_flat_of_its_group_and_date(tmp_path, dialect):
    frame = flat(dialect.write(tmp_path / "f.fits"), frames_config(dialect))
    assert frame.type_keyword == dialect.type_keyword
    assert dict(frame.group) == dialect.group
    assert list(dict(frame.group)) == ["FILTER", "INSTRUME", "XBINNING", "YBINNING"]
    assert frame.date.isoformat() == dialect.date
    assert frame.date_from_header and frame.date_note == ""


@pytest.mark.parametrize("dialect", CORPUS, ids=IDS)
def test_each_convention_goes_all_the_way_to_a_master(tmp_path, dialect):
    seq = simulate_sequence(shape=(24, 32), n_frames=3, seed=7, stars=False, cosmic_rays=False)
    paths = [
        dialect.write(tmp_path / "in" / f"f{i}.fits", data) for i, data in enumerate(seq.frames)
    ]
    raw = {"sequence": {"min_frames": 3}, "output": {"preview": False}, "frames": dialect.frames}
    summary = combine_paths(paths, parse_config(raw), output_dir=tmp_path / "out")

    [result] = summary.results
    assert result.outcome == "done", result.reason
    assert result.record is not None
    start = datetime.fromisoformat(dialect.date)
    name = f"flat_{group_slug(dialect.group)}_{start:%Y%m%dT%H%M%S}.fits"
    assert result.record.path == tmp_path / "out" / name
    with fits.open(result.record.path) as master:
        assert master[0].header["NCOMBINE"] == 3
        assert master[0].data.shape == (24, 32)


# -- frame types -----------------------------------------------------------------------------
FLATS = [
    "FLAT",
    "Flat",
    "flat field",
    "Flat Frame",
    "SKYFLAT",
    "DOMEFLAT",
    "TWIFLAT",
    "LAMPFLAT",
    "FLAT,SKY",
    "FLAT,LAMP",
    "LAMP,FLAT",
    "dome flat",
    "Twilight Flat",
]
NOT_FLATS = [
    "DARKFLAT",
    "Dark Flat",
    "FlatDark",
    "Master Flat",
    "MASTERFLAT",
    "SUPERFLAT",
    "Bias Frame",
    "ZERO",
    "Dark",
    "Light Frame",
    "LIGHT",
    "OBJECT",
    "EXPOSE",
    "normalized flat",
    "combined flat",
]


@pytest.mark.parametrize(
    ("value", "is_flat"), [(v, True) for v in FLATS] + [(v, False) for v in NOT_FLATS]
)
def test_the_flat_rule(tmp_path, value, is_flat):
    path = CORPUS[0].write(tmp_path / "f.fits", IMAGETYP=value)
    if is_flat:
        assert flat(path).imagetyp == value
    else:
        skip = not_taken(path)
        assert skip.kind == "skipped" and skip.reason == f"IMAGETYP = '{value}' is not a flat"


def test_an_explicit_list_of_flat_types_replaces_the_rule(tmp_path):
    config = FramesConfig(flat_types=("Dome Flat",))
    dome, sky = (
        CORPUS[0].write(tmp_path / "d.fits", IMAGETYP="dome  FLAT"),
        CORPUS[0].write(tmp_path / "s.fits", IMAGETYP="SKYFLAT"),
    )
    assert flat(dome, config).imagetyp == "dome  FLAT"
    assert not_taken(sky, config).reason == "IMAGETYP = 'SKYFLAT' is not a flat"


def test_the_first_type_keyword_present_decides(tmp_path):
    # a frame whose IMAGETYP says OBJECT is not a flat, whatever OBSTYPE says
    path = CORPUS[0].write(tmp_path / "f.fits", IMAGETYP="OBJECT", OBSTYPE="FLAT")
    assert not_taken(path).reason == "IMAGETYP = 'OBJECT' is not a flat"
    blank = CORPUS[0].write(tmp_path / "b.fits", IMAGETYP="  ", OBSTYPE="FLAT")
    assert flat(blank).type_keyword == "OBSTYPE"


def test_untyped_frames_are_skipped_unless_said_to_be_flats(tmp_path):
    sharpcap = next(d for d in CORPUS if d.name == "SharpCap")
    path = sharpcap.write(tmp_path / "f.fits")
    assert not_taken(path).reason.startswith("no frame type keyword (looked for")


# -- roles -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wheels", "value"),
    [
        ({"FILTER1": "open1-6", "FILTER2": "g_G0301"}, "g_G0301"),
        ({"FILTER1": "r", "FILTER2": "Clear"}, "r"),
        ({"FILTER1": "Ha", "FILTER2": "ND1"}, "Ha+ND1"),
        ({"FILTER1": "open", "FILTER2": "Open2"}, "open"),
        ({"FILTER2": "i"}, "i"),
    ],
)
def test_two_filter_wheels_make_one_value(tmp_path, wheels, value):
    path = CORPUS[0].write(tmp_path / "f.fits", FILTER=None, **wheels)
    frame = flat(path)
    assert dict(frame.group)["FILTER"] == value
    assert dict(frame.sources)["FILTER"] == "FILTER1+FILTER2"


@pytest.mark.parametrize(
    "cards",
    [
        {"XBINNING": 2, "YBINNING": 2},
        {"XBINNING": "2", "YBINNING": " 2 "},
        {"XBINNING": 2.0, "YBINNING": 2},
        {"XBINNING": None, "YBINNING": None, "CCDSUM": "2 2"},
        {"XBINNING": None, "YBINNING": None, "BINX": 2, "BINY": 2},
        {"XBINNING": None, "YBINNING": None, "BIN-FCT1": 2, "BIN-FCT2": 2},
        {"XBINNING": None, "YBINNING": None, "BINNING": "2x2"},
        {
            "XBINNING": None,
            "YBINNING": None,
            "HIERARCH ESO DET WIN1 BINX": 2,
            "HIERARCH ESO DET WIN1 BINY": 2,
        },
    ],
)
def test_binnings_written_every_way_are_one_group(tmp_path, cards):
    frame = flat(CORPUS[0].write(tmp_path / "f.fits", **cards))
    assert (dict(frame.group)["XBINNING"], dict(frame.group)["YBINNING"]) == (2, 2)
    assert frame.binning == (2, 2)


def test_the_users_key_with_alternatives_and_a_required_key(tmp_path):
    config = parse_config(
        {
            "frames": {
                "group_by": ["FILTER", "READMODE"],
                "keywords": {"READMODE": ["READMODE", "READOUTM"]},
                "required": ["READMODE"],
            }
        }
    ).frames
    nina = CORPUS[0].write(tmp_path / "n.fits")
    frame = flat(nina, config)
    assert frame.group == (("FILTER", "Ha"), ("READMODE", "Normal"))
    assert dict(frame.sources)["READMODE"] == "READOUTM"
    skip = not_taken(CORPUS[0].write(tmp_path / "x.fits", READOUTM=None), config)
    assert skip.kind == "rejected"
    assert skip.reason == "flat without READMODE (looked for READMODE, READOUTM): frames.required"


def test_a_hierarch_card_is_found_among_many(tmp_path):
    """The block reader finds HIERARCH cards by their full name among hundreds of others
    (an ESO header), however the words and the `=` are spaced."""
    eso = next(d for d in CORPUS if d.name == "ESO")
    path = eso.write(tmp_path / "f.fits", **{f"HIERARCH ESO TEL X{i}": i for i in range(300)})
    raw = path.read_bytes().replace(b"HIERARCH ESO DPR TYPE = ", b"HIERARCH ESO  DPR TYPE= ")
    path.write_bytes(raw)
    assert flat(path).imagetyp == "FLAT,SKY"


# -- dates -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cards", "expected", "source"),
    [
        ({"DATE-OBS": "2019-03-26T05:12:07"}, "2019-03-26T05:12:07", "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T05:12:07.1"}, "2019-03-26T05:12:07.100000", "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T05:12:07.123456789"}, "2019-03-26T05:12:07.123456", "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T05:12:07Z"}, "2019-03-26T05:12:07", "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T07:12:07+02:00"}, "2019-03-26T05:12:07", "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T05:12:07."}, "2019-03-26T05:12:07", "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T23:59:60.5"}, "2019-03-27T00:00:00.500000", "DATE-OBS"),
        (
            {"DATE-OBS": "2019-03-26", "TIME-OBS": "05:12:07.5"},
            "2019-03-26T05:12:07.500000",
            "DATE-OBS+TIME-OBS",
        ),
        ({"DATE-OBS": "2019-03-26", "UT": "05:12:07"}, "2019-03-26T05:12:07", "DATE-OBS+UT"),
        (
            {"DATE-OBS": "2019-03-26", "UTC-OBS": "05:12:07"},
            "2019-03-26T05:12:07",
            "DATE-OBS+UTC-OBS",
        ),
        (
            {"DATE-OBS": "2019-03-26", "UTCSTART": "05:12:07"},
            "2019-03-26T05:12:07",
            "DATE-OBS+UTCSTART",
        ),
        ({"DATE-OBS": "2019-03-26", "UTC": "05:12:07"}, "2019-03-26T05:12:07", "DATE-OBS+UTC"),
        ({"DATE-OBS": "08/05/10", "UT": "03:04:05"}, "1910-05-08T03:04:05", "DATE-OBS+UT"),
        ({"DATE-OBS": None, "MJD-OBS": 58568.5}, "2019-03-26T12:00:00", "MJD-OBS"),
        ({"DATE-OBS": "2019-03-26", "MJD-OBS": 58568.5}, "2019-03-26T12:00:00", "MJD-OBS"),
    ],
)
def test_dates_in_every_form(tmp_path, cards, expected, source):
    frame = flat(CORPUS[0].write(tmp_path / "f.fits", **cards))
    assert frame.date == datetime.fromisoformat(expected).replace(tzinfo=UTC)
    assert (frame.date_source, frame.date_note) == (source, "")


@pytest.mark.parametrize(
    ("cards", "note"),
    [
        (
            {"DATE-OBS": "2019-03-26"},
            "DATE-OBS = '2019-03-26' has no time of day and no readable TIME-OBS / UT / UTC-OBS "
            "/ UTCSTART / UTC",
        ),
        ({"DATE-OBS": "2019-02-30T05:00:00"}, "DATE-OBS = '2019-02-30T05:00:00' is not a date"),
        ({"DATE-OBS": "26.3.2019"}, "DATE-OBS = '26.3.2019' is not a date"),
        (
            {"DATE-OBS": "2019-03-26", "UT": "25:00:00"},
            "DATE-OBS = '2019-03-26' has no time of day and no readable TIME-OBS / UT / UTC-OBS "
            "/ UTCSTART / UTC",
        ),
    ],
)
def test_a_date_that_cannot_be_used_is_a_warning_and_the_file_time_is_used(tmp_path, cards, note):
    path = CORPUS[0].write(tmp_path / "f.fits", **cards)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    with capture_logs() as events:
        frame = flat(path)
    assert frame.date == datetime.fromtimestamp(1_700_000_000, UTC)
    assert (frame.date_from_header, frame.date_source, frame.date_note) == (False, "", note)
    [event] = [e for e in events if e["event"] == "date_unreadable"]
    assert event["log_level"] == "warning" and event["card"] == "DATE-OBS"
    assert event["path"] == str(path) and event["used"] == "file time"


def test_a_frame_without_any_date_uses_its_file_time_quietly_but_says_so(tmp_path):
    path = CORPUS[0].write(tmp_path / "f.fits", **{"DATE-OBS": None, "DATE-LOC": None})
    with capture_logs() as events:
        frame = flat(path)
    assert not [e for e in events if e["event"] == "date_unreadable"]
    assert frame.date_note == "no date keyword (looked for DATE-OBS, DATE-BEG, MJD-OBS)"


EVENING = datetime(2019, 3, 26, 0, 40, tzinfo=UTC)  # local evening twilight (UTC-7)
MORNING = datetime(2019, 3, 26, 12, 50, tzinfo=UTC)  # the same night's morning twilight


def twilight_cards(form: str, moment: datetime) -> dict[str, Any]:
    """One frame's date cards written in `form`."""
    day, time = f"{moment:%Y-%m-%d}", f"{moment:%H:%M:%S}"
    forms: dict[str, dict[str, Any]] = {
        "iso": {"DATE-OBS": f"{day}T{time}.250"},
        "date+UTCSTART": {"DATE-OBS": day, "UTCSTART": time},
        "date+TIME-OBS": {"DATE-OBS": day, "TIME-OBS": time},
        "DD/MM/YY+UT": {"DATE-OBS": f"{moment:%d/%m/}{moment.year % 100:02d}", "UT": time},
        "MJD-OBS": {
            "DATE-OBS": None,
            "MJD-OBS": (moment - datetime(1858, 11, 17, tzinfo=UTC)) / timedelta(days=1),
        },
        "date only": {"DATE-OBS": day},  # no time anywhere: the file times must split them
    }
    return forms[form]


@pytest.mark.parametrize(
    "form", ["iso", "date+UTCSTART", "date+TIME-OBS", "DD/MM/YY+UT", "MJD-OBS", "date only"]
)
def test_evening_and_morning_twilight_are_two_sequences(tmp_path, form):
    for n, (twilight, start) in enumerate((("evening", EVENING), ("morning", MORNING))):
        for i in range(3):
            moment = start + timedelta(minutes=2 * i)
            if form == "DD/MM/YY+UT":
                moment = moment.replace(year=1996)
            data = np.full((16, 20), 20000.0 - 1000 * (3 * n + i), np.float32)  # not copies
            path = CORPUS[0].write(
                tmp_path / f"{twilight}_{i}.fits", data, **twilight_cards(form, moment)
            )
            os.utime(path, (moment.timestamp(), moment.timestamp()))
    config = Config()
    with capture_logs():
        sequences = index_paths([tmp_path], config).sequences()
    assert [len(s.frames) for s in sequences] == [3, 3]
    assert [s.frames[0].path.name for s in sequences] == ["evening_0.fits", "morning_0.fits"]


def test_a_master_written_before_binnings_were_numbers_still_belongs_to_its_group(tmp_path):
    """Older flatd kept a PixInsight-style XBINNING = '2' as text, in the group and in the
    master's header; today the group says 2. A late frame joining that master's sequence
    after the upgrade must replace it, not be refused as another group's master."""
    pixinsight = next(d for d in CORPUS if d.name == "PixInsight")
    seq = simulate_sequence(shape=(24, 32), n_frames=4, seed=5, stars=False)
    incoming, out = tmp_path / "incoming", tmp_path / "masters"
    paths = [pixinsight.write(incoming / f"f{i}.fits", seq.frames[i]) for i in range(3)]
    raw = {"sequence": {"min_frames": 3}, "output": {"preview": False}}
    [result] = combine_paths(paths, parse_config(raw), output_dir=out).results
    assert result.record is not None
    with fits.open(result.record.path, mode="update") as master:  # as older flatd wrote it
        master[0].header["XBINNING"] = "2"
        master[0].header["YBINNING"] = "2"
    staged = pixinsight.write(tmp_path / "staging" / "f3.fits", seq.frames[3])
    os.replace(staged, incoming / staged.name)

    flatd = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
    try:
        flatd.start()
        [written] = flatd.wait_event("master_written", timeout=30)
        assert written["path"] == str(result.record.path) and written["n_frames"] == 4
        assert not flatd.named("combine_failed")
        assert flatd.stop() == 0
    finally:
        flatd.kill()


# -- names, the daemon and scan --------------------------------------------------------------
@pytest.mark.slow
def test_the_daemon_takes_capitalised_names_of_any_dialect(tmp_path):
    """The real daemon: Gemini frames (an image extension, a date-only DATE-OBS with
    TIME-OBS, two filter wheels) named in capitals by Windows capture software become a
    master named by canonical keys."""
    gemini = next(d for d in CORPUS if d.name == "Gemini")
    flatd = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
    try:
        flatd.start()
        seq = simulate_sequence(shape=(24, 32), n_frames=3, seed=3, stars=False)
        for i, data in enumerate(seq.frames):
            staged = gemini.write(tmp_path / "staging" / f"FLAT_{i:03d}.FIT", data)
            os.replace(staged, flatd.incoming / staged.name)
        [written] = flatd.wait_event("master_written", timeout=30)
        start = datetime.fromisoformat(gemini.date)
        assert Path(written["path"]).name == (
            f"flat_{group_slug(gemini.group)}_{start:%Y%m%dT%H%M%S}.fits"
        )
        assert written["group"] == gemini.group and written["n_frames"] == 3
        assert flatd.stop() == 0
    finally:
        flatd.kill()


def test_scan_reads_every_name_case_and_says_what_it_read(tmp_path):
    """`flatd scan --json` in a real process: files named in capitals from Windows capture
    software, the keyword each key came from, the group's notes, and the files not taken
    summarised by reason with the keywords looked for."""
    incoming = tmp_path / "incoming"
    lco = next(d for d in CORPUS if d.name == "LCO")
    for i, name in enumerate(["FLAT_001.FIT", "flat_002.FITS", "Flat_003.Fits"]):
        lco.write(
            incoming / name,
            **{
                "DATE-OBS": f"2019-03-26T23:4{i}:00",
                "FILTER": None,
                "FILTER1": None,
                "FILTER2": None,
                "FILTER3": None,
            },
        )
    lco.write(
        incoming / "odd_date.fits",
        **{
            "DATE-OBS": "yesterday",
            "FILTER": None,
            "FILTER1": None,
            "FILTER2": None,
            "FILTER3": None,
        },
    )
    for i in range(2):
        lco.write(incoming / f"NOTYPE_{i}.FTS", OBSTYPE=None)
    lco.write(incoming / "bias.fits", OBSTYPE="BIAS")
    (tmp_path / "flatd.toml").write_text("[output]\npreview = false\n")
    done = subprocess.run(
        [sys.executable, "-m", "flatd", "scan", "--json", "--config", "flatd.toml", "incoming"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["index"] == {"frames": 7, "flats": 4, "skipped": 3, "rejected": 0}
    [group] = document["groups"]
    assert group["group"] == {
        "FILTER": "no-filter",
        "INSTRUME": "fa14",
        "XBINNING": 2,
        "YBINNING": 2,
    }
    assert group["name"] == "no-filter_fa14_2_2"
    assert group["keywords"] == {
        "type": "OBSTYPE",
        "FILTER": "",
        "INSTRUME": "INSTRUME",
        "XBINNING": "CCDSUM",
        "YBINNING": "CCDSUM",
    }
    looked = "FILTER, FILTNAME, FILTERS, FILTER1+FILTER2, HIERARCH ESO INS FILT1 NAME, FILTER01"
    assert group["notes"][0] == f"no filter keyword: looked for {looked}"
    assert group["notes"][1] == (
        "1 of 4 frames: DATE-OBS = 'yesterday' is not a date; file time used (odd_date.fits)"
    )
    # the file dated "now" is far from the others: the group says why it was cut in two
    assert len(group["sequences"]) == 2
    assert group["notes"][2] == (
        "split into 2 sequences while 1 of 4 frames are dated by their file time, which may "
        "not be when they were taken"
    )
    names = sorted(Path(f["path"]).name for s in group["sequences"] for f in s["frames"])
    assert names == ["FLAT_001.FIT", "Flat_003.Fits", "flat_002.FITS", "odd_date.fits"]
    not_taken = {(n["kind"], n["reason"]): n["count"] for n in document["not_taken"]}
    types = "IMAGETYP, OBSTYPE, FRAME, HIERARCH ESO DPR TYPE, DATA-TYP"
    assert not_taken == {
        ("skipped", f"no frame type keyword (looked for {types})"): 2,
        ("skipped", "OBSTYPE = 'BIAS' is not a flat"): 1,
    }
    assert '"event": "date_unreadable"' in done.stderr and "odd_date.fits" in done.stderr


def test_flatd_status_and_the_page_show_a_groups_notes(tmp_path):
    note = "no filter keyword: looked for FILTER, FILTNAME"
    now = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    document = {
        "schema": 1,
        "daemon": {"state": "running", "updated_at": "2026-11-23T17:59:59Z"},
        "groups": [
            {
                "group": {"FILTER": "no-filter", "INSTRUME": "X", "XBINNING": 1, "YBINNING": 1},
                "name": "no-filter_X_1_1",
                "frames": 3,
                "state": "done",
                "notes": [note],
            }
        ],
    }
    assert f"\n    note: {note}\n" in render_status(document, color=False, now=now)
    assert f"<dt>note</dt><dd>{note}</dd>" in render_page(document, tmp_path, tmp_path, now=now)
