"""The ``ibgp`` config section: on/off, this node's route-reflector role, the guard.

Everything has a default, so a node without the section runs iBGP as the CP
says, refusing an answer that would drop more than half (and more than 2) of
its iBGP peers at once.
"""

from __future__ import annotations

import re

import attrs

from moenet_core.config import check, non_negative


def _share(v: float) -> str | None:
    return None if 0.0 <= v <= 1.0 else f"must be within 0..1 (got {v!r})"


def _digest(v: str) -> str | None:
    return (
        None
        if not v or re.fullmatch(r"[0-9a-f]{16}", v)
        else "must be a guard digest (16 hex digits) or empty"
    )


@attrs.define(kw_only=True)
class IbgpConfig:
    """Section ``ibgp``."""

    enabled: bool = True
    """False: no iBGP session at all (the ones the agent made are removed)."""
    route_reflector: bool | None = None
    """This node's role when the CP's ``ibgpPeers`` has no entry for it with
    ``isRr``; null (the default) then means: not a route reflector."""
    guard_max_share: float = attrs.field(default=0.5, metadata=check(_share))
    """Refuse an answer dropping more than this share of the known nodes ..."""
    guard_min_count: int = attrs.field(default=2, metadata=check(non_negative))
    """... and more than this many (both must be exceeded)."""
    guard_window: float = attrs.field(default=3600.0, metadata=check(non_negative))
    """Seconds over which dropped nodes are also counted together, against the
    nodes known at the window's start (so dropping a few per answer cannot empty
    the list); remembered across restarts. 0: each answer is judged on its own."""
    allow_removal: str = attrs.field(default="", metadata=check(_digest))
    """An operator override: the guard digest (shown in ``/status``) of the one
    removal set to let through; it never matches a different, later one."""
