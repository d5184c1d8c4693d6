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

Three things widen what "mass removal" means (issue 14):

- **A sliding window.** One answer at a time is not enough: removing 5, then
  2, 2 and 1 of 10 passes every step. So the removals actually made are
  remembered (:class:`GuardMemory`, one persisted document per reconciler:
  ``record`` after each plan, ``window(now, seconds)`` before the next) and
  counted together over ``GuardPolicy.window`` seconds, against what was
  configured at the window's start (before its first removal). Times are the
  injected clock's wall time (:meth:`moenet_core.clock.Clock.time`), so the
  memory survives a restart and tests drive it with ``ManualClock``. An
  operator override acknowledges the window: it starts afresh after it.
- **Rebuilds.** Re-keying a tunnel (our key file, the peer's key, the
  preshared key), renaming its interface or recreating it (a tunnel backend
  switch) drops the session as surely as removing it. ``evaluate(...,
  rebuilds=...)`` counts such changes with the removals of the same answer;
  a refused verdict withholds both, additions and harmless in-place changes
  still apply. Rebuilds are counted per answer, not in the window.
- **Caps** on how many items one answer may list are the plugins' (they
  refuse the answer as a whole in ``parse``, so the last valid answer keeps
  serving): ``sessions.maxSessions``, ``mesh.maxPeers``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from typing import Any

import attrs

__all__ = [
    "GuardMemory",
    "GuardPolicy",
    "GuardVerdict",
    "GuardWindow",
    "RemovalRecord",
    "evaluate",
    "format_seconds",
    "numeric_order",
    "removal_digest",
]

#: How a rebuilt item enters the digest (so a removal-only set keeps its digest).
REBUILD_TAG = "rebuild:"


@attrs.frozen(kw_only=True)
class GuardPolicy:
    """Refuse when removals exceed ``max_share`` of what is configured AND
    ``min_count`` (defaults: more than half, and more than 2); the same limits
    apply to the removals made within ``window`` seconds together (0: per
    answer only)."""

    max_share: float = 0.5
    min_count: int = 2
    window: float = 0.0

    @classmethod
    def from_section(cls, section: object) -> GuardPolicy | None:
        """The policy a plugin section spells as ``guardMaxShare``, ``guardMinCount``
        and (optionally) ``guardWindow``; None for a section without them."""
        try:
            max_share = getattr(section, "guard_max_share")  # noqa: B009 - any section type
            min_count = getattr(section, "guard_min_count")  # noqa: B009
        except AttributeError:
            return None
        return cls(max_share=max_share, min_count=min_count, window=getattr(section, "guard_window", 0.0))


@attrs.frozen(kw_only=True)
class GuardWindow:
    """What the sliding window holds at one moment (:meth:`GuardMemory.window`):
    the input :func:`evaluate` counts an answer's removals with."""

    removed: frozenset[str] = frozenset()
    """Items removed within the window (each counted once)."""
    baseline: int = 0
    """How many items were configured at the window's start (before its first removal)."""
    seconds: float = 0.0
    """The window's length (for the reason text)."""


@attrs.frozen(kw_only=True)
class RemovalRecord:
    """One removal set the reconciler went on to make."""

    at: float
    """Wall-clock seconds (the injected clock's ``time()``)."""
    items: tuple[str, ...]
    configured: int
    """How many items were configured just before (the verdict's ``configured``)."""


@attrs.frozen(kw_only=True)
class GuardMemory:
    """The sliding window's memory: the removals made recently, oldest first.

    A state document (``ctx.state.save(name, memory)`` /
    ``ctx.state.load(name, GuardMemory)``); the reconciler base keeps one per
    reconciler in ``guard.json``. Pure: the caller passes the time.
    """

    removals: tuple[RemovalRecord, ...] = ()

    def recent(self, now: float, seconds: float) -> tuple[RemovalRecord, ...]:
        """The records within ``seconds`` before ``now``. Records dated more than
        a window after ``now`` (the clock was set back) are dropped too, so a
        wrong clock never blocks removals for long."""
        if seconds <= 0:
            return ()
        return tuple(r for r in self.removals if now - seconds < r.at <= now + seconds)

    def window(self, now: float, seconds: float) -> GuardWindow:
        """The window as :func:`evaluate` takes it."""
        recent = self.recent(now, seconds)
        if not recent:
            return GuardWindow(seconds=seconds)
        removed = frozenset(i for r in recent for i in r.items)
        return GuardWindow(removed=removed, baseline=recent[0].configured, seconds=seconds)

    def record(self, verdict: GuardVerdict | None, *, now: float, seconds: float) -> GuardMemory:
        """The memory after acting on ``verdict`` at ``now``: its removals are
        remembered when they go ahead (not refused); an override starts the
        window afresh (the operator acknowledged what it holds); expired
        records are dropped."""
        if verdict is not None and verdict.overridden:
            return GuardMemory()
        kept = self.recent(now, seconds)
        if verdict is None or verdict.refused or not verdict.removals or seconds <= 0:
            return GuardMemory(removals=kept)
        return GuardMemory(
            removals=(*kept, RemovalRecord(at=now, items=verdict.removals, configured=verdict.configured))
        )


@attrs.frozen(kw_only=True)
class GuardVerdict:
    """The guard's decision for one plan (or answer)."""

    refused: bool
    removals: tuple[str, ...]
    """What the plan would remove (all of it, whether refused or not), in display order."""
    configured: int
    """How many items there are to remove from: the configured ones and the removals."""
    digest: str
    """Identifies this removal set (and rebuild set); an operator override names it."""
    reason: str = ""
    """Why the set is refused (or was, before an override); empty when within the policy."""
    overridden: bool = False
    """True when the set exceeds the policy but the operator allowed it by its digest."""
    rebuilds: tuple[str, ...] = ()
    """Items the plan would re-key or recreate (dropping their session), in display order."""
    recent: int = 0
    """Removals made earlier within the window (counted with this set's)."""
    baseline: int = 0
    """What was configured at the window's start (0: nothing removed within it)."""

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
            "rebuilds": len(self.rebuilds),
            "configured": self.configured,
            "window": {"removed": self.recent, "baseline": self.baseline},
            "digest": self.digest,
            "reason": self.reason,
            "withheld": list(self.removals) if self.refused else [],
            "withheldRebuilds": list(self.rebuilds) if self.refused else [],
        }


def removal_digest(removals: Collection[str], rebuilds: Collection[str] = ()) -> str:
    """A short stable digest of a removal set (what an ``allowRemoval`` names);
    independent of the order the items come in. Rebuilt items enter tagged, so a
    set without rebuilds keeps the digest it always had."""
    items = [*removals, *(REBUILD_TAG + r for r in rebuilds)]
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]


def numeric_order(item: str) -> tuple[int, str]:
    """A sort key showing decimal ids in numeric order (``"9"`` before ``"10"``)."""
    return (len(item), item)


def format_seconds(seconds: float) -> str:
    """``3600`` -> ``"1h"``, ``5400`` -> ``"1h30m"``, ``90`` -> ``"1m30s"``."""
    total = max(0, round(seconds))
    parts = [(total // 3600, "h"), (total % 3600 // 60, "m"), (total % 60, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _exceeds(count: int, total: int, policy: GuardPolicy) -> bool:
    return count > policy.min_count and count > policy.max_share * total


def evaluate(
    removals: Collection[str],
    configured: Collection[str],
    policy: GuardPolicy | None = None,
    *,
    override: str | None = None,
    noun: str = "items",
    sort_key: Callable[[str], Any] | None = None,
    rebuilds: Collection[str] = (),
    window: GuardWindow | None = None,
) -> GuardVerdict:
    """Decide on removing ``removals`` (and rebuilding ``rebuilds``) out of the
    ``configured`` items.

    Refused when this answer's removals and rebuilds together exceed the policy
    against what is configured now, or when its removals and those made earlier
    within ``window`` together exceed it against the window's baseline.
    ``override`` is the digest an operator allowed; it only matches this exact
    set. ``noun`` names what is removed in the reason (``"configured
    sessions"``: "the answer would remove 4 of 6 configured sessions ...");
    ``sort_key`` orders :attr:`GuardVerdict.removals` for display (default:
    plain string order; :func:`numeric_order` for decimal ids). Neither changes
    the decision or the digest.
    """
    policy = policy or GuardPolicy()
    rem = tuple(sorted(set(removals), key=sort_key))
    reb = tuple(sorted(set(rebuilds) - set(rem), key=sort_key))
    total = len(set(configured) | set(rem))
    digest = removal_digest(rem, reb)
    recent = window.removed if window is not None and rem else frozenset()
    counted = len(recent | set(rem))
    baseline = window.baseline if window is not None and recent else 0

    def verdict(reason: str = "", *, refused: bool = False, overridden: bool = False) -> GuardVerdict:
        return GuardVerdict(
            refused=refused,
            removals=rem,
            configured=total,
            digest=digest,
            reason=reason,
            overridden=overridden,
            rebuilds=reb,
            recent=len(recent - set(rem)),
            baseline=baseline,
        )

    limit = f"more than {policy.max_share:.0%} and more than {policy.min_count}"
    reasons: list[str] = []
    if _exceeds(len(rem) + len(reb), total, policy):
        if not reb:
            what, held = f"remove {len(rem)}", "removals"
        elif not rem:
            what, held = f"rebuild (re-key or recreate) {len(reb)}", "rebuilds"
        else:
            what, held = (
                f"remove {len(rem)} and rebuild (re-key or recreate) {len(reb)}",
                "removals and rebuilds",
            )
        reasons.append(f"the answer would {what} of {total} {noun} (limit: {limit}); {held} withheld")
    if recent - set(rem) and _exceeds(counted, baseline, policy):
        span = format_seconds(window.seconds if window is not None else 0)
        reasons.append(
            f"with the {len(recent - set(rem))} removed within the last {span}, the answer would remove "
            f"{counted} of the {baseline} {noun} there were at the window's start "
            f"(limit: {limit} per {span}); removals withheld"
        )
    if not reasons:
        return verdict()
    allowed = override is not None and override == digest
    return verdict("; ".join(reasons), refused=not allowed, overridden=allowed)
