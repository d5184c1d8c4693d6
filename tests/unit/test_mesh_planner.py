"""The mesh planner and desired state, pure: what to create, update, keep and remove."""

from __future__ import annotations

import base64
from typing import Any

import attrs
from moenet_mesh.config import MeshSyncConfig
from moenet_mesh.desired import MeshSettings, allowed_ips, build_desired
from moenet_mesh.model import MeshPeer, parse_mesh
from moenet_mesh.planner import Action, Observed, Record, plan

from moenet_core.backends import TunnelAddress, TunnelSpec, TunnelState
from moenet_core.config import AgentConfig
from moenet_core.guard import GuardPolicy
from moenet_core.intents import BabelInterfaceIntent

OWN_KEY = base64.b64encode(b"\x05" * 32).decode()


def key(n: int) -> str:
    return base64.b64encode(bytes([n % 250 + 1]) * 32).decode()


def settings(node_id: int = 3, **section: Any) -> MeshSettings:
    return MeshSettings.from_config(
        AgentConfig(),
        MeshSyncConfig(**section),
        node_id=node_id,
        private_key_file="/state/mesh.key",
        public_key=OWN_KEY,
    )


def peer(n: int, **over: Any) -> MeshPeer:
    raw = {
        "nodeId": n,
        "publicKey": key(n),
        "endpoint": f"192.0.2.{n % 250}",
        "loopbackIpv4": f"172.20.42.{n % 250}",
    }
    raw.update(over)
    [p] = parse_mesh({"peers": [raw]}, node_id=3).peers
    return p


def state_of(spec: TunnelSpec, **over: Any) -> TunnelState:
    st = TunnelState(
        name=spec.name,
        ifindex=10,
        listen_port=spec.listen_port,
        peer_public_key=spec.peer_public_key,
        endpoint=spec.endpoint,
        allowed_ips=spec.allowed_ips,
        keepalive=spec.keepalive or None,
        mtu=spec.mtu,
        addresses=spec.addresses,
        up=True,
        owner=spec.owner,
    )
    return attrs.evolve(st, **over)


def test_desired_peer() -> None:
    d = build_desired(peer(1000, endpoint="node.example:4000", mtu=1400), settings(3, port_base=20000))
    assert d.interface == "igp1000" and d.port == 21000
    s = d.spec
    assert (s.name, s.listen_port, s.endpoint, s.mtu, s.owner) == (
        "igp1000",
        21000,
        "node.example:4000",
        1400,
        "mesh",
    )
    assert s.addresses == (TunnelAddress(local="fe80::1:0:3/64"),)
    assert s.private_key_file == "/state/mesh.key" and s.keepalive == 25
    assert "fe80::/10" in s.allowed_ips and "ff02::1:6/128" in s.allowed_ips and "fd00::/8" in s.allowed_ips
    assert d.fragment == BabelInterfaceIntent(
        pattern="igp1000",
        type="tunnel",
        rxcost=None,
        rtt_cost=1024,
        rtt_min_ms=10,
        rtt_max_ms=150,
        hello_interval_s=5,
    )
    assert d.link_local == "fe80::1:0:3e8" and d.loopbacks == ("172.20.42.0",)


def test_the_endpoint_port_defaults_to_what_the_peer_listens_on_for_us() -> None:
    # We are node 3: node 7's tunnel to us listens on portBase + 3.
    assert build_desired(peer(7), settings(3)).spec.endpoint == "192.0.2.7:51823"
    assert (
        build_desired(peer(7, endpoint="[2001:db8::7]"), settings(3)).spec.endpoint == "[2001:db8::7]:51823"
    )
    # A port in the CP's endpoint wins (a NAT may forward another public port).
    assert build_desired(peer(7, endpoint="192.0.2.7:40000"), settings(3)).spec.endpoint == "192.0.2.7:40000"
    assert build_desired(peer(7, endpoint=None), settings(3)).spec.endpoint is None


def test_allowed_ips_add_loopbacks_outside_the_networks() -> None:
    narrow = settings(allowed_ips=["fd42:4242:1234::/48"])
    p = peer(5, loopbackIpv4="172.20.42.5", loopbackIpv6="fd42:4242:1234::5")
    assert allowed_ips(narrow.networks, p) == (
        "172.20.42.5/32",
        "fd42:4242:1234::/48",
        "fe80::/10",
        "ff02::1:6/128",
    )


def test_digest_follows_what_cannot_be_read_back() -> None:
    base = build_desired(peer(7), settings())
    assert build_desired(peer(7), settings()).digest == base.digest
    assert build_desired(peer(7, endpoint="192.0.2.99"), settings()).digest != base.digest
    other_key = attrs.evolve(settings(), public_key=key(99))
    assert build_desired(peer(7), other_key).digest != base.digest


def observed(*specs: TunnelSpec, records: bool = True, **kw: Any) -> Observed:
    tunnels = {s.name: state_of(s) for s in specs}
    tunnels.update(kw.pop("extra", {}))
    return Observed(
        tunnels=tunnels,
        ports=kw.pop("ports", frozenset()),
        fragments=kw.pop("fragments", {}),
        records=kw.pop("recs", {})
        if not records
        else {s.name: Record(node_id=int(s.name[3:]), digest="", endpoint=s.endpoint) for s in specs},
    )


def test_create_none_update_and_remove() -> None:
    st = settings()
    d1, d2, d4 = (build_desired(peer(n), st) for n in (1, 2, 4))
    obs = observed(d1.spec, d2.spec, build_desired(peer(9), st).spec)
    recs = {
        d1.interface: Record(node_id=1, digest=d1.digest, endpoint=d1.spec.endpoint),
        d2.interface: Record(node_id=2, digest="old", endpoint="192.0.2.77:51823"),
        "igp9": Record(node_id=9, digest="x"),
    }
    obs = attrs.evolve(obs, records=recs)
    p = plan([d1, d2, d4], {}, {1, 2, 4}, obs, prefix="igp")
    actions = {pp.node_id: (pp.action, pp.drift) for pp in p.peers}
    assert actions[1] == (Action.NONE, ())
    assert actions[2] == (Action.UPDATE, ("endpoint changed",))
    assert actions[4] == (Action.CREATE, ("tunnel missing",))
    assert p.remove == ("igp9",) and not p.guard.refused
    assert p.ports == {51821, 51822, 51824}
    assert set(p.fragments) == {"igp1", "igp2", "igp4"}


def test_drift_in_what_the_system_shows() -> None:
    st = settings()
    d = build_desired(peer(1), st)
    rec = {d.interface: Record(node_id=1, digest=d.digest, endpoint=d.spec.endpoint)}
    for over, words in [
        ({"listen_port": 1}, "listen port"),
        ({"peer_public_key": key(77)}, "peer public key"),
        ({"allowed_ips": ("0.0.0.0/0",)}, "allowed IPs"),
        ({"addresses": (TunnelAddress(local="fe80::1/64"),)}, "addresses"),
        ({"mtu": 1300}, "mtu"),
        ({"keepalive": None}, "keepalive"),
        ({"up": False}, "down"),
    ]:
        obs = Observed(
            tunnels={d.interface: state_of(d.spec, **over)}, ports=frozenset(), fragments={}, records=rec
        )
        [pp] = plan([d], {}, {1}, obs, prefix="igp").peers
        assert pp.action is Action.UPDATE and any(words in x for x in pp.drift), (over, pp.drift)
    # A roamed endpoint is not drift.
    obs = Observed(
        tunnels={d.interface: state_of(d.spec, endpoint="198.51.100.9:4444")},
        ports=frozenset(),
        fragments={},
        records=rec,
    )
    assert plan([d], {}, {1}, obs, prefix="igp").peers[0].action is Action.NONE


def test_invalid_listed_peer_keeps_its_tunnel_port_and_fragment() -> None:
    st = settings()
    d1, d2 = build_desired(peer(1), st), build_desired(peer(2), st)
    frag = {"igp2": d2.fragment}
    obs = attrs.evolve(observed(d1.spec, d2.spec), fragments=frag)
    p = plan([d1], {2: "peers[1].publicKey: not base64"}, {1, 2}, obs, prefix="igp")
    assert p.remove == () and p.keep == ("igp2",)
    assert 51822 in p.ports and p.fragments["igp2"] == d2.fragment
    assert p.by_id(2) is not None and p.by_id(2).action is Action.ERROR  # type: ignore[union-attr]


def test_other_owners_are_never_taken_over() -> None:
    st = settings()
    d1, d2 = build_desired(peer(1), st), build_desired(peer(2), st)
    session = TunnelSpec(
        name="dn42-x", private_key_file="/k", listen_port=51822, peer_public_key=key(50), owner="sessions"
    )
    squat = attrs.evolve(d1.spec, owner="sessions", listen_port=20000)
    obs = observed(extra={"dn42-x": state_of(session), "igp1": state_of(squat)})
    p = plan([d1, d2], {}, {1, 2}, obs, prefix="igp")
    by = {pp.node_id: pp for pp in p.peers}
    assert by[1].action is Action.ERROR and "owner 'sessions'" in (by[1].error or "")
    assert by[2].action is Action.ERROR and "listen port 51822 is used by tunnel dn42-x" in (
        by[2].error or ""
    )
    assert p.remove == () and p.ports == frozenset()


def test_guard_withholds_mass_removal_and_an_override_lets_it_through() -> None:
    st = settings()
    specs = [build_desired(peer(n), st).spec for n in (1, 2, 4, 5)]
    obs = observed(*specs, fragments={s.name: BabelInterfaceIntent(pattern=s.name) for s in specs})
    p = plan([], {}, set(), obs, prefix="igp", guard=GuardPolicy())
    assert p.guard.refused and p.remove == () and p.withheld == ("igp1", "igp2", "igp4", "igp5")
    assert "remove 4 of 4 mesh tunnels" in p.guard.reason
    assert p.ports == {51821, 51822, 51824, 51825} and set(p.fragments) == {"igp1", "igp2", "igp4", "igp5"}
    allowed = plan([], {}, set(), obs, prefix="igp", override=p.guard.digest)
    assert not allowed.guard.refused and allowed.guard.overridden
    assert allowed.remove == ("igp1", "igp2", "igp4", "igp5") and allowed.ports == frozenset()
    # Two of four: allowed (not more than half); three of five would not be.
    two = plan([build_desired(peer(n), st) for n in (1, 2)], {}, {1, 2}, obs, prefix="igp")
    assert not two.guard.refused and two.remove == ("igp4", "igp5")


def test_prefix_change_rebuilds_every_tunnel_so_the_guard_withholds_it() -> None:
    """Renaming every tunnel (a new interface prefix) drops every link at once: a
    mass change like a mass removal (issue 14). Withheld, the old tunnels stay as
    they are and the new names are neither created nor declared; the override
    lets exactly that set through."""
    old = settings()
    new = settings(interface_prefix="mesh")
    specs = [build_desired(peer(n), old).spec for n in (1, 2, 4)]
    frags = {s.name: build_desired(peer(int(s.name[3:])), old).fragment for s in specs}
    obs = observed(*specs, fragments=frags, ports=frozenset({51821, 51822, 51824}))
    desired = [build_desired(peer(n), new) for n in (1, 2, 4)]
    p = plan(desired, {}, {1, 2, 4}, obs, prefix="mesh")
    assert p.guard.refused and p.guard.rebuilds == ("igp1", "igp2", "igp4") and p.guard.removals == ()
    assert "rebuild (re-key or recreate) 3 of 3 mesh tunnels" in p.guard.reason
    assert p.remove == () and p.keep == ("igp1", "igp2", "igp4")
    assert [(pp.interface, pp.action) for pp in p.peers] == [(f"igp{n}", Action.NONE) for n in (1, 2, 4)]
    assert p.fragments == frags and p.ports == {51821, 51822, 51824}
    allowed = plan(desired, {}, {1, 2, 4}, obs, prefix="mesh", override=p.guard.digest)
    assert not allowed.guard.refused and allowed.guard.overridden
    assert allowed.remove == ("igp1", "igp2", "igp4")
    assert [pp.action for pp in allowed.peers] == [Action.CREATE] * 3
    # One renamed of three is within the policy: replaced at once.
    one = plan(
        [build_desired(peer(1), new), *(build_desired(peer(n), old) for n in (2, 4))],
        {},
        {1, 2, 4},
        obs,
        prefix="igp",
    )
    assert not one.guard.refused


def test_rekeying_most_tunnels_is_withheld_additions_still_apply() -> None:
    st = settings()
    d = {n: build_desired(peer(n), st) for n in (1, 2, 4, 5)}
    obs = observed(*(x.spec for x in d.values()))
    rekeyed = [build_desired(peer(n, publicKey=key(n + 100)), st) for n in (1, 2, 4)]
    p = plan([*rekeyed, d[5], build_desired(peer(6), st)], {}, {1, 2, 4, 5, 6}, obs, prefix="igp")
    assert p.guard.refused and p.guard.rebuilds == ("igp1", "igp2", "igp4")
    assert {pp.interface: pp.action for pp in p.peers} == {
        "igp1": Action.NONE,
        "igp2": Action.NONE,
        "igp4": Action.NONE,
        "igp5": Action.UPDATE,  # a harmless in-place change (the recorded digest differs): applied
        "igp6": Action.CREATE,
    }
    # A backend switch: the tunnels are listed without device details and would be recreated.
    switched = observed(*(x.spec for x in d.values()))
    switched = attrs.evolve(
        switched,
        tunnels={
            n: attrs.evolve(t, peer_public_key=None, listen_port=None) for n, t in switched.tunnels.items()
        },
    )
    q = plan(list(d.values()), {}, {1, 2, 4, 5}, switched, prefix="igp")
    assert q.guard.refused and q.guard.rebuilds == ("igp1", "igp2", "igp4", "igp5")
    assert all(pp.action is Action.NONE for pp in q.peers)
