"""systemd's notify protocol: readiness, watchdog pings, stopping, reloading.

With ``Type=notify`` systemd starts the agent's dependants only once it says
``READY=1``, and with ``WatchdogSec=`` it restarts an agent whose event loop
stops pinging. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
The protocol is one datagram per message on a unix socket (a leading ``@``
names an abstract socket), so no library is needed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from loguru import logger


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1\\nSTATUS=..."``); False when not under systemd."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        logger.warning("systemd notify failed: {}", exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None when
    the watchdog is off or meant for another process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 / 2 if value > 0 else None
