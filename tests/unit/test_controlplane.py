"""HttpControlPlane against a real aiohttp test server, FileControlPlane against
a temporary file. Every wait runs on a ManualClock: the tests advance it past
each backoff instead of sleeping."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from loguru import logger

from moenet_core import controlplane
from moenet_core.breaker import CircuitBreaker
from moenet_core.controlplane import (
    UNCHANGED,
    EncodedJson,
    FileControlPlane,
    HttpControlPlane,
    encode_body,
    parse_retry_after,
    validate_resource,
)
from moenet_core.errors import CircuitOpenError, ControlPlaneRejected, ControlPlaneUnavailable
from moenet_core.metrics import AgentMetrics
from moenet_core.retry import RetryPolicy
from moenet_core.state import StateStore
from moenet_core.testing import ManualClock

T = TypeVar("T")

TOKEN = "s3cret-t0ken"
REQUEST_TIMEOUT = 1000.0  # distinct from any backoff, so the two kinds of sleep can be told apart


class TrackingClock(ManualClock):
    """A ManualClock that remembers the backoff sleeps (every sleep except the
    per-attempt request deadline)."""

    def __init__(self, request_timeout: float = REQUEST_TIMEOUT) -> None:
        super().__init__()
        self.request_timeout = request_timeout
        self.backoffs: list[float] = []

    async def sleep(self, seconds: float) -> None:
        if seconds != self.request_timeout:
            self.backoffs.append(seconds)
        await super().sleep(seconds)


async def until(predicate: Callable[[], bool], rounds: int = 200_000) -> None:
    """Yield to the loop (no time passes) until ``predicate`` holds; real socket
    I/O with the test server makes progress in between."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def _progressed(task: asyncio.Future[Any], clock: TrackingClock, handled: int) -> Callable[[], bool]:
    return lambda: task.done() or len(clock.backoffs) > handled


async def drive(clock: TrackingClock, aw: Awaitable[T]) -> T:
    """Run ``aw`` to completion, advancing the clock over each backoff."""
    task = asyncio.ensure_future(aw)
    handled = len(clock.backoffs)
    while True:
        await until(_progressed(task, clock, handled))
        if task.done():
            return task.result()
        await clock.advance(clock.backoffs[handled])
        handled += 1


@attrs.define
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


Reply = Callable[[], Awaitable[web.StreamResponse]]


def reply(
    status: int = 200, body: Any = None, *, text: str | None = None, headers: dict[str, str] | None = None
) -> Reply:
    async def make() -> web.StreamResponse:
        if text is not None:
            return web.Response(status=status, text=text, headers=headers)
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return make


class FakeCP:
    """Answers with the scripted replies in order (the last one repeats) and
    records every request it saw."""

    def __init__(self) -> None:
        self.script: list[Reply] = [reply(200, {"code": 0, "message": "ok", "data": {}})]
        self.seen: list[Seen] = []

    def answer(self, *replies: Reply) -> None:
        self.script = list(replies)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.raw_path, dict(request.headers), await request.read()))
        make = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return await make()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeCP, TestServer]]:
    cp = FakeCP()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", cp.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield cp, server
    finally:
        await server.close()


@pytest.fixture
def clock() -> TrackingClock:
    return TrackingClock()


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics()


@pytest.fixture
async def make_cp(
    fake: tuple[FakeCP, TestServer], clock: TrackingClock, metrics: AgentMetrics
) -> AsyncIterator[Callable[..., HttpControlPlane]]:
    made: list[HttpControlPlane] = []

    def make(**kwargs: Any) -> HttpControlPlane:
        options: dict[str, Any] = {
            "base_url": str(fake[1].make_url("/api/v1/")),
            "node": "node-1",
            "token": TOKEN,
            "clock": clock,
            "metrics": metrics,
            "request_timeout": REQUEST_TIMEOUT,
            "rng": random.Random(1),
        }
        options.update(kwargs)
        cp = HttpControlPlane(**options)
        made.append(cp)
        return cp

    yield make
    for cp in made:
        await cp.aclose()


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def requests_total(metrics: AgentMetrics, resource: str, method: str, result: str) -> float:
    return sample(metrics, "moenet_cp_requests_total", resource=resource, method=method, result=result)


# -- bodies and envelopes ----------------------------------------------------


async def test_envelope_code_zero_returns_data(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(200, {"code": 0, "message": "ok", "data": [{"uuid": "a"}]}))
    assert await make_cp().fetch("sessions") == [{"uuid": "a"}]


async def test_fetch_digest_tells_an_unchanged_answer(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    """The digest is of the body: the same bytes give the same digest, any other
    answer another one (what lets a reconciler skip a parse without keeping the answer)."""
    cp_server, _ = fake
    cp = make_cp()
    cp_server.answer(reply(200, {"code": 0, "data": [{"uuid": "a"}]}))
    first = await cp.fetch_digest("sessions")
    again = await cp.fetch_digest("sessions")
    cp_server.answer(reply(200, {"code": 0, "data": [{"uuid": "b"}]}))
    other = await cp.fetch_digest("sessions")
    assert first[0] == again[0] == [{"uuid": "a"}] and other[0] == [{"uuid": "b"}]
    assert first[1] == again[1] and other[1] != first[1] and len(first[1]) == 16


async def test_a_known_digest_is_answered_unchanged_without_a_decode(
    fake: tuple[FakeCP, TestServer], make_cp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp_server, _ = fake
    cp = make_cp()
    cp_server.answer(reply(200, {"code": 0, "data": [{"uuid": "a"}]}))
    _, digest = await cp.fetch_digest("sessions")
    decodes: list[bytes] = []
    real = controlplane.json_loads
    monkeypatch.setattr(controlplane, "json_loads", lambda raw: decodes.append(raw) or real(raw))
    assert await cp.fetch_digest("sessions", known=digest) == (UNCHANGED, digest)
    assert decodes == [] and len(cp_server.seen) == 2  # asked the CP, did not decode
    cp_server.answer(reply(200, {"code": 0, "data": [{"uuid": "b"}]}))
    value, other = await cp.fetch_digest("sessions", known=digest)
    assert value == [{"uuid": "b"}] and other != digest and len(decodes) == 1


async def test_envelope_nonzero_code_is_rejected(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(200, {"code": 4004, "message": "node unknown", "data": None}))
    with pytest.raises(ControlPlaneRejected, match="node unknown") as info:
        await make_cp().fetch("sessions")
    assert info.value.code == 4004
    assert len(cp_server.seen) == 1  # not retried


async def test_envelope_with_message_only(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(200, {"code": 0, "message": "accepted"}))
    assert await make_cp().send("modify", {"uuid": "x", "status": 1}) is None


@pytest.mark.parametrize(
    "payload",
    [
        {"asn": 4242420998, "prefixes": ["172.20.0.0/24"]},
        [1, 2, 3],
        {"code": "0", "data": 1},  # code not an integer: not an envelope
        {"code": 0},  # neither data nor message: not an envelope
        {"code": True, "data": 1},  # a bool is not an integer code
    ],
)
async def test_bare_json_returned_as_is(fake: tuple[FakeCP, TestServer], make_cp: Any, payload: Any) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(200, payload))
    assert await make_cp().fetch("bird-config") == payload


async def test_non_json_body_is_rejected(
    fake: tuple[FakeCP, TestServer], make_cp: Any, metrics: AgentMetrics
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(200, text="<html>maintenance</html>"))
    with pytest.raises(ControlPlaneRejected, match="unparseable"):
        await make_cp().fetch("sessions")
    assert requests_total(metrics, "sessions", "GET", "rejected") == 1


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_empty_2xx_is_none(fake: tuple[FakeCP, TestServer], make_cp: Any, status: int) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(status))
    assert await make_cp().send("heartbeat", {"version": "0.1.0"}) is None


async def test_any_2xx_with_json_is_success(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(201, {"code": 0, "data": {"id": 7}}))
    assert await make_cp().send("report", {"sessions": []}) == {"id": 7}


# -- request shape -----------------------------------------------------------


async def test_headers_and_post_body(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    await make_cp().send("modify", {"uuid": "u-1", "status": 2, "lastError": "boom"})
    seen = cp_server.seen[0]
    assert seen.method == "POST"
    assert seen.raw_path == "/api/v1/agent/node-1/modify"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"].startswith("moenet-agent/")
    assert "aiohttp/" in seen.headers["User-Agent"]
    assert json.loads(seen.body) == {"uuid": "u-1", "status": 2, "lastError": "boom"}


async def test_an_encoded_body_is_posted_byte_for_byte(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    data = b'{"b":[1,2],"a":"\\u00e9"}'
    await make_cp().send("report", EncodedJson(data))
    seen = fake[0].seen[0]
    assert seen.body == data
    assert seen.headers["Content-Type"] == "application/json"


def test_an_encoded_body_reads_as_the_mapping_it_encodes() -> None:
    body = EncodedJson(b'{"node_id":"n","sessions":[{"uuid":"u"}]}')
    assert dict(body) == {"node_id": "n", "sessions": [{"uuid": "u"}]}
    assert body["sessions"] == [{"uuid": "u"}] and len(body) == 2
    assert encode_body(body) is body.data
    assert json.loads(encode_body({"x": 1})) == {"x": 1}
    with pytest.raises(ValueError, match="JSON object"):
        EncodedJson(b'[{"x": 1}]')


async def test_get_has_no_body_or_content_type(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    await make_cp().fetch("mesh")
    seen = cp_server.seen[0]
    assert seen.method == "GET"
    assert seen.body == b""
    assert "Content-Type" not in seen.headers


async def test_no_token_no_authorization(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    await make_cp(token=None, user_agent="custom/1").fetch("config")
    assert "Authorization" not in cp_server.seen[0].headers
    assert cp_server.seen[0].headers["User-Agent"] == "custom/1"


async def test_node_name_is_escaped(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    await make_cp(node="hk/1 edge-ü").fetch("mesh/status")
    assert cp_server.seen[0].raw_path == "/api/v1/agent/hk%2F1%20edge-%C3%BC/mesh/status"


async def test_trailing_slashes_stripped(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, server = fake
    await make_cp(base_url=str(server.make_url("/"))).fetch("config")
    await make_cp(base_url=str(server.make_url("/prefix///"))).fetch("config")
    assert [s.raw_path for s in cp_server.seen] == ["/agent/node-1/config", "/prefix/agent/node-1/config"]


@pytest.mark.parametrize(
    "resource", ["", "../config", "a//b", "/sessions", "sessions/", "a b", "sessions?x=1", "ü", "a/./b"]
)
async def test_invalid_resource_rejected_before_any_request(
    fake: tuple[FakeCP, TestServer], make_cp: Any, resource: str
) -> None:
    cp_server, _ = fake
    with pytest.raises(ValueError):
        await make_cp().fetch(resource)
    assert cp_server.seen == []


def test_validate_resource_accepts_nested() -> None:
    assert validate_resource("mesh/status") == "mesh/status"
    assert validate_resource("bird-config") == "bird-config"


@pytest.mark.parametrize("url", ["cp.example", "ftp://cp.example", "http://", ""])
def test_invalid_base_url(url: str) -> None:
    with pytest.raises(ValueError):
        HttpControlPlane(base_url=url, node="n", token=None, clock=ManualClock())


# -- retries -------------------------------------------------------------------


async def test_500_then_200_retries_once(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock, metrics: AgentMetrics
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(500, text="oops"), reply(200, {"code": 0, "data": {"ok": True}}))
    start = clock.monotonic()
    assert await drive(clock, make_cp().fetch("sessions")) == {"ok": True}
    assert len(cp_server.seen) == 2
    assert 0.9 <= clock.monotonic() - start <= 1.1
    assert sample(metrics, "moenet_cp_retries_total", resource="sessions") == 1
    assert requests_total(metrics, "sessions", "GET", "ok") == 1
    assert sample(metrics, "moenet_cp_request_duration_seconds_count", resource="sessions") == 1
    assert 0.9 <= sample(metrics, "moenet_cp_request_duration_seconds_sum", resource="sessions") <= 1.1


async def test_429_retry_after_seconds_is_honoured(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(429, headers={"Retry-After": "5"}), reply(200, {"code": 0, "data": 1}))
    start = clock.monotonic()
    assert await drive(clock, make_cp().fetch("sessions")) == 1
    assert clock.backoffs == [5.0]
    assert clock.monotonic() - start >= 5.0
    assert len(cp_server.seen) == 2


async def test_503_retry_after_date_and_cap(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock
) -> None:
    cp_server, _ = fake
    far = "Wed, 01 Jan 2200 00:00:00 GMT"  # decades away: capped
    cp_server.answer(reply(503, headers={"Retry-After": far}), reply(200, {"code": 0, "data": 1}))
    assert await drive(clock, make_cp().fetch("sessions")) == 1
    assert clock.backoffs == [300.0]


async def test_smaller_retry_after_does_not_shorten_backoff(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(503, headers={"Retry-After": "0"}), reply(200, {"code": 0, "data": 1}))
    await drive(clock, make_cp(retry=RetryPolicy(jitter=0)).fetch("sessions"))
    assert clock.backoffs == [1.0]


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("5", now) == 5.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == pytest.approx(20.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-3", now) is None


async def test_404_is_not_retried(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock, metrics: AgentMetrics
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(404, {"code": 404, "message": "no such node"}))
    with pytest.raises(ControlPlaneRejected, match="HTTP 404: no such node") as info:
        await drive(clock, make_cp().fetch("sessions"))
    assert info.value.status == 404
    assert len(cp_server.seen) == 1
    assert clock.backoffs == []
    assert requests_total(metrics, "sessions", "GET", "rejected") == 1


async def test_4xx_plain_text_excerpt(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(403, text="forbidden\n" + "x" * 1000))
    with pytest.raises(ControlPlaneRejected) as info:
        await make_cp().fetch("config")
    assert info.value.status == 403
    assert "forbidden" in str(info.value)
    assert len(str(info.value)) < 300


async def test_redirects_are_not_followed(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    """Following a redirect could carry the bearer token to another host."""
    cp_server, _ = fake
    cp_server.answer(reply(302, headers={"Location": "http://elsewhere.invalid/agent/node-1/sessions"}))
    with pytest.raises(ControlPlaneRejected, match=r"redirected to http://elsewhere\.invalid") as info:
        await make_cp().fetch("sessions")
    assert info.value.status == 302
    assert len(cp_server.seen) == 1


async def test_all_503_is_unavailable_after_four_attempts(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock, metrics: AgentMetrics
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(503, text="down for maintenance"))
    with pytest.raises(ControlPlaneUnavailable, match="HTTP 503") as info:
        await drive(clock, make_cp().fetch("sessions"))
    assert not isinstance(info.value, CircuitOpenError)
    assert len(cp_server.seen) == 4
    assert len(clock.backoffs) == 3
    for got, base in zip(clock.backoffs, [1.0, 2.0, 4.0], strict=True):
        assert base * 0.9 <= got <= base * 1.1
    assert sample(metrics, "moenet_cp_retries_total", resource="sessions") == 3
    assert requests_total(metrics, "sessions", "GET", "unavailable") == 1


async def test_connection_refused_is_unavailable(clock: TrackingClock, metrics: AgentMetrics) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cp = HttpControlPlane(
        base_url=f"http://127.0.0.1:{port}",
        node="n",
        token=TOKEN,
        clock=clock,
        metrics=metrics,
        request_timeout=REQUEST_TIMEOUT,
    )
    try:
        with pytest.raises(ControlPlaneUnavailable, match="cannot connect") as info:
            await drive(clock, cp.fetch("sessions"))
    finally:
        await cp.aclose()
    assert TOKEN not in str(info.value)
    assert len(clock.backoffs) == 3
    assert requests_total(metrics, "sessions", "GET", "unavailable") == 1


async def test_attempt_timeout_is_retried(fake: tuple[FakeCP, TestServer], make_cp: Any) -> None:
    # The per-attempt deadline bounds real I/O, so it is real time: a short one here.
    cp_server, _ = fake
    release = asyncio.Event()

    async def hang() -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    cp_server.answer(hang, reply(200, {"code": 0, "data": "late but fine"}))
    clock = TrackingClock()
    cp = make_cp(clock=clock, request_timeout=0.2)
    task = asyncio.create_task(cp.fetch("sessions"))
    await asyncio.wait_for(clock.wait_sleeping(1), 10)  # the hung attempt timed out; backoff began
    await clock.advance(clock.backoffs[0])
    assert await asyncio.wait_for(task, 10) == "late but fine"
    assert len(cp_server.seen) == 2
    release.set()


async def test_cancellation_during_backoff_is_prompt(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock, metrics: AgentMetrics
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(503))
    cp = make_cp()
    task = asyncio.create_task(cp.fetch("sessions"))
    await until(lambda: len(clock.backoffs) == 1)
    before = clock.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.monotonic() == before  # no time had to pass
    assert clock.sleepers == 0
    assert len(cp_server.seen) == 1
    # Cancellation is not a CP outcome.
    for result in ("ok", "rejected", "unavailable", "breaker_open"):
        assert requests_total(metrics, "sessions", "GET", result) == 0


async def test_cancellation_during_request_releases_breaker(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock
) -> None:
    cp_server, _ = fake
    release = asyncio.Event()

    async def hang() -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    cp_server.answer(hang)
    breaker = CircuitBreaker(clock=clock)
    for _ in range(5):
        breaker.record_failure()
    await clock.advance(30)
    assert breaker.state == "half_open"
    cp = make_cp(breaker=breaker)
    task = asyncio.create_task(cp.fetch("sessions"))
    await until(lambda: len(cp_server.seen) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert clock.sleepers == 0
    # The trial slot was released without a verdict.
    assert breaker.state == "half_open"
    assert breaker.half_open_successes == 0
    breaker.release(breaker.before_call())


# -- breaker -------------------------------------------------------------------


async def test_breaker_open_refuses_without_request(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock, metrics: AgentMetrics
) -> None:
    cp_server, _ = fake
    breaker = CircuitBreaker(clock=clock)
    cp = make_cp(breaker=breaker)
    for _ in range(5):
        breaker.record_failure()
    assert cp.breaker_state == "open"
    assert sample(metrics, "moenet_cp_breaker_state") == 1
    with pytest.raises(CircuitOpenError):
        await cp.fetch("sessions")
    assert cp_server.seen == []
    assert requests_total(metrics, "sessions", "GET", "breaker_open") == 1
    assert sample(metrics, "moenet_cp_request_duration_seconds_count", resource="sessions") == 0


async def test_failed_attempts_open_the_breaker(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock, metrics: AgentMetrics
) -> None:
    """Every failed attempt counts: 4 from the first call and 1 from the second open it."""
    cp_server, _ = fake
    cp_server.answer(reply(502))
    cp = make_cp()
    assert sample(metrics, "moenet_cp_breaker_state") == 0
    with pytest.raises(ControlPlaneUnavailable):
        await drive(clock, cp.fetch("sessions"))
    assert cp.breaker_state == "closed"
    with pytest.raises(CircuitOpenError, match="last error: HTTP 502"):
        await drive(clock, cp.fetch("sessions"))
    assert len(cp_server.seen) == 5
    assert cp.breaker_state == "open"
    assert sample(metrics, "moenet_cp_breaker_state") == 1
    assert requests_total(metrics, "sessions", "GET", "unavailable") == 2
    # Now refused outright, without a request.
    with pytest.raises(CircuitOpenError):
        await cp.send("heartbeat", {})
    assert len(cp_server.seen) == 5
    assert requests_total(metrics, "heartbeat", "POST", "breaker_open") == 1

    # After 30 s, three good trials close it; the gauge follows.
    cp_server.answer(reply(200, {"code": 0, "data": None}))
    await clock.advance(30)
    for _ in range(3):
        await cp.fetch("sessions")
    assert cp.breaker_state == "closed"
    assert sample(metrics, "moenet_cp_breaker_state") == 0


async def test_half_open_trial_failure_reopens_without_retrying(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock, metrics: AgentMetrics
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(500))
    breaker = CircuitBreaker(clock=clock)
    cp = make_cp(breaker=breaker)
    for _ in range(5):
        breaker.record_failure()
    await clock.advance(30)
    with pytest.raises(CircuitOpenError):
        await drive(clock, cp.fetch("sessions"))
    assert len(cp_server.seen) == 1  # the single trial; no retries into an open breaker
    assert clock.backoffs == []
    assert breaker.state == "open"
    assert breaker.retry_after == pytest.approx(30.0)
    assert sample(metrics, "moenet_cp_breaker_state") == 1


async def test_rejections_keep_the_breaker_closed(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(400, {"code": 1, "message": "bad"}))
    cp = make_cp()
    for _ in range(10):
        with pytest.raises(ControlPlaneRejected):
            await cp.fetch("sessions")
    assert cp.breaker_state == "closed"


# -- hygiene -------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(
        lambda m: lines.append(str(m) + json.dumps(m.record["extra"], default=str)), level="DEBUG"
    )
    yield lines
    logger.remove(sink)


async def test_token_never_logged(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock, log_lines: list[str]
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(503), reply(401, text="bad token"), reply(200, {"code": 0, "data": 1}))
    cp = make_cp()
    with pytest.raises(ControlPlaneRejected) as info:
        await drive(clock, cp.fetch("sessions"))
    await cp.fetch("sessions")
    assert log_lines  # something was logged
    assert not any(TOKEN in line for line in log_lines)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(cp)


async def test_session_ownership(fake: tuple[FakeCP, TestServer], clock: TrackingClock) -> None:
    _, server = fake
    async with aiohttp.ClientSession() as session:
        cp = HttpControlPlane(
            base_url=str(server.make_url("/")), node="n", token=None, clock=clock, session=session
        )
        await cp.fetch("config")
        await cp.aclose()
        assert not session.closed  # borrowed: left open
    own = HttpControlPlane(base_url=str(server.make_url("/")), node="n", token=None, clock=clock)
    await own.fetch("config")
    created = own._session
    assert created is not None
    await own.aclose()
    assert created.closed
    await own.aclose()  # idempotent


# -- FileControlPlane ----------------------------------------------------------

DOC = {
    "config": {"id": 1, "name": "node-1"},
    "sessions": [{"uuid": "a", "asn": 4242420001}],
    "mesh": {"peers": []},
    "bird-config": {"configHash": "abc"},
}


@pytest.fixture
def cp_file(tmp_path: Path) -> Path:
    path = tmp_path / "cp.json"
    path.write_text(json.dumps(DOC))
    return path


@pytest.fixture
def state(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


async def test_file_fetch_each_resource(cp_file: Path, state: StateStore) -> None:
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    for resource, value in DOC.items():
        assert await cp.fetch(resource) == value
    assert cp.breaker_state == "closed"


async def test_file_digest_changes_with_the_file(cp_file: Path, state: StateStore) -> None:
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    value, digest = await cp.fetch_digest("sessions")
    assert value == DOC["sessions"] and (await cp.fetch_digest("sessions"))[1] == digest
    assert (await cp.fetch_digest("mesh"))[1] != digest  # per resource
    cp_file.write_text(json.dumps({**DOC, "sessions": []}))
    value, changed = await cp.fetch_digest("sessions")
    assert value == [] and changed != digest
    assert await cp.fetch_digest("sessions", known=changed) == (UNCHANGED, changed)
    assert (await cp.fetch_digest("mesh", known=changed))[0] == DOC["mesh"]  # per resource


async def test_file_missing_resource_is_an_error(cp_file: Path, state: StateStore) -> None:
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    with pytest.raises(ControlPlaneRejected, match=re.escape(f"resource 'rtt' not in {cp_file}")):
        await cp.fetch("rtt")


async def test_file_missing_file(tmp_path: Path, state: StateStore) -> None:
    cp = FileControlPlane(path=tmp_path / "nope.json", node="node-1", state=state)
    with pytest.raises(ControlPlaneRejected, match="does not exist"):
        await cp.fetch("sessions")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
async def test_file_invalid_json(cp_file: Path, state: StateStore, content: str) -> None:
    cp_file.write_text(content)
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    with pytest.raises(ControlPlaneRejected, match=re.escape(str(cp_file))):
        await cp.fetch("sessions")


async def test_file_edit_then_refetch(cp_file: Path, state: StateStore) -> None:
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    assert await cp.fetch("sessions") == DOC["sessions"]
    # Same size, same second: an mtime+size cache would miss this edit.
    cp_file.write_text(json.dumps({**DOC, "sessions": [{"uuid": "b", "asn": 4242420002}]}))
    assert await cp.fetch("sessions") == [{"uuid": "b", "asn": 4242420002}]


async def test_file_fetch_returns_fresh_objects(cp_file: Path, state: StateStore) -> None:
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    first = await cp.fetch("sessions")
    first.clear()
    assert await cp.fetch("sessions") == DOC["sessions"]


def sent(state: StateStore, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in state.path(name).read_text().splitlines()]


async def test_file_sends_recorded(cp_file: Path, state: StateStore, log_lines: list[str]) -> None:
    clock = ManualClock()
    cp = FileControlPlane(path=cp_file, node="node-1", state=state, clock=clock)
    assert await cp.send("modify", {"uuid": "a", "status": 1}) is None
    await clock.advance(5)
    await cp.send("modify", {"uuid": "a", "status": 2})
    await cp.send("mesh/status", {"peers": 3})
    assert sent(state, "sent-modify.jsonl") == [
        {"time": clock.time() - 5, "resource": "modify", "body": {"uuid": "a", "status": 1}},
        {"time": clock.time(), "resource": "modify", "body": {"uuid": "a", "status": 2}},
    ]
    assert sent(state, "sent-mesh_status.jsonl")[0]["body"] == {"peers": 3}
    assert oct(state.path("sent-modify.jsonl").stat().st_mode & 0o777) == "0o600"
    assert any('"status":2' in line and "modify" in line for line in log_lines)


async def test_file_records_an_encoded_body_as_sent(cp_file: Path, state: StateStore) -> None:
    cp = FileControlPlane(path=cp_file, node="node-1", state=state, clock=ManualClock())
    await cp.send("report", EncodedJson(b'{"z":1,"sessions":[{"uuid":"u"}]}'))
    assert sent(state, "sent-report.jsonl")[0]["body"] == {"z": 1, "sessions": [{"uuid": "u"}]}


async def test_file_records_a_large_encoded_body_without_copying_it(cp_file: Path, state: StateStore) -> None:
    """A metric report of 1 000 sessions is about 1 MB: written as it is, not made
    into text, a line and its bytes first (three more copies every minute)."""
    import tracemalloc

    entry = b'{"uuid":"5e55b000-0000-4000-8000-000000000001","state":"up","routes_imported":12},'
    data = b'{"node_id":"n","sessions":[' + entry * 12_000 + b'{"uuid":"last"}]}'  # ~1 MB
    cp = FileControlPlane(path=cp_file, node="node-1", state=state, clock=ManualClock())
    body = EncodedJson(data)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        await cp.send("report", body)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < len(data) // 4, f"sending {len(data)} bytes allocated {peak} bytes at the peak"
    [line] = state.path("sent-report.jsonl").read_bytes().splitlines()
    assert line.startswith(b'{"body":' + data + b',"resource":"report","time":')
    assert len(sent(state, "sent-report.jsonl")[0]["body"]["sessions"]) == 12_001


async def test_file_send_log_is_appended_and_rotated_by_size(
    cp_file: Path, state: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each body is appended (the log is never read back); past the size cap the file
    becomes .1 and the one before that is gone. The old JSON-list log is removed."""
    monkeypatch.setattr(controlplane, "SENT_MAX_BYTES", 300)
    state.write_json("sent-report.json", [{"body": "old"}])
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    for i in range(12):
        await cp.send("report", {"n": i, "pad": "x" * 40})
    current, previous = sent(state, "sent-report.jsonl"), sent(state, "sent-report.jsonl.1")
    assert not state.path("sent-report.json").exists()
    assert [e["body"]["n"] for e in previous + current] == list(range(12))[-len(previous + current) :]
    assert current[-1]["body"]["n"] == 11 and len(previous) >= 2
    for name in ("sent-report.jsonl", "sent-report.jsonl.1"):
        assert state.path(name).stat().st_size <= 300


async def test_file_send_after_a_torn_line(cp_file: Path, state: StateStore) -> None:
    state.write_bytes("sent-modify.jsonl", b'{"time": 1, "resou')
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    await cp.send("modify", {"uuid": "a"})
    lines = state.path("sent-modify.jsonl").read_text().splitlines()
    assert lines[0] == '{"time": 1, "resou' and json.loads(lines[1])["body"] == {"uuid": "a"}


async def test_file_invalid_resource(cp_file: Path, state: StateStore) -> None:
    cp = FileControlPlane(path=cp_file, node="node-1", state=state)
    with pytest.raises(ValueError):
        await cp.fetch("../etc")
    with pytest.raises(ValueError):
        await cp.send("a b", {})


async def test_404_without_api_prefix_hints_at_it(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock
) -> None:
    """A CP URL without ``/api/v1`` (the Go agent appended it itself): the 404 says so."""
    cp_server, server = fake
    base = str(server.make_url("/"))
    cp_server.answer(reply(404, text="404 page not found"))
    with pytest.raises(ControlPlaneRejected) as info:
        await drive(clock, make_cp(base_url=base).fetch("sessions"))
    text = str(info.value)
    assert "HTTP 404: 404 page not found" in text
    assert "the Go agent's CP serves /api/v1/agent/..." in text
    assert f"set controlPlane.url to {base.rstrip('/')}/api/v1?" in text


async def test_404_with_api_prefix_has_no_hint(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock
) -> None:
    cp_server, _ = fake
    cp_server.answer(reply(404, {"code": 404, "message": "no such node"}))
    with pytest.raises(ControlPlaneRejected) as info:
        await drive(clock, make_cp().fetch("sessions"))
    assert "/api/v1" not in str(info.value)
    assert str(info.value).endswith("HTTP 404: no such node")


async def test_other_rejections_have_no_prefix_hint(
    fake: tuple[FakeCP, TestServer], make_cp: Any, clock: TrackingClock
) -> None:
    cp_server, server = fake
    cp_server.answer(reply(403, {"code": 403, "message": "bad token"}))
    with pytest.raises(ControlPlaneRejected) as info:
        await drive(clock, make_cp(base_url=str(server.make_url("/"))).fetch("sessions"))
    assert "api/v1" not in str(info.value)
