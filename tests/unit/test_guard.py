"""The core's mass-removal guard (moenet_core.guard), pure: thresholds, digest, override, display."""

from __future__ import annotations

import pytest

from moenet_core.guard import GuardPolicy, GuardVerdict, GuardWindow, evaluate, numeric_order, removal_digest


def test_refuses_a_mass_removal_and_says_what() -> None:
    known = [str(i) for i in range(4, 10)]  # 6 nodes
    v = evaluate(known[:4], known, noun="iBGP nodes")  # 4 of 6: more than half and more than 2
    assert v.refused and not v.overridden and v.configured == 6
    assert v.reason == (
        "the answer would remove 4 of 6 iBGP nodes (limit: more than 50% and more than 2); removals withheld"
    )
    assert v.status_info() == {
        "refused": True,
        "overridden": False,
        "removals": 4,
        "rebuilds": 0,
        "configured": 6,
        "window": {"removed": 0, "baseline": 0},
        "digest": removal_digest(known[:4]),
        "reason": v.reason,
        "withheld": known[:4],
        "withheldRebuilds": [],
    }


def test_the_default_noun() -> None:
    assert "remove 3 of 3 items (" in evaluate("abc", "abc").reason


@pytest.mark.parametrize(
    ("removed", "total", "refused"),
    [(0, 6, False), (2, 2, False), (3, 6, False), (3, 5, True), (3, 3, True), (1, 1, False), (4, 7, True)],
)
def test_thresholds(removed: int, total: int, refused: bool) -> None:
    known = [str(i) for i in range(total)]
    assert evaluate(known[:removed], known).refused is refused


def test_policy_and_small_nodes() -> None:
    assert not evaluate(["a", "b"], ["a", "b"]).refused  # 2 removals never exceed min_count
    assert evaluate(["a", "b"], ["a", "b"], GuardPolicy(min_count=1)).refused
    assert not evaluate(["a", "b", "c"], list("abcdefg")).refused  # 3 of 7
    assert evaluate(list("abcd"), list("abcdefg")).refused  # 4 of 7
    known = ["4", "5", "6", "7"]
    assert not evaluate(["4", "5", "6"], known, GuardPolicy(max_share=0.8, min_count=2)).refused
    assert evaluate(["4", "5"], known, GuardPolicy(max_share=0.25, min_count=1)).refused


def test_removals_count_towards_the_total() -> None:
    """A removal the configured set no longer lists still counts (it is configured on the node)."""
    v = evaluate(["a", "b", "c"], [])
    assert v.refused and v.configured == 3


def test_a_passing_set_has_no_reason() -> None:
    v = evaluate(["a"], list("abcd"))
    assert v == GuardVerdict(refused=False, removals=("a",), configured=4, digest=removal_digest(["a"]))
    assert v.status_info()["withheld"] == [] and v.status_info()["reason"] == ""


def test_override_matches_only_that_set() -> None:
    known = ["4", "5", "6", "7"]
    digest = removal_digest(["4", "5", "6"])
    v = evaluate(["6", "5", "4"], known, override=digest)
    assert not v.refused and v.overridden and v.digest == digest
    assert v.reason.startswith("the answer would remove 3 of 4 items")
    assert v.status_info()["withheld"] == []
    assert evaluate(["4", "5", "6", "7"], known, override=digest).refused  # another set: no
    assert evaluate(["4", "5", "6"], known, override="0" * 16).refused


def test_digest_is_order_independent_and_short() -> None:
    assert removal_digest(["b", "a"]) == removal_digest(("a", "b")) == removal_digest({"a", "b"})
    assert len(removal_digest(["a"])) == 16 and removal_digest(["a"]) != removal_digest(["b"])
    assert removal_digest(["a", "a"]) != removal_digest(["a"])  # a set is meant; evaluate de-duplicates


def test_display_order() -> None:
    ids = ["1000", "9", "10", "9"]
    plain = evaluate(ids, ids, GuardPolicy(min_count=0, max_share=0.0))
    numeric = evaluate(ids, ids, GuardPolicy(min_count=0, max_share=0.0), sort_key=numeric_order)
    assert plain.removals == ("10", "1000", "9")
    assert numeric.removals == ("9", "10", "1000") and numeric.status_info()["withheld"] == [
        "9",
        "10",
        "1000",
    ]
    assert plain.digest == numeric.digest  # the order is only for display


def test_a_refusal_is_new_only_when_the_set_changes() -> None:
    refused = evaluate(["a", "b", "c"], ["a", "b", "c", "d"])
    assert refused.refused
    assert refused.newly_refused(None)
    assert not refused.newly_refused(refused)  # the same set again: said already
    fine = evaluate([], ["a"])
    assert not fine.newly_refused(refused) and refused.newly_refused(fine)  # cleared, then again
    other = evaluate(["a", "b", "d"], ["a", "b", "c", "d"])
    assert other.newly_refused(refused)
    allowed = evaluate(["a", "b", "c"], ["a", "b", "c", "d"], override=refused.digest)
    assert refused.newly_refused(allowed)  # the override was withdrawn


# ------------------------------------------------------------------ issue 14: window, rebuilds


def test_the_window_counts_removals_against_its_start() -> None:
    """5, then 2, 2 and 1 of 10: each step passes alone, not within one window."""
    from moenet_core.guard import GuardMemory

    policy = GuardPolicy(window=3600)
    known = [str(i) for i in range(10)]
    memory, now = GuardMemory(), 1000.0
    v = evaluate(known[:5], known, policy, window=memory.window(now, 3600))
    assert not v.refused
    memory = memory.record(v, now=now, seconds=3600)
    assert memory.window(now + 60, 3600).baseline == 10
    left = known[5:]
    v = evaluate(left[:2], left, policy, window=memory.window(now + 60, 3600))
    assert v.refused and (v.recent, v.baseline) == (5, 10)
    assert "7 of the 10 items" in v.reason and "per 1h" in v.reason
    assert not evaluate(left[:2], left, policy).refused  # alone: 2 of 5
    assert memory.record(v, now=now + 60, seconds=3600) == memory  # a refused set is not remembered
    # After the window, the same set passes.
    assert not evaluate(left[:2], left, policy, window=memory.window(now + 3601, 3600)).refused
    # A removal retried (not yet gone) is not counted twice.
    assert not evaluate(known[:5], known, policy, window=memory.window(now + 60, 3600)).refused


def test_the_override_matches_the_window_refusal_and_restarts_the_window() -> None:
    from moenet_core.guard import GuardMemory, GuardWindow

    window = GuardWindow(removed=frozenset("vwxyz"), baseline=10, seconds=3600)
    v = evaluate(["a", "b"], list("abcde"), window=window)
    assert v.refused and v.digest == removal_digest(["a", "b"])
    allowed = evaluate(["a", "b"], list("abcde"), window=window, override=v.digest)
    assert allowed.overridden and not allowed.refused
    memory = GuardMemory().record(evaluate(list("vwxyz"), list("abcdevwxyz")), now=0, seconds=3600)
    assert memory.removals and memory.record(allowed, now=1, seconds=3600) == GuardMemory()


def test_the_memory_forgets_old_and_future_records() -> None:
    from moenet_core.guard import GuardMemory, RemovalRecord

    m = GuardMemory(
        removals=(
            RemovalRecord(at=0, items=("a",), configured=4),
            RemovalRecord(at=5000, items=("b",), configured=3),
            RemovalRecord(at=99999, items=("c",), configured=2),  # the clock was set back
        )
    )
    assert [r.items for r in m.recent(4000, 3600)] == [("b",)]
    assert m.window(4000, 3600).baseline == 3 and m.window(4000, 0) == GuardWindow(seconds=0)
    assert m.record(None, now=4000, seconds=3600).removals == m.recent(4000, 3600)


def test_rebuilds_count_with_removals_and_keep_the_removal_digest() -> None:
    known = list("abcdef")
    v = evaluate([], known, rebuilds=list("abcd"), noun="tunnels")
    assert v.refused and v.rebuilds == tuple("abcd") and v.removals == ()
    assert v.reason.startswith("the answer would rebuild (re-key or recreate) 4 of 6 tunnels")
    assert v.status_info()["withheldRebuilds"] == list("abcd")
    both = evaluate(["a", "b"], known, rebuilds=["c", "d"])
    assert both.refused and "remove 2 and rebuild (re-key or recreate) 2 of 6" in both.reason
    assert not evaluate(["a"], known, rebuilds=["c"]).refused
    # Rebuilds enter the digest tagged: a removal-only set keeps its old digest.
    assert evaluate(["a", "b", "c", "d"], known).digest == removal_digest(list("abcd"))
    assert both.digest != removal_digest(list("abcd"))
    assert evaluate([], known, rebuilds=list("abcd"), override=v.digest).overridden


def test_format_seconds() -> None:
    from moenet_core.guard import format_seconds

    assert [format_seconds(s) for s in (3600, 5400, 90, 0, 86400)] == ["1h", "1h30m", "1m30s", "0s", "24h"]


def test_policy_from_a_plugin_section() -> None:
    import types

    from moenet_core import GuardPolicy

    section = types.SimpleNamespace(guard_max_share=0.25, guard_min_count=3, guard_window=60.0)
    assert GuardPolicy.from_section(section) == GuardPolicy(max_share=0.25, min_count=3, window=60.0)
    no_window = types.SimpleNamespace(guard_max_share=0.5, guard_min_count=2)
    assert GuardPolicy.from_section(no_window) == GuardPolicy(max_share=0.5, min_count=2, window=0.0)
    assert GuardPolicy.from_section(types.SimpleNamespace(interval=5)) is None
    assert GuardPolicy.from_section(None) is None
