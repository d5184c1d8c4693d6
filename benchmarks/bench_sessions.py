"""sessionSync with N real sessions: the first (setup) cycle, and the no-op cycle.

Run as root: ``.venv/bin/python benchmarks/bench_sessions.py [--sessions 100] [--runs 30]``.
Everything happens in a throwaway network namespace: a real BIRD 3, one
wireguard-go per session, nftables, and a fake CP serving N sessions (endpoints
in TEST-NET-1, so no handshake is needed). The no-op cycle is the one that runs
every minute on every node: fetch, validate, observe (tunnel list, firewall set),
plan, and nothing to write. Prints one line per measurement for the issue notes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import pstats
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import moenet_bird
import moenet_nftables
import moenet_sessions
import moenet_wireguard
from moenet_bird.testing import BirdDaemon, sample_bird_config

from moenet_core.backends import TunnelBackend
from moenet_core.testing import AgentHarness, FakeControlPlane, NetNS

KEY = base64.b64encode(b"\x07" * 32).decode()


def session(i: int, prefix: str, status: int) -> dict[str, Any]:
    return {
        "uuid": f"5e55b000-0000-4000-8000-{i:012d}",
        "asn": 4242421000 + i,
        "name": f"peer{i}",
        "status": status,
        "interface": f"{prefix}{i}",
        "endpoint": f"192.0.2.{i % 250 + 1}:{30000 + i}",
        "credential": KEY,
        "ipv6LinkLocal": f"fe80::{i:x}",
        "port": 21000 + i,
    }


def line(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    p95 = s[max(0, int(len(s) * 0.95) - 1)]
    return (
        f"{name:<38} n={len(s):<3} p50={statistics.median(s) * 1000:8.1f} ms  "
        f"p95={p95 * 1000:8.1f} ms  max={s[-1] * 1000:8.1f} ms"
    )


async def bench(tmp: Path, count: int, runs: int, profile: bool = False) -> None:
    etc, state = tmp / "etc", tmp / "state"
    prefix = "b" + secrets.token_hex(2)
    ns = NetNS("mb")
    try:
        with ns.entered(), BirdDaemon(ns, tmp / "bird").start() as daemon:
            async with FakeControlPlane() as cp:
                cp.set("bird-config", sample_bird_config())
                cp.set("sessions", [])
                cfg = {
                    "node": {"name": "bench1", "id": 3},
                    "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
                    "bird": {
                        "controlSocket": str(daemon.socket),
                        "configDir": str(etc),
                    },
                    "birdAgent": {"applyDebounce": 0},
                    "wireguard": {"privateKeyPath": str(tmp / "wg" / "private.key"), "backend": "userspace"},
                    "backends": {"firewall": "nftables"},
                    "state": {"directory": str(state)},
                }
                plugins = [
                    ("sessions", moenet_sessions),
                    ("wireguard", moenet_wireguard),
                    ("nftables", moenet_nftables),
                    ("bird", moenet_bird),
                ]
                async with AgentHarness(cfg, plugins=plugins, state_dir=state) as h:
                    sched = h.agent.scheduler

                    async def sync() -> dict[str, Any]:
                        ev = await sched.run_now("sessionSync")
                        assert ev.ok, ev.error
                        assert isinstance(ev.result, dict)
                        return ev.result

                    try:
                        assert (await sched.run_now("birdConfigSync")).ok
                        await sync()
                        cp.set("sessions", [session(i, prefix, 4) for i in range(1, count + 1)])
                        t = time.perf_counter()
                        r = await sync()
                        setup = time.perf_counter() - t
                        assert r["failed"] == {} and r["declares"] == 1, r
                        print(
                            f"setup cycle, {count} sessions: {setup:.2f} s "
                            f"({r['tunnelWrites']} tunnels, 1 reconfigure)"
                        )
                        cp.set("sessions", [session(i, prefix, 1) for i in range(1, count + 1)])
                        await sync()  # settle: the CP now shows ACTIVE
                        wall: list[float] = []
                        inner: list[float] = []
                        for _ in range(runs):
                            t = time.perf_counter()
                            r = await sync()
                            wall.append(time.perf_counter() - t)
                            inner.append(r["seconds"])
                            changes = (r["tunnelWrites"], r["firewallSyncs"], r["declares"], r["reports"])
                            assert changes == (0, 0, 0, 0), r
                        print(line(f"no-op sessionSync, {count} sessions (cycle)", inner))
                        print(line(f"no-op sessionSync, {count} sessions (run_now)", wall))
                        if profile:
                            prof = cProfile.Profile()
                            prof.enable()
                            for _ in range(5):
                                await sync()
                            prof.disable()
                            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
                    finally:
                        tunnel = h.agent.backend("tunnel")
                        assert isinstance(tunnel, TunnelBackend)
                        for name in list(await tunnel.list()):
                            await tunnel.remove(name)
    finally:
        ns.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of 5 more no-op cycles")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="moenet-bench-") as tmp:
        asyncio.run(bench(Path(tmp), args.sessions, args.runs, args.profile))


if __name__ == "__main__":
    main()
