"""Deny lists against real BIRD 3: refused on eBGP and iBGP import, changed at run
time without a session reset.

Node A (hkg1, agent-rendered) peers with X (a plain BIRD, AS4242420002) and is a
route reflector for node B (tyo1, agent-rendered). X announces:

- fd42:1::/48 and 172.20.1.0/27: allowed;
- fd42:66::/48: denied by the CP's ``policy.denyList.prefixes``;
- 172.20.66.0/26: denied by ``172.20.66.0/24+`` in A's local deny file;
- fd42:77::/48 with AS4242420666 in its path: denied by ``AS4242420666`` in the file.

The file is read by the real ``birdDenyList`` task. Then the file changes (the AS
entry goes, fd42:1::/48 is added): fd42:77::/48 appears and fd42:1::/48 goes,
with every session kept (same ``since`` on both ends, X's log shows no session
going down); a malformed file keeps the last good list; B's own deny list
refuses a route A passes on over iBGP, and lifting it brings the route back,
again without a reset; so does a new ``policy.denyList`` from the CP. The "absent" checks first see the route in A's import
table, so an absent route was refused, not merely late. Every wait polls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers.bird import U1, session, symbol
from helpers.bird_nodes import V6, addresses, agent_node, established, text, until
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.config import BirdConfig
from moenet_bird.denylist import DenyList, DenyListSources, DenyListSourcesError, parse_deny_text
from moenet_bird.policy import parse_bird_config
from moenet_bird.testing import BirdDaemon, sample_bird_config

from moenet_core.intents import IbgpNeighborIntent, IbgpOptionsIntent
from moenet_core.testing import ManualClock, plugin_context, veth_pair

EXTERNAL = """\
log "{log}" all;
debug protocols {{ states }};
router id 192.0.2.2;
protocol device {{}}
protocol static ext4 {{
  ipv4;
  route 172.20.1.0/27 unreachable;
  route 172.20.66.0/26 unreachable;
}}
protocol static ext6 {{
  ipv6;
  route fd42:1::/48 unreachable;
  route fd42:66::/48 unreachable;
  route fd42:77::/48 unreachable;
}}
protocol bgp to_a {{
  local fe80::2 as 4242420002;
  neighbor fe80::1234 as 4242421234;
  interface "ex-x";
  connect delay time 1;
  ipv4 {{ extended next hop on; import none; export all; }};
  ipv6 {{
    import none;
    export filter {{
      if net = fd42:77::/48 then bgp_path.prepend(4242420666);   # a path through AS4242420666
      accept;
    }};
  }};
}}
"""

DENY_FILE = """\
# local deny list of node A
172.20.66.0/24+     # a whole /24 and its more specifics
AS4242420666        # anything through this AS
"""
CHANGED_FILE = """\
172.20.66.0/24+
fd42:1::/48
"""
ALLOWED = ("fd42:1::/48", "172.20.1.0/27")
DENIED = ("fd42:66::/48", "172.20.66.0/26", "fd42:77::/48")


def family(prefix: str) -> str:
    return "ipv6" if ":" in prefix else "ipv4"


@pytest.mark.netns
async def test_deny_lists_refuse_and_change_without_a_reset(netns: Any, tmp_path: Path) -> None:
    ns_a, ns_b, ns_x = netns(), netns(), netns()
    veth_pair(ns_a, ns_b, "ib-a", "ib-b")
    veth_pair(ns_a, ns_x, "ex-a", "ex-x")
    addresses(ns_a, "ib-a", f"{V6}1/64", "172.20.42.1/27")
    addresses(ns_b, "ib-b", f"{V6}2/64", "172.20.42.2/27")
    addresses(ns_a, "ex-a", "fe80::1234/64")
    addresses(ns_x, "ex-x", "fe80::2/64")
    deny_file = tmp_path / "deny.txt"
    deny_file.write_text(DENY_FILE)

    x = BirdDaemon(ns_x, tmp_path / "x")
    (tmp_path / "x" / "x.conf").write_text(EXTERNAL.format(log=x.log))
    backends: list[BirdRoutingBackend] = []
    with (
        BirdDaemon(ns_a, tmp_path / "a").start() as bird_a,
        BirdDaemon(ns_b, tmp_path / "b").start() as bird_b,
        x.start(tmp_path / "x" / "x.conf"),
    ):
        x_client = BirdClient(str(x.socket))
        try:
            data_a = sample_bird_config(policy={"denyList": {"prefixes": ["fd42:66::/48"]}})
            a = await agent_node(bird_a, tmp_path / "a", data_a, loopback="ib-a")
            backends.append(a)
            ctx = plugin_context(
                "bird",
                state_dir=tmp_path / "a" / "plugin",
                section=BirdConfig(deny_list_files=[str(deny_file)]),
                backends={"routing": a},
                clock=ManualClock(),
            )
            task = DenyListSources(ctx)
            assert (await task.run_once())["applied"] is True
            node_b = {"id": 4, "name": "tyo1", "loopbackIpv4": "172.20.42.2", "loopbackIpv6": V6 + "2"}
            b = await agent_node(bird_b, tmp_path / "b", sample_bird_config(node=node_b), loopback="ib-b")
            backends.append(b)
            # B denies fd42:1::/48 itself (its own file, or a newer CP list than A's).
            result = await b.set_local(attrs.evolve(b.local, deny=parse_deny_text("fd42:1::/48", "b")))
            assert result is not None and result.ok, result
            assert (await a.declare("sessions", {U1: session(4242420002, 2, interface="ex-a")})).ok
            ibgp_a = {
                "options": IbgpOptionsIntent(route_reflector=True),
                "4": IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6=V6 + "2", rr_client=True),
            }
            assert (await a.declare("ibgp", ibgp_a)).ok
            ibgp_b = {
                "options": IbgpOptionsIntent(),
                "3": IbgpNeighborIntent(node_id=3, node_name="hkg1", loopback_ipv6=V6 + "1", is_rr=True),
            }
            assert (await b.declare("ibgp", ibgp_b)).ok
            deny_conf = (tmp_path / "a" / "etc" / "denylist.conf").read_text()
            assert (
                "172.20.66.0/24+" in deny_conf and "fd42:66::/48" in deny_conf and "4242420666" in deny_conf
            )

            name = symbol(U1, 4242420002)
            await until("A's sessions", lambda: established(a, name, "ibgp_tyo1_4"))
            await until("B's session", lambda: established(b, "ibgp_hkg1_3"))

            async def received(prefix: str) -> bool:
                return prefix in await text(a.client, f"show route import table {name}.{family(prefix)}")

            async def on(node: BirdRoutingBackend, prefix: str, via: str) -> bool:
                return via in await text(node.client, f"show route {prefix}")

            for prefix in (*ALLOWED, *DENIED):
                await until(f"{prefix} in A's import table", lambda p=prefix: received(p))
            for prefix in ALLOWED:
                await until(f"{prefix} accepted on A", lambda p=prefix: on(a, p, name))
            await until("172.20.1.0/27 on B", lambda: on(b, "172.20.1.0/27", "ibgp_hkg1_3"))
            for prefix in DENIED:
                assert not await on(a, prefix, name), f"{prefix} should be refused on A"
            # B refuses fd42:1::/48 that A passes on (its iBGP import checks the list too).
            assert not await on(b, "fd42:1::/48", "ibgp_hkg1_3")
            assert not await on(b, "fd42:77::/48", "ibgp_hkg1_3")

            before_a = {p.name: p.since for p in await a.client.protocols() if p.bgp_state}
            before_b = {p.name: p.since for p in await b.client.protocols() if p.bgp_state}
            before_x = {p.name: p.since for p in await x_client.protocols() if p.bgp_state}
            x_log_before = x.read_log().count("State changed")
            assert x_log_before > 0, "X logs its state changes (debug protocols states)"

            # The file changes at run time: the AS entry goes, fd42:1::/48 joins.
            deny_file.write_text(CHANGED_FILE)
            result = await task.run_once()
            assert result == {"prefixes": 2, "asns": 0, "applied": True}, result
            await until(
                "fd42:77::/48 accepted once AS4242420666 is allowed", lambda: on(a, "fd42:77::/48", name)
            )
            await until("fd42:1::/48 refused on A", lambda: _not(on(a, "fd42:1::/48", name)))
            assert await received("fd42:1::/48")  # still received, now refused
            assert await on(a, "172.20.1.0/27", name)
            assert not await on(a, "172.20.66.0/26", name)
            assert not await on(a, "fd42:66::/48", name)  # the CP's entry stays
            await until("fd42:77::/48 on B", lambda: on(b, "fd42:77::/48", "ibgp_hkg1_3"))

            # A malformed file: refused as a whole, the last good list stays.
            good = (tmp_path / "a" / "etc" / "denylist.conf").read_text()
            deny_file.write_text(CHANGED_FILE + "include /etc/passwd\n")
            with pytest.raises(DenyListSourcesError, match=r"deny.txt:3: not a prefix"):
                await task.run_once()
            assert (tmp_path / "a" / "etc" / "denylist.conf").read_text() == good
            assert task.deny == parse_deny_text(CHANGED_FILE, "same")

            # The original file again: fd42:1::/48 is back, fd42:77::/48 refused again.
            deny_file.write_text(DENY_FILE)
            assert (await task.run_once())["applied"] is True
            await until("fd42:1::/48 back on A", lambda: on(a, "fd42:1::/48", name))
            await until("fd42:77::/48 refused again", lambda: _not(on(a, "fd42:77::/48", name)))

            # The CP's list changes (a new policy): fd42:66::/48 is allowed, fd42:1::/48 is not.
            data_a2 = sample_bird_config(config_hash="h2", policy={"denyList": {"prefixes": ["fd42:1::/48"]}})
            assert (await a.set_policy(parse_bird_config(data_a2)[0], "h2", raw=data_a2)).ok
            await until("fd42:66::/48 accepted", lambda: on(a, "fd42:66::/48", name))
            await until("fd42:1::/48 refused by the CP's list", lambda: _not(on(a, "fd42:1::/48", name)))
            data_a3 = sample_bird_config(
                config_hash="h3", policy={"denyList": {"prefixes": ["fd42:66::/48"]}}
            )
            assert (await a.set_policy(parse_bird_config(data_a3)[0], "h3", raw=data_a3)).ok
            await until("fd42:1::/48 back again", lambda: on(a, "fd42:1::/48", name))

            # B lifts its own list: A's route reaches B's table, by a route refresh.
            result = await b.set_local(attrs.evolve(b.local, deny=DenyList()))
            assert result is not None and result.ok, result
            await until("fd42:1::/48 on B", lambda: on(b, "fd42:1::/48", "ibgp_hkg1_3"))

            # No session was reset by any of it, on either end.
            assert {p.name: p.since for p in await a.client.protocols() if p.bgp_state} == before_a
            assert {p.name: p.since for p in await b.client.protocols() if p.bgp_state} == before_b
            assert {p.name: p.since for p in await x_client.protocols() if p.bgp_state} == before_x
            assert x.read_log().count("State changed") == x_log_before, x.read_log()
            ctx.close()
        finally:
            await x_client.close()
            for be in backends:
                await be.aclose()


async def _not(check: Any) -> bool:
    return not await check
