"""The ``nftables`` config section.

Checks run through the core's structuring, so every problem is reported with
its path (``nftables.managedRange: ...``) at start and by ``moenet-agent
validate``, next to every other problem in the file; the core's ``checked(fn)``
also attaches each as an attrs validator (a config built in code is held to the
same rules).
"""

from __future__ import annotations

import re

import attrs

from moenet_core.config import checked

#: The table name must carry the agent's prefix: a typo can then never make the
#: agent replace another tool's table (``filter``, ``firewalld``), and no nft
#: keyword (``udp``, ``counter``, ``meta``) can collide with it in a script.
TABLE_RE = re.compile(r"^moenet[a-z0-9_]{0,58}$")
RANGE_RE = re.compile(r"^(\d{1,5})-(\d{1,5})$")
INT32 = (-(2**31), 2**31 - 1)


def check_table(value: str) -> str | None:
    if TABLE_RE.match(value):
        return None
    return (
        f"must start with 'moenet' followed by up to 58 of a-z, 0-9 or '_' (got {value!r}); "
        "the prefix is what marks the table as the agent's own"
    )


def parse_range(value: str) -> tuple[int, int]:
    """``"20000-29999"`` -> ``(20000, 29999)``; raises ValueError with the reason."""
    m = RANGE_RE.match(value)
    if not m:
        raise ValueError(f"must be 'low-high', two port numbers (got {value!r})")
    lo, hi = int(m.group(1)), int(m.group(2))
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise ValueError(f"ports must be within 1-65535 (got {value!r})")
    if lo > hi:
        raise ValueError(f"low end must not exceed the high end (got {value!r})")
    return lo, hi


def check_range(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_range(value)
    except ValueError as exc:
        return str(exc)
    return None


def check_priority(value: int) -> str | None:
    if isinstance(value, bool) or not INT32[0] <= value <= INT32[1]:
        return "must be a 32-bit signed integer (nftables chain priority)"
    return None


def check_nft_path(value: str) -> str | None:
    if not value or any(c.isspace() for c in value):
        return "must be an executable name or path without whitespace"
    return None


def check_timeout(value: float) -> str | None:
    return None if 0 < value <= 300 else "must be greater than 0 and at most 300 seconds"


@attrs.define(kw_only=True)
class NftablesConfig:
    """Section ``nftables``: where the agent's firewall lives and what it may drop."""

    table: str = attrs.field(default="moenet_agent", **checked(check_table))
    """Name of the agent's ``inet`` table (the only table the agent ever touches)."""
    chain_priority: int = attrs.field(default=-10, **checked(check_priority))
    """Priority of the agent's input chain; below 0 so it runs before a usual ``filter`` chain."""
    managed_range: str | None = attrs.field(default=None, **checked(check_range))
    """``"low-high"``: UDP ports in this range that are not open are dropped. Unset: nothing is dropped."""
    nft_path: str = attrs.field(default="nft", **checked(check_nft_path))
    """The ``nft`` executable (name looked up on PATH, or a path)."""
    timeout: float = attrs.field(default=10.0, **checked(check_timeout))
    """Seconds one ``nft`` call may take before it is killed and the call fails."""

    def managed_bounds(self) -> tuple[int, int] | None:
        """``managedRange`` as two ints (None when unset)."""
        return None if self.managed_range is None else parse_range(self.managed_range)
