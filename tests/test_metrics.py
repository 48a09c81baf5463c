"""Metrics (issue 14, item 7): a Prometheus text file for node_exporter's textfile
collector, written with the status file. Read back with prometheus_client's own parser,
from a real daemon run."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from flatd.config import ConfigError, load_config, parse_config
from flatd.daemon.metrics import MetricsFile, outcome_class
from flatd.inputs.index import index_paths
from flatd.simulation.flats import simulate_sequence, write_sequence
from flatd.status import parse_iso
from tests.daemon import FlatdProcess, flat_sequence, wait_for, write_atomically
from tests.faults.helpers import set_config
from tests.inprocess import combination_jobs

pytestmark = pytest.mark.timeout(120)


def samples(path: Path) -> dict[str, list]:
    """Every sample of the file, by sample name (the parser raises on a malformed file)."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def one(found: dict[str, list], name: str, **labels: str) -> float:
    [value] = [s.value for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    return value


def _write_sequence(
    flatd: FlatdProcess, filter_name: str, seed: int, day: int, **options: object
) -> np.ndarray:
    """A sequence of three frames; returns its true flat."""
    seq = flat_sequence(
        3, filter_name=filter_name, seed=seed, start=datetime(2026, 11, day, 17), **options
    )
    for i in range(3):
        name = f"{filter_name}{day}_{i:03d}.fits"
        write_atomically(flatd.incoming / name, seq.frames[i], seq.headers[i])
    return seq.true_flat


@pytest.mark.slow
def test_the_metrics_file_names_the_latest_master_of_each_group(tmp_path: Path) -> None:
    flatd = FlatdProcess(tmp_path, quiet=0.5, min_frames=3)
    set_config(flatd, "status", metrics_file="textfile/flatd-cam1.prom")
    metrics = tmp_path / "textfile" / "flatd-cam1.prom"
    try:
        flatd.start()
        r_flat = _write_sequence(flatd, "r", seed=1, day=23, stars=False)
        _write_sequence(flatd, "g", seed=2, day=23)
        flatd.wait_event("master_written", count=2)
        # r's second master, of the same flat (no stars, which 3 frames cannot clip): compared
        # with the first, not flagged, so latest/
        _write_sequence(flatd, "r", seed=3, day=24, true_flat=r_flat, stars=False)
        flatd.wait_event("master_written", count=3)
        status = wait_for(
            lambda: (
                (s := flatd.status())["groups"]
                and all(g["state"] == "done" for g in s["groups"])
                and s["index"]["flats"] == 9
                and s
            ),
            what="both groups done",
        )
        found = wait_for(
            lambda: (
                (f := samples(metrics))
                and one(f, "flatd_combinations_total", outcome="written") == 3
                and f
            ),
            what="three combinations in the metrics",
        )
        assert flatd.stop() == 0
        final = samples(metrics)
    finally:
        flatd.kill()

    daemon = {"daemon": "flatd-cam1"}
    assert {s.labels["daemon"] for samples_ in found.values() for s in samples_} == {"flatd-cam1"}
    assert one(found, "flatd_up", **daemon) == 1
    assert one(found, "flatd_state", state="running") == 1
    started = parse_iso(status["daemon"]["started_at"])
    assert started is not None
    assert one(found, "flatd_start_time_seconds") == pytest.approx(started.timestamp(), abs=1e-3)
    [build] = found["flatd_build_info"]
    assert build.labels["version"] == status["daemon"]["version"]
    assert build.labels["engine"] in ("compiled", "numpy")
    assert one(found, "flatd_frames_indexed") == status["index"]["frames"] == 9
    assert one(found, "flatd_files_rejected") == 0
    assert one(found, "flatd_combination_seconds_count") == 3

    # each group's latest master: named, dated, counted, with its QA
    masters = {m["path"]: m for m in status["masters"]}
    for group in status["groups"]:
        labels = {"group": group["name"], "filter": group["group"]["FILTER"]}
        [named] = [s for s in found["flatd_master_info"] if s.labels["group"] == group["name"]]
        assert named.labels["path"] == group["latest_master"]
        master = masters[group["latest_master"]]
        created = parse_iso(master["created_at"])
        assert created is not None
        assert one(found, "flatd_master_timestamp_seconds", **labels) == created.timestamp()
        assert one(found, "flatd_master_frames", **labels) == master["n_frames"] == 3
        assert one(found, "flatd_master_flagged", **labels) == master["qa"]["flagged"]
        assert one(found, "flatd_group_state", state="done", **labels) == 1
        assert one(found, "flatd_group_frames", **labels) == group["frames"]
    r = {"group": "r_SIMCAM_1_1", "filter": "r"}
    r_master = masters[
        next(g for g in status["groups"] if g["name"] == r["group"])["latest_master"]
    ]
    assert Path(r_master["path"]).name == "flat_r_SIMCAM_1_1_20261124T170000.fits"
    assert one(found, "flatd_master_change_rms", **r) == r_master["qa"]["change_rms"] > 0
    # g has no previous master: no change rms for it
    assert [s.labels["group"] for s in found["flatd_master_change_rms"]] == ["r_SIMCAM_1_1"]
    assert one(found, "flatd_master_held_back", **r) == 0  # its newest master is latest/

    assert one(final, "flatd_up") == 0 and one(final, "flatd_state", state="stopped") == 1
    assert not [p for p in metrics.parent.iterdir() if p != metrics]  # no temporaries left


def test_a_master_held_back_by_qa_is_a_metric(tmp_path: Path) -> None:
    masters = "/m/flat_r_SIMCAM_1_1_2026112{}T170000.fits"
    group = {
        "group": {"FILTER": "r"},
        "name": "r_SIMCAM_1_1",
        "state": "done",
        "latest_master": masters.format(3),
        "history": [
            {"path": masters.format(4), "qa": {"flagged": True}},
            {"path": masters.format(3)},
        ],
    }
    metrics = MetricsFile(tmp_path / "flatd.prom")
    assert metrics.write({"daemon": {"state": "running"}, "groups": [group], "masters": []})
    assert one(samples(tmp_path / "flatd.prom"), "flatd_master_held_back") == 1


def test_a_failed_write_is_logged_once_and_its_recovery_once(tmp_path: Path) -> None:
    blocker = tmp_path / "textfile"
    blocker.write_text("a file where the directory should be")
    metrics = MetricsFile(blocker / "flatd.prom")
    document = {"daemon": {"state": "running"}}
    with capture_logs() as events:
        assert not metrics.write(document)
        assert not metrics.write(document)
        blocker.unlink()
        assert metrics.write(document)
        assert metrics.write(document)
    assert [e["event"] for e in events] == ["metrics_write_failed", "metrics_write_recovered"]
    assert events[1]["failures"] == 2
    assert "flatd_up" in samples(blocker / "flatd.prom")


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    metrics = MetricsFile(tmp_path / "flatd.prom")
    stale = tmp_path / f"flatd.prom.{int(dead.stdout)}.140234"
    live = tmp_path / f"flatd.prom.{os.getpid()}.140234"
    other = tmp_path / "other.prom.1.2"
    for path in (stale, live, other):
        path.write_text("flatd_up 1\n")
    assert metrics.remove_stale_temporaries() == [stale]
    assert live.exists() and other.exists() and not stale.exists()


def test_outcomes_are_a_bounded_set_of_classes() -> None:
    assert outcome_class("done") == "written"
    assert outcome_class("too_few", "2 usable frame(s)") == "too_few"
    assert outcome_class("failed", "OSError: [Errno 28] No space left on device") == "failed"
    assert outcome_class("failed", "combination crashed: KeyError: 'x'") == "crashed"


def test_the_metrics_file_is_configured_relative_to_the_config(tmp_path: Path) -> None:
    config_file = tmp_path / "site" / "flatd.toml"
    config_file.parent.mkdir()
    config_file.write_text('[status]\nmetrics_file = "prom/flatd.prom"\n')
    assert load_config(config_file).status.metrics_file == str(
        config_file.parent / "prom/flatd.prom"
    )
    assert parse_config({}).status.metrics_file == ""  # off
    with pytest.raises(ConfigError, match=r"must end in \.prom"):
        parse_config({"status": {"metrics_file": "flatd.txt"}})


def test_every_combination_is_counted_by_its_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The combination jobs in-process on real files: a crash (the one fault injected here: no input
    makes the pipeline raise, that is what a crash is) and then a written master."""
    incoming = tmp_path / "incoming"
    write_sequence(simulate_sequence((24, 24), 4, seed=8, stars=False), incoming)
    config = parse_config(
        {
            "output": {"directory": str(tmp_path / "masters"), "preview": False},
            "sequence": {"quiet_seconds": 0, "min_frames": 3},
        }
    )
    index = index_paths([incoming], config)
    metrics = MetricsFile(tmp_path / "flatd.prom")
    jobs, _ = combination_jobs(
        index,
        config,
        on_outcome=lambda r: metrics.combination_finished(r.outcome, r.reason, r.seconds),
    )
    [group] = index.groups()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr("flatd.daemon.jobs.combine_and_publish", crash)
        jobs.run(group)
    jobs.run(group)
    jobs.stop()
    assert metrics.write({})
    found = samples(tmp_path / "flatd.prom")
    counts = {s.labels["outcome"]: s.value for s in found["flatd_combinations_total"]}
    assert counts == {"written": 1, "crashed": 1, "failed": 0, "too_few": 0}
    assert one(found, "flatd_combination_seconds_count") == 2
