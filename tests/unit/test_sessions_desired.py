"""Desired state of one session (moenet_sessions.desired)."""

from __future__ import annotations

import base64
from typing import Any

import attrs
import pytest
from moenet_sessions.config import SessionsConfig
from moenet_sessions.desired import DesiredError, NodeSettings, build_desired, derive_link_local
from moenet_sessions.model import Session, parse_sessions

from moenet_core.backends import TunnelAddress
from moenet_core.config import AgentConfig, NodeConfig, build_config, structure
from moenet_core.intents import EbgpPeerIntent
from moenet_core.state import StateStore

KEY = base64.b64encode(b"\x01" * 32).decode()
PSK = base64.b64encode(b"\x02" * 32).decode()
SETTINGS = NodeSettings(
    private_key_file="/etc/wireguard/private.key",
    link_local="fe80::998:302:1:1",
    loopback_ipv4="172.20.0.1",
    loopback_ipv6="fd00:4242:7777:302:1::1",
    psk_dir="/var/lib/moenet-agent/psk",
)


def session(**over: Any) -> Session:
    item: dict[str, Any] = {
        "uuid": "00000000-0000-4000-8000-000000000001",
        "asn": 4242420001,
        "status": 4,
        "interface": "wg1",
        "endpoint": "198.51.100.1:51820",
        "credential": KEY,
        "ipv6LinkLocal": "fe80::1",
        "port": 20001,
    }
    item.update(over)
    ok, bad = parse_sessions([item])
    assert not bad, bad
    return ok[0]


def test_deterministic() -> None:
    a = build_desired(session(ipv4="172.20.9.9", ipv6="fd00::9"), SETTINGS)
    b = build_desired(session(ipv6="fd00::9", ipv4="172.20.9.9/32"), SETTINGS)
    assert a == b and a.peer == b.peer


def test_link_local_only() -> None:
    d = build_desired(session(), SETTINGS)
    assert d.tunnel.addresses == (TunnelAddress(local="fe80::998:302:1:1/64"),)
    assert d.tunnel.keepalive == 25 and d.tunnel.mtu == 1420 and d.tunnel.listen_port == 20001
    assert d.port == 20001 and d.tunnel.preshared_key_file is None and d.preshared_key is None
    assert d.peer == EbgpPeerIntent(
        asn=4242420001,
        latency=5,
        bandwidth=24,
        crypto=34,  # WireGuard: encrypted with PFS
        name="",
        description="",
        interface="wg1",
        local_link_local="fe80::998:302:1:1",
        neighbor_link_local="fe80::1",
        mp_bgp=True,
        extended_nexthop=True,
    )


def test_ipv4_and_ula() -> None:
    d = build_desired(session(ipv4="172.20.9.9", ipv6="fd00:9::9", extensions=["mp-bgp"]), SETTINGS)
    assert set(d.tunnel.addresses) == {
        TunnelAddress(local="fe80::998:302:1:1/64"),
        TunnelAddress(local="172.20.0.1/32", peer="172.20.9.9"),
        TunnelAddress(local="fd00:4242:7777:302:1::1/128", peer="fd00:9::9"),
    }
    assert d.peer.neighbor_ipv4 == "172.20.9.9" and d.peer.local_ipv4 == "172.20.0.1"
    assert d.peer.neighbor_ipv6 == "fd00:9::9" and d.peer.local_ipv6 == "fd00:4242:7777:302:1::1"
    assert d.peer.mp_bgp is True and d.peer.extended_nexthop is False


def test_sessions_without_link_local_get_working_bgp() -> None:
    """No link-local neighbour: no local link-local either (BIRD would have no use
    for it and the backend refuses it), and IPv4-only is plain IPv4 BGP."""
    v4 = build_desired(session(ipv6LinkLocal=None, ipv4="172.20.9.9"), SETTINGS)
    assert v4.peer.local_link_local == "" and v4.peer.neighbor_link_local == ""
    assert v4.peer.mp_bgp is False and v4.peer.neighbor_ipv4 == "172.20.9.9"
    ula = build_desired(session(ipv6LinkLocal=None, ipv6="fd00:9::9"), SETTINGS)
    assert ula.peer.local_link_local == "" and ula.peer.mp_bgp is True  # MP-BGP with extended next hop
    assert ula.peer.extended_nexthop is True
    both = build_desired(
        session(ipv6LinkLocal=None, ipv6="fd00:9::9", ipv4="172.20.9.9", extensions=["mp-bgp"]), SETTINGS
    )
    assert both.peer.mp_bgp is True and both.peer.local_ipv4 == "172.20.0.1"


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"asn": 4242420777}, "this node's own AS"),
        ({"ipv6LinkLocal": None, "ipv4": "172.20.9.9", "extensions": ["mp-bgp"]}, "needs an IPv6 neighbour"),
    ],
)
def test_setups_that_cannot_work_are_refused_up_front(over: dict[str, Any], reason: str) -> None:
    settings = attrs.evolve(SETTINGS, asn=4242420777) if "asn" in over else SETTINGS
    with pytest.raises(DesiredError, match=reason):
        build_desired(session(**over), settings)


def test_missing_loopback_is_an_error() -> None:
    bare = NodeSettings(private_key_file="k", link_local="fe80::1")
    with pytest.raises(DesiredError, match="IPv4"):
        build_desired(session(ipv4="172.20.9.9"), bare)
    with pytest.raises(DesiredError, match="IPv6"):
        build_desired(session(ipv6="fd00:9::9"), bare)
    # A tunnel address from the CP needs no loopback.
    d = build_desired(session(ipv4="172.20.9.9", localIpv4="172.20.0.77"), bare)
    assert d.peer.local_ipv4 == "172.20.0.77"


def test_psk() -> None:
    d = build_desired(session(credential={"public_key": KEY, "preshared_key": PSK}), SETTINGS)
    # WireGuard + PSK: PFS and post-quantum resistance (the wiki's crypto 35); without: 34.
    assert d.peer.crypto == 35 and build_desired(session(), SETTINGS).peer.crypto == 34
    assert d.tunnel.preshared_key_file == "/var/lib/moenet-agent/psk/wg1.psk"
    assert d.preshared_key == PSK and d.psk_digest and PSK not in repr(d)
    other = build_desired(session(credential={"public_key": KEY, "preshared_key": KEY}), SETTINGS)
    assert other.tunnel == d.tunnel and other.psk_digest != d.psk_digest  # detected via the digest


def test_latency_override() -> None:
    assert build_desired(session(), SETTINGS, latency=2).peer.latency == 2


def test_derive_link_local() -> None:
    assert derive_link_local("fd00:4242:7777:302:1::1") == "fe80::998:302:1:1"
    assert derive_link_local("fd00:4242:7777::1/128") == "fe80::998:0:0:1"
    a, b = derive_link_local(None, "node-a"), derive_link_local(None, "node-b")
    assert a.startswith("fe80::") and a != b and a == derive_link_local(None, "node-a")


def test_from_config() -> None:
    cfg = AgentConfig(
        node=NodeConfig(name="n1", loopback_ipv4="172.20.0.1/32", loopback_ipv6="fd00:4242:7777:302:1::1")
    )
    section = SessionsConfig(private_key_path="/k", persistent_keepalive_interval=15, psk_dir="/psk")
    s = NodeSettings.from_config(cfg, section)
    assert (s.private_key_file, s.keepalive, s.loopback_ipv4, s.psk_dir) == ("/k", 15, "172.20.0.1", "/psk")
    assert s.link_local == "fe80::998:302:1:1"
    cfg2 = AgentConfig()
    assert (
        NodeSettings.from_config(cfg2, SessionsConfig(dn42_ipv6_link_local="fe80::42")).link_local
        == "fe80::42"
    )


def test_from_config_reads_the_go_agent_keys() -> None:
    """Without a section, the one in the config: the Go agent's ``wireguard`` keys count."""
    raw = {
        "node": {"name": "n1"},
        "controlPlane": {"source": "file", "file": "/x"},
        "wireguard": {
            "privateKeyPath": "/k",
            "persistentKeepaliveInterval": 15,
            "dn42Ipv6": "fd00:4242:7777:302:1::1",
            "dn42Ipv4": "172.20.0.1",
        },
    }
    s = NodeSettings.from_config(build_config(raw, env={})[0])
    assert (s.private_key_file, s.keepalive, s.loopback_ipv4) == ("/k", 15, "172.20.0.1")
    assert s.link_local == "fe80::998:302:1:1"


def test_public_key_published_at_start(tmp_path) -> None:
    """``sessions.publicKeyPath``: the key is made when missing and its public half written."""
    import types

    import moenet_sessions
    from loguru import logger

    key, pub = tmp_path / "wg" / "private.key", tmp_path / "wg" / "public.key"

    class Tunnel:
        def public_key(self, path: str) -> str:
            return "PUB:" + open(path).read().strip()[:4]

    ctx = types.SimpleNamespace(
        section=SessionsConfig(private_key_path=str(key), public_key_path=str(pub)),
        log=logger,
        backend=lambda kind, iface: Tunnel(),
        state=StateStore(tmp_path / "state"),
    )
    moenet_sessions.moenet_startup(ctx=ctx)
    assert (key.stat().st_mode & 0o777) == 0o600
    assert pub.read_text() == f"PUB:{key.read_text()[:4]}\n"
    # The node had a key: one configured elsewhere and missing is never generated (issue 14).
    ctx.section = SessionsConfig(private_key_path=str(tmp_path / "other"))
    moenet_sessions.moenet_startup(ctx=ctx)
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------ session shapes


def test_mp_bgp_without_ipv4_and_without_extended_next_hop_is_an_ipv6_only_session() -> None:
    """Nothing could be the next hop of IPv4 routes: one session over IPv6
    negotiating IPv6 only (the IPv6 half of a split peer), never a refusal."""
    d = build_desired(session(extensions=["mp-bgp"]), SETTINGS)
    p = d.peer
    assert (p.mp_bgp, p.extended_nexthop) == (False, False)
    assert (p.neighbor_ipv4, p.local_ipv4) == ("", "")
    assert (p.neighbor_link_local, p.local_link_local) == ("fe80::1", "fe80::998:302:1:1")
    ula = build_desired(session(ipv6LinkLocal=None, ipv6="fd00:9::9", extensions=["mp-bgp"]), SETTINGS).peer
    assert (ula.mp_bgp, ula.neighbor_ipv6, ula.local_ipv6) == (False, "fd00:9::9", "fd00:4242:7777:302:1::1")
    assert ula.neighbor_ipv4 == ""


def test_mp_bgp_with_extended_next_hop_carries_ipv4_without_an_ipv4_address() -> None:
    p = build_desired(session(extensions=["mp-bgp", "extended-nexthop"]), SETTINGS).peer
    assert (p.mp_bgp, p.extended_nexthop, p.local_ipv4) == (True, True, "")
    # With the session's ipv4, mp-bgp alone carries IPv4 with our tunnel IPv4 as next hop.
    p = build_desired(session(ipv4="172.20.9.9", extensions=["mp-bgp"]), SETTINGS).peer
    assert (p.mp_bgp, p.extended_nexthop, p.local_ipv4) == (True, False, "172.20.0.1")


def test_split_sessions_without_extensions() -> None:
    p = build_desired(session(ipv4="172.20.9.9", extensions=[]), SETTINGS).peer
    assert p.mp_bgp is False and p.neighbor_ipv4 == "172.20.9.9" and p.neighbor_link_local == "fe80::1"


# ------------------------------------------------------------------ tunnel addresses


def test_tunnel_addresses_from_the_cp_replace_the_loopback() -> None:
    """The wiki's advice: a per-session address, so a peer's static route to it
    over a dead tunnel black-holes nothing else; it is BIRD's source too."""
    d = build_desired(
        session(ipv4="172.20.9.9", localIpv4="172.20.0.77", ipv6="fd00:9::9", localIpv6="fd00:1::77"),
        SETTINGS,
    )
    assert set(d.tunnel.addresses) == {
        TunnelAddress(local="fe80::998:302:1:1/64"),
        TunnelAddress(local="172.20.0.77/32", peer="172.20.9.9"),
        TunnelAddress(local="fd00:1::77/128", peer="fd00:9::9"),
    }
    assert (d.peer.local_ipv4, d.peer.local_ipv6) == ("172.20.0.77", "fd00:1::77")
    # Only one family given: the other keeps the loopback.
    d = build_desired(session(ipv4="172.20.9.9", localIpv4="172.20.0.77", ipv6="fd00:9::9"), SETTINGS)
    assert d.peer.local_ipv6 == "fd00:4242:7777:302:1::1"
    assert TunnelAddress(local="fd00:4242:7777:302:1::1/128", peer="fd00:9::9") in d.tunnel.addresses


def test_mp_bgp_next_hop_is_the_tunnel_address() -> None:
    p = build_desired(
        session(ipv4="172.20.9.9", localIpv4="172.20.0.77", extensions=["mp-bgp"]), SETTINGS
    ).peer
    assert (p.mp_bgp, p.extended_nexthop, p.local_ipv4) == (True, False, "172.20.0.77")


# ------------------------------------------------------------------ per-session policy


def test_policy_limits_map_onto_the_intent_over_node_defaults() -> None:
    settings = attrs.evolve(SETTINGS, import_limit=9000, export_limit=9000)
    p = build_desired(session(policy={"importLimit": 50, "receiveLimit": 200}), settings).peer
    assert (p.import_limit, p.export_limit, p.receive_limit) == (50, 9000, 200)
    p = build_desired(session(), settings).peer
    assert (p.import_limit, p.export_limit, p.receive_limit) == (9000, 9000, None)
    p = build_desired(session(), SETTINGS).peer  # no node default: the BIRD policy's limits apply
    assert (p.import_limit, p.export_limit, p.receive_limit) == (None, None, None)


@pytest.mark.parametrize(
    ("uplink", "policy", "tier"),
    [
        (None, None, 24),  # nothing known: the default tier
        (None, {"bandwidth": 10}, 23),
        (None, {"bandwidthCommunity": 27}, 27),
        (1000, None, 25),  # the node's uplink alone
        (1000, {"bandwidth": "10G"}, 25),  # min(node, session): the node is slower
        (1000, {"bandwidth": 50}, 23),  # ... the session is slower
        (10_000, {"bandwidthCommunity": 22}, 22),
    ],
)
def test_link_bandwidth_is_the_slower_end(uplink: int | None, policy: Any, tier: int) -> None:
    settings = attrs.evolve(SETTINGS, uplink_mbit=uplink)
    assert build_desired(session(policy=policy), settings).peer.bandwidth == tier


def test_from_config_reads_the_uplink_bandwidth() -> None:
    cfg = AgentConfig(node=NodeConfig(name="n1"))
    assert NodeSettings.from_config(cfg, SessionsConfig(bandwidth=500)).uplink_mbit == 500
    assert NodeSettings.from_config(cfg, SessionsConfig()).uplink_mbit is None
    sec, problems = structure(SessionsConfig, {"bandwidth": 2500}, "sessions", [])
    assert sec is not None and sec.bandwidth == 2500 and problems == []
    for bad in (0, -1, "1G", True, 10**9):
        sec, problems = structure(SessionsConfig, {"bandwidth": bad}, "sessions", [])
        assert sec is None and any(p.startswith("sessions.bandwidth:") for p in problems), (bad, problems)


def test_build_desired_is_pure_and_hashable_for_the_planner_cache() -> None:
    """The planner memoises build_desired on (session, settings, latency): the new
    fields must be hashable and equal inputs give equal outputs."""
    s = session(ipv4="172.20.9.9", localIpv4="172.20.0.77", policy={"importLimit": 5, "bandwidth": "1G"})
    settings = attrs.evolve(SETTINGS, uplink_mbit=100)
    assert hash(s) == hash(
        session(ipv4="172.20.9.9", localIpv4="172.20.0.77", policy={"importLimit": 5, "bandwidth": 1000})
    )
    assert hash(settings) and build_desired(s, settings) == build_desired(s, settings)


def test_every_shape_renders_and_parses_with_bird(tmp_path) -> None:
    """The intents of each shape through the BIRD backend's renderer and the real
    ``bird -p``: the IPv6-only session is one protocol with one IPv6 channel, the
    CP's tunnel address is the source, PSK links carry crypto 35."""
    import subprocess

    from helpers.render import cp_data
    from moenet_bird.apply import default_bird_binary
    from moenet_bird.policy import BgpPeer, parse_bird_config
    from moenet_bird.render import render_tree

    shapes = {
        "v6only": session(extensions=["mp-bgp"]),
        "enh": session(
            extensions=["mp-bgp", "extended-nexthop"],
            interface="wg2",
            port=20002,
            uuid="00000000-0000-4000-8000-000000000002",
        ),
        "tunaddr": session(
            ipv6LinkLocal=None,
            ipv4="172.20.9.9",
            localIpv4="172.20.0.77",
            extensions=[],
            interface="wg3",
            port=20003,
            credential={"public_key": KEY, "preshared_key": PSK},
            policy={"importLimit": 50},
            uuid="00000000-0000-4000-8000-000000000003",
        ),
    }
    peers = {k: BgpPeer(s.uuid, build_desired(s, SETTINGS).peer) for k, s in shapes.items()}
    tree = render_tree(parse_bird_config(cp_data())[0], list(peers.values()))
    for rel, text in tree.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    bird = default_bird_binary()
    assert bird, "no bird binary (scripts/install-bird)"
    res = subprocess.run(
        [bird, "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and not res.stderr and not res.stdout, res.stderr + res.stdout
    v6only = tree[peers["v6only"].file_name]
    assert v6only.count("protocol bgp ") == 1 and "ipv6 {" in v6only and "ipv4 {" not in v6only
    assert "neighbor fe80::1 as 4242420001" in v6only
    tunaddr = tree[peers["tunaddr"].file_name]
    assert "source address 172.20.0.77;" in tunaddr and "172.20.0.1;" not in tunaddr
    assert "dn42_ebgp_in(5, 24, 35)" in tunaddr and "import limit 50 action block" in tunaddr
