"""The hook: a command run when a master is published (`[output] on_master`), so that the
morning pipeline hears of a master instead of polling for files.

The command is a list of strings run without a shell; each string may hold placeholders
(`{path}`, `{group}`, ...: `PLACEHOLDERS`) filled from the master's record, and the
command also gets them as `FLATD_*` environment variables (the QA record and the whole
record as JSON). Hooks run one at a time, in the order the masters were written, on a
worker thread of their own with a queue in front of it: `submit()` never blocks and a
combination never waits for a hook. Each run has a timeout after which its process group
is killed; its exit status and the (bounded) tail of its output are one log event. A
hook that cannot start (a missing executable, a placeholder's value the system refuses)
is one error event naming why. Nothing a hook does can stop the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import string
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

__all__ = [
    "PLACEHOLDERS",
    "HookResult",
    "HookRunner",
    "command_problems",
    "expand",
    "hook_environment",
    "hook_values",
]

log = structlog.get_logger("flatd.daemon.hook")

PLACEHOLDERS: dict[str, str] = {
    "path": "the master's path",
    "group": "the group's safe name (as in the file name)",
    "filter": "the group's filter value ('' when the group has none)",
    "n_frames": "frames combined",
    "n_rejected": "frames rejected",
    "flagged": "'true' when QA flagged the master (it differs from the previous one)",
    "promoted": "'true' when latest/ now names this master",
    "change_rms": "robust rms of new/previous - 1 ('' without a previous master)",
    "masked_fraction": "fraction of pixels set in MASK",
    "created_at": "when the master was written (ISO 8601 UTC)",
    "preview": "the preview PNG's path ('' when none was drawn)",
    "ratio": "the ratio-to-previous PNG's path ('' when none was drawn)",
}
OUTPUT_TAIL_BYTES = 2000  # the last this many bytes of a hook's output are logged
KILL_GRACE_SECONDS = 2.0  # after SIGTERM at the timeout, SIGKILL follows this much later
QUEUE_LIMIT = 100  # masters waiting for their hook; beyond this one is dropped, and logged
# systemd's variables for the daemon itself: a hook must not ping the watchdog or say READY
SYSTEMD_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def command_problems(argv: Sequence[str]) -> list[str]:
    """What is wrong with an `on_master` command (empty: nothing): an empty program, a
    malformed or unknown placeholder (named, with the known ones)."""
    if not argv:
        return []
    problems = []
    if not argv[0].strip():
        problems.append("output.on_master[0] (the program) must not be empty")
    for i, argument in enumerate(argv):
        where = f"output.on_master[{i}]"
        try:
            fields = [
                (name, spec, conv) for _, name, spec, conv in _parse(argument) if name is not None
            ]
        except ValueError as exc:
            problems.append(f"{where} = {argument!r}: {exc} (write {{{{ and }}}} for braces)")
            continue
        for name, spec, conversion in fields:
            if name not in PLACEHOLDERS:
                known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                problems.append(f"{where}: unknown placeholder {{{name}}}; known: {known}")
            elif spec or conversion:
                problems.append(f"{where}: write {{{name}}} without a format or conversion")
    return problems


def _parse(argument: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return list(string.Formatter().parse(argument))


def expand(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The command with every placeholder replaced by its value (checked by
    `command_problems` when the config was loaded)."""
    expanded = []
    for argument in argv:
        parts = []
        for literal, name, _, _ in _parse(argument):
            parts.append(literal)
            if name is not None:
                parts.append(values.get(name, ""))
        expanded.append("".join(parts))
    return expanded


def hook_values(record: Mapping[str, Any]) -> dict[str, str]:
    """The placeholders' values for one master record (`MasterRecord.to_dict()`)."""
    from flatd.outputs.history import filter_of
    from flatd.outputs.masters import group_slug
    from flatd.pictures.preview import preview_path, ratio_path

    path = Path(str(record.get("path", "")))
    group = record.get("group") or {}
    qa = record.get("qa") or {}
    drawn = [preview_path(path), ratio_path(path)]
    return {
        "path": str(path),
        "group": group_slug(group) if isinstance(group, dict) else "",
        "filter": filter_of(group),
        "n_frames": str(record.get("n_frames", "")),
        "n_rejected": str(record.get("n_rejected", "")),
        "flagged": _flag(qa.get("flagged")),
        "promoted": _flag(record.get("promoted")),
        "change_rms": _text(qa.get("change_rms")),
        "masked_fraction": _text(qa.get("masked_fraction")),
        "created_at": str(record.get("created_at", "")),
        "preview": str(drawn[0]) if drawn[0].is_file() else "",
        "ratio": str(drawn[1]) if drawn[1].is_file() else "",
    }


def hook_environment(record: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, str]:
    """The hook's environment: the daemon's (less systemd's notification variables), plus
    FLATD_MASTER, FLATD_<NAME> for every placeholder, FLATD_GROUP_JSON, FLATD_QA_JSON and
    FLATD_RECORD_JSON."""
    environment = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ONLY}
    environment.update({f"FLATD_{name.upper()}": value for name, value in values.items()})
    environment["FLATD_MASTER"] = values["path"]
    environment["FLATD_GROUP_JSON"] = json.dumps(record.get("group") or {}, default=str)
    environment["FLATD_QA_JSON"] = json.dumps(record.get("qa") or {}, default=str)
    environment["FLATD_RECORD_JSON"] = json.dumps(dict(record), default=str)
    return environment


def _flag(value: object) -> str:
    return "true" if value is True else "false"


def _text(value: object) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class HookResult:
    """One run of the hook: `outcome` is "ok", "failed" (non-zero exit), "timeout" or
    "error" (it could not start)."""

    outcome: str
    master: str
    returncode: int | None = None
    seconds: float = 0.0
    output: str = ""
    reason: str = ""


class HookRunner:
    """Runs `argv` for each master submitted, one at a time, in order, on its own thread.

    `on_result` (optional) hears of every run, from the worker thread."""

    def __init__(
        self,
        argv: Sequence[str],
        timeout_seconds: float,
        *,
        on_result: Callable[[HookResult], None] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.timeout = float(timeout_seconds)
        self._on_result = on_result
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.argv)

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name="flatd-hook", daemon=True)
        self._thread.start()

    def reconfigure(self, argv: Sequence[str], timeout_seconds: float) -> None:
        """Run `argv` under this timeout from the next master on (a reload); the worker
        starts if the hook was off until now."""
        self.argv, self.timeout = tuple(argv), float(timeout_seconds)
        if self.enabled and not self._stopping.is_set():
            self.start()

    def submit(self, record: Mapping[str, Any]) -> None:
        """Queue the hook for a master just written; never blocks."""
        if not self.enabled or self._stopping.is_set():
            return
        try:
            self._queue.put_nowait(dict(record))
        except queue.Full:
            log.error(
                "hook_dropped",
                master=str(record.get("path", "")),
                reason=f"{QUEUE_LIMIT} masters already wait for the hook",
            )

    def stop(self) -> None:
        """Let a running hook finish (within its timeout); masters still waiting are
        logged (`hook_not_run`) and their hooks not run."""
        self._stopping.set()
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            if record is not None:
                log.warning(
                    "hook_not_run", master=str(record.get("path", "")), reason="daemon stopping"
                )
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            thread.join(self.timeout + KILL_GRACE_SECONDS + 5.0)

    def _work(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            if self._stopping.is_set() or not self.enabled:
                reason = "daemon stopping" if self.enabled else "output.on_master removed"
                log.warning("hook_not_run", master=str(record.get("path", "")), reason=reason)
                continue
            try:
                result = self.run(record)
            except Exception:  # a bug here must not end the worker
                log.exception("hook_crashed", master=str(record.get("path", "")))
                continue
            if self._on_result is not None:
                try:
                    self._on_result(result)
                except Exception:
                    log.exception("hook_result_failed")

    def run(self, record: Mapping[str, Any]) -> HookResult:
        """Run the hook for one master record now, on this thread, and log the outcome."""
        values = hook_values(record)
        argv = expand(self.argv, values)
        master = values["path"]
        started = time.monotonic()
        try:  # the output goes to a file: a chatty hook costs no memory and cannot block
            with tempfile.TemporaryFile(prefix="flatd-hook-") as output:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=hook_environment(record, values),
                    start_new_session=True,  # its own process group: killed whole at the timeout
                    close_fds=True,
                )
                returncode, timed_out = _wait(process, self.timeout)
                tail = _tail(output)
        except (OSError, ValueError) as exc:
            return _logged(_start_failure(argv, master, exc))
        seconds = round(time.monotonic() - started, 3)
        if timed_out:
            result = HookResult("timeout", master, returncode, seconds, tail)
        elif returncode != 0:
            result = HookResult("failed", master, returncode, seconds, tail)
        else:
            result = HookResult("ok", master, 0, seconds, tail)
        return _logged(result, argv=argv, timeout=self.timeout)


def _wait(process: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, bool]:
    """Wait for the hook; at the timeout SIGTERM its process group, then SIGKILL."""
    try:
        return process.wait(timeout), False
    except subprocess.TimeoutExpired:
        pass
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            return process.wait(grace), True
        except subprocess.TimeoutExpired:
            continue
    return process.returncode, True


def _tail(output: Any) -> str:
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - OUTPUT_TAIL_BYTES))
    text = output.read().decode("utf-8", "replace")
    return ("…" if size > OUTPUT_TAIL_BYTES else "") + text.strip()


def _start_failure(argv: list[str], master: str, exc: Exception) -> HookResult:
    if isinstance(exc, FileNotFoundError):
        reason = f"no such program: {argv[0]}"
    elif isinstance(exc, PermissionError):
        reason = f"not executable: {argv[0]}"
    else:
        reason = f"cannot start {argv[0]}: {type(exc).__name__}: {exc}"
    return HookResult("error", master, reason=reason)


def _logged(result: HookResult, **fields: Any) -> HookResult:
    common = {"master": result.master, "seconds": result.seconds, **fields}
    if result.outcome == "error":
        log.error("hook_not_started", master=result.master, reason=result.reason)
    elif result.outcome == "timeout":
        log.error(
            "hook_timeout",
            **common,
            returncode=result.returncode,
            output=result.output,
            reason="killed after output.hook_timeout_seconds",
        )
    elif result.outcome == "failed":
        log.warning("hook_failed", **common, returncode=result.returncode, output=result.output)
    else:
        log.info("hook_done", **common, returncode=0, output=result.output)
    return result
