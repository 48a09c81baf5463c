"""Fixtures shared by the tests (helpers to import are in tests/helpers.py)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.daemon import FlatdProcess
from tests.helpers import write_frame


@pytest.fixture
def frame_writer(tmp_path: Path):
    return lambda name, data=None, **header: write_frame(tmp_path / name, data, **header)


@pytest.fixture(autouse=True)
def _structlog_defaults():
    """Each test starts from structlog's defaults: a command run in-process configures it
    to print to pytest's captured stream, which is closed once that test is over."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def daemon(tmp_path: Path):
    """`daemon(**kwargs)` makes a `FlatdProcess` (the real `flatd run`) in tmp_path (or
    `root=`); all are killed at the end of the test whatever happened."""
    started: list[FlatdProcess] = []

    def make(root: Path | None = None, **kwargs) -> FlatdProcess:
        process = FlatdProcess(root or tmp_path, **kwargs)
        started.append(process)
        return process

    yield make
    for process in started:
        process.kill()


@pytest.fixture
def isolated_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For tests that call `flatd.cli.main` in-process: no ./config.toml or $FLATD_CONFIG
    of the developer's leaks into the test, and the logging `main()` sets up (on pytest's
    captured stderr, closed after the test) does not leak out of it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLATD_CONFIG", raising=False)
    root = logging.getLogger()
    handlers, level, showwarning = list(root.handlers), root.level, warnings.showwarning
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    warnings.showwarning = showwarning
    structlog.reset_defaults()
