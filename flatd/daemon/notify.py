"""sd_notify without libsystemd: one datagram to `$NOTIFY_SOCKET`.

Outside systemd (no `$NOTIFY_SOCKET`) every call is a silent no-op returning False, and
no failure to reach the socket ever raises: notifications are advisory, the daemon must
keep running whatever happens to its supervisor's socket.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "reloading", "watchdog_interval"]


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1", "WATCHDOG=1", "STATUS=...") to systemd.

    Returns True when the datagram was sent, False when there is no socket or sending
    failed. Never raises.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return False
    return True


def reloading(status: str = "") -> bool:
    """Tell systemd a reload of the configuration begins: `RELOADING=1` with the
    `MONOTONIC_USEC=` it needs to match the message to the reload it asked for
    (`Type=notify-reload`, sd_notify(3)); READY=1 must follow once the reload is done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = f"RELOADING=1\nMONOTONIC_USEC={usec}"
    return notify(f"{message}\nSTATUS={status}" if status else message)


def watchdog_interval() -> float | None:
    """The systemd watchdog timeout in seconds (`WatchdogSec=`), or None when the watchdog
    is off or meant for another process. Ping with "WATCHDOG=1" every half of it."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
