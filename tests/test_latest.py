"""`latest/` by one rule, superseded masters, the operator's decisions (`flatd.outputs.latest`,
`flatd.outputs.decisions`) on real masters made by the pipeline from simulated frames.

The rule: the accepted master of the group's newest sequence by observation date, whatever
order they were written in; QA-flagged masters are held back unless `promote_changed` or
the operator's promote; a demoted master never is latest/. A crash between writing a master
and removing the ones it superseded is repaired at start. Two writers of the decisions file
never lose each other's changes."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from astropy.io import fits

from flatd.config import Config, parse_config
from flatd.frames import Frame, read_frame
from flatd.inputs.fingerprint import identified
from flatd.inputs.index import FlatSequence
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.decisions import DecisionsFile
from flatd.outputs.latest import Curator
from flatd.outputs.masters import MasterRecord, latest_path
from flatd.pipeline import combine_and_publish
from flatd.simulation.flats import simulate_sequence, write_sequence
from tests.helpers import find_masters

SLUG = "r_SIMCAM_1_1"


def configured(tmp_path: Path, **qa: object) -> Config:
    return parse_config(
        {
            "output": {"directory": str(tmp_path / "masters"), "preview": False},
            "sequence": {"min_frames": 3},
            "qa": qa,
        }
    )


def frames_of(tmp_path: Path, day: int, n: int = 3, seed: int = 0) -> list[Frame]:
    seq = simulate_sequence(
        (16, 16), n, seed=seed or day, stars=False, start=datetime(2026, 11, day, 17, 30)
    )
    paths = write_sequence(seq, tmp_path / f"night{day}", prefix=f"n{day}")
    frames = [identified(read_frame(p, Config().frames)) for p in paths]
    assert all(isinstance(f, Frame) for f in frames)
    return frames  # type: ignore[return-value]


def publish(frames: list[Frame], config: Config) -> MasterRecord:
    sequence = FlatSequence(frames[0].group, tuple(sorted(frames, key=lambda f: f.date)))
    result = combine_and_publish(
        sequence, config, Curator(Catalogue(config.output.directory), config)
    )
    assert result.record is not None, result.reason
    return result.record


def latest(config: Config) -> Path:
    return latest_path(config.output.directory, SLUG)


def test_latest_is_the_newest_sequence_whatever_order_masters_are_written_in(tmp_path: Path):
    config = configured(tmp_path)
    days = {day: publish(frames_of(tmp_path, day), config) for day in (23, 21, 22)}
    assert days[23].promoted and not days[21].promoted and not days[22].promoted
    assert latest(config).samefile(days[23].path)
    curator = Curator(Catalogue(config.output.directory), config)
    assert curator.settle_all() == {SLUG: days[23].path}
    latest(config).unlink()  # latest/ lost: put back by the rule at the next start
    curator.settle_all()
    assert latest(config).samefile(days[23].path)


def test_held_back_promoted_demoted_and_promote_changed(tmp_path: Path):
    config = configured(tmp_path)
    older, newer = (publish(frames_of(tmp_path, day), config) for day in (22, 23))
    fits.setval(newer.path, "QAFLAG", value=True)  # what QA writes for a changed flat
    curator = Curator(Catalogue(config.output.directory), config)
    curator.settle_all()
    assert latest(config).samefile(older.path)  # held back

    promoting = Curator(
        Catalogue(config.output.directory), configured(tmp_path, promote_changed=True)
    )
    promoting.settle_all()  # the setting changed (start, reload): it applies to what is there
    assert latest(config).samefile(newer.path)

    with curator.decisions.locked() as decisions:
        decisions.decide(newer.path, "demote")
        assert curator.settle(SLUG, decisions) == older.path
    assert latest(config).samefile(older.path)
    with curator.decisions.locked() as decisions:
        decisions.decide(newer.path, "promote")  # the operator accepts the change
        assert curator.settle(SLUG, decisions) == newer.path
    with curator.decisions.locked() as decisions:
        decisions.decide(older.path, "demote")
        decisions.decide(newer.path, "demote")
        assert curator.settle(SLUG, decisions) is None
    assert not latest(config).exists()  # never a file that is not an accepted master


def test_a_master_whose_frames_a_newer_one_holds_is_superseded_at_start(tmp_path: Path):
    config = configured(tmp_path)
    frames = frames_of(tmp_path, 23, n=4)
    partial = publish(frames[1:], config)  # the first frame came late
    curator = Curator(Catalogue(config.output.directory), config)
    # what a crash leaves: the whole sequence's master written, the old one still there
    whole = FlatSequence(frames[0].group, tuple(frames))
    from flatd.pipeline import make_master

    record = make_master(whole, config).record
    assert record is not None and record.path != partial.path
    assert len(find_masters(config.output.directory)) == 2
    assert latest(config).samefile(partial.path)
    removed = curator.repair(datetime(2026, 11, 24, tzinfo=UTC))
    assert removed == []  # its sequence started before `since`: not looked at
    removed = curator.repair(datetime(2026, 11, 1, tzinfo=UTC))
    assert removed == [partial.path]
    assert find_masters(config.output.directory) == [record.path]
    assert latest(config).samefile(record.path)


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from flatd.outputs.decisions import DecisionsFile
for i in range(int(sys.argv[2])):
    with DecisionsFile(Path(sys.argv[1])).locked() as decisions:
        decisions.request_remake(f"flat_{sys.argv[4]}_{i}.fits")
"""


def test_two_writers_of_the_decisions_file_never_lose_a_change(tmp_path: Path):
    root = str(Path(__file__).resolve().parents[1])
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "25", root, name])
        for name in ("a", "b")
    ]
    assert [w.wait(60) for w in writers] == [0, 0]
    targets = sorted(r.target for r in DecisionsFile(tmp_path).read().requests)
    assert targets == sorted(f"flat_{n}_{i}.fits" for n in "ab" for i in range(25))
