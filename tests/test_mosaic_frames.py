"""Frames of several image extensions: every image HDU recorded, named and placed, cheaply;
what is not an image plane left out; layouts unlike the sequence's rejected; raw mosaics
and unsupported layouts refused with their reason, nothing silently dropped.

The files are written here as the FITS standard (4.0, sections 3 and 7.1: a primary HDU
without data, then IMAGE extensions, EXTNAME/EXTVER naming them) and the NOAO mosaic
conventions (IRAF mscred: DETSEC, DATASEC and CCDSUM in each extension, NEXTEND in the
primary header) describe them; tile-compressed ones as astropy's CompImageHDU writes the
tiled-image convention (a BINTABLE with ZIMAGE = T per extension, the `.fits.fz` of
fpack)."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatd.config import Config
from flatd.frames import Frame, Skip, read_frame
from flatd.quality.checks import odd_frames, saturation_levels
from flatd.simulation.mosaic import simulate_mosaic, write_mosaic_sequence
from tests.helpers import FLAT_HEADER

CONFIG = Config()


def mosaic(
    path: Path,
    planes: list[np.ndarray],
    names: Sequence[str | None],
    primary: dict | None = None,
    compress: str = "none",
    **extension_cards: object,
) -> Path:
    """An empty primary HDU with the flat's cards, then one extension per plane."""
    header = fits.Header({**FLAT_HEADER, "NEXTEND": len(planes), **(primary or {})})
    hdus: list = [fits.PrimaryHDU(header=header)]
    for k, (plane, name) in enumerate(zip(planes, names, strict=True)):
        cards = fits.Header(
            {"DETSEC": f"[{k * plane.shape[1] + 1}:{(k + 1) * plane.shape[1]},1:{plane.shape[0]}]"}
        )
        cards.update(extension_cards)
        kind = fits.CompImageHDU if compress == "tile" else fits.ImageHDU
        hdus.append(kind(plane, cards, name=name) if name else kind(plane, cards))
    fits.HDUList(hdus).writeto(path)
    if compress == "gzip":
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        path = path.with_name(path.name + ".gz")
    return path


def planes(count: int, shape: tuple[int, int] = (24, 20)) -> list[np.ndarray]:
    return [np.full(shape, 20000.0 + 1000 * k, np.float32) for k in range(count)]


def frame(path: Path, config: Config = CONFIG) -> Frame:
    read = read_frame(path, config.frames, config.calibrate)
    assert isinstance(read, Frame), read
    return read


def skip(path: Path, config: Config = CONFIG) -> Skip:
    read = read_frame(path, config.frames, config.calibrate)
    assert isinstance(read, Skip), read
    return read


@pytest.mark.parametrize("compress", ["none", "gzip", "tile"])
def test_every_image_extension_is_a_plane_of_the_frame(tmp_path: Path, compress: str) -> None:
    path = mosaic(tmp_path / "m.fits", planes(4), ["AMP1", "AMP2", "AMP3", "AMP4"], None, compress)
    read = frame(path)
    assert [e.name for e in read.extensions] == ["AMP1", "AMP2", "AMP3", "AMP4"]
    assert [e.hdu for e in read.extensions] == [1, 2, 3, 4]
    assert {e.shape for e in read.extensions} == {(24, 20)}
    stored = "tile" if compress == "tile" else compress
    assert {e.compression for e in read.extensions} == {stored}
    assert read.extensions[1].detsec == "[21:40,1:24]"
    assert (read.hdu, read.shape, read.compression) == (1, (24, 20), stored)
    assert read.group == frame(mosaic(tmp_path / "one.fits", planes(1), ["AMP1"])).group
    if compress == "none":  # the recorded offsets are where astropy finds the data
        with fits.open(path) as hdul:
            for extension in read.extensions:
                assert extension.data_offset == hdul.fileinfo(extension.hdu)["datLoc"]


def test_a_single_image_frame_is_read_as_before(tmp_path: Path) -> None:
    """One image, alone or followed by its uncertainty and mask (as CCDData writes a
    calibrated frame) or by a table: no extensions, the same frame."""
    data = np.full((24, 20), 20000.0, np.float32)
    header = fits.Header(FLAT_HEADER)
    fits.PrimaryHDU(data, header).writeto(tmp_path / "alone.fits")
    fits.HDUList(
        [
            fits.PrimaryHDU(data, header),
            fits.ImageHDU(data / 100, name="UNCERT"),
            fits.ImageHDU(np.zeros((24, 20), np.uint8), name="MASK"),
            fits.BinTableHDU.from_columns([fits.Column("A", "E", array=[1.0])]),
        ]
    ).writeto(tmp_path / "ccddata.fits")
    alone, ccddata = frame(tmp_path / "alone.fits"), frame(tmp_path / "ccddata.fits")
    assert alone.extensions == ccddata.extensions == ()
    assert replace(ccddata, path=alone.path, size=alone.size, mtime_ns=0) == replace(
        alone, mtime_ns=0
    )
    assert alone.layout == (("", (24, 20)),)


def test_planes_are_named_by_extname_else_by_number(tmp_path: Path) -> None:
    unnamed = frame(mosaic(tmp_path / "a.fits", planes(3), [None, None, None]))
    assert [e.name for e in unnamed.extensions] == ["IM1", "IM2", "IM3"]
    repeated = tmp_path / "b.fits"
    hdus = [fits.PrimaryHDU(header=fits.Header(FLAT_HEADER))]
    hdus += [fits.ImageHDU(p, name="SCI", ver=k + 1) for k, p in enumerate(planes(2))]
    fits.HDUList(hdus).writeto(repeated)
    assert [e.name for e in frame(repeated).extensions] == ["SCI1", "SCI2"]
    odd = frame(mosaic(tmp_path / "c.fits", planes(2), ["CCD 1", "CCD 2"]))
    assert [e.name for e in odd.extensions] == ["IM1", "IM2"]


def test_each_extension_keeps_its_own_gain_and_saturation(tmp_path: Path) -> None:
    sequence = simulate_mosaic((16, 24), 4, 1, seed=2)
    read = frame(write_mosaic_sequence(sequence, tmp_path)[0])
    assert [e.extras["GAIN"] for e in read.extensions] == sequence.gains
    assert read.extras["GAIN"] == sequence.gains[0]  # the frame's: primary + first extension
    config = Config()
    assert saturation_levels(read, config) == (65535.0,) * 4
    set_level = replace(config, qa=replace(config.qa, saturation_level=50000.0))
    assert saturation_levels(read, set_level) == (50000.0,) * 4


def test_a_mosaic_still_being_written_is_incomplete(tmp_path: Path) -> None:
    whole = mosaic(tmp_path / "whole.fits", planes(4), ["A1", "A2", "A3", "A4"]).read_bytes()
    hdu_size = 2880 + -(-24 * 20 * 4 // 2880) * 2880
    two_of_four = tmp_path / "two.fits"
    two_of_four.write_bytes(whole[: 2880 + 2 * hdu_size])  # NEXTEND = 4 says more come
    assert skip(two_of_four).incomplete
    assert "NEXTEND = 4" in skip(two_of_four).reason
    cut = tmp_path / "cut.fits"
    cut.write_bytes(whole[: 2880 + 3 * hdu_size + 4000])  # the last extension's data
    assert skip(cut).incomplete and "truncated" in skip(cut).reason


def test_a_file_at_rest_with_a_wrong_nextend_is_read_as_it_is(tmp_path: Path) -> None:
    """One CCD split off a 4-CCD mosaic, its primary header copied (NEXTEND = 4 still):
    while it may be growing it waits; once at rest it is the one extension it holds."""
    path = mosaic(tmp_path / "one.fits", planes(1), ["CCD1"], primary={"NEXTEND": 4})
    assert skip(path).incomplete and "NEXTEND = 4, 1 extension(s)" in skip(path).reason
    at_rest = read_frame(path, CONFIG.frames, CONFIG.calibrate, settled=True)
    assert isinstance(at_rest, Frame) and at_rest.extensions == ()
    assert at_rest.shape == planes(1)[0].shape


def test_bytes_after_the_last_extension_are_ignored(tmp_path: Path) -> None:
    path = mosaic(tmp_path / "m.fits", planes(2), ["A1", "A2"])
    with path.open("ab") as out:
        out.write(b"\0" * 2880)
    assert len(frame(path).extensions) == 2


def test_an_extension_that_is_not_an_image_plane_refuses_the_frame(tmp_path: Path) -> None:
    hdus = [fits.PrimaryHDU(header=fits.Header(FLAT_HEADER))]
    hdus += [fits.ImageHDU(planes(1)[0], name="A1"), fits.ImageHDU(np.ones((2, 3, 4)), name="A2")]
    fits.HDUList(hdus).writeto(tmp_path / "cube.fits")
    refused = skip(tmp_path / "cube.fits")
    assert refused.kind == "rejected"
    assert refused.reason == "extension 2 (A2): not a 2-D image: NAXIS = 3 (4 x 3 x 2)"


@pytest.mark.parametrize("raw", ["reject", "calibrate"])
def test_a_raw_mosaic_is_refused_with_its_reason(tmp_path: Path, raw: str) -> None:
    """Overscan per amplifier (BIASSEC in each extension): calibrating a raw mosaic is
    not supported, whatever `[calibrate] raw` says."""
    config = replace(CONFIG, calibrate=replace(CONFIG.calibrate, raw=raw))
    path = mosaic(tmp_path / "raw.fits", planes(2), ["A1", "A2"], BIASSEC="[18:20,1:24]")
    refused = skip(path, config)
    assert refused.kind == "rejected"
    assert refused.reason.startswith("raw multi-extension frame (BIASSEC = '[18:20,1:24]' in A1")
    assert "single-image raw frames only" in refused.reason


def test_a_layout_unlike_the_sequences_is_rejected(tmp_path: Path) -> None:
    names = ["AMP1", "AMP2", "AMP3", "AMP4"]
    frames = [frame(mosaic(tmp_path / f"m{i}.fits", planes(4), names)) for i in range(3)]
    three = frame(mosaic(tmp_path / "three.fits", planes(3), names[:3]))
    renamed = frame(mosaic(tmp_path / "renamed.fits", planes(4), ["A", "B", "C", "D"]))
    smaller = frame(mosaic(tmp_path / "smaller.fits", planes(4, (24, 16)), names))
    single = frame(mosaic(tmp_path / "single.fits", planes(1), ["AMP1"]))
    reasons = odd_frames([*frames, three, renamed, smaller, single])
    assert set(reasons) == {three.path, renamed.path, smaller.path, single.path}
    majority = "the sequence's 4 extensions AMP1, AMP2, AMP3, AMP4 of 20x24"
    assert reasons[three.path] == (
        f"layout 3 extensions AMP1, AMP2, AMP3 of 20x24 differs from {majority}"
    )
    assert reasons[renamed.path].startswith("layout 4 extensions A, B, C, D of 20x24 differs")
    assert reasons[single.path] == f"layout one image differs from {majority}"
