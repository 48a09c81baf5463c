"""Fixtures shared by the tests (helpers to import are in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

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
