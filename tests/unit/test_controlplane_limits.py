"""Limits on what a control plane (or whoever answers in its place) can make the
agent do: response size, JSON nesting, error text, DNS time; plain-http warnings;
bootstrap falling back to its cache instead of crash-looping (issue 14, item 4)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp.abc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from moenet_core.agent import make_control_plane
from moenet_core.bootstrap import CACHE_FILE, fetch_remote_config, load_config
from moenet_core.cli import cmd_validate
from moenet_core.config import build_config, insecure_url_warning, is_loopback_host
from moenet_core.controlplane import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MESSAGE_MAX,
    BoundedResolver,
    HttpControlPlane,
)
from moenet_core.errors import ControlPlaneRejected, ControlPlaneUnavailable
from moenet_core.jsonlimits import MAX_DEPTH, JSONLimitError, loads
from moenet_core.metrics import AgentMetrics
from moenet_core.retry import RetryPolicy
from moenet_core.state import StateStore
from moenet_core.testing import ManualClock

CAP = 256 * 1024
NO_RETRY = RetryPolicy(max_retries=0)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class Server:
    """One route, ``/agent/n/<resource>``, answered by ``handler``; counts hits
    and the bytes a streaming answer managed to write."""

    def __init__(self) -> None:
        self.handler: Callable[[web.Request], Any] = lambda _r: web.json_response({"ok": True})
        self.hits = 0
        self.streamed = 0
        self.stream_done = asyncio.Event()

    async def route(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        result = self.handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, web.StreamResponse)
        return result

    async def endless(self, request: web.Request) -> web.StreamResponse:
        """A chunked body that never ends (until the client goes away)."""
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        chunk = b" " * (64 * 1024)
        try:
            await resp.write(b"[")
            while self.streamed < 512 * 1024 * 1024:
                await resp.write(chunk)
                self.streamed += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.stream_done.set()
        return resp


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, TestServer]]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/agent/n/{resource:.+}", srv.route)
    test_server = TestServer(app)
    await test_server.start_server()
    try:
        yield srv, test_server
    finally:
        await test_server.close()


@pytest.fixture
async def make_cp(server: tuple[Server, TestServer]) -> AsyncIterator[Callable[..., HttpControlPlane]]:
    made: list[HttpControlPlane] = []

    def make(**kwargs: Any) -> HttpControlPlane:
        options: dict[str, Any] = {
            "base_url": str(server[1].make_url("/")),
            "node": "n",
            "token": "tok-123456",
            "clock": ManualClock(),
            "retry": RetryPolicy(max_retries=3),
            "max_response_bytes": CAP,
        }
        options.update(kwargs)
        cp = HttpControlPlane(**options)
        made.append(cp)
        return cp

    yield make
    for cp in made:
        await cp.aclose()


# ------------------------------------------------------------------ size


async def test_default_cap_is_16_mib() -> None:
    cp = HttpControlPlane(base_url="https://cp.example", node="n", token=None, clock=ManualClock())
    assert cp.max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES == 16 * 1024 * 1024
    with pytest.raises(ValueError, match="max_response_bytes"):
        HttpControlPlane(
            base_url="https://cp.example", node="n", token=None, clock=ManualClock(), max_response_bytes=0
        )


async def test_answer_under_the_cap_is_read(server: tuple[Server, TestServer], make_cp: Any) -> None:
    body = {"code": 0, "data": {"pad": "x" * (CAP - 100)}}
    server[0].handler = lambda _r: web.json_response(body)
    assert await make_cp().fetch("sessions") == body["data"]


async def test_declared_length_over_the_cap_is_rejected_once(
    server: tuple[Server, TestServer], make_cp: Any
) -> None:
    server[0].handler = lambda _r: web.Response(
        body=b"[" + b" " * CAP + b"]", content_type="application/json"
    )
    cp = make_cp()
    with pytest.raises(ControlPlaneRejected, match=r"too large.*Content-Length") as info:
        await cp.fetch("sessions")
    assert info.value.status == 200
    assert server[0].hits == 1  # a rejection, not an outage: never retried
    assert cp.breaker_state == "closed"


async def test_endless_body_is_never_read_past_the_cap(
    server: tuple[Server, TestServer], make_cp: Any
) -> None:
    """A chunked body without a length: the client stops at the cap and hangs up,
    so an answer of any size costs at most the cap in memory."""
    server[0].handler = server[0].endless
    started = time.monotonic()
    with pytest.raises(ControlPlaneRejected, match="too large"):
        await make_cp().fetch("config")
    await asyncio.wait_for(server[0].stream_done.wait(), 10)
    assert time.monotonic() - started < 10
    # Far less than the 512 MiB the server would send: what sits in socket buffers, no more.
    assert server[0].streamed < 64 * 1024 * 1024


async def test_compressed_bomb_is_capped_after_decompression(
    server: tuple[Server, TestServer], make_cp: Any
) -> None:
    bomb = gzip.compress(b"[" + b" " * (8 * 1024 * 1024) + b"]")
    assert len(bomb) < CAP  # small on the wire
    server[0].handler = lambda _r: web.Response(
        body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    with pytest.raises(ControlPlaneRejected, match="too large"):
        await make_cp().fetch("config")


async def test_oversize_error_answer_is_still_an_outage(
    server: tuple[Server, TestServer], make_cp: Any
) -> None:
    server[0].handler = lambda _r: web.Response(status=503, body=b"x" * (CAP * 2))
    with pytest.raises(ControlPlaneUnavailable, match="HTTP 503"):
        await make_cp(retry=NO_RETRY).fetch("config")


# ------------------------------------------------------------------ nesting


def test_loads_turns_deep_json_into_a_value_error() -> None:
    with pytest.raises(JSONLimitError):
        loads(nested(100_000))
    with pytest.raises(JSONLimitError):
        loads(nested(MAX_DEPTH + 1))
    assert loads(nested(MAX_DEPTH)) == loads(nested(MAX_DEPTH))
    assert issubclass(JSONLimitError, ValueError)
    with pytest.raises(ValueError):
        loads("9" * 5000)  # Python's int-digit limit: a ValueError too


@pytest.mark.parametrize("depth", [100_000, MAX_DEPTH + 1])
async def test_deep_json_is_a_typed_rejection(
    server: tuple[Server, TestServer], make_cp: Any, depth: int
) -> None:
    server[0].handler = lambda _r: web.Response(body=nested(depth), content_type="application/json")
    with pytest.raises(ControlPlaneRejected, match="nested deeper"):
        await make_cp(max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES).fetch("config")


async def test_deep_json_in_an_error_answer_is_not_a_crash(
    server: tuple[Server, TestServer], make_cp: Any
) -> None:
    server[0].handler = lambda _r: web.Response(status=400, body=nested(100_000))
    with pytest.raises(ControlPlaneRejected, match="HTTP 400"):
        await make_cp().fetch("config")


@pytest.mark.parametrize("status", [200, 403])
async def test_cp_error_message_is_clipped(
    server: tuple[Server, TestServer], make_cp: Any, status: int
) -> None:
    server[0].handler = lambda _r: web.json_response({"code": 7, "message": "m" * 100_000}, status=status)
    with pytest.raises(ControlPlaneRejected) as info:
        await make_cp().fetch("config")
    assert len(str(info.value)) < MESSAGE_MAX + 100


# ------------------------------------------------------------------ DNS


class HangingResolver(aiohttp.abc.AbstractResolver):
    def __init__(self) -> None:
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


async def test_hanging_dns_lookup_is_bounded() -> None:
    resolver = HangingResolver()
    cp = HttpControlPlane(
        base_url="https://cp.invalid",
        node="n",
        token=None,
        clock=ManualClock(),
        retry=NO_RETRY,
        request_timeout=60,
        dns_timeout=0.2,
        resolver=resolver,
    )
    started = time.monotonic()
    try:
        with pytest.raises(
            ControlPlaneUnavailable, match=r"DNS lookup of 'cp.invalid' timed out after 0.2 s"
        ):
            await cp.fetch("config")
    finally:
        await cp.aclose()
    assert time.monotonic() - started < 5
    assert resolver.calls == 1


async def test_dns_timeout_defaults_within_the_request_timeout() -> None:
    short = HttpControlPlane(
        base_url="https://x.example", node="n", token=None, clock=ManualClock(), request_timeout=3
    )
    long = HttpControlPlane(
        base_url="https://x.example", node="n", token=None, clock=ManualClock(), request_timeout=60
    )
    assert short._resolver.timeout == 3 and long._resolver.timeout == 10


async def test_bounded_resolver_passes_answers_through() -> None:
    answers = await BoundedResolver(5).resolve("localhost", 80)
    assert answers and all(a["port"] == 80 for a in answers)
    assert {a["host"] for a in answers} <= {"127.0.0.1", "::1"}


# ------------------------------------------------------------------ bootstrap


def _bootstrap_raw(url: str, state: Path) -> dict[str, Any]:
    return {
        "bootstrap": {"apiUrl": url, "nodeName": "n", "token": "tok-123456"},
        "state": {"directory": str(state)},
        "controlPlane": {"maxResponseBytes": CAP},
    }


CACHED = {"node": {"id": 7}}


@pytest.mark.parametrize("kind", ["deep", "huge", "bug"])
async def test_bootstrap_falls_back_to_its_cache(
    server: tuple[Server, TestServer], tmp_path: Path, kind: str
) -> None:
    srv, test_server = server
    if kind == "deep":
        srv.handler = lambda _r: web.Response(body=nested(100_000), content_type="application/json")
    elif kind == "huge":
        srv.handler = srv.endless
    else:
        srv.handler = lambda _r: web.json_response({"code": 0, "data": {}})
    local, _ = build_config(_bootstrap_raw(str(test_server.make_url("/")), tmp_path), env={})

    def validate(_answer: Any) -> object:
        raise RuntimeError("a bug in validation")

    got = await fetch_remote_config(
        local, clock=ManualClock(), cached=CACHED, validate=validate if kind == "bug" else None
    )
    assert got is CACHED


async def test_load_config_starts_from_the_cache_on_deep_json(
    server: tuple[Server, TestServer], tmp_path: Path
) -> None:
    srv, test_server = server
    srv.handler = lambda _r: web.Response(body=nested(100_000), content_type="application/json")
    state = tmp_path / "state"
    StateStore(state).write_json(CACHE_FILE, CACHED)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_bootstrap_raw(str(test_server.make_url("/")), state)))
    config, _ = await load_config(str(path), env={}, clock=ManualClock())
    assert config.node.id == 7 and config.mode == "bootstrap"


def test_cp_cannot_raise_the_size_cap(tmp_path: Path) -> None:
    raw = _bootstrap_raw("https://cp.example", tmp_path)
    remote = {"controlPlane": {"maxResponseBytes": 10**12, "MAXRESPONSEBYTES": 10**12, "syncInterval": 5}}
    config, _ = build_config(raw, env={}, remote=remote)
    assert config.control_plane.max_response_bytes == CAP
    assert config.control_plane.sync_interval == 5


def test_configured_cap_reaches_the_client(tmp_path: Path) -> None:
    raw = {
        "node": {"name": "n"},
        "controlPlane": {"url": "https://cp.example", "token": "tok-123456", "maxResponseBytes": 4096},
        "state": {"directory": str(tmp_path)},
    }
    config, _ = build_config(raw, env={})
    cp = make_control_plane(config, clock=ManualClock(), metrics=AgentMetrics(), state=StateStore(tmp_path))
    assert isinstance(cp, HttpControlPlane) and cp.max_response_bytes == 4096
    with pytest.raises(Exception, match="maxResponseBytes"):
        build_config({**raw, "controlPlane": {**raw["controlPlane"], "maxResponseBytes": 0}}, env={})


# ------------------------------------------------------------------ plain http


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("cp.localhost", True),
        ("10.0.0.1", False),
        ("cp.example", False),
        ("[2001:db8::1]", False),
        ("localhost.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://10.0.0.1", True),
        ("http://cp.example:8080/api", True),
        ("https://cp.example", False),
        ("http://127.0.0.1:9000", False),
        ("http://[::1]:9000/x", False),
        ("http://localhost", False),
    ],
)
def test_plain_http_to_a_remote_host_is_warned(url: str, warned: bool, tmp_path: Path) -> None:
    assert (insecure_url_warning(url, "k") is not None) is warned
    full = {"node": {"name": "n"}, "controlPlane": {"url": url, "token": "tok-123456"}}
    _, warnings = build_config(full, env={})
    assert any("controlPlane.url: plain http://" in w for w in warnings) is warned
    boot = _bootstrap_raw(url, tmp_path)
    _, warnings = build_config(boot, env={})
    assert any("bootstrap.apiUrl: plain http://" in w for w in warnings) is warned


def test_plain_http_from_the_environment_is_warned() -> None:
    full = {"node": {"name": "n"}, "controlPlane": {"url": "https://cp.example", "token": "tok-123456"}}
    _, warnings = build_config(full, env={"MOENET_CP_URL": "http://cp.example"})
    assert any("plain http://" in w for w in warnings)


def test_validate_warns_about_plain_http(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "node": {"name": "n"},
                "controlPlane": {"url": "http://192.0.2.1", "token": "tok-123456"},
                "state": {"directory": str(tmp_path / "state")},
                "plugins": {"enable": []},
            }
        )
    )
    assert cmd_validate(str(path)) == 0
    out = capsys.readouterr().out
    assert "warning: controlPlane.url: plain http:// to 192.0.2.1" in out


async def test_start_warns_about_plain_http(tmp_path: Path) -> None:
    """``load_config`` gives the warnings ``run`` logs at start."""
    path = tmp_path / "config.json"
    raw = _bootstrap_raw("http://192.0.2.1", tmp_path / "state")
    StateStore(tmp_path / "state").write_json(CACHE_FILE, CACHED)
    path.write_text(json.dumps(raw))
    _, warnings = await load_config(str(path), env={}, clock=ManualClock(), use_cache_only=True)
    assert [w for w in warnings if "plain http://" in w] == [
        insecure_url_warning("http://192.0.2.1", "bootstrap.apiUrl")
    ]
