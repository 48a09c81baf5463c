"""Simulated flat sequences through the pipeline, for the tests that check masters against
their known truth: frames written from a `simulate_sequence`, read back as a sequence,
combined and published as the daemon and `flatd combine` do; the Poisson limit; a spoiled
frame; and two nights whose second one has a new dust donut."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from astropy.io import fits

from flatd.config import Config, parse_config
from flatd.frames import Frame, read_frame
from flatd.inputs.fingerprint import identified
from flatd.inputs.index import FlatSequence
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.latest import Curator
from flatd.pipeline import Result, combine_and_publish
from flatd.simulation.flats import SimulatedSequence, simulate_sequence

RATIO_SHAPE = (256, 256)


def config_for(tmp_path: Path, **sections: dict) -> Config:
    raw = {"output": {"directory": str(tmp_path / "masters"), "preview": False}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


def write_simulated(
    seq: SimulatedSequence, directory: Path, prefix: str = "f", edit=None
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (data, header) in enumerate(zip(seq.frames, seq.headers, strict=True)):
        header = header.copy()
        if edit is not None:
            data, header = edit(i, data.copy(), header)
        path = directory / f"{prefix}_{i:03d}.fits"
        fits.PrimaryHDU(data, header).writeto(path)
        paths.append(path)
    return paths


def sequence_of(paths: list[Path], config: Config) -> FlatSequence:
    frames = [identified(read_frame(p, config.frames)) for p in paths]
    assert all(isinstance(f, Frame) for f in frames), frames
    group = frames[0].group
    return FlatSequence(group, tuple(sorted(frames, key=lambda f: f.date)))


def make_master(sequence: FlatSequence, config: Config) -> Result:
    """The master of `sequence`, published in the configured output directory as the
    daemon and `flatd combine` publish it."""
    curator = Curator(Catalogue(config.output.directory), config)
    return combine_and_publish(sequence, config, curator)


def error_against_truth(result: Result, truth: np.ndarray) -> np.ndarray:
    data = fits.getdata(result.record.path).astype(float)
    err = data / truth
    return err / np.median(err) - 1


def poisson_limit(levels: list[float]) -> float:
    return float(np.sqrt(np.sum(1.0 / np.asarray(levels))) / len(levels))


def dome_half_closed(i, data, header):
    nx = data.shape[1]
    ramp = np.clip(np.linspace(1.4, -0.2, nx), 0.35, 1.0)
    return (data * ramp[None, :]).astype(np.float32), header


DONUT = (0.3, 0.6, 6.0, 11.0, 0.08)  # centre (fraction of ny, nx), inner/outer radius, depth


def donut(shape: tuple[int, int]) -> np.ndarray:
    """The new dust shadow: 1 - depth on a ring, 1 elsewhere."""
    cy, cx, inner, outer, depth = DONUT
    y, x = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(y - shape[0] * cy, x - shape[1] * cx)
    return np.where((r > inner) & (r < outer), 1 - depth, 1.0)


def two_masters(tmp_path: Path, changed: np.ndarray | None, preview_on: bool = True):
    first = simulate_sequence(shape=RATIO_SHAPE, n_frames=8, seed=61)
    flat = first.true_flat * changed if changed is not None else first.true_flat
    second = simulate_sequence(
        shape=RATIO_SHAPE, n_frames=8, seed=62, true_flat=flat, start=datetime(2026, 11, 24, 17, 30)
    )
    config = config_for(tmp_path, output={"preview": preview_on})
    one = make_master(sequence_of(write_simulated(first, tmp_path / "n1"), config), config)
    two = make_master(sequence_of(write_simulated(second, tmp_path / "n2"), config), config)
    return one, two, config
