"""sd_notify datagrams and the watchdog interval, against a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from flatd.daemon.notify import notify, reloading, watchdog_interval


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


def test_notify_sends_one_datagram(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "n.sock"
    with _receiver(str(path)) as sock:
        clean_env.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"
        assert notify("STATUS=3 flats in 1 groups\nWATCHDOG=1") is True
        assert sock.recv(4096) == b"STATUS=3 flats in 1 groups\nWATCHDOG=1"


def test_reloading_carries_the_monotonic_time_systemd_matches_it_with(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "n.sock"
    with _receiver(str(path)) as sock:
        clean_env.setenv("NOTIFY_SOCKET", str(path))
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert reloading("reloading /etc/flatd/config.toml") is True
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) <= after
    assert lines[2:] == ["STATUS=reloading /etc/flatd/config.toml"]


def test_notify_without_socket_is_silent(clean_env: pytest.MonkeyPatch) -> None:
    assert notify("READY=1") is False


def test_notify_to_missing_socket_returns_false(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify("READY=1") is False


def test_notify_abstract_socket(clean_env: pytest.MonkeyPatch) -> None:
    name = f"flatd-test-{os.getpid()}"
    with _receiver("\0" + name) as sock:
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_watchdog_interval(clean_env: pytest.MonkeyPatch) -> None:
    assert watchdog_interval() is None
    clean_env.setenv("WATCHDOG_USEC", "2000000")
    assert watchdog_interval() == 2.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
    clean_env.delenv("WATCHDOG_PID")
    clean_env.setenv("WATCHDOG_USEC", "garbage")
    assert watchdog_interval() is None
