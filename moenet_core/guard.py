"""The mass-removal guard: an answer that would tear down most of what a reconciler manages is refused.

Why every reconciler needs one: an empty or broken control-plane answer (an
empty list after a CP bug, a truncated one, every item suddenly disabled)
looks exactly like a legitimate mass removal, and acting on it cuts the node
off. So removals above a threshold (:class:`GuardPolicy`: more than
``max_share`` of what is configured *and* more than ``min_count``) are
withheld, while everything else in the plan still proceeds, until the answer
changes so that it passes, or an operator allows *this* removal set by its
digest (an override never carries over to a different, later mass removal).

A public utility for every reconciler, the built-in ones (sessions, mesh,
iBGP) and third-party plugins alike: call :func:`evaluate` with what the
answer would remove and what is configured now, say what is being removed
(``noun``, for the reason text), act on :attr:`GuardVerdict.refused`, and
show :meth:`GuardVerdict.status_info` in ``/status``
(``moenet_status_info``). Items are strings (uuids, interface names, ids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from typing import Any

import attrs

__all__ = ["GuardPolicy", "GuardVerdict", "evaluate", "numeric_order", "removal_digest"]


@attrs.frozen(kw_only=True)
class GuardPolicy:
    """Refuse when removals exceed ``max_share`` of what is configured AND
    ``min_count`` (defaults: more than half, and more than 2)."""

    max_share: float = 0.5
    min_count: int = 2


@attrs.frozen(kw_only=True)
class GuardVerdict:
    """The guard's decision for one plan (or answer)."""

    refused: bool
    removals: tuple[str, ...]
    """What the plan would remove (all of it, whether refused or not), in display order."""
    configured: int
    """How many items there are to remove from: the configured ones and the removals."""
    digest: str
    """Identifies this removal set; an operator override names it."""
    reason: str = ""
    """Why the set is refused (or was, before an override); empty when within the policy."""
    overridden: bool = False
    """True when the set exceeds the policy but the operator allowed it by its digest."""

    def newly_refused(self, previous: GuardVerdict | None) -> bool:
        """True when this verdict refuses a set the ``previous`` one did not: log a
        refusal once, not every cycle it persists."""
        return self.refused and (previous is None or not previous.refused or previous.digest != self.digest)

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
    """A short stable digest of a removal set (what an ``allowRemoval`` names);
    independent of the order the items come in."""
    return hashlib.sha256("\n".join(sorted(removals)).encode()).hexdigest()[:16]


def numeric_order(item: str) -> tuple[int, str]:
    """A sort key showing decimal ids in numeric order (``"9"`` before ``"10"``)."""
    return (len(item), item)


def evaluate(
    removals: Collection[str],
    configured: Collection[str],
    policy: GuardPolicy | None = None,
    *,
    override: str | None = None,
    noun: str = "items",
    sort_key: Callable[[str], Any] | None = None,
) -> GuardVerdict:
    """Decide on removing ``removals`` out of the ``configured`` items.

    ``override`` is the digest an operator allowed; it only matches this exact
    set. ``noun`` names what is removed in the reason (``"configured
    sessions"``: "the answer would remove 4 of 6 configured sessions ...");
    ``sort_key`` orders :attr:`GuardVerdict.removals` for display (default:
    plain string order; :func:`numeric_order` for decimal ids). Neither changes
    the decision or the digest.
    """
    policy = policy or GuardPolicy()
    rem = tuple(sorted(set(removals), key=sort_key))
    total = len(set(configured) | set(rem))
    digest = removal_digest(rem)
    too_many = len(rem) > policy.min_count and len(rem) > policy.max_share * total
    if not too_many:
        return GuardVerdict(refused=False, removals=rem, configured=total, digest=digest)
    reason = (
        f"the answer would remove {len(rem)} of {total} {noun} "
        f"(limit: more than {policy.max_share:.0%} and more than {policy.min_count}); removals withheld"
    )
    if override is not None and override == digest:
        return GuardVerdict(
            refused=False, removals=rem, configured=total, digest=digest, reason=reason, overridden=True
        )
    return GuardVerdict(refused=True, removals=rem, configured=total, digest=digest, reason=reason)
