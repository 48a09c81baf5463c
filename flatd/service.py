"""`flatd run`: the daemon. The only place where watch, ingest, index, groups, status and
systemd notification are wired together.

Start-up has no gap: the observer starts first (its events wait in the ingest queue),
then the watched directories are scanned, then the queued events are processed — a file
that lands during the scan is seen either way, and a file seen twice is indexed once.
READY=1 follows. A health check every few seconds re-watches lost directories and
pings the systemd watchdog only while healthy; a reconcile scan every few minutes (and
at once after an inotify queue overflow) is the second net under the events.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import structlog

from flatd import __version__, notify
from flatd.atomic import remove_stale_temporaries, remove_stale_temporaries_of
from flatd.calibrate import remove_stale_workspaces
from flatd.config import Config
from flatd.discover import walk
from flatd.groups import Groups
from flatd.history import MasterHistory
from flatd.hook import HookResult, HookRunner
from flatd.index import Index
from flatd.ingest import Ingest
from flatd.masters import MasterRecord
from flatd.metrics import MetricsFile
from flatd.pipeline import Result
from flatd.status import StatusBoard
from flatd.watch import Watcher

log = structlog.get_logger("flatd.service")

HEALTH_SECONDS = 5.0
RECONCILE_SECONDS = 600.0
EXIT_OK, EXIT_FATAL = 0, 1


class Daemon:
    """One running flatd: build with a config, `start()`, `serve()` until stopped."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.index = Index(config.sequence.gap_minutes)
        self.history = MasterHistory()
        self.metrics = (
            MetricsFile(Path(config.status.metrics_file)) if config.status.metrics_file else None
        )
        self.hook = HookRunner(
            config.output.on_master,
            config.output.hook_timeout_seconds,
            on_result=self._hook_finished,
        )
        self.board = StatusBoard(
            config.status.file,
            directories=[str(d) for d in config.watch.directories],
            observer="polling" if config.watch.polling else "inotify",
            snapshot=lambda: (self.index.counts(), self.history.annotate(self.groups.snapshot())),
            on_write=self._announce,
        )
        self.groups = Groups(
            self.index,
            config,
            on_master=self._master_written,
            on_error=self.board.add_error,
            on_change=self.board.mark_changed,
            on_skipped=self.board.add_skip,
            on_outcome=self._combination_finished,
        )
        self.ingest = Ingest(
            self.index,
            config.frames,
            on_group_changed=self.groups.frame_arrived,
            on_skip=self.groups.note_skip,
            settle_seconds=_settle_seconds(config),
            calibrate=config.calibrate,
        )
        self.watcher = Watcher(
            config.watch,
            self.ingest.submit,
            on_directory=self._rescan_later,
            on_overflow=self._rescan_later_all,
            exclude=(config.output.directory,),
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rescan: set[Path] = set()
        self._rescan_lock = threading.Lock()
        self._last_problems: list[str] = []

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
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
        )
        self.board.set_state("running")
        self.board.start()
        self.hook.start()
        threading.Thread(target=self._load_history, name="flatd-history", daemon=True).start()
        self._report_problems(self.watcher.start())
        started = time.monotonic()
        scanned = self._scan(self.config.watch.directories)
        self.ingest.start()
        self.groups.start()
        counts = self.index.counts()
        log.info("ready", scanned=scanned, seconds=round(time.monotonic() - started, 3), **counts)
        notify.notify("READY=1\nSTATUS=" + self._summary())

    def serve(self) -> None:
        """Run the health loop until `request_stop()`."""
        interval = notify.watchdog_interval()
        tick = min(HEALTH_SECONDS, interval / 2) if interval else HEALTH_SECONDS
        next_reconcile = time.monotonic() + RECONCILE_SECONDS
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._rescan_requested()
            if time.monotonic() >= next_reconcile:
                self._reconcile(self.config.watch.directories)
                next_reconcile = time.monotonic() + RECONCILE_SECONDS
            self.groups.check_calibration()  # a new master bias or dark: waiting groups run
            problems = self.watcher.check()
            self._report_problems(problems)
            if not any("observer" in p for p in problems):
                notify.notify("WATCHDOG=1")

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def shutdown(self) -> None:
        log.info("stopping")
        notify.notify("STOPPING=1")
        self.board.set_state("stopping")
        self.watcher.stop()
        self.ingest.stop()
        self.groups.stop()
        self.hook.stop()
        self.board.close("stopped")
        log.info("stopped")

    # -- scanning ----------------------------------------------------------------------
    def _files(self, roots: list[Path] | tuple[Path, ...]) -> list[Path]:
        return list(
            walk(
                [r for r in roots if r.is_dir()],
                self.config.watch.patterns,
                self.config.watch.recursive,
                exclude=[self.config.output.directory],
            )
        )

    def _scan(self, roots: tuple[Path, ...]) -> int:
        paths = self._files(roots)
        for path in paths:
            self.ingest.ingest_now(path)
        return len(paths)

    def _reconcile(self, roots: list[Path] | tuple[Path, ...]) -> None:
        """Compare the disk with the index and hand every difference to ingest."""
        on_disk = set()
        for path in self._files(roots):
            on_disk.add(path)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if not self.index.knows(path, stat.st_size, stat.st_mtime_ns):
                self.ingest.submit(path, "changed")
        for path in self.index.paths():
            if path not in on_disk and any(path.is_relative_to(r) for r in roots):
                self.ingest.submit(path, "deleted")

    def _rescan_later(self, directory: Path) -> None:
        with self._rescan_lock:
            self._rescan.add(directory)
        self._wake.set()

    def _rescan_later_all(self) -> None:
        log.warning("event_queue_overflow", action="rescanning watched directories")
        for directory in self.config.watch.directories:
            self._rescan_later(directory)

    def _rescan_requested(self) -> None:
        with self._rescan_lock:
            roots, self._rescan = sorted(self._rescan), set()
        if roots:
            log.info("rescanning", directories=[str(r) for r in roots])
            self._reconcile(roots)

    # -- reporting ---------------------------------------------------------------------
    def _report_problems(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self._last_problems:
                log.error("watch_problem", reason=problem)
                self.board.add_error("", problem)
        for problem in self._last_problems:
            if problem not in problems:
                log.info("watch_problem_resolved", reason=problem)
        self._last_problems = problems

    def _master_written(self, record: MasterRecord) -> None:
        fields = record.to_dict()
        log.info("master_written", **fields)
        self.history.add(fields)
        self.board.add_master(fields)
        self.hook.submit(fields)

    def _combination_finished(self, result: Result) -> None:
        if self.metrics is not None:
            self.metrics.combination_finished(result.outcome, result.reason, result.seconds)

    def _hook_finished(self, result: HookResult) -> None:
        if self.metrics is not None:
            self.metrics.hook_finished(result.outcome)

    def _load_history(self) -> None:
        """The recent masters on disk of each group, for the page after a restart."""
        read = self.history.load(self.config.output.directory)
        log.debug("history_loaded", masters=read)
        self.board.mark_changed()

    def _summary(self) -> str:
        counts = self.index.counts()
        return (
            f"{counts['flats']} flats in {len(self.index.groups())} groups, "
            f"{counts['rejected']} rejected"
        )

    def _announce(self, document: dict) -> None:
        states = [g["state"] for g in document.get("groups", [])]
        busy = sum(s in ("pending", "combining") for s in states)
        notify.notify(f"STATUS={self._summary()}; {busy} combining/pending")
        try:  # the observer's page beside the status file; a failure never stops the daemon
            from flatd import page

            page.write_page(document, self.config.status.file, self.config.output.directory)
        except Exception as exc:
            if getattr(self, "_page_failing", None) != str(exc):
                log.warning("page_write_failed", reason=f"{type(exc).__name__}: {exc}")
            self._page_failing = str(exc)
        else:
            self._page_failing = None
        if self.metrics is not None:
            self.metrics.write(document)


def _settle_seconds(config: Config) -> float:
    """How long a merely-created file must stand still: longer on network mounts, whose
    attribute caches report size and time late."""
    return max(1.0, config.watch.poll_interval_seconds) if config.watch.polling else 1.0


def run(config: Config) -> int:
    """`flatd run`: serve until SIGTERM/SIGINT; 0 after a clean stop, 1 on a fatal error."""
    daemon = Daemon(config)
    _install_signal_handlers(daemon)
    try:
        daemon.start()
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


def _install_signal_handlers(daemon: Daemon) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        daemon.request_stop()

    def ignore_hup(signum: int, frame: FrameType | None) -> None:
        log.info(
            "signal_ignored",
            signal="SIGHUP",
            reason="configuration is read at start; restart flatd to apply changes",
        )

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, ignore_hup)
