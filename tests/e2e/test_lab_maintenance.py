"""Maintenance drain and ``/restart`` end to end on the two-node lab.

Drain is verified where it matters: in the *other* node's BIRD, on the routes it
imports over the session. Entering maintenance on node 1 must put GRACEFUL_SHUTDOWN
(65535,0) on them and lengthen their AS path (lower preference) without taking the
session down; the state survives an agent restart; leaving maintenance restores the
routes. The lab fixture and helpers are the scenario module's.
"""

from __future__ import annotations

import re
import time

import helpers.lab
import pytest
from helpers.lab import _until, agent_status, api, bgp_since, imported, metric, tunnel

pytestmark = [pytest.mark.netns, pytest.mark.slow]

lab = helpers.lab.lab  # the same fresh-lab fixture

GSHUT = "(65535,0)"


def path_length(route: str) -> int:
    m = re.search(r"bgp_path:([^\n]*)", route)
    assert m, route
    return len(m.group(1).split())


async def test_maintenance_drains_exports_survives_restart_and_restores(lab):
    n1, n2 = lab.nodes
    await lab.wait_routes(n2, n1)
    before = await imported(lab, n2, n1)
    assert set(before) == {n1.prefix4, n1.prefix6}
    assert all(GSHUT not in r for r in before.values()), before
    plain_len = {p: path_length(r) for p, r in before.items()}
    since2 = await bgp_since(lab, n2)

    code, body = await api(n1, "POST", "/maintenance/start", {"reason": "lab drain"})
    assert code == 200 and body["enabled"] is True, body
    t = time.monotonic()

    async def drained() -> dict[str, str] | None:
        routes = await imported(lab, n2, n1)
        ok = set(routes) == set(before) and all(GSHUT in r for r in routes.values())
        return routes if ok else None

    routes = await _until("(65535,0) on the routes node 2 imports", drained, 30)
    lab.log(f"maintenance: (65535,0) seen by the peer {time.monotonic() - t:.1f}s after /maintenance/start")
    for p, r in routes.items():
        assert path_length(r) == plain_len[p] + 2, r  # our AS prepended twice: less preferred
    # A drain is not a shutdown: the session stays up on both sides.
    assert await bgp_since(lab, n2) == since2
    st = await agent_status(n1)
    assert st["maintenance"]["enabled"] is True and st["maintenance"]["reason"] == "lab drain"
    assert await metric(n1, "moenet_agent_maintenance") == 1.0

    # The state survives an agent restart, and the restarted agent re-renders nothing.
    since1 = await bgp_since(lab, n1)
    assert await lab.stop_agent(n1) == 0
    await lab.start_agent(n1)
    await lab._watch(n1, n1.cp.wait_for("sessions", len(n1.cp.calls("sessions", "GET")) + 2, method="GET"))
    st = await agent_status(n1)
    assert st["maintenance"]["enabled"] is True, st["maintenance"]
    assert all(GSHUT in r for r in (await imported(lab, n2, n1)).values())
    assert await bgp_since(lab, n1) == since1

    code, body = await api(n1, "POST", "/maintenance/stop", {})
    assert code == 200 and body["enabled"] is False, body
    t = time.monotonic()

    async def restored() -> dict[str, str] | None:
        routes = await imported(lab, n2, n1)
        ok = set(routes) == set(before) and all(GSHUT not in r for r in routes.values())
        return routes if ok else None

    routes = await _until("(65535,0) gone from node 2's routes", restored, 30)
    lab.log(f"maintenance: restored at the peer {time.monotonic() - t:.1f}s after /maintenance/stop")
    assert {p: path_length(r) for p, r in routes.items()} == plain_len
    assert await bgp_since(lab, n2) == since2
    assert await metric(n1, "moenet_agent_maintenance") == 0.0


async def test_restart_endpoint_restarts_one_session_and_only_the_agents(lab):
    n1, _ = lab.nodes
    ifindex = (await tunnel(n1))["ifindex"]
    since = await bgp_since(lab, n1)

    code, body = await api(n1, "POST", "/restart", {"interface": n1.interface})
    assert code == 200, body
    assert body == {
        "plugin": "sessions",
        "session": n1.session_uuid,
        "interface": n1.interface,
        "tunnelRepaired": False,
        "tunnelBounced": "link down and up",
        "protocols": [n1.bgp_protocol],
    }
    assert (await tunnel(n1))["ifindex"] == ifindex  # bounced in place (link down/up), not re-created
    # The BGP session really restarted (a new "since"), and comes back.

    async def reestablished() -> bool:
        try:
            return await bgp_since(lab, n1) != since
        except AssertionError:
            return False  # not Established yet

    await _until("BGP Established again after /restart", reestablished, 60)

    code, body = await api(n1, "POST", "/restart", {"interface": "lo"})
    assert code == 404, body
    code, body = await api(n1, "POST", "/restart", {"interface": "../etc"})
    assert code == 400, body
