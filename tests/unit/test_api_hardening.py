"""The local API's hardening (issue 14, item 3; research security-review M1-M3).

- connections are bounded: a cap (the oldest idle one makes room; a new one is
  closed when every slot has a request running), a header timeout and an idle
  timeout, so stalled connections cannot exhaust the agent's descriptors;
- the Host header is checked on every route (DNS rebinding);
- plugin routes that call the CP or show the topology (``/plan``) need the token;
- refusals are logged at most once per client per interval, never with the token.

Every wait here is on something observable (a socket reaching EOF, a response):
no sleep stands in for synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from loguru import logger
from prometheus_client import CollectorRegistry

from moenet_core.api import LocalApi, listen_is_loopback
from moenet_core.cli import cmd_plan, cmd_status
from moenet_core.descriptors import RouteSpec
from moenet_core.logs import clear_secrets
from moenet_core.netcheck import host_header_name
from moenet_core.reconcile import plan_route
from moenet_core.state import StateStore

TOKEN = "hardening-token-0123456789"
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class FakeCtx:
    """A plugin context with an empty stash: ``plan_route`` answers 503 through it."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.stash: dict[str, Any] = {}


class Host:
    """An ApiHost whose maintenance switch is a real state write."""

    def __init__(self, routes: Sequence[RouteSpec] = (), state: StateStore | None = None) -> None:
        self.registry = CollectorRegistry()
        self.routes = list(routes)
        self.state = state
        self.calls: list[str] = []

    def status(self) -> dict[str, Any]:
        self.calls.append("status")
        return {"status": "ok"}

    async def sync(self, task: str | None, wait: bool) -> dict[str, Any]:
        self.calls.append("sync")
        return {"triggered": []}

    def maintenance(self) -> dict[str, Any]:
        self.calls.append("maintenance")
        return {"enabled": False}

    async def set_maintenance(self, enabled: bool, reason: str) -> dict[str, Any]:
        self.calls.append("set_maintenance")
        if self.state is not None:
            self.state.write_json("maintenance.json", {"enabled": enabled, "reason": reason})
        return {"enabled": enabled}

    async def restart(self, interface: str) -> dict[str, Any] | None:
        return None

    def context(self, plugin: str) -> Any:
        return FakeCtx(plugin)


async def peek(request: web.Request, ctx: Any) -> web.StreamResponse:
    return web.json_response({"peers": ["jp1", "us2"]})


async def fake_plan(request: web.Request, ctx: Any) -> web.StreamResponse:
    return web.json_response({"answer": "controlPlane", "problem": None, "empty": True, "lines": []})


ROUTES = [
    RouteSpec(method="GET", path="/plan", handler=fake_plan, plugin="demo"),
    RouteSpec(method="GET", path="/peers", handler=peek, plugin="demo"),
    RouteSpec(method="GET", path="/health", handler=peek, sensitive=False, plugin="demo"),
]


@pytest.fixture(autouse=True)
def _no_secrets() -> Iterator[None]:
    yield
    clear_secrets()


@pytest.fixture
def captured() -> Iterator[list[str]]:
    lines: list[str] = []
    hid = logger.add(lambda m: lines.append(str(m)), format="{message} {extra}", level="DEBUG")
    yield lines
    logger.remove(hid)


@contextlib.asynccontextmanager
async def serving(api: LocalApi) -> AsyncIterator[int]:
    await api.start()
    try:
        yield next(port for addr, port in api.bound if ":" not in addr)  # the IPv4 socket
    finally:
        await api.stop()


async def stalled(port: int, data: bytes = b"GET /status HTTP/1.1\r\n") -> tuple[asyncio.StreamReader, Any]:
    """A connection that sends ``data`` (by default half a request header) and then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    """Wait for the server to close the connection (EOF); False if it stays open."""
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ connection cap


async def test_stalled_connections_over_the_cap_leave_status_and_state_writes_working(tmp_path: Path) -> None:
    """M1: 200 stalled connections against a cap of 8 hold at most 8 server-side
    descriptors; /status still answers and a state write still works."""
    state = StateStore(tmp_path / "state")
    api = LocalApi(Host(ROUTES, state), listen="127.0.0.1:0", max_connections=8, header_timeout=60)
    async with serving(api) as port:
        before = open_fds()
        conns = [await stalled(port) for _ in range(200)]
        reads = {asyncio.ensure_future(closed_by_server(r, within=10)) for r, _ in conns}
        # Every connection past the cap closes an older idle one: 192 see EOF.
        done: set[asyncio.Future[bool]] = set()
        while len(done) < 192:
            finished, reads = await asyncio.wait(reads, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            assert finished, f"only {len(done)} of 192 excess connections were closed"
            done |= finished
        assert all(f.result() for f in done)
        assert not any(f.done() for f in reads)  # the 8 newest are still open, none more
        assert api.connections == 8
        assert api.dropped["evicted"] == 192
        # Ours: 200 client sockets; the server's: at most the cap (plus slack for the loop).
        assert open_fds() - before <= 200 + 8 + 4

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/status") as resp:
                assert resp.status == 200 and await resp.json() == {"status": "ok"}
            async with http.post(f"http://127.0.0.1:{port}/maintenance/start", json={"reason": "x"}) as resp:
                assert resp.status == 200
        assert state.read_json("maintenance.json") == {"enabled": True, "reason": "x"}
        assert api.connections <= 8

        for task in reads:
            task.cancel()
        for _, writer in conns:
            writer.close()
        text = await metrics_text(port)
        assert 'moenet_api_connections_dropped_total{reason="evicted"}' in text


async def metrics_text(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return await resp.text()


async def test_new_connection_closed_at_once_when_every_slot_has_a_request_running(
    captured: list[str],
) -> None:
    release = asyncio.Event()
    started = asyncio.Queue[None]()

    async def slow(request: web.Request, ctx: Any) -> web.StreamResponse:
        started.put_nowait(None)
        await release.wait()
        return web.json_response({"done": True})

    routes = [RouteSpec(method="GET", path="/slow", handler=slow, sensitive=False, plugin="demo")]
    api = LocalApi(Host(routes), listen="127.0.0.1:0", max_connections=2, log_interval=3600)
    async with serving(api) as port, aiohttp.ClientSession() as http:

        async def get_slow() -> int:
            async with http.get(f"http://127.0.0.1:{port}/plugins/demo/slow") as resp:
                return resp.status

        busy = [asyncio.ensure_future(get_slow()) for _ in range(2)]
        for _ in busy:
            await started.get()  # both requests are in their handler
        extra = [await stalled(port) for _ in range(3)]
        for reader, _ in extra:
            assert await closed_by_server(reader)
        assert api.dropped["limit"] == 3 and api.connections == 2
        release.set()
        assert await asyncio.gather(*busy) == [200, 200]
        for _, writer in extra:
            writer.close()
    lines = [line for line in captured if "server.maxConnections" in line]
    assert len(lines) == 1  # rate-limited: one line for three refusals


# ------------------------------------------------------------------ timeouts


@pytest.mark.parametrize(
    "data", [b"", b"GET /status HTTP/1.1\r\n", b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1"]
)
async def test_connection_without_a_complete_header_is_closed_after_the_header_timeout(data: bytes) -> None:
    api = LocalApi(Host(), listen="127.0.0.1:0", header_timeout=0.2, idle_timeout=60)
    async with serving(api) as port:
        reader, writer = await stalled(port, data)
        assert await closed_by_server(reader)
        assert api.dropped["header_timeout"] == 1 and api.connections == 0
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def test_kept_alive_connection_closed_after_idle_timeout() -> None:
    api = LocalApi(Host(), listen="127.0.0.1:0", header_timeout=60, idle_timeout=0.2)
    async with serving(api) as port:
        reader, writer = await stalled(port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        assert await closed_by_server(reader)
        writer.close()


async def test_slow_second_request_on_a_kept_alive_connection_hits_the_header_timeout() -> None:
    api = LocalApi(Host(), listen="127.0.0.1:0", header_timeout=0.2, idle_timeout=60)
    async with serving(api) as port:
        reader, writer = await stalled(port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /status HTTP/1.1\r\n")  # and no more
        await writer.drain()
        assert await closed_by_server(reader)
        assert api.dropped["header_timeout"] == 1
        writer.close()


async def test_a_request_in_progress_is_not_cut_by_the_header_timeout() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(request: web.Request, ctx: Any) -> web.StreamResponse:
        started.set()
        await release.wait()
        return web.json_response({"done": True})

    routes = [RouteSpec(method="GET", path="/slow", handler=slow, sensitive=False, plugin="demo")]
    api = LocalApi(Host(routes), listen="127.0.0.1:0", header_timeout=0.05)
    async with serving(api) as port:
        # A second connection that times out shows the header timer has fired
        # meanwhile; the slow request's connection must survive it.
        reader, writer = await stalled(port, b"GET /plugins/demo/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await started.wait()
        other, other_writer = await stalled(port, b"")
        assert await closed_by_server(other)
        release.set()
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
        other_writer.close()


# ------------------------------------------------------------------ Host header


def client_for(
    api: LocalApi, aiohttp_client: ClientFactory
) -> Awaitable[TestClient[web.Request, web.Application]]:
    return aiohttp_client(api.app)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("GET", "/maintenance"),
        ("GET", "/plugins/demo/health"),
        ("GET", "/plugins/demo/plan"),
        ("POST", "/maintenance/start"),
        ("GET", "/sync"),
        ("GET", "/no/such/route"),
    ],
)
@pytest.mark.parametrize("token", [None, TOKEN])
async def test_dns_rebinding_host_is_refused_on_every_route(
    aiohttp_client: ClientFactory, method: str, path: str, token: str | None
) -> None:
    host = Host(ROUTES)
    client = await client_for(LocalApi(host, token=token), aiohttp_client)
    headers = {"Host": "evil.example:24368", "Sec-Fetch-Site": "same-origin"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    resp = await client.request(method, path, headers=headers)
    assert resp.status == 421
    assert (await resp.json())["code"] == "misdirected_request"
    assert host.calls == []


@pytest.mark.parametrize(
    "host_header",
    [
        "localhost",
        "localhost:24368",
        "LocalHost.:24368",
        "127.0.0.1",
        "127.0.0.1:24368",
        "127.1.2.3:80",
        "[::1]:24368",
        "[::1]",
        "agent.example:24368",  # server.allowedHosts
        "192.0.2.10:24368",  # server.allowedHosts (an address)
    ],
)
async def test_loopback_names_and_allowed_hosts_are_accepted(
    aiohttp_client: ClientFactory, host_header: str
) -> None:
    api = LocalApi(Host(), allowed_hosts=["agent.example", "192.0.2.10"])
    client = await client_for(api, aiohttp_client)
    assert (await client.get("/status", headers={"Host": host_header})).status == 200


@pytest.mark.parametrize(
    "host_header",
    [
        "evil.example",
        "localhost.evil.example",
        "agent.example.evil",
        "127.0.0.1.nip.io",
        "[::1",
        "a b",
        "x:y",
    ],
)
async def test_other_hosts_are_refused(aiohttp_client: ClientFactory, host_header: str) -> None:
    client = await client_for(LocalApi(Host(), allowed_hosts=["agent.example"]), aiohttp_client)
    assert (await client.get("/status", headers={"Host": host_header})).status == 421


async def test_the_listen_host_and_the_address_reached_are_accepted() -> None:
    """A ``:port`` listener is reached on any local address; an address literal
    cannot be rebound, so the one the connection arrived on is accepted."""
    api = LocalApi(Host(), listen=":0", token=TOKEN)
    async with serving(api) as port, aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/status", headers={"Host": f"127.0.0.1:{port}"}) as resp:
            assert resp.status == 200
        async with http.get(f"http://127.0.0.1:{port}/status", headers={"Host": "192.0.2.99"}) as resp:
            assert resp.status == 421  # an address this connection did not arrive on


async def test_the_listen_name_is_accepted(aiohttp_client: ClientFactory) -> None:
    client = await client_for(LocalApi(Host(), listen="agent.invalid:24368", token=TOKEN), aiohttp_client)
    assert (await client.get("/status", headers={"Host": "agent.invalid:24368"})).status == 200
    assert (await client.get("/status", headers={"Host": "other.invalid:24368"})).status == 421


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:24368", "localhost"),
        ("LOCALHOST.", "localhost"),
        ("[::1]:1", "::1"),
        ("[::1]", "::1"),
        ("192.0.2.1", "192.0.2.1"),
        ("[::1]x", None),
        ("host:port", None),
        ("", None),
        ("evil..example", "evil..example"),  # matches the pattern; refused as unknown anyway
    ],
)
def test_host_name_parsing(header: str, name: str | None) -> None:
    assert host_header_name(header) == name


# ------------------------------------------------------------------ sensitive routes


def test_plugin_routes_are_sensitive_unless_they_say_otherwise() -> None:
    assert RouteSpec(method="GET", path="/x", handler=peek).is_sensitive
    assert not RouteSpec(method="GET", path="/x", handler=peek, sensitive=False).is_sensitive
    assert RouteSpec(method="POST", path="/x", handler=peek, sensitive=False).is_sensitive  # mutating
    route = plan_route("sessionSync")
    assert route.sensitive is True and not route.is_mutating


@pytest.mark.parametrize("path", ["/plugins/demo/plan", "/plugins/demo/peers"])
async def test_sensitive_route_needs_the_token_when_one_is_set(
    aiohttp_client: ClientFactory, path: str
) -> None:
    client = await client_for(LocalApi(Host(ROUTES), token=TOKEN), aiohttp_client)
    assert (await client.get(path)).status == 401
    assert (await client.get(path, headers={"Authorization": "Bearer wrong-0123456789"})).status == 401
    assert (await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
    assert (await client.get("/plugins/demo/health")).status == 200  # sensitive=False


async def test_real_plan_route_needs_the_token(aiohttp_client: ClientFactory) -> None:
    host = Host([RouteSpec(**{**_fields(plan_route("demoSync")), "plugin": "demo"})])
    client = await client_for(LocalApi(host, token=TOKEN), aiohttp_client)
    assert (await client.get("/plugins/demo/plan")).status == 401
    resp = await client.get("/plugins/demo/plan", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 503  # past the check: the reconciler is not running in this fake


def _fields(spec: RouteSpec) -> dict[str, Any]:
    return {
        "method": spec.method,
        "path": spec.path,
        "handler": spec.handler,
        "mutating": spec.mutating,
        "sensitive": spec.sensitive,
        "description": spec.description,
    }


@pytest.mark.parametrize(
    "headers", [{"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}]
)
async def test_sensitive_route_refuses_cross_origin_without_token(
    aiohttp_client: ClientFactory, headers: dict[str, str]
) -> None:
    """M2: a web page cannot make the agent call the CP (a no-cors GET needs no preflight)."""
    client = await client_for(LocalApi(Host(ROUTES)), aiohttp_client)
    resp = await client.get("/plugins/demo/plan", headers=headers)
    assert resp.status == 403
    assert (await client.get("/plugins/demo/plan")).status == 200  # a local tool


def write_config(tmp_path: Path, port: int, token: str | None) -> str:
    server: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if token:
        server["token"] = token
    raw = {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": "https://cp.example/api", "token": "cp-token-0123456789"},
        "server": server,
    }
    path = tmp_path / f"config-{bool(token)}.json"
    path.write_text(json.dumps(raw))
    return str(path)


async def test_cli_plan_and_status_send_the_configured_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = LocalApi(Host(ROUTES), listen="127.0.0.1:0", token=TOKEN)
    async with serving(api) as port:
        with_token = write_config(tmp_path, port, TOKEN)
        without = write_config(tmp_path, port, None)
        assert await asyncio.to_thread(cmd_plan, with_token, None, "demo") == 0
        assert "nothing to change" in capsys.readouterr().out
        assert await asyncio.to_thread(cmd_status, with_token, None, as_json=True) == 0
        assert json.loads(capsys.readouterr().out) == {"status": "ok"}
        assert await asyncio.to_thread(cmd_plan, without, None, "demo") == 1
        assert "missing or invalid bearer token" in capsys.readouterr().err


# ------------------------------------------------------------------ non-loopback without token


@pytest.mark.parametrize(
    "listen", [":24368", "0.0.0.0:24368", "[::]:24368", "192.0.2.1:24368", "node.example:1"]
)
def test_non_loopback_listen_without_token_is_refused(listen: str) -> None:
    with pytest.raises(ValueError, match=r"set server\.token, or listen on loopback"):
        LocalApi(Host(), listen=listen)
    assert not listen_is_loopback(listen)
    LocalApi(Host(), listen=listen, token=TOKEN)  # with a token it is the operator's choice


@pytest.mark.parametrize("listen", ["127.0.0.1:24368", "127.0.0.2:1", "[::1]:24368", "localhost:24368"])
def test_loopback_listen_needs_no_token(listen: str) -> None:
    assert listen_is_loopback(listen)
    LocalApi(Host(), listen=listen)


# ------------------------------------------------------------------ failed-auth logging


async def test_failed_auth_is_logged_once_per_client_per_interval_without_the_token(
    aiohttp_client: ClientFactory, captured: list[str]
) -> None:
    now = [1000.0]
    api = LocalApi(Host(ROUTES), token=TOKEN, log_interval=60, clock=lambda: now[0])
    client = await client_for(api, aiohttp_client)
    guesses = [f"Bearer guess-{i:04d}-0123456789" for i in range(5)]
    for guess in guesses:
        assert (await client.post("/maintenance/start", headers={"Authorization": guess})).status == 401
    assert (await client.get("/plugins/demo/plan", headers={"Authorization": guesses[0]})).status == 401
    lines = [line for line in captured if "bearer token" in line]
    assert len(lines) == 1 and "suppressed" not in lines[0].split(" {")[0]
    now[0] += 61
    assert (await client.post("/maintenance/start")).status == 401
    lines = [line for line in captured if "bearer token" in line]
    assert len(lines) == 2
    assert "(5 more like it suppressed in the last 60 s)" in lines[1]
    text = "".join(captured)
    assert TOKEN not in text and not any(g.split()[1] in text for g in guesses)
    assert api.refused["unauthorized"] == 7
    metrics = await (await client.get("/metrics")).text()
    assert 'moenet_api_requests_refused_total{reason="unauthorized"} 7.0' in metrics


async def test_failed_auth_lines_are_per_client(aiohttp_client: ClientFactory, captured: list[str]) -> None:
    api = LocalApi(Host(), log_interval=3600)
    app = api.app

    @web.middleware
    async def as_remote(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request.clone(remote=request.headers["X-Test-Remote"]))

    app.middlewares.insert(0, as_remote)
    client = await aiohttp_client(app)
    for remote in ["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.1"]:
        resp = await client.post("/maintenance/start", headers={"X-Test-Remote": remote})
        assert resp.status == 403
    lines = [line for line in captured if "non-loopback client refused" in line]
    assert len(lines) == 2
    assert "192.0.2.1" in lines[0] and "192.0.2.2" in lines[1]
