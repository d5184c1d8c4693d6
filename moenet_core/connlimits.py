"""Bounded connections for an aiohttp server: a cap, a header timeout, a send timeout.

aiohttp bounds neither how many connections a server holds nor how long a client
may take to send a request header or to read the answer, so a client holding
stalled connections open (slowloris) can exhaust the agent's file descriptors.
The local API and the looking-glass proxy both serve through
:class:`LimitedRunner`; each adds only its policy for when every connection is
busy (:meth:`ConnectionLimits.at_cap`) and how it reports what it closed
(:meth:`ConnectionLimits.count`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

__all__ = ["ConnectionLimits", "LimitedConnection", "LimitedRunner"]


class ConnectionLimits:
    """Counts and bounds one server's connections.

    Up to ``limit`` are served. At the cap a new one closes the oldest idle one
    (no request in progress: a kept-alive connection or a half-sent header costs
    nothing to drop); when every one is busy, :meth:`at_cap` decides. A request
    header must be complete within ``header_timeout`` seconds and an answer sent
    within ``send_timeout`` (None: no limit), else the connection is cut.

    Subclass to change the policy at the cap (:meth:`at_cap`) or to report the
    connections closed (:meth:`count`); ``dropped`` counts them by reason:
    ``evicted``, ``header_timeout``, ``send_timeout`` and, by the default
    :meth:`at_cap`, ``limit``.
    """

    def __init__(self, *, limit: int, header_timeout: float, send_timeout: float | None = None) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        self.dropped: dict[str, int] = {}
        self._open: dict[LimitedConnection, None] = {}  # insertion order: oldest first
        self._over: set[LimitedConnection] = set()

    @property
    def active(self) -> int:
        """Connections served now (not counting those let in over the cap)."""
        return len(self._open)

    @property
    def over(self) -> int:
        """Connections let in over the cap by :meth:`at_cap`, open now."""
        return len(self._over)

    def admit(self, conn: LimitedConnection) -> bool:
        """Take the new ``conn`` in (True; ``conn.over_cap`` says whether it is over
        the cap) or have it closed at once (False)."""
        if len(self._open) < self.limit:
            self._open[conn] = None
            return True
        idle = next((c for c in self._open if c.idle), None)
        if idle is not None:
            self.drop(idle, "evicted")
            self._open[conn] = None
            return True
        if self.at_cap(conn):
            self._over.add(conn)
            conn.over_cap = True
            return True
        return False

    def at_cap(self, conn: LimitedConnection) -> bool:
        """The policy when all ``limit`` connections have a request in progress:
        True lets ``conn`` in over the cap (the app should answer its requests
        with a refusal, see :attr:`LimitedConnection.over_cap`: clearer than a
        reset), False closes it. The default closes it, counted as ``limit``."""
        self.count("limit")
        return False

    def release(self, conn: LimitedConnection) -> None:
        """Forget ``conn`` (closed); idempotent."""
        self._open.pop(conn, None)
        self._over.discard(conn)

    def drop(self, conn: LimitedConnection, reason: str) -> None:
        """Cut ``conn`` for ``reason`` and count it."""
        self.release(conn)
        self.count(reason)
        conn.cut()

    def count(self, reason: str) -> None:
        """Count a connection closed for ``reason``; override to report it too
        (log, metrics), calling this."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


class LimitedConnection(web.RequestHandler):
    """aiohttp's connection protocol under :class:`ConnectionLimits`' rules.

    - admitted (perhaps over the cap) or closed at once;
    - a request header must be complete ``header_timeout`` seconds after the
      connection opened, or after the first byte of the next request on a
      kept-alive one (aiohttp has no such limit: a client sending half a header
      would hold its socket forever);
    - an answer must be sent within ``send_timeout`` seconds, else the connection
      is cut (a client that stops reading would hold it forever);
    - idle keep-alive is aiohttp's ``keepalive_timeout``.
    """

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._timer: asyncio.TimerHandle | None = None
        self._pending = 0  # requests whose header arrived and whose answer is not sent
        self.over_cap = False
        """Let in over the cap by :meth:`ConnectionLimits.at_cap`: its requests
        should be refused (``request.protocol.over_cap``)."""

    @property
    def idle(self) -> bool:
        """No request in progress (waiting for a header counts as idle)."""
        return self._pending == 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._limits.admit(self):
            self.cut()
            return
        self._arm(self._limits.header_timeout, "header_timeout")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._limits.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._pending += self._request_count - before
            self._disarm()
        elif data and self._pending == 0 and self._timer is None:
            # the first bytes of the next request on a kept-alive connection
            self._arm(self._limits.header_timeout, "header_timeout")

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if self._limits.send_timeout is not None:
            self._arm(self._limits.send_timeout, "send_timeout")
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._disarm()
            self._pending = max(0, self._pending - 1)

    def cut(self) -> None:
        """Close now, unsent data and all (``close`` would wait for a client that
        does not read, holding the socket)."""
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, reason: str) -> None:
        self._timer = None
        if self.transport is not None and (reason == "send_timeout" or self._pending == 0):
            self._limits.drop(self, reason)


class _LimitedServer(web.Server):
    """aiohttp's low-level server making :class:`LimitedConnection` connections."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits

    def __call__(self) -> web.RequestHandler:
        return LimitedConnection(self, limits=self._limits, loop=self._loop, **self._kwargs)


class LimitedRunner(web.AppRunner):
    """An :class:`~aiohttp.web.AppRunner` whose connections are
    :class:`LimitedConnection` under ``limits``.

    ``_make_server`` is the runner's documented extension point (abstract in
    ``BaseRunner``); the app's own server is built as usual and re-made with the
    same handler, request factory and arguments."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _LimitedServer(
            plain.request_handler,
            limits=self._limits,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )
