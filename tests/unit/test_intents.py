"""Routing intents (moenet_core.intents): checks that name the field, the JSON form,
and payloads written before intents existed."""

from __future__ import annotations

from typing import Any

import pytest
from moenet_bird.backend import restore_fragments

from moenet_core import intents as I
from moenet_core.intents import (
    BabelInterfaceIntent,
    EbgpPeerIntent,
    IbgpNeighborIntent,
    IbgpOptionsIntent,
    IntentError,
    intent_from_json,
    intent_from_legacy,
    intent_to_json,
)

U1 = "0b5e8a52-3c1e-4e5a-9a51-000000000001"

PEER = EbgpPeerIntent(
    asn=4242420002,
    latency=3,
    bandwidth=25,
    crypto=34,
    name="example",
    interface="dn42-2",
    neighbor_link_local="fe80::2",
    local_link_local="fe80::1234",
    import_limit=100,
)
NEIGHBOR = IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6="fd42:4242:1234::2", rr_client=True)
OPTIONS = IbgpOptionsIntent(enabled=True, route_reflector=False)
BABEL = BabelInterfaceIntent(pattern="igp*", type="tunnel", rxcost=96, rtt_cost=512)


@pytest.mark.parametrize(
    ("cls", "kw", "field"),
    [
        (EbgpPeerIntent, {"asn": 0, "neighbor_ipv4": "172.20.1.1"}, "asn"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv4": "172.20.1.1", "latency": 10}, "latency"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv4": "172.20.1.1", "bandwidth": 20}, "bandwidth"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv4": "172.20.1.1", "crypto": 30}, "crypto"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv4": "fd00::1"}, "neighbor_ipv4"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv6": "fe80::1"}, "neighbor_ipv6"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_link_local": "fe80::1"}, "interface"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv4": "172.20.1.1", "name": "a\nb"}, "name"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv4": "172.20.1.1", "interface": "a b"}, "interface"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv4": "172.20.1.1", "mp_bgp": 1}, "mp_bgp"),
        (EbgpPeerIntent, {"asn": 1, "neighbor_ipv4": "172.20.1.1", "export_limit": 0}, "export_limit"),
        (IbgpNeighborIntent, {"node_id": 0, "node_name": "a", "loopback_ipv4": "172.20.1.1"}, "node_id"),
        (IbgpNeighborIntent, {"node_id": 1, "node_name": "a b", "loopback_ipv4": "172.20.1.1"}, "node_name"),
        (IbgpNeighborIntent, {"node_id": 1, "node_name": "a", "loopback_ipv6": "fe80::1"}, "loopback_ipv6"),
        (
            IbgpNeighborIntent,
            {"node_id": 1, "node_name": "a", "loopback_ipv4": "172.20.1.1", "is_rr": "y"},
            "is_rr",
        ),
        (IbgpOptionsIntent, {"enabled": "no"}, "enabled"),
        (IbgpOptionsIntent, {"route_reflector": 0}, "route_reflector"),
        (BabelInterfaceIntent, {"pattern": "wg*x"}, "pattern"),
        (BabelInterfaceIntent, {"pattern": "wg0", "type": "fast"}, "type"),
        (BabelInterfaceIntent, {"pattern": "wg0", "rxcost": 0}, "rxcost"),
        (BabelInterfaceIntent, {"pattern": "wg0", "rtt_min_ms": 200}, "rttMinMs"),
    ],
)
def test_a_bad_value_fails_where_it_is_built_naming_the_field(
    cls: Any, kw: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        cls(**kw)


def test_an_ebgp_peer_needs_a_neighbour() -> None:
    with pytest.raises(ValueError, match="needs neighborLinkLocal, neighborIpv6 or neighborIpv4"):
        EbgpPeerIntent(asn=4242420002)
    with pytest.raises(ValueError, match="needs loopbackIpv6 or loopbackIpv4"):
        IbgpNeighborIntent(node_id=4, node_name="tyo1")


@pytest.mark.parametrize("intent", [PEER, NEIGHBOR, OPTIONS, BABEL])
def test_json_round_trip(intent: I.RoutingIntent) -> None:
    data = intent_to_json(intent)
    assert data["kind"] == intent.kind
    assert all("_" not in k for k in data), data  # camelCase
    assert intent_from_json(data) == intent
    assert intent_from_json(dict(data)) is not intent  # a new, equal object


def test_json_form_of_a_peer() -> None:
    data = intent_to_json(PEER)
    assert data["neighborLinkLocal"] == "fe80::2" and data["importLimit"] == 100 and data["mpBgp"] is True
    assert data["exportLimit"] is None and "uuid" not in data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**intent_to_json(PEER), "latency": 0}, "peer.latency: must be 1-9"),
        ({**intent_to_json(PEER), "asn": "4242420002"}, "peer.asn: expected an integer"),
        ({**intent_to_json(NEIGHBOR), "rrClient": "yes"}, "peer.rrClient: expected true or false"),
        ({**intent_to_json(BABEL), "rttMinMs": 500}, "rttMinMs: must not exceed rttMaxMs"),
        ({"kind": "staticRoute"}, "peer.kind: must be one of"),
        ({"asn": 1}, "peer.kind: must be one of"),
        ([], "peer: expected an object"),
    ],
)
def test_bad_json_is_an_intent_error_naming_the_field(data: Any, expected: str) -> None:
    with pytest.raises(IntentError, match=expected.replace(".", r"\.")):
        intent_from_json(data, "peer")


# ------------------------------------------------------------------ before intents

OLD_SESSION = {
    "uuid": U1,
    "asn": 4242420002,
    "latency": 3,
    "bandwidth": 25,
    "name": "example",
    "description": "",
    "interface": "dn42-2",
    "neighborLinkLocal": "fe80::2",
    "localLinkLocal": "fe80::1234",
    "importLimit": 100,
}


def test_an_old_session_payload_is_the_same_peer() -> None:
    """The camelCase EbgpPeer payload the sessions plugin declared and saved: the
    uuid (now the fragment key) dropped, the old backend's crypto default (34) kept."""
    assert intent_from_legacy("ebgpPeer", OLD_SESSION, key=U1) == PEER
    assert intent_from_legacy("ebgpPeer", OLD_SESSION, key=U1.upper()) == PEER
    assert intent_from_legacy("ebgpPeer", {k: v for k, v in OLD_SESSION.items() if k != "uuid"}) == PEER
    assert intent_from_legacy("ebgpPeer", {**OLD_SESSION, "crypto": 33}, key=U1).crypto == 33
    with pytest.raises(IntentError, match=r"sessions\[x\]\.uuid: .* differs from the fragment key"):
        intent_from_legacy("ebgpPeer", OLD_SESSION, "sessions[x]", key="x")
    with pytest.raises(IntentError, match=r"s\.latency: must be 1-9"):
        intent_from_legacy("ebgpPeer", {**OLD_SESSION, "latency": 12}, "s")


def test_old_backend_state_converts_per_owner() -> None:
    """The previous BIRD backend saved camelCase payloads per owner; restored as intents."""
    intents, warnings = restore_fragments("sessions", {U1: OLD_SESSION})
    assert (intents, warnings) == ({U1: PEER}, [])
    old_ibgp = {
        "options": {"enabled": True, "routeReflector": False},
        "4": {
            "nodeId": 4,
            "nodeName": "tyo1",
            "loopbackIpv6": "fd42:4242:1234::2",
            "isRr": False,
            "rrClient": True,
        },
        "5": {"nodeId": 5, "nodeName": "bad name", "loopbackIpv6": "fd42:4242:1234::5"},
    }
    intents, warnings = restore_fragments("ibgp", old_ibgp)
    assert intents == {"options": OPTIONS, "4": NEIGHBOR}
    assert len(warnings) == 1 and warnings[0].startswith("ibgp[5]: skipped: ibgp[5].nodeName")
    old_mesh = {"igp*": {"pattern": "igp*", "type": "tunnel", "rxcost": 96, "rttCost": 512}}
    assert restore_fragments("mesh", old_mesh) == ({"igp*": BABEL}, [])
    # The new form, for any owner; an unknown owner's payload without a kind is skipped.
    new = {"a": intent_to_json(PEER), "b": intent_to_json(BABEL)}
    assert restore_fragments("staticpeers", new) == ({"a": PEER, "b": BABEL}, [])
    intents, warnings = restore_fragments("staticpeers", {"c": OLD_SESSION})
    assert intents == {} and warnings == ["staticpeers[c]: saved without a kind, skipped"]
