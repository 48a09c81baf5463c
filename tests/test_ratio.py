"""Pictures of what changed (issue 14, item 9): beside a master that has a previous one,
the PNG of their ratio, from the block map QA measured, measured here against the
simulator's truth (a new dust donut of known depth and place)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from structlog.testing import capture_logs

from flatd.pictures import preview
from flatd.pictures.preview import ratio_path, write_ratio_picture
from flatd.quality import qa
from tests.sequences import (
    donut,
    two_masters,
)

mpimg = pytest.importorskip("matplotlib.image")

SHAPE = (256, 256)


def block_means(values: np.ndarray) -> np.ndarray:
    ny, nx = (s // qa.BLOCK * qa.BLOCK for s in values.shape)
    blocks = values[:ny, :nx].reshape(ny // qa.BLOCK, qa.BLOCK, nx // qa.BLOCK, qa.BLOCK)
    return blocks.mean(axis=(1, 3))


def test_a_new_dust_donut_is_what_the_ratio_picture_shows(tmp_path: Path) -> None:
    one, two, config = two_masters(tmp_path, donut(SHAPE))
    assert one.outcome == two.outcome == "done"
    assert not ratio_path(one.record.path).exists()  # nothing to compare the first with
    picture = ratio_path(two.record.path)
    assert picture.name == "flat_r_SIMCAM_1_1_20261124T173000_ratio.png"
    image = mpimg.imread(picture)[..., :3]
    assert image.std() > 0.05 and (np.abs(image[..., 0] - image[..., 2]) > 0.3).any()

    # what the picture is drawn from: the ratio in 8x8 blocks, against the truth
    new = fits.getdata(two.record.path)
    mask = fits.getdata(two.record.path, "MASK").astype(bool)
    comparison = qa.compare(new, mask, one.record.path, config.qa.max_change)
    assert comparison.blocks.shape == (SHAPE[0] // qa.BLOCK, SHAPE[1] // qa.BLOCK)
    assert round(comparison.change_rms, 6) == two.record.qa["change_rms"]
    truth = block_means(donut(SHAPE))
    truth = truth / np.median(truth) - 1
    drawn, hidden = preview.ratio_image(comparison.blocks, comparison.blocks_masked)
    assert not hidden.any()
    error = drawn - 1 - truth
    assert np.abs(error).max() < 0.01  # block noise of two 8-frame masters: ~0.1 %
    assert (drawn[truth < -0.02] < 0.98).all() and (np.abs(drawn[truth == 0] - 1) < 0.01).all()
    # the symmetric stretch reaches the donut's depth, not far beyond it
    half = preview.ratio_half_width(drawn)
    assert 0.02 < half <= 0.08


def test_an_unchanged_flat_draws_a_quiet_ratio(tmp_path: Path) -> None:
    _, two, config = two_masters(tmp_path, None)
    new = fits.getdata(two.record.path)
    mask = fits.getdata(two.record.path, "MASK").astype(bool)
    previous = Path(two.record.qa["previous"])
    comparison = qa.compare(new, mask, previous, config.qa.max_change)
    drawn, _ = preview.ratio_image(comparison.blocks, comparison.blocks_masked)
    assert np.abs(drawn - 1).max() < 0.01
    assert ratio_path(two.record.path).is_file()


def test_masked_blocks_are_drawn_apart(tmp_path: Path) -> None:
    blocks = np.random.default_rng(3).normal(0, 0.002, (64, 64)).astype(np.float32)
    masked = np.zeros_like(blocks, bool)

    def magenta(name: str) -> int:
        rgb = mpimg.imread(write_ratio_picture(tmp_path / f"{name}.fits", blocks, masked, name))
        rgb = rgb[..., :3]
        return int(np.sum((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] > 0.9)))

    assert magenta("clean") == 0
    masked[10:20, :] = True  # a dead band in the new master
    blocks[10:20, :] = -0.9  # whatever its ratio, it is drawn apart and left out of the stretch
    assert magenta("masked") > 500
    drawn, hidden = preview.ratio_image(blocks, masked)
    assert preview.ratio_half_width(drawn[~hidden]) < 0.01


def test_a_large_block_map_is_binned_for_drawing() -> None:
    drawn, hidden = preview.ratio_image(np.zeros((3000, 40)), np.zeros((3000, 40), bool))
    assert max(drawn.shape) <= preview.PREVIEW_MAX_PIXELS and drawn.shape == hidden.shape


def test_a_ratio_picture_that_cannot_be_written_never_costs_the_master(tmp_path: Path) -> None:
    # a directory where the picture should go: the write fails for real
    blocked = tmp_path / "masters" / "flat_r_SIMCAM_1_1_20261124T173000_ratio.png"
    blocked.mkdir(parents=True)
    with capture_logs() as events:
        _, two, _ = two_masters(tmp_path, donut(SHAPE))
    assert two.outcome == "done" and two.record.path.is_file()
    assert two.record.path.with_suffix(".png").is_file()  # the preview still drawn
    [failed] = [e for e in events if e["event"] == "ratio_picture_failed"]
    assert failed["path"] == str(two.record.path)


def test_no_picture_without_previews(tmp_path: Path) -> None:
    _, two, _ = two_masters(tmp_path, donut(SHAPE), preview_on=False)
    assert two.record.qa["previous"] and not ratio_path(two.record.path).exists()
