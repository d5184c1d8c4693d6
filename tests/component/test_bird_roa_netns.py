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

import asyncio
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers.bird import U1, cp_data, policy, session, symbol
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.config import BirdConfig
from moenet_bird.refresh import RouteRefresh
from moenet_bird.roa import StaticRoa
from moenet_bird.roa_health import RoaHealth
from moenet_bird.roa_sources import RoaSources
from moenet_bird.testing import BirdDaemon

from moenet_core.state import StateStore
from moenet_core.testing import ManualClock, plugin_context, veth_pair

ROAS = """\
# a DN42-style static ROA file
route 172.20.1.0/27 max 29 as 4242420002;
route 172.20.5.0/27 max 29 as 4242420099;
route fd42:1::/48 max 64 as 4242420002;
"""

EXTERNAL = """\
log "{log}" all;
router id 192.0.2.2;
protocol device {{}}
protocol static ext4 {{
  ipv4;
  route 172.20.1.0/27 unreachable;
  route 172.20.3.0/27 unreachable;
  route 172.20.5.0/27 unreachable;
}}
protocol static ext6 {{ ipv6; route fd42:1::/48 unreachable; }}
protocol bgp to_a {{
  local fe80::2 as 4242420002;
  neighbor fe80::1234 as 4242421234;
  interface "ex-x";
  connect delay time 1;
  ipv4 {{ extended next hop on; import none; export all; }};
  ipv6 {{ import none; export all; }};
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


async def _grew(value: Any, at_least: int) -> bool:
    return bool(await value >= at_least)


async def text(client: BirdClient, command: str) -> str:
    return "\n".join((await client.command(command, check=False)).texts())


@pytest.mark.netns
async def test_strict_loose_static_file_and_health(netns: Any, tmp_path: Path) -> None:
    ns_a, ns_x = netns(), netns()
    veth_pair(ns_a, ns_x, "ex-a", "ex-x")
    ns_a.run("ip", "addr", "add", "fe80::1234/64", "dev", "ex-a", "nodad")
    ns_x.run("ip", "addr", "add", "fe80::2/64", "dev", "ex-x", "nodad")
    roa_file = tmp_path / "dn42_roa.conf"
    roa_file.write_text(ROAS)

    x = BirdDaemon(ns_x, tmp_path / "x")
    (tmp_path / "x" / "x.conf").write_text(EXTERNAL.format(log=x.log))
    with BirdDaemon(ns_a, tmp_path / "a").start() as bird_a, x.start(tmp_path / "x" / "x.conf"):
        a = BirdRoutingBackend(
            BirdClient(str(bird_a.socket)),
            str(tmp_path / "a" / "etc"),
            state=StateStore(tmp_path / "a" / "state"),
            loopback_interface="ex-a",
        )
        try:
            await a.start()
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
