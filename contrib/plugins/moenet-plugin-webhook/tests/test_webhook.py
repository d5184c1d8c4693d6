"""The webhook plugin inside a real agent core (moenet_core.testing's harness),
posting to a local aiohttp receiver."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import attrs
import pytest
from aiohttp import web
from moenet_core import SessionStatus, SessionStatusEvent
from moenet_core.config import structure
from moenet_core.testing import AgentHarness, FakeControlPlane, ManualClock

from moenet_webhook import WebhookConfig, WebhookPlugin

SECRET = "s3cret-webhook-value"


def node_config(cp: FakeControlPlane, **webhook: Any) -> dict[str, Any]:
    return {
        "node": {"name": "de-fra1"},
        "controlPlane": {"url": cp.url, "token": "test-token"},
        **({"webhook": webhook} if webhook else {}),
    }


def session_event(old: SessionStatus | None = SessionStatus.QUEUED_FOR_SETUP) -> SessionStatusEvent:
    return SessionStatusEvent(
        uuid="u-1",
        name="AS4242420001",
        asn=4242420001,
        old=old,
        new=SessionStatus.ACTIVE,
        interface="dn42_01",
    )


def webhook_record(h: AgentHarness) -> dict[str, Any]:
    return next(p for p in h.agent.status()["plugins"] if p["name"] == "webhook")


async def test_session_and_maintenance_are_posted_in_order_with_the_secret(
    agent_harness, fake_cp, receiver, manual_clock: ManualClock, logs
):
    cfg = node_config(fake_cp, url=receiver.url, secretHeader="X-Hook-Token", secret=SECRET)
    receiver.hold = asyncio.Event()  # the receiver holds its answers: the hooks must not wait for them
    async with agent_harness(cfg, plugins=[("webhook", WebhookPlugin())], clock=manual_clock) as h:
        h.agent.context("sessions").emit_session_status(session_event())
        await h.agent.set_maintenance(True, "kernel upgrade")
        await receiver.wait_for(1)
        receiver.hold.set()
        first, second = await receiver.wait_for(2)
    assert first == {
        "event": "session",
        "node": "de-fra1",
        "time": manual_clock.time(),
        "uuid": "u-1",
        "name": "AS4242420001",
        "asn": 4242420001,
        "old": "QUEUED_FOR_SETUP",
        "new": "ACTIVE",
        "error": None,
        "interface": "dn42_01",
        "removed": False,
    }
    assert second == {
        "event": "maintenance",
        "node": "de-fra1",
        "time": manual_clock.time(),
        "enabled": True,
        "since": manual_clock.time(),
        "reason": "kernel upgrade",
    }
    assert [headers["X-Hook-Token"] for headers, _ in receiver.posts] == [SECRET, SECRET]
    assert receiver.posts[0][0]["Content-Type"] == "application/json"
    assert SECRET not in "\n".join(logs)


async def test_only_the_configured_events_are_sent(agent_harness, fake_cp, receiver):
    cfg = node_config(fake_cp, url=receiver.url, events=["maintenance"])
    async with agent_harness(cfg, plugins=[("webhook", WebhookPlugin())]) as h:
        h.agent.context("sessions").emit_session_status(session_event(old=None))
        await h.agent.set_maintenance(True, "")
        await h.agent.set_maintenance(False, "")
        await receiver.wait_for(2)
    # Shutdown drained the queue: whatever the plugin meant to send has arrived.
    assert [(b["event"], b["enabled"]) for _, b in receiver.posts] == [
        ("maintenance", True),
        ("maintenance", False),
    ]
    assert "X-Webhook-Secret" not in receiver.posts[0][0]  # no secret configured, no header


async def test_a_receiver_answering_500_is_logged_and_the_next_event_still_goes_out(
    agent_harness, fake_cp, receiver, logs
):
    receiver.statuses = [500]
    cfg = node_config(fake_cp, url=receiver.url, secret=SECRET)
    async with agent_harness(cfg, plugins=[("webhook", WebhookPlugin())]) as h:
        await h.agent.set_maintenance(True, "a")
        await h.agent.set_maintenance(False, "b")
        _, second = await receiver.wait_for(2)
        record = webhook_record(h)
    assert second["reason"] == "b"
    assert [line for line in logs if "HTTP 500" in line] == [
        f"WARNING webhook maintenance to {receiver.url.split('/')[2]}: HTTP 500 {{'plugin': 'webhook'}}"
    ]
    assert (record["status"], record["runtimeErrors"]) == ("active", 0)
    assert SECRET not in "\n".join(logs)


async def test_a_redirect_is_not_followed_so_the_secret_stays_with_the_configured_host(
    agent_harness, fake_cp, receiver, aiohttp_server, logs
):
    """The configured host answers 307 to another host (the receiver, standing in
    for an attacker's): no request with the secret goes there, and the log says why."""
    hits: list[dict[str, str]] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(dict(request.headers))
        raise web.HTTPTemporaryRedirect(receiver.url)

    app = web.Application()
    app.router.add_post("/hook", redirect)
    origin = await aiohttp_server(app, host="127.0.0.2")
    cfg = node_config(fake_cp, url=str(origin.make_url("/hook")), secret=SECRET)
    async with agent_harness(cfg, plugins=[("webhook", WebhookPlugin())]) as h:
        await h.agent.set_maintenance(True, "x")
    # Leaving the harness ran moenet_shutdown, which waits for the queue.
    assert len(hits) == 1 and hits[0]["X-Webhook-Secret"] == SECRET  # the configured host got it
    assert receiver.posts == []  # ... and nobody else did
    [line] = [line for line in logs if "redirect" in line]
    assert line.startswith(
        f"WARNING webhook maintenance to 127.0.0.2:{origin.port}: HTTP 307 redirect not followed"
    )
    assert SECRET not in "\n".join(logs)


async def test_a_receiver_that_is_down_is_logged_and_the_agent_keeps_running(agent_harness, fake_cp, logs):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = node_config(fake_cp, url=f"http://127.0.0.1:{port}/hook", secret=SECRET, timeout=5)
    async with agent_harness(cfg, plugins=[("webhook", WebhookPlugin())]) as h:
        assert (await h.agent.set_maintenance(True, "x"))["enabled"] is True
        status = h.agent.status()
    # Leaving the harness ran moenet_shutdown, which waits for the queue.
    [failed] = [line for line in logs if "failed" in line and "webhook" in line]
    assert failed.startswith(f"WARNING webhook maintenance to 127.0.0.1:{port} failed: ClientConnectorError")
    assert status["maintenance"]["enabled"] is True
    assert next(p for p in status["plugins"] if p["name"] == "webhook")["status"] == "active"
    assert SECRET not in "\n".join(logs)


async def test_a_full_queue_drops_the_event_and_says_so(agent_harness, fake_cp, receiver, logs):
    plugin = WebhookPlugin()
    plugin.queue = asyncio.Queue(1)
    async with agent_harness(node_config(fake_cp, url=receiver.url), plugins=[("webhook", plugin)]) as h:
        await h.agent.set_maintenance(True, "queued")
        await h.agent.set_maintenance(False, "dropped")  # the first is still in the queue
        await receiver.wait_for(1)
    assert [body["reason"] for _, body in receiver.posts] == ["queued"]
    assert "WARNING webhook queue full; maintenance event dropped {'plugin': 'webhook'}" in logs


async def test_maintenance_restored_at_start_is_posted(agent_harness, fake_cp, receiver, tmp_path):
    # The restored event is broadcast before moenet_startup; it waits in the queue.
    cfg = node_config(fake_cp, url=receiver.url)
    async with agent_harness(cfg, plugins=[("webhook", WebhookPlugin())]) as h:
        await h.agent.set_maintenance(True, "before the restart")
    async with agent_harness(cfg, plugins=[("webhook", WebhookPlugin())]):
        _, restored = await receiver.wait_for(2)
    assert (restored["event"], restored["enabled"], restored["reason"]) == ("maintenance", True, "restored")


async def test_a_session_status_restored_at_start_is_not_a_change(agent_harness, fake_cp, receiver):
    cfg = node_config(fake_cp, url=receiver.url)
    async with agent_harness(cfg, plugins=[("webhook", WebhookPlugin())]) as h:
        ctx = h.agent.context("sessions")
        ctx.emit_session_status(attrs.evolve(session_event(old=None), restored=True))
        ctx.emit_session_status(session_event())
        [only] = await receiver.wait_for(1)
    assert (only["event"], only["old"], only["new"]) == ("session", "QUEUED_FOR_SETUP", "ACTIVE")
    assert "restored" not in only


async def test_a_missing_url_is_a_config_error_naming_the_field(agent_harness, fake_cp, receiver):
    async with agent_harness(node_config(fake_cp), plugins=[("webhook", WebhookPlugin())]) as h:
        await h.agent.set_maintenance(True, "")
        record = webhook_record(h)
    assert (record["status"], record["error"]) == ("failed", "config: webhook.url: required")
    assert receiver.posts == []


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({}, "webhook.url: required"),
        ({"url": "ftp://example.net/x"}, "webhook.url: must be an http:// or https:// URL"),
        ({"url": "https://"}, "webhook.url: must be an http:// or https:// URL"),
        ({"url": "https://x", "events": ["session", "bgp"]}, "webhook.events: unknown event(s) bgp;"),
        ({"url": "https://x", "timeout": 0}, "webhook.timeout: must be greater than 0"),
        ({"url": "https://x", "secretHeader": "X Bad"}, "webhook.secretHeader: not a header name"),
        ({"url": "https://x", "secret": "a\r\nb"}, "webhook.secret: unprintable"),
        ({"url": "https://x", "timeout": "5"}, "webhook.timeout:"),
    ],
)
def test_config_checks(section: dict[str, Any], problem: str):
    obj, problems = structure(WebhookConfig, section, "webhook", [])
    assert obj is None
    [only] = problems
    assert only.startswith(problem)


def test_config_defaults_and_the_secret_stays_out_of_repr():
    obj, problems = structure(
        WebhookConfig, {"url": "https://h.example/x?k=1", "secret": SECRET}, "webhook", []
    )
    assert problems == []
    assert obj is not None
    assert (obj.secret_header, obj.events, obj.timeout) == (
        "X-Webhook-Secret",
        ["session", "maintenance"],
        10.0,
    )
    assert SECRET not in repr(obj)
