"""Shared test helpers (moved from ``test_sessions_task``)."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import moenet_bird
import moenet_nftables
import moenet_sessions
import moenet_wireguard
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.policy import BgpPeer
from moenet_bird.testing import BirdDaemon
from moenet_sessions.task import TASK_NAME, SessionSync

from helpers.bird import cp_data
from moenet_core.backends import TunnelBackend
from moenet_core.descriptors import SessionStatusEvent
from moenet_core.intents import EbgpPeerIntent
from moenet_core.testing import AgentHarness, FakeControlPlane, NetNS

KEY = base64.b64encode(b"\x07" * 32).decode()


def uid(n: int) -> str:
    return f"5e55a000-0000-4000-8000-{n:012d}"


def symbol(n: int) -> str:
    return BgpPeer(uid(n), EbgpPeerIntent(asn=4242420000 + n, neighbor_ipv4="172.20.1.1")).symbol


class Node:
    """One agent in a namespace with its BIRD, fake CP and helpers."""

    def __init__(self, ns: NetNS, h: AgentHarness, cp: FakeControlPlane, etc: Path, prefix: str) -> None:
        self.ns, self.h, self.cp, self.etc, self.prefix = ns, h, cp, etc, prefix
        self.events: list[SessionStatusEvent] = []
        self.daemon: BirdDaemon | None = None
        """The node's BIRD (stop and start it to test BIRD being down)."""

    def ifname(self, n: int) -> str:
        return f"{self.prefix}{n}"

    def session(self, n: int, status: int = 4, **over: Any) -> dict[str, Any]:
        d: dict[str, Any] = {
            "uuid": uid(n),
            "asn": 4242420000 + n,
            "name": f"peer{n}",
            "status": status,
            "interface": self.ifname(n),
            "endpoint": f"192.0.2.{n}:51820",
            "credential": KEY,
            "ipv6LinkLocal": f"fe80::{n}",
            "port": 21000 + n,
        }
        d.update(over)
        return d

    @property
    def task(self) -> SessionSync:
        task = self.h.agent.context("sessions").task(TASK_NAME, SessionSync)
        assert task is not None
        return task

    @property
    def routing(self) -> BirdRoutingBackend:
        backend = self.h.agent.backend("routing")
        assert isinstance(backend, BirdRoutingBackend)
        return backend

    async def sync(self) -> dict[str, Any]:
        ev = await self.h.agent.scheduler.run_now("birdConfigSync")
        assert ev.ok, ev.error
        ev = await self.h.agent.scheduler.run_now("sessionSync")
        assert ev.ok, ev.error
        assert isinstance(ev.result, dict)
        return ev.result

    def modifies(self) -> list[dict[str, Any]]:
        return [c.body for c in self.cp.calls("modify", "POST")]

    def link(self, n: int) -> dict[str, Any] | None:
        res = self.ns.run("ip", "-j", "-d", "link", "show", self.ifname(n), check=False)
        if res.returncode != 0:
            return None
        [link] = json.loads(res.stdout)
        return link  # type: ignore[no-any-return]

    def ports(self) -> str:
        return self.ns.run("nft", "list", "set", "inet", "moenet_agent", "udp_ports").stdout

    def peer_files(self, n: int) -> list[Path]:
        return sorted((self.etc / "peers").glob(f"dn42_{4242420000 + n}_*.conf"))

    async def protocols(self) -> set[str]:
        return {p.name for p in await self.routing.protocols()}


@asynccontextmanager
async def node(
    netns: Callable[[], NetNS], tmp_path: Path, *, template: str | None = None
) -> AsyncIterator[Node]:
    etc, state = tmp_path / "etc", tmp_path / "state"
    ns = netns()
    bird: dict[str, Any] = {}
    if template is not None:
        (tmp_path / "templates").mkdir()
        (tmp_path / "templates" / "peer.conf.j2").write_text(template)
        bird["templateDir"] = str(tmp_path / "templates")
    prefix = "t" + secrets.token_hex(3)
    with ns.entered(), BirdDaemon(ns, tmp_path / "bird").start() as daemon:
        async with FakeControlPlane() as cp:
            policy = cp_data("h1")
            # The node as the config below has it: a bird-config saying otherwise is refused.
            policy["node"].update(loopbackIpv4="172.20.0.1", loopbackIpv6="fd00:4242:7777::1")
            policy["policy"]["dn42As"] = "4242429999"
            cp.set("bird-config", policy)
            cp.set("sessions", [])
            cfg = {
                "node": {
                    "name": "hkg1",
                    "id": 3,
                    "asn": 4242429999,
                    "loopbackIpv4": "172.20.0.1",
                    "loopbackIpv6": "fd00:4242:7777::1",
                },
                "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
                "bird": {
                    "controlSocket": str(daemon.socket),
                    "configDir": str(etc),
                    **bird,
                },
                "birdAgent": {"applyDebounce": 0},
                "wireguard": {"privateKeyPath": str(tmp_path / "wg" / "private.key"), "backend": "userspace"},
                "backends": {"firewall": "nftables"},
                "state": {"directory": str(state)},
                "sessions": {"guardMaxShare": 0.5, "guardMinCount": 2},
            }
            plugins = [
                ("sessions", moenet_sessions),
                ("wireguard", moenet_wireguard),
                ("nftables", moenet_nftables),
                ("bird", moenet_bird),
            ]
            async with AgentHarness(cfg, plugins=plugins, state_dir=state) as h:
                n = Node(ns, h, cp, etc, prefix)
                n.daemon = daemon

                class Recorder:
                    @moenet_bird.hookimpl  # type: ignore[misc]
                    def moenet_session_status_changed(self, event: SessionStatusEvent) -> None:
                        n.events.append(event)

                h.agent.pm.register(Recorder(), "recorder")
                # Let the start-up runs (on the empty answer) finish: runs are ours from here.
                await n.sync()
                try:
                    yield n
                finally:
                    # Tear the tunnels down (wireguard-go processes live outside the namespace's life).
                    tunnel = h.agent.backend("tunnel")
                    assert isinstance(tunnel, TunnelBackend)
                    for name in list(await tunnel.list()):
                        await tunnel.remove(name)
