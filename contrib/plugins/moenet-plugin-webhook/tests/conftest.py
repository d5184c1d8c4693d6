"""Fixtures: moenet_core.testing (fake CP, agent harness, manual clock), a local
webhook receiver and a log capture."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from loguru import logger

pytest_plugins = ["moenet_core.testing"]

if importlib.util.find_spec("moenet_webhook") is None:  # run from a checkout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST, answers ``statuses``
    in turn (then 200), and holds its answers while ``hold`` is set."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], Any]] = []
        self.statuses: list[int] = []
        self.hold: asyncio.Event | None = None
        self.url = ""
        self._changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        async with self._changed:
            self.posts.append((dict(request.headers), await request.json()))
            self._changed.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def wait_for(self, count: int) -> list[Any]:
        """The bodies, once ``count`` POSTs have arrived (woken by each POST)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.posts) >= count), 10)
        return [body for _, body in self.posts]


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Any]) -> Receiver:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rec.url = str(server.make_url("/hook"))
    return rec


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every log line (level, message and bound fields) while the test runs."""
    lines: list[str] = []
    sink = logger.add(
        lambda m: lines.append(str(m).rstrip()), format="{level} {message} {extra}", level="DEBUG"
    )
    yield lines
    logger.remove(sink)
