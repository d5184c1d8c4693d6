"""The core's mass-removal guard (moenet_core.guard), pure: thresholds, digest, override, display."""

from __future__ import annotations

import pytest

from moenet_core.guard import GuardPolicy, GuardVerdict, evaluate, numeric_order, removal_digest


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
        "configured": 6,
        "digest": removal_digest(known[:4]),
        "reason": v.reason,
        "withheld": known[:4],
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
