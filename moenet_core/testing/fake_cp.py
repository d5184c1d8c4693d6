"""A fake control plane: a real aiohttp server on 127.0.0.1 that records requests.

It speaks the CP contract (``/agent/{node}/{resource}``, Bearer token, the
``{code, message, data}`` envelope) and lets a test script answers and failures.
Tests wait for requests with :meth:`FakeControlPlane.wait_for`, which is woken by
each request (no polling, no sleeps).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web
from aiohttp.test_utils import TestServer


@attrs.frozen
class RecordedRequest:
    """One request the fake CP received."""

    method: str
    node: str
    resource: str
    headers: dict[str, str]
    body: Any
    authorized: bool


@attrs.define
class _Answer:
    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = attrs.field(factory=dict)


class FakeControlPlane:
    """Scriptable CP. ``set`` the data of a resource; ``fail`` the next N calls."""

    def __init__(self, *, token: str | None = "test-token", envelope: bool = True) -> None:  # noqa: S107
        self.token = token
        self.envelope = envelope
        self.requests: list[RecordedRequest] = []
        self._data: dict[tuple[str, str], Any] = {}
        self._queued: dict[str, deque[_Answer]] = {}
        self._changed = asyncio.Condition()
        self._server: TestServer | None = None
        self._on_post: dict[str, Callable[[Any], None]] = {}

    # ----------------------------------------------------------- scripting

    def set(self, resource: str, data: Any, *, method: str = "GET") -> None:
        """Answer ``method resource`` with ``data`` (wrapped in the envelope)."""
        self._data[(method.upper(), resource)] = data

    def fail(
        self,
        resource: str,
        times: int = 1,
        *,
        status: int = 503,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Make the next ``times`` requests for ``resource`` answer ``status``."""
        q = self._queued.setdefault(resource, deque())
        for _ in range(times):
            q.append(_Answer(status=status, body=body, raw=raw, headers=dict(headers or {})))

    def on_post(self, resource: str, callback: Callable[[Any], None] | None) -> None:
        """Call ``callback(body)`` for every ``POST resource`` the CP accepts (answered
        200, not failed by :meth:`fail` or refused), before the answer goes out: a CP
        that, like a real one, changes its state on a report (None removes it)."""
        if callback is None:
            self._on_post.pop(resource, None)
        else:
            self._on_post[resource] = callback

    def calls(self, resource: str | None = None, method: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (resource is None or r.resource == resource) and (method is None or r.method == method.upper())
        ]

    async def wait_for(
        self,
        resource: str,
        count: int = 1,
        *,
        method: str | None = None,
        where: Callable[[RecordedRequest], bool] | None = None,
        timeout: float = 10.0,
    ) -> list[RecordedRequest]:
        """Wait until ``count`` matching requests have arrived; returns them."""

        def matching() -> list[RecordedRequest]:
            return [r for r in self.calls(resource, method) if where is None or where(r)]

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(matching()) >= count), timeout)
        return matching()

    # -------------------------------------------------------------- server

    @property
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/agent/{node}/{resource:.+}", self._handle)
        return app

    async def start(self) -> str:
        """Start on 127.0.0.1 (random port); returns the base URL."""
        self._server = TestServer(self.app, host="127.0.0.1")
        await self._server.start_server()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return str(self._server.make_url("")).rstrip("/")

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def __aenter__(self) -> FakeControlPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        node = request.match_info["node"]
        resource = request.match_info["resource"]
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
        auth = request.headers.get("Authorization", "")
        authorized = self.token is None or auth == f"Bearer {self.token}"
        record = RecordedRequest(request.method, node, resource, dict(request.headers), body, authorized)
        async with self._changed:
            self.requests.append(record)
            self._changed.notify_all()
        if not authorized:
            return self._reply(401, {"code": 401, "message": "unauthorized", "data": None}, raw_json=True)
        queued = self._queued.get(resource)
        if queued:
            answer = queued.popleft()
            if answer.raw is not None:
                return web.Response(status=answer.status, body=answer.raw, headers=answer.headers)
            return self._reply(answer.status, answer.body, headers=answer.headers, raw_json=True)
        callback = self._on_post.get(resource) if request.method == "POST" else None
        if callback is not None:
            callback(body)
        key = (request.method, resource)
        if key in self._data:
            return self._reply(200, self._data[key])
        if request.method == "POST":
            return self._reply(200, None)
        return self._reply(
            404, {"code": 404, "message": f"no such resource {resource}", "data": None}, raw_json=True
        )

    def _reply(
        self, status: int, data: Any, *, headers: dict[str, str] | None = None, raw_json: bool = False
    ) -> web.Response:
        payload = data if raw_json or not self.envelope else {"code": 0, "message": "ok", "data": data}
        return web.json_response(payload, status=status, headers=headers)
