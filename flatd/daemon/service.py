"""`flatd run`: the daemon. The only place where watch, ingest, index, tree, the groups'
states, the combination jobs, the masters on disk, the status board and systemd
notification are wired together.

Threads (docs/architecture.md has the whole table): the main thread runs the health loop,
the stop and the reloads the signals ask for, and nothing else — it pings systemd's
watchdog on time whatever the other threads are doing; `flatd-scan` (`tree.Scanner`)
does every directory scan, the start-up scan first; `flatd-ingest` reads new files;
APScheduler's workers combine.

Start-up has no gap: the lock is taken (one daemon per output and status file), the
observer starts, the roots are watched, then the scanner reads the warm directories and
lists the cold ones while the events of new files wait in the ingest queue; then the
queued events are processed — a file that lands during the scan is seen either way, and
a file seen twice is indexed once. Until then the state is `starting` and systemd hears
`EXTEND_TIMEOUT_USEC=` every few seconds, so a long start is never killed by its start
timeout; READY=1 follows the scan. A health check every few seconds re-watches lost
directories and pings the systemd watchdog only while healthy; a reconcile scan every ten
minutes (and at once after an inotify queue overflow) is the second net under the
events, followed by the housekeeping that lets old sequences leave memory.

Signals (`flatd.daemon.signals`) only set a flag and wake the main thread, which does the work:
SIGTERM/SIGINT stop the daemon — a running combination is abandoned at its next band of
rows or stage, nothing half-written, and redone at the next start; SIGHUP reloads the
configuration (`reload`, `flatd.daemon.reload` says what may change): an invalid file is
refused whole and the running configuration kept, keys fixed at start wait for a restart,
the rest applies to what runs next.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import structlog

from flatd import __version__, engine
from flatd.atomic import remove_stale_temporaries, remove_stale_temporaries_of
from flatd.calibrate import remove_stale_workspaces
from flatd.config import Config, ConfigError, reload_config
from flatd.daemon import notify, signals
from flatd.daemon.groupstate import GroupStates
from flatd.daemon.hook import HookResult, HookRunner
from flatd.daemon.ingest import Ingest
from flatd.daemon.jobs import CombinationJobs
from flatd.daemon.lock import AlreadyRunning, InstanceLock
from flatd.daemon.metrics import MetricsFile
from flatd.daemon.reload import ReloadPlan, plan_reload
from flatd.daemon.repeats import RepeatedFailure
from flatd.daemon.tree import Scanner, ScanTally, Tree
from flatd.daemon.watch import Watcher, WatchHealth
from flatd.inputs.index import Index
from flatd.outputs.catalogue import Catalogue
from flatd.outputs.history import MasterHistory
from flatd.outputs.latest import Curator, Published
from flatd.outputs.masters import MasterFile, MasterRecord, name_group
from flatd.outputs.settings import SETTINGS, differences
from flatd.pipeline import Result
from flatd.reasons import reason_of
from flatd.status import MasterEntry, StatusBoard, StatusDocument

log = structlog.get_logger("flatd.daemon.service")

HEALTH_SECONDS = 5.0
RECONCILE_SECONDS = 600.0
EXTEND_SECONDS = 30.0  # each EXTEND_TIMEOUT_USEC= gives the start-up this long to send the next
EXIT_OK, EXIT_FATAL = 0, 1


class Daemon:
    """One running flatd: build with a config, `start()`, `serve()` until stopped.

    `log_format` and `log_level` are the command line's overrides of `[log]`, which a
    reload keeps."""

    def __init__(
        self, config: Config, *, log_format: str | None = None, log_level: str | None = None
    ) -> None:
        self.config = config
        self._log_overrides = (log_format, log_level)
        self.index = Index(config.sequence.gap_minutes, config.sequence.keep_days)
        self.lock = InstanceLock.for_daemon(config.output.directory, config.status.file)
        self.history = MasterHistory()
        self.metrics = (
            MetricsFile(Path(config.status.metrics_file)) if config.status.metrics_file else None
        )
        self.hook = HookRunner(
            config.output.on_master,
            config.output.hook_timeout_seconds,
            on_result=self._hook_finished,
        )
        self.states = GroupStates(self.index, config.frames)
        self.catalogue = Catalogue(config.output.directory)
        self.curator = Curator(self.catalogue, config)
        self.board = StatusBoard(
            config.status.file,
            directories=[str(d) for d in config.watch.directories],
            observer="polling" if config.watch.polling else "inotify",
            snapshot=lambda: (self.index.counts(), self.history.annotate(self.states.snapshot())),
            on_write=self._announce,
            annotate_masters=self._annotate_masters,
        )
        self.jobs = CombinationJobs(
            self.index,
            config,
            self.states,
            self.curator,
            on_master=self._master_written,
            on_error=self.board.add_error,
            on_change=self.board.mark_changed,
            on_master_gone=self._master_gone,
            on_outcome=self._combination_finished,
        )
        self.ingest = Ingest(
            self.index,
            config.frames,
            on_group_changed=self.jobs.frames_changed,
            on_skip=self.board.add_skip,
            on_index_changed=self.board.mark_changed,  # a duplicate changes no group
            settle_seconds=_settle_seconds(config),
            calibrate=config.calibrate,
        )
        self.watcher = Watcher(
            config.watch,
            self.ingest.submit,
            on_directory=self._directory_changed,
            on_overflow=self._overflowed,
            exclude=(config.output.directory,),
        )
        self.tree = Tree(config, self.index, self.ingest, self.watcher)
        self.scanner = Scanner(
            self.tree, on_started=self._scan_done, after_reconcile=self._housekeeping
        )
        self.ready = threading.Event()
        self.wakeup = signals.Wakeup()
        self._stop_asked: int | None = None  # the signal number (0: asked by code)
        self._reload_asked = False
        self._metrics_lock = threading.Lock()  # a metrics write, or the file replaced
        self._last_problems: list[str] = []
        self._since = datetime.now(UTC) - timedelta(days=config.sequence.keep_days + 1)
        self.page_failures = RepeatedFailure("page_write", level="warning")

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Take the lock (AlreadyRunning if another daemon holds it: nothing is written
        then), clean up after a crash, start watching, and start the start-up scan."""
        self.lock.acquire()
        output = self.config.output.directory
        output.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(output):
            log.warning("stale_temporary_removed", path=str(stale))
        for stale in remove_stale_temporaries_of(self.config.status.file):
            log.warning("stale_temporary_removed", path=str(stale))
        for stale in self.metrics.remove_stale_temporaries() if self.metrics else []:
            log.warning("stale_temporary_removed", path=str(stale))
        for stale in remove_stale_workspaces(output):  # a crash's calibrated copies
            log.warning("stale_workspace_removed", path=str(stale))
        log.info(
            "starting",
            version=__version__,
            pid=os.getpid(),
            directories=[str(d) for d in self.config.watch.directories],
            observer=self.watcher.observer_name,
            output=str(output),
            keep_days=self.config.sequence.keep_days,
        )
        engine.log_choice()
        self.board.set_state("starting")
        self.board.start()
        self._extend_start(HEALTH_SECONDS)
        self.hook.start()
        threading.Thread(target=self._load_history, name="flatd-history", daemon=True).start()
        self._report_problems(self.watcher.start())
        self.scanner.start()

    def _scan_done(self, tally: ScanTally, seconds: float) -> None:
        """The start-up scan is over (on the scanner's thread): put the masters on disk right
        (a crash between writing a master and removing the ones it superseded; `latest/` by
        the rule, with `promote_changed` and the operator's decisions as they are now),
        process the queued events, arm the groups, tell systemd."""
        for removed in self.curator.repair(self._since):
            self._master_gone(removed)
        self.curator.settle_all()
        self.ingest.start()
        self.jobs.start()
        self.board.set_state("running")
        counts = self.index.counts()
        log.info(
            "ready",
            scanned=tally.files,
            read=tally.read,
            listed_only=tally.listed,
            directories=tally.directories,
            watched=len(self.watcher.watched()),
            seconds=round(seconds, 3),
            **counts,
        )
        notify.notify("READY=1\nSTATUS=" + self._summary())
        self.ready.set()
        self.wakeup.wake()

    def serve(self) -> None:
        """Run the health loop until `request_stop()`; reload when asked, once ready."""
        interval = notify.watchdog_interval()
        tick = min(HEALTH_SECONDS, interval / 2) if interval else HEALTH_SECONDS
        next_reconcile = time.monotonic() + RECONCILE_SECONDS
        while self._stop_asked is None:
            self._health(tick)
            self.wakeup.wait(tick)
            if self._stop_asked is not None:
                break
            if self._reload_asked and self.ready.is_set():
                self._reload_asked = False  # before reading: a later SIGHUP reloads again
                self.reload()
            if self.ready.is_set() and time.monotonic() >= next_reconcile:
                self.scanner.reconcile()
                next_reconcile = time.monotonic() + RECONCILE_SECONDS
        if self._stop_asked:
            log.info("signal_received", signal=signal.Signals(self._stop_asked).name)

    def _health(self, tick: float) -> None:
        """One health check: while starting, ask systemd for more time; once running,
        ping its watchdog — only while every directory that should be watched is — and
        then look for new calibration masters (a listing of their directories)."""
        health = self.watcher.check()
        self._report_problems(health)
        if not self.ready.is_set():
            self._extend_start(tick)
            return
        if health.healthy:
            notify.notify("WATCHDOG=1")
        self.jobs.check_calibration()  # a new master bias or dark: waiting groups run

    def _extend_start(self, tick: float) -> None:
        """Ask systemd for more start-up time: the start-up scan of a large archive may
        outlast `TimeoutStartSec=`; this is repeated every tick until READY=1."""
        extend = max(EXTEND_SECONDS, 3 * tick)
        files = self.index.counts()["frames"]
        notify.notify(
            f"EXTEND_TIMEOUT_USEC={int(extend * 1e6)}\nSTATUS=starting: {files} files scanned"
        )

    # -- what signals ask for: a flag and a wake-up, nothing else (see flatd.daemon.signals) ----
    def request_stop(self, signum: int = 0) -> None:
        """Make `serve()` return (from a signal handler or any thread)."""
        if self._stop_asked is None:
            self._stop_asked = signum
        self.wakeup.wake()

    def request_reload(self) -> None:
        """Make `serve()` reload the configuration (from a signal handler or any thread)."""
        self._reload_asked = True
        self.wakeup.wake()

    def shutdown(self) -> None:
        """Stop: a running combination is abandoned first, at its next band or stage."""
        self.jobs.abandon()  # before anything slower (the status write) lets it finish
        log.info("stopping")
        notify.notify("STOPPING=1")
        self.board.set_state("stopping")
        self.jobs.stop()
        self.watcher.stop()
        self.scanner.stop()
        self.ingest.stop()
        self.hook.stop()
        self.board.close("stopped")
        self.lock.release()
        self.wakeup.close()
        log.info("stopped")

    # -- reload ------------------------------------------------------------------------
    def reload(self) -> None:
        """Read the config file again and apply what changed, on the service's thread
        (SIGHUP): systemd hears RELOADING=1, then READY=1. An invalid file changes
        nothing; a combination in progress finishes with the settings it started with."""
        source = str(self.config.source or "(no file)")
        log.info("reloading", config=source)
        notify.reloading(f"reloading {source}")
        try:
            plan = plan_reload(self.config, reload_config(self.config))
        except ConfigError as exc:
            log.error(
                "reload_refused",
                config=exc.source,
                problems=exc.problems,
                reason="invalid configuration: flatd runs on with the one it has",
            )
            self.board.add_error(
                exc.source, "reload refused, configuration kept: " + "; ".join(exc.problems)
            )
        except Exception:  # a bug must not end the daemon: it runs on as it was
            log.exception("reload_failed")
        else:
            self._apply(plan)
        finally:
            notify.notify("READY=1\nSTATUS=" + self._summary())

    def _apply(self, plan: ReloadPlan) -> None:
        """Hand the new configuration to each part; the events say what changed, under
        the log settings they replace (the last lines in the old format, at the old level)."""
        old, new = self.config, plan.config
        self.config = new
        self.jobs.reconfigure(new)
        self.hook.reconfigure(new.output.on_master, new.output.hook_timeout_seconds)
        if new.status.metrics_file != old.status.metrics_file:
            self._replace_metrics(new.status.metrics_file)
        if new.watch.directories != old.watch.directories:
            self._watch_roots(new.watch.directories)
        log.info(
            "config_reloaded",
            config=str(new.source),
            changed=plan.changed,
            values=_changed_values(old, new, plan.changed),
        )
        if plan.needs_restart:
            message = plan.restart_message()
            log.warning("restart_needed", keys=list(plan.needs_restart), reason=message)
            self.board.add_error(str(new.source), message)
        if new.log != old.log:
            self._configure_logging(new)
        self.board.mark_changed()

    def _replace_metrics(self, path: str) -> None:
        """Write the metrics to `path` from now on; the old file is removed, so that
        node_exporter does not serve it on, frozen (the counters start again at 0)."""
        with self._metrics_lock:
            old, self.metrics = self.metrics, MetricsFile(Path(path)) if path else None
            if old is not None:
                try:
                    old.path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("metrics_file_not_removed", path=str(old.path), reason=str(exc))

    def _configure_logging(self, config: Config) -> None:
        from flatd.logs import configure_logging

        log_format, log_level = self._log_overrides
        configure_logging(
            log_format or config.log.format, log_level or config.log.level, stream=sys.stdout
        )

    def _watch_roots(self, roots: tuple[Path, ...]) -> None:
        """New watched directories: dropped ones unwatched and forgotten (the scanner),
        new ones watched and scanned (the watcher's check asks the scanner)."""
        self.scanner.set_roots(roots)
        self.watcher.set_roots(roots)
        self.board.set_directories([str(d) for d in roots])
        self._report_problems(self.watcher.check())

    # -- what the other threads ask for ----------------------------------------------
    def _directory_changed(self, directory: Path) -> None:
        self.scanner.rescan(directory)

    def _overflowed(self) -> None:
        log.warning("event_queue_overflow", action="reconciling watched directories")
        self.scanner.reconcile()

    def _housekeeping(self) -> None:
        """After a reconcile (on the scanner's thread): sequences older than keep_days
        leave memory once their group is settled."""
        horizon = datetime.now(UTC) - timedelta(days=self.config.sequence.keep_days)
        gone = self.index.forget(horizon, self.states.settled)
        if gone:
            self.jobs.forget(gone)
            log.info(
                "sequences_forgotten",
                sequences=len(gone),
                frames=sum(len(s.frames) for s in gone),
                before=horizon.isoformat(),
            )
            self.board.mark_changed()

    # -- reporting ---------------------------------------------------------------------
    def _report_problems(self, health: WatchHealth) -> None:
        problems = health.reasons
        for problem in problems:
            if problem not in self._last_problems:
                log.error("watch_problem", reason=problem)
                self.board.add_error("", problem)
        for problem in self._last_problems:
            if problem not in problems:
                log.info("watch_problem_resolved", reason=problem)
        self._last_problems = problems

    def _master_written(self, record: MasterRecord, published: Published) -> None:
        fields = record.to_dict()
        log.info("master_written", **fields)
        self.history.add(fields)
        settings = {s.card: s.value(self.config) for s in SETTINGS}
        self.board.put_master(cast(MasterEntry, {**fields, "settings": settings}))
        for old in published.superseded:
            self._master_gone(old)
        self.hook.submit(fields)

    def _master_gone(self, path: Path) -> None:
        """A master superseded or deleted by hand: out of the status and the history."""
        self.board.drop_master(path)
        self.history.remove(path)

    def _annotate_masters(self, entries: list[MasterEntry]) -> list[MasterEntry]:
        """Each master listed as `latest/` names it now, with the settings it was made
        with that differ from the configuration's."""
        for entry in entries:
            slug = name_group(Path(str(entry.get("path"))))
            if slug is not None and self.config.output.latest:
                entry["promoted"] = self.curator.named(slug) == Path(str(entry["path"]))
            entry["other_settings"] = differences(entry.get("settings") or {}, self.config)
            entry["change_confirmed"] = bool((entry.get("qa") or {}).get("confirmed"))
        return entries

    def _combination_finished(self, result: Result) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.combination_finished(result.outcome, result.reason, result.seconds)

    def _hook_finished(self, result: HookResult) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.hook_finished(result.outcome)

    def _load_history(self) -> None:
        """The recent masters on disk of each group, for the page after a restart, and the
        newest masters for the status file's list."""
        read = self.history.load(self.config.output.directory)
        log.debug("history_loaded", masters=read)
        self.catalogue.refresh(force=True)
        keys = self.config.frames.group_by
        for listed in reversed(self.catalogue.listed()[-self.board.limit :]):
            master = self.catalogue.read(listed.path, keys)
            if master is not None and str(master.path) not in self.board.listed():
                self.board.put_master(_entry_of(master), newest=False)
        self.board.mark_changed()

    def _summary(self) -> str:
        counts = self.index.counts()
        return (
            f"{counts['flats']} flats in {len(self.index.group_sizes())} groups, "
            f"{counts['rejected']} rejected"
        )

    def _announce(self, document: StatusDocument) -> None:
        states = [g["state"] for g in document.get("groups", [])]
        busy = sum(s in ("pending", "combining") for s in states)
        if self.ready.is_set():
            notify.notify(f"STATUS={self._summary()}; {busy} combining/pending")
        try:  # the observer's page beside the status file; a failure never stops the daemon
            from flatd.status import page

            page.write_page(document, self.config.status.file, self.config.output.directory)
        except Exception as exc:
            self.page_failures.failed(reason_of(exc))
        else:
            self.page_failures.succeeded()
        with self._metrics_lock:
            if self.metrics is not None:
                self.metrics.write(document)


def _entry_of(master: MasterFile) -> MasterEntry:
    """A master found on disk as the status file lists it."""
    return {
        "group": dict(master.group or ()),
        "path": str(master.path),
        "created_at": master.written.isoformat().replace("+00:00", "Z") if master.written else None,
        "n_frames": master.n_frames,
        "n_rejected": master.n_rejected,
        "median_levels": master.used_medians,
        "duration_s": None,
        "qa": master.qa,
        "settings": master.settings,
    }


def _settle_seconds(config: Config) -> float:
    """How long a merely-created file must stand still: longer on network mounts, whose
    attribute caches report size and time late."""
    return max(1.0, config.watch.poll_interval_seconds) if config.watch.polling else 1.0


def _changed_values(old: Config, new: Config, keys: list[str]) -> dict[str, Any]:
    """{key: {"from": old value, "to": new value}} for the `config_reloaded` event."""
    before, after = old.to_dict(), new.to_dict()
    values = {}
    for key in keys:
        section, name = key.split(".", 1)
        values[key] = {"from": before[section][name], "to": after[section][name]}
    return values


def run(config: Config, *, log_format: str | None = None, log_level: str | None = None) -> int:
    """`flatd run`: serve until SIGTERM/SIGINT, reloading the config on SIGHUP; 0 after a
    clean stop, 1 on a fatal error (another daemon holding the output directory or the
    status file is one). `log_format`/`log_level`: the command line's, kept by reloads."""
    engine.tune_allocator()
    daemon = Daemon(config, log_format=log_format, log_level=log_level)
    signals.install(daemon.request_stop, daemon.request_reload, daemon.wakeup)
    try:
        daemon.start()
    except AlreadyRunning as exc:  # the other daemon's files are left exactly as they are
        log.error("already_running", pid=exc.pid, lock=str(exc.path), reason=str(exc))
        return EXIT_FATAL
    except Exception:
        log.exception("fatal_error")
        _shutdown_quietly(daemon)
        return EXIT_FATAL
    try:
        daemon.serve()
    except Exception:
        log.exception("fatal_error")
        _shutdown_quietly(daemon)
        return EXIT_FATAL
    daemon.shutdown()
    return EXIT_OK


def _shutdown_quietly(daemon: Daemon) -> None:
    try:
        daemon.shutdown()
    except Exception:
        log.exception("shutdown_failed")
