"""Prometheus metrics in a text file (`[status] metrics_file`), for node_exporter's textfile
collector: flatd opens no socket (its systemd sandbox allows none), node_exporter serves
the file.

`MetricsFile.write(document)` is called with every status write (same cadence: at most a
few times a second, at least every heartbeat), on the status writer's thread. The file is
made by `prometheus_client` (`CollectorRegistry` + `write_to_textfile`, which writes a
temporary beside the file and renames it over, so node_exporter never reads half a file).
What the status document says (state, index counts, each group's latest master and its
QA) is collected from the document at each write; what happened since start
(combinations by outcome, their duration, hook runs) is counted as it happens. A failed
write is logged once (and its recovery once) and never raised.

Every series carries a `daemon` label, the metrics file's name without `.prom`: node_exporter
merges all the files of its directory, and two daemons (one per camera) must not write
the same series. Label values are bounded sets or names flatd made safe (a group's safe
name, a master's path); a failure's reason text is never a label.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import prometheus_client
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from flatd import __version__
from flatd.atomic import writer_gone
from flatd.daemon.repeats import RepeatedFailure
from flatd.outputs.history import filter_of
from flatd.reasons import CRASH_PREFIX, reason_of
from flatd.status import parse_iso

__all__ = ["COMBINATION_OUTCOMES", "HOOK_OUTCOMES", "MetricsFile", "outcome_class"]

log = structlog.get_logger("flatd.daemon.metrics")

COMBINATION_OUTCOMES = ("written", "too_few", "failed", "crashed")
HOOK_OUTCOMES = ("ok", "failed", "timeout", "error")
DAEMON_STATES = ("starting", "running", "stopping", "stopped")
GROUP_STATES = ("waiting", "pending", "combining", "done", "too_few", "failed")
COMBINATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
MAX_LABEL_LENGTH = 1024
# write_to_textfile's temporary: "<file>.<pid>.<thread id>"
TEMPORARY = re.compile(r"\.(?P<pid>\d+)\.\d+")


def outcome_class(outcome: str, reason: str = "") -> str:
    """A combination's outcome as one of COMBINATION_OUTCOMES (never the reason's text)."""
    if outcome == "done":
        return "written"
    if outcome == "too_few":
        return "too_few"
    return "crashed" if reason.startswith(CRASH_PREFIX) else "failed"


class MetricsFile:
    """The metrics file of one daemon: counters fed by events, the rest by the status
    document at each `write()`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.daemon = self.path.name.removesuffix(".prom")
        # no `<name>_created` series beside each counter: nothing reads them from a text
        # file, and they double its size (process-wide; flatd has no other registry)
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry()
        self._document = _DocumentCollector(self.daemon)
        self.registry.register(self._document)
        self.registry.register(
            _Labelled(ProcessCollector(namespace="flatd", registry=None), self.daemon)
        )
        self.combinations = Counter(
            "flatd_combinations",
            "Combinations finished since start, by outcome (written, too_few, failed, crashed)",
            ["daemon", "outcome"],
            registry=self.registry,
        )
        self.combination_seconds = Histogram(
            "flatd_combination_seconds",
            "Wall time of each combination that was attempted, in seconds",
            ["daemon"],
            buckets=COMBINATION_BUCKETS,
            registry=self.registry,
        )
        self.hook_runs = Counter(
            "flatd_hook_runs",
            "Runs of the on_master hook since start, by outcome (ok, failed, timeout, error)",
            ["daemon", "outcome"],
            registry=self.registry,
        )
        for outcome in COMBINATION_OUTCOMES:  # every series exists from the start, at 0
            self.combinations.labels(self.daemon, outcome)
        for outcome in HOOK_OUTCOMES:
            self.hook_runs.labels(self.daemon, outcome)
        self.combination_seconds.labels(self.daemon)
        self._write_lock = threading.Lock()
        self.write_failures = RepeatedFailure("metrics_write", path=str(self.path))

    # -- events (any thread) -------------------------------------------------------------------
    def combination_finished(self, outcome: str, reason: str, seconds: float) -> None:
        """One combination attempted: its outcome (as `pipeline.Result.outcome`), reason and
        wall time."""
        self.combinations.labels(self.daemon, outcome_class(outcome, reason)).inc()
        self.combination_seconds.labels(self.daemon).observe(max(0.0, seconds))

    def hook_finished(self, outcome: str) -> None:
        label = outcome if outcome in HOOK_OUTCOMES else "error"
        self.hook_runs.labels(self.daemon, label).inc()

    # -- the file --------------------------------------------------------------------------------
    def remove_stale_temporaries(self) -> list[Path]:
        """Temporaries `write_to_textfile` left behind when a process died mid-write (their
        name holds its pid; those of a live process are left alone)."""
        removed = []
        with contextlib.suppress(OSError):
            for candidate in self.path.parent.iterdir():
                match = TEMPORARY.fullmatch(candidate.name.removeprefix(self.path.name))
                if not candidate.name.startswith(self.path.name) or match is None:
                    continue
                if not writer_gone(candidate, int(match["pid"])):
                    continue
                with contextlib.suppress(OSError):
                    candidate.unlink()
                    removed.append(candidate)
        return removed

    def write(self, document: Mapping[str, Any]) -> bool:
        """Write the file for this status document; False (logged once) when it failed."""
        with self._write_lock:
            self._document.document = document
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_to_textfile(str(self.path), self.registry)
            except Exception as exc:
                self.write_failures.failed(reason_of(exc))
                return False
            self.write_failures.succeeded()
            return True


class _DocumentCollector(Collector):
    """The status document as metric families, collected at each write."""

    def __init__(self, daemon: str) -> None:
        self.daemon = daemon
        self.document: Mapping[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        document = self.document
        yield from _daemon_families(self.daemon, _dict(document.get("daemon")))
        yield from _index_families(self.daemon, _dict(document.get("index")))
        groups = [g for g in _list(document.get("groups")) if isinstance(g, dict)]
        masters = [m for m in _list(document.get("masters")) if isinstance(m, dict)]
        yield from _group_families(self.daemon, groups, masters)


def _daemon_families(daemon: str, facts: dict[str, Any]) -> Iterator[Metric]:
    state = str(facts.get("state", ""))
    up = GaugeMetricFamily(
        "flatd_up",
        "1 while the daemon runs (0 once stopped); see also the file's age",
        labels=["daemon"],
    )
    up.add_metric([daemon], 1.0 if state in ("starting", "running", "stopping") else 0.0)
    yield up
    states = GaugeMetricFamily(
        "flatd_state", "The daemon's state (1 for the current one)", labels=["daemon", "state"]
    )
    for name in DAEMON_STATES:
        states.add_metric([daemon, name], 1.0 if name == state else 0.0)
    yield states
    info = InfoMetricFamily(
        "flatd_build", "flatd's version and combination engine", labels=["daemon"]
    )
    info.add_metric(
        [daemon], {"version": str(facts.get("version") or __version__), "engine": _engine()}
    )
    yield info
    for name, key, text in (
        ("flatd_start_time_seconds", "started_at", "When the daemon started (Unix time)"),
        (
            "flatd_last_update_timestamp_seconds",
            "updated_at",
            "When the status was last written (Unix time)",
        ),
    ):
        moment = parse_iso(facts.get(key))
        if moment is not None:
            family = GaugeMetricFamily(name, text, labels=["daemon"])
            family.add_metric([daemon], moment.timestamp())
            yield family


def _index_families(daemon: str, index: dict[str, Any]) -> Iterator[Metric]:
    for key, name, text in (
        ("frames", "flatd_frames_indexed", "Frame files in the index"),
        ("flats", "flatd_flats_indexed", "Flats in the index"),
        ("skipped", "flatd_files_skipped", "Files skipped (not flats, flatd's own output)"),
        ("rejected", "flatd_files_rejected", "Files rejected (unreadable, truncated, unusable)"),
    ):
        value = index.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            family = GaugeMetricFamily(name, text, labels=["daemon"])
            family.add_metric([daemon], float(value))
            yield family


# per group: (metric name, help, where in the latest master's entry)
_MASTER_VALUES = (
    ("flatd_master_frames", "Frames combined into the group's latest master", ("n_frames",)),
    (
        "flatd_master_rejected_frames",
        "Frames rejected from the group's latest master",
        ("n_rejected",),
    ),
    ("flatd_master_change_rms", "Robust rms of latest/previous master - 1", ("qa", "change_rms")),
    (
        "flatd_master_changed_fraction",
        "Fraction of 8x8 blocks changed beyond qa.max_change",
        ("qa", "changed_fraction"),
    ),
    (
        "flatd_master_masked_fraction",
        "Fraction of the latest master's pixels set in MASK",
        ("qa", "masked_fraction"),
    ),
    ("flatd_master_flagged", "1 when QA flagged the group's latest master", ("qa", "flagged")),
)


def _group_families(
    daemon: str, groups: list[dict[str, Any]], masters: list[dict[str, Any]]
) -> Iterator[Metric]:
    labels = ["daemon", "group", "filter"]
    frames = GaugeMetricFamily(
        "flatd_group_frames", "Frames of the group in the index", labels=labels
    )
    states = GaugeMetricFamily(
        "flatd_group_state", "The group's state (1 for the current one)", labels=[*labels, "state"]
    )
    named = GaugeMetricFamily(
        "flatd_master_info",
        "The group's latest master (its path in a label), always 1",
        labels=[*labels, "path"],
    )
    written = GaugeMetricFamily(
        "flatd_master_timestamp_seconds",
        "When the group's latest master was written (Unix time)",
        labels=labels,
    )
    values = {
        name: GaugeMetricFamily(name, text, labels=labels) for name, text, _ in _MASTER_VALUES
    }
    held = GaugeMetricFamily(
        "flatd_master_held_back",
        "1 while the group's newest sequence's master is not latest/ (QA held it back, or "
        "it was demoted): flatd promote accepts it",
        labels=labels,
    )
    for group in groups:
        keys = [daemon, _label(group.get("name")), _label(filter_of(group.get("group")))]
        if isinstance(group.get("frames"), int):
            frames.add_metric(keys, float(group["frames"]))
        for state in GROUP_STATES:
            states.add_metric([*keys, state], 1.0 if group.get("state") == state else 0.0)
        history = [h for h in _list(group.get("history")) if isinstance(h, dict)]
        if history:
            held.add_metric(keys, float(history[0].get("path") != group.get("latest_master")))
        master = _latest_master(group, masters)
        if master is None:
            continue
        named.add_metric([*keys, _label(master.get("path"))], 1.0)
        created = parse_iso(master.get("created_at"))
        if created is not None:
            written.add_metric(keys, created.timestamp())
        for name, _, where in _MASTER_VALUES:
            value = _number(_dig(master, where))
            if value is not None:
                values[name].add_metric(keys, value)
    yield from (frames, states, named, written, held, *values.values())


def _latest_master(group: dict[str, Any], masters: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The entry of the group's `latest_master`: from its history, else the status file's
    masters, else the path alone."""
    latest = group.get("latest_master")
    history = [h for h in _list(group.get("history")) if isinstance(h, dict)]
    for entry in [*history, *masters]:
        if latest and entry.get("path") == latest:
            return entry
    if latest:
        return {"path": latest}
    return history[0] if history else None


def _engine() -> str:
    """The engine masters are combined by here: "compiled" (the kernel) or "numpy", as the
    masters' CMBENGIN card says."""
    from flatd.engine import kernel

    return kernel.choice().engine


class _Labelled(Collector):
    """Another collector's metrics with the `daemon` label added to every sample."""

    def __init__(self, inner: Collector, daemon: str) -> None:
        self.inner, self.daemon = inner, daemon

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            for sample in metric.samples:
                labelled.add_sample(
                    sample.name, {**sample.labels, "daemon": self.daemon}, sample.value
                )
            yield labelled


def _dig(entry: dict[str, Any], where: tuple[str, ...]) -> Any:
    value: Any = entry
    for key in where:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def _label(value: object) -> str:
    return "" if value is None else str(value)[:MAX_LABEL_LENGTH]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
