"""Session shapes from the CP against real BIRD 3 on both ends, in namespaces.

Node A runs the agent's BIRD tree (``BirdRoutingBackend``) with peers built the
way the sessions plugin builds them (``parse_sessions`` then ``build_desired``),
and the tunnel addresses ``build_desired`` asks for put on veth links standing in
for the WireGuard tunnels. Node X is a DN42 peer running the wiki's BIRD
template: both channels on every session, ``extended next hop on`` for IPv4.

- ``mp-bgp`` without ``extended-nexthop`` and without ``ipv4``: one IPv6-only
  session; X's template offers IPv4 too, only IPv6 is negotiated.
- ``mp-bgp`` + ``extended-nexthop`` without ``ipv4``: IPv4 routes arrive over
  the IPv6 session with an IPv6 next hop.
- split IPv4 with ``localIpv4`` from the CP: the session runs from that tunnel
  address, not the node's loopback.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.bird import policy
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.testing import BirdDaemon, sample_bird_config
from moenet_sessions.desired import DesiredSession, NodeSettings, build_desired
from moenet_sessions.model import parse_sessions

from moenet_core.backends import ProtocolState
from moenet_core.state import StateStore
from moenet_core.testing import NetNS, veth_pair

KEY = base64.b64encode(b"\x05" * 32).decode()
OUR_LL = "fe80::1234"
SETTINGS = NodeSettings(
    private_key_file="/unused",
    link_local=OUR_LL,
    loopback_ipv4="172.20.42.1",
    loopback_ipv6="fd42:4242:1234::1",
)

#: The peer: the wiki's template (howto/Bird2) reduced to what matters here.
PEER = """\
log "{log}" all;
router id 172.20.1.2;
protocol device {{}}
protocol static ext4 {{ ipv4; route 172.20.1.0/27 unreachable; }}
protocol static ext6 {{ ipv6; route fd42:1::/48 unreachable; }}
template bgp dnpeers {{
  local as 4242420002;
  path metric 1;
  connect delay time 1;
  ipv4 {{ import all; export all; extended next hop on; }};
  ipv6 {{ import all; export all; }};
}}
protocol bgp v6only from dnpeers {{ neighbor fe80::1234%x1 as 4242421234; }}
protocol bgp enh from dnpeers {{ neighbor fe80::1234%x2 as 4242421234; }}
protocol bgp tunaddr from dnpeers {{
  neighbor 172.20.42.99 as 4242421234;
  source address 172.20.1.2;
  interface "x3";
}}
"""


def uid(n: int) -> str:
    return f"5aa9e000-0000-4000-8000-{n:012d}"


def desired(n: int, **over: Any) -> DesiredSession:
    item = {
        "uuid": uid(n),
        "asn": 4242420002,
        "status": 1,
        "interface": f"a{n}",
        "credential": KEY,
        "port": 30000 + n,
        "ipv6LinkLocal": "fe80::2",
        **over,
    }
    ok, bad = parse_sessions([item])
    assert not bad, bad
    return build_desired(ok[0], SETTINGS)


def put_tunnel_addresses(ns: NetNS, d: DesiredSession) -> None:
    """What the tunnel backend would put on the WireGuard link."""
    for a in d.tunnel.addresses:
        peer = ["peer", a.peer] if a.peer else []
        ns.run(
            "ip", "addr", "add", a.local, *peer, "dev", d.tunnel.name, *(["nodad"] if ":" in a.local else [])
        )


async def until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll BIRD (an external process) until ``check()`` returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def received(p: ProtocolState, channel: str) -> int:
    counts = p.routes.get(channel, {})
    return counts.get("imported", 0) + counts.get("filtered", 0)


@pytest.mark.netns
async def test_session_shapes_come_up_against_a_wiki_configured_peer(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    ns_a, ns_x = netns(), netns()
    shapes = {
        1: desired(1, extensions=["mp-bgp"]),
        2: desired(2, extensions=["mp-bgp", "extended-nexthop"]),
        3: desired(3, ipv6LinkLocal=None, ipv4="172.20.1.2", localIpv4="172.20.42.99", extensions=[]),
    }
    assert (shapes[1].peer.mp_bgp, shapes[1].peer.local_ipv4) == (False, "")
    assert shapes[3].peer.local_ipv4 == "172.20.42.99"
    for n, d in shapes.items():
        veth_pair(ns_a, ns_x, d.tunnel.name, f"x{n}")
        put_tunnel_addresses(ns_a, d)
    for n in (1, 2):
        ns_x.run("ip", "addr", "add", "fe80::2/64", "dev", f"x{n}", "nodad")
    ns_x.run("ip", "addr", "add", "172.20.1.2/32", "peer", "172.20.42.99", "dev", "x3")

    x = BirdDaemon(ns_x, tmp_path / "x")
    (tmp_path / "x" / "x.conf").write_text(PEER.format(log=x.log))
    with BirdDaemon(ns_a, tmp_path / "a").start() as bird_a, x.start(tmp_path / "x" / "x.conf"):
        backend = BirdRoutingBackend(
            BirdClient(str(bird_a.socket)), str(tmp_path / "a" / "etc"), state=StateStore(tmp_path / "state")
        )
        await backend.start()
        try:
            data = sample_bird_config()
            assert (await backend.set_policy(policy(data), "h", raw=data)).ok
            r = await backend.declare("sessions", {d.uuid: d.peer for d in shapes.values()})
            assert r.ok and not r.rejected, r
            names = {n: backend.fragment_protocols("sessions")[d.uuid] for n, d in shapes.items()}
            assert len(names[1]) == 1 and names[1][0].endswith("_v6"), names
            assert len(names[2]) == 1 and len(names[3]) == 1 and names[3][0].endswith("_v4"), names

            async def all_up() -> dict[str, ProtocolState] | None:
                ps = {p.name: p for p in await backend.protocols()}
                up = all(ps[names[n][0]].bgp_state == "Established" for n in shapes)
                return ps if up and received(ps[names[2][0]], "ipv4") else None

            ps = await until("the three sessions", all_up)
            v6only, enh, tunaddr = (ps[names[n][0]] for n in (1, 2, 3))
            # IPv6-only: IPv6 routes arrive; IPv4 is not even a channel of the session.
            assert received(v6only, "ipv6") >= 1 and "ipv4" not in v6only.routes, v6only.routes
            # Extended next hop: IPv4 routes over the IPv6 session, next hop X's link-local.
            assert received(enh, "ipv4") >= 1 and received(enh, "ipv6") >= 1, enh.routes
            assert (tunaddr.neighbor or "").split("%")[0] == "172.20.1.2" and received(tunaddr, "ipv4") >= 1

            reply = await backend.client.command(
                f"show route import table {names[2][0]}.ipv4 all", check=False
            )
            text = "\n".join(reply.texts())
            assert "172.20.1.0/27" in text and "fe80::2" in text, text

            # X's view: the IPv6-only session is up with IPv6 alone; its IPv4 channel never came up.
            reply = await BirdClient(str(x.socket)).command("show protocols all v6only", check=False)
            text = "\n".join(reply.texts())
            assert "Established" in text, text
            ipv4 = text.split("Channel ipv4", 1)[1].split("Channel ipv6", 1)[0]
            assert "State:          DOWN" in ipv4, text
            neighbour_caps = text.split("Neighbor capabilities", 1)[1].split("Session:", 1)[0]
            assert "AF announced: ipv6\n" in neighbour_caps and "Extended next hop" not in neighbour_caps
            # The session from the CP's tunnel address: X sees it as the neighbour,
            # never the node's loopback.
            reply = await BirdClient(str(x.socket)).command("show protocols all tunaddr", check=False)
            text = "\n".join(reply.texts())
            assert "Neighbor address: 172.20.42.99" in text and "172.20.42.1 " not in text, text
        finally:
            await backend.aclose()
