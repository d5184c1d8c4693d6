"""The DN42 Global Route Collector session and add-paths on iBGP, against real BIRD 3.

Node A (hkg1, AS4242421234) runs the agent's tree: two eBGP peers (a plain BIRD X
speaking as AS4242420002 and AS4242420003) both announce fd42:1::/48 and
172.20.1.0/27, so A has two paths of each. A is a route reflector for node B
(tyo1, also agent-rendered). G is a plain BIRD playing the GRC: AS4242422602 at
fd42:4242:2601:ac12::1, two hops from A's loopback, ``add paths rx``, exporting
routes of its own.

Checked: the CP's ``policy.routeCollector`` brings up ``moenet_grc`` multihop from
A's loopback; G receives both paths of each prefix (add paths tx) and A's own
aggregates, without A's internal large communities; A imports nothing of what G
sends; B, A's client, receives both paths too (``add paths tx`` on the reflector,
``rx`` on the client); a local ``bird.routeCollector`` false wins over the CP and
removes the session. Every wait polls BIRD with a deadline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers.bird import U1, U2, session, symbol
from helpers.bird_nodes import V6, addresses, agent_node, established, text, until
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.collector import GRC_NEIGHBOR, PROTOCOL, RouteCollector
from moenet_bird.testing import BirdDaemon, sample_bird_config

from moenet_core.intents import IbgpNeighborIntent, IbgpOptionsIntent
from moenet_core.testing import veth_pair

EXTERNAL = """\
log "{log}" all;
router id 192.0.2.2;
protocol device {{}}
protocol static ext4 {{ ipv4; route 172.20.1.0/27 unreachable; }}
protocol static ext6 {{ ipv6; route fd42:1::/48 unreachable; }}
protocol bgp as2 {{
  local fe80::2 as 4242420002;
  neighbor fe80::1234 as 4242421234;
  interface "ex-x";
  connect delay time 1;
  ipv4 {{ extended next hop on; import none; export all; }};
  ipv6 {{ import none; export all; }};
}}
protocol bgp as3 {{
  local fe80::3 as 4242420003;
  neighbor fe80::1234 as 4242421234;
  interface "ex-x";
  connect delay time 1;
  ipv4 {{ extended next hop on; import none; export all; }};
  ipv6 {{ import none; export all; }};
}}
"""

#: The collector: takes every path (add paths rx) into an import table we can read,
#: and offers routes of its own, which A must not import.
COLLECTOR = """\
log "{log}" all;
router id 172.20.129.4;
protocol device {{}}
protocol static own6 {{ ipv6; route fd42:99::/48 unreachable; }}
protocol static own4 {{ ipv4; route 172.20.99.0/27 unreachable; }}
protocol bgp collector {{
  local {grc} as 4242422602;
  neighbor {v6}1 as 4242421234;
  multihop;
  connect delay time 1;
  ipv4 {{ add paths rx; import table on; import all; export all; }};
  ipv6 {{ add paths rx; import table on; import all; export all; }};
}}
"""

SHARED = ("fd42:1::/48", "172.20.1.0/27")


def paths(show: str) -> list[str]:
    """The AS paths of every route in ``show route ... all`` output."""
    return [line.split("bgp_path:", 1)[1].strip() for line in show.splitlines() if "bgp_path:" in line]


@pytest.mark.netns
async def test_route_collector_gets_every_path_and_gives_nothing(netns: Any, tmp_path: Path) -> None:
    ns_a, ns_b, ns_x, ns_g = netns(), netns(), netns(), netns()
    veth_pair(ns_a, ns_b, "ib-a", "ib-b")
    veth_pair(ns_a, ns_x, "ex-a", "ex-x")
    veth_pair(ns_a, ns_g, "gr-a", "gr-g")
    addresses(ns_a, "ib-a", f"{V6}1/64", "172.20.42.1/27")
    addresses(ns_b, "ib-b", f"{V6}2/64", "172.20.42.2/27")
    addresses(ns_a, "ex-a", "fe80::1234/64")
    addresses(ns_x, "ex-x", "fe80::2/64", "fe80::3/64")
    # The collector is not on A's link: A reaches it over a transit subnet, G
    # reaches A's loopback through A (multihop from the loopback).
    addresses(ns_a, "gr-a", "fd42:4242:2601:ac12::2/64")
    addresses(ns_g, "gr-g", f"{GRC_NEIGHBOR}/64")
    ns_g.run("ip", "-6", "route", "add", f"{V6}/64", "via", "fd42:4242:2601:ac12::2")

    x = BirdDaemon(ns_x, tmp_path / "x")
    (tmp_path / "x" / "x.conf").write_text(EXTERNAL.format(log=x.log))
    g = BirdDaemon(ns_g, tmp_path / "g")
    (tmp_path / "g" / "g.conf").write_text(COLLECTOR.format(log=g.log, grc=GRC_NEIGHBOR, v6=V6))
    backends: list[BirdRoutingBackend] = []
    with (
        BirdDaemon(ns_a, tmp_path / "a").start() as bird_a,
        BirdDaemon(ns_b, tmp_path / "b").start() as bird_b,
        x.start(tmp_path / "x" / "x.conf"),
        g.start(tmp_path / "g" / "g.conf"),
    ):
        try:
            # The CP switches the collector on for A (policy.routeCollector).
            data_a = sample_bird_config(policy={"routeCollector": True})
            a = await agent_node(bird_a, tmp_path / "a", data_a, loopback="ib-a")
            backends.append(a)
            node_b = {"id": 4, "name": "tyo1", "loopbackIpv4": "172.20.42.2", "loopbackIpv6": V6 + "2"}
            b = await agent_node(bird_b, tmp_path / "b", sample_bird_config(node=node_b), loopback="ib-b")
            backends.append(b)
            sessions = {
                U1: session(4242420002, 2, interface="ex-a"),
                U2: session(4242420003, 3, interface="ex-a"),
            }
            assert (await a.declare("sessions", sessions)).ok
            r = await a.declare(
                "ibgp",
                {
                    "options": IbgpOptionsIntent(route_reflector=True),
                    "4": IbgpNeighborIntent(
                        node_id=4, node_name="tyo1", loopback_ipv6=V6 + "2", rr_client=True
                    ),
                },
            )
            assert r.ok and not r.rejected, r
            r = await b.declare(
                "ibgp",
                {
                    "options": IbgpOptionsIntent(),
                    "3": IbgpNeighborIntent(node_id=3, node_name="hkg1", loopback_ipv6=V6 + "1", is_rr=True),
                },
            )
            assert r.ok and not r.rejected, r
            conf = (tmp_path / "a" / "etc" / "collector.conf").read_text()
            assert f"protocol bgp {PROTOCOL}" in conf and "source address OWNIPv6;" in conf

            ebgp = (symbol(U1, 4242420002), symbol(U2, 4242420003))
            states = await until(
                "A's eBGP, iBGP and collector sessions",
                lambda: established(a, *ebgp, "ibgp_tyo1_4", PROTOCOL),
            )
            grc = states[PROTOCOL]
            assert grc.neighbor is None or GRC_NEIGHBOR in grc.neighbor
            details = await text(a.client, f"show protocols all {PROTOCOL}")
            assert f"Source address:   {V6}1" in details, details  # from the loopback
            assert "Session:          external multihop" in details, details

            # G gets both paths of each shared prefix (add paths tx), via A.
            async def at_g(prefix: str, n: int) -> str | None:
                shown = await text(
                    g_client, f"show route import table collector.{_family(prefix)} {prefix} all"
                )
                return shown if len(paths(shown)) >= n else None

            g_client = BirdClient(str(g.socket))
            for prefix in SHARED:
                shown = await until(f"both paths of {prefix} at the collector", lambda p=prefix: at_g(p, 2))
                assert sorted(paths(shown)) == ["4242421234 4242420002", "4242421234 4242420003"], shown
                assert "(4242421234," not in shown, f"internal large communities leaked:\n{shown}"
            # A's own aggregates reach it too.
            for prefix in ("fd42:4242:1234::/48", "172.20.42.0/27"):
                shown = await until(f"A's aggregate {prefix} at the collector", lambda p=prefix: at_g(p, 1))
                assert paths(shown) == ["4242421234"], shown

            # A imports nothing from G: G did offer its routes, A has none of them.
            offered = await text(g_client, "show route export collector.ipv6")
            assert "fd42:99::/48" in offered, offered
            for prefix in ("fd42:99::/48", "172.20.99.0/27"):
                assert PROTOCOL not in await text(a.client, f"show route {prefix} all")
            # ... and it did reach A (received, filtered by "import none"), never accepted.
            v6_updates = await until("G's route received by A", lambda: _v6_import_updates(a, minimum=1))
            assert v6_updates["accepted"] == 0, v6_updates
            stats = await text(a.client, f"show protocols all {PROTOCOL}")
            assert stats.count("Routes:         0 imported") == 2, stats
            assert "ADD-PATH\n        RX:\n        TX: ipv4 ipv6" in stats, stats  # we send every path

            # iBGP add paths: B, A's client, gets both exits of each shared prefix.
            async def at_b(prefix: str) -> str | None:
                shown = await text(b.client, f"show route {prefix} all")
                return shown if len(paths(shown)) >= 2 else None

            for prefix in SHARED:
                shown = await until(f"both paths of {prefix} on B", lambda p=prefix: at_b(p))
                assert sorted(paths(shown)) == ["4242420002", "4242420003"], shown
                assert shown.count("ibgp_hkg1_3") == 2, shown

            # A local false wins over the CP's true: the session goes, nothing else moves.
            before = {n: states[n].since for n in (*ebgp, "ibgp_tyo1_4")}
            result = await a.set_local(attrs.evolve(a.local, collector=RouteCollector(enabled=False)))
            assert result is not None and result.ok, result
            assert PROTOCOL not in {p.name for p in await a.client.protocols()}
            assert "off" in (tmp_path / "a" / "etc" / "collector.conf").read_text()
            after = {p.name: p.since for p in await a.client.protocols() if p.name in before}
            assert after == before
            await g_client.close()
        finally:
            for be in backends:
                await be.aclose()


async def _v6_import_updates(a: BirdRoutingBackend, minimum: int) -> dict[str, int] | None:
    """The ``Import updates`` row of the collector's ipv6 channel, once ``received``
    reaches ``minimum``."""
    stats = await text(a.client, f"show protocols all {PROTOCOL}")
    section = stats.split("Channel ipv6", 1)[1]
    header = ["received", "rejected", "filtered", "ignored", "rx_limit", "limit", "accepted"]
    row = next(line for line in section.splitlines() if "Import updates:" in line)
    values = dict(zip(header, (int(v) for v in row.split(":", 1)[1].split()), strict=True))
    return values if values["received"] >= minimum else None


def _family(prefix: str) -> str:
    return "ipv6" if ":" in prefix else "ipv4"
