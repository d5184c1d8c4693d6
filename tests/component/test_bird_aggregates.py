"""Own aggregates withdrawn while isolated, against real BIRD 3.

Nodes A (hkg1) and B (tyo1) run the agent's tree and one iBGP session between
their loopbacks; X is a plain eBGP peer of A that imports everything. When B
stops its iBGP session, A's ``birdAggregates`` task (a manual clock drives the
hold-down) withdraws 172.20.42.0/27 and fd42:4242:1234::/48, and X loses them;
when the session is back, A announces them again and X has them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.bird import U1, session
from helpers.bird_nodes import ibgp_pair, text, two_nodes, until
from moenet_bird.aggregates import Aggregates
from moenet_bird.config import BirdConfig

from moenet_core.testing import ManualClock, plugin_context

HOLD_DOWN = 30.0


@pytest.mark.netns
async def test_aggregates_withdrawn_while_isolated_and_back_after(netns: Any, tmp_path: Path) -> None:
    # The loopback protocol reads "lo": a /27 on the veth would be a direct route
    # for the aggregate itself, preferred over the static one.
    async with two_nodes(netns, tmp_path, x_imports=True, loopback=("lo", "lo")) as rig:
        a, b, x_client = rig.a, rig.b, rig.x
        assert (await a.declare("sessions", {U1: session(4242420002, 2, interface="ex-a")})).ok
        await ibgp_pair(a, b)

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
            return {p.name: p.bgp_state or p.state for p in await a.client.protocols()}.get("ibgp_tyo1_4", "")

        async def x_has(prefix: str) -> bool:
            return "to_a" in await text(x_client, f"show route {prefix}")

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


async def _eq(value: Any, want: str) -> bool:
    return bool(await value == want)


async def _ne(value: Any, want: str) -> bool:
    return bool(await value != want)
