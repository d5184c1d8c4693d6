"""Tests for moenet_core.api: routes, validation, protection, error shapes, lifecycle."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from helpers.polling import until
from loguru import logger
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from moenet_core.api import LocalApi, is_loopback, parse_listen, valid_interface_name
from moenet_core.descriptors import RouteSpec
from moenet_core.errors import MoenetError, PluginError
from moenet_core.logs import clear_secrets
from moenet_core.metrics import AgentRegistry, PluginMetrics, StreamedCollector

TOKEN = "t0ken-for-tests-0123456789"
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class FakeHost:
    """An ApiHost that records every call."""

    def __init__(self, routes: Sequence[RouteSpec] = ()) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.registry = CollectorRegistry()
        Gauge("moenet_fake_peers", "Peers the fake host knows.", registry=self.registry).set(7)
        self.routes = list(routes)
        self.tasks = {"sessionSync", "meshSync"}
        self.interfaces = {"dn42_4242420001", "wg.mesh-1"}
        self.state: dict[str, Any] = {"enabled": False, "since": None, "reason": ""}

    def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return {"status": "ok", "version": "0.0-test", "maintenance": self.state["enabled"]}

    async def sync(self, task: str | None, wait: bool) -> dict[str, Any]:
        self.calls.append(("sync", task, wait))
        if task is not None and task not in self.tasks:
            raise KeyError(task)
        return {"triggered": [task] if task else sorted(self.tasks), "waited": wait}

    def maintenance(self) -> dict[str, Any]:
        self.calls.append(("maintenance",))
        return dict(self.state)

    async def set_maintenance(self, enabled: bool, reason: str) -> dict[str, Any]:
        self.calls.append(("set_maintenance", enabled, reason))
        self.state = {"enabled": enabled, "since": 1000.0 if enabled else None, "reason": reason}
        return dict(self.state)

    async def restart(self, interface: str) -> dict[str, Any] | None:
        self.calls.append(("restart", interface))
        if interface not in self.interfaces:
            return None
        return {"interface": interface, "restarted": True}

    def context(self, plugin: str) -> Any:
        """Stands in for the plugin's PluginContext handed to its route handlers."""
        return {"plugin": plugin}


def remote_as(address: str) -> Any:
    """A test middleware, put in front of the API's own, that makes requests look
    like they come from ``address`` (TestClient always connects from loopback)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request.clone(remote=address))

    return middleware


async def hello(request: web.Request, ctx: Any) -> web.StreamResponse:
    return web.json_response({"hello": request.match_info.get("name", "world"), "ctx": ctx})


async def act(request: web.Request, ctx: Any) -> web.StreamResponse:
    return web.json_response({"acted": True})


async def explode(request: web.Request, ctx: Any) -> web.StreamResponse:
    raise RuntimeError("boom: internal detail /etc/secret")


PLUGIN_ROUTES = [
    RouteSpec(method="GET", path="/hello", handler=hello, plugin="demo"),
    RouteSpec(method="GET", path="/hello/{name}", handler=hello, plugin="demo"),
    RouteSpec(method="POST", path="/act", handler=act, plugin="demo"),
    RouteSpec(method="GET", path="/kick", handler=act, mutating=True, plugin="demo"),
    RouteSpec(method="POST", path="/query", handler=act, mutating=False, sensitive=False, plugin="demo"),
    RouteSpec(method="GET", path="/open", handler=hello, sensitive=False, plugin="demo"),
    RouteSpec(method="GET", path="/explode", handler=explode, plugin="demo"),
]


@pytest.fixture(autouse=True)
def _no_secrets() -> Iterator[None]:
    yield
    clear_secrets()


@pytest.fixture
def host() -> FakeHost:
    return FakeHost(PLUGIN_ROUTES)


@pytest.fixture
def captured() -> Iterator[list[str]]:
    """Everything loguru emits during the test, as text with extras and tracebacks."""
    lines: list[str] = []
    hid = logger.add(lambda m: lines.append(str(m)), format="{message} {extra}\n{exception}", level="DEBUG")
    yield lines
    logger.remove(hid)


async def client_for(
    aiohttp_client: ClientFactory, host: FakeHost, *, token: str | None = None, remote: str | None = None
) -> TestClient[web.Request, web.Application]:
    api = LocalApi(host, token=token)
    app = api.app
    if remote is not None:
        app.middlewares.insert(0, remote_as(remote))
    return await aiohttp_client(app)


# ------------------------------------------------------------------ read-only routes


async def test_status(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/status")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == {"status": "ok", "version": "0.0-test", "maintenance": False}


async def test_head_status_is_allowed(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.head("/status")
    assert resp.status == 200


async def test_metrics(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "# HELP moenet_fake_peers Peers the fake host knows." in text
    assert "moenet_fake_peers 7.0" in text


async def test_metrics_openmetrics_negotiation(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status == 200
    assert resp.content_type == "application/openmetrics-text"
    assert (await resp.text()).rstrip().endswith("# EOF")


class ManySeries(StreamedCollector):
    """Two gauge families of 250 series, in parts of 100."""

    def parts(self) -> Iterator[Metric]:
        for name in ("moenet_fake_a", "moenet_fake_b"):
            for start in range(0, 250, 100):
                part = GaugeMetricFamily(name, f"{name} per peer.", labels=["peer"])
                for i in range(start, min(start + 100, 250)):
                    part.add_metric([f"p{i}"], i)
                yield part


@pytest.fixture
def streamed_host(host: FakeHost) -> FakeHost:
    registry = AgentRegistry()
    Gauge("moenet_fake_peers", "Peers the fake host knows.", registry=registry).set(7)
    PluginMetrics(registry, "fake").register_collector(ManySeries())
    host.registry = registry
    return host


@pytest.mark.parametrize(
    ("accept", "encoder"),
    [("", generate_latest), ("application/openmetrics-text; version=1.0.0", openmetrics_latest)],
)
async def test_streamed_series_are_the_exposition_prometheus_client_writes(
    aiohttp_client: ClientFactory, streamed_host: FakeHost, accept: str, encoder: Any
) -> None:
    """A StreamedCollector's parts go out one at a time; the document is byte for
    byte the one prometheus_client writes for the whole registry."""
    client = await client_for(aiohttp_client, streamed_host)
    resp = await client.get("/metrics", headers={"Accept": accept} if accept else {})
    assert resp.status == 200
    body = await resp.read()
    assert body == encoder(streamed_host.registry)
    assert body.count(b"# TYPE moenet_fake_a gauge") == 1 and b'moenet_fake_b{peer="p249"} 249.0' in body
    assert streamed_host.registry.get_sample_value("moenet_fake_a", {"peer": "p120"}) == 120.0


async def test_head_of_streamed_metrics_has_no_body(
    aiohttp_client: ClientFactory, streamed_host: FakeHost
) -> None:
    client = await client_for(aiohttp_client, streamed_host)
    resp = await client.head("/metrics", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert await resp.read() == b""
    resp = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})  # the connection is still sound
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
    assert await resp.read() == generate_latest(streamed_host.registry)


async def test_a_scraper_leaving_mid_answer_is_not_an_error(
    aiohttp_client: ClientFactory,
    streamed_host: FakeHost,
    captured: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scraper's timeout closes the connection while parts are being written:
    the handler stops quietly (no "handler failed" with a traceback)."""
    real = web.StreamResponse.write
    writes = 0

    async def write(self: web.StreamResponse, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == 2:
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        await real(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", write)
    client = await client_for(aiohttp_client, streamed_host)
    resp = await client.get("/metrics")  # the headers came; the body stops
    await until("the answer given up", lambda: any("closed the connection" in line for line in captured))
    resp.close()
    assert writes == 2
    assert not [line for line in captured if "handler failed" in line], captured


async def test_streamed_series_honour_a_name_filter(
    aiohttp_client: ClientFactory, streamed_host: FakeHost
) -> None:
    client = await client_for(aiohttp_client, streamed_host)
    resp = await client.get("/metrics?name[]=moenet_fake_b&name[]=moenet_fake_peers")
    body = (await resp.read()).decode()
    assert "moenet_fake_peers 7.0" in body and 'moenet_fake_b{peer="p0"} 0.0' in body
    assert "moenet_fake_a" not in body


# ------------------------------------------------------------------ maintenance


async def test_maintenance_get_start_stop(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/maintenance")
    assert await resp.json() == {"enabled": False, "since": None, "reason": ""}

    resp = await client.post("/maintenance/start", json={"reason": "kernel upgrade"})
    assert resp.status == 200
    assert await resp.json() == {"enabled": True, "since": 1000.0, "reason": "kernel upgrade"}

    resp = await client.post("/maintenance/stop")
    assert resp.status == 200
    assert (await resp.json())["enabled"] is False

    resp = await client.post("/maintenance/start")  # no body: empty reason
    assert resp.status == 200
    assert host.calls[-1] == ("set_maintenance", True, "")
    assert ("set_maintenance", True, "kernel upgrade") in host.calls
    assert ("set_maintenance", False, "") in host.calls


@pytest.mark.parametrize(
    "body",
    [
        b'{"reason": "two\\nlines"}',
        b'{"reason": "' + b"x" * 201 + b'"}',
        b'{"reason": 5}',
        b'{"why": "typo"}',
        b"[1, 2]",
        b"{not json",
        b"\xff\xfe",
    ],
)
async def test_maintenance_start_bad_body(aiohttp_client: ClientFactory, host: FakeHost, body: bytes) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/maintenance/start", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    data = await resp.json()
    assert data["code"] == "bad_request"
    assert isinstance(data["error"], str) and data["error"]
    assert not any(c[0] == "set_maintenance" for c in host.calls)


# ------------------------------------------------------------------ sync


async def test_sync_without_wait_is_202(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/sync")
    assert resp.status == 202
    assert await resp.json() == {"triggered": ["meshSync", "sessionSync"], "waited": False}
    assert host.calls == [("sync", None, False)]


async def test_sync_get_with_task_and_wait_is_200(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/sync", params={"task": "sessionSync", "wait": "1"})
    assert resp.status == 200
    assert await resp.json() == {"triggered": ["sessionSync"], "waited": True}
    assert host.calls == [("sync", "sessionSync", True)]


async def test_sync_post_json_and_form(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/sync", json={"task": "meshSync", "wait": True})
    assert resp.status == 200
    resp = await client.post("/sync", data={"task": "meshSync", "wait": "true"})
    assert resp.status == 200
    resp = await client.post("/sync?wait=0")
    assert resp.status == 202
    assert host.calls == [("sync", "meshSync", True), ("sync", "meshSync", True), ("sync", None, False)]


async def test_sync_unknown_task_is_404(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/sync", params={"task": "noSuchTask"})
    assert resp.status == 404
    data = await resp.json()
    assert data["code"] == "unknown_task"
    assert "noSuchTask" in data["error"]


@pytest.mark.parametrize(
    "params",
    [
        {"task": "1abc"},
        {"task": "a-b"},
        {"task": "a\nb"},
        {"task": "x" * 65},
        {"task": ""},
        {"wait": "maybe"},
        {"tsak": "sessionSync"},
    ],
)
async def test_sync_invalid_params_are_400(
    aiohttp_client: ClientFactory, host: FakeHost, params: dict[str, str]
) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/sync", params=params)
    assert resp.status == 400
    assert (await resp.json())["code"] == "bad_request"
    assert host.calls == []


async def test_sync_head_is_not_an_unprotected_backdoor(
    aiohttp_client: ClientFactory, host: FakeHost
) -> None:
    client = await client_for(aiohttp_client, host, token=TOKEN)
    resp = await client.head("/sync")
    assert resp.status in (401, 405)
    assert host.calls == []


# ------------------------------------------------------------------ restart


async def test_restart_valid(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/restart", json={"interface": "dn42_4242420001"})
    assert resp.status == 200
    assert await resp.json() == {"interface": "dn42_4242420001", "restarted": True}
    assert host.calls == [("restart", "dn42_4242420001")]


@pytest.mark.parametrize(
    "name", ["a" * 16, "a/b", "a\nb", "-x", "..", ".", "", "a b", "eth0:1", "wg\x00", 42, None, ["wg0"]]
)
async def test_restart_invalid_name_never_reaches_host(
    aiohttp_client: ClientFactory, host: FakeHost, name: object
) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/restart", json={"interface": name})
    assert resp.status == 400
    assert (await resp.json())["code"] == "bad_request"
    assert host.calls == []


@pytest.mark.parametrize("body", [{}, {"peer_name": "all"}])
async def test_restart_missing_interface(
    aiohttp_client: ClientFactory, host: FakeHost, body: dict[str, str]
) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/restart", json=body)
    assert resp.status == 400
    assert host.calls == []


async def test_restart_unknown_interface_is_404(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/restart", json={"interface": "wg99"})
    assert resp.status == 404
    assert (await resp.json())["code"] == "unknown_interface"
    assert host.calls == [("restart", "wg99")]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("wg0", True),
        ("a" * 15, True),
        ("wg.mesh-1", True),
        ("x", True),
        ("a" * 16, False),
        ("-x", False),
        ("..", False),
        (".", False),
        ("a/b", False),
        ("a\nb", False),
        ("", False),
        (1, False),
    ],
)
def test_valid_interface_name(name: object, ok: bool) -> None:
    assert valid_interface_name(name) is ok


# ------------------------------------------------------------------ protection: token


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/maintenance/start"),
        ("POST", "/maintenance/stop"),
        ("POST", "/sync"),
        ("GET", "/sync"),
        ("POST", "/restart"),
        ("POST", "/plugins/demo/act"),
        ("GET", "/plugins/demo/kick"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"bearer{TOKEN}"],
)
async def test_token_required_for_mutating(
    aiohttp_client: ClientFactory, host: FakeHost, method: str, path: str, authorization: str | None
) -> None:
    client = await client_for(aiohttp_client, host, token=TOKEN)
    headers = {"Authorization": authorization} if authorization is not None else {}
    resp = await client.request(method, path, headers=headers, json={"interface": "wg0"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await resp.json())["code"] == "unauthorized"
    assert host.calls == []


async def test_right_token_is_accepted(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.post("/maintenance/start", headers=auth)).status == 200
    assert (await client.post("/sync", headers=auth, params={"wait": "1"})).status == 200
    assert (await client.post("/plugins/demo/act", headers=auth)).status == 200
    # scheme is case-insensitive (RFC 7235)
    assert (
        await client.post("/maintenance/stop", headers={"Authorization": f"bearer {TOKEN}"})
    ).status == 200


async def test_token_accepted_from_non_loopback(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host, token=TOKEN, remote="192.0.2.1")
    resp = await client.post("/maintenance/start", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200


@pytest.mark.parametrize("path", ["/status", "/metrics", "/maintenance", "/plugins/demo/open"])
async def test_read_only_open_without_token(aiohttp_client: ClientFactory, host: FakeHost, path: str) -> None:
    client = await client_for(aiohttp_client, host, token=TOKEN, remote="192.0.2.1")
    assert (await client.get(path)).status == 200


async def test_token_and_header_never_logged(
    aiohttp_client: ClientFactory, host: FakeHost, captured: list[str]
) -> None:
    client = await client_for(aiohttp_client, host, token=TOKEN)
    await client.post("/maintenance/start", headers={"Authorization": "Bearer guess-0123456789"})
    await client.post("/maintenance/start", headers={"Authorization": f"Bearer {TOKEN}"})
    text = "".join(captured)
    assert "local API mutating request" in text  # something was logged...
    assert TOKEN not in text  # ...but not the credentials
    assert "guess-0123456789" not in text
    assert "Authorization" not in text


# ------------------------------------------------------------------ protection: loopback


async def test_no_token_loopback_allowed(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)  # the test client connects from 127.0.0.1
    assert (await client.post("/maintenance/start")).status == 200
    assert (await client.post("/plugins/demo/act")).status == 200


@pytest.mark.parametrize("remote", ["127.0.0.2", "::1", "::ffff:127.0.0.1"])
async def test_no_token_other_loopback_forms_allowed(
    aiohttp_client: ClientFactory, host: FakeHost, remote: str
) -> None:
    client = await client_for(aiohttp_client, host, remote=remote)
    assert (await client.post("/maintenance/stop")).status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/maintenance/start"),
        ("GET", "/sync"),
        ("POST", "/restart"),
        ("POST", "/plugins/demo/act"),
        ("GET", "/plugins/demo/kick"),
    ],
)
async def test_no_token_non_loopback_refused(
    aiohttp_client: ClientFactory, host: FakeHost, method: str, path: str
) -> None:
    client = await client_for(aiohttp_client, host, remote="192.0.2.1")
    resp = await client.request(method, path, json={"interface": "wg0"})
    assert resp.status == 403
    assert await resp.json() == {
        "error": "mutating endpoints accept loopback clients only when server.token is unset",
        "code": "forbidden",
    }
    assert host.calls == []


async def test_no_token_non_loopback_read_only_and_non_mutating_plugin_route_open(
    aiohttp_client: ClientFactory, host: FakeHost
) -> None:
    client = await client_for(aiohttp_client, host, remote="192.0.2.1")
    assert (await client.get("/status")).status == 200
    assert (await client.get("/plugins/demo/open")).status == 200  # sensitive=False
    assert (await client.post("/plugins/demo/query")).status == 200  # mutating=False, sensitive=False


@pytest.mark.parametrize(
    "headers", [{"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}]
)
async def test_no_token_browser_cross_origin_refused(
    aiohttp_client: ClientFactory, host: FakeHost, headers: dict[str, str]
) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/maintenance/start", headers=headers)
    assert resp.status == 403
    assert (await resp.json())["code"] == "forbidden"
    assert host.calls == []


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.1", False),
        ("::ffff:192.0.2.1", False),
        ("fe80::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("localhost", False),
        ("", False),
        (None, False),
        ("garbage", False),
    ],
)
def test_is_loopback(remote: str | None, expected: bool) -> None:
    assert is_loopback(remote) is expected


# ------------------------------------------------------------------ plugin routes


async def test_plugin_routes_mounted_under_prefix(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/plugins/demo/hello")
    assert await resp.json() == {"hello": "world", "ctx": {"plugin": "demo"}}
    resp = await client.get("/plugins/demo/hello/alice")
    assert await resp.json() == {"hello": "alice", "ctx": {"plugin": "demo"}}
    assert (await client.get("/hello")).status == 404


async def test_plugin_route_taking_only_the_request_still_works(aiohttp_client: ClientFactory) -> None:
    async def legacy(request: web.Request) -> web.StreamResponse:
        return web.json_response({"legacy": True})

    host = FakeHost([RouteSpec(method="GET", path="/old", handler=legacy, plugin="demo")])  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning, match="takes only the request"):
        client = await client_for(aiohttp_client, host)
    assert await (await client.get("/plugins/demo/old")).json() == {"legacy": True}


async def test_plugin_route_invalid_plugin_name() -> None:
    spec = RouteSpec(method="GET", path="/x", handler=hello, plugin="")
    with pytest.raises(PluginError, match="invalid plugin name"):
        _ = LocalApi(FakeHost([spec])).app


async def test_plugin_route_dot_segments_refused() -> None:
    spec = RouteSpec(method="GET", path="/../../status", handler=hello, plugin="demo")
    with pytest.raises(PluginError, match=r"'\.\.'"):
        _ = LocalApi(FakeHost([spec])).app


async def test_plugin_route_duplicate_names_plugin() -> None:
    specs = [RouteSpec(method="GET", path="/x", handler=hello, plugin="demo")] * 2
    with pytest.raises(PluginError, match="demo") as info:
        _ = LocalApi(FakeHost(specs)).app
    assert info.value.plugins == ("demo",)


# ------------------------------------------------------------------ error shapes


async def test_unknown_path_is_json_404(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/nope")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert (await resp.json())["code"] == "not_found"


async def test_wrong_method_is_json_405(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.post("/status")
    assert resp.status == 405
    assert (await resp.json())["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]
    resp = await client.get("/restart")
    assert resp.status == 405


async def test_body_too_large_is_json_413(aiohttp_client: ClientFactory, host: FakeHost) -> None:
    client = await client_for(aiohttp_client, host)
    body = b'{"reason": "' + b"x" * (70 * 1024) + b'"}'
    resp = await client.post("/maintenance/start", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["code"] == "payload_too_large"
    assert host.calls == []


async def test_handler_exception_is_json_500_without_traceback(
    aiohttp_client: ClientFactory, host: FakeHost, captured: list[str]
) -> None:
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/plugins/demo/explode")
    assert resp.status == 500
    body = await resp.text()
    assert resp.content_type == "application/json"
    assert await resp.json() == {"error": "internal server error", "code": "internal_error"}
    assert "Traceback" not in body and "boom" not in body and "/etc/secret" not in body
    logged = "".join(captured)
    assert "local API handler failed" in logged
    assert "RuntimeError: boom" in logged  # the operator still gets the traceback


async def test_plugin_http_exception_becomes_json(aiohttp_client: ClientFactory) -> None:
    async def teapot(request: web.Request, ctx: Any) -> web.StreamResponse:
        raise web.HTTPBadRequest(text="target is not an address")

    host = FakeHost([RouteSpec(method="GET", path="/t", handler=teapot, plugin="demo")])
    client = await client_for(aiohttp_client, host)
    resp = await client.get("/plugins/demo/t")
    assert resp.status == 400
    assert await resp.json() == {"error": "target is not an address", "code": "bad_request"}


# ------------------------------------------------------------------ lifecycle


async def test_start_stop_real_server(host: FakeHost) -> None:
    api = LocalApi(host, listen="127.0.0.1:0")
    await api.start()
    try:
        ((addr, port),) = api.bound
        assert addr == "127.0.0.1" and port > 0
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/status") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
    finally:
        await api.stop()
    assert api.bound == []
    await api.stop()  # idempotent


async def test_start_on_busy_port_raises_moenet_error(host: FakeHost) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        api = LocalApi(host, listen=f"127.0.0.1:{port}")
        with pytest.raises(MoenetError, match=rf"cannot listen on 127\.0\.0\.1:{port}: address in use"):
            await api.start()
        assert api.bound == []


def test_constructor_validates_listen_and_token(host: FakeHost) -> None:
    with pytest.raises(ValueError, match="listen address"):
        LocalApi(host, listen="nonsense")
    with pytest.raises(ValueError, match="token"):
        LocalApi(host, token="two words")
    LocalApi(host, token="")  # empty means unset


# ------------------------------------------------------------------ parse_listen


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:24368", ("127.0.0.1", 24368)),
        ("[::1]:24368", ("::1", 24368)),
        ("[::]:80", ("::", 80)),
        (":24368", (None, 24368)),
        ("localhost:80", ("localhost", 80)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("node1.dn42:65535", ("node1.dn42", 65535)),
        (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
    ],
)
def test_parse_listen_valid(value: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("24368", "missing port"),
        ("127.0.0.1", "missing port"),
        ("::1:80", "brackets"),
        ("[::1]", r"\[ipv6\]:port"),
        ("[::1:80", r"\[ipv6\]:port"),
        ("[nothost]:80", "not an IPv6 address"),
        ("127.0.0.1:65536", "0 to 65535"),
        ("127.0.0.1:-1", "0 to 65535"),
        ("127.0.0.1:+80", "0 to 65535"),
        ("127.0.0.1:http", "0 to 65535"),
        ("127.0.0.1:", "0 to 65535"),
        ("bad host:80", "not a host name"),
    ],
)
def test_parse_listen_invalid(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_listen(value)
