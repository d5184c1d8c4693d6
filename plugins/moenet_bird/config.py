"""The optional ``birdAgent`` section: what the Go-compatible ``bird`` section lacks.

The socket, pool sizes and directories stay in the core's ``bird`` section (same
keys as the Go agent); this one only holds what the new apply path needs.
"""

from __future__ import annotations

import re

import attrs

from moenet_core.config import check

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _binary(value: object) -> str | None:
    if value == "" or (isinstance(value, str) and value.startswith("/")):
        return None
    return "must be an absolute path (or empty: search PATH, then /opt/moenet-bird3/bin/bird)"


def _debounce(value: object) -> str | None:
    if isinstance(value, int | float) and 0 <= value <= 5:
        return None
    return "must be 0-5 seconds"


def _ifname(value: object) -> str | None:
    if isinstance(value, str) and _IFNAME.match(value):
        return None
    return "must be a Linux interface name (1-15 letters, digits, '_', '.', '-')"


@attrs.define(kw_only=True)
class BirdAgentConfig:
    """Section ``birdAgent``."""

    bird_binary: str = attrs.field(default="", metadata=check(_binary))
    """``bird`` for the ``bird -p`` parse check when the daemon is not running."""
    apply_debounce: float = attrs.field(default=0.05, metadata=check(_debounce))
    """Seconds to wait before an apply so owners declaring together share one configure."""
    loopback_interface: str = attrs.field(default="dummy0", metadata=check(_ifname))
    """Interface holding the node's loopbacks (BIRD's ``direct`` protocol reads it)."""
