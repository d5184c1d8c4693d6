"""The core's bounded aiohttp connections (``moenet_core.connlimits``) as a plugin
uses them: a subclass of :class:`ConnectionLimits` with its own policy at the cap
and its own report of what was closed, served through :class:`LimitedRunner`.
The local API (``test_api_hardening``) and the looking glass (``test_lg_limits``)
test their own policies on top; this checks the hooks they build on. Real HTTP
on a loopback port, raw sockets for the misbehaving clients."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from helpers.polling import until

from moenet_core import ConnectionLimits, LimitedConnection, LimitedRunner

BIG = 32 << 20  # more than any socket buffer holds


class Recording(ConnectionLimits):
    """Lets ``let_in_over`` connections in over the cap, then the default policy;
    records every closure reported through :meth:`count`."""

    def __init__(self, *, let_in_over: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.let_in_over = let_in_over
        self.reasons: list[str] = []

    def at_cap(self, conn: LimitedConnection) -> bool:
        return self.over < self.let_in_over or super().at_cap(conn)

    def count(self, reason: str) -> None:
        super().count(reason)
        self.reasons.append(reason)


class App:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.app = web.Application(middlewares=[self._over_cap])
        self.app.router.add_get("/slow", self._slow)
        self.app.router.add_get("/fast", self._fast)
        self.app.router.add_get("/big", self._big)

    @web.middleware
    async def _over_cap(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if isinstance(request.protocol, LimitedConnection) and request.protocol.over_cap:
            return web.Response(status=503, text="over the cap")
        resp: web.StreamResponse = await handler(request)
        return resp

    async def _slow(self, request: web.Request) -> web.Response:
        self.started.set()
        await self.release.wait()
        return web.Response(text="slow")

    async def _fast(self, request: web.Request) -> web.Response:
        return web.Response(text="fast")

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * BIG)


@asynccontextmanager
async def serving(app: App, limits: ConnectionLimits) -> AsyncIterator[int]:
    runner = LimitedRunner(app.app, limits=limits, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        app.release.set()
        await runner.cleanup()


async def connect(port: int, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def closed_by_server(reader: asyncio.StreamReader, within: float = 10.0) -> bool:
    """Read until the server closes (EOF or reset); False if it stays open."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


async def status_of(reader: asyncio.StreamReader) -> bytes:
    return (await asyncio.wait_for(reader.readline(), 10)).split()[1]


async def test_the_policy_at_the_cap_lets_a_marked_connection_in_and_it_is_released_on_close() -> None:
    """limit 1, busy: the policy lets one newcomer in over the cap (the app sees
    ``over_cap`` and refuses its request), then falls back to the default (the
    next one is closed, counted ``limit``); the over-cap one is forgotten when
    its client leaves."""
    app, limits = App(), Recording(limit=1, header_timeout=60, let_in_over=1)
    async with serving(app, limits) as port:
        busy, busy_w = await connect(port, get("/slow"))
        await asyncio.wait_for(app.started.wait(), 10)
        over, over_w = await connect(port, get("/fast"))
        assert await status_of(over) == b"503"
        assert (limits.active, limits.over) == (1, 1)
        refused, refused_w = await connect(port)
        assert await closed_by_server(refused)
        assert limits.reasons == ["limit"] and limits.dropped == {"limit": 1}
        over_w.close()
        await until("the over-cap connection forgotten", lambda: limits.over == 0)
        app.release.set()
        assert await status_of(busy) == b"200"
        assert limits.active == 1  # kept alive
        for w in (busy_w, refused_w):
            w.close()


async def test_eviction_and_the_header_timeout_are_reported_through_count() -> None:
    """A silent connection is evicted for a newcomer at the cap; the newcomer,
    sending half a header, is cut after ``header_timeout``."""
    app, limits = App(), Recording(limit=1, header_timeout=0.3)
    async with serving(app, limits) as port:
        silent, silent_w = await connect(port)
        await until("the first connection admitted", lambda: limits.active == 1)
        started = time.monotonic()
        slow, slow_w = await connect(port, b"GET /fast HTTP/1.1\r\n")
        assert await closed_by_server(silent)
        assert await closed_by_server(slow)
        assert time.monotonic() - started >= 0.25
        assert limits.reasons == ["evicted", "header_timeout"]
        assert limits.dropped == {"evicted": 1, "header_timeout": 1}
        await until("both released", lambda: limits.active == 0)
        silent_w.close()
        slow_w.close()


async def test_a_client_that_does_not_read_its_answer_is_cut_after_send_timeout() -> None:
    app, limits = App(), Recording(limit=4, header_timeout=60, send_timeout=0.5)
    async with serving(app, limits) as port:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(get("/big"))  # and never read
            await until("the connection cut", lambda: limits.reasons == ["send_timeout"])
            await until("the connection released", lambda: limits.active == 0)
        finally:
            s.close()
