"""The mass-removal guard: a CP answer that would tear down most of the node is refused.

An empty list after a CP bug, or every session suddenly ``DISABLED``, looks
exactly like a legitimate mass removal. Removals above the threshold are
withheld (everything else in the plan still proceeds) until the answer changes
so that it passes, or an operator allows *this* removal set by its digest (an
override never carries over to a different, later mass removal).
:class:`GuardVerdict` is JSON-able for ``/status`` (``moenet_status_info``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class GuardPolicy:
    """Refuse when removals exceed ``max_share`` of the configured sessions AND
    ``min_count`` (defaults: more than half, and more than 2)."""

    max_share: float = 0.5
    min_count: int = 2


@attrs.frozen(kw_only=True)
class GuardVerdict:
    """The guard's decision for one plan."""

    refused: bool
    removals: tuple[str, ...]
    """Uuids the plan would remove (all of them, whether refused or not)."""
    configured: int
    digest: str
    """Identifies this removal set; an operator override names it."""
    reason: str = ""
    overridden: bool = False

    def status_info(self) -> dict[str, Any]:
        """For ``/status``: what is withheld and how to allow it."""
        return {
            "refused": self.refused,
            "overridden": self.overridden,
            "removals": len(self.removals),
            "configured": self.configured,
            "digest": self.digest,
            "reason": self.reason,
            "withheld": list(self.removals) if self.refused else [],
        }


def removal_digest(removals: Collection[str]) -> str:
    """A short stable digest of a removal set."""
    return hashlib.sha256("\n".join(sorted(removals)).encode()).hexdigest()[:16]


def evaluate(
    removals: Collection[str],
    configured: Collection[str],
    policy: GuardPolicy | None = None,
    *,
    override: str | None = None,
) -> GuardVerdict:
    """Decide on removing ``removals`` out of the node's ``configured`` sessions.

    ``override`` is the digest an operator allowed; it only matches this exact set.
    """
    policy = policy or GuardPolicy()
    rem = tuple(sorted(set(removals)))
    total = len(set(configured) | set(rem))
    digest = removal_digest(rem)
    too_many = len(rem) > policy.min_count and len(rem) > policy.max_share * total
    if not too_many:
        return GuardVerdict(refused=False, removals=rem, configured=total, digest=digest)
    reason = (
        f"the answer would remove {len(rem)} of {total} configured sessions "
        f"(limit: more than {policy.max_share:.0%} and more than {policy.min_count}); removals withheld"
    )
    if override is not None and override == digest:
        return GuardVerdict(
            refused=False, removals=rem, configured=total, digest=digest, reason=reason, overridden=True
        )
    return GuardVerdict(refused=True, removals=rem, configured=total, digest=digest, reason=reason)
