"""moenet-plugin-webhook: POST JSON when a session changes status or maintenance starts or stops.

The hooks only put the event on a bounded queue; one task, started at
``moenet_startup``, posts the events in order. A failed delivery is logged and
dropped (no retries); nothing it does can break the agent. At ``moenet_shutdown``
the queue gets ``webhook.timeout`` seconds to drain.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import attrs
from moenet_core import ConfigSection, MaintenanceEvent, SessionStatusEvent, hookimpl
from moenet_core.config import check, positive

if TYPE_CHECKING:
    from moenet_core import PluginContext

NAME = "webhook"
EVENTS = ("session", "maintenance")
QUEUE_SIZE = 1000
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name


def _url(v: str) -> str | None:
    u = urlsplit(v)
    return None if u.scheme in ("http", "https") and u.hostname else "must be an http:// or https:// URL"


def _events(v: list[str]) -> str | None:
    bad = sorted(set(v) - set(EVENTS))
    return f"unknown event(s) {', '.join(bad)}; choose from {', '.join(EVENTS)}" if bad else None


@attrs.define(kw_only=True)
class WebhookConfig:
    """Section ``webhook``."""

    url: str = attrs.field(metadata=check(_url))
    """Where to POST; required. Redirects are not followed (the secret would go
    along), so name the final URL."""
    secret_header: str = attrs.field(
        default="X-Webhook-Secret", metadata=check(lambda v: None if _TOKEN.match(v) else "not a header name")
    )
    secret: str | None = attrs.field(
        default=None,
        repr=False,
        metadata=check(lambda v: None if not v or v.isprintable() else "unprintable"),
    )
    """Sent as ``secretHeader: secret`` with every POST; never logged."""
    events: list[str] = attrs.field(factory=lambda: list(EVENTS), metadata=check(_events))
    timeout: float = attrs.field(default=10.0, metadata=check(positive))
    """Seconds for one POST, and for draining the queue at shutdown."""


class WebhookPlugin:
    """The plugin (entry point ``moenet_webhook:plugin``): one instance per agent."""

    def __init__(self) -> None:
        self.ctx: PluginContext | None = None
        self.queue: asyncio.Queue[tuple[str, dict[str, Any], float | None]] = asyncio.Queue(QUEUE_SIZE)
        self.worker: asyncio.Task[None] | None = None

    @hookimpl
    def moenet_config_sections(self) -> list[ConfigSection]:
        # Not ``required``: a missing section is structured from {} and says ``webhook.url: required``.
        return [ConfigSection(name=NAME, type=WebhookConfig, description="where and what to POST")]

    @hookimpl
    def moenet_session_status_changed(self, event: SessionStatusEvent) -> None:
        if getattr(event, "restored", False):  # (cores before 0.2 have no such field)
            return  # a status re-announced at start is not a change
        fields = {k: v for k, v in attrs.asdict(event).items() if k != "restored"}
        old = event.old.name if event.old is not None else None
        self._enqueue("session", {**fields, "old": old, "new": event.new.name})

    @hookimpl
    def moenet_maintenance_changed(self, event: MaintenanceEvent) -> None:
        self._enqueue("maintenance", attrs.asdict(event))

    def _enqueue(self, kind: str, fields: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait((kind, fields, self.ctx.clock.time() if self.ctx else None))
        except asyncio.QueueFull:
            if self.ctx:
                self.ctx.log.warning("webhook queue full; {} event dropped", kind)

    @hookimpl
    def moenet_startup(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        ctx.add_secret(ctx.section.secret)  # masked even if a library were to log it
        self.worker = asyncio.get_running_loop().create_task(self._deliver(ctx))

    @hookimpl
    async def moenet_shutdown(self) -> None:
        if self.ctx is None or self.worker is None:
            return
        try:
            await asyncio.wait_for(self.queue.join(), self.ctx.section.timeout)
        except TimeoutError:
            self.ctx.log.warning("shutting down: {} webhook(s) left undelivered", self.queue.qsize())
        self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)

    async def _deliver(self, ctx: PluginContext) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                kind, fields, when = await self.queue.get()
                try:
                    cfg: WebhookConfig = ctx.section  # read per event: a reload applies at once
                    if kind in cfg.events:
                        body = {"event": kind, "node": ctx.node, "time": when or ctx.clock.time(), **fields}
                        await self._post(ctx, http, cfg, body)
                finally:
                    self.queue.task_done()

    async def _post(
        self, ctx: PluginContext, http: aiohttp.ClientSession, cfg: WebhookConfig, body: dict[str, Any]
    ) -> None:
        headers = {}
        if cfg.secret:
            ctx.add_secret(cfg.secret)  # again: a reload may have changed it
            headers[cfg.secret_header] = cfg.secret
        where = urlsplit(cfg.url).netloc.rpartition("@")[2]  # no path or password: they may be secret
        try:
            timeout = aiohttp.ClientTimeout(total=cfg.timeout)
            # Redirects are not followed: the secret header would go along to wherever
            # the Location points (aiohttp drops only Authorization on a cross-origin hop).
            async with http.post(
                cfg.url, json=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if 300 <= resp.status < 400:
                    ctx.log.warning(
                        "webhook {} to {}: HTTP {} redirect not followed (set webhook.url to the final URL)",
                        body["event"],
                        where,
                        resp.status,
                    )
                elif resp.status >= 300:
                    ctx.log.warning("webhook {} to {}: HTTP {}", body["event"], where, resp.status)
        except Exception as exc:
            ctx.log.warning("webhook {} to {} failed: {}: {}", body["event"], where, type(exc).__name__, exc)


plugin = WebhookPlugin()
