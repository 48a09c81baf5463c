"""The shipped systemd units pass `systemd-analyze verify` and stay well sandboxed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")

CASES = [("flatd.service", "flatd.service"), ("flatd@.service", "flatd@demo.service")]


def _flatd_binary() -> Path:
    binary = Path(sys.executable).with_name("flatd")
    if not binary.exists():
        pytest.skip(f"{binary} missing: install the package (make .venv/.installed)")
    return binary


def _checkable_copy(source: str, name: str, tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at a binary that exists (verify demands it)."""
    text = (UNITS / source).read_text()
    text, n = re.subn(r"^ExecStart=\S+", f"ExecStart={_flatd_binary()}", text, flags=re.M)
    assert n == 1, "exactly one ExecStart= expected"
    target = tmp_path / name
    target.write_text(text)
    return target


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("source", "name"), CASES)
def test_unit_content(source: str, name: str) -> None:
    text = (UNITS / source).read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "User=flatd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "KillMode=mixed",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=60s",
        "WantedBy=multi-user.target",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    if "@" in source:
        assert "--config /etc/flatd/%i.toml" in text
        assert re.search(r"^StateDirectory=flatd/%i$", text, re.M)
        assert re.search(r"^Description=.*%i", text, re.M)
    else:
        assert "--config /etc/flatd/config.toml" in text


@pytest.mark.parametrize(("source", "name"), CASES)
def test_verify(source: str, name: str, tmp_path: Path) -> None:
    unit = _checkable_copy(source, name, tmp_path)
    result = _analyze("verify", str(unit))
    ours = [
        line
        for line in result.stderr.splitlines()
        if name in line or str(unit) in line or source in line
    ]
    assert result.returncode == 0, result.stderr
    bad = [line for line in ours if "Unknown" in line or "ignoring" in line.lower()]
    assert bad == [], "\n".join(bad)
    assert not re.search(r"Unknown (key|section|lvalue)", result.stderr), result.stderr


@pytest.mark.parametrize(("source", "name"), CASES)
def test_security_exposure(source: str, name: str, tmp_path: Path) -> None:
    unit = _checkable_copy(source, name, tmp_path)
    result = _analyze("security", "--offline=true", str(unit))
    match = re.search(r"Overall exposure level for \S+:\s*([0-9]+(?:\.[0-9]+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) < MAX_EXPOSURE, result.stdout
