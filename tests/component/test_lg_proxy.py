"""The looking-glass proxy in a running agent, against real BIRD 3 in namespaces,
with requests built exactly as bird-lg-go's frontend builds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import moenet_nettools.lg as lg_plugin
import pytest
from helpers.nettools import ASN_B, B4, B6, FRONTEND_COMMANDS, NET6_B, NET_A, NET_B, TwoNodes, frontend_url
from yarl import URL

from moenet_core.testing import NetNS

#: What bird-lg-go's frontend sends (Go's net/http client, frontend/lgproxy.go).
GO_HEADERS = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}


@pytest.fixture
def nodes(netns: Callable[[], NetNS], tmp_path: Path) -> Any:
    with TwoNodes(netns, tmp_path) as rig:
        rig.wait_established()
        yield rig


def lg_config(sock: str, **lg: Any) -> dict[str, Any]:
    return {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": "http://127.0.0.1:9", "token": "cp-token-123456"},
        "server": {"listen": "127.0.0.1:0"},
        "lg": {"enabled": True, "listen": "127.0.0.1:0", "birdSocket": sock, **lg},
    }


async def frontend_get(
    http: aiohttp.ClientSession, base: str, endpoint: str, command: str
) -> tuple[int, str]:
    """One request as the frontend makes it: the URL escaped by Go's rules, sent
    as is, and only the first 64 KiB of the body read."""
    url = URL(frontend_url(base, endpoint, command), encoded=True)
    async with http.get(url, headers=GO_HEADERS) as resp:
        body = await resp.content.read(65536)
        return resp.status, body.decode()


async def test_frontend_requests_get_bird_s_real_answers(nodes: TwoNodes, agent_harness) -> None:
    with nodes.a.entered():
        async with (
            agent_harness(lg_config(nodes.socket_a), plugins=[("lg", lg_plugin)]) as h,
            aiohttp.ClientSession() as http,
        ):
            glass = h.agent.context("lg").stash["moenet_nettools.lg"]
            host, port = glass.bound[0]
            base = f"http://{host}:{port}"

            # The summary page: the frontend renders a table only when the answer
            # starts with "name" (frontend/webserver.go).
            status, text = await frontend_get(http, base, "bird", "show protocols")
            assert status == 200
            assert text[:4].lower() == "name"
            lines = text.splitlines()
            assert any(line.split()[:2] == ["peer_b", "BGP"] and "Established" in line for line in lines), (
                text
            )
            assert not any(line[:4].isdigit() and line[4:5] in (" ", "-") for line in lines), "codes left in"

            status, text = await frontend_get(http, base, "bird6", "show protocols all 'peer_b'")
            assert status == 200
            assert "BGP state:          Established" in text
            assert f"Neighbor AS:      {ASN_B}" in text

            status, text = await frontend_get(http, base, "bird", "show route for 172.20.20.5 all")
            assert status == 200
            assert text.startswith("Table master4:\n" + NET_B)
            assert f"\tbgp_path: {ASN_B}\n" in text  # BIRD 3's attribute names
            assert f"\tbgp_next_hop: {B4}\n" in text

            status, text = await frontend_get(http, base, "bird", f"show route where net ~ [ {NET6_B}+ ] all")
            assert status == 200 and NET6_B in text and "bgp_path" in text

            # Every command the frontend's pages build is accepted by the grammar
            # and by BIRD 3 (no "syntax error" answers).
            for command in FRONTEND_COMMANDS:
                status, text = await frontend_get(http, base, "bird", command.replace("static4", "peer_b"))
                assert status == 200, (command, text)
                assert "syntax error" not in text.lower(), (command, text)
            status, text = await frontend_get(http, base, "bird", "show route protocol 'static4' all")
            assert NET_A in text

            # Refused, with BIRD untouched: it still runs and nothing was reconfigured.
            for command in ("configure", "show route;configure", "disable peer_b", "down"):
                status, text = await frontend_get(http, base, "bird", command)
                assert status == 403 and text.startswith("Forbidden: "), (command, text)
            status, text = await frontend_get(http, base, "bird", "show protocols")
            assert "peer_b" in text and "Established" in text
            status, text = await frontend_get(http, base, "bird", "show status")
            assert "Daemon is up and running" in text

            metrics = h.agent.metrics.registry.get_sample_value
            assert metrics("moenet_lg_requests_total", {"endpoint": "bird", "result": "forbidden"}) == 4


async def test_traceroute_through_the_proxy(nodes: TwoNodes, agent_harness) -> None:
    with nodes.a.entered():
        async with (
            agent_harness(lg_config(nodes.socket_a), plugins=[("lg", lg_plugin)]) as h,
            aiohttp.ClientSession() as http,
        ):
            host, port = h.agent.context("lg").stash["moenet_nettools.lg"].bound[0]
            base = f"http://{host}:{port}"
            status, text = await frontend_get(http, base, "traceroute", B4)
            assert status == 200, text
            assert text.startswith(f"traceroute to {B4} ({B4})")
            assert f" 1  {B4} " in text or f" 1  {B4} ({B4})" in text
            status, text = await frontend_get(http, base, "traceroute6", B6)
            assert status == 200, text
            assert B6 in text.splitlines()[1]
            # Outside DN42, an option, a name resolving to loopback: refused, nothing run.
            for target in ("192.0.2.1", "-n 172.20.1.2", "localhost"):
                status, text = await frontend_get(http, base, "traceroute", target)
                assert status == 400 and text.startswith("Invalid target"), (target, text)


async def test_allowed_clients_and_stop(nodes: TwoNodes, agent_harness) -> None:
    with nodes.a.entered():
        cfg = lg_config(nodes.socket_a, allowedClients=["172.20.0.0/14"])
        async with aiohttp.ClientSession() as http:
            async with agent_harness(cfg, plugins=[("lg", lg_plugin)]) as h:
                host, port = h.agent.context("lg").stash["moenet_nettools.lg"].bound[0]
                base = f"http://{host}:{port}"
                status, text = await frontend_get(http, base, "bird", "show protocols")
                assert status == 403 and "not allowed" in text
            # Stopped with the agent: the port no longer answers.
            with pytest.raises(aiohttp.ClientConnectionError):
                await frontend_get(http, base, "bird", "show protocols")


async def test_frontend_host_names(nodes: TwoNodes, agent_harness) -> None:
    """The frontend reaches a node as ``<server>.<--domain>:<port>``: on a loopback
    listener that name must be listed (a DNS-rebinding page uses a name too)."""
    with nodes.a.entered():
        for allowed, want in (([], 421), (["jp1.lg.example.dn42"], 200)):
            cfg = lg_config(nodes.socket_a, allowedHosts=allowed)
            async with (
                agent_harness(cfg, plugins=[("lg", lg_plugin)]) as h,
                aiohttp.ClientSession() as http,
            ):
                host, port = h.agent.context("lg").stash["moenet_nettools.lg"].bound[0]
                url = URL(frontend_url(f"http://{host}:{port}", "bird", "show protocols"), encoded=True)
                for name in ("jp1.lg.example.dn42", "rebound.attacker.example"):
                    headers = {**GO_HEADERS, "Host": f"{name}:{port}"}
                    async with http.get(url, headers=headers) as resp:
                        text = await resp.text()
                    if name == "jp1.lg.example.dn42" and want == 200:
                        assert resp.status == 200 and "peer_b" in text and "Established" in text, text
                    else:
                        assert resp.status == 421 and "lg.allowedHosts" in text, (name, text)
                metrics = h.agent.metrics.registry.get_sample_value
                refused = metrics("moenet_lg_requests_total", {"endpoint": "any", "result": "host"})
                assert refused == (2 if want == 421 else 1)
