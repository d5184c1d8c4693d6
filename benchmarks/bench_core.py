"""Core benchmarks: config, plugin discovery, agent start, local API, CP client.

Run: ``.venv/bin/python benchmarks/bench_core.py`` (root: the agent runs in a
throwaway network namespace, as its link-layer plugins act on interfaces).
Prints one line per measurement; the numbers go into the issue notes.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp

from moenet_core.agent import Agent
from moenet_core.config import build_config
from moenet_core.plugins import AgentPluginManager
from moenet_core.testing import FakeControlPlane, NetNS

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def report(name: str, samples: list[float], unit: str = "ms") -> None:
    scale = 1000 if unit == "ms" else 1_000_000
    s = sorted(samples)
    p50, p95 = s[len(s) // 2], s[int(len(s) * 0.95) - 1]
    print(f"{name:<44} n={len(s):<5} p50={p50 * scale:8.3f} {unit}  p95={p95 * scale:8.3f} {unit}")


async def agent_benchmarks(state_dir: Path) -> None:
    async with FakeControlPlane() as cp:
        cfg, _ = build_config(
            {
                "node": {"name": "bench1", "id": 1},
                "controlPlane": {"url": cp.url, "token": "test-token"},
                "server": {"listen": "127.0.0.1:0"},
                "state": {"directory": str(state_dir)},
                "loopback": {"kind": "bridge"},
            },
            env={},
        )
        starts = []
        for _ in range(20):
            pm = AgentPluginManager()
            pm.load_entrypoints()
            agent = Agent(cfg, pm)
            t = time.perf_counter()
            await agent.start()
            starts.append(time.perf_counter() - t)
            await agent.stop()
        report("agent start (all installed plugins, API up)", starts)

        pm = AgentPluginManager()
        pm.load_entrypoints()
        agent = Agent(cfg, pm)
        await agent.start()
        try:
            host, port = agent.api.bound[0]
            async with aiohttp.ClientSession() as http:
                for path in ("/status", "/metrics"):
                    samples = []
                    for _ in range(500):
                        t = time.perf_counter()
                        async with http.get(f"http://{host}:{port}{path}") as resp:
                            await resp.read()
                        samples.append(time.perf_counter() - t)
                    report(f"GET {path} (keep-alive)", samples)
            samples = []
            for _ in range(300):
                t = time.perf_counter()
                event = await agent.scheduler.run_now("heartbeat")
                samples.append(time.perf_counter() - t)
                assert event.ok, event.error
            report("heartbeat run (build payload + POST to a local CP)", samples)
            samples = []
            for _ in range(500):
                t = time.perf_counter()
                await agent.cp.send("report", {"x": 1})
                samples.append(time.perf_counter() - t)
            report("CP client POST (retry+breaker path, local CP)", samples)
        finally:
            await agent.stop()


def scrape_at_scale(sessions: int = 1000) -> None:
    """``/metrics`` with the sessions collector's series of ``sessions`` healthy
    sessions (one MP-BGP protocol with two limits, tunnel, RTT: 21 per session):
    prometheus_client formatting the whole registry at once against the agent's
    part-by-part exposition (:class:`moenet_core.StreamedCollector`); time and the
    traced memory peak above what the samples hold."""
    import tracemalloc
    from types import SimpleNamespace

    from moenet_sessions import collector as c
    from moenet_sessions.health import Verdict
    from prometheus_client import generate_latest

    from moenet_core import LinkLatency, TunnelStats
    from moenet_core.metrics import AgentRegistry, PluginMetrics

    registry = AgentRegistry()
    metrics = c._Metrics(SimpleNamespace(metrics=PluginMetrics(registry, "sessions")))  # type: ignore[arg-type]
    samples = {}
    for i in range(sessions):
        uuid, iface = f"5e55b000-0000-4000-8000-{i:012d}", f"dn42-{i}"
        limits = tuple(c._Limit(channel=ch, limit="import", value=9000, hit=False) for ch in ("ipv4", "ipv6"))
        samples[uuid] = c._Sample(
            uuid=uuid,
            name=f"peer{i}",
            asn=4242420000 + i,
            labels=(uuid, str(4242420000 + i), iface),
            protocols=(c._ProtocolSample(f"dn42_{i}", 1, "Established", 1700000000, limits),),
            routes=tuple((f, d, 10) for f in ("ipv4", "ipv6") for d in ("imported", "filtered", "exported")),
            tunnel=TunnelStats(
                name=iface, latest_handshake=1.7e9, rx_bytes=123456, tx_bytes=654321, endpoint="192.0.2.1:1"
            ),
            handshake_age=30.0,
            latency=LinkLatency(
                owner="sessions",
                key=uuid,
                interface=iface,
                target="fe80::1",
                rtt_ms=12.5,
                loss=0.0,
                tier=2,
                measured_at=1.7e9,
            ),
            verdict=Verdict.HEALTHY,
            reasons=(),
            bgp_state="Established",
            since=1700000000,
        )
    metrics.replace(samples, 1)

    def whole() -> int:
        return len(generate_latest(registry))

    def streamed() -> int:
        return sum(len(chunk) for chunk in registry.exposition(generate_latest))

    for name, fn in (
        ("prometheus_client, whole registry", whole),
        ("part by part (the agent's /metrics)", streamed),
    ):
        report(f"scrape, {sessions} sessions: {name}", timed(fn, 5))
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        size = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        print(f"{'':<44} {size / 1e6:.2f} MB of text, transient peak {peak / 2**20:.1f} MB")


def main() -> None:
    scrape_at_scale()
    raw = json.loads((ROOT / "contrib/configs/full.json").read_text())
    report("build_config(full.json)", timed(lambda: build_config(raw, env={}), 2000), "us")

    def discover() -> None:
        AgentPluginManager().load_entrypoints()

    report("plugin discovery (entry points, imports cached)", timed(discover, 200))
    ns = NetNS(prefix="bench")
    try:
        with ns.entered(), tempfile.TemporaryDirectory() as tmp:
            asyncio.run(agent_benchmarks(Path(tmp)))
    finally:
        ns.remove()


if __name__ == "__main__":
    from moenet_core.logs import setup_logging

    setup_logging(level="WARNING")
    main()
