"""Own aggregates withdrawn while isolated, against real BIRD 3.

Nodes A (hkg1) and B (tyo1) run the agent's tree and one iBGP session between
their loopbacks; X is a plain eBGP peer of A that imports everything. When B
stops its iBGP session, A's ``birdAggregates`` task (a manual clock drives the
hold-down) withdraws 172.20.42.0/27 and fd42:4242:1234::/48, and X loses them;
when the session is back, A announces them again and X has them again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from helpers.bird import U1, policy, session
from moenet_bird.aggregates import Aggregates
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.config import BirdConfig
from moenet_bird.testing import BirdDaemon, sample_bird_config

from moenet_core.intents import IbgpNeighborIntent, IbgpOptionsIntent
from moenet_core.state import StateStore
from moenet_core.testing import ManualClock, plugin_context, veth_pair

V6 = "fd42:4242:1234::"
HOLD_DOWN = 30.0

EXTERNAL = """\
log "{log}" all;
router id 192.0.2.2;
protocol device {{}}
protocol bgp to_a {{
  local fe80::2 as 4242420002;
  neighbor fe80::1234 as 4242421234;
  interface "ex-x";
  connect delay time 1;
  ipv4 {{ extended next hop on; import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"""


async def until(what: str, check: Any, timeout: float = 60.0) -> Any:
    """Poll (BIRD is an external process) until ``check()`` is truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.mark.netns
async def test_aggregates_withdrawn_while_isolated_and_back_after(netns: Any, tmp_path: Path) -> None:
    ns_a, ns_b, ns_x = netns(), netns(), netns()
    veth_pair(ns_a, ns_b, "ib-a", "ib-b")
    veth_pair(ns_a, ns_x, "ex-a", "ex-x")
    for ns, dev, addrs in (
        (ns_a, "ib-a", ["fd42:4242:1234::1/64", "172.20.42.1/27"]),
        (ns_b, "ib-b", ["fd42:4242:1234::2/64", "172.20.42.2/27"]),
        (ns_a, "ex-a", ["fe80::1234/64"]),
        (ns_x, "ex-x", ["fe80::2/64"]),
    ):
        for addr in addrs:
            ns.run("ip", "addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []))

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
            node_b = {"id": 4, "name": "tyo1", "loopbackIpv4": "172.20.42.2", "loopbackIpv6": V6 + "2"}
            # The loopback protocol reads "lo": a /27 on the veth would be a direct route
            # for the aggregate itself, preferred over the static one.
            for bird, node, lo in ((bird_a, None, "lo"), (bird_b, node_b, "lo")):
                name = "a" if bird is bird_a else "b"
                be = BirdRoutingBackend(
                    BirdClient(str(bird.socket)),
                    str(tmp_path / name / "etc"),
                    state=StateStore(tmp_path / name / "state"),
                    loopback_interface=lo,
                )
                await be.start()
                backends.append(be)
                data = sample_bird_config(node=node)
                assert (await be.set_policy(policy(data), "h", raw=data)).ok
            a, b = backends
            assert (await a.declare("sessions", {U1: session(4242420002, 2, interface="ex-a")})).ok
            opts = IbgpOptionsIntent()
            assert (
                await a.declare(
                    "ibgp",
                    {
                        "options": opts,
                        "4": IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6=V6 + "2"),
                    },
                )
            ).ok
            assert (
                await b.declare(
                    "ibgp",
                    {
                        "options": opts,
                        "3": IbgpNeighborIntent(node_id=3, node_name="hkg1", loopback_ipv6=V6 + "1"),
                    },
                )
            ).ok

            clock = ManualClock()
            ctx = plugin_context(
                "bird",
                state_dir=tmp_path / "a" / "plugin",
                section=BirdConfig(isolation_hold_down=HOLD_DOWN),
                backends={"routing": a},
                clock=clock,
            )
            task = Aggregates(ctx)

            async def ibgp_state() -> str:
                return {p.name: p.bgp_state or p.state for p in await a.client.protocols()}.get(
                    "ibgp_tyo1_4", ""
                )

            async def x_has(prefix: str) -> bool:
                return "to_a" in "\n".join(
                    (await x_client.command(f"show route {prefix}", check=False)).texts()
                )

            async def x_lacks(prefix: str) -> bool:
                return not await x_has(prefix)

            await until("A's iBGP session", lambda: _eq(ibgp_state(), "Established"))
            for prefix in ("172.20.42.0/27", "fd42:4242:1234::/48"):
                await until(f"X learns {prefix}", lambda p=prefix: x_has(p))
            assert (await task.run_once())["announced"] is True

            # B's side goes down: within the hold-down nothing changes, after it A withdraws.
            await b.client.command("disable ibgp_hkg1_3")
            await until("A's iBGP session down", lambda: _ne(ibgp_state(), "Established"))
            assert (await task.run_once())["announced"] is True
            await clock.advance(HOLD_DOWN / 2)
            assert (await task.run_once())["announced"] is True
            assert await x_has("172.20.42.0/27")
            await clock.advance(HOLD_DOWN / 2)
            assert (await task.run_once())["announced"] is False
            own4 = (tmp_path / "a" / "etc" / "moenet.conf").read_text()
            assert "protocol static own4 {\n  disabled;" in own4
            for prefix in ("172.20.42.0/27", "fd42:4242:1234::/48"):
                await until(f"X loses {prefix}", lambda p=prefix: x_lacks(p))
            checks = task.moenet_health_checks()
            assert [c.name for c in checks] == ["bird.isolated"] and checks[0].verdict == "degraded"
            # The eBGP session itself stays up: only the aggregates went.
            assert any(p.name == "to_a" and p.bgp_state == "Established" for p in await x_client.protocols())

            # B is back: A announces again at once.
            await b.client.command("enable ibgp_hkg1_3")
            await until("A's iBGP session back", lambda: _eq(ibgp_state(), "Established"))
            assert (await task.run_once())["announced"] is True
            for prefix in ("172.20.42.0/27", "fd42:4242:1234::/48"):
                await until(f"X learns {prefix} again", lambda p=prefix: x_has(p))
            assert task.moenet_health_checks() == []
            ctx.close()
        finally:
            await x_client.close()
            for be in backends:
                await be.aclose()


async def _eq(value: Any, want: str) -> bool:
    return bool(await value == want)


async def _ne(value: Any, want: str) -> bool:
    return bool(await value != want)
