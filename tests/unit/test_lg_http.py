"""The looking-glass proxy's HTTP behaviour against a fake BIRD socket: bird-lg-go's
answers and status codes, nothing outside the grammar reaching BIRD, the client
allow-list, output limits and the non-loopback consent rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers.nettools import FakeBird, frontend_url
from loguru import logger
from moenet_nettools.config import LgConfig
from moenet_nettools.lg import LookingGlass, moenet_configure, postprocess_traceroute
from moenet_nettools.targets import DN42_TARGETS, TargetPolicy

from moenet_core import ConfigError
from moenet_core.config import build_config


def lg(sock: Path, **kw: Any) -> LookingGlass:
    cfg = LgConfig(enabled=True, bird_socket=str(sock), **kw)
    return LookingGlass(cfg=cfg, policy=TargetPolicy.build(DN42_TARGETS), log=logger)


async def client(glass: LookingGlass) -> TestClient:
    c = TestClient(TestServer(glass.app()))
    await c.start_server()
    return c


async def get(c: TestClient, endpoint: str, command: str) -> tuple[int, str, str]:
    url = frontend_url("", endpoint, command)
    async with c.get(url) as resp:
        return resp.status, resp.content_type, await resp.text()


async def test_bird_answers_plain_text_without_codes(tmp_path: Path) -> None:
    sock = tmp_path / "bird.ctl"
    async with FakeBird(sock) as bird:
        c = await client(lg(sock))
        try:
            for endpoint in ("bird", "bird6"):
                status, ctype, text = await get(c, endpoint, "show protocols")
                assert (status, ctype) == (200, "text/plain")
                assert text == (
                    "Name       Proto      Table      State  Since         Info\n"
                    "device1    Device     ---        up     09:51:06.181  \n"
                    "static4    Static     master4    up     09:51:06.181  \n"
                )
            assert bird.received == ["restrict", "show protocols"] * 2
        finally:
            await c.close()


@pytest.mark.parametrize(
    "command",
    ["configure", "show route;configure", "show route\nconfigure", "down", "show route where 1=1", "eval 1"],
)
async def test_commands_outside_the_grammar_never_reach_bird(tmp_path: Path, command: str) -> None:
    sock = tmp_path / "bird.ctl"
    async with FakeBird(sock) as bird:
        c = await client(lg(sock))
        try:
            status, _, text = await get(c, "bird", command)
        finally:
            await c.close()
    assert status == 403
    assert text.startswith("Forbidden: ")
    assert bird.received == []


async def test_bird_lg_go_answers_for_bad_requests(tmp_path: Path) -> None:
    sock = tmp_path / "bird.ctl"
    c = await client(lg(sock))
    try:
        async with c.get("/bird") as resp:
            assert (resp.status, await resp.text()) == (500, "Invalid Request\n")
        async with c.get("/whois?q=x") as resp:
            assert (resp.status, await resp.text()) == (500, "Invalid Request\n")
        status, _, text = await get(c, "traceroute", "-x 1.1.1.1")
        assert status == 400 and text.startswith("Invalid target")
        status, _, text = await get(c, "traceroute6", "127.0.0.1")
        assert status == 400 and "outside the allowed" in text
        # No BIRD: a 500 saying so.
        status, _, text = await get(c, "bird", "show status")
        assert status == 500 and "control socket" in text
    finally:
        await c.close()


async def test_clients_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    sock = tmp_path / "bird.ctl"
    async with FakeBird(sock) as bird:
        for allowed, want in ((["172.20.0.0/14", "fd00::/8"], 403), (["127.0.0.1"], 200)):
            c = await client(lg(sock, allowed_clients=allowed))
            try:
                status, _, _ = await get(c, "bird", "show protocols")
            finally:
                await c.close()
            assert status == want, allowed
        assert bird.received == ["restrict", "show protocols"]


async def test_output_limit(tmp_path: Path) -> None:
    sock = tmp_path / "bird.ctl"
    reply = "1007-Table master4:\n" + (" " + "z" * 99 + "\n") * 500 + "0000 \n"
    async with FakeBird(sock, reply=reply):
        c = await client(lg(sock, output_limit=4096))
        try:
            status, _, text = await get(c, "bird", "show route")
        finally:
            await c.close()
    assert status == 200
    assert text.endswith("\n(output truncated at 4096 bytes)\n")
    assert len(text) < 4096 + 64


def test_traceroute_output_like_bird_lg_go() -> None:
    out = (
        "traceroute to 172.20.1.2 (172.20.1.2), 30 hops max, 60 byte packets\n"
        " 1  172.20.0.1  0.1 ms\n"
        " 2  *\n"
        " 3  *\n"
        " 4  172.20.1.2  0.3 ms\n"
    )
    assert postprocess_traceroute(out) == (
        "traceroute to 172.20.1.2 (172.20.1.2), 30 hops max, 60 byte packets\n"
        " 1  172.20.0.1  0.1 ms\n"
        " 4  172.20.1.2  0.3 ms\n\n2 hops not responding."
    )


@pytest.mark.parametrize(
    ("section", "refused"),
    [
        ({"enabled": True, "listen": "0.0.0.0:8000"}, True),
        ({"enabled": True, "listen": ":8000"}, True),
        ({"enabled": True, "listen": "[::]:8000", "allowedClients": ["fd42::/48"]}, False),
        ({"enabled": True, "listen": "0.0.0.0:8000", "allowAnyClient": True}, False),
        ({"enabled": True, "listen": "127.0.0.1:8000"}, False),
        ({"enabled": True, "listen": "[::1]:8000"}, False),
        ({"enabled": False, "listen": "0.0.0.0:8000"}, False),
    ],
)
def test_a_public_listen_needs_an_allow_list_or_consent(section: dict[str, Any], refused: bool) -> None:
    raw = {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": "https://cp.example", "token": "cp-token-123456"},
        "lg": section,
    }
    config, _ = build_config(raw, env={})
    if refused:
        with pytest.raises(ConfigError, match="allowedClients"):
            moenet_configure(config)
    else:
        moenet_configure(config)
