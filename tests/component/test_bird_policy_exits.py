"""The routing policy against real BIRD 3 in namespaces: exits, communities,
first AS, route limits.

Two agent-rendered nodes, A (hkg1, node 3) and B (tyo1, node 4), run iBGP
between their addresses on a shared veth (full mesh, no reflector); each has one
external DN42 network on its own eBGP link, written by hand: X1 (AS4242420002)
on A, X2 (AS4242420003) on B. Both externals announce the same prefixes, so
each node has its own eBGP route and the other node's iBGP copy of every one.
Everything is read from BIRD's own ``show route all`` (polled: BIRD converges on
its own time).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from helpers.bird import U1, U2, session, symbol
from helpers.bird_nodes import V6, agent_node, external_link, inner_link, plain_bird, until
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.testing import BirdDaemon, sample_bird_config
from moenet_sessions.collector import MetricCollector
from moenet_sessions.records import ConfiguredSession, Previous
from moenet_sessions.store import SessionStore

from moenet_core.backends import TunnelSpec, TunnelStats
from moenet_core.intents import IbgpNeighborIntent, IbgpOptionsIntent
from moenet_core.testing import FakeBackends, NetNS, StubControlPlane, plugin_context

#: Asia-E, the region of both nodes (sample_bird_config's hkg1, and tyo1 below).
ASIA_E, EUROPE = 52, 41

#: Announced by both externals, as their own (AS path length 1), origin region Asia-E.
P_IN_REGION = "fd42:100::/48"
#: The same, origin region Europe: neither node is in it (cold potato penalty).
P_EUROPE = "fd42:200::/48"
#: X1 originates it; X2 passes it on from a network behind it (AS path length 2).
P_DIRECT_AT_A = "fd42:300::/48"
#: From X1 only, tagged crypto 35 (WireGuard + PSK) by X1.
P_CRYPTO = "fd42:400::/48"
#: From X1 only, with an AS path that does not start with X1's AS.
P_FORGED = "fd42:500::/48"


def external(name: str, asn: int, local: str, peer: str, iface: str, log: Path, routes: str) -> str:
    """An external network announcing ``routes`` (a BIRD filter body that sets the
    path and communities per prefix) as a route server client: it adds no AS of its
    own, so the filter decides every path."""
    return f"""\
log "{log}" all;
router id 192.0.2.{asn % 100};
protocol device {{}}
protocol static {name}6 {{
  ipv6;
  route {P_IN_REGION} unreachable;
  route {P_EUROPE} unreachable;
  route {P_DIRECT_AT_A} unreachable;
  route {P_CRYPTO} unreachable;
  route {P_FORGED} unreachable;
}}
protocol bgp to_node {{
  local {local} as {asn};
  neighbor {peer} as 4242421234;
  interface "{iface}";
  rs client;
  connect delay time 1;
  passive on;   # only the node connects: a reset on its side never races a second connection
  ipv6 {{ import all; export filter {{ {routes} }}; }};
}}
"""


X1_ROUTES = f"""
  if source != RTS_STATIC then accept;
  if net = {P_FORGED} then {{ bgp_path.prepend(4242420099); accept; }}
  bgp_path.prepend(4242420002);
  if net = {P_IN_REGION} then bgp_community.add((64511, {ASIA_E}));
  if net = {P_EUROPE} then bgp_community.add((64511, {EUROPE}));
  if net = {P_CRYPTO} then bgp_community.add((64511, 35));
  accept;
"""
X2_ROUTES = f"""
  if source != RTS_STATIC then reject;
  if net ~ [{P_CRYPTO}, {P_FORGED}] then reject;
  if net = {P_DIRECT_AT_A} then bgp_path.prepend(4242420099);
  bgp_path.prepend(4242420003);
  if net = {P_IN_REGION} then bgp_community.add((64511, {ASIA_E}));
  if net = {P_EUROPE} then bgp_community.add((64511, {EUROPE}));
  accept;
"""

TYO1 = {
    "id": 4,
    "name": "tyo1",
    "loopbackIpv4": "172.20.42.2",
    "loopbackIpv6": V6 + "2",
    "regionCommunity": ASIA_E,
    "subregionLc": "AS_E",
    "continentLc": "AS",
}


def routes_of(text: str) -> list[dict[str, Any]]:
    """``show route <prefix> all`` as one record per route: protocol, best, attributes."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        head = re.match(r"^\s*(?:\S+\s+)?\S+\s+\[(\S+) [^\]]*\]\s*(\*)?", line)
        if head and ("unicast" in line or "unreachable" in line):
            out.append({"proto": head[1], "best": head[2] == "*", "attrs": {}})
        elif out and (m := re.match(r"^\s+(?:BGP\.|bgp_)?(\w+): (.*)$", line)):
            out[-1]["attrs"][m[1]] = m[2].strip()
    return out


class Node:
    def __init__(self, backend: BirdRoutingBackend) -> None:
        self.backend = backend

    async def routes(self, prefix: str) -> list[dict[str, Any]]:
        reply = await self.backend.client.command(f"show route {prefix} all", check=False)
        return routes_of("\n".join(reply.texts()))

    async def best(self, prefix: str) -> dict[str, Any] | None:
        return next((r for r in await self.routes(prefix) if r["best"]), None)


@pytest.mark.netns
async def test_exits_communities_and_first_as_across_two_nodes(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    ns_a, ns_b, ns_x1, ns_x2 = netns(), netns(), netns(), netns()
    inner_link(ns_a, ns_b)
    external_link(ns_a, ns_x1)
    external_link(ns_b, ns_x2, "fe80::3/64", node_dev="ex-b", x_dev="ex-y")

    daemons = []
    for name, ns, asn, local, iface, routes in (
        ("x1", ns_x1, 4242420002, "fe80::2", "ex-x", X1_ROUTES),
        ("x2", ns_x2, 4242420003, "fe80::3", "ex-y", X2_ROUTES),
    ):
        d = BirdDaemon(ns, tmp_path / name)
        conf = tmp_path / name / f"{name}.conf"
        conf.write_text(external(name, asn, local, "fe80::1234", iface, d.log, routes))
        daemons.append((d, conf))

    backends: list[BirdRoutingBackend] = []
    with (
        BirdDaemon(ns_a, tmp_path / "a").start() as bird_a,
        BirdDaemon(ns_b, tmp_path / "b").start() as bird_b,
        daemons[0][0].start(daemons[0][1]),
        daemons[1][0].start(daemons[1][1]) as bird_x2,
    ):
        try:
            for bird, node, lo in ((bird_a, None, "ib-a"), (bird_b, TYO1, "ib-b")):
                name = "a" if bird is bird_a else "b"
                data = sample_bird_config(node=node, policy={"roaMode": "loose"})
                backends.append(await agent_node(bird, tmp_path / name, data, loopback=lo))
            a, b = (Node(be) for be in backends)
            # A's link to X1: latency tier 3, crypto 34. B's link to X2: tier 1, crypto 35.
            sx1 = session(4242420002, 2, interface="ex-a", latency=3, crypto=34)
            sx2 = session(4242420003, 3, interface="ex-b", latency=1, crypto=35)
            assert (await a.backend.declare("sessions", {U1: sx1})).ok
            assert (await b.backend.declare("sessions", {U2: sx2})).ok
            nb_b = IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6=V6 + "2")
            # The mesh link A-B measured at tier 6, seen from B.
            nb_a = IbgpNeighborIntent(node_id=3, node_name="hkg1", loopback_ipv6=V6 + "1", latency=6)
            assert (await a.backend.declare("ibgp", {"options": IbgpOptionsIntent(), "4": nb_b})).ok
            assert (await b.backend.declare("ibgp", {"options": IbgpOptionsIntent(), "3": nb_a})).ok

            async def two_routes_each() -> bool:
                counts = [len(await n.routes(P_EUROPE)) for n in (a, b)]
                return counts == [2, 2]

            try:
                await until("both exits of every prefix on both nodes", two_routes_each, timeout=20)
            except AssertionError:
                for n in (a, b):
                    r1 = await n.backend.client.command("show route all", check=False)
                    r2 = await n.backend.client.command("show protocols all", check=False)
                    print("\n".join(r1.texts()), "\n".join(r2.texts()))
                raise
            ebgp_a, ebgp_b = symbol(U1, 4242420002), symbol(U2, 4242420003)

            # 1. Same prefix, same path length, the iBGP copy exits in the destination's
            # region (and, by the old geography, in this node's subregion): each node
            # still uses its own eBGP session; the copy keeps the exit's preference.
            for node, own, other in ((a, ebgp_a, "ibgp_tyo1_4"), (b, ebgp_b, "ibgp_hkg1_3")):
                rs = {r["proto"]: r for r in await node.routes(P_IN_REGION)}
                assert rs[own]["best"], rs
                assert rs[own]["attrs"]["local_pref"] == "300"  # 200 + 100: the peer is the origin
                assert rs[other]["attrs"]["local_pref"] == "300"  # in region: no penalty

            # 2. Origin region Europe: each exit takes the cold potato penalty off the
            # copy it passes on, never off its own route.
            for node, own, other in ((a, ebgp_a, "ibgp_tyo1_4"), (b, ebgp_b, "ibgp_hkg1_3")):
                rs = {r["proto"]: r for r in await node.routes(P_EUROPE)}
                assert rs[own]["best"] and rs[own]["attrs"]["local_pref"] == "300", rs
                assert rs[other]["attrs"]["local_pref"] == "250", rs

            # 3. A direct session with the origin on another node beats a two-hop path here.
            best = await until("B on A's direct exit", lambda: b.best(P_DIRECT_AT_A))
            assert best["proto"] == "ibgp_hkg1_3", best
            rs = {r["proto"]: r for r in await b.routes(P_DIRECT_AT_A)}
            assert rs[ebgp_b]["attrs"]["local_pref"] == "200", rs

            # 3b. No bounce: wherever a node sends a prefix over iBGP, that exit node
            # uses its own eBGP route for it (the forwarding path ends there).
            own = {"ibgp_hkg1_3": (a, ebgp_a), "ibgp_tyo1_4": (b, ebgp_b)}
            for prefix in (P_IN_REGION, P_EUROPE, P_DIRECT_AT_A):
                for node in (a, b):
                    best = await node.best(prefix)
                    assert best is not None, prefix
                    if best["proto"] in own:
                        exit_node, exit_session = own[best["proto"]]
                        assert (await exit_node.best(prefix) or {}).get("proto") == exit_session, prefix

            # 4. Crypto 35 from X1 over a 34 link: one value stays, 34; and it reaches
            # X2 with the A-B mesh tier (6) merged in.
            best = await until("the crypto route on A", lambda: a.best(P_CRYPTO))
            comms = best["attrs"]["community"]
            assert "(64511,34)" in comms and "(64511,35)" not in comms, comms
            assert "(64511,3)" in comms, comms

            async def at_x2() -> dict[str, Any] | None:
                reply = await BirdClient(str(bird_x2.socket)).command(
                    f"show route {P_CRYPTO} all", check=False
                )
                found = [r for r in routes_of("\n".join(reply.texts())) if r["proto"] == "to_node"]
                return found[0] if found else None

            seen = await until("the crypto route at X2", at_x2)
            comms = seen["attrs"]["community"]
            assert "(64511,34)" in comms and "(64511,35)" not in comms, comms
            assert "(64511,6)" in comms and "(64511,3)" not in comms, comms  # the mesh hop's tier
            assert "(64511,1)" not in comms, comms

            # 5. enforce first as: X1's route whose path starts with another AS is
            # treated as a withdraw (the session stays up, its other routes stay).
            assert await a.routes(P_FORGED) == []
            assert await b.routes(P_FORGED) == []
            protocols = {p.name: p for p in await a.backend.protocols()}
            assert protocols[ebgp_a].bgp_state == "Established"

            # 6. Resetting A's eBGP session: B switches to its own route for the direct
            # prefix only while A's is gone, and every best path comes back as it was.
            before = await _bests(b, (P_IN_REGION, P_EUROPE, P_DIRECT_AT_A))
            assert before == {P_IN_REGION: ebgp_b, P_EUROPE: ebgp_b, P_DIRECT_AT_A: "ibgp_hkg1_3"}
            since = {p.name: p.since for p in await a.backend.protocols()}[ebgp_a]
            await a.backend.restart_protocol(ebgp_a)

            async def reestablished() -> bool:
                # The restart is asynchronous: until the session went down and came
                # back, B's view may still be the one from before the reset.
                now = {p.name: p for p in await a.backend.protocols()}[ebgp_a]
                return now.since != since and now.bgp_state == "Established"

            await until("A's session re-established after the reset", reestablished)
            await until("B's best paths back after the reset", lambda: _same_best(b, before))
            # ... and they stay there: no flapping between the exits (an observation
            # window over BIRD's own answers, not a wait for something to happen).
            for _ in range(15):
                if not await _same_best(b, before):
                    now = {p: await b.routes(p) for p in before}
                    states = {p.name: (p.state, p.bgp_state, p.since) for p in await a.backend.protocols()}
                    raise AssertionError(f"best paths changed after convergence: {now}; A: {states}")
                assert await _bests(a, before) == dict.fromkeys(before, ebgp_a), "A left its own exits"
                await asyncio.sleep(0.2)
        finally:
            for be in backends:
                await be.aclose()


async def _bests(node: Node, prefixes: Iterable[str]) -> dict[str, str | None]:
    return {p: (await node.best(p) or {}).get("proto") for p in prefixes}


async def _same_best(node: Node, before: dict[str, str | None]) -> bool:
    """The same best paths as ``before``, and B's own route for the direct prefix
    back as the alternative (A's session, and its route, came back)."""
    return await _bests(node, before) == before and len(await node.routes(P_DIRECT_AT_A)) == 2


# ------------------------------------------------------------------ route limits

LIMIT_PEER = """\
log "{log}" all;
router id 192.0.2.9;
protocol device {{}}
protocol static s6 {{ ipv6; {routes} }}
protocol bgp to_node {{
  local fe80::2 as 4242420002;
  neighbor fe80::1234 as 4242421234;
  interface "ex-x";
  connect delay time 1;
  ipv6 {{ import all; export filter {{ if net = fd42:1:9::/48 then bgp_community.add((64511, 36)); accept; }}; }};
}}
"""


def configured(n: int) -> ConfiguredSession:
    iface = f"ex-a{n}"
    return ConfiguredSession(
        interface=iface,
        tunnel=TunnelSpec(
            name=iface, private_key_file="/k", listen_port=20000 + n, peer_public_key="x" * 43 + "="
        ),
        peer=session(4242420002, 2, interface="ex-a"),
        port=20000 + n,
    )


@pytest.mark.netns
async def test_limits_render_hit_and_show_in_metrics_and_health(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    """X announces 8 routes, one of them filtered (bogon-free but outside DN42
    space): the session's receive limit (6) and import limit (3) are hit; BIRD marks
    them, and the collector turns them into metrics, report entries and reasons."""
    ns_a, ns_x = netns(), netns()
    external_link(ns_a, ns_x)
    prefixes = [f"fd42:1:{i}::/48" for i in range(1, 8)] + ["2001:db8::/48"]
    routes = " ".join(f"route {p} unreachable;" for p in prefixes)
    with (
        BirdDaemon(ns_a, tmp_path / "a").start() as bird_a,
        plain_bird(ns_x, tmp_path / "x", LIMIT_PEER, routes=routes),
    ):
        be = await agent_node(
            bird_a, tmp_path, sample_bird_config(policy={"roaMode": "loose"}), loopback="ex-a"
        )
        try:
            s = session(4242420002, 2, interface="ex-a", import_limit=3, receive_limit=6, export_limit=50)
            assert (await be.declare("sessions", {U1: s})).ok
            [name] = be.fragment_protocols("sessions")[U1]

            async def hit() -> Any:
                ps = {p.name: p for p in await be.protocols()}
                p = ps.get(name)
                if p is None or p.bgp_state != "Established":
                    return None
                d = p.channels["ipv6"].details  # type: ignore[attr-defined]
                return (
                    p
                    if "[HIT]" in d.get("Import limit", "") and "[HIT]" in d.get("Receive limit", "")
                    else None
                )

            p = await until("the receive and import limits hit", hit)
            details = p.channels["ipv6"].details
            assert details["Receive limit"] == "6 [HIT]" and details["Import limit"] == "3 [HIT]", details
            assert details["Export limit"] == "50", details
            assert p.routes["ipv6"]["imported"] == 3

            fakes = FakeBackends(kinds=("routing", "tunnel"))
            fakes.routing.protocol_names["sessions"] = {U1: (name,)}
            fakes.routing.states = [p]
            fakes.tunnel.stats_by_name = {
                "ex-a2": TunnelStats(
                    name="ex-a2", latest_handshake=None, rx_bytes=0, tx_bytes=0, endpoint=None
                )
            }
            ctx = plugin_context(
                "sessions", state_dir=tmp_path / "agent", backends=fakes, cp=StubControlPlane("test-node")
            )
            SessionStore(ctx.state).save_previous(Previous(configured={U1: configured(2)}))
            collector = MetricCollector(ctx)
            await collector.run_once()
            labels = {
                "session": U1,
                "asn": "4242420002",
                "interface": "ex-a2",
                "protocol": name,
                "channel": "ipv6",
            }
            reg = ctx.metrics.registry
            assert (
                reg.get_sample_value("moenet_sessions_route_limit_hit", {**labels, "limit": "receive"}) == 1
            )
            assert reg.get_sample_value("moenet_sessions_route_limit_hit", {**labels, "limit": "import"}) == 1
            assert reg.get_sample_value("moenet_sessions_route_limit_hit", {**labels, "limit": "export"}) == 0
            assert reg.get_sample_value("moenet_sessions_route_limit", {**labels, "limit": "import"}) == 3
            health = collector.health_info()["sessions"][U1]
            assert "ipv6: receive limit hit (6)" in health["reasons"], health
            assert "ipv6: import limit hit (3)" in health["reasons"], health
            assert health["limitsHit"] == [f"{name} ipv6 receive", f"{name} ipv6 import"]
        finally:
            await be.aclose()
