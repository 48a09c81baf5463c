"""The fault-injection tests all run the real daemon: marked `slow` (their `daemon`
fixture is tests/conftest.py's; helpers to import are in tests/faults/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.parent == here:
            item.add_marker(pytest.mark.slow)
