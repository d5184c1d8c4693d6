"""pytest fixtures (see :mod:`moenet_core.testing`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..context import PluginContext
from .clock import ManualClock
from .fake_cp import FakeControlPlane
from .fakes import plugin_context
from .harness import AgentHarness
from .netns import NetNS, have_root


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that only moves on ``await manual_clock.advance(seconds)``."""
    return ManualClock()


@pytest.fixture
async def fake_cp() -> AsyncIterator[FakeControlPlane]:
    """A started fake control plane (token ``test-token``); ``fake_cp.url`` is its base URL."""
    cp = FakeControlPlane()
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


@pytest.fixture
def agent_harness(tmp_path: Path) -> Callable[..., AgentHarness]:
    """Factory: ``agent_harness(config_dict, plugins=[(name, module)], ...)``;
    the state directory defaults to a fresh temporary one."""

    def make(config: dict[str, Any], **kwargs: Any) -> AgentHarness:
        kwargs.setdefault("state_dir", tmp_path / "state")
        return AgentHarness(config, **kwargs)

    return make


@pytest.fixture
async def make_plugin_context(tmp_path: Path) -> AsyncIterator[Callable[..., PluginContext]]:
    """Factory: ``make_plugin_context(plugin, section=..., backends=..., cp=...)``
    (see :func:`~moenet_core.testing.plugin_context`); the state directory defaults
    to a fresh temporary one. CP clients are closed and runtime hooks removed
    after the test."""
    made: list[PluginContext] = []

    def make(plugin: str = "test", **kwargs: Any) -> PluginContext:
        kwargs.setdefault("state_dir", tmp_path / "state")
        ctx = plugin_context(plugin, **kwargs)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()
        await ctx.cp.aclose()


@pytest.fixture
def netns() -> Iterator[Callable[[], NetNS]]:
    """Factory of throwaway network namespaces, all removed after the test.

    Needs root; without it the test fails (it is never silently skipped).
    """
    if not have_root():
        pytest.fail("this test runs real daemons in network namespaces and needs root")
    made: list[NetNS] = []

    def make() -> NetNS:
        ns = NetNS()
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.remove()
