"""Plugin ``nettools``: the Go agent's diagnostic tools on the local API.

``POST /plugins/nettools/{ping,tcping,trace,route,path}`` with a JSON body
``{"target": "..."}`` answers ``{"result": "<text>", ...}``, or an error
``{"error", "code"}``. The core also serves them at the Go agent's paths
(``/ping`` ...; ``moenet_core.api.GO_AGENT_TOOL_PATHS``), so the Go agent's
clients keep working. Every route is *sensitive*: with ``server.token`` set it
needs ``Authorization: Bearer <token>``, without one it answers loopback
clients only.

What the Go agent did and this does not (research ``go-agent.md`` §17):

- the target is parsed, not blacklisted: an IP address or a strict host name
  (never a leading ``-``, a space or a newline), resolved once, and the address
  must be in the allowed ranges (:mod:`.targets`); the program gets the
  address after ``--``;
- ``trace``'s time limit is the plugin's, not the HTTP server's write timeout:
  a slow trace is killed and what it printed is answered with
  ``"timedOut": true`` instead of a cut-off response;
- output is capped (``"truncated": true``) and requests run at most
  ``nettools.concurrency`` at once (more: ``429``);
- ``route``/``path`` ask BIRD read-only on a restricted connection
  (:mod:`.birdsock`), with a command rendered from the parsed address.

Programs: ``ping`` (iputils-ping) and ``traceroute`` (Debian's ``traceroute``).
Metrics: ``moenet_nettools_requests_total{tool,result}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import Counter

from moenet_core import ApiError, ConfigSection, RouteSpec, hookimpl

from . import birdsock
from .config import NETTOOLS_SECTION, NettoolsConfig
from .run import RunResult, run_bounded
from .targets import IPAddress, TargetError, TargetPolicy, parse_network, parse_target

if TYPE_CHECKING:
    from moenet_core import PluginContext
    from moenet_core.config import AgentConfig

__all__ = ["TOOLS", "parse_tcp_target", "policy_for"]

TOOLS = ("ping", "tcping", "trace", "route", "path")
#: The Go agent kept lines with ``BGP.as_path``, ``via`` or ``unicast``; BIRD 3
#: writes the path as ``bgp_path:``.
_PATH_LINE = re.compile(r"BGP\.as_path|bgp_path:|via|unicast")
_STASH = "moenet_nettools.tools"
_MAX_BODY = 4096


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [NETTOOLS_SECTION]


@hookimpl
def moenet_features() -> list[str]:
    return ["nettools"]


@hookimpl
def moenet_startup(ctx: PluginContext) -> None:
    """Register the request counter at start: a counter that appears only with
    the first request breaks ``rate()`` and alerts on ``absent()``."""
    _state(ctx, _config(ctx))


@hookimpl
def moenet_api_routes(config: AgentConfig) -> list[RouteSpec]:
    handlers: dict[str, Callable[[web.Request, PluginContext], Awaitable[web.StreamResponse]]] = {
        "ping": _ping,
        "tcping": _tcping,
        "trace": _trace,
        "route": _route,
        "path": _path,
    }
    return [
        RouteSpec(
            method="POST",
            path=f"/{tool}",
            handler=handler,
            mutating=False,
            sensitive=True,
            description=f'{tool} a DN42 target (body {{"target"}}; the Go agent\'s /{tool})',
        )
        for tool, handler in handlers.items()
    ]


# ------------------------------------------------------------------ helpers


class _State:
    """Per-agent state in ``ctx.stash``: the concurrency limit and the metric."""

    def __init__(self, ctx: PluginContext, cfg: NettoolsConfig) -> None:
        self.sem = asyncio.Semaphore(cfg.concurrency)
        self.requests: Counter = ctx.metrics.counter(
            "requests_total", "Diagnostic tool requests by tool and result.", ["tool", "result"]
        )


def _state(ctx: PluginContext, cfg: NettoolsConfig) -> _State:
    st = ctx.stash.get(_STASH)
    if st is None:
        st = ctx.stash[_STASH] = _State(ctx, cfg)
    assert isinstance(st, _State)
    return st


def _config(ctx: PluginContext) -> NettoolsConfig:
    cfg = ctx.section
    return cfg if isinstance(cfg, NettoolsConfig) else NettoolsConfig()


def policy_for(cfg: NettoolsConfig, ctx: PluginContext | None = None) -> TargetPolicy:
    """The allowed targets: the configured networks and the node's loopbacks."""
    extra: list[str | None] = list(cfg.extra_targets)
    if ctx is not None:
        ident = ctx.identity
        extra += [ident.loopback_ipv4, ident.loopback_ipv6]
    return TargetPolicy.build(cfg.targets, extra=extra, resolve_names=cfg.resolve_names)


async def _body(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise ApiError(413, "payload_too_large", f"the body is larger than {_MAX_BODY} bytes")
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        raise ApiError(400, "bad_request", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", 'request body must be a JSON object: {"target": "..."}')
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(unknown)}")
    if "target" not in body:
        raise ApiError(400, "bad_request", "missing field: target")
    return body


def _refused(exc: TargetError) -> ApiError:
    status = 403 if exc.code == "target_not_allowed" else 400
    return ApiError(status, exc.code, exc.message)


async def _guarded(
    request: web.Request,
    ctx: PluginContext,
    tool: str,
    work: Callable[[NettoolsConfig], Awaitable[dict[str, Any]]],
) -> web.Response:
    """Concurrency limit, metrics and logging around one tool request."""
    cfg = _config(ctx)
    st = _state(ctx, cfg)
    if st.sem.locked():
        st.requests.labels(tool, "busy").inc()
        raise ApiError(429, "too_many_requests", f"{cfg.concurrency} tool requests are running: try again")
    async with st.sem:
        started = time.monotonic()
        try:
            answer = await work(cfg)
        except ApiError as exc:
            st.requests.labels(tool, "refused" if exc.status < 500 else "error").inc()
            raise
        result = "timeout" if answer.get("timedOut") else "truncated" if answer.get("truncated") else "ok"
        st.requests.labels(tool, result).inc()
        ctx.log.bind(tool=tool, target=answer.get("target"), remote=request.remote or "").debug(
            "nettools: {} answered in {:.2f} s ({})", tool, time.monotonic() - started, result
        )
    return web.json_response(answer)


def _run_answer(ip: IPAddress, res: RunResult, timeout: float) -> dict[str, Any]:
    text = res.output
    if res.truncated:
        text += "\n[output truncated]\n"
    if res.timed_out:
        text += f"\n[timed out after {timeout:g} s]\n"
    return {
        "result": text,
        "target": str(ip),
        "exitCode": res.returncode,
        "timedOut": res.timed_out,
        "truncated": res.truncated,
    }


async def _program(argv0: str, run: Callable[[], Awaitable[RunResult]]) -> RunResult:
    try:
        return await run()
    except FileNotFoundError:
        raise ApiError(503, "unavailable", f"{argv0} is not installed on this node") from None


# ------------------------------------------------------------------ the tools


async def _ping(request: web.Request, ctx: PluginContext) -> web.Response:
    body = await _body(request, frozenset({"target"}))

    async def work(cfg: NettoolsConfig) -> dict[str, Any]:
        try:
            ip = await policy_for(cfg, ctx).resolve(body["target"])
        except TargetError as exc:
            raise _refused(exc) from None
        res = await _program(
            "ping",
            lambda: run_bounded(
                "ping",
                "-n",
                "-c",
                str(cfg.ping_count),
                "-W",
                f"{cfg.ping_wait:g}",
                "--",
                str(ip),
                timeout=cfg.timeout,
                limit=cfg.output_limit,
            ),
        )
        return _run_answer(ip, res, cfg.timeout)

    return await _guarded(request, ctx, "ping", work)


async def _trace(request: web.Request, ctx: PluginContext) -> web.Response:
    body = await _body(request, frozenset({"target"}))

    async def work(cfg: NettoolsConfig) -> dict[str, Any]:
        try:
            ip = await policy_for(cfg, ctx).resolve(body["target"])
        except TargetError as exc:
            raise _refused(exc) from None
        res = await _program(
            "traceroute",
            lambda: run_bounded(
                "traceroute",
                "-n",
                "-q",
                "1",
                "-m",
                str(cfg.trace_max_hops),
                "-w",
                f"{cfg.trace_wait:g}",
                "--",
                str(ip),
                timeout=cfg.timeout,
                limit=cfg.output_limit,
            ),
        )
        return _run_answer(ip, res, cfg.timeout)

    return await _guarded(request, ctx, "trace", work)


def parse_tcp_target(target: object, port: object, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address, plus an
    optional ``port`` field: (host text, port). :class:`TargetError` otherwise."""
    if not isinstance(target, str):
        raise TargetError("invalid_target", "target must be a string")
    host, port_text = target, None
    if target.startswith("["):
        close = target.find("]")
        if close < 0 or target[close + 1 : close + 2] not in (":", ""):
            raise TargetError("invalid_target", "expected [ipv6]:port")
        host, port_text = target[1:close], target[close + 2 :] or None
    elif target.count(":") == 1:
        host, _, port_text = target.partition(":")
    if port_text is not None and port is not None:
        raise TargetError("invalid_target", "give the port in the target or in 'port', not both")
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text):
            raise TargetError("invalid_target", f"invalid port {port_text!r}")
        port = int(port_text)
    if port is None:
        port = default_port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise TargetError("invalid_target", "port must be an integer from 1 to 65535")
    return host, port


async def _connect_once(ip: IPAddress, port: int, timeout: float) -> tuple[float | None, str]:
    started = time.monotonic()
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(str(ip), port), timeout)
    except TimeoutError:
        return None, f"timed out after {timeout:g} s"
    except OSError as exc:
        # asyncio's "Connect call failed ('addr', port)" carries the errno.
        return None, (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__).lower()
    elapsed = (time.monotonic() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    return elapsed, "connected"


async def _tcping(request: web.Request, ctx: PluginContext) -> web.Response:
    body = await _body(request, frozenset({"target", "port"}))

    async def work(cfg: NettoolsConfig) -> dict[str, Any]:
        try:
            host, port = parse_tcp_target(body["target"], body.get("port"), cfg.tcping_port)
            ip = await policy_for(cfg, ctx).resolve(host)
        except TargetError as exc:
            raise _refused(exc) from None
        where = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        lines = [f"TCPING {where}"]
        times: list[float] = []
        deadline = time.monotonic() + cfg.timeout
        timed_out = False
        for seq in range(1, cfg.tcping_count + 1):
            if seq > 1:
                await asyncio.sleep(0.25)
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ms, what = await _connect_once(ip, port, min(cfg.tcping_timeout, left))
            if ms is not None:
                times.append(ms)
                lines.append(f"{where}: seq={seq} {what} time={ms:.3f} ms")
            else:
                lines.append(f"{where}: seq={seq} {what}")
        sent = len(lines) - 1
        summary = (
            f"{sent} connects, {len(times)} succeeded, {100 * (sent - len(times)) / max(sent, 1):.0f}% failed"
        )
        if times:
            summary += f", min/avg/max = {min(times):.3f}/{sum(times) / len(times):.3f}/{max(times):.3f} ms"
        lines += ["", summary]
        if timed_out:
            lines.append(f"[timed out after {cfg.timeout:g} s]")
        return {
            "result": "\n".join(lines) + "\n",
            "target": str(ip),
            "port": port,
            "succeeded": len(times),
            "timedOut": timed_out,
            "truncated": False,
        }

    return await _guarded(request, ctx, "tcping", work)


async def _route_answer(cfg: NettoolsConfig, target: object) -> tuple[str, birdsock.BirdAnswer]:
    try:
        net = parse_network(target)
    except TargetError as first:
        # Not an address or prefix: a host name, resolved without the target
        # ranges (a route lookup sends nothing to the target).
        if not isinstance(target, str) or "/" in target:
            raise _refused(first) from None
        try:
            parse_target(target)
            net = await TargetPolicy.build(["0.0.0.0/0", "::/0"], resolve_names=cfg.resolve_names).resolve(
                target
            )
        except TargetError as exc:
            raise _refused(exc) from None
    if isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network) and net.num_addresses == 1:
        net = net.network_address
    command = f"show route for {net} all"
    try:
        answer = await birdsock.query(
            command, socket_path=cfg.bird_socket, timeout=cfg.timeout, limit=cfg.output_limit
        )
    except birdsock.BirdQueryError as exc:
        raise ApiError(502, "bird_unavailable", str(exc)) from None
    return str(net), answer


def _bird_answer(target: str, answer: birdsock.BirdAnswer, text: str) -> dict[str, Any]:
    if answer.truncated:
        text += "[output truncated]\n"
    if answer.timed_out:
        text += "[timed out]\n"
    return {
        "result": text,
        "target": target,
        "timedOut": answer.timed_out,
        "truncated": answer.truncated,
    }


async def _route(request: web.Request, ctx: PluginContext) -> web.Response:
    body = await _body(request, frozenset({"target"}))

    async def work(cfg: NettoolsConfig) -> dict[str, Any]:
        target, answer = await _route_answer(cfg, body["target"])
        return _bird_answer(target, answer, answer.text)

    return await _guarded(request, ctx, "route", work)


async def _path(request: web.Request, ctx: PluginContext) -> web.Response:
    body = await _body(request, frozenset({"target"}))

    async def work(cfg: NettoolsConfig) -> dict[str, Any]:
        target, answer = await _route_answer(cfg, body["target"])
        lines = [line for line in answer.text.splitlines() if _PATH_LINE.search(line)]
        if answer.error or not lines:
            lines = answer.text.splitlines()  # "Network not found": say so
        return _bird_answer(target, answer, "".join(f"{line}\n" for line in lines))

    return await _guarded(request, ctx, "path", work)
