"""Plugin ``lg``: a looking-glass proxy that bird-lg-go's frontend can use directly.

It speaks the API of bird-lg-go's ``proxy/`` on an HTTP server of its own
(``lg.listen``, default ``127.0.0.1:8000``; off unless ``lg.enabled``):

- ``GET /bird?q=<command>`` and ``/bird6`` (the same: BIRD 2/3 is one daemon):
  BIRD's reply as plain text, the reply codes stripped as bird-lg-go's proxy
  strips them;
- ``GET /traceroute?q=<target>`` and ``/traceroute6``: ``traceroute -q1 -N32
  -w1 -m <hops> -- <address>``, lines of ``*`` dropped and counted
  (``lg.tracerouteRaw`` keeps them);
- anything else, or an empty ``q``: ``500 Invalid Request`` (as bird-lg-go).

Differences from bird-lg-go's proxy, all on the safe side:

- ``q`` is parsed by :mod:`.grammar` and the command BIRD receives is rendered
  from the parsed values; anything else is ``403 Forbidden: <why>``
  (bird-lg-go writes ``q`` to the socket after a prefix check);
- every query runs on a fresh connection put in BIRD's restricted mode first
  (:mod:`.birdsock`), bounded in time and bytes, at most ``lg.maxConcurrent``
  at once (more: ``503``);
- a traceroute target must be an address or a host name in the allowed ranges
  (:mod:`.targets`; resolved once, the address is traced); it is killed after
  ``lg.tracerouteTimeout`` seconds;
- a client outside ``lg.allowedClients`` gets ``403 Forbidden`` (bird-lg-go
  answers ``500 Invalid Request``); a non-loopback ``listen`` without an
  allow-list needs ``lg.allowAnyClient: true``;
- a ``Host`` header that does not name this node gets ``421`` (DNS rebinding):
  on a loopback listener by default, elsewhere once ``lg.allowedHosts`` is set;
- connections are bounded (:class:`_Connections`, on the core's
  :class:`~moenet_core.ConnectionLimits`): at most ``lg.maxConnections``
  (at the cap the oldest idle one is closed; when all are busy, the newcomer's
  request gets ``503`` at once), a header within ``lg.headerTimeout``, each
  answer computed within ``lg.requestTimeout`` (else ``504``) and sent within it
  again (else the connection is cut).

Metrics: ``moenet_lg_requests_total{endpoint,result}``,
``moenet_lg_connections_dropped_total{reason}``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
import time
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import hdrs, web
from prometheus_client import Counter

from moenet_core import (
    ConfigError,
    ConfigSection,
    ConnectionLimits,
    LimitedConnection,
    LimitedRunner,
    MoenetError,
    hookimpl,
    host_header_name,
    normal_ip,
)
from moenet_core.config import is_loopback_host

from . import birdsock
from .config import LG_SECTION, LgConfig
from .grammar import GrammarError, parse_show
from .run import run_bounded
from .targets import TargetError, TargetPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from moenet_core import PluginContext
    from moenet_core.config import AgentConfig

__all__ = ["LookingGlass", "postprocess_traceroute"]

_STASH = "moenet_nettools.lg"
_NOT_RESPONDING = re.compile(r"(?m)^\s*(\d*)\s*\*\n")
_INVALID = "Invalid Request\n"
_KEEPALIVE = 30.0
"""Seconds a kept-alive connection may wait for its next request."""
_WARN_INTERVAL = 60.0


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/plain", charset="utf-8")


def postprocess_traceroute(output: str) -> str:
    """bird-lg-go's non-raw traceroute output: hops answering only ``*`` are
    dropped and counted in a last line."""
    skipped = 0

    def drop(_m: re.Match[str]) -> str:
        nonlocal skipped
        skipped += 1
        return ""

    text = _NOT_RESPONDING.sub(drop, output).strip()
    if skipped:
        text += f"\n\n{skipped} hops not responding."
    return text


def _split_listen(listen: str) -> tuple[str | None, int]:
    host, _, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    return (host or None), int(port)


class _Connections(ConnectionLimits):
    """The proxy's connection limits (:class:`~moenet_core.ConnectionLimits`), with
    its own policy when every connection is busy: the newcomer is let in *over
    the cap* and its request answered ``503`` (a clear refusal instead of a
    reset), up to ``limit`` such; past that, new connections are closed at once.
    So the proxy holds at most twice ``limit`` sockets, whatever clients do.
    Closures are counted in ``moenet_lg_connections_dropped_total``."""

    def __init__(
        self, *, limit: int, header_timeout: float, send_timeout: float, dropped: Counter | None, log: Any
    ) -> None:
        super().__init__(limit=limit, header_timeout=header_timeout, send_timeout=send_timeout)
        self._dropped = dropped
        self._log = log
        self._warned = -_WARN_INTERVAL

    def at_cap(self, conn: LimitedConnection) -> bool:
        if self.over < self.limit:
            self._warn("answering 503")
            return True
        self.count("refused")
        self._warn("closing new connections")
        return False

    def count(self, reason: str) -> None:
        super().count(reason)
        if self._dropped is not None:
            self._dropped.labels(reason).inc()

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_INTERVAL:
            self._warned = now
            self._log.warning(
                "lg: {} connections busy (lg.maxConnections): {} (logged once a minute)", self.limit, what
            )


class _Busy:
    """A non-blocking concurrency limit: full means ``503`` at once, as bird-lg-go."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    def try_enter(self) -> bool:
        if self.running >= self.limit:
            return False
        self.running += 1
        return True

    def leave(self) -> None:
        self.running -= 1


@attrs.define
class LookingGlass:
    """The proxy's HTTP server (one per agent, in ``ctx.stash``)."""

    cfg: LgConfig
    policy: TargetPolicy
    log: Any
    requests: Counter | None = None
    dropped: Counter | None = None
    _runner: web.AppRunner | None = None
    _bird: _Busy = attrs.field(init=False)
    _trace: _Busy = attrs.field(init=False)
    _clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = attrs.field(init=False)
    _connections: _Connections = attrs.field(init=False)
    _host_names: frozenset[str] | None = attrs.field(init=False)
    """Names the Host header may carry besides loopback ones and addresses (None: no check)."""

    def __attrs_post_init__(self) -> None:
        self._bird = _Busy(self.cfg.max_concurrent)
        self._trace = _Busy(self.cfg.traceroute_max_concurrent)
        self._clients = self.cfg.client_networks()
        self._connections = _Connections(
            limit=self.cfg.max_connections,
            header_timeout=self.cfg.header_timeout,
            send_timeout=self.cfg.request_timeout,
            dropped=self.dropped,
            log=self.log,
        )
        self._host_names = None
        if self.cfg.checks_host():
            names = {n.lower().strip("[]").rstrip(".") for n in self.cfg.allowed_hosts}
            host = _split_listen(self.cfg.listen)[0]
            if host is not None and not ((ip := normal_ip(host)) is not None and ip.is_unspecified):
                names.add(host.lower().rstrip("."))
            self._host_names = frozenset(names)

    # ---------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024, middlewares=[self._limits, self._access])
        app.router.add_get("/bird", self._bird_handler)
        app.router.add_get("/bird6", self._bird_handler)
        app.router.add_get("/traceroute", self._trace_handler)
        app.router.add_get("/traceroute6", self._trace_handler)
        app.router.add_route("*", "/{tail:.*}", self._invalid)
        return app

    async def start(self) -> None:
        host, port = _split_listen(self.cfg.listen)
        runner = LimitedRunner(
            self.app(),
            limits=self._connections,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=_KEEPALIVE,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            why = "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise MoenetError(f"lg: cannot listen on {self.cfg.listen}: {why}") from exc
        self._runner = runner
        self.log.info("looking-glass proxy listening on {}", ", ".join(f"{h}:{p}" for h, p in self.bound))

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def bound(self) -> list[tuple[str, int]]:
        if self._runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    @property
    def connections(self) -> int:
        """Connections served now (over-the-cap ones not counted)."""
        return self._connections.active

    # ---------------------------------------------------------- handlers

    def _count(self, endpoint: str, result: str) -> None:
        if self.requests is not None:
            self.requests.labels(endpoint, result).inc()

    @web.middleware
    async def _limits(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Over the connection cap: ``503``; a foreign Host: ``421``; every answer
        within ``requestTimeout``: else ``504``."""
        if isinstance(request.protocol, LimitedConnection) and request.protocol.over_cap:
            self._count("any", "busy")
            busy = _text("Too many connections to this looking glass. Please try again later.\n", 503)
            busy.force_close()
            return busy
        if not self._host_allowed(request):
            self._count("any", "host")
            self.log.bind(remote=request.remote or "", host=request.headers.get(hdrs.HOST, "")[:100]).debug(
                "lg: Host not in lg.allowedHosts"
            )
            return _text(
                "Misdirected Request: this looking glass answers only to the names in lg.allowedHosts\n", 421
            )
        try:
            async with asyncio.timeout(self.cfg.request_timeout):
                resp: web.StreamResponse = await handler(request)
        except TimeoutError:
            self._count("any", "timeout")
            return _text(f"Request timed out after {self.cfg.request_timeout:g} s\n", 504)
        return resp

    def _host_allowed(self, request: web.Request) -> bool:
        """DNS rebinding: a page whose name now resolves to this listener must not
        read it. Loopback names and address literals cannot be rebound."""
        if self._host_names is None:
            return True
        header = request.headers.get(hdrs.HOST)
        if header is None:
            return True  # HTTP/1.0 without Host: not a browser
        name = host_header_name(header)
        if name is None:
            return False
        if name in self._host_names or is_loopback_host(name):
            return True
        ip = normal_ip(name)
        if ip is None:
            return False  # a name nobody configured: the rebinding case
        if any(normal_ip(n) == ip for n in self._host_names):
            return True
        sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
        return isinstance(sock, tuple) and normal_ip(str(sock[0])) == ip

    @web.middleware
    async def _access(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._clients and not self._client_allowed(request.remote):
            self._count("any", "forbidden")
            self.log.bind(remote=request.remote or "").debug("lg: client not in lg.allowedClients")
            return _text("Forbidden: this client is not allowed to use the looking glass\n", 403)
        resp: web.StreamResponse = await handler(request)
        return resp

    def _client_allowed(self, remote: str | None) -> bool:
        try:
            ip = ipaddress.ip_address((remote or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self._clients)

    async def _invalid(self, request: web.Request) -> web.Response:
        return _text(_INVALID, 500)

    async def _bird_handler(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "")
        if not q:
            self._count("bird", "invalid")
            return _text(_INVALID, 500)
        try:
            command = parse_show(q).render()
        except GrammarError as exc:
            self._count("bird", "forbidden")
            return _text(f"Forbidden: {exc}\n", 403)
        if not self._bird.try_enter():
            self._count("bird", "busy")
            return _text("Too many concurrent requests. Please try again later.\n", 503)
        try:
            answer = await birdsock.query(
                command,
                socket_path=self.cfg.bird_socket,
                timeout=self.cfg.query_timeout,
                limit=self.cfg.output_limit,
            )
        except birdsock.BirdQueryError as exc:
            self._count("bird", "error")
            return _text(f"{exc}\n", 500)
        finally:
            self._bird.leave()
        text = answer.text
        if answer.truncated:
            text += f"\n(output truncated at {self.cfg.output_limit} bytes)\n"
        if answer.timed_out:
            text += f"\n(timed out after {self.cfg.query_timeout:g} s)\n"
        self._count("bird", "truncated" if answer.truncated else "timeout" if answer.timed_out else "ok")
        self.log.bind(command=command, remote=request.remote or "").debug(
            "lg: {} answered in {:.2f} s", command, answer.duration
        )
        return _text(text)

    async def _trace_handler(self, request: web.Request) -> web.Response:
        if not self.cfg.traceroute:
            self._count("traceroute", "disabled")
            return _text("traceroute not supported on this node.\n", 500)
        if not self._trace.try_enter():
            self._count("traceroute", "busy")
            return _text("Too many concurrent traceroute requests. Please try again later.\n", 503)
        try:
            return await self._traceroute(request)
        finally:
            self._trace.leave()

    async def _traceroute(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "").strip()
        if not q:
            self._count("traceroute", "invalid")
            return _text(_INVALID, 500)
        family = socket.AF_INET6 if request.path == "/traceroute6" else socket.AF_UNSPEC
        try:
            ip = await self.policy.resolve(q, family=family)
        except TargetError as exc:
            self._count("traceroute", "forbidden")
            return _text(f"Invalid target: {exc.message}\n", 400)
        started = time.monotonic()
        try:
            res = await run_bounded(
                "traceroute",
                "-q1",
                "-N32",
                "-w1",
                "-m",
                str(self.cfg.traceroute_max_hops),
                "--",
                str(ip),
                timeout=self.cfg.traceroute_timeout,
                limit=self.cfg.output_limit,
            )
        except FileNotFoundError:
            self._count("traceroute", "error")
            return _text("traceroute not supported on this node.\n", 500)
        out = res.output if self.cfg.traceroute_raw else postprocess_traceroute(res.output)
        if res.truncated:
            out += f"\n(output truncated at {self.cfg.output_limit} bytes)"
        if res.timed_out:
            out += f"\n(timed out after {self.cfg.traceroute_timeout:g} s)"
        self.log.bind(target=str(ip), remote=request.remote or "").debug(
            "lg: traceroute {} in {:.2f} s", ip, time.monotonic() - started
        )
        if res.returncode not in (0, None):
            self._count("traceroute", "error")
            return _text(f"Error executing traceroute: exit status {res.returncode}\n\n{out}", 500)
        self._count("traceroute", "timeout" if res.timed_out else "ok")
        return _text(out)


# ------------------------------------------------------------------ hooks


def _section(config: AgentConfig) -> LgConfig:
    cfg = LG_SECTION.of(config)
    return cfg if isinstance(cfg, LgConfig) else LgConfig()


def _consent_problem(cfg: LgConfig) -> str | None:
    if cfg.needs_consent():
        return (
            f"lg.listen {cfg.listen} is not loopback: set lg.allowedClients to the frontends' addresses, "
            "or lg.allowAnyClient: true to let anyone who reaches the port read the routing table "
            "and run traceroutes"
        )
    return None


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [LG_SECTION]


@hookimpl
def moenet_configure(config: AgentConfig) -> None:
    if (why := _consent_problem(_section(config))) is not None:
        raise ConfigError([why])


@hookimpl
def moenet_startup(ctx: PluginContext) -> Awaitable[None] | None:
    cfg = ctx.section
    if not isinstance(cfg, LgConfig) or not cfg.enabled:
        return None
    if (why := _consent_problem(cfg)) is not None:
        raise ConfigError([why])
    ident = ctx.identity
    lg = LookingGlass(
        cfg=cfg,
        policy=TargetPolicy.build(cfg.traceroute_targets, extra=[ident.loopback_ipv4, ident.loopback_ipv6]),
        log=ctx.log,
        requests=ctx.metrics.counter(
            "requests_total", "Looking-glass proxy requests by endpoint and result.", ["endpoint", "result"]
        ),
        dropped=ctx.metrics.counter(
            "connections_dropped_total",
            "Looking-glass connections closed by the proxy: evicted, refused, header_timeout, send_timeout.",
            ["reason"],
        ),
    )
    ctx.stash[_STASH] = lg
    return lg.start()


@hookimpl
def moenet_shutdown(ctx: PluginContext) -> Awaitable[None] | None:
    lg = ctx.stash.pop(_STASH, None)
    return lg.stop() if isinstance(lg, LookingGlass) else None
