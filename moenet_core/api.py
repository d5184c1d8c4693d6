"""The agent's local HTTP API: status, metrics, sync, maintenance, restart, plugin routes.

What the Go agent got wrong and this module fixes (research ``go-agent.md`` §17, §20.35):

- **Mutating endpoints are protected**, and so are *sensitive* ones (every
  plugin route unless it says ``sensitive=False``: a reconciler's ``/plan`` calls
  the CP and shows the topology). With ``server.token`` set they need
  ``Authorization: Bearer <token>``, compared in constant time. Without a token
  they answer loopback clients only, and refuse browser cross-origin requests
  (a web page must not be able to drain a node through ``127.0.0.1``).
  Read-only core endpoints (``/status``, ``/metrics``, ``GET /maintenance``) stay
  open for monitoring.
- **The Host header is checked on every route** (DNS rebinding): loopback names
  and addresses, the listen address, the address the connection arrived on and
  ``server.allowedHosts``; anything else is ``421``.
- **Connections are bounded**: at most ``max_connections`` at once (at the cap the
  oldest connection without a request in progress is closed to make room; when
  every one is busy the new one is closed at once), a complete request header
  within ``header_timeout`` seconds, and ``idle_timeout`` seconds of keep-alive.
  A local user cannot exhaust the root agent's file descriptors by holding
  stalled connections open (slowloris).
- **Refusals are logged rate-limited**: one line per client per ``log_interval``
  with the count of the ones suppressed since; never the presented token.
- **Inputs are validated strictly** before they reach the agent: interface and
  task names by pattern (no newline, no leading ``-``, no path tricks), the
  maintenance reason as short printable text. Nothing the client sends is ever
  pasted into a command.
- **Errors are JSON** ``{"error", "code"}`` with the right status, from one
  middleware; an unexpected exception is logged with its traceback and answered
  with a bare 500 that leaks nothing.
- The token and the ``Authorization`` header are never logged.

The agent implements :class:`ApiHost`; this module only translates HTTP.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import hmac
import inspect
import ipaddress
import json
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from loguru import logger
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from . import jsonlimits
from .connlimits import ConnectionLimits, LimitedRunner
from .descriptors import RouteSpec
from .errors import MoenetError, PluginError
from .logs import add_secret
from .metrics import AgentRegistry
from .netcheck import host_header_name, normal_ip

if TYPE_CHECKING:
    from .context import PluginContext

__all__ = [
    "MAX_BODY",
    "ApiError",
    "ApiHost",
    "LocalApi",
    "is_loopback",
    "listen_is_loopback",
    "parse_listen",
    "valid_interface_name",
]

DEFAULT_LISTEN = "127.0.0.1:24368"
MAX_BODY = 64 * 1024
"""Largest request body accepted; every legitimate body is a few hundred bytes."""
MAX_CONNECTIONS = 64
"""Default cap on concurrent API connections (``server.maxConnections``)."""
HEADER_TIMEOUT = 10.0
"""Default seconds to send a complete request header (``server.readTimeout``)."""
IDLE_TIMEOUT = 120.0
"""Default seconds a kept-alive connection may idle (``server.idleTimeout``)."""
LOG_INTERVAL = 60.0
"""Refusals are logged at most once per client (connection-cap events: once) per interval."""
GO_AGENT_TOOL_PATHS = frozenset({"/ping", "/tcping", "/trace", "/route", "/path"})
"""The Go agent's tool endpoints: a plugin route with one of these paths is also
served there, un-prefixed (see :meth:`LocalApi._add_go_tool_paths`)."""
LOOPBACK_NAMES = frozenset({"localhost"})
"""Host names always accepted in the Host header (besides loopback addresses)."""

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# Linux IFNAMSIZ is 16 including the NUL. "/" and whitespace are refused by the
# kernel; ":" is legal there but only for aliases, which we never manage.
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
_MAX_REASON = 200
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no", ""})

_FORBIDDEN_REMOTE = "mutating endpoints accept loopback clients only when server.token is unset"
_FORBIDDEN_SENSITIVE = (
    "this endpoint calls the control plane or shows the topology: "
    "it accepts loopback clients only when server.token is unset"
)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    421: "misdirected_request",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}


class ApiHost(Protocol):
    """What the agent exposes to the API (implemented in ``agent.py``)."""

    def status(self) -> dict[str, Any]: ...

    async def sync(self, task: str | None, wait: bool) -> dict[str, Any]:
        """Trigger the ``on_sync`` tasks (or just ``task``); raise ``KeyError(task)``
        for an unknown task. With ``wait`` return after the run finished."""
        ...

    def maintenance(self) -> dict[str, Any]:
        """``{"enabled": bool, "since": float | None, "reason": str}``."""
        ...

    async def set_maintenance(self, enabled: bool, reason: str) -> dict[str, Any]: ...

    async def restart(self, interface: str) -> dict[str, Any] | None:
        """Restart one managed interface; ``None`` when no plugin manages it."""
        ...

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def routes(self) -> Sequence[RouteSpec]: ...

    def context(self, plugin: str) -> PluginContext:
        """The running context of ``plugin``, handed to its route handlers."""
        ...


class ApiError(Exception):
    """Raise from a handler (core or plugin) to answer ``{"error", "code"}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


# ------------------------------------------------------------------ pure helpers


def parse_listen(value: str) -> tuple[str | None, int]:
    """Parse ``host:port`` the way Go's ``net.Listen`` does.

    ``"127.0.0.1:24368"``, ``"[::1]:24368"``, ``"localhost:80"``; ``":24368"``
    means all interfaces and gives host ``None``. IPv6 literals need brackets.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("listen address is empty: expected host:port, e.g. 127.0.0.1:24368")
    text = value.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"invalid listen address {value!r}: expected [ipv6]:port, e.g. [::1]:24368")
        host: str | None = text[1:close]
        port_text = text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid listen address {value!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid listen address {value!r}: missing port, expected host:port")
        if ":" in host:
            raise ValueError(
                f"invalid listen address {value!r}: put an IPv6 address in brackets, e.g. [::1]:24368"
            )
        if host == "":
            host = None
        elif not _HOSTNAME.match(host):
            raise ValueError(f"invalid listen address {value!r}: {host!r} is not a host name or address")
    if not _PORT.match(port_text) or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {value!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def _takes_request_only(handler: Callable[..., Any]) -> bool:
    """A hook API 1.0 route handler, ``handler(request)`` (deprecated)."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_more = any(p.kind is p.VAR_POSITIONAL for p in params)
    return len(positional) == 1 and not takes_more


def is_loopback(remote: str | None) -> bool:
    """True for 127.0.0.0/8, ``::1`` and IPv4-mapped loopback (``::ffff:127.x``).

    ``request.remote`` is the socket peer: no ``X-Forwarded-For`` is trusted.
    """
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def listen_is_loopback(listen: str) -> bool:
    """True when ``listen`` (``host:port``) binds loopback only: ``localhost`` or a
    loopback address. ``:port`` (every interface) and any other name are not."""
    host, _ = parse_listen(listen)
    if host is None:
        return False
    return host.lower().rstrip(".") in LOOPBACK_NAMES or is_loopback(host)


def valid_interface_name(name: object) -> bool:
    """A Linux interface name we are willing to act on.

    1-15 characters of ``[A-Za-z0-9_.-]``, not ``.``/``..`` (path components
    under ``/sys/class/net``) and no leading ``-`` (it would read as an option
    to ``wg``/``ip``). Newlines are refused by the pattern: the Go agent let one
    through into a BIRD command.
    """
    return (
        isinstance(name, str)
        and _IFNAME.fullmatch(name) is not None
        and name not in (".", "..")
        and not name.startswith("-")
    )


def _bearer_matches(header: str | None, expected_digest: bytes) -> bool:
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = credentials.strip().encode("utf-8", "surrogateescape")
    # Compare fixed-size digests: compare_digest is constant-time for equal
    # lengths only, and hashing first keeps the token's length private too.
    return hmac.compare_digest(hashlib.sha256(given).digest(), expected_digest)


def _json_dumps(value: Any) -> str:
    # default=str: a status field the agent forgot to make JSON-able (a Path,
    # an enum) should show up as text, not turn /status into a 500.
    return json.dumps(value, default=str)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_json_dumps)


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    resp = _json({"error": message, "code": code}, status=status)
    if headers:
        resp.headers.update(headers)
    return resp


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad_request(f"{name} must be 1/true or 0/false")


async def _json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The request body as a JSON object with only ``allowed`` keys; ``{}`` if empty."""
    raw = await request.read()  # raises 413 past client_max_size
    if not raw.strip():
        return {}
    try:
        body = jsonlimits.loads(raw)  # nesting too deep is a ValueError too, never RecursionError
    except ValueError:
        raise _bad_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad_request("request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad_request(f"unknown field(s): {', '.join(unknown)}")
    return body


# ------------------------------------------------------------------ connection guard


class _RateLimitedLog:
    """One warning per key per ``interval``; the ones in between are counted and
    the next line says how many were suppressed. Keys are client addresses, so
    the table is bounded: past :attr:`MAX_KEYS` stale entries are dropped, and
    new clients share one key until there is room again."""

    MAX_KEYS = 1024
    OVERFLOW = "(many clients)"

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged at, suppressed since)

    def warning(self, key: str, message: str, **extra: Any) -> bool:
        """Log ``message`` for ``key`` unless it was logged within the interval."""
        now = self._clock()
        if key not in self._seen and len(self._seen) >= self.MAX_KEYS:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
            if len(self._seen) >= self.MAX_KEYS:
                key = self.OVERFLOW
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        suppressed = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        suffix = (
            f" ({suppressed} more like it suppressed in the last {self.interval:g} s)" if suppressed else ""
        )
        logger.bind(**extra, suppressed=suppressed).warning("{}{}", message, suffix)
        return True


class _ApiConnections(ConnectionLimits):
    """The API's connection limits: at the cap with every connection busy the new
    one is closed (the default policy); closures at the cap are logged, rate-limited."""

    def __init__(self, *, limit: int, header_timeout: float, log: _RateLimitedLog) -> None:
        super().__init__(limit=limit, header_timeout=header_timeout)
        self._log = log
        self.dropped.update(dict.fromkeys(("limit", "evicted", "header_timeout"), 0))

    def count(self, reason: str) -> None:
        super().count(reason)
        if reason != "header_timeout":
            self._log.warning(
                "connections",
                f"local API: {self.limit} connections open (server.maxConnections): "
                + ("closed the oldest idle one" if reason == "evicted" else "closed a new one"),
            )


class _ApiCollector:
    """The API's own metrics, read at scrape time."""

    def __init__(self, api: LocalApi) -> None:
        self._api = api

    def collect(self) -> Iterator[Metric]:
        limits = self._api._limits
        yield GaugeMetricFamily(
            "moenet_api_connections", "Connections to the local API open now.", value=limits.active
        )
        dropped = CounterMetricFamily(
            "moenet_api_connections_dropped",
            "Local API connections the agent closed: limit, evicted, header_timeout.",
            labels=["reason"],
        )
        for reason, n in sorted(limits.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        refused = CounterMetricFamily(
            "moenet_api_requests_refused",
            "Local API requests refused: host, unauthorized, forbidden, cross_origin.",
            labels=["reason"],
        )
        for reason, n in sorted(self._api.refused.items()):
            refused.add_metric([reason], n)
        yield refused


# ------------------------------------------------------------------ the API


class LocalApi:
    """The aiohttp application and its server.

    ``app`` is built once, on first use, so tests can drive it with aiohttp's
    ``TestClient`` without binding a port; ``start``/``stop`` run it for real.
    """

    def __init__(
        self,
        host: ApiHost,
        *,
        listen: str = DEFAULT_LISTEN,
        token: str | None = None,
        shutdown_timeout: float = 5.0,
        allowed_hosts: Iterable[str] = (),
        max_connections: int = MAX_CONNECTIONS,
        header_timeout: float = HEADER_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        log_interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._listen = listen
        self._bind = parse_listen(listen)  # fail at construction, not at start
        if token is not None and token == "":
            token = None  # an empty config value means "no token"
        if token is not None and (any(c.isspace() or not c.isprintable() for c in token)):
            raise ValueError("server.token must be printable and contain no whitespace")
        if token is None and not listen_is_loopback(listen):
            # build_config refuses this too; the API never exposes itself unprotected.
            raise ValueError(
                f"server.listen {listen!r} is not loopback and server.token is unset: "
                "set server.token, or listen on loopback (127.0.0.1:24368)"
            )
        if max_connections < 1 or header_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("max_connections, header_timeout and idle_timeout must be greater than 0")
        if token is not None:
            add_secret(token)
        self._token_digest = hashlib.sha256(token.encode()).digest() if token is not None else None
        self._shutdown_timeout = shutdown_timeout
        self._idle_timeout = idle_timeout
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        # Routes that need the token (or a loopback client), mapped to whether they
        # mutate (those are logged). Keyed by route object, so HEAD routes aiohttp
        # adds for read-only GETs are not covered by accident.
        self._protected: dict[web.AbstractRoute, bool] = {}
        host_name = self._bind[0]
        names = {n.strip().lower().strip("[]").rstrip(".") for n in allowed_hosts if n.strip()}
        if host_name is not None:
            names.add(host_name.lower().rstrip("."))
        self._host_names = frozenset(names | LOOPBACK_NAMES)
        self._host_ips = frozenset(ip for n in names if (ip := normal_ip(n)) is not None)
        self._log = _RateLimitedLog(log_interval, clock)
        self._limits = _ApiConnections(limit=max_connections, header_timeout=header_timeout, log=self._log)
        self.refused = {"host": 0, "unauthorized": 0, "forbidden": 0, "cross_origin": 0}
        """Requests refused, by reason (``moenet_api_requests_refused_total``)."""

    # ---------------------------------------------------------- lifecycle

    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = self._build_app()
        return self._app

    @property
    def connections(self) -> int:
        """Connections open now (admitted by the connection cap)."""
        return self._limits.active

    @property
    def dropped(self) -> Mapping[str, int]:
        """Connections closed by the guard, by reason: ``limit`` (a new one at the
        cap), ``evicted`` (an idle one, to make room), ``header_timeout``."""
        return dict(self._limits.dropped)

    @property
    def bound(self) -> list[tuple[str, int]]:
        """The addresses actually listened on (``port 0`` resolved), for tests and logs."""
        if self._runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    async def start(self) -> None:
        """Listen on ``listen``. A busy port raises :class:`MoenetError` saying so."""
        if self._runner is not None:
            raise RuntimeError("LocalApi already started")
        host, port = self._bind
        # access_log=None: aiohttp's access log is one INFO line per scrape; we
        # log mutating requests ourselves, without headers.
        runner = LimitedRunner(
            self.app,
            limits=self._limits,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout,
            keepalive_timeout=self._idle_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise MoenetError(f"cannot listen on {self._listen}: address in use") from exc
            reason = exc.strerror or str(exc)
            raise MoenetError(f"cannot listen on {self._listen}: {reason}") from exc
        self._runner = runner
        logger.info("local API listening on {}", ", ".join(f"{h}:{p}" for h, p in self.bound))

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (bounded), release everything."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ---------------------------------------------------------- building

    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY,
            middlewares=[self._error_middleware, self._host_middleware, self._auth_middleware],
        )
        r = app.router
        r.add_get("/status", self._status)
        r.add_get("/metrics", self._metrics)
        r.add_get("/maintenance", self._maintenance)
        # GET /sync triggers work too (the Go agent's docs used it), so it is
        # protected, and no implicit HEAD route is added for it.
        self._protected[r.add_route("GET", "/sync", self._sync)] = True
        self._protected[r.add_post("/sync", self._sync)] = True
        self._protected[r.add_post("/maintenance/start", partial(self._set_maintenance, True))] = True
        self._protected[r.add_post("/maintenance/stop", partial(self._set_maintenance, False))] = True
        self._protected[r.add_post("/restart", self._restart)] = True
        for spec in self._host.routes:
            self._add_plugin_route(app, spec)
        self._add_go_tool_paths(app)
        try:
            self._host.registry.register(_ApiCollector(self))
        except ValueError:  # another LocalApi of this registry already exports them
            logger.debug("local API metrics already registered")
        return app

    def _add_plugin_route(self, app: web.Application, spec: RouteSpec) -> None:
        if not _PLUGIN_NAME.match(spec.plugin):
            raise PluginError(
                f"route {spec.method} {spec.path}: invalid plugin name {spec.plugin!r}", [spec.plugin]
            )
        if any(seg in (".", "..") for seg in spec.path.split("/")):
            raise PluginError(
                f"plugin {spec.plugin!r}: route path {spec.path!r} must not contain '.' or '..' segments",
                [spec.plugin],
            )
        path = f"/plugins/{spec.plugin}/{spec.path[1:]}"
        try:
            route = app.router.add_route(spec.method, path, self._bind_handler(spec))
        except (RuntimeError, ValueError) as exc:
            raise PluginError(
                f"plugin {spec.plugin!r}: cannot add route {spec.method} {path}: {exc}", [spec.plugin]
            ) from exc
        if spec.is_mutating or spec.is_sensitive:
            self._protected[route] = spec.is_mutating

    def _add_go_tool_paths(self, app: web.Application) -> None:
        """Serve a plugin's ``/ping`` (``/tcping``, ``/trace``, ``/route``,
        ``/path``) also at the Go agent's un-prefixed path, protected the same
        way, so the Go agent's clients keep working. Only when exactly one
        plugin offers that method and path; two are logged and get neither."""
        offered: dict[tuple[str, str], list[RouteSpec]] = {}
        for spec in self._host.routes:
            if spec.path in GO_AGENT_TOOL_PATHS:
                offered.setdefault((spec.method, spec.path), []).append(spec)
        for (method, path), specs in sorted(offered.items()):
            if len(specs) > 1:
                logger.warning(
                    "local API: plugins {} all offer {} {}: none is served there",
                    ", ".join(sorted(s.plugin for s in specs)),
                    method,
                    path,
                )
                continue
            [spec] = specs
            route = app.router.add_route(method, path, self._bind_handler(spec))
            if spec.is_mutating or spec.is_sensitive:
                self._protected[route] = spec.is_mutating

    def _bind_handler(self, spec: RouteSpec) -> Handler:
        """``spec.handler`` as an aiohttp handler: called with the plugin's context."""
        target = spec.handler
        if _takes_request_only(target):
            warnings.warn(
                f"plugin {spec.plugin!r}: route handler {getattr(target, '__qualname__', target)!r} takes "
                "only the request; take (request, ctx)",
                DeprecationWarning,
                stacklevel=2,
            )
            legacy: Handler = target  # type: ignore[assignment]
            return legacy
        ctx = self._host.context(spec.plugin)

        @functools.wraps(target)
        async def handle(request: web.Request) -> web.StreamResponse:
            return await target(request, ctx)

        return handle

    # ---------------------------------------------------------- middlewares

    @web.middleware
    async def _error_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn every failure into ``{"error", "code"}`` JSON with the right status."""
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and the like are not errors
            return self._from_http_exception(exc)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            route = request.match_info.route
            logger.opt(exception=True).bind(method=request.method, path=request.path).error(
                "local API handler failed: {}", getattr(route.handler, "__qualname__", "?")
            )
            return _error(500, "internal_error", "internal server error")

    @staticmethod
    def _from_http_exception(exc: web.HTTPException) -> web.StreamResponse:
        if exc.content_type == "application/json":
            return exc  # a handler built its own JSON error: keep it
        default = f"{exc.status}: {exc.reason}"
        text = exc.text if exc.text and exc.text != default else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k in (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE)}
        code = _CODES.get(exc.status, re.sub(r"[^a-z0-9]+", "_", exc.reason.lower()).strip("_") or "error")
        return _error(exc.status, code, text, headers)

    @web.middleware
    async def _host_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every route: the Host header must name this agent (DNS rebinding)."""
        if not self._host_allowed(request):
            self._refuse(
                request,
                "host",
                "local API: request for a foreign Host refused (DNS rebinding?); "
                "add the name to server.allowedHosts if it is this node's",
                host=request.headers.get(hdrs.HOST, "")[:100],
            )
            raise ApiError(
                421,
                "misdirected_request",
                "unknown Host: this agent answers to the names in server.allowedHosts",
            )
        return await handler(request)

    def _host_allowed(self, request: web.Request) -> bool:
        header = request.headers.get(hdrs.HOST)
        if header is None:
            return True  # HTTP/1.0 without Host: not a browser, so not rebinding
        name = host_header_name(header)
        if name is None:
            return False
        if name in self._host_names:
            return True
        ip = normal_ip(name)
        if ip is None:
            return False  # a DNS name nobody configured: the rebinding case
        if ip.is_loopback or ip in self._host_ips:
            return True
        # An address literal cannot be rebound; accept the one the client reached.
        sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
        return isinstance(sock, tuple) and normal_ip(str(sock[0])) == ip

    def _refuse(self, request: web.Request, reason: str, message: str, **extra: Any) -> None:
        """Count a refused request and log it, at most once per client per interval."""
        self.refused[reason] += 1
        remote = request.remote or ""
        self._log.warning(remote, message, path=request.path, remote=remote, **extra)

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Protect mutating and sensitive routes; log who changed what (never the
        credentials)."""
        mutating = self._protected.get(request.match_info.route)
        if mutating is None:
            return await handler(request)
        self._authorize(request, mutating)
        if not mutating:
            return await handler(request)
        log = logger.bind(method=request.method, path=request.path, remote=request.remote or "")
        try:
            resp = await handler(request)
        except Exception as exc:
            status = exc.status if isinstance(exc, ApiError | web.HTTPException) else 500
            log.bind(status=status).info("local API mutating request")
            raise
        log.bind(status=resp.status).info("local API mutating request")
        return resp

    def _authorize(self, request: web.Request, mutating: bool = True) -> None:
        if self._token_digest is not None:
            if not _bearer_matches(request.headers.get(hdrs.AUTHORIZATION), self._token_digest):
                self._refuse(request, "unauthorized", "local API: missing or wrong bearer token")
                raise ApiError(
                    401,
                    "unauthorized",
                    "missing or invalid bearer token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return
        if not is_loopback(request.remote):
            self._refuse(
                request, "forbidden", "local API: protected request from a non-loopback client refused"
            )
            raise ApiError(403, "forbidden", _FORBIDDEN_REMOTE if mutating else _FORBIDDEN_SENSITIVE)
        # Loopback is not enough against a browser: any web page can make it POST
        # to 127.0.0.1. Browsers label cross-origin requests; curl and scripts do not.
        site = request.headers.get("Sec-Fetch-Site", "").lower()
        if hdrs.ORIGIN in request.headers or site in ("cross-site", "same-site"):
            self._refuse(request, "cross_origin", "local API: cross-origin browser request refused")
            raise ApiError(403, "forbidden", "cross-origin browser requests are refused; set server.token")

    # ---------------------------------------------------------- handlers

    async def _status(self, request: web.Request) -> web.Response:
        return _json(self._host.status())

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        registry = self._host.registry
        if not isinstance(registry, AgentRegistry) or not registry.has_streamed:
            # prometheus_client's own handler: content negotiation (OpenMetrics or
            # text), name[] filtering and gzip. Built per request so the host's
            # registry is read at scrape time (it is cheap: a closure).
            return await make_aiohttp_handler(registry)(request)
        # The same negotiation, written a chunk at a time (see StreamedCollector).
        encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
        if request.method == hdrs.METH_HEAD:  # a streamed body must not follow a HEAD's headers
            return web.Response(headers={hdrs.CONTENT_TYPE: content_type})
        names = request.query.getall("name[]", None)
        resp = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
        resp.enable_compression()
        await resp.prepare(request)
        try:
            for chunk in registry.exposition(encoder, names):
                if chunk:
                    await resp.write(chunk)
                await asyncio.sleep(0)  # formatting a part takes milliseconds: let the loop run between
            await resp.write_eof()
        except ConnectionResetError:  # the scraper went away mid-answer (its timeout): nothing to tell
            logger.debug("/metrics: the client closed the connection during the answer")
        return resp

    async def _maintenance(self, request: web.Request) -> web.Response:
        return _json(self._host.maintenance())

    async def _sync(self, request: web.Request) -> web.Response:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
            else:
                params.update(await _json_object(request, frozenset({"task", "wait"})))
        unknown = sorted(set(params) - {"task", "wait"})
        if unknown:
            raise _bad_request(f"unknown parameter(s): {', '.join(unknown)}")
        task = params.get("task")
        if task is not None and (not isinstance(task, str) or not _TASK_NAME.match(task)):
            raise _bad_request(f"invalid task name: must match {_TASK_NAME.pattern}")
        wait = _flag(params.get("wait", False), "wait")
        try:
            result = await self._host.sync(task, wait)
        except KeyError:
            if task is None:
                raise  # not "unknown task": a bug, answered as a 500
            raise ApiError(404, "unknown_task", f"unknown task {task!r}") from None
        return _json(result, status=200 if wait else 202)

    async def _set_maintenance(self, enabled: bool, request: web.Request) -> web.Response:
        body = await _json_object(request, frozenset({"reason"}))
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise _bad_request("reason must be a string")
        if len(reason) > _MAX_REASON or not reason.isprintable():
            raise _bad_request(f"reason must be at most {_MAX_REASON} printable characters")
        return _json(await self._host.set_maintenance(enabled, reason))

    async def _restart(self, request: web.Request) -> web.Response:
        body = await _json_object(request, frozenset({"interface"}))
        if "interface" not in body:
            raise _bad_request("missing field: interface")
        name = body["interface"]
        if not valid_interface_name(name):
            raise _bad_request(
                "invalid interface name: 1-15 characters of A-Z a-z 0-9 _ . -, not '.' or '..', "
                "not starting with '-'"
            )
        result = await self._host.restart(name)
        if result is None:
            raise ApiError(404, "unknown_interface", f"no plugin manages interface {name!r}")
        return _json(result)
