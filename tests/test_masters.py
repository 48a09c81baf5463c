"""Master files: what CCDData and ccdproc read from them, their INPUTS table and header,
their names (made from hostile header values) and their atomic publication."""

from __future__ import annotations

import os
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

from flatd import __version__
from flatd.atomic import is_temporary
from flatd.config import Config, parse_config
from flatd.inputs.index import index_paths
from flatd.outputs import masters
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.latest import Curator
from flatd.pipeline import combine_and_publish, make_master
from tests.helpers import find_masters, write_frame

ccdproc = pytest.importorskip("ccdproc")

INPUT_COLUMNS = [
    "FILE",
    "PATH",
    "SIZE",
    "MTIME_NS",
    "DATEOBS",
    "MEDIAN",
    "MEAN",
    "SCALE",
    "USED",
    "REASON",
    "CLIPFRAC",
    "CHECKSUM",
]
START = datetime(2026, 11, 23, 17, 30, tzinfo=UTC)


def make_inputs(
    directory: Path, levels: list[float], *, filter_name: str = "g'", seed: int = 0
) -> list[Path]:
    """uint16 camera frames (so BZERO = 32768 in the files) with a vignetted flat."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :60]
    flat = 1 - 0.1 * ((yy - 20) ** 2 + (xx - 30) ** 2) / 1300
    paths = []
    for i, level in enumerate(levels):
        data = np.clip(rng.poisson(level * flat), 0, 65535).astype(np.uint16)
        paths.append(
            write_frame(
                directory / f"flat_{i:02d}.fits",
                data,
                FILTER=filter_name,
                INSTRUME="LFC",
                GAIN=1.0,
                OBSERVER="someone",
                **{"DATE-OBS": f"2026-11-23T17:{30 + i:02d}:00"},
            )
        )
    return paths


def combine_directory(directory: Path, output: Path, config: Config | None = None):
    config = config or Config()
    sequences = index_paths([directory], config).sequences()
    assert len(sequences) == 1
    result = combine_and_publish(sequences[0], config, Curator(Catalogue(output), config))
    assert result.outcome == "done", result.reason
    return result


@pytest.fixture
def master(tmp_path: Path):
    # one frame too faint (qa.min_level = 1000): rejected, but listed in INPUTS
    paths = make_inputs(tmp_path / "in", [30000, 25000, 20000, 16000, 13000, 500])
    return combine_directory(tmp_path / "in", tmp_path / "out"), paths


def test_master_reads_as_ccddata_and_flat_corrects(master) -> None:
    result, _ = master
    path = result.record.path
    assert path.parent.name == "out" and path.name == "flat_gp_LFC_1_1_20261123T173000.fits"
    ccd = CCDData.read(path)
    assert ccd.unit == u.dimensionless_unscaled  # a ratio (BUNIT = ''), not ADU
    assert ccd.data.dtype.kind == "f" and ccd.data.dtype.itemsize == 4
    assert np.median(ccd.data) == pytest.approx(1.0, abs=1e-6)
    assert isinstance(ccd.uncertainty, StdDevUncertainty)
    assert ccd.uncertainty.array.shape == ccd.data.shape
    assert 0 < np.median(ccd.uncertainty.array) < 0.01
    assert ccd.mask is not None and ccd.mask.dtype == bool and not ccd.mask.any()
    science = CCDData(np.full((40, 60), 1000.0, np.float32), unit="adu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corrected = ccdproc.flat_correct(science, CCDData.read(path))
    expected = 1000.0 / (ccd.data / ccd.data.mean())
    np.testing.assert_allclose(corrected.data, expected, rtol=1e-5)
    assert corrected.unit == u.adu  # the science frame keeps its unit


def test_inputs_table_lists_every_frame_with_its_part(master) -> None:
    result, paths = master
    rows = masters.read_master_inputs(result.record.path)
    with fits.open(result.record.path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "UNCERT", "INPUTS"]
        assert hdul["INPUTS"].columns.names == INPUT_COLUMNS
    assert [r["FILE"] for r in rows] == [p.name for p in paths]
    assert [r["PATH"] for r in rows] == [str(p) for p in paths]
    assert [r["SIZE"] for r in rows] == [p.stat().st_size for p in paths]
    assert [r["MTIME_NS"] for r in rows] == [p.stat().st_mtime_ns for p in paths]
    assert rows[0]["DATEOBS"].startswith("2026-11-23T17:30:00")
    used, faint = rows[:5], rows[5]
    assert all(r["USED"] and r["REASON"] == "" for r in used)
    assert [r["MEDIAN"] for r in used] == pytest.approx(
        [30000, 25000, 20000, 16000, 13000], rel=0.1
    )
    for row in used:
        assert row["SCALE"] == pytest.approx(1 / row["MEDIAN"])
        assert row["MEAN"] == pytest.approx(row["MEDIAN"], rel=0.1)
        assert 0 <= row["CLIPFRAC"] < 0.05
    assert not faint["USED"]
    assert "too faint" in faint["REASON"] and "qa.min_level" in faint["REASON"]
    assert faint["SCALE"] == 0.0 and faint["CLIPFRAC"] == 0.0
    assert result.record.n_frames == 5 and result.record.n_rejected == 1


def test_header_keeps_the_input_and_adds_the_combination(master) -> None:
    result, paths = master
    with fits.open(paths[0]) as hdul:
        assert hdul[0].header["BZERO"] == 32768  # the inputs are unsigned 16-bit
    header = fits.getheader(result.record.path)
    assert header["IMAGETYP"] == "MASTERFLAT"  # see tests/test_master_header.py
    assert header["OBSERVER"] == "someone"  # the first input's own cards
    assert header["COMBINED"] is True
    assert header["NCOMBINE"] == 5
    assert header["FLATDVER"] == __version__
    written = datetime.strptime(header["DATE"], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - written).total_seconds()) < 120
    assert header["BITPIX"] == -32
    for key in ("BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM"):
        assert key not in header
    assert (header["FILTER"], header["INSTRUME"], header["XBINNING"], header["YBINNING"]) == (
        "g'",
        "LFC",
        1,
        1,
    )
    settings = Config().combine
    assert header["CMBMETH"] == settings.method
    assert header["CMBSCALE"] == settings.scale
    assert header["CMBCLIP"] is settings.sigma_clip
    assert (header["CMBSLOW"], header["CMBSHIGH"]) == (settings.sigma_low, settings.sigma_high)
    assert (header["CMBCENT"], header["CMBDEV"]) == (settings.center, settings.deviation)
    assert header["CMBMEML"] == settings.mem_limit_mb
    assert header["CMBNORM"] > 0
    assert header.count("NAXIS1") == 1


def test_settings_reach_the_header(tmp_path: Path) -> None:
    make_inputs(tmp_path / "in", [30000, 25000, 20000, 16000, 13000])
    config = parse_config({"combine": {"method": "median", "deviation": "std", "sigma_low": 3.5}})
    result = combine_directory(tmp_path / "in", tmp_path / "out", config)
    header = fits.getheader(result.record.path)
    assert (header["CMBMETH"], header["CMBDEV"], header["CMBSLOW"]) == ("median", "std", 3.5)


def _combined(directory: Path):
    from flatd import engine

    make_inputs(directory, [30000, 25000, 20000, 16000, 13000, 500])
    config = Config()
    sequence = index_paths([directory], config).sequences()[0]
    frames = list(sequence.frames)
    return (
        frames,
        engine.combine(frames, config.combine, rejected={frames[-1].path: "too faint"}),
        sequence,
    )


def test_inputs_table_is_what_from_columns_builds(tmp_path: Path) -> None:
    import io

    frames, combined, _ = _combined(tmp_path / "in")
    table = masters._inputs_table(frames, combined, [])
    ours, official = io.BytesIO(), io.BytesIO()
    table.writeto(ours)
    fits.BinTableHDU.from_columns(table.columns, name="INPUTS").writeto(official)
    assert ours.getvalue() == official.getvalue()
    assert table.columns.names == INPUT_COLUMNS


def test_big_endian_images_are_written_as_they_are(tmp_path: Path) -> None:
    frames, combined, sequence = _combined(tmp_path / "in")
    native = combined.data.astype(np.float32), combined.uncertainty.astype(np.float32)
    combined.data, combined.uncertainty = (a.astype(">f4") for a in native)
    record = masters.write_master(
        combined, frames, sequence.group, sequence.start, Config(), output_dir=tmp_path / "out"
    )
    assert combined.data.dtype.str == ">f4" and combined.uncertainty.dtype.str == ">f4"
    np.testing.assert_array_equal(combined.data, native[0])  # not left byte-swapped
    with fits.open(record.path) as hdul:
        np.testing.assert_array_equal(hdul[0].data, native[0])
        np.testing.assert_array_equal(hdul["UNCERT"].data, native[1])
        np.testing.assert_array_equal(hdul["MASK"].data, combined.mask.view(np.uint8))
    assert CCDData.read(record.path).data.shape == native[0].shape


# -- names ----------------------------------------------------------------------------------
HOSTILE = [
    "../../../etc/x",
    "/abs/path",
    "a\x00b",
    "x" * 300,
    "x" * 299 + "y",
    "é",
    "e",
    "R",
    "r",
    "g'",
    "g",
    "",
    "none",
    ".",
    "..",
    "-",
    "a b",
    "a_b",
    "a-b",
    "a/b",
    "a\\b",
    "~",
    "$HOME",
    "*",
    "flat_r",
    "\n",
    True,
    1,
    1.5,
]


def test_safe_value_spellings() -> None:
    assert masters.safe_value("g'") == "gp"
    assert masters.safe_value("Halpha-6563") == "Halpha-6563"
    assert masters.safe_value(2) == "2"
    assert masters.safe_value(True) == "T"


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_values_make_safe_names_inside_the_output(tmp_path: Path, value) -> None:
    safe = masters.safe_value(value)
    assert safe and len(safe) <= 48
    assert all(c.isascii() and (c.isalnum() or c in ".-") for c in safe)
    assert safe not in (".", "..") and not safe.startswith(".")
    output = tmp_path / "out"
    group = {"FILTER": value, "INSTRUME": value, "XBINNING": 1, "YBINNING": 1}
    for path in (masters.master_path(output, group, START), masters.latest_path(output, group)):
        assert path.resolve().parent in (output.resolve(), (output / "latest").resolve())
        assert path.name.startswith("flat_") and path.name.endswith(".fits")
        assert "/" not in path.name and "\x00" not in path.name


def test_different_values_make_different_names(tmp_path: Path) -> None:
    # (True and 1 and "T", "1" are not here: a header cannot hold both spellings of a key)
    values = [v for v in HOSTILE if not isinstance(v, bool | int | float)]
    names = [masters.safe_value(v) for v in values]
    assert len(set(names)) == len(names), dict(zip(values, names, strict=True))
    paths = {masters.master_path(tmp_path, {"FILTER": v, "INSTRUME": "X"}, START) for v in values}
    assert len(paths) == len(values)
    # the joined slug cannot be fooled by a value holding the separator
    assert masters.group_slug({"A": "a_b", "B": "c"}) != masters.group_slug({"A": "a", "B": "b_c"})


# -- publication ---------------------------------------------------------------------------
def test_promote_latest_is_identical_and_replaced_atomically(tmp_path: Path) -> None:
    output = tmp_path / "out"
    group = {"FILTER": "r", "INSTRUME": "X"}
    first, second = output / "flat_r_X_1.fits", output / "flat_r_X_2.fits"
    output.mkdir()
    first.write_bytes(b"first master" * 500)
    second.write_bytes(b"second master" * 400)
    latest = masters.promote_latest(first, group, output)
    assert latest == output / "latest" / "flat_r_X.fits"
    assert latest.read_bytes() == first.read_bytes()
    with latest.open("rb") as reader:  # a reader of the old latest keeps its whole file
        assert masters.promote_latest(second, group, output) == latest
        assert reader.read() == b"first master" * 500
    assert latest.read_bytes() == second.read_bytes()
    assert first.read_bytes() == b"first master" * 500  # the old master is untouched
    assert sorted(p.name for p in (output / "latest").iterdir()) == ["flat_r_X.fits"]


def test_promote_latest_copies_where_links_fail(tmp_path: Path, monkeypatch) -> None:
    output = tmp_path / "out"
    output.mkdir()
    source = output / "flat_r_1.fits"
    source.write_bytes(b"master")

    def no_links(*args, **kwargs):
        raise OSError("links not supported")

    monkeypatch.setattr(os, "link", no_links)
    latest = masters.promote_latest(source, {"FILTER": "r"}, output)
    assert latest.read_bytes() == b"master" and not latest.samefile(source)
    assert [p.name for p in (output / "latest").iterdir()] == ["flat_r.fits"]


def test_write_is_atomic_and_a_failed_write_keeps_the_previous_master(
    tmp_path: Path, monkeypatch
) -> None:
    make_inputs(tmp_path / "in", [30000, 25000, 20000, 16000, 13000])
    output = tmp_path / "out"
    result = combine_directory(tmp_path / "in", output)
    path = result.record.path
    before = path.read_bytes()
    assert not [p for p in output.rglob("*") if is_temporary(p)]
    listing = sorted(p.name for p in output.iterdir())  # (and a preview PNG, maybe)

    real_writeto = fits.HDUList.writeto

    def failing_writeto(self, fileobj, *args, **kwargs):
        fileobj.write(b"SIMPLE  =                    T" + b" " * 2000)  # part of a file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", failing_writeto)
    failed = make_master(
        index_paths([tmp_path / "in"], Config()).sequences()[0], Config(), output_dir=output
    )
    assert failed.outcome == "failed" and "No space left" in failed.reason
    assert path.read_bytes() == before
    assert sorted(p.name for p in output.iterdir()) == listing
    monkeypatch.setattr(fits.HDUList, "writeto", real_writeto)

    # a re-combination of the same sequence replaces the master and latest/
    again = combine_directory(tmp_path / "in", output)
    assert again.record.path == path
    assert (output / "latest" / "flat_gp_LFC_1_1.fits").read_bytes() == path.read_bytes()
    assert not [p for p in output.rglob("*") if is_temporary(p)]
    assert find_masters(output) == [path]


def test_paths_outside_ascii_reach_inputs_and_read_back_the_same(tmp_path: Path) -> None:
    """A directory named in German and a file name that is not even UTF-8 (bytes a camera
    PC may write): the master is written, and INPUTS gives back exactly the paths flatd
    indexed, so that a restart recognises its inputs."""
    directory = tmp_path / "Überwachung ä"
    paths = make_inputs(directory, [30000, 25000, 20000, 16000, 13000])
    odd = Path(os.fsdecode(os.fsencode(directory) + b"/flat_\xff.fits"))
    paths[1].rename(odd)
    result = combine_directory(directory, tmp_path / "out")
    rows = masters.read_master_inputs(result.record.path)
    expected = [paths[0], odd, *paths[2:]]
    assert sorted(row["PATH"] for row in rows) == sorted(str(p) for p in expected)
    assert {row["FILE"] for row in rows} == {p.name for p in expected}
    assert all(row["USED"] for row in rows)
