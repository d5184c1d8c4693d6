"""The nettools routes on the real local API: protection, the Go agent's paths,
target validation before anything runs, the read-only BIRD exchange, limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import moenet_nettools.tools as nettools
import pytest
from helpers.nettools import FakeBird

TOKEN = "nettools-test-token-1234"

ROUTE_REPLY = (
    "1007-Table master4:\n"
    " 172.20.10.0/24       unicast [peer1 09:51:06.181] * (100) [AS4242420001i]\n"
    " \tvia 172.20.1.2 on veth0\n"
    " \tType: BGP univ\n"
    " \tBGP.origin: IGP\n"
    " \tBGP.as_path: 4242420001\n"
    " \tBGP.next_hop: 172.20.1.2\n"
    "0000 \n"
)


def config(cp_url: str, sock: Path, **nt: Any) -> dict[str, Any]:
    return {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": cp_url, "token": "cp-token-123456"},
        "server": {"listen": "127.0.0.1:0", "token": TOKEN},
        "nettools": {"birdSocket": str(sock), **nt},
    }


def base(agent: Any) -> str:
    host, port = agent.api.bound[0]
    return f"http://{host}:{port}"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def post(http: aiohttp.ClientSession, url: str, body: Any, auth: bool = True) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=AUTH if auth else {}) as resp:
        return resp.status, await resp.json()


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "bird.ctl"


async def test_route_and_path_ask_bird_read_only(fake_cp, agent_harness, sock: Path) -> None:
    async with (
        FakeBird(sock, reply=ROUTE_REPLY) as bird,
        agent_harness(config(fake_cp.url, sock), plugins=[("nettools", nettools)], api=True) as h,
        aiohttp.ClientSession() as http,
    ):
        url = base(h.agent)
        # Protected like the core's: no token, no answer, nothing asked.
        for path in ("/plugins/nettools/route", "/route"):
            status, body = await post(http, url + path, {"target": "172.20.10.5"}, auth=False)
            assert (status, body["code"]) == (401, "unauthorized")
        assert bird.received == []

        status, body = await post(http, url + "/plugins/nettools/route", {"target": "172.20.10.5"})
        assert status == 200, body
        assert body["target"] == "172.20.10.5"
        assert body["result"].startswith("Table master4:\n172.20.10.0/24       unicast [peer1")
        assert "\tBGP.next_hop: 172.20.1.2\n" in body["result"]
        assert bird.received == ["restrict", "show route for 172.20.10.5 all"]

        # The Go agent's un-prefixed path, and a prefix; path filters the lines.
        status, body = await post(http, url + "/path", {"target": "172.20.10.0/24"})
        assert status == 200, body
        assert body["result"] == (
            "172.20.10.0/24       unicast [peer1 09:51:06.181] * (100) [AS4242420001i]\n"
            "\tvia 172.20.1.2 on veth0\n"
            "\tBGP.as_path: 4242420001\n"
        )
        assert bird.received[-1] == "show route for 172.20.10.0/24 all"

        # Input that must never reach BIRD.
        before = list(bird.received)
        for target in ("172.20.0.1 all; configure", "172.20.0.1\nconfigure", "-1", "172.20.0.1/8", ""):
            status, body = await post(http, url + "/route", {"target": target})
            assert (status, body["code"]) == (400, "invalid_target"), target
        assert bird.received == before


async def test_probe_targets_are_refused_before_anything_runs(fake_cp, agent_harness, sock: Path) -> None:
    async with (
        agent_harness(config(fake_cp.url, sock), plugins=[("nettools", nettools)], api=True) as h,
        aiohttp.ClientSession() as http,
    ):
        url = base(h.agent)
        cases = [
            ("/ping", {"target": "-c1000"}, 400, "invalid_target"),
            ("/ping", {"target": "172.20.0.1 -f"}, 400, "invalid_target"),
            ("/trace", {"target": "8.8.8.8"}, 403, "target_not_allowed"),
            ("/plugins/nettools/ping", {"target": "127.0.0.1"}, 403, "target_not_allowed"),
            ("/plugins/nettools/trace", {"target": "localhost"}, 403, "target_not_allowed"),
            ("/tcping", {"target": "224.0.0.1:80"}, 403, "target_not_allowed"),
            ("/tcping", {"target": "172.20.0.1", "port": 0}, 400, "invalid_target"),
            ("/ping", {"target": "172.20.0.1", "count": 1000}, 400, "bad_request"),
            ("/ping", {}, 400, "bad_request"),
            ("/ping", ["172.20.0.1"], 400, "bad_request"),
        ]
        for path, body, want_status, want_code in cases:
            status, answer = await post(http, url + path, body)
            assert (status, answer["code"]) == (want_status, want_code), (path, body, answer)
        async with http.post(url + "/ping", data=b"{not json", headers=AUTH) as resp:
            assert resp.status == 400
        metrics = h.agent.metrics.registry.get_sample_value
        assert metrics("moenet_nettools_requests_total", {"tool": "ping", "result": "refused"}) == 3


async def test_bird_that_does_not_restrict_is_not_asked(fake_cp, agent_harness, sock: Path) -> None:
    async with (
        FakeBird(sock, restrict_reply="0000 \n") as bird,
        agent_harness(config(fake_cp.url, sock), plugins=[("nettools", nettools)], api=True) as h,
        aiohttp.ClientSession() as http,
    ):
        status, body = await post(http, base(h.agent) + "/route", {"target": "172.20.0.1"})
        assert (status, body["code"]) == (502, "bird_unavailable")
        assert "restricted" in body["error"]
        assert bird.received == ["restrict"]


async def test_concurrency_limit_answers_429(fake_cp, agent_harness, sock: Path) -> None:
    gate = asyncio.Event()
    async with (
        FakeBird(sock, reply=ROUTE_REPLY, gate=gate) as bird,
        agent_harness(
            config(fake_cp.url, sock, concurrency=1), plugins=[("nettools", nettools)], api=True
        ) as h,
        aiohttp.ClientSession() as http,
    ):
        url = base(h.agent)
        first = asyncio.create_task(post(http, url + "/route", {"target": "172.20.0.1"}))
        deadline = time.monotonic() + 10
        while bird.waiting == 0:
            assert time.monotonic() < deadline, "the first request never reached BIRD"
            await asyncio.sleep(0.01)
        status, body = await post(http, url + "/route", {"target": "172.20.0.2"})
        assert (status, body["code"]) == (429, "too_many_requests")
        gate.set()
        status, body = await first
        assert status == 200 and "172.20.10.0/24" in body["result"]
        status, _ = await post(http, url + "/route", {"target": "172.20.0.2"})
        assert status == 200


async def test_output_is_capped(fake_cp, agent_harness, sock: Path) -> None:
    long_reply = "1007-" + "x" * 100 + "\n" + (" " + "y" * 100 + "\n") * 200 + "0000 \n"
    async with (
        FakeBird(sock, reply=long_reply),
        agent_harness(
            config(fake_cp.url, sock, outputLimit=2048), plugins=[("nettools", nettools)], api=True
        ) as h,
        aiohttp.ClientSession() as http,
    ):
        status, body = await post(http, base(h.agent) + "/route", {"target": "172.20.0.1"})
        assert status == 200
        assert body["truncated"] is True
        assert len(body["result"]) <= 2048 + 40
        assert body["result"].endswith("[output truncated]\n")


async def test_two_plugins_offering_a_go_path_get_neither(fake_cp, agent_harness, sock: Path) -> None:
    from aiohttp import web

    from moenet_core import RouteSpec, hookimpl

    class Other:
        @hookimpl
        def moenet_api_routes(self, config: Any) -> list[RouteSpec]:
            async def ping(request: web.Request, ctx: Any) -> web.Response:
                return web.json_response({"result": "other"})

            return [RouteSpec(method="POST", path="/ping", handler=ping, mutating=False)]

    plugins = [("nettools", nettools), ("other", Other())]
    async with (
        agent_harness(config(fake_cp.url, sock), plugins=plugins, api=True) as h,
        aiohttp.ClientSession() as http,
    ):
        url = base(h.agent)
        status, body = await post(http, url + "/ping", {"target": "127.0.0.1"})
        assert status == 404
        status, body = await post(http, url + "/plugins/other/ping", {"target": "x"})
        assert (status, body) == (200, {"result": "other"})
        status, body = await post(http, url + "/plugins/nettools/ping", {"target": "127.0.0.1"})
        assert (status, body["code"]) == (403, "target_not_allowed")
        # The un-prefixed paths nobody else claims are still served.
        status, body = await post(http, url + "/trace", {"target": "127.0.0.1"})
        assert (status, body["code"]) == (403, "target_not_allowed")
