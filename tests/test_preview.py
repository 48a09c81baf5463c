"""The quicklook PNG beside a master: a real, readable image, rejected frames marked, masked
pixels left out of the stretch and drawn in magenta, written atomically."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from flatd.atomic import TEMP_PREFIX
from flatd.pictures import preview
from flatd.pictures.preview import write_preview
from flatd.simulation.flats import simulate_sequence

mpimg = pytest.importorskip("matplotlib.image")

LEVELS = [
    ("flat_r_000.fits", 40000.0, 39900.0, True, ""),
    ("flat_r_001.fits", 28000.0, 27950.0, True, ""),
    ("flat_r_002.fits", 61000.0, 60500.0, False, "too bright: median 61000 > 55000"),
    ("flat_r_003.fits", 14000.0, 13990.0, True, ""),
    ("flat_r_004.fits", 10000.0, 9990.0, True, ""),
]


def _flat(shape: tuple[int, int] = (200, 300)) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    radius2 = ((x - shape[1] / 2) / shape[1]) ** 2 + ((y - shape[0] / 2) / shape[0]) ** 2
    vignetting = 1.0 - 0.1 * radius2
    return (vignetting / np.median(vignetting)).astype(np.float32)


def _master(tmp_path: Path) -> Path:
    return tmp_path / "flat_r_SIMCAM_1_1_20261123T173000.fits"


def test_png_written_beside_master_and_is_a_valid_image(tmp_path: Path) -> None:
    master = _master(tmp_path)
    path = write_preview(master, _flat(), None, "r_SIMCAM_1_1", LEVELS)
    assert path == master.with_suffix(".png") == preview.preview_path(master)
    image = mpimg.imread(path)
    assert image.shape[:2] == (468, 1080)  # 12 x 5.2 inches at 90 dpi
    assert image.shape[2] in (3, 4)
    rgb = image[..., :3]
    assert rgb.std() > 0.05, "the image is not blank"
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 0.3).any(), "something is in colour (the plot)"


def test_rejected_frame_is_marked_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: dict[str, object] = {}
    original = preview._draw_levels

    def spy(axes, levels) -> None:
        original(axes, levels)
        drawn["axes"] = axes

    monkeypatch.setattr(preview, "_draw_levels", spy)
    write_preview(_master(tmp_path), _flat(), None, "r", LEVELS)
    axes = drawn["axes"]
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["median", "mean", "rejected"]
    (rejected,) = axes.collections  # one scatter: the rejected frames' circles
    assert rejected.get_offsets().tolist() == [[3.0, 61000.0]]
    assert "1 rejected" in axes.get_title() and "4 used" in axes.get_title()
    assert any("too bright" in t.get_text() for t in axes.texts)


def test_without_rejections_there_is_no_rejected_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: dict[str, object] = {}
    original = preview._draw_levels
    monkeypatch.setattr(
        preview,
        "_draw_levels",
        lambda axes, levels: (original(axes, levels), drawn.update(axes=axes)),
    )
    write_preview(_master(tmp_path), _flat(), None, "r", [lv for lv in LEVELS if lv[3]])
    labels = [text.get_text() for text in drawn["axes"].get_legend().get_texts()]
    assert labels == ["median", "mean"] and not drawn["axes"].collections


def test_masked_large_and_degenerate_data_still_draw(tmp_path: Path) -> None:
    big = _flat((2100, 1500))
    mask = np.zeros(big.shape, bool)
    mask[:300, :300] = True  # whole binned blocks masked: NaN, no warning
    with np.errstate(all="raise"):
        write_preview(tmp_path / "a.fits", big, mask, "big", LEVELS)
    write_preview(
        tmp_path / "b.fits",
        np.ones((10, 10), np.float32),
        np.ones((10, 10), bool),
        "all masked",
        [],
    )
    for name in ("a.png", "b.png"):
        assert mpimg.imread(tmp_path / name).shape[:2] == (468, 1080)


def test_written_atomically_leaving_no_temporaries(tmp_path: Path) -> None:
    master = _master(tmp_path)
    master.with_suffix(".png").write_bytes(b"old")
    write_preview(master, _flat(), None, "r", LEVELS)
    assert master.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == [master.with_suffix(".png").name]
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


def test_failed_drawing_leaves_the_old_preview(tmp_path: Path) -> None:
    master = _master(tmp_path)
    master.with_suffix(".png").write_bytes(b"old")
    with pytest.raises(Exception):  # noqa: B017 - whatever numpy raises for a 3-d "image"
        write_preview(master, np.ones((2, 3, 4, 5)), None, "bad", LEVELS)
    assert master.with_suffix(".png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [master.with_suffix(".png").name]


def test_threads_can_draw_at_once(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def draw(i: int) -> None:
        try:
            write_preview(tmp_path / f"m{i}.fits", _flat(), None, f"m{i}", LEVELS)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert all(mpimg.imread(tmp_path / f"m{i}.png").shape[:2] == (468, 1080) for i in range(3))


def _dusty_flat_with_dead_pixels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The simulator's true flat (vignetting, pixel response, dust donuts), a dead column
    at 0 and a bias-subtracted dead block at -5 (2 % of the pixels), and their MASK."""
    flat = simulate_sequence((1200, 1600), 1, seed=12).true_flat.astype(np.float32)
    dead = flat.copy()
    mask = np.zeros(flat.shape, bool)
    dead[:, 700] = 0.0
    mask[:, 700] = True
    dead[:240, :160] = -5.0
    mask[:240, :160] = True
    return flat, dead, mask


def test_the_stretch_ignores_masked_pixels() -> None:
    flat, dead, mask = _dusty_flat_with_dead_pixels()
    low, high = preview.stretch(*preview.display_image(dead, mask))
    # exactly the stretch of the good pixels, whatever the masked ones hold
    assert (low, high) == preview.stretch(*preview.display_image(flat, mask))
    assert 0.8 < low < 1.0 < high < 1.1
    # the dead pixels, were they counted, would wash out the dust donuts
    unmasked_low, _ = preview.stretch(*preview.display_image(dead, None))
    assert unmasked_low < 0.0


def test_masked_pixels_are_drawn_in_a_colour_of_their_own(tmp_path: Path) -> None:
    flat, dead, mask = _dusty_flat_with_dead_pixels()

    def magenta_pixels(data: np.ndarray, mask: np.ndarray | None, name: str) -> int:
        path = write_preview(tmp_path / f"{name}.fits", data, mask, name, LEVELS)
        rgb = mpimg.imread(path)[..., :3]
        return int(np.sum((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] > 0.9)))

    assert magenta_pixels(flat, None, "clean") == 0
    assert magenta_pixels(dead, mask, "dead") > 500  # the block and the column
