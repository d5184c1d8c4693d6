"""The looking-glass proxy's own listener under load and abuse: the connection cap
(held requests, then ``503`` at once, then room again), BIRD's query cap, idle and
half-sent connections, the per-request timeouts and the ``Host`` check (DNS
rebinding). Real HTTP on a loopback port, requests built as bird-lg-go's frontend
builds them; BIRD is the fake control socket of ``helpers.nettools``, gated so a
test decides when each query is answered."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.nettools import FakeBird, frontend_url
from helpers.polling import until
from loguru import logger
from moenet_nettools.config import LgConfig
from moenet_nettools.lg import LookingGlass
from moenet_nettools.targets import DN42_TARGETS, TargetPolicy
from prometheus_client import CollectorRegistry, Counter
from yarl import URL

#: What bird-lg-go's frontend sends (Go's net/http client, frontend/lgproxy.go).
GO_HEADERS = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}
OK_TEXT = "Name       Proto      Table      State  Since         Info\n"


class Turnstile:
    """A gate for :class:`FakeBird` that lets queries through one at a time."""

    def __init__(self) -> None:
        self._sem = asyncio.Semaphore(0)

    async def wait(self) -> None:
        await self._sem.acquire()

    def let_through(self, n: int = 1) -> None:
        for _ in range(n):
            self._sem.release()


class Proxy:
    def __init__(self, glass: LookingGlass, registry: CollectorRegistry) -> None:
        self.glass = glass
        self.registry = registry
        host, port = glass.bound[0]
        self.port = port
        self.base = f"http://{host}:{port}"

    def dropped(self, reason: str) -> float:
        return self.registry.get_sample_value("lg_connections_dropped_total", {"reason": reason}) or 0.0


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[LookingGlass] = []

    async def make(**kw: Any) -> Proxy:
        registry = CollectorRegistry()
        cfg = LgConfig(enabled=True, listen="127.0.0.1:0", bird_socket=str(tmp_path / "bird.ctl"), **kw)
        glass = LookingGlass(
            cfg=cfg,
            policy=TargetPolicy.build(DN42_TARGETS),
            log=logger,
            requests=Counter("lg_requests", "", ["endpoint", "result"], registry=registry),
            dropped=Counter("lg_connections_dropped", "", ["reason"], registry=registry),
        )
        await glass.start()
        started.append(glass)
        return Proxy(glass, registry)

    yield make
    for glass in started:
        await glass.stop()


async def frontend_get(
    base: str, endpoint: str, command: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """One request on its own connection, as the frontend makes it."""
    url = URL(frontend_url(base, endpoint, command), encoded=True)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(url, headers={**GO_HEADERS, **(headers or {})}) as resp,
    ):
        return resp.status, (await resp.content.read(65536)).decode()


def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "bird.ctl"


@pytest.mark.parametrize(
    ("limits", "refusal"),
    [
        # The connection cap: the N+1th connection's request is answered 503.
        ({"max_connections": 3, "max_concurrent": 8}, "Too many connections"),
        # BIRD's query cap: the same, one level down.
        ({"max_connections": 32, "max_concurrent": 3}, "Too many concurrent requests"),
    ],
)
async def test_the_cap_refuses_at_once_and_frees_up(
    tmp_path: Path, proxy: Callable[..., Any], limits: dict[str, int], refusal: str
) -> None:
    gate = Turnstile()
    async with FakeBird(sock_path(tmp_path), gate=gate) as bird:  # type: ignore[arg-type]
        p = await proxy(**limits)
        held = [asyncio.create_task(frontend_get(p.base, "bird", "show protocols")) for _ in range(3)]
        try:
            await until("3 queries held at BIRD", lambda: bird.waiting == 3)
            # The 4th is refused at once, while the three are still held, and BIRD
            # never sees it (wait_for: a queued request would hang here, not pass).
            status, text = await asyncio.wait_for(frontend_get(p.base, "bird", "show protocols"), 10)
            assert status == 503 and text.startswith(refusal), text
            assert bird.received.count("show protocols") == 3
            assert not any(t.done() for t in held)
            # One completes ...
            gate.let_through()
            done, _ = await asyncio.wait(held, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            assert [t.result() for t in done] == [(200, OK_TEXT + _rest())]
            # ... and the next one is served.
            nxt = asyncio.create_task(frontend_get(p.base, "bird", "show protocols"))
            held.append(nxt)
            await until("the next query at BIRD", lambda: bird.received.count("show protocols") == 4)
            gate.let_through(3)
            assert await asyncio.wait_for(nxt, 10) == (200, OK_TEXT + _rest())
        finally:
            gate.let_through(len(held))
            await asyncio.gather(*held, return_exceptions=True)
    assert all(t.result()[0] == 200 for t in held)


def _rest() -> str:
    return (
        "device1    Device     ---        up     09:51:06.181  \n"
        "static4    Static     master4    up     09:51:06.181  \n"
    )


def raw_connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setblocking(False)
    return s


async def closed_by_peer(s: socket.socket, timeout: float = 10.0) -> bool:
    """Read until the server closes (EOF or reset); False after ``timeout``."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await asyncio.wait_for(loop.sock_recv(s, 65536), timeout)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_idle_and_half_sent_connections_make_room(tmp_path: Path, proxy: Callable[..., Any]) -> None:
    async with FakeBird(sock_path(tmp_path)):
        p = await proxy(max_connections=2, header_timeout=60)
        # Two connections hold the cap: one silent, one with half a header.
        silent, slow = raw_connect(p.port), raw_connect(p.port)
        slow.send(b"GET /bird?q=show+status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            await until("2 connections open", lambda: p.glass.connections == 2)
            # A real request is served: the oldest idle connection is closed for it.
            assert await frontend_get(p.base, "bird", "show protocols") == (200, OK_TEXT + _rest())
            assert await closed_by_peer(silent)
            assert p.dropped("evicted") >= 1
        finally:
            silent.close()
            slow.close()


async def test_a_half_sent_header_is_cut_after_header_timeout(
    tmp_path: Path, proxy: Callable[..., Any]
) -> None:
    p = await proxy(header_timeout=1)
    slow = raw_connect(p.port)
    try:
        slow.send(b"GET /bird?q=show+status HTTP/1.1\r\n")  # and never the rest
        started = time.monotonic()
        assert await closed_by_peer(slow, timeout=15)
        assert time.monotonic() - started >= 0.9
        assert p.dropped("header_timeout") == 1
        await until("the connection released", lambda: p.glass.connections == 0)
    finally:
        slow.close()


async def test_request_timeout_answers_504(tmp_path: Path, proxy: Callable[..., Any]) -> None:
    gate = Turnstile()  # never let through: BIRD "hangs" past requestTimeout
    async with FakeBird(sock_path(tmp_path), gate=gate) as bird:  # type: ignore[arg-type]
        p = await proxy(request_timeout=1, query_timeout=30)
        try:
            status, text = await asyncio.wait_for(frontend_get(p.base, "bird", "show protocols"), 15)
            assert (status, text) == (504, "Request timed out after 1 s\n")
            # The query was abandoned: its BIRD connection is closed, the slot is free.
            assert p.glass._bird.running == 0
        finally:
            gate.let_through(bird.waiting + 1)


async def test_a_client_that_does_not_read_is_cut(tmp_path: Path, proxy: Callable[..., Any]) -> None:
    line = "x" * 60000
    reply = "1007-Table master4:\n" + f" {line}\n" * 300 + "0000 \n"  # ~18 MB of answer
    async with FakeBird(sock_path(tmp_path), reply=reply):
        p = await proxy(request_timeout=3, output_limit=32 << 20)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", p.port))
        try:
            s.sendall(b"GET /bird?q=show+route HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
            await until("the connection cut", lambda: p.dropped("send_timeout") == 1, timeout=30)
            await until("the connection released", lambda: p.glass.connections == 0)
        finally:
            s.close()


@pytest.mark.parametrize(
    ("settings", "host", "want"),
    [
        # Loopback listen, nothing configured: loopback names and addresses only.
        ({}, "evil.example:{port}", 421),
        ({}, "lg.example.dn42", 421),
        ({}, "localhost:{port}", 200),
        ({}, "lg.localhost:{port}", 200),
        ({}, "127.0.0.1:{port}", 200),
        ({}, "127.0.0.1", 200),
        ({}, "[::1]:{port}", 200),
        ({}, "bad host", 421),
        # Names the operator lists (bird-lg-go's <server>.<domain>).
        ({"allowed_hosts": ["jp1.lg.example.dn42"]}, "jp1.lg.example.dn42:{port}", 200),
        ({"allowed_hosts": ["jp1.lg.example.dn42"]}, "JP1.lg.example.dn42.:{port}", 200),
        ({"allowed_hosts": ["jp1.lg.example.dn42"]}, "us1.lg.example.dn42:{port}", 421),
        # "*": the operator switched the check off.
        ({"allowed_hosts": ["*"]}, "evil.example:{port}", 200),
    ],
)
async def test_host_check(
    tmp_path: Path, proxy: Callable[..., Any], settings: dict[str, Any], host: str, want: int
) -> None:
    async with FakeBird(sock_path(tmp_path)) as bird:
        p = await proxy(**settings)
        status, text = await frontend_get(
            p.base, "bird", "show protocols", {"Host": host.format(port=p.port)}
        )
    assert status == want, text
    if want == 421:
        assert "lg.allowedHosts" in text
        assert bird.received == []  # refused before anything ran
    else:
        assert text == OK_TEXT + _rest()


async def test_a_request_without_host_is_not_a_browser(tmp_path: Path, proxy: Callable[..., Any]) -> None:
    async with FakeBird(sock_path(tmp_path)):
        p = await proxy()
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"GET /bird?q=show+protocols HTTP/1.0\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer.startswith(b"HTTP/1.0 200 ") or answer.startswith(b"HTTP/1.1 200 "), answer[:100]


@pytest.mark.parametrize(
    ("settings", "checked"),
    [
        ({}, True),
        ({"listen": "[::1]:8000"}, True),
        ({"listen": "localhost:8000"}, True),
        # A network listener is reached by name (bird-lg-go's --domain); the
        # client allow-list guards it. Names given: checked there too.
        ({"listen": "0.0.0.0:8000", "allowed_clients": ["172.20.0.0/14"]}, False),
        ({"listen": "[fd42::1]:8000", "allowed_hosts": ["jp1.lg.dn42"]}, True),
        ({"allowed_hosts": ["*"]}, False),
    ],
)
def test_when_the_host_is_checked(settings: dict[str, Any], checked: bool) -> None:
    assert LgConfig(enabled=True, **settings).checks_host() is checked
