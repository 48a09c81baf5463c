"""A mosaic's pictures: each extension placed where its DETSEC says on the detector
(reversed where its readout runs backwards), side by side when that cannot be told, and
the preview drawn from one extension at a time with masked pixels in magenta."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flatd.pictures.placement import Placement, placements, side_by_side
from flatd.pictures.preview import MASKED_COLOUR, mosaic_tiles, write_mosaic_preview
from flatd.simulation.mosaic import simulate_mosaic

mpimg = pytest.importorskip("matplotlib.image")


def paste(planes: list[np.ndarray], placed: list[Placement], shape: tuple[int, int]) -> np.ndarray:
    """Each plane into a detector image as `imshow(extent=...)` draws it with origin
    "lower": pixel (0, 0) at (left, bottom), reversed where left > right or bottom > top."""
    detector = np.full(shape, np.nan)
    for plane, place in zip(planes, placed, strict=True):
        x0, y0 = int(min(place.left, place.right) + 0.5), int(min(place.bottom, place.top) + 0.5)
        drawn = plane[
            :: -1 if place.bottom > place.top else 1, :: -1 if place.left > place.right else 1
        ]
        detector[y0 - 1 : y0 - 1 + plane.shape[0], x0 - 1 : x0 - 1 + plane.shape[1]] = drawn
    return detector


def test_detsec_puts_every_amplifier_back_where_it_was_read_from() -> None:
    """The simulated camera's amplifiers (two of the four read out reversed in x, two in
    y): placed by their DETSEC, their truths make the detector's true flat again."""
    sequence = simulate_mosaic((30, 40), 4, 1, seed=1)
    camera = sequence.camera
    amplifiers = camera.amplifiers
    placed = placements([a.detsec for a in amplifiers], [camera.shape] * 4)
    planes = [t * a.gain for t, a in zip(sequence.truth, amplifiers, strict=True)]
    detector = paste(planes, placed, camera.camera.true_flat.shape)
    true = camera.camera.true_flat
    np.testing.assert_allclose(detector / np.median(detector), true / np.median(true), rtol=1e-9)
    assert placed[1] == Placement(80.5, 40.5, 0.5, 30.5)  # AMP2: DETSEC [80:41,1:30]


@pytest.mark.parametrize(
    "detsecs",
    [
        ["[1:40,1:30]", ""],  # one without
        ["[1:40,1:30]", "[20:59,1:30]"],  # overlapping
        ["[1:40,1:30]", "not a section"],
    ],
)
def test_without_a_usable_detsec_the_extensions_go_side_by_side(detsecs: list[str]) -> None:
    placed = placements(detsecs, [(30, 40), (30, 40)])
    assert placed == side_by_side([(30, 40), (30, 40)])
    assert placed[0].right < placed[1].left and placed[1].bottom == 0.0


def test_the_mosaic_preview_is_drawn_one_extension_at_a_time(tmp_path: Path) -> None:
    sequence = simulate_mosaic((60, 80), 4, 1, seed=3)
    truth = [t.astype(np.float32) for t in sequence.truth]
    masks = [np.zeros(t.shape, bool) for t in truth]
    masks[2][10:40, 20:60] = True
    loaded: list[int] = []

    def load(e: int) -> tuple[np.ndarray, np.ndarray]:
        loaded.append(e)
        return truth[e], masks[e]

    amplifiers = sequence.camera.amplifiers
    placed = placements([a.detsec for a in amplifiers], [t.shape for t in truth])
    tiles = mosaic_tiles([a.name for a in amplifiers], [t.shape for t in truth], placed, load)
    assert loaded == [0, 1, 2, 3]
    master = tmp_path / "flat_r_SIMCAM_1_1_20261123T173000.fits"
    path = write_mosaic_preview(master, tiles, 1200, "mosaic", [("f.fits", 1.0, 1.0, True, "")])
    rgb = mpimg.imread(path)[..., :3]
    magenta = np.array([int(MASKED_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    assert (np.abs(rgb - magenta).sum(axis=-1) < 0.05).sum() > 50  # the masked block
