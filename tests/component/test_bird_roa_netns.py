"""ROA against real BIRD 3: strict and loose import, the static ROA file, the health
check; and the route refresh (``reload bgp in``) on the same rig.

Node A runs the agent's tree; X is a plain BIRD (AS4242420002) peering with it
over a veth link and announcing three IPv4 prefixes: 172.20.1.0/27 (its ROA is in
A's static ROA file), 172.20.3.0/27 (no ROA: unknown) and 172.20.5.0/27 (the ROA
names another AS: invalid), plus fd42:1::/48 (valid). Every wait polls BIRD with
a deadline; the "absent" checks first see the route in A's import table, so an
absent route was filtered, not merely late.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers.bird import U1, cp_data, policy, session, symbol
from helpers.bird_nodes import agent_backend, external_link, external_peer, text, until
from moenet_bird.config import BirdConfig
from moenet_bird.refresh import RouteRefresh
from moenet_bird.roa import StaticRoa
from moenet_bird.roa_health import RoaHealth
from moenet_bird.roa_sources import RoaSources
from moenet_bird.testing import BirdDaemon

from moenet_core.testing import ManualClock, plugin_context

ROAS = """\
# a DN42-style static ROA file
route 172.20.1.0/27 max 29 as 4242420002;
route 172.20.5.0/27 max 29 as 4242420099;
route fd42:1::/48 max 64 as 4242420002;
"""


async def _grew(value: Any, at_least: int) -> bool:
    return bool(await value >= at_least)


@pytest.mark.netns
async def test_strict_loose_static_file_and_health(netns: Any, tmp_path: Path) -> None:
    ns_a, ns_x = netns(), netns()
    external_link(ns_a, ns_x)
    roa_file = tmp_path / "dn42_roa.conf"
    roa_file.write_text(ROAS)

    with (
        BirdDaemon(ns_a, tmp_path / "a").start() as bird_a,
        external_peer(ns_x, tmp_path / "x", "172.20.1.0/27", "172.20.3.0/27", "172.20.5.0/27", "fd42:1::/48"),
    ):
        a = await agent_backend(bird_a, tmp_path / "a", loopback="ex-a")
        try:
            ctx = plugin_context(
                "bird",
                state_dir=tmp_path / "a" / "plugin",
                section=BirdConfig(roa_files=[str(roa_file)]),
                backends={"routing": a},
                clock=ManualClock(),
            )
            sources = RoaSources(ctx)  # reads the file before the first apply
            health = RoaHealth(ctx)
            health._sources = lambda: sources  # type: ignore[method-assign]
            data = cp_data(roaMode="")  # a CP that sends no mode: strict
            assert (await a.set_policy(policy(data), "h", raw=data)).ok
            assert (await a.declare("sessions", {U1: session(4242420002, 2, interface="ex-a")})).ok
            name = symbol(U1, 4242420002)
            conf = (tmp_path / "a" / "etc" / "moenet_roa4.conf").read_text()
            assert "route 172.20.1.0/27 max 29 as 4242420002;" in conf

            async def established() -> bool:
                return any(
                    p.name == name and p.bgp_state == "Established" for p in await a.client.protocols()
                )

            await until("the eBGP session", established)

            async def imported(prefix: str) -> bool:
                return prefix in await text(a.client, f"show route import table {name}.ipv4")

            for prefix in ("172.20.1.0/27", "172.20.3.0/27", "172.20.5.0/27"):
                await until(f"{prefix} in A's import table", lambda p=prefix: imported(p))

            async def in_master(prefix: str) -> bool:
                return name in await text(a.client, f"show route {prefix}")

            # Strict: the valid routes are accepted, unknown and invalid dropped.
            await until("valid 172.20.1.0/27", lambda: in_master("172.20.1.0/27"))
            await until("valid fd42:1::/48", lambda: in_master("fd42:1::/48"))
            assert not await in_master("172.20.3.0/27")
            assert not await in_master("172.20.5.0/27")

            # The ROA tables hold the file's entries; the check is healthy.
            await health.run_once()
            assert health.entries == {"dn42_roa": 2, "dn42_roa_v6": 1}
            check = health.verdict()
            assert check is not None and check.verdict == "healthy", check

            # The route refresh asks X to send its routes again: A receives them anew.
            async def received() -> int:
                stats = await text(a.client, f"show protocols all {name}")
                return sum(int(n) for n in re.findall(r"Import updates:\s+(\d+)", stats))

            before = await received()
            refresh = RouteRefresh(
                plugin_context(
                    "bird",
                    state_dir=tmp_path / "a" / "refresh",
                    section=BirdConfig(route_refresh_spread=0),
                    backends={"routing": a},
                )
            )
            assert await refresh.run_once() == {"refreshed": 1, "failed": {}}
            await until("X's routes sent again", lambda: _grew(received(), before + 4))

            # Loose (a local pin): unknown passes now, invalid still does not.
            assert (await a.set_local(attrs.evolve(a.local, roa_mode="loose"))) is not None
            await until("unknown 172.20.3.0/27 under loose", lambda: in_master("172.20.3.0/27"))
            assert not await in_master("172.20.5.0/27")

            # The file changes: the task re-renders, BIRD's table follows.
            roa_file.write_text(ROAS + "route 172.20.3.0/27 max 27 as 4242420002;\n")
            await sources.run_once()
            await health.run_once()
            assert health.entries == {"dn42_roa": 3, "dn42_roa_v6": 1}

            # No static ROA at all: the tables empty and the check turns degraded.
            result = await a.set_local(attrs.evolve(a.local, static=StaticRoa()))
            assert result is not None and result.ok
            assert not (tmp_path / "a" / "etc" / "moenet_roa4.conf").exists()
            await health.run_once()
            assert health.entries == {"dn42_roa": 0, "dn42_roa_v6": 0}
            check = health.verdict()
            assert check is not None and check.verdict == "degraded" and "empty" in check.reason, check
            ctx.close()
        finally:
            await a.aclose()
