"""A mosaic's master through the whole pipeline (`flatd combine`, `flatd scan`, the
daemon): its layout, what CCDData and ccdproc make of it, its accuracy against the
simulator's truth, its QA extension by extension against the previous master, its
pictures and page, and a restart that recognises its inputs."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from flatd.cli import main
from flatd.config import Config
from flatd.frames import Frame, read_frame
from flatd.inputs.fingerprint import content_digest
from flatd.oneshot import combine_paths
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.latest import Curator
from flatd.outputs.masters import read_master_file, read_master_inputs
from flatd.outputs.remake import remake_now
from flatd.outputs.settings import differences
from flatd.simulation.mosaic import SimulatedMosaic, simulate_mosaic, write_mosaic_sequence
from flatd.status.page import render_page
from tests.daemon import FlatdProcess, wait_for

ccdproc = pytest.importorskip("ccdproc")
CONFIG = replace(Config(), sequence=replace(Config().sequence, min_frames=3))
NAMES = ["AMP1", "AMP2", "AMP3", "AMP4"]


def combine_into(output: Path, paths: list[Path], config: Config = CONFIG) -> Path:
    summary = combine_paths(paths, config, output_dir=output)
    assert not summary.failed, summary.render()
    (written,) = summary.written
    assert written.record is not None
    return written.record.path


def poisson_limit(levels: list[float]) -> float:
    return float(np.sqrt(sum(1 / level for level in levels)) / len(levels))


@pytest.fixture(scope="module")
def sequence() -> SimulatedMosaic:
    return simulate_mosaic((80, 96), 4, 7, seed=11)


@pytest.mark.parametrize("compress", ["none", "tile"])
def test_the_master_keeps_the_inputs_layout_and_ccddata_reads_each_extension(
    tmp_path: Path, sequence: SimulatedMosaic, compress: str
) -> None:
    paths = write_mosaic_sequence(sequence, tmp_path / "in", compress=compress)
    master = combine_into(tmp_path / "out", paths)
    with fits.open(master) as hdul:
        assert hdul[0].data is None and hdul[0].header["NCOMBINE"] == 7
        assert hdul[0].header["FILTER"] == "r" and "GAIN" not in hdul[0].header
        assert [h.name for h in hdul[1:]] == [
            *(f"{name}{suffix}" for name in NAMES for suffix in ("", "_UNCERT", "_MASK")),
            "INPUTS",
        ]
        amp2 = hdul["AMP2"].header
        assert amp2["DETSEC"] == sequence.camera.amplifiers[1].detsec  # the input's own cards
        assert amp2["GAIN"] == sequence.gains[1] and amp2["BUNIT"] == ""
        assert "QANOISE" in amp2 and "QANOISE" in hdul[0].header
    assert [row["FILE"] for row in read_master_inputs(master)] == [p.name for p in paths]
    limit = poisson_limit(sequence.levels)
    levels = []
    for name, truth in zip(NAMES, sequence.truth, strict=True):
        flat = CCDData.read(
            master, hdu=name, hdu_uncertainty=f"{name}_UNCERT", hdu_mask=f"{name}_MASK"
        )
        assert flat.unit.is_equivalent("") and flat.mask is not None and not flat.mask.any()
        assert flat.uncertainty.uncertainty_type == "std"
        error = np.asarray(flat.data, np.float64) / truth
        assert np.std(error / np.median(error) - 1) < 1.10 * limit  # at its Poisson limit
        levels.append(np.median(error))
    assert np.ptp(levels) / np.mean(levels) < 0.005  # the amplifiers' ratios kept


def test_flat_correct_extension_by_extension_evens_out_the_amplifiers(
    tmp_path: Path, sequence: SimulatedMosaic
) -> None:
    """The docs' recipe: each science extension divided by the master's of the same name
    with `norm_value=1` (the master is normalised over the whole mosaic already); a
    uniform sky then comes out uniform across the amplifiers. flat_correct's default,
    each extension divided by its own mean, would leave the gain steps in."""
    master = combine_into(tmp_path / "out", write_mosaic_sequence(sequence, tmp_path / "in"))
    science = [CCDData(20000 * t, unit="adu") for t in sequence.truth]  # sky through the flat
    corrected, by_mean = [], []
    for name, frame in zip(NAMES, science, strict=True):
        flat = CCDData.read(master, hdu=name, hdu_mask=f"{name}_MASK")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            corrected.append(np.asarray(ccdproc.flat_correct(frame, flat, norm_value=1).data))
            by_mean.append(np.median(ccdproc.flat_correct(frame, flat).data))
    medians = [np.median(c) for c in corrected]
    assert np.ptp(medians) / np.mean(medians) < 0.005
    assert max(np.std(c) / np.median(c) for c in corrected) < 0.01
    assert np.ptp(by_mean) / np.mean(by_mean) > 0.05


def test_per_extension_normalisation_writes_each_at_median_one(
    tmp_path: Path, sequence: SimulatedMosaic
) -> None:
    config = replace(CONFIG, combine=replace(CONFIG.combine, normalise="extension"))
    master = combine_into(
        tmp_path / "out", write_mosaic_sequence(sequence, tmp_path / "in"), config
    )
    with fits.open(master) as hdul:
        assert hdul[0].header["CMBNMODE"] == "extension"
        for name in NAMES:
            assert np.median(hdul[name].data) == pytest.approx(1.0, abs=1e-5)
            assert hdul[name].header["CMBNORM"] == pytest.approx(1.0, abs=0.2)
        scales = hdul["INPUTS"].data["EXTSCALE"]
        assert scales.shape == (7, 4)
        first = fits.getdata(tmp_path / "in" / "flat_r_000.fits", "AMP3")
        assert scales[0][2] == pytest.approx(1 / np.median(first), rel=1e-6)


def test_a_changed_amplifier_is_flagged_by_name_against_the_previous_master(
    tmp_path: Path,
) -> None:
    """The next night's flats, with a dust donut new in one amplifier: QA compares each
    extension with the previous master's of the same name and flags that one; the
    ratio picture shows the mosaic; the page lists every extension's QA."""
    first = simulate_mosaic((80, 96), 4, 5, seed=12)
    output = tmp_path / "out"
    combine_into(output, write_mosaic_sequence(first, tmp_path / "night1"))
    second = simulate_mosaic((80, 96), 4, 5, seed=12, start=datetime(2026, 11, 24, 17, 30))
    camera = second.camera.camera
    camera.true_flat = camera.true_flat.copy()
    region = second.camera.amplifiers[2]  # AMP3's part of the detector
    y0, x0 = region.rows.start + 30, region.columns.start + 40
    camera.true_flat[y0 : y0 + 16, x0 : x0 + 16] *= 0.9
    master = combine_into(output, write_mosaic_sequence(second, tmp_path / "night2"))
    summary = combine_paths([tmp_path / "night2"], CONFIG, output_dir=output)
    record = summary.written[0].record
    assert record is not None
    qa = record.qa
    assert qa["flagged"] and qa["reason"].startswith("AMP3: ")
    by_name = {e["name"]: e for e in qa["extensions"]}
    assert [n for n, e in by_name.items() if e["flagged"]] == ["AMP3"]
    assert by_name["AMP3"]["changed_fraction"] > 0.001 > by_name["AMP1"]["changed_fraction"]
    with fits.open(master) as hdul:
        assert hdul[0].header["QAFLAG"] is True and hdul["AMP3"].header["QAFLAG"] is True
        assert hdul["AMP1"].header["QAFLAG"] is False
    assert master.with_suffix(".png").is_file()
    assert master.with_name(master.stem + "_ratio.png").is_file()
    group = {"group": record.group, "state": "done", "latest_master": str(record.path)}
    status = {"schema": 1, "daemon": {}, "groups": [group], "masters": [record.to_dict()]}
    page = render_page(status, output, output)
    assert "QA AMP3" in page and "QA AMP4" in page


def mosaic_night(day: int, seed: int, like: SimulatedMosaic | None = None) -> SimulatedMosaic:
    """A night's mosaic flats (noise from `seed`); `like` another night's camera (its
    flat and gains) with a dust donut new in AMP3 (10 % deep)."""
    night = simulate_mosaic((80, 96), 4, 5, seed=seed, start=datetime(2026, 11, day, 17, 30))
    if like is not None:
        camera = night.camera.camera
        night.camera.amplifiers = like.camera.amplifiers
        camera.true_flat = like.camera.camera.true_flat.copy()
        region = night.camera.amplifiers[2]  # AMP3's part of the detector
        y0, x0 = region.rows.start + 30, region.columns.start + 40
        camera.true_flat[y0 : y0 + 16, x0 : x0 + 16] *= 0.9
    return night


def test_a_mosaic_change_held_back_is_confirmed_by_the_next_sequence_as_a_whole(
    tmp_path: Path,
) -> None:
    """A change in one amplifier holds the mosaic's master back; the next night's master,
    like the held-back one in every extension and unlike the one in use in AMP3, confirms
    it: the verdict is the mosaic's (primary header, latest/), each extension keeping its
    own comparisons."""
    output = tmp_path / "out"
    first = mosaic_night(22, 1)
    nights = [first, mosaic_night(23, 2, like=first), mosaic_night(24, 3, like=first)]
    paths = [
        combine_into(output, write_mosaic_sequence(night, tmp_path / f"night{i}"))
        for i, night in enumerate(nights)
    ]
    latest = output / "latest" / "flat_r_SIMCAM_1_1.fits"
    with fits.open(paths[1]) as hdul:
        assert hdul[0].header["QAFLAG"] is True and hdul[0].header["QACONFIR"] is False
    with fits.open(paths[2]) as hdul:
        primary = hdul[0].header
        assert primary["QACONFIR"] is True and primary["QAFLAG"] is False
        assert primary["QAPREV"] == paths[1].name and primary["QAREF"] == paths[0].name
        assert hdul["AMP3"].header["QAREFRMS"] > 0 and hdul["AMP3"].header["QAFLAG"] is False
    assert latest.samefile(paths[2])
    master = read_master_file(paths[2], ["FILTER"])
    assert master.confirmed and not master.flagged
    by_name = {e["name"]: e for e in master.qa["extensions"]}
    assert list(by_name) == NAMES and by_name["AMP3"]["reference"] == paths[0].name
    assert by_name["AMP3"]["changed_fraction"] < 0.001  # like the held-back one


def test_a_mosaic_master_is_read_back_as_any_master(
    tmp_path: Path, sequence: SimulatedMosaic
) -> None:
    """`read_master_file` (restart, catalogue, latest/, remake) on a mosaic's master: its
    group and frames by content, a duplicate's row, the QA summary with each extension's,
    the settings it was made with (the normalisation included)."""
    paths = write_mosaic_sequence(sequence, tmp_path / "in", compress="tile")
    copy = tmp_path / "in" / "copies" / paths[0].name
    copy.parent.mkdir()
    copy.write_bytes(paths[0].read_bytes())
    path = combine_into(tmp_path / "out", [tmp_path / "in"])
    master = read_master_file(path, ["FILTER", "INSTRUME"])
    assert master.group == (("FILTER", "r"), ("INSTRUME", "SIMCAM"))
    assert master.n_frames == 7 and len(master.rows) == 8
    [duplicate] = [row for row in master.rows if row.is_duplicate]
    assert duplicate.path == str(copy) and duplicate.duplicate_of == str(paths[0])
    frame = read_frame(paths[3], CONFIG.frames)
    assert isinstance(frame, Frame) and frame.extensions
    assert master.claims(replace(frame, content=content_digest(paths[3])[0]))
    assert all(len(row.content) == 32 for row in master.rows)
    assert [e["name"] for e in master.qa["extensions"]] == NAMES
    assert master.qa["masked_pixels"] == sum(e["masked_pixels"] for e in master.qa["extensions"])
    assert master.settings["CMBNMODE"] == "mosaic" and "QAMAXCHG" in master.settings
    other = replace(CONFIG, combine=replace(CONFIG.combine, normalise="extension"))
    assert differences(master.settings, other) == ["combine.normalise = mosaic (now extension)"]
    [remade] = remake_now("all", other, Curator(Catalogue(path.parent), other))  # flatd remake
    assert remade["outcome"] == "done" and remade["written"] == str(path)
    again = read_master_file(path, ["FILTER"])
    assert again.settings["CMBNMODE"] == "extension" and again.identities == master.identities


def test_scan_shows_the_layout(tmp_path: Path, sequence: SimulatedMosaic, capsys) -> None:
    write_mosaic_sequence(sequence, tmp_path, compress="tile")
    assert main(["scan", str(tmp_path)]) == 0
    assert "    layout: 4 extensions AMP1, AMP2, AMP3, AMP4 of 96x80" in capsys.readouterr().out
    assert main(["scan", "--json", str(tmp_path)]) == 0
    frames = json.loads(capsys.readouterr().out)["groups"][0]["sequences"][0]["frames"]
    layout = frames[0]["layout"]
    assert [p["name"] for p in layout] == NAMES
    assert layout[3] == {
        "name": "AMP4",
        "hdu": 4,
        "shape": [80, 96],
        "bitpix": -32,
        "compression": "tile",
        "detsec": "[192:97,160:81]",
    }


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_restart_recognises_a_mosaic_masters_inputs(tmp_path: Path) -> None:
    sequence = simulate_mosaic((48, 64), 4, 4, seed=13)
    daemons = []
    try:
        first = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
        daemons.append(first.start())
        write_mosaic_sequence(sequence, first.incoming, compress="tile")
        (written,) = first.wait_event("master_written", timeout=60)
        assert len(written["qa"]["extensions"]) == 4
        assert first.stop() == 0
        mtime = Path(written["path"]).stat().st_mtime_ns

        second = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
        daemons.append(second.start())
        status = wait_for(
            lambda: (s := second.status())["groups"] and s["groups"][0]["state"] == "done" and s,
            what="the group done",
        )
        assert status["groups"][0]["latest_master"] == written["path"]
        assert second.named("combine_started") == [] and second.named("master_written") == []
        assert Path(written["path"]).stat().st_mtime_ns == mtime
        assert second.stop() == 0
    finally:
        for process in daemons:
            process.kill()
