"""The pipeline's two promises around a running combination: `progress` may abandon it at
any band or stage with nothing written (how the daemon stops at once), and an input
rewritten while it is combined is the outcome "changed", naming the file (an expected
race, not a failure or a crash). Real frames on disk, the real engine; the race is made
at an exact moment from inside the `progress` callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flatd.config import Config, parse_config
from flatd.inputs.index import FlatSequence, index_paths
from flatd.pipeline import make_master
from tests.helpers import write_frame

SHAPE = (512, 512)  # six frames of this size are combined in several bands (mem_limit 16 MB)


class Abandon(Exception):
    pass


def sequence_of(directory: Path, config: Config, n: int = 6) -> FlatSequence:
    rng = np.random.default_rng(1)
    for i in range(n):
        data = rng.normal(20000 - 1000 * i, 50, SHAPE).astype(np.float32)
        write_frame(directory / f"flat_{i}.fits", data, **{"DATE-OBS": f"2026-11-23T17:3{i}:00"})
    [sequence] = index_paths([directory], config).sequences()
    return sequence


@pytest.fixture
def config() -> Config:
    return parse_config({"combine": {"mem_limit_mb": 16}, "output": {"preview": False}})


def written(output: Path) -> list[Path]:
    return sorted(p for p in output.rglob("*") if p.is_file()) if output.exists() else []


def rewrite_in_place(path: Path) -> None:
    """A camera writing the file again where it lies, caught half-way."""
    content = path.read_bytes()
    with path.open("wb") as out:
        out.write(content[: len(content) // 2])


@pytest.mark.parametrize("moment", ["before measuring", "after the engine"])
def test_progress_abandons_the_sequence_with_nothing_written(tmp_path, config, moment) -> None:
    sequence = sequence_of(tmp_path / "in", config)
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if moment == "before measuring" or (total and done == total):
            raise Abandon

    with pytest.raises(Abandon):
        make_master(sequence, config, output_dir=tmp_path / "out", progress=progress)
    assert written(tmp_path / "out") == []
    if moment == "after the engine":
        assert len(calls) > 3, "the engine reported its bands before the end"


def test_progress_is_called_between_the_stages_and_after_each_band(tmp_path, config) -> None:
    sequence = sequence_of(tmp_path / "in", config)
    calls: list[tuple[int, int]] = []
    result = make_master(
        sequence, config, output_dir=tmp_path / "out", progress=lambda d, t: calls.append((d, t))
    )
    assert result.outcome == "done", result.reason
    rows = SHAPE[0]
    assert calls[:2] == [(0, rows), (0, rows)]  # before measuring, before combining
    assert calls[-1] == (rows, rows)
    assert len({d for d, _ in calls}) > 3, "several bands"


@pytest.mark.parametrize("stage", ["measuring", "combining"])
def test_a_frame_rewritten_meanwhile_is_the_outcome_changed(tmp_path, config, stage) -> None:
    sequence = sequence_of(tmp_path / "in", config)
    target = sequence.frames[3].path

    def progress(done: int, total: int) -> None:
        first_band = 0 < done < total
        if not target.stat().st_size < sequence.frames[3].size and (
            (stage == "measuring" and done == 0) or (stage == "combining" and first_band)
        ):
            rewrite_in_place(target)

    result = make_master(sequence, config, output_dir=tmp_path / "out", progress=progress)
    assert result.outcome == "changed", (result.outcome, result.reason)
    assert result.changed == [target]
    assert result.reason == "flat_3.fits changed while being combined"
    assert result.record is None and written(tmp_path / "out") == []


def test_a_frame_removed_meanwhile_is_the_outcome_changed(tmp_path, config) -> None:
    sequence = sequence_of(tmp_path / "in", config)
    target = sequence.frames[0].path
    result = make_master(
        sequence,
        config,
        output_dir=tmp_path / "out",
        progress=lambda done, total: target.unlink(missing_ok=True),
    )
    assert (result.outcome, result.changed) == ("changed", [target])


def test_an_unreadable_frame_that_did_not_change_is_rejected_as_before(tmp_path, config) -> None:
    directory = tmp_path / "in"
    sequence_of(directory, config)
    write_frame(directory / "flat_6.fits", np.full(SHAPE, np.nan, np.float32))
    [sequence] = index_paths([directory], config).sequences()
    result = make_master(sequence, config, output_dir=tmp_path / "out")
    assert (result.outcome, result.changed) == ("done", [])
    assert result.rejected[directory / "flat_6.fits"].startswith("unreadable pixels: ")
