"""Fixtures of the fault-injection tests (every one of them runs the real daemon: marked
`slow`); helpers to import are in tests/faults/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon import FlatdProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.parent == here:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def daemon(tmp_path: Path):
    """`daemon(**kwargs)` makes a `FlatdProcess` in tmp_path (or `root=`); all are killed
    at the end of the test whatever happened."""
    started: list[FlatdProcess] = []

    def make(root: Path | None = None, **kwargs) -> FlatdProcess:
        process = FlatdProcess(root or tmp_path, **kwargs)
        started.append(process)
        return process

    yield make
    for process in started:
        process.kill()
