"""DN42 latency tiers and their hysteresis (pure functions of ``moenet_rtt.tier``)."""

from __future__ import annotations

import json
import math

import pytest
from moenet_rtt.tier import UPPER_BOUNDS, Hysteresis, LinkState, band, tier_for, update, widened_band

DEFAULT = Hysteresis()  # margin 0.2, 2 confirm rounds, alpha 0.3


def run(state: LinkState, rtts: list[float | None], params: Hysteresis = DEFAULT) -> list[LinkState]:
    """Every state after each round."""
    out = []
    for rtt in rtts:
        state = update(state, rtt, params)
        out.append(state)
    return out


@pytest.mark.parametrize(
    ("rtt", "tier"),
    [
        (0.0, 1),
        (0.05, 1),
        (2.7, 1),
        (2.7001, 2),
        (7.3, 2),
        (7.31, 3),
        (20.0, 3),
        (20.01, 4),
        (55.0, 4),
        (55.01, 5),
        (148.0, 5),
        (148.01, 6),
        (403.0, 6),
        (403.01, 7),
        (1097.0, 7),
        (1097.01, 8),
        (2981.0, 8),
        (2981.01, 9),
        (1e9, 9),
    ],
)
def test_tier_boundaries_are_inclusive_upper_bounds(rtt, tier):
    assert tier_for(rtt) == tier


def test_bounds_are_e_to_the_tier():
    assert len(UPPER_BOUNDS) == 8
    for x, bound in enumerate(UPPER_BOUNDS, start=1):
        assert abs(bound / math.exp(x) - 1) < 0.015, (x, bound)
    with pytest.raises(ValueError):
        tier_for(math.nan)


def test_bands_and_widening():
    assert band(1) == (0.0, 2.7)
    assert band(4) == (20.0, 55.0)
    assert band(9) == (2981.0, math.inf)
    lo, hi = widened_band(4, 0.2)
    assert lo == pytest.approx(16.0) and hi == pytest.approx(66.0)
    with pytest.raises(ValueError):
        band(0)
    with pytest.raises(ValueError):
        band(10)


def test_first_success_sets_the_tier_directly():
    [s] = run(LinkState(), [100.0])
    assert (s.tier, s.ewma, s.pending, s.count) == (5, 100.0, None, 0)
    # Even a value far from anything: no hysteresis before there is a tier.
    assert update(LinkState(), 1.0, DEFAULT).tier == 1


def test_a_lost_round_changes_nothing():
    start = LinkState(tier=3, ewma=10.0)
    assert update(start, None, DEFAULT) is start
    assert update(LinkState(), None, DEFAULT) == LinkState()  # never measured: still no tier
    pending = LinkState(tier=3, ewma=30.0, pending=4, count=1)
    assert update(pending, None, DEFAULT) is pending  # neither confirms nor cancels


def test_one_noisy_round_does_not_flap():
    # A 10 ms link (tier 3) sees one 200 ms round, then is back to normal.
    states = run(LinkState(tier=3, ewma=10.0), [200.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0])
    assert [s.tier for s in states] == [3] * 8
    # The spike did push the smoothed RTT out (a change was pending), and the
    # next normal round cancelled it even though the EWMA was still out.
    assert states[0].ewma == pytest.approx(67.0) and states[0].pending == 5
    assert states[1].ewma > 24.0 and states[1].pending is None and states[1].count == 0


def test_a_round_within_the_margin_does_not_move_the_tier():
    # 25 ms on a 20-ish ms link is tier 4 by itself, but inside tier 3's widened band.
    states = run(LinkState(tier=3, ewma=18.0), [25.0, 23.0, 24.0, 23.5, 22.0, 21.0])
    assert all(s.tier == 3 and s.pending is None for s in states)


def test_a_sustained_change_moves_after_confirm_rounds():
    states = run(LinkState(tier=3, ewma=10.0), [100.0] * 6)
    tiers = [s.tier for s in states]
    # 37 (pending 4), 55.9 (pending 5, count restarts), 69.1 (5 confirmed).
    assert tiers[:3] == [3, 3, 5], [(s.tier, s.ewma, s.pending, s.count) for s in states]
    assert states[0].pending == 4 and states[1].pending == 5 and states[1].count == 1
    assert tiers[3:] == [5, 5, 5]


def test_confirm_rounds_and_alpha_are_honoured():
    fast = Hysteresis(margin=0.2, confirm_rounds=1, alpha=1.0)
    assert update(LinkState(tier=3, ewma=10.0), 100.0, fast).tier == 5
    slow = Hysteresis(margin=0.2, confirm_rounds=3, alpha=1.0)
    assert [s.tier for s in run(LinkState(tier=3, ewma=10.0), [100.0] * 3, slow)] == [3, 3, 5]


def test_lost_rounds_between_confirmations_keep_the_count():
    params = Hysteresis(margin=0.2, confirm_rounds=2, alpha=1.0)
    states = run(LinkState(tier=3, ewma=10.0), [100.0, None, None, 100.0], params)
    assert [s.tier for s in states] == [3, 3, 3, 5]


def test_moving_down_and_tier_one_has_no_lower_end():
    params = Hysteresis(margin=0.2, confirm_rounds=2, alpha=1.0)
    states = run(LinkState(tier=3, ewma=10.0), [1.0, 1.0], params)
    assert [s.tier for s in states] == [3, 1]
    # 0 ms on tier 1 is inside the band: nothing pending.
    assert update(LinkState(tier=1, ewma=1.0), 0.0, params) == LinkState(tier=1, ewma=0.0)


def test_a_different_candidate_restarts_the_count():
    params = Hysteresis(margin=0.2, confirm_rounds=2, alpha=1.0)
    states = run(LinkState(tier=3, ewma=10.0), [100.0, 40.0, 40.0], params)
    assert [(s.tier, s.pending, s.count) for s in states] == [(3, 5, 1), (3, 4, 1), (4, None, 0)]


def test_state_json_round_trip():
    for state in (
        LinkState(),
        LinkState(tier=4, ewma=33.25),
        LinkState(tier=4, ewma=70.5, pending=5, count=1),
    ):
        assert LinkState.from_json(json.loads(json.dumps(state.to_json()))) == state


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"tier": 0, "ewma": 1.0, "pending": None, "count": 0},
        {"tier": 10, "ewma": 1.0, "pending": None, "count": 0},
        {"tier": True, "ewma": 1.0, "pending": None, "count": 0},
        {"tier": 3, "ewma": "10", "pending": None, "count": 0},
        {"tier": 3, "ewma": -1.0, "pending": None, "count": 0},
        {"tier": 3, "ewma": None, "pending": None, "count": 0},
        {"tier": 3, "ewma": 10.0, "pending": 12, "count": 1},
        {"tier": 3, "ewma": 10.0, "pending": None, "count": -1},
    ],
)
def test_invalid_saved_state_is_refused(bad):
    assert LinkState.from_json(bad) is None
