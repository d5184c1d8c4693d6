"""ping, tcping, trace, route and path on the running agent's local API, from
namespace ``a`` to namespace ``b`` (real ping, traceroute and BIRD 3)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import moenet_nettools.tools as nettools
import pytest
from helpers.nettools import ASN_B, B4, B6, NET_B, TwoNodes

from moenet_core.testing import NetNS

TOKEN = "nettools-test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def nodes(netns: Callable[[], NetNS], tmp_path: Path) -> Any:
    with TwoNodes(netns, tmp_path) as rig:
        yield rig


def config(sock: str, **nt: Any) -> dict[str, Any]:
    return {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": "http://127.0.0.1:9", "token": "cp-token-123456"},
        "server": {"listen": "127.0.0.1:0", "token": TOKEN},
        "nettools": {"birdSocket": sock, "pingCount": 2, "pingWait": 1.0, "traceWait": 1.0, **nt},
    }


async def call(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def test_tools_from_one_namespace_to_another(nodes: TwoNodes, agent_harness) -> None:
    # Something listening on b's 8080 (the kernel completes the handshake).
    with nodes.b.entered():
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((B4, 8080))
    listener.listen(8)
    nodes.wait_established()
    try:
        with nodes.a.entered():
            async with (
                agent_harness(config(nodes.socket_a), plugins=[("nettools", nettools)], api=True) as h,
                aiohttp.ClientSession() as http,
            ):
                host, port = h.agent.api.bound[0]
                base = f"http://{host}:{port}"

                status, body = await call(http, base + "/ping", {"target": B4})
                assert status == 200, body
                assert body["target"] == B4 and body["exitCode"] == 0 and body["timedOut"] is False
                assert "2 packets transmitted, 2 received, 0% packet loss" in body["result"]

                status, body = await call(http, base + "/plugins/nettools/ping", {"target": B6})
                assert status == 200, body
                assert f"PING {B6}" in body["result"] and " 0% packet loss" in body["result"]

                status, body = await call(http, base + "/trace", {"target": B4})
                assert status == 200, body
                lines = body["result"].splitlines()
                assert lines[0].startswith(f"traceroute to {B4} ({B4}), 20 hops max")
                assert lines[1].split()[:2] == ["1", B4]

                status, body = await call(http, base + "/tcping", {"target": f"{B4}:8080"})
                assert status == 200, body
                assert body["succeeded"] == 4 and body["port"] == 8080
                assert "4 connects, 4 succeeded, 0% failed" in body["result"]
                status, body = await call(http, base + "/tcping", {"target": B4, "port": 8081})
                assert status == 200, body
                assert body["succeeded"] == 0 and "connection refused" in body["result"]

                status, body = await call(http, base + "/route", {"target": "172.20.20.5"})
                assert status == 200, body
                assert body["result"].startswith(f"Table master4:\n{NET_B}")
                assert f"\tbgp_path: {ASN_B}\n" in body["result"]

                status, body = await call(http, base + "/path", {"target": "172.20.20.5"})
                assert status == 200, body
                assert body["result"] == "".join(
                    line + "\n"
                    for line in body["result"].splitlines()
                    if "bgp_path" in line or "via" in line or "unicast" in line
                )
                assert f"\tbgp_path: {ASN_B}\n" in body["result"] and f"via {B4} on veth-a" in body["result"]
                assert "bgp_local_pref" not in body["result"]

                # Not DN42, not allowed: refused without running anything.
                status, body = await call(http, base + "/ping", {"target": "192.0.2.1"})
                assert (status, body["code"]) == (403, "target_not_allowed")
                metrics = h.agent.metrics.registry.get_sample_value
                assert metrics("moenet_nettools_requests_total", {"tool": "ping", "result": "ok"}) == 2
    finally:
        listener.close()


async def test_a_slow_trace_is_killed_and_answered(nodes: TwoNodes, agent_harness) -> None:
    # b drops everything from a: traceroute waits on every hop, past the limit.
    nodes.b.run("ip", "route", "add", "blackhole", "172.20.99.0/24")
    with nodes.a.entered():
        cfg = config(nodes.socket_a, timeout=2.0, traceWait=1.0, traceMaxHops=30)
        async with (
            agent_harness(cfg, plugins=[("nettools", nettools)], api=True) as h,
            aiohttp.ClientSession() as http,
        ):
            nodes.a.run("ip", "route", "add", "172.20.99.0/24", "via", B4)
            host, port = h.agent.api.bound[0]
            status, body = await call(http, f"http://{host}:{port}/trace", {"target": "172.20.99.1"})
            assert status == 200, body
            assert body["timedOut"] is True and body["exitCode"] is None
            assert body["result"].startswith("traceroute to 172.20.99.1")
            assert body["result"].endswith("[timed out after 2 s]\n")
    # The killed traceroute is gone from a's namespace.
    assert [pid for pid in nodes.a.pids() if _comm(pid) == "traceroute"] == []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
