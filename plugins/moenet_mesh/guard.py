"""The mass-removal guard: an answer that would tear down most of the mesh is refused.

An empty peer list after a CP bug looks exactly like a legitimate mass removal
(the Go agent tore every mesh tunnel down on it). Removals above the threshold
are withheld (everything else in the plan still proceeds) until the answer
changes so that it passes, or an operator allows *this* removal set by its
digest (``meshSync.allowRemoval``; an override never carries over to a
different, later mass removal). The same rule as the sessions plugin's guard,
kept here because plugins do not import each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class GuardPolicy:
    """Refuse when removals exceed ``max_share`` of the mesh tunnels AND ``min_count``."""

    max_share: float = 0.5
    min_count: int = 2


@attrs.frozen(kw_only=True)
class GuardVerdict:
    refused: bool
    removals: tuple[str, ...]
    """Interfaces of departed peers the plan would remove (refused or not)."""
    configured: int
    digest: str
    reason: str = ""
    overridden: bool = False

    def status_info(self) -> dict[str, Any]:
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
    return hashlib.sha256("\n".join(sorted(removals)).encode()).hexdigest()[:16]


def evaluate(
    removals: Collection[str],
    configured: Collection[str],
    policy: GuardPolicy | None = None,
    *,
    override: str | None = None,
) -> GuardVerdict:
    """Decide on removing ``removals`` out of the mesh's ``configured`` tunnels."""
    policy = policy or GuardPolicy()
    rem = tuple(sorted(set(removals)))
    total = len(set(configured) | set(rem))
    digest = removal_digest(rem)
    too_many = len(rem) > policy.min_count and len(rem) > policy.max_share * total
    if not too_many:
        return GuardVerdict(refused=False, removals=rem, configured=total, digest=digest)
    reason = (
        f"the answer would remove {len(rem)} of {total} mesh tunnels "
        f"(limit: more than {policy.max_share:.0%} and more than {policy.min_count}); removals withheld"
    )
    if override is not None and override == digest:
        return GuardVerdict(
            refused=False, removals=rem, configured=total, digest=digest, reason=reason, overridden=True
        )
    return GuardVerdict(refused=True, removals=rem, configured=total, digest=digest, reason=reason)
