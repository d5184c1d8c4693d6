"""The mesh answer's validation: every field of every peer, and hostile answers."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from moenet_mesh.model import Endpoint, MeshPayloadError, endpoint_value, parse_mesh

KEY = base64.b64encode(b"\x07" * 32).decode()
KEY2 = base64.b64encode(b"\x08" * 32).decode()
OWN = base64.b64encode(b"\x05" * 32).decode()


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def peer(n: int, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "nodeId": n,
        "nodeName": f"node{n}",
        "loopbackIpv4": f"172.20.42.{n % 250 + 1}",
        "loopbackIpv6": f"fd42:4242:1234::{n:x}",
        "publicKey": key(n % 250 + 1),
        "endpoint": f"192.0.2.{n % 250 + 1}:51823",
        "mtu": 1420,
        "isRr": False,
    }
    d.update(over)
    return d


def answer(*peers: Any, **over: Any) -> dict[str, Any]:
    return {"localNodeId": 3, "localLoopback4": "172.20.42.3", "peers": list(peers), **over}


def test_a_good_answer_with_self_dropped() -> None:
    a = parse_mesh(answer(peer(1), peer(3), peer(1000)), node_id=3)
    assert a.node_id == 3
    assert [p.node_id for p in a.peers] == [1, 1000] and a.invalid == ()
    p = a.peers[0]
    assert (p.name, p.public_key, p.mtu, p.loopback_ipv4, p.is_rr) == (
        "node1",
        key(2),
        1420,
        "172.20.42.2",
        False,
    )
    assert p.endpoint == Endpoint(host="192.0.2.2", port=51823)
    assert a.present == frozenset({1, 1000})


def test_our_id_from_the_answer_when_the_config_has_none() -> None:
    assert parse_mesh(answer(peer(1)), node_id=None).node_id == 3
    with pytest.raises(MeshPayloadError, match="id is unknown"):
        parse_mesh(answer(peer(1), localNodeId=None), node_id=None)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (None, "must be an object"),
        ([], "must be an object"),
        ("peers", "must be an object"),
        ({"localNodeId": 3}, "peers: must be a list"),
        ({"peers": None}, "peers: must be a list"),
        ({"peers": {"1": {}}}, "peers: must be a list"),
        (answer(localNodeId=4), "not this node"),
        (answer(localNodeId="x"), "localNodeId"),
        (answer(localNodeId=-5), "localNodeId"),
        (answer(*[peer(i) for i in range(10, 20)]), "exceed mesh.maxPeers"),
    ],
)
def test_answers_refused_as_a_whole(data: Any, match: str) -> None:
    with pytest.raises(MeshPayloadError, match=match):
        parse_mesh(data, node_id=3, max_peers=5)


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"nodeName": 'x"; } protocol static evil {'}, "nodeName"),
    ({"nodeName": "a\nb"}, "nodeName"),
    ({"nodeName": 7}, "nodeName"),
    ({"nodeName": "x" * 64}, "nodeName"),
    ({"publicKey": None}, "publicKey"),
    ({"publicKey": "not base64!!"}, "publicKey"),
    ({"publicKey": base64.b64encode(b"\x01" * 31).decode()}, "32 bytes"),
    ({"publicKey": base64.b64encode(bytes(32)).decode()}, "all-zero"),
    ({"publicKey": KEY[:-2] + "B="}, "canonical"),
    ({"publicKey": " " + KEY + "\nAllowedIPs = 0.0.0.0/0"}, "publicKey"),
    ({"endpoint": "192.0.2.1:0"}, "port"),
    ({"endpoint": "192.0.2.1:65536"}, "port"),
    ({"endpoint": "192.0.2.1:51820\nendpoint=evil"}, "endpoint"),
    ({"endpoint": "0.0.0.0:51820"}, "unicast"),
    ({"endpoint": "[ff02::1]:51820"}, "unicast"),
    ({"endpoint": "[fe80::1]:51820"}, "link-local"),
    ({"endpoint": "[fe80::1%eth0]:51820"}, "endpoint"),
    ({"endpoint": "bad_host!:1"}, "DNS name"),
    ({"endpoint": "-x.example:1"}, "DNS name"),
    ({"endpoint": "1.2.3:51820"}, "DNS name"),
    ({"endpoint": "[2001:db8::1]x"}, "endpoint"),
    ({"endpoint": ["192.0.2.1"]}, "endpoint"),
    ({"mtu": 100}, "mtu"),
    ({"mtu": 65536}, "mtu"),
    ({"mtu": True}, "mtu"),
    ({"mtu": "1420"}, "mtu"),
    ({"loopbackIpv4": "fd00::1"}, "loopbackIpv4"),
    ({"loopbackIpv4": "172.20.42.0/27"}, "single address"),
    ({"loopbackIpv4": "127.0.0.1"}, "loopbackIpv4"),
    ({"loopbackIpv6": "172.20.42.1"}, "loopbackIpv6"),
    ({"loopbackIpv6": "fe80::1"}, "loopbackIpv6"),
    ({"isRr": "yes"}, "isRr"),
]


@pytest.mark.parametrize(("over", "match"), HOSTILE)
def test_one_hostile_peer_is_invalid_and_the_others_stay(over: dict[str, Any], match: str) -> None:
    a = parse_mesh(answer(peer(1), peer(2, **over), peer(4)), node_id=3)
    assert [p.node_id for p in a.peers] == [1, 4]
    [bad] = a.invalid
    assert bad.node_id == 2 and match in bad.reason, bad.reason
    assert "\n" not in bad.reason
    assert a.present == frozenset({1, 2, 4})


@pytest.mark.parametrize("node_id", [None, 0, -1, 4294967296, True, 1.5, "x", "1e3", [1]])
def test_a_peer_without_a_usable_id_is_unreportable(node_id: Any) -> None:
    a = parse_mesh(answer(peer(1), peer(2, nodeId=node_id)), node_id=3)
    assert [p.node_id for p in a.peers] == [1]
    [bad] = a.invalid
    assert bad.node_id is None and "nodeId" in bad.reason


def test_not_an_object_peer_and_string_ids() -> None:
    a = parse_mesh(answer(peer(1), "x", 5, None, peer(7, nodeId="7")), node_id=3)
    assert [p.node_id for p in a.peers] == [1, 7]
    assert len(a.invalid) == 3 and all(i.node_id is None for i in a.invalid)


def test_duplicates_make_every_entry_invalid() -> None:
    a = parse_mesh(answer(peer(1), peer(1, publicKey=KEY2), peer(2), peer(4, publicKey=key(3))), node_id=3)
    reasons = {i.node_id: i.reason for i in a.invalid}
    assert "listed 2 times" in reasons[1]
    assert "for another peer" in reasons[2] and "for another peer" in reasons[4]
    assert a.peers == () and len(a.invalid) == 3


def test_a_peer_claiming_our_own_key_is_invalid() -> None:
    a = parse_mesh(answer(peer(1, publicKey=OWN), peer(2)), node_id=3, own_public_key=OWN)
    assert [p.node_id for p in a.peers] == [2]
    assert a.invalid[0].node_id == 1 and "own mesh key" in a.invalid[0].reason


def test_optional_fields() -> None:
    a = parse_mesh(
        answer(
            {"nodeId": 9, "publicKey": KEY},
            peer(10, endpoint="", mtu=0, loopbackIpv4=None, loopbackIpv6="", nodeName=None, isRr=None),
        ),
        node_id=3,
    )
    for p in a.peers:
        assert (p.endpoint, p.mtu, p.loopback_ipv4, p.loopback_ipv6, p.name, p.is_rr) == (
            None,
            None,
            None,
            None,
            "",
            False,
        )


@pytest.mark.parametrize(
    ("text", "host", "port", "rendered"),
    [
        ("192.0.2.1:51823", "192.0.2.1", 51823, "192.0.2.1:51823"),
        ("192.0.2.1", "192.0.2.1", None, "192.0.2.1:51820"),
        ("[2001:db8::1]:7", "2001:db8::1", 7, "[2001:db8::1]:7"),
        ("[2001:DB8:0::1]", "2001:db8::1", None, "[2001:db8::1]:51820"),
        ("2001:db8::1", "2001:db8::1", None, "[2001:db8::1]:51820"),
        ("Node1.Example.NET.", "node1.example.net", None, "node1.example.net:51820"),
        ("jp1.moenet.work:20001", "jp1.moenet.work", 20001, "jp1.moenet.work:20001"),
    ],
)
def test_endpoint_forms(text: str, host: str, port: int | None, rendered: str) -> None:
    ep = endpoint_value(text, "endpoint")
    assert ep is not None and (ep.host, ep.port) == (host, port)
    assert ep.render(51820) == rendered
