"""A local "what is my address" echo service over HTTPS (like api4.ipify.org), for
the heartbeat's public address tests. It answers what the test scripts, per
address family of the connection: standing in for a NAT, it tells a node the
address the outside would see. Records every request (path, client address)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from aiohttp import web

from .tls import TestCert


class EchoServer:
    """``mode``: ``answer`` (``answers[family version]``), ``huge`` (a long body with
    its length), ``endless`` (a streamed body without a length, never ending), ``slow``
    (no answer for a minute), ``redirect`` (302 to itself), ``error`` (HTTP 500)."""

    def __init__(self, cert: TestCert, hosts: list[str]) -> None:
        self.cert = cert
        self.hosts = hosts
        self.mode = "answer"
        self.answers: dict[int, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.ports: dict[str, int] = {}
        self._runner: web.AppRunner | None = None

    def url(self, host: str, path: str = "/") -> str:
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{self.ports[host]}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        remote = request.remote or ""
        self.requests.append((request.path, remote))
        version = ipaddress.ip_address(remote).version if remote else 0
        if self.mode == "huge":
            return web.Response(text="1.2.3.4" + " " * 500)
        if self.mode == "endless":
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(10000):
                await resp.write(b"9" * 1024)
            return resp
        if self.mode == "slow":
            await asyncio.sleep(60)
        if self.mode == "redirect":
            raise web.HTTPFound(location=request.path + "x")
        if self.mode == "error":
            return web.Response(status=500, text="broken")
        return web.Response(text=self.answers.get(version, "") + "\n")

    async def start(self) -> EchoServer:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        for host in self.hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            self.ports[host] = sock.getsockname()[1]
            site = web.SockSite(self._runner, sock, ssl_context=self.cert.server_context())
            await site.start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> EchoServer:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
