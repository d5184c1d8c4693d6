"""Agent-rendered BIRD nodes and plain BIRD neighbours in namespaces, for the GRC and
deny-list component tests: polling with a deadline, text of a ``birdc`` command,
and one agent node (backend + policy) on a running BIRD."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.policy import parse_bird_config
from moenet_bird.testing import BirdDaemon

from moenet_core.state import StateStore
from moenet_core.testing import NetNS

V6 = "fd42:4242:1234::"


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Poll (BIRD is an external process) until ``check()`` is truthy; its value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def text(client: BirdClient, command: str) -> str:
    """What ``birdc <command>`` prints (an error reply included)."""
    return "\n".join((await client.command(command, check=False)).texts())


def addresses(ns: NetNS, dev: str, *addrs: str) -> None:
    for a in addrs:
        ns.run("ip", "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))


async def agent_node(
    bird: BirdDaemon, base: Path, data: dict[str, Any], *, loopback: str, **kw: Any
) -> BirdRoutingBackend:
    """The agent's backend on ``bird`` (files in ``base/etc``), the policy ``data`` applied."""
    backend = BirdRoutingBackend(
        BirdClient(str(bird.socket)),
        str(base / "etc"),
        state=StateStore(base / "state"),
        loopback_interface=loopback,
        **kw,
    )
    await backend.start()
    result = await backend.set_policy(parse_bird_config(data)[0], data["configHash"], raw=data)
    assert result.ok, result.error
    return backend


async def established(backend: BirdRoutingBackend, *names: str) -> dict[str, Any] | None:
    """Every protocol in ``names`` Established: ``{name: ProtocolState}``; else None."""
    states = {p.name: p for p in await backend.client.protocols()}
    if all(n in states and states[n].bgp_state == "Established" for n in names):
        return states
    return None
