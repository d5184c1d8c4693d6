"""The mass-removal guard for iBGP: an answer that would drop most nodes at once is refused.

The same idea as the sessions plugin's guard (plugins never import each other):
an empty or truncated ``ibgpPeers`` after a CP bug looks exactly like a real
mass removal, and losing iBGP cuts the node off from every route its
neighbours learned. Removals above the threshold are withheld (the removed
nodes stay with their last known data; additions and changes still apply)
until the answer changes so that it passes, or an operator allows *this*
removal set by its digest.

It counts *nodes* (the CP's list, this node left out), not sessions: a change
of route-reflector roles legitimately changes many sessions at once without
any node leaving, and is not what the guard is for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class GuardPolicy:
    """Refuse when removals exceed ``max_share`` of the known nodes AND
    ``min_count`` (defaults: more than half, and more than 2)."""

    max_share: float = 0.5
    min_count: int = 2


@attrs.frozen(kw_only=True)
class GuardVerdict:
    """The guard's decision for one answer."""

    refused: bool
    removals: tuple[str, ...]
    """Node ids the answer would remove (all of them, whether refused or not)."""
    known: int
    digest: str
    reason: str = ""
    overridden: bool = False

    def status_info(self) -> dict[str, Any]:
        return {
            "refused": self.refused,
            "overridden": self.overridden,
            "removals": len(self.removals),
            "known": self.known,
            "digest": self.digest,
            "reason": self.reason,
            "withheld": list(self.removals) if self.refused else [],
        }


def removal_digest(removals: Collection[str]) -> str:
    """A short stable digest of a removal set (what ``allowRemoval`` names)."""
    return hashlib.sha256("\n".join(sorted(removals)).encode()).hexdigest()[:16]


def evaluate(
    removals: Collection[str],
    known: Collection[str],
    policy: GuardPolicy | None = None,
    *,
    override: str | None = None,
) -> GuardVerdict:
    """Decide on removing ``removals`` out of the ``known`` nodes (ids as strings).

    ``override`` is the digest an operator allowed; it only matches this exact set.
    """
    policy = policy or GuardPolicy()
    rem = tuple(sorted(set(removals), key=lambda r: (len(r), r)))
    total = len(set(known) | set(rem))
    digest = removal_digest(rem)
    too_many = len(rem) > policy.min_count and len(rem) > policy.max_share * total
    if not too_many:
        return GuardVerdict(refused=False, removals=rem, known=total, digest=digest)
    reason = (
        f"the answer would remove {len(rem)} of {total} iBGP nodes "
        f"(limit: more than {policy.max_share:.0%} and more than {policy.min_count}); removals withheld"
    )
    if override is not None and override == digest:
        return GuardVerdict(
            refused=False, removals=rem, known=total, digest=digest, reason=reason, overridden=True
        )
    return GuardVerdict(refused=True, removals=rem, known=total, digest=digest, reason=reason)
