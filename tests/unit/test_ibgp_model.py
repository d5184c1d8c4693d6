"""moenet_ibgp's pure parts: the route-reflector topology, validation of hostile peer lists, the config."""

from __future__ import annotations

from typing import Any

import pytest
from moenet_ibgp.config import IbgpConfig
from moenet_ibgp.model import MAX_NODES, AnswerError, Node, parse_answer, sessions

from moenet_core.config import structure
from moenet_core.intents import IbgpNeighborIntent

V6 = "fd42:4242:1234::"


def entry(node_id: Any, name: Any, *, v4: Any = None, v6: Any = None, **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"nodeId": node_id, "nodeName": name, **kw}
    if v4 is not None:
        e["loopbackIpv4"] = v4
    if v6 is not None:
        e["loopbackIpv6"] = v6
    return e


def node(node_id: int, name: str = "", *, rr: bool = False) -> Node:
    return Node(node_id=node_id, node_name=name or f"n{node_id}", loopback_ipv6=f"{V6}{node_id:x}", is_rr=rr)


def parse(items: Any, *, own_id: int = 3, own_name: str = "hkg1", **kw: Any) -> Any:
    return parse_answer({"ibgpPeers": items, **kw}, own_id=own_id, own_name=own_name)


def roles(fragments: dict[str, IbgpNeighborIntent]) -> dict[str, bool]:
    """key -> rrClient."""
    return {k: v.rr_client for k, v in fragments.items()}


# ------------------------------------------------------------------ topology


def test_full_mesh_without_route_reflectors() -> None:
    nodes = [node(4), node(5), node(1006)]
    assert roles(sessions(nodes, own_is_rr=False)) == {"4": False, "5": False, "1006": False}


def test_a_client_peers_only_with_the_route_reflectors() -> None:
    nodes = [node(4, rr=True), node(5), node(1006), node(2000, rr=True)]
    assert roles(sessions(nodes, own_is_rr=False)) == {"4": False, "2000": False}


def test_a_route_reflector_peers_with_all_and_reflects_for_non_rrs_only() -> None:
    nodes = [node(4, rr=True), node(5), node(1006), node(2000, rr=True)]
    assert roles(sessions(nodes, own_is_rr=True)) == {"4": False, "5": True, "1006": True, "2000": False}


def test_a_lone_route_reflector_reflects_for_everyone() -> None:
    assert roles(sessions([node(4), node(5)], own_is_rr=True)) == {"4": True, "5": True}


def test_the_own_node_is_never_a_session() -> None:
    nodes = [node(3, "hkg1", rr=True), node(4)]
    assert roles(sessions(nodes, own_is_rr=False, own_id=3)) == {"4": False}
    assert roles(sessions(nodes, own_is_rr=True, own_id=3)) == {"4": True}
    # ... and the parser never returns it (its entry only says whether we are an RR).
    answer = parse([entry(3, "hkg1", v6=V6 + "1", isRr=True), entry(4, "tyo1", v6=V6 + "2")])
    assert list(answer.nodes) == [4] and answer.self_is_rr is True


def test_sessions_are_neighbour_intents_with_canonical_loopbacks() -> None:
    answer = parse([entry(1234, "big.node", v4="172.20.42.9", v6="FD42:4242:1234:0::4d2", isRr=True)])
    assert sessions(answer.nodes.values(), own_is_rr=False) == {
        "1234": IbgpNeighborIntent(
            node_id=1234,
            node_name="big.node",
            loopback_ipv4="172.20.42.9",
            loopback_ipv6="fd42:4242:1234::4d2",  # canonical form: a respelling is not a change
            is_rr=True,
            rr_client=False,
        )
    }


@pytest.mark.parametrize("node_id", [1000, 9999, 65536, 4294967295])
def test_large_node_ids(node_id: int) -> None:
    answer = parse([entry(node_id, "far", v6=V6 + "99")])
    assert list(answer.nodes) == [node_id] and not answer.invalid
    assert list(sessions(answer.nodes.values(), own_is_rr=True)) == [str(node_id)]


# ------------------------------------------------------------------ recognising this node


def test_own_role_only_from_a_boolean_is_rr() -> None:
    assert parse([entry(3, "hkg1", isRr=False)]).self_is_rr is False
    assert parse([entry(3, "hkg1")]).self_is_rr is None  # no isRr: the config decides
    assert parse([entry(3, "hkg1", isRr="yes")]).self_is_rr is None
    assert parse([]).self_is_rr is None


def test_own_id_from_the_answer_when_the_config_has_none() -> None:
    items = [entry(3, "other-name", v6=V6 + "1", isRr=True), entry(4, "tyo1", v6=V6 + "2")]
    answer = parse_answer({"node": {"id": 3}, "ibgpPeers": items}, own_id=0, own_name="hkg1")
    assert answer.own_id == 3 and list(answer.nodes) == [4] and answer.self_is_rr is True


def test_recognised_by_name_when_no_id_is_known() -> None:
    items = [entry(3, "HKG1", v6=V6 + "1", isRr=True), entry(4, "tyo1", v6=V6 + "2")]
    answer = parse(items, own_id=0)
    assert answer.own_id == 0 and list(answer.nodes) == [4] and answer.self_is_rr is True


def test_a_differing_answer_node_id_is_a_warning() -> None:
    answer = parse_answer({"node": {"id": 9}, "ibgpPeers": []}, own_id=3, own_name="hkg1")
    assert answer.own_id == 3 and any("differs" in w for w in answer.warnings)


# ------------------------------------------------------------------ hostile lists

HOSTILE: list[tuple[dict[str, Any] | Any, str]] = [
    (entry("5", "x", v6=V6 + "5"), "nodeId: expected an integer"),
    (entry(True, "x", v6=V6 + "5"), "nodeId: expected an integer"),
    (entry(5.5, "x", v6=V6 + "5"), "nodeId: expected an integer"),
    (entry(0, "x", v6=V6 + "5"), "nodeId: must be 1-4294967295"),
    (entry(-1, "x", v6=V6 + "5"), "nodeId: must be 1-4294967295"),
    (entry(4294967296, "x", v6=V6 + "5"), "nodeId: must be 1-4294967295"),
    (entry(5, 'x"; } protocol bgp evil {', v6=V6 + "5"), "nodeName: must be a node name"),
    (entry(5, "a\nb", v6=V6 + "5"), "nodeName: must be a node name"),
    (entry(5, "../../etc", v6=V6 + "5"), "nodeName: must be a node name"),
    (entry(5, "x" * 64, v6=V6 + "5"), "nodeName: must be a node name"),
    (entry(5, "", v6=V6 + "5"), "nodeName: must be a node name"),
    (entry(5, "ünï", v6=V6 + "5"), "nodeName: must be a node name"),
    (entry(5, 5, v6=V6 + "5"), "nodeName"),
    (entry(5, "x"), "needs loopbackIpv6 or loopbackIpv4"),
    (entry(5, "x", v4="", v6=""), "needs loopbackIpv6 or loopbackIpv4"),
    (entry(5, "x", v6="fe80::5"), "loopbackIpv6: must be a unicast address"),
    (entry(5, "x", v6="ff02::5"), "loopbackIpv6: must be a unicast address"),
    (entry(5, "x", v6="::1"), "loopbackIpv6: must be a unicast address"),
    (entry(5, "x", v6="::"), "loopbackIpv6: must be a unicast address"),
    (entry(5, "x", v6="fd42::5%eth0"), "loopbackIpv6: must be a bare IPv6 address"),
    (entry(5, "x", v6="fd42::5/128"), "loopbackIpv6: must be a bare IPv6 address"),
    (entry(5, "x", v6=" fd42::5"), "loopbackIpv6: must be a bare IPv6 address"),
    (entry(5, "x", v6="172.20.42.5"), "loopbackIpv6: must be an IPv6 address"),
    (entry(5, "x", v4="fd42::5"), "loopbackIpv4: must be an IPv4 address"),
    (entry(5, "x", v4="172.20.42.5; }"), "loopbackIpv4: not an IPv4 address"),
    (entry(5, "x", v4="127.0.0.1"), "loopbackIpv4: must be a unicast address"),
    (entry(5, "x", v4="172.020.42.5"), "loopbackIpv4: not an IPv4 address"),
    (entry(5, "x", v4=None, v6=5), "loopbackIpv6"),
    (entry(5, "x", v6=V6 + "5", isRr="true"), "isRr: expected true or false"),
    (entry(5, "x", v6=V6 + "5", isRr=1), "isRr: expected true or false"),
    ("tyo1", "expected an object"),
    (None, "expected an object"),
    ([1, 2], "expected an object"),
    (entry(5, "hkg1", v6=V6 + "5"), "is this node's name, with another id"),
    (entry(5, "x", v6=V6 + "1"), "is this node's own"),
]


@pytest.mark.parametrize(("bad", "expected"), HOSTILE)
def test_a_hostile_entry_is_left_out_with_the_reason(bad: Any, expected: str) -> None:
    good = entry(4, "tyo1", v4="172.20.42.2", v6=V6 + "2", isRr=True)
    answer = parse_answer(
        {"node": {"id": 3, "loopbackIpv6": V6 + "1"}, "ibgpPeers": [good, bad]},
        own_id=3,
        own_name="hkg1",
        own_loopbacks=("172.20.42.1/32", None),
    )
    assert list(answer.nodes) == [4], answer
    [(label, why)] = answer.invalid.items()
    assert label.startswith("ibgpPeers[1]") and expected in why, (label, why)


def test_own_configured_loopback_is_refused_too() -> None:
    answer = parse_answer(
        {"ibgpPeers": [entry(5, "x", v4="172.20.42.1")]},
        own_id=3,
        own_name="hkg1",
        own_loopbacks=("172.20.42.1/32", None),
    )
    assert not answer.nodes and "is this node's own" in answer.invalid["ibgpPeers[0] (node 5)"]


def test_unknown_keys_are_ignored() -> None:
    answer = parse([entry(4, "tyo1", v6=V6 + "2", publicKey="x", endpoint="y")])
    assert list(answer.nodes) == [4] and not answer.invalid


@pytest.mark.parametrize(
    ("dupe", "what"),
    [
        (entry(4, "other", v6=V6 + "9"), "duplicate nodeId 4"),
        (entry(9, "TYO1", v6=V6 + "9"), "duplicate nodeName tyo1"),
        (entry(9, "other", v6=V6 + "2"), f"duplicate loopback {V6}2"),
        (entry(9, "other", v6="FD42:4242:1234:0:0:0:0:2"), f"duplicate loopback {V6}2"),
    ],
)
def test_duplicates_are_all_left_out(dupe: dict[str, Any], what: str) -> None:
    answer = parse([entry(4, "tyo1", v6=V6 + "2"), dupe, entry(5, "sin1", v6=V6 + "5")])
    assert list(answer.nodes) == [5]
    assert len(answer.invalid) == 2 and all(what in why for why in answer.invalid.values()), answer.invalid


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("not an object", "not an object"),
        ({"node": {"id": 3}}, "has no ibgpPeers"),
        ({"ibgpPeers": {"4": {}}}, "is not a list"),
        ({"ibgpPeers": "[]"}, "is not a list"),
        ({"ibgpPeers": [entry(i + 10, f"n{i}", v6=V6 + "5") for i in range(MAX_NODES + 1)]}, "more than"),
    ],
)
def test_an_unusable_answer_is_refused_as_a_whole(data: Any, expected: str) -> None:
    with pytest.raises(AnswerError, match=expected):
        parse_answer(data, own_id=3, own_name="hkg1")


def test_a_null_list_is_an_empty_one() -> None:
    """Go marshals a nil slice as null: no peers (the guard still applies)."""
    answer = parse(None)
    assert answer.nodes == {} and answer.invalid == {}


def test_config_section_checks() -> None:
    cfg, errs = structure(IbgpConfig, {}, "ibgp", [])
    assert cfg == IbgpConfig() and not errs
    cfg, errs = structure(
        IbgpConfig,
        {
            "enabled": "yes",
            "routeReflector": "no",
            "guardMaxShare": 2,
            "guardMinCount": -1,
            "allowRemoval": "x",
        },
        "ibgp",
        [],
    )
    assert cfg is None
    for field in ("enabled", "routeReflector", "guardMaxShare", "guardMinCount", "allowRemoval"):
        assert any(e.startswith(f"ibgp.{field}:") for e in errs), (field, errs)
    cfg, errs = structure(
        IbgpConfig, {"routeReflector": None, "allowRemoval": "0123456789abcdef"}, "ibgp", []
    )
    assert cfg is not None and cfg.route_reflector is None and not errs
