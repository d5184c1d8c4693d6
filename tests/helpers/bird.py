"""Shared test helpers (moved from ``test_bird_apply``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.policy import BgpPeer, parse_bird_config
from moenet_bird.testing import BirdDaemon, sample_bird_config

from moenet_core.intents import EbgpPeerIntent
from moenet_core.state import StateStore
from moenet_core.testing import NetNS

U1 = "0b5e8a52-3c1e-4e5a-9a51-000000000001"


U2 = "0b5e8a52-3c1e-4e5a-9a51-000000000002"


def cp_data(config_hash: str = "3f2a9c", **policy_over: Any) -> dict[str, Any]:
    """A CP bird-config answer without RPKI (no DNS in a namespace)."""
    return sample_bird_config(config_hash=config_hash, policy=policy_over)


def session_fields(asn: int = 4242420002, n: int = 2, **kw: Any) -> dict[str, Any]:
    return {
        "asn": asn,
        "latency": 3,
        "bandwidth": 25,
        "crypto": 34,
        "name": "example",
        "interface": f"dn42-{n}",
        "neighbor_link_local": f"fe80::{n}",
        "local_link_local": "fe80::1234",
        **kw,
    }


def session(asn: int = 4242420002, n: int = 2, **kw: Any) -> EbgpPeerIntent:
    """A link-local MP-BGP session (the usual DN42 WireGuard peering), as the
    sessions plugin declares it."""
    return EbgpPeerIntent(**session_fields(asn, n, **kw))


def symbol(uuid: str, asn: int) -> str:
    """The protocol name of the peer keyed ``uuid``."""
    return BgpPeer(uuid, session(asn)).symbol


class Env:
    """BIRD in a namespace, a counted client, a backend on ``tmp_path/etc``."""

    def __init__(self, daemon: BirdDaemon, tmp: Path) -> None:
        self.daemon = daemon
        self.tmp = tmp
        self.etc = tmp / "etc"
        self.state = StateStore(tmp / "state")
        self.configures = 0
        self.backends: list[BirdRoutingBackend] = []

    def client(self) -> BirdClient:
        client = BirdClient(str(self.daemon.socket))
        real = client.configure

        async def counted(*a: Any, **kw: Any) -> Any:
            self.configures += 1
            return await real(*a, **kw)

        client.configure = counted  # type: ignore[method-assign]
        return client

    async def backend(self, **kw: Any) -> BirdRoutingBackend:
        b = BirdRoutingBackend(self.client(), str(self.etc), state=self.state, **kw)
        await b.start()
        self.backends.append(b)
        return b

    def files(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.etc)): p.read_bytes()
            for p in sorted(self.etc.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }

    def inodes(self) -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(self.etc)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(self.etc.rglob("*"))
            if p.is_file()
        }


@pytest.fixture
async def env(netns: Callable[[], NetNS], tmp_path: Path) -> AsyncIterator[Env]:
    with BirdDaemon(netns(), tmp_path / "bird").start() as daemon:
        e = Env(daemon, tmp_path)
        try:
            yield e
        finally:
            for b in e.backends:
                await b.aclose()


async def protocol_names(b: BirdRoutingBackend) -> set[str]:
    return {p.name for p in await b.protocols()}


def policy(data: dict[str, Any] | None = None) -> Any:
    return parse_bird_config(data or cp_data())[0]
