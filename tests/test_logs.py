"""configure_logging: JSON lines, level filtering, contextvars, stdlib and warnings routing."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog
from astropy.io.fits.verify import VerifyWarning

from flatd.logs import configure_logging, reset_warning_counts


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    showwarning = warnings.showwarning
    reset_warning_counts()
    yield
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)
    warnings.showwarning = showwarning
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_with_level_and_timestamp() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    log = structlog.get_logger("flatd.test")
    log.info("hello", frames=3)
    log.debug("hidden")
    log.warning("careful")
    events = _lines(out)
    assert [e["event"] for e in events] == ["hello", "careful"]
    assert events[0]["level"] == "info" and events[0]["frames"] == 3
    assert events[0]["timestamp"].endswith("Z")


def test_debug_level_shows_debug() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    structlog.get_logger().debug("visible")
    assert [e["event"] for e in _lines(out)] == ["visible"]


def test_contextvars_are_merged() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    with structlog.contextvars.bound_contextvars(group="r_SIMCAM_1_1"):
        structlog.get_logger().info("combining")
    structlog.get_logger().info("after")
    first, second = _lines(out)
    assert first["group"] == "r_SIMCAM_1_1"
    assert "group" not in second


def test_stdlib_records_become_json_lines() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    logging.getLogger("watchdog").warning("x")
    logging.getLogger("watchdog.observers.inotify_c").warning("queue overflow %d", 1)
    logging.getLogger("apscheduler.scheduler").info("quiet below warning")
    events = _lines(out)
    assert [(e["event"], e["level"]) for e in events] == [
        ("x", "warning"),
        ("queue overflow 1", "warning"),
    ]
    assert events[1]["logger"] == "watchdog.observers.inotify_c"


def test_configure_twice_does_not_duplicate() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    configure_logging("json", "info", stream=out)
    logging.getLogger("watchdog").warning("once")
    structlog.get_logger().info("twice?")
    assert [e["event"] for e in _lines(out)] == ["once", "twice?"]


def test_astropy_log_is_not_doubled() -> None:
    from astropy import log as astropy_log

    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    astropy_log.warning("from astropy")
    events = [e for e in _lines(out) if e["event"] == "from astropy"]
    assert len(events) == 1 and events[0]["logger"] == "astropy"
    assert astropy_log.handlers == []


def test_repeated_astropy_warning_logged_once() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for i in range(100):
            warnings.warn(
                f"Card 'DATE-OBS' of /data/night/f{i:03d}.fits fixed to 2026-11-{i}",
                VerifyWarning,
                stacklevel=1,
            )
    events = [e for e in _lines(out) if e["event"] == "astropy_warning"]
    assert len(events) == 1
    assert events[0]["count"] == 1 and events[0]["level"] == "warning"
    assert "VerifyWarning" in events[0]["category"]
    assert len(out.getvalue().splitlines()) == 1


def test_distinct_warnings_each_logged() -> None:
    import astropy.wcs

    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("'datfix' made the change 'Set MJD-OBS to 1.0'", VerifyWarning, stacklevel=1)
        warnings.warn(
            "'datfix' made the change 'Set MJD-OBS to 1.0'",
            astropy.wcs.FITSFixedWarning,
            stacklevel=1,
        )
        warnings.warn("something else entirely", UserWarning, stacklevel=1)
    events = [e["event"] for e in _lines(out)]
    assert events == ["astropy_warning", "astropy_warning", "python_warning"]


def test_console_format_is_not_json() -> None:
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    structlog.get_logger().info("hello", frames=3)
    logging.getLogger("watchdog").warning("from watchdog")
    text = out.getvalue()
    assert "hello" in text and "frames=3" in text and "from watchdog" in text
    assert "\033[" not in text  # not a terminal: no colours
    for line in text.splitlines():
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_auto_on_a_non_terminal_is_json() -> None:
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    structlog.get_logger().info("hello")
    assert _lines(out)[0]["event"] == "hello"


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="format"):
        configure_logging("xml", "info", stream=io.StringIO())
    with pytest.raises(ValueError, match="level"):
        configure_logging("json", "loud", stream=io.StringIO())
