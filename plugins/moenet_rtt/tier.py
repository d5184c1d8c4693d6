"""DN42 latency tiers, and the hysteresis that keeps one noisy round from moving them.

**Tier.** DN42's latency community ``(64511, x)`` says the link's round-trip time
lies in ``(e^(x-1), e^x]`` milliseconds. The boundaries used are the published
values every DN42 network compares against (:data:`UPPER_BOUNDS`, e^x to within
1.5 %): tier 1 up to 2.7 ms, 2 up to 7.3, 3 up to 20, 4 up to 55, 5 up to 148,
6 up to 403, 7 up to 1097, 8 up to 2981, 9 above; each tier starts just above
the previous bound.

**Hysteresis** (:func:`update`), per link, once per measurement round:

1. A round where every probe was lost (no RTT) changes nothing: not the tier,
   not the smoothed RTT, not a pending change (it neither confirms nor cancels one).
2. Otherwise the round's RTT feeds an EWMA: ``ewma = alpha * rtt + (1 - alpha) * ewma``
   (``ewmaAlpha``, default 0.3). The link's first successful round sets the EWMA
   to its RTT and the tier straight from it.
3. After that the tier moves only when the EWMA lies outside the current tier's
   band widened by the margin ``h`` (``hysteresis``, default 0.2) on each
   boundary, i.e. outside ``(lower * (1 - h), upper * (1 + h)]`` (tier 1 has no
   lower end). Such a round *counts towards a change* only if the round's own RTT
   is outside the widened band too, on the same side: then its candidate is the
   tier of the EWMA.
4. The tier becomes the candidate once ``confirmRounds`` (default 2) consecutive
   successful rounds count towards the *same* candidate. Any other successful
   round cancels a pending change (the EWMA or the round's RTT back inside the
   band); one naming a different candidate restarts the count with it.

So a single slow (or fast) round cannot flap a tier: it is damped by the EWMA,
absorbed by the margin, and when it still pushes the EWMA out, the next normal
round cancels it (the EWMA alone would stay out for several rounds after one
spike, which is why the round's own RTT must agree). A sustained change moves
the tier within a few rounds.

The state of one link (:class:`LinkState`) is a small JSON object, persisted by
the task so a restart keeps the tiers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

#: Upper RTT bound (ms, inclusive) of tiers 1 to 8; tier 9 is everything above.
UPPER_BOUNDS: tuple[float, ...] = (2.7, 7.3, 20.0, 55.0, 148.0, 403.0, 1097.0, 2981.0)
MIN_TIER = 1
MAX_TIER = len(UPPER_BOUNDS) + 1


def tier_for(rtt_ms: float) -> int:
    """The DN42 latency tier (1-9) of a round-trip time in milliseconds."""
    if math.isnan(rtt_ms):
        raise ValueError("an RTT of NaN has no tier")
    for tier, upper in enumerate(UPPER_BOUNDS, start=MIN_TIER):
        if rtt_ms <= upper:
            return tier
    return MAX_TIER


def band(tier: int) -> tuple[float, float]:
    """``(lower, upper)``: the tier covers RTTs over ``lower`` up to ``upper`` ms."""
    if not MIN_TIER <= tier <= MAX_TIER:
        raise ValueError(f"tier must be {MIN_TIER}-{MAX_TIER}, got {tier!r}")
    lower = 0.0 if tier == MIN_TIER else UPPER_BOUNDS[tier - 2]
    upper = math.inf if tier == MAX_TIER else UPPER_BOUNDS[tier - 1]
    return lower, upper


def widened_band(tier: int, margin: float) -> tuple[float, float]:
    """:func:`band` with each boundary moved outwards by ``margin`` (a share)."""
    lower, upper = band(tier)
    return lower * (1.0 - margin), upper * (1.0 + margin)


@attrs.frozen(kw_only=True)
class Hysteresis:
    """The rule's parameters (config ``hysteresis``, ``confirmRounds``, ``ewmaAlpha``)."""

    margin: float = 0.2
    confirm_rounds: int = 2
    alpha: float = 0.3


@attrs.frozen(kw_only=True)
class LinkState:
    """What the rule remembers about one link between rounds."""

    tier: int | None = None
    """The current tier; None until the first successful round."""
    ewma: float | None = None
    """Smoothed RTT (ms) over successful rounds."""
    pending: int | None = None
    """A tier change waiting for confirmation."""
    count: int = 0
    """Consecutive successful rounds that named ``pending``."""

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.tier, "ewma": self.ewma, "pending": self.pending, "count": self.count}

    @classmethod
    def from_json(cls, data: object) -> LinkState | None:
        """The state from :meth:`to_json`'s output; None when it is not valid
        (a hand-edited or foreign file must not poison the tiers)."""
        if not isinstance(data, Mapping):
            return None
        tier, ewma, pending, count = (data.get(k) for k in ("tier", "ewma", "pending", "count"))

        def is_tier(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and MIN_TIER <= v <= MAX_TIER

        if tier is not None and not is_tier(tier):
            return None
        if pending is not None and not is_tier(pending):
            return None
        if ewma is not None and (
            not isinstance(ewma, int | float) or isinstance(ewma, bool) or not math.isfinite(ewma) or ewma < 0
        ):
            return None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return None
        if (tier is None) != (ewma is None):
            return None
        return cls(
            tier=tier,
            ewma=None if ewma is None else float(ewma),
            pending=pending if count > 0 else None,
            count=count if pending is not None else 0,
        )


def update(state: LinkState, rtt_ms: float | None, params: Hysteresis) -> LinkState:
    """The link's state after one round whose mean RTT was ``rtt_ms`` (None: all
    probes lost). Pure: see the module docstring for the rule."""
    if rtt_ms is None or not math.isfinite(rtt_ms) or rtt_ms < 0:
        return state
    if state.tier is None or state.ewma is None:
        return LinkState(tier=tier_for(rtt_ms), ewma=rtt_ms)
    ewma = params.alpha * rtt_ms + (1.0 - params.alpha) * state.ewma
    lower, upper = widened_band(state.tier, params.margin)
    side = _side(ewma, state.tier, lower, upper)
    candidate = tier_for(ewma)
    if side == 0 or _side(rtt_ms, state.tier, lower, upper) != side or candidate == state.tier:
        return LinkState(tier=state.tier, ewma=ewma)
    count = state.count + 1 if candidate == state.pending else 1
    if count >= params.confirm_rounds:
        return LinkState(tier=candidate, ewma=ewma)
    return LinkState(tier=state.tier, ewma=ewma, pending=candidate, count=count)


def _side(rtt_ms: float, tier: int, lower: float, upper: float) -> int:
    """+1 above the (widened) band, -1 below it, 0 inside; tier 1 has no lower end."""
    if rtt_ms > upper:
        return 1
    if tier != MIN_TIER and rtt_ms <= lower:
        return -1
    return 0
