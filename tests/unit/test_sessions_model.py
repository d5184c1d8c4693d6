"""Parsing and validation of CP session lists (moenet_sessions.model)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from moenet_sessions.model import (
    Invalid,
    Session,
    SessionPolicy,
    SessionsPayloadError,
    bandwidth_community,
    derive_interface,
    parse_sessions,
)

from moenet_core.models import SessionStatus

KEY = base64.b64encode(b"\x01" * 32).decode()
PSK = base64.b64encode(b"\x02" * 32).decode()


def sess(n: int = 1, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "uuid": f"00000000-0000-4000-8000-{n:012d}",
        "asn": 4242420000 + n,
        "name": f"peer {n}",
        "status": 1,
        "type": "wireguard",
        "interface": f"wg{n}",
        "endpoint": f"198.51.100.{n}:51820",
        "credential": KEY,
        "ipv6LinkLocal": f"fe80::{n}",
        "port": 20000 + n,
        "extensions": ["mp-bgp", "extended-nexthop"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def one(item: dict[str, Any]) -> Session | Invalid:
    ok, bad = parse_sessions([item])
    return (ok + bad)[0]


@pytest.mark.parametrize("wrap", [lambda x: {"bgpSessions": x}, lambda x: {"sessions": x}, lambda x: x])
def test_accepted_shapes(wrap: Any) -> None:
    ok, bad = parse_sessions(wrap([sess(1), sess(2)]))
    assert [s.uuid for s in ok] == [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
    ]
    assert bad == []
    s = ok[0]
    assert s.asn == 4242420001 and s.status is SessionStatus.ACTIVE and s.public_key == KEY
    assert s.listen_port == 20001 and s.endpoint == "198.51.100.1:51820" and s.mtu == 1420
    assert s.extensions == ("extended-nexthop", "mp-bgp")


@pytest.mark.parametrize(
    "data",
    [
        None,
        "x",
        3,
        {},
        {"data": []},
        {"bgpSessions": None},
        {"sessions": {"a": 1}},
        {"sessions": [], "bgpSessions": []},
    ],
)
def test_bad_shapes_refused_as_a_whole(data: Any) -> None:
    with pytest.raises(SessionsPayloadError):
        parse_sessions(data)


def test_empty_list_is_an_empty_answer() -> None:
    assert parse_sessions({"bgpSessions": []}) == ([], [])


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"uuid": "not-a-uuid"}, "uuid"),
        ({"uuid": 5}, "uuid"),
        ({"uuid": "00000000-0000-4000-8000-000000000001\n"}, "uuid"),
        ({"asn": 0}, "asn"),
        ({"asn": -1}, "asn"),
        ({"asn": 2**32}, "asn"),
        ({"asn": 23456}, "asn"),
        ({"asn": 64500}, "asn"),
        ({"asn": True}, "asn"),
        ({"asn": "4242420001; drop"}, "asn"),
        ({"status": 7}, "status"),
        ({"status": "1"}, "status"),
        ({"status": True}, "status"),
        ({"type": "gre"}, "type"),
        ({"type": "ip6gre"}, "type"),
        ({"type": "vxlan"}, "type"),
        ({"interface": "wg0\n"}, "interface"),
        ({"interface": "}; protocol bgp"}, "interface"),
        ({"interface": "-wg0"}, "interface"),
        ({"interface": "a" * 16}, "interface"),
        ({"interface": 12}, "interface"),
        ({"endpoint": "1.2.3.4"}, "endpoint"),
        ({"endpoint": "1.2.3.4:0"}, "endpoint"),
        ({"endpoint": "1.2.3.4:70000"}, "endpoint"),
        ({"endpoint": "fd00::1:51820"}, "endpoint"),
        ({"endpoint": "[nothex]:51820"}, "endpoint"),
        ({"endpoint": 'host";rm:1'}, "endpoint"),
        ({"credential": "short"}, "credential"),
        ({"credential": '{"public_key": '}, "credential"),
        ({"credential": {"publicKey": KEY, "preshared_key": "bad"}}, "credential.preshared_key"),
        ({"credential": {"public_key": KEY, "publicKey": PSK}}, "credential"),
        ({"credential": {}}, "credential.public_key"),
        ({"credential": 42}, "credential"),
        ({"credential": {"public_key": KEY, "listen_port": 1}, "port": 2}, "port"),
        ({"ipv4": "1.2.3.4/24"}, "ipv4"),
        ({"ipv4": "fd00::1"}, "ipv4"),
        ({"ipv6": "fe80::1"}, "ipv6"),
        ({"ipv6": "fd00::1%eth0"}, "ipv6"),
        ({"ipv6LinkLocal": "fd00::1"}, "ipv6LinkLocal"),
        ({"ipv6LinkLocal": ["fe80::1"]}, "ipv6LinkLocal"),
        ({"mtu": 1000}, "mtu"),
        ({"mtu": 9001}, "mtu"),
        ({"mtu": 1.5}, "mtu"),
        ({"mtu": 1400, "credential": {"public_key": KEY, "mtu": 1300}}, "mtu"),
        ({"port": -1}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "51820"}, "port"),
        ({"name": "a\nb"}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"name": {"a": 1}}, "name"),
        ({"description": "tab\there"}, "description"),
        ({"description": "line\u2028sep"}, "description"),
        ({"extensions": "mp-bgp"}, "extensions"),
        ({"extensions": [1]}, "extensions[0]"),
        ({"ipv4": "172.20.9.9", "localIpv4": "fd00::1"}, "localIpv4"),
        ({"ipv4": "172.20.9.9", "localIpv4": "172.20.0.1/24"}, "localIpv4"),
        ({"ipv4": "172.20.9.9", "localIpv4": "172.20.9.9"}, "localIpv4"),
        ({"localIpv4": "172.20.0.1"}, "localIpv4"),  # no ipv4 neighbour to pair it with
        ({"ipv6": "fd00::9", "localIpv6": "fe80::5"}, "localIpv6"),
        ({"ipv6": "fd00::9", "localIpv6": "fd00::9"}, "localIpv6"),
        ({"localIpv6": "fd00::5"}, "localIpv6"),
        ({"ipv6": "fd00::9", "localIpv6": "ff02::1"}, "localIpv6"),
        ({"policy": 3}, "policy"),
        ({"policy": ["importLimit"]}, "policy"),
        ({"policy": "own-only"}, "policy"),
        ({"policy": '{"importLimit": '}, "policy"),
        ({"policy": {"importLimit": -1}}, "policy.importLimit"),
        ({"policy": {"importLimit": "100"}}, "policy.importLimit"),
        ({"policy": {"importLimit": True}}, "policy.importLimit"),
        ({"policy": {"importLimit": 1.5}}, "policy.importLimit"),
        ({"policy": {"exportLimit": 10**7}}, "policy.exportLimit"),
        ({"policy": {"receiveLimit": "lots"}}, "policy.receiveLimit"),
        ({"policy": {"bandwidth": -5}}, "policy.bandwidth"),
        ({"policy": {"bandwidth": float("nan")}}, "policy.bandwidth"),
        ({"policy": {"bandwidth": float("inf")}}, "policy.bandwidth"),
        ({"policy": {"bandwidth": 10**9}}, "policy.bandwidth"),
        ({"policy": {"bandwidth": "fast"}}, "policy.bandwidth"),
        ({"policy": {"bandwidth": "1G; drop"}}, "policy.bandwidth"),
        ({"policy": {"bandwidth": True}}, "policy.bandwidth"),
        ({"policy": {"bandwidth": 100, "bandwidthCommunity": 24}}, "policy.bandwidth"),
        ({"policy": {"bandwidthCommunity": 30}}, "policy.bandwidthCommunity"),
        ({"policy": {"bandwidthCommunity": "24"}}, "policy.bandwidthCommunity"),
    ],
)
def test_hostile_fields_are_invalid_with_path(over: dict[str, Any], field: str) -> None:
    ok, bad = parse_sessions({"bgpSessions": [sess(1, **over), sess(2)]})
    assert [s.asn for s in ok] == [4242420002]  # the valid sibling survives
    assert len(bad) == 1
    assert f".{field}:" in bad[0].reason or f".{field} " in bad[0].reason, bad[0].reason


def test_non_object_element_and_garbage_do_not_break_siblings() -> None:
    ok, bad = parse_sessions([1, None, "x", [], sess(3)])
    assert len(ok) == 1 and len(bad) == 4
    assert all(b.uuid is None and "must be an object" in b.reason for b in bad)


def test_invalid_keeps_uuid_and_status_for_reporting() -> None:
    inv = one(sess(1, asn=0, status=5))
    assert isinstance(inv, Invalid)
    assert (
        inv.uuid == "00000000-0000-4000-8000-000000000001" and inv.status is SessionStatus.QUEUED_FOR_DELETE
    )


def test_free_text_quotes_are_accepted_verbatim() -> None:
    s = one(sess(1, name='peer "x" }; protocol bgp evil {', description="\\"))
    assert isinstance(s, Session) and s.name.startswith('peer "x"')


@pytest.mark.parametrize(
    "cred",
    [
        KEY,
        f"  {KEY}\n",
        json.dumps({"public_key": KEY, "preshared_key": PSK, "listen_port": 20001, "mtu": 1400}),
        {"publicKey": KEY, "presharedKey": PSK, "listenPort": 20001, "mtu": 1400},
        {"public_key": KEY, "publicKey": KEY},
    ],
)
def test_credential_forms(cred: Any) -> None:
    s = one(sess(1, credential=cred))
    assert isinstance(s, Session), s
    assert s.public_key == KEY and s.listen_port == 20001
    if not isinstance(cred, str) or cred.startswith("{"):
        assert s.preshared_key in (PSK, None)


def test_credential_unknown_keys_warn() -> None:
    s = one(sess(1, credential={"public_key": KEY, "colour": "red"}, foo=1))
    assert isinstance(s, Session)
    assert any("colour" in w for w in s.warnings) and any("'foo'" in w for w in s.warnings)


def test_port_sources() -> None:
    cred = {"public_key": KEY, "listen_port": 20001}
    assert one(sess(1, credential=cred, port=None)).listen_port == 20001  # type: ignore[union-attr]
    assert one(sess(1, credential=cred, port=0)).listen_port == 20001  # type: ignore[union-attr]
    assert one(sess(1, credential=cred, port=20001, localPort=20001)).listen_port == 20001  # type: ignore[union-attr]
    assert isinstance(one(sess(1, localPort=20002)), Invalid)
    s = one(sess(1, port=None))
    assert isinstance(s, Session) and s.listen_port is None and s.endpoint  # initiator only
    inv = one(sess(1, port=None, endpoint=None))
    assert isinstance(inv, Invalid) and "neither an endpoint nor a listen port" in inv.reason


def test_endpoint_forms_and_precedence() -> None:
    for raw, canon in [
        ("[FD00::0001]:51820", "[fd00::1]:51820"),
        ("Peer.Example.COM:1234", "peer.example.com:1234"),
        ("10.0.0.1:01", "10.0.0.1:1"),
    ]:
        s = one(sess(1, endpoint=raw))
        assert isinstance(s, Session) and s.endpoint == canon
    s = one(sess(1, credential={"public_key": KEY, "endpoint": "10.9.9.9:1"}))
    assert isinstance(s, Session) and s.endpoint == "198.51.100.1:51820" and s.warnings
    s = one(sess(1, endpoint=None, credential={"public_key": KEY, "endpoint": "10.9.9.9:1"}))
    assert isinstance(s, Session) and s.endpoint == "10.9.9.9:1"


def test_addresses_normalised() -> None:
    s = one(sess(1, ipv4="172.20.0.1/32", ipv6="FD00:0::1/128", ipv6LinkLocal="fe80::0001/64"))
    assert isinstance(s, Session)
    assert (s.ipv4, s.ipv6, s.ipv6_link_local) == ("172.20.0.1", "fd00::1", "fe80::1")
    inv = one(sess(1, ipv6LinkLocal=None))
    assert isinstance(inv, Invalid) and "no neighbour address" in inv.reason


def test_mtu_default_and_credential_mtu() -> None:
    assert one(sess(1, mtu=0)).mtu == 1420  # type: ignore[union-attr]
    assert one(sess(1, credential={"public_key": KEY, "mtu": 1380})).mtu == 1380  # type: ignore[union-attr]


def test_extensions_unknown_warn_absent_none() -> None:
    s = one(sess(1, extensions=["mp-bgp", "bfd"]))
    assert isinstance(s, Session) and s.extensions == ("mp-bgp",) and any("bfd" in w for w in s.warnings)
    s = one(sess(1, extensions=...))
    assert isinstance(s, Session) and s.extensions is None


def test_ok_asns() -> None:
    for asn in (4242420001, 4201270001, 64512, 65534, 13335, 4200000000, "4242420001"):
        assert isinstance(one(sess(1, asn=asn)), Session), asn


def test_type_absent_is_wireguard() -> None:
    assert isinstance(one(sess(1, type=None)), Session)


def test_derived_interface_deterministic_and_valid() -> None:
    s = one(sess(1, interface=None))
    assert isinstance(s, Session) and s.interface_derived
    assert s.interface == derive_interface(4242420001, s.uuid) == one(sess(1, interface="")).interface  # type: ignore[union-attr]
    assert s.interface.startswith("wg0001-") and len(s.interface) == 13
    other = one(sess(1, interface=None, uuid="00000000-0000-4000-8000-0000000000ff"))
    assert isinstance(other, Session) and other.interface != s.interface


def test_uuid_canonicalised() -> None:
    s = one(sess(1, uuid="ABCDEF00-0000-4000-8000-000000000001"))
    assert isinstance(s, Session) and s.uuid == "abcdef00-0000-4000-8000-000000000001"


def test_duplicates() -> None:
    a, b = sess(1), sess(2)
    ok, bad = parse_sessions([a, dict(b, uuid=a["uuid"]), sess(3)])
    assert [s.asn for s in ok] == [4242420003]
    assert len(bad) == 2 and all("appears 2 times" in i.reason for i in bad)

    ok, bad = parse_sessions([a, dict(b, interface="wg1"), sess(3)])
    assert len(ok) == 1 and len(bad) == 2 and all("'wg1' is used by another" in i.reason for i in bad)

    ok, bad = parse_sessions([a, dict(b, port=20001), sess(3)])
    assert len(ok) == 1 and len(bad) == 2 and all("listen port 20001" in i.reason for i in bad)


def test_duplicate_interface_allowed_for_a_session_being_deleted() -> None:
    ok, bad = parse_sessions([sess(1, status=5), sess(2, interface="wg1", port=20001, status=4)])
    assert len(ok) == 2 and bad == []


def test_local_tunnel_addresses() -> None:
    s = one(
        sess(1, ipv4="172.20.9.9", localIpv4="172.20.0.77/32", ipv6="fd00:9::9", localIpv6="FD00:1::0077")
    )
    assert isinstance(s, Session)
    assert (s.local_ipv4, s.local_ipv6) == ("172.20.0.77", "fd00:1::77")
    s = one(sess(1, ipv4="172.20.9.9", localIpv4="", localIpv6=None))
    assert isinstance(s, Session) and s.local_ipv4 is None and s.local_ipv6 is None
    assert not any("localIpv" in w for w in s.warnings)  # known fields, not "unknown"


def test_policy_absent_or_empty_is_the_node_default() -> None:
    for policy in (..., None, "", {}, "{}"):
        s = one(sess(1, policy=policy))
        assert isinstance(s, Session) and s.policy == SessionPolicy(), policy


def test_policy_fields() -> None:
    s = one(sess(1, policy={"importLimit": 200, "exportLimit": 5000, "receiveLimit": 400, "bandwidth": 1000}))
    assert isinstance(s, Session)
    assert s.policy == SessionPolicy(import_limit=200, export_limit=5000, receive_limit=400, bandwidth=25)
    # 0 is "unset" for limits, like port and mtu; a JSON string is read like credential.
    s = one(sess(1, policy=json.dumps({"importLimit": 0, "bandwidthCommunity": 23})))
    assert isinstance(s, Session) and s.policy == SessionPolicy(bandwidth=23)


def test_policy_unknown_keys_and_odd_limits_warn() -> None:
    s = one(sess(1, policy={"importLimit": 500, "receiveLimit": 100, "exportPolicy": "own"}))
    assert isinstance(s, Session) and s.policy.receive_limit == 100
    assert any("'exportPolicy' ignored" in w for w in s.warnings)
    assert any("receiveLimit: 100 is below importLimit 500" in w for w in s.warnings)


def test_bad_policy_names_every_bad_field_and_refuses_the_session() -> None:
    """A bad limit never falls back to the node default (that could accept a full
    table from a peer the CP meant to hold to a few routes): the session is invalid."""
    inv = one(sess(1, policy={"importLimit": "x", "bandwidthCommunity": 99}, status=1))
    assert isinstance(inv, Invalid) and inv.status is SessionStatus.ACTIVE
    assert ".policy.importLimit:" in inv.reason and ".policy.bandwidthCommunity:" in inv.reason


@pytest.mark.parametrize(
    ("bandwidth", "community"),
    [
        (0.05, 21),
        (0.1, 21),
        (0.5, 21),
        (1, 22),
        (9.99, 22),
        (10, 23),
        (100, 24),
        (999, 24),
        ("1000M", 25),
        ("1G", 25),
        ("2.5 Gbit", 25),
        ("10G", 26),
        ("500K", 21),
        ("100 Mbps", 24),
        (10**7, 29),
        (10**8, 29),
    ],
)
def test_policy_bandwidth_to_dn42_community(bandwidth: Any, community: int) -> None:
    s = one(sess(1, policy={"bandwidth": bandwidth}))
    assert isinstance(s, Session), s
    assert s.policy.bandwidth == community


def test_bandwidth_community_tiers_follow_the_wiki() -> None:
    """(64511, x) means at least 10^(x-22) Mbit/s: 21 is 0.1 Mbit/s, 25 1 Gbit/s, 29 10 Tbit/s."""
    assert [bandwidth_community(10.0**e) for e in range(-1, 8)] == list(range(21, 30))
    assert bandwidth_community(0.01) == 21 and bandwidth_community(10.0**9) == 29
