"""Shared helpers of the meshSync tests: a node on a real agent core with the
shared fake backends (moved from ``test_mesh_task``)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import moenet_mesh
from moenet_mesh.config import MeshSyncConfig

from moenet_core import hookimpl
from moenet_core.descriptors import SyncEvent
from moenet_core.testing import AgentHarness, FakeBackends, FakeControlPlane, ManualClock

NODE_ID = 3


def key(n: int) -> str:
    return base64.b64encode(bytes([n % 250 + 1]) * 32).decode()


def peer(n: int, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "nodeId": n,
        "nodeName": f"node{n}",
        "loopbackIpv4": f"172.20.42.{n % 250}",
        "loopbackIpv6": f"fd42:4242:1234::{n:x}",
        "publicKey": key(n),
        "endpoint": f"192.0.2.{n % 250}",
        "mtu": 1420,
        "isRr": False,
    }
    d.update(over)
    return d


def mesh_answer(*peers: Any, local: int | None = NODE_ID) -> dict[str, Any]:
    return {"localNodeId": local, "localLoopback4": "172.20.42.3", "peers": list(peers)}


class Node:
    def __init__(self, h: AgentHarness, cp: FakeControlPlane, b: FakeBackends, clock: ManualClock) -> None:
        self.h, self.cp, self.b, self.clock = h, cp, b, clock
        self.events: list[SyncEvent] = []

    async def sync(self, ok: bool = True) -> dict[str, Any]:
        ev = await self.h.agent.scheduler.run_now("meshSync")
        if ok:
            assert ev.ok, ev.error
            assert isinstance(ev.result, dict)
            return ev.result
        assert not ev.ok
        return {"error": ev.error}

    def reports(self) -> list[dict[str, Any]]:
        return [c.body for c in self.cp.calls("mesh/status", "POST")]

    def info(self) -> dict[str, Any]:
        [mesh] = [p for p in self.h.agent.status()["plugins"] if p["name"] == "mesh"]
        return mesh["info"]  # type: ignore[no-any-return]

    @property
    def task(self) -> moenet_mesh.MeshSync:
        task = self.h.agent.scheduler._entry("meshSync").task
        assert isinstance(task, moenet_mesh.MeshSync)
        return task

    def section(self) -> MeshSyncConfig:
        s = self.h.agent.plugin_section("mesh")
        assert isinstance(s, MeshSyncConfig)
        return s

    @property
    def state(self) -> Path:
        return Path(self.h.agent.config.state.directory) / "plugins" / "mesh"


@asynccontextmanager
async def node(
    tmp_path: Path, *, config: dict[str, Any] | None = None, node_id: int = NODE_ID
) -> AsyncIterator[Node]:
    clock = ManualClock()
    backends = FakeBackends(kinds=("tunnel", "firewall", "routing"))
    async with FakeControlPlane() as cp:
        cp.set("mesh", mesh_answer())
        cfg: dict[str, Any] = {
            "node": {"name": "hkg1", "id": node_id},
            "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
            "backends": backends.config(),
            **(config or {}),
        }
        plugins = [("mesh", moenet_mesh), ("fakes", backends)]
        async with AgentHarness(cfg, plugins=plugins, state_dir=tmp_path / "state", clock=clock) as h:
            assert h.agent.pm.records["mesh"].status == "active", h.agent.pm.records["mesh"].error
            n = Node(h, cp, backends, clock)

            class Recorder:
                @hookimpl
                def moenet_sync_completed(self, event: SyncEvent) -> None:
                    n.events.append(event)

            h.agent.pm.register(Recorder(), "recorder")
            yield n
