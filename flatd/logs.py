"""Logging: one structured stream for flatd, the libraries under it, and Python warnings.

`configure_logging()` sets up structlog (JSON lines for the journal, or a console
rendering on a terminal), routes the stdlib `logging` records of watchdog, APScheduler
and astropy into the same stream in the same format, and replaces `warnings.showwarning`
once, globally, with a hook that logs each distinct warning only once (astropy repeats the
same FITSFixedWarning for every file, with only numbers and paths differing). It may be
called again (tests reconfigure): the previous set-up is replaced, never stacked.

astropy is imported lazily (only when a file needs it), often after logging is set up;
its own logger and warnings hook are then tamed as soon as its import finishes.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import re
import sys
import threading
import types
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

__all__ = ["FORMATS", "LEVELS", "configure_logging", "reset_warning_counts"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("json", "console", "auto")
QUIET_LIBRARIES = ("apscheduler", "watchdog", "matplotlib", "PIL")  # WARNING and up
MAX_DISTINCT_WARNINGS = 10_000

_HANDLER_MARK = "_flatd_handler"
_warn_log = structlog.get_logger("flatd.warnings")


def configure_logging(format: str, level: str, stream: TextIO | None = None) -> None:
    """Configure structlog, stdlib logging and warnings to write one event per line to
    `stream` (stderr by default) as JSON or console text, dropping events below `level`."""
    if format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {format!r}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    out: TextIO = stream if stream is not None else sys.stderr
    numeric = LEVELS[level.lower()]
    tty = _isatty(out)
    console = format == "console" or (format == "auto" and tty)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    tail: list[Processor]
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
        tail = [renderer]
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
        tail = [structlog.processors.format_exc_info, renderer]

    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(out, numeric, tail)
    _install_warning_hook()
    if "astropy" in sys.modules:
        _configure_astropy()
    else:
        _configure_astropy_once_imported()


# -- stdlib logging -------------------------------------------------------------------------
class _PrintHandler(logging.Handler):
    """Writes formatted records through a structlog PrintLogger on the same stream, so a
    stdlib line and a structlog line never interleave (they share the stream's lock)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._printer = structlog.PrintLogger(stream)
        setattr(self, _HANDLER_MARK, True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._printer.msg(self.format(record))
        except Exception:
            self.handleError(record)


def _configure_stdlib(stream: TextIO, level: int, tail: list[Processor]) -> None:
    pre_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = _PrintHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(False)


def _configure_astropy(astropy_log: Any = None) -> None:
    """Drop astropy's own stderr handler (its records then reach ours once, through the
    root logger) and stop it from hooking `warnings.showwarning` (ours does that)."""
    if astropy_log is None:
        try:
            from astropy import log
        except ImportError:  # pragma: no cover - astropy is a dependency
            return
        astropy_log = log
    for handler in list(astropy_log.handlers):
        astropy_log.removeHandler(handler)
    astropy_log.propagate = True
    if astropy_log.warnings_logging_enabled():
        try:
            astropy_log.disable_warnings_logging()
        except Exception:  # someone replaced showwarning after astropy: forget astropy's hook
            astropy_log._showwarning_orig = None


_finder_lock = threading.Lock()


class _AfterAstropyImport(importlib.abc.MetaPathFinder):
    """Finds `astropy` for the import system and makes its loader call
    `_configure_astropy` right after the package has run (astropy installs its handler
    and warnings hook while it is imported); then leaves `sys.meta_path`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "astropy":
            return None
        _remove_finder(self)
        spec = importlib.util.find_spec(fullname)  # by the finders after this one
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_package = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            run_package(module)
            with contextlib.suppress(Exception):  # never at the cost of the import
                _configure_astropy(getattr(module, "log", None))

        with contextlib.suppress(AttributeError, TypeError):  # a loader that refuses
            loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _configure_astropy_once_imported() -> None:
    with _finder_lock:
        if not any(isinstance(f, _AfterAstropyImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterAstropyImport())


def _remove_finder(finder: _AfterAstropyImport) -> None:
    with _finder_lock, contextlib.suppress(ValueError):
        sys.meta_path.remove(finder)


# -- warnings ---------------------------------------------------------------------------------
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;()]+)+[\\/]?")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")

_counts: dict[tuple[str, str], int] = {}
_counts_lock = threading.Lock()
_reentry = threading.local()


def _normalise(message: str) -> str:
    text = _PATH.sub("<path>", message)
    text = _QUOTED.sub("'…'", text)
    return _NUMBER.sub("N", text)


def _category_name(category: type[Warning]) -> str:
    return f"{category.__module__}.{category.__qualname__}"


def _is_astropy(category: type[Warning]) -> bool:
    return category.__module__.split(".")[0] == "astropy"


def _flatd_showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """The global `warnings.showwarning`: log the first of each kind, count the rest."""
    if getattr(_reentry, "active", False):
        return
    _reentry.active = True
    try:
        text = str(message)
        key = (_category_name(category), _normalise(text))
        with _counts_lock:
            if key not in _counts and len(_counts) >= MAX_DISTINCT_WARNINGS:
                _counts.clear()
            count = _counts.get(key, 0) + 1
            _counts[key] = count
        event = "astropy_warning" if _is_astropy(category) else "python_warning"
        quiet = issubclass(category, DeprecationWarning | PendingDeprecationWarning)
        if count == 1:
            emit = _warn_log.debug if quiet else _warn_log.warning
            emit(
                event,
                category=key[0],
                message=text,
                location=f"{filename}:{lineno}",
                count=count,
                note="repeats of this warning are counted, not logged",
            )
        elif _is_power_of_ten(count):
            _warn_log.debug(event, category=key[0], message=text, count=count, pattern=key[1])
    except Exception:  # a warning must never break the code that emitted it
        pass
    finally:
        _reentry.active = False


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def _install_warning_hook() -> None:
    if warnings.showwarning is not _flatd_showwarning:
        warnings.showwarning = _flatd_showwarning


def reset_warning_counts() -> None:
    """Forget which warnings were already logged (for tests)."""
    with _counts_lock:
        _counts.clear()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
