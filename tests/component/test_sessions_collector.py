"""The ``metricCollector`` task (``moenet_sessions.collector``).

Most tests run the collector on a real agent core (``AgentHarness``) whose
routing and tunnel backends are in-test fakes, with the HTTP control-plane
client talking to a ``FakeControlPlane`` and a ``ManualClock`` for time. One
test runs the real ``bird`` plugin against a real BIRD 3 in a namespace, so
states and route counts parsed from a live ``show protocols all`` reach the report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import moenet_bird
import pytest
from helpers.bird import cp_data, session
from loguru import logger
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.protocol import parse_protocols, parse_replies
from moenet_bird.testing import BirdDaemon
from moenet_sessions import make_collector
from moenet_sessions.collector import TASK_NAME as COLLECTOR_TASK
from moenet_sessions.collector import MetricCollector, MetricCollectorError
from moenet_sessions.records import ConfiguredSession, Previous, Report
from moenet_sessions.store import STATE_FILE, SessionStateError, SessionStore
from moenet_sessions.task import TASK_NAME as SYNC_TASK
from moenet_sessions.task import SessionSync

from moenet_core.backends import ProtocolState, TunnelSpec, TunnelStats
from moenet_core.context import PluginContext
from moenet_core.descriptors import LinkLatency
from moenet_core.intents import EbgpPeerIntent
from moenet_core.models import SessionStatus
from moenet_core.testing import (
    AgentHarness,
    FakeBackends,
    FakeControlPlane,
    FakeRoutingBackend,
    FakeTunnelBackend,
    ManualClock,
    NetNS,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000  # ManualClock's wall time
KEY = "x" * 43 + "="


def uid(n: int) -> str:
    return f"c011ec70-0000-4000-8000-{n:012d}"


def configured(n: int, keepalive: int | None = 25) -> ConfiguredSession:
    iface = f"dn42-{n}"
    return ConfiguredSession(
        interface=iface,
        tunnel=TunnelSpec(
            name=iface,
            private_key_file="/etc/wg/private.key",
            listen_port=21000 + n,
            peer_public_key=KEY,
            keepalive=keepalive,
        ),
        peer=EbgpPeerIntent(
            asn=4242420000 + n, name=f"peer{n}", interface=iface, neighbor_link_local=f"fe80::{n}"
        ),
        port=21000 + n,
    )


def proto(
    name: str,
    bgp: str = "Established",
    *,
    state: str | None = None,
    since: str = "1699990000",
    routes: Mapping[str, Mapping[str, int]] | None = None,
    last_error: str | None = None,
    info: str | None = None,
) -> ProtocolState:
    up = bgp == "Established"
    return ProtocolState(
        name=name,
        proto="BGP",
        table=None,
        state=state or ("up" if up else "start"),
        since=since,
        info=info if info is not None else bgp,
        last_error=last_error,
        bgp_state=bgp,
        routes=routes or {},
    )


def stats(n: int, age: float | None, rx: int = 1000, tx: int = 2000) -> TunnelStats:
    return TunnelStats(
        name=f"dn42-{n}",
        latest_handshake=None if age is None else NOW - age,
        rx_bytes=rx,
        tx_bytes=tx,
        endpoint="192.0.2.1:51820",
    )


def latency(n: int, rtt: float | None, loss: float, tier: int | None, age: float = 60) -> LinkLatency:
    return LinkLatency(
        owner="sessions",
        key=uid(n),
        interface=f"dn42-{n}",
        target=f"fe80::{n}",
        rtt_ms=rtt,
        loss=loss,
        tier=tier,
        measured_at=NOW - age,
    )


def reads(rig: Rig) -> int:
    """``protocols()`` reads of the routing daemon so far."""
    return len(rig.routing.calls_of("protocols"))


class Rig:
    def __init__(
        self, h: AgentHarness, cp: FakeControlPlane, routing: FakeRoutingBackend, tunnel: FakeTunnelBackend
    ) -> None:
        self.h, self.cp, self.routing, self.tunnel = h, cp, routing, tunnel
        self.latencies: dict[str, LinkLatency] = {}

    @property
    def ctx(self) -> PluginContext:
        return self.h.agent.context("sessions")

    def collector(self) -> MetricCollector:
        return MetricCollector(self.ctx, latency=self.latencies.get)

    def configure(
        self, sessions: Mapping[str, ConfiguredSession], reported: Mapping[str, Report] | None = None
    ) -> None:
        SessionStore(self.ctx.state).save_previous(Previous(configured=sessions, reported=reported or {}))

    def sample(self, name: str, n: int, **labels: str) -> float | None:
        labels = {"session": uid(n), "asn": str(4242420000 + n), "interface": f"dn42-{n}", **labels}
        return self.h.agent.metrics.registry.get_sample_value("moenet_sessions_" + name, labels)

    def series(self, name: str) -> list[dict[str, str]]:
        return [
            s.labels
            for m in self.h.agent.metrics.registry.collect()
            for s in m.samples
            if s.name == "moenet_sessions_" + name
        ]

    def reports(self) -> list[Any]:
        return [c.body for c in self.cp.calls("report", "POST")]


@pytest.fixture
async def rig(fake_cp: FakeControlPlane, tmp_path: Path) -> AsyncIterator[Rig]:
    fakes = FakeBackends(kinds=("routing", "tunnel"))
    cfg = {
        "node": {"name": "hkg1", "id": 3},
        "controlPlane": {"url": fake_cp.url, "token": "test-token", "maxRetries": 0},
    }
    async with AgentHarness(
        cfg,
        plugins=[("fakes", fakes)],
        state_dir=tmp_path / "state",
        clock=ManualClock(),
    ) as h:
        yield Rig(h, fake_cp, fakes.routing, fakes.tunnel)


def four_sessions(rig: Rig) -> None:
    """A healthy MP-BGP session, a split one with its v6 half down, one whose tunnel
    keys expired, and one missing from BIRD whose tunnel cannot be read."""
    rig.configure(
        {uid(n): configured(n) for n in (1, 2, 3, 4)},
        reported={
            uid(1): Report(uuid=uid(1), status=SessionStatus.ACTIVE),
            uid(2): Report(uuid=uid(2), status=SessionStatus.ERROR, last_error="firewall: nft failed"),
        },
    )
    rig.routing.protocol_names["sessions"] = {
        uid(1): ("dn42_a",),
        uid(2): ("dn42_b_v4", "dn42_b_v6"),
        uid(3): ("dn42_c",),
    }
    rig.routing.states = [
        proto("kernel4", "Established"),  # not a session's: ignored
        proto(
            "dn42_a",
            routes={
                "ipv4": {"imported": 10, "filtered": 0, "exported": 40, "preferred": 10},
                "ipv6": {"imported": 12, "filtered": 0, "exported": 41, "preferred": 12},
            },
        ),
        proto(
            "dn42_b_v4", since="1699995000", routes={"ipv4": {"imported": 5, "filtered": 2, "exported": 7}}
        ),
        proto(
            "dn42_b_v6",
            "Active",
            since="1699996000",
            info="Active        Socket: Connection refused",
            last_error="Socket: Connection refused",
        ),
        proto("dn42_c", routes={"ipv4": {"imported": 1, "filtered": 0, "exported": 1}}),
    ]
    rig.tunnel.stats_by_name = {
        "dn42-1": stats(1, 30),
        "dn42-2": stats(2, 10),
        "dn42-3": stats(3, 200),
        "dn42-4": OSError("dn42-4: no such device"),
    }
    rig.latencies.update(
        {
            uid(1): latency(1, 12.3456, 0.0, 3),
            uid(2): latency(2, None, 50.0, None),
            uid(3): latency(3, None, 100.0, None, age=2000),  # stale: reported, not judged
        }
    )


# ------------------------------------------------------------------- tests


async def test_report_metrics_and_health_in_one_bird_call(rig: Rig) -> None:
    four_sessions(rig)
    collector = rig.collector()
    result = await collector.run_once()

    assert len(rig.routing.calls_of("protocols")) == 1, "one protocols() read for every session"
    assert sorted(c.key for c in rig.tunnel.calls_of("stats")) == ["dn42-1", "dn42-2", "dn42-3", "dn42-4"]
    [body] = rig.reports()
    assert body["node_id"] == "hkg1" and body["timestamp"] == NOW
    by_uuid = {s["uuid"]: s for s in body["sessions"]}
    assert list(by_uuid) == [uid(1), uid(2), uid(3), uid(4)]
    assert by_uuid[uid(1)] == {
        "uuid": uid(1),
        "name": "peer1",
        "asn": 4242420001,
        "interface": "dn42-1",
        "type": "bgp",
        "status": 1,
        "state": "up",
        "info": "Established",
        "bgpState": "Established",
        "since": 1699990000,
        "protocols": [
            {
                "name": "dn42_a",
                "state": "up",
                "bgp_state": "Established",
                "since": 1699990000,
                "info": "Established",
                "last_error": None,
            }
        ],
        "routes": {
            "ipv4": {"imported": 10, "filtered": 0, "exported": 40},
            "ipv6": {"imported": 12, "filtered": 0, "exported": 41},
        },
        "routes_imported": 22,
        "routes_exported": 81,
        "limits": [],
        "tunnel": {"latestHandshake": NOW - 30, "handshakeAgeSeconds": 30, "rxBytes": 1000, "txBytes": 2000},
        "rtt_ms": 12.346,
        "loss": 0.0,
        "latencyTier": 3,
        "rttMeasuredAt": NOW - 60,
        "health": {"verdict": "healthy", "reasons": []},
    }
    b = by_uuid[uid(2)]
    assert (b["status"], b["state"], b["bgpState"], b["since"]) == (2, "start", "Active", 1699996000)
    assert [p["name"] for p in b["protocols"]] == ["dn42_b_v4", "dn42_b_v6"]
    assert b["protocols"][1]["last_error"] == "Socket: Connection refused"
    assert b["routes"] == {"ipv4": {"imported": 5, "filtered": 2, "exported": 7}}
    assert (b["routes_imported"], b["routes_exported"], b["rtt_ms"], b["loss"]) == (5, 7, None, 50.0)
    assert b["health"] == {
        "verdict": "degraded",
        "reasons": [
            "ipv6 session: BGP Active: Socket: Connection refused",
            "ipv4: 2 routes filtered",
            "50% RTT probe loss",
            "last sync: ERROR: firewall: nft failed",
        ],
    }
    c = by_uuid[uid(3)]
    assert c["health"] == {"verdict": "down", "reasons": ["tunnel: last handshake 200 s ago (keys expired)"]}
    assert (c["loss"], c["rttMeasuredAt"], c["status"]) == (100.0, NOW - 2000, None)
    d = by_uuid[uid(4)]
    assert (d["state"], d["info"], d["bgpState"], d["protocols"]) == (
        "down",
        "not in the routing daemon",
        None,
        [],
    )
    assert d["tunnel"] == {"error": "dn42-4: no such device"} and "rtt_ms" not in d
    assert d["health"] == {
        "verdict": "down",
        "reasons": ["no BGP protocol in the routing daemon", "tunnel: dn42-4: no such device"],
    }

    # Prometheus
    assert rig.sample("bgp_up", 1, protocol="dn42_a") == 1
    assert rig.sample("bgp_up", 2, protocol="dn42_b_v4") == 1
    assert rig.sample("bgp_up", 2, protocol="dn42_b_v6") == 0
    assert {s["protocol"] for s in rig.series("bgp_up")} == {"dn42_a", "dn42_b_v4", "dn42_b_v6", "dn42_c"}
    assert rig.sample("bgp_state_info", 2, protocol="dn42_b_v6", state="Active") == 1
    assert rig.sample("bgp_state_change_timestamp_seconds", 1, protocol="dn42_a") == 1699990000
    assert rig.sample("routes", 1, family="ipv6", direction="imported") == 12
    assert rig.sample("routes", 1, family="ipv4", direction="exported") == 40
    assert rig.sample("routes", 2, family="ipv4", direction="filtered") == 2
    assert rig.sample("tunnel_handshake_age_seconds", 1) == 30
    assert rig.sample("tunnel_handshake_age_seconds", 3) == 200
    assert rig.sample("tunnel_last_handshake_timestamp_seconds", 1) == NOW - 30
    assert rig.sample("tunnel_rx_bytes", 1) == 1000 and rig.sample("tunnel_tx_bytes", 1) == 2000
    assert rig.sample("tunnel_rx_bytes", 4) is None
    assert rig.sample("rtt_seconds", 1) == pytest.approx(0.0123456) and rig.sample("rtt_seconds", 2) is None
    assert rig.sample("loss_ratio", 2) == 0.5 and rig.sample("latency_tier", 1) == 3
    assert [rig.sample("health", n) for n in (1, 2, 3, 4)] == [0, 1, 2, 2]
    registry = rig.h.agent.metrics.registry
    assert registry.get_sample_value("moenet_sessions_health_sessions", {"verdict": "down"}) == 2
    assert registry.get_sample_value("moenet_sessions_health_sessions", {"verdict": "healthy"}) == 1

    # /status material (no I/O) and the run's summary
    info = collector.health_info()
    assert info["at"] == NOW and info["counts"] == {"healthy": 1, "degraded": 1, "down": 2}
    assert info["sessions"][uid(2)] == {
        "name": "peer2",
        "asn": 4242420002,
        "interface": "dn42-2",
        "verdict": "degraded",
        "reasons": b["health"]["reasons"],
        "bgpState": "Active",
        "since": 1699996000,
        "routesIn": b["routes_imported"],
        "routesOut": b["routes_exported"],
        "limitsHit": [],
        "rttMs": b.get("rtt_ms"),
    }
    assert result == collector.last and result["reported"] is True and result["problem"] is None
    assert result["sessions"] == 4 and result["health"] == info["counts"]
    assert collector.ctx.stash[COLLECTOR_TASK] is collector  # how sessionSync's /status finds it
    assert collector.status_info()["health"] == info

    await collector.run_once()
    assert len(rig.routing.calls_of("protocols")) == 2 and len(rig.reports()) == 2


async def test_the_collector_reads_the_sync_tasks_memory_not_the_state_file(rig: Rig) -> None:
    """The agent's collector takes its inventory from the sessionSync task's store
    (the newest state, already in memory), not from a second read of the file."""
    four_sessions(rig)
    task = SessionSync(rig.ctx)  # the agent's task, found by make_collector's provider
    assert rig.ctx.stash.get(SYNC_TASK) is task
    assert len(task.store.load_previous().configured) == 4
    rig.ctx.state.path(STATE_FILE).write_text("{not json")

    with pytest.raises(SessionStateError):
        await rig.collector().run_once()  # on its own it reads the file
    assert rig.reports() == []

    result = await make_collector(rig.ctx).run_once()
    assert result["sessions"] == 4 and result["reported"] is True
    [body] = rig.reports()
    assert [s["uuid"] for s in body["sessions"]] == [uid(n) for n in (1, 2, 3, 4)]


async def test_vanished_sessions_and_changed_states_leave_no_stale_series(rig: Rig) -> None:
    four_sessions(rig)
    await rig.collector().run_once()
    assert rig.sample("health", 2) == 1 and rig.sample(
        "bgp_state_info", 1, protocol="dn42_a", state="Established"
    )

    # Session 2-4 are gone; session 1 lost BGP, its tunnel restarted, its RTT is unknown.
    rig.configure({uid(1): configured(1)})
    rig.routing.states = [
        proto("dn42_a", "Active", since="1699999999", last_error="Socket: Connection reset")
    ]
    rig.tunnel.stats_by_name["dn42-1"] = stats(1, None, rx=0, tx=92)
    rig.latencies.clear()
    collector = rig.collector()
    result = await collector.run_once()

    for n in (2, 3, 4):
        assert rig.sample("health", n) is None
    assert {s["session"] for s in rig.series("bgp_up")} == {uid(1)}
    assert {s["session"] for s in rig.series("routes")} == set()  # BIRD shows no counts while down
    assert rig.sample("bgp_state_info", 1, protocol="dn42_a", state="Established") is None
    assert rig.sample("bgp_state_info", 1, protocol="dn42_a", state="Active") == 1
    assert rig.sample("bgp_up", 1, protocol="dn42_a") == 0
    assert rig.sample("bgp_state_change_timestamp_seconds", 1, protocol="dn42_a") == 1699999999
    assert rig.sample("tunnel_handshake_age_seconds", 1) is None
    assert rig.sample("tunnel_last_handshake_timestamp_seconds", 1) == 0
    assert rig.sample("tunnel_rx_bytes", 1) == 0 and rig.sample("tunnel_tx_bytes", 1) == 92
    assert rig.series("rtt_seconds") == [] and rig.series("loss_ratio") == []
    assert rig.sample("health", 1) == 2
    assert result["staleSeriesRemoved"] > 0
    assert collector.health_info()["sessions"][uid(1)]["reasons"] == [
        "BGP Active: Socket: Connection reset",
        "tunnel: no handshake yet",
    ]

    # Nothing configured: no POST, no BIRD or tunnel read, every per-session series gone.
    # A rebuilt collector reuses the registry's gauges and still removes the old series.
    rig.configure({})
    calls, tunnel_calls, posts = reads(rig), len(rig.tunnel.calls_of("stats")), len(rig.reports())
    fresh = rig.collector()
    result = await fresh.run_once()
    assert (result["sessions"], result["reported"]) == (0, False)
    assert (reads(rig), len(rig.tunnel.calls_of("stats")), len(rig.reports())) == (calls, tunnel_calls, posts)
    per_session = [
        s
        for m in rig.h.agent.metrics.registry.collect()
        for s in m.samples
        if s.name.startswith("moenet_sessions_") and "session" in s.labels
    ]
    assert per_session == []
    assert fresh.health_info() == {
        "at": NOW,
        "counts": {"healthy": 0, "degraded": 0, "down": 0},
        "sessions": {},
    }
    assert (
        rig.h.agent.metrics.registry.get_sample_value("moenet_sessions_health_sessions", {"verdict": "down"})
        == 0
    )


async def test_a_run_keeps_the_sample_parts_that_did_not_change(rig: Rig) -> None:
    """Samples live from one run to the next: what did not change stays the same
    object (1 000 sessions' labels and protocols made anew every minute
    fragmented the heap), what changed is the new value."""
    four_sessions(rig)
    collector = rig.collector()
    await collector.run_once()
    first = dict(collector.metrics.samples)
    await collector.run_once()
    assert all(collector.metrics.samples[u] is first[u] for u in first)  # nothing changed

    rig.tunnel.stats_by_name["dn42-1"] = stats(1, 30, rx=5000, tx=6000)
    await collector.run_once()
    now, before = collector.metrics.samples[uid(1)], first[uid(1)]
    assert now is not before and now.tunnel is not None and now.tunnel.rx_bytes == 5000
    assert now.labels is before.labels and now.protocols is before.protocols
    assert now.routes is before.routes and now.latency is before.latency
    assert rig.sample("tunnel_rx_bytes", 1) == 5000 and rig.sample("tunnel_tx_bytes", 1) == 6000
    assert collector.metrics.samples[uid(2)] is first[uid(2)]


async def test_control_plane_outage_still_updates_metrics_and_health(rig: Rig) -> None:
    rig.configure({uid(1): configured(1)})
    rig.routing.protocol_names["sessions"] = {uid(1): ("dn42_a",)}
    rig.routing.states = [proto("dn42_a", routes={"ipv4": {"imported": 3, "filtered": 0, "exported": 3}})]
    rig.tunnel.stats_by_name = {"dn42-1": stats(1, 5)}
    collector = rig.collector()
    await collector.run_once()
    assert rig.sample("health", 1) == 0

    logged: list[str] = []
    sink = logger.add(lambda m: logged.append(m.record["message"]), level="INFO", format="{message}")
    try:
        # The session goes down while the CP is unreachable: metrics and /status still show it.
        rig.routing.states = [proto("dn42_a", "Connect")]
        rig.cp.fail("report", times=2, status=503)
        for _ in range(2):
            with pytest.raises(MetricCollectorError, match="report not delivered"):
                await collector.run_once()
            assert rig.sample("health", 1) == 2 and rig.sample("bgp_up", 1, protocol="dn42_a") == 0
            assert rig.sample("routes", 1, family="ipv4", direction="imported") is None
            assert collector.health_info()["sessions"][uid(1)]["verdict"] == "down"
            assert collector.last is not None and collector.last["reported"] is False
            assert "report not delivered" in (collector.last["problem"] or "")
        # A CP that answers but refuses is a failed run too.
        rig.cp.fail("report", times=1, status=400)
        with pytest.raises(MetricCollectorError, match="report not delivered"):
            await collector.run_once()
        assert len(rig.reports()) == 4
        assert rig.reports()[-1]["sessions"][0]["health"]["verdict"] == "down"

        result = await collector.run_once()
        assert result["reported"] is True and result["problem"] is None
    finally:
        logger.remove(sink)
    outage = [m for m in logged if m.startswith("metricCollector: control plane")]
    assert len(outage) == 2, outage  # once when it started, once when it ended
    assert "failing" in outage[0] and outage[1] == "metricCollector: control plane back"


async def test_an_unreachable_routing_daemon_marks_sessions_down_and_fails_the_run(rig: Rig) -> None:
    rig.configure({uid(1): configured(1)})
    rig.routing.protocol_names["sessions"] = {uid(1): ("dn42_a",)}
    rig.routing.states = [proto("dn42_a", routes={"ipv4": {"imported": 3, "filtered": 0, "exported": 3}})]
    rig.tunnel.stats_by_name = {"dn42-1": stats(1, 5)}
    collector = rig.collector()
    await collector.run_once()
    assert rig.sample("bgp_up", 1, protocol="dn42_a") == 1

    rig.routing.fail(
        "protocols",
        error=ConnectionRefusedError("BIRD at /run/bird/bird.ctl: connection refused"),
        times=None,
    )
    with pytest.raises(MetricCollectorError, match="routing daemon unreachable"):
        await collector.run_once()
    [_, body] = rig.reports()  # the CP still hears about it
    [s] = body["sessions"]
    assert (s["state"], s["info"], s["bgpState"]) == (
        "unknown",
        "BIRD at /run/bird/bird.ctl: connection refused",
        None,
    )
    assert s["health"] == {
        "verdict": "down",
        "reasons": ["routing daemon unreachable: BIRD at /run/bird/bird.ctl: connection refused"],
    }
    assert rig.series("bgp_up") == [] and rig.sample("health", 1) == 2
    assert rig.sample("tunnel_handshake_age_seconds", 1) == 5  # what could be read is still exported


async def test_channel_states_and_import_limits_from_a_bird_readout(rig: Rig) -> None:
    """BIRD's own records carry channel details: a hit import limit and a channel
    that is not up degrade an Established session."""
    text = (ROOT / "tests/data/bird/show-protocols-all-bgp.txt").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith(">>>"))
    v4, v6 = text.split("   Channel ipv6\n")
    v4 = v4.replace("Import limit:   9000", "Import limit:   9000 [HIT]")
    v6 = v6.replace("State:          UP", "State:          DOWN", 1)
    [reply], _, _ = parse_replies(v4 + "   Channel ipv6\n" + v6)
    [p] = parse_protocols(reply)
    assert p.bgp_state == "Established"  # the transcript, parsed by the BIRD plugin's parser
    rig.configure({uid(2): configured(2)})
    rig.routing.protocol_names["sessions"] = {uid(2): (p.name,)}
    rig.routing.states = [p]
    rig.tunnel.stats_by_name = {"dn42-2": stats(2, 5)}
    collector = rig.collector()
    await collector.run_once()
    assert collector.health_info()["sessions"][uid(2)]["reasons"] == [
        "ipv6: channel DOWN",
        "ipv4: import limit hit (9000)",
        "ipv4: 1 route filtered",
    ]
    [body] = rig.reports()
    assert body["sessions"][0]["routes"] == {
        "ipv4": {"imported": 1, "filtered": 1, "exported": 1},
        "ipv6": {"imported": 1, "filtered": 0, "exported": 1},
    }


async def test_sessions_with_the_same_route_limits_share_one_record_of_them(rig: Rig) -> None:
    text = (ROOT / "tests/data/bird/show-protocols-all-bgp.txt").read_text()
    [reply], _, _ = parse_replies("\n".join(line for line in text.splitlines() if not line.startswith(">>>")))
    [p] = parse_protocols(reply)
    rig.configure({uid(n): configured(n) for n in (1, 2, 3)})
    rig.routing.protocol_names["sessions"] = {uid(n): (f"dn42_{n}",) for n in (1, 2, 3)}
    rig.routing.states = [attrs.evolve(p, name=f"dn42_{n}") for n in (1, 2, 3)]
    rig.tunnel.stats_by_name = {f"dn42-{n}": stats(n, 5) for n in (1, 2, 3)}
    collector = rig.collector()
    await collector.run_once()

    def limits(n: int) -> object:
        [proto_sample] = collector.metrics.samples[uid(n)].protocols
        return proto_sample.limits

    first = limits(1)
    assert len(first) >= 2  # import and export limits of two channels (tuple of _Limit)
    assert limits(2) is first and limits(3) is first
    assert rig.sample("route_limit", 2, protocol="dn42_2", channel="ipv4", limit="import") == 9000

    rig.routing.states[2] = attrs.evolve(
        rig.routing.states[2],
        channels={**p.channels, "ipv4": attrs.evolve(p.channels["ipv4"], details={})},
    )
    await collector.run_once()  # session 3 lost its IPv4 limits; the others' record is kept
    assert limits(1) is first and limits(2) is first and limits(3) is not first
    assert len(limits(3)) < len(first)


async def test_no_tunnel_backend_and_a_failing_latency_provider_are_reasons_not_crashes(
    fake_cp: FakeControlPlane, tmp_path: Path
) -> None:
    fakes = FakeBackends(kinds=("routing",))
    routing = fakes.routing
    cfg = {
        "node": {"name": "hkg1", "id": 3},
        "controlPlane": {"url": fake_cp.url, "token": "test-token", "maxRetries": 0},
    }
    async with AgentHarness(
        cfg, plugins=[("fakes", fakes)], state_dir=tmp_path / "state", clock=ManualClock()
    ) as h:
        ctx = h.agent.context("sessions")
        SessionStore(ctx.state).save_previous(Previous(configured={uid(1): configured(1)}))
        routing.protocol_names["sessions"] = {uid(1): ("dn42_a",)}
        routing.states = [proto("dn42_a", routes={"ipv4": {"imported": 3, "filtered": 0, "exported": 3}})]

        def broken(uuid: str) -> LinkLatency | None:
            raise RuntimeError("rtt store unavailable")

        collector = MetricCollector(ctx, latency=broken)
        result = await collector.run_once()
        assert result["reported"] is True
        [body] = [c.body for c in fake_cp.calls("report", "POST")]
        [s] = body["sessions"]
        assert s["tunnel"]["error"].startswith("no tunnel backend: ") and "rtt_ms" not in s
        assert s["health"]["verdict"] == "degraded"
        assert s["health"]["reasons"] == [f"tunnel: {s['tunnel']['error']}"]


# ------------------------------------------------------------- real BIRD

#: Our side of each session peers, inside the one BIRD, with a counterpart
#: protocol that exports three static routes; the ``_v6`` half of a split
#: session peers with nobody (a socket error). Rendered by the real backend.
PEER_TEMPLATE = """\
{% set n = p.asn - 4242420000 %}
{% for s in sessions %}
{% set i = loop.index %}
ipv4 table st_{{ s.symbol }};
protocol bgp {{ s.symbol }} {
  local 127.{{ n }}.{{ i }}.1 as {{ asn }};
  neighbor 127.{{ n }}.{{ i }}.2 as {{ p.asn }};
  multihop;
  connect delay time 1;
  ipv4 {
    table st_{{ s.symbol }};
    import table on;
{% if p.name == "filtering" %}
    import filter { if net = 10.{{ n }}.99.0/24 then reject; accept; };
{% else %}
    import all;
{% endif %}
    export none;
  };
}
{% if not s.symbol.endswith("_v6") %}
ipv4 table pt_{{ s.symbol }};
protocol static ps_{{ s.symbol }} {
  ipv4 { table pt_{{ s.symbol }}; };
  route 10.{{ n }}.1.0/24 unreachable;
  route 10.{{ n }}.2.0/24 unreachable;
  route 10.{{ n }}.99.0/24 unreachable;
}
protocol bgp pb_{{ s.symbol }} {
  local 127.{{ n }}.{{ i }}.2 as {{ p.asn }};
  neighbor 127.{{ n }}.{{ i }}.1 as {{ asn }};
  multihop;
  router id 192.0.2.{{ n * 10 + i }};
  connect delay time 1;
  ipv4 { table pt_{{ s.symbol }}; import none; export all; };
}
{% endif %}
{% endfor %}
"""

UA, UB = uid(2), uid(3)


@pytest.mark.netns
async def test_a_real_bird_readout_reaches_the_report(
    netns: Callable[[], NetNS], tmp_path: Path, fake_cp: FakeControlPlane
) -> None:
    etc, state, templates = tmp_path / "etc", tmp_path / "state", tmp_path / "templates"
    templates.mkdir()
    (templates / "peer.conf.j2").write_text(PEER_TEMPLATE)
    fakes = FakeBackends(kinds=("tunnel",))
    tunnel = fakes.tunnel
    with BirdDaemon(netns(), tmp_path / "bird").start() as daemon:
        fake_cp.set("bird-config", cp_data("h1"))
        cfg = {
            "node": {"name": "hkg1", "id": 3},
            "controlPlane": {"url": fake_cp.url, "token": "test-token", "maxRetries": 0},
            "bird": {
                "controlSocket": str(daemon.socket),
                "configDir": str(etc),
                "templateDir": str(templates),
            },
            "birdAgent": {"applyDebounce": 0},
        }
        plugins = [("bird", moenet_bird), ("fakes", fakes)]
        async with AgentHarness(cfg, plugins=plugins, state_dir=state) as h:
            ev = await h.agent.scheduler.run_now("birdConfigSync")
            assert ev.ok, ev.error
            backend = h.agent.backend("routing")
            assert isinstance(backend, BirdRoutingBackend)
            # A: one (MP-BGP) protocol importing everything. B: split v4/v6, the v4
            # half filtering one route, the v6 half with no one to talk to.
            b = session(4242420003, 3, name="filtering", mp_bgp=False, neighbor_ipv4="172.20.3.1")
            r = await backend.declare("sessions", {UA: session(4242420002, 2), UB: b})
            assert r.ok, r.error
            names = backend.fragment_protocols("sessions")
            [a_name] = names[UA]
            b4, b6 = names[UB]
            assert (b4[-3:], b6[-3:]) == ("_v4", "_v6")

            deadline = time.monotonic() + 60
            while True:  # BIRD's answers: wait for Established, converged counts, the refusal
                ps = {p.name: p for p in await backend.protocols()}
                ready = (
                    ps[a_name].routes.get("ipv4", {}).get("imported") == 3
                    and ps[b4].routes.get("ipv4", {}).get("filtered") == 1
                    and ps[b6].last_error is not None
                )
                if ready:
                    break
                assert time.monotonic() < deadline, {n: (p.info, p.routes) for n, p in ps.items()}
                await asyncio.sleep(0.2)

            ctx = h.agent.context("sessions")
            SessionStore(ctx.state).save_previous(Previous(configured={UA: configured(2), UB: configured(3)}))
            now = time.time()
            for n in (2, 3):
                tunnel.stats_by_name[f"dn42-{n}"] = TunnelStats(
                    name=f"dn42-{n}", latest_handshake=now - 5, rx_bytes=10, tx_bytes=20, endpoint=None
                )
            commands: list[str] = []
            real = backend.client.command

            async def counted(cmd: str, *a: Any, **kw: Any) -> Any:
                commands.append(cmd)
                return await real(cmd, *a, **kw)

            backend.client.command = counted  # type: ignore[method-assign]
            collector = MetricCollector(ctx)
            result = await collector.run_once()
            assert commands == ["show protocols all"], "one BIRD round-trip per run"

            assert result["reported"] is True and result["health"] == {"healthy": 1, "degraded": 1, "down": 0}
            [body] = [c.body for c in fake_cp.calls("report", "POST")]
            sa, sb = body["sessions"]
            assert (sa["uuid"], sa["state"], sa["bgpState"], sa["info"]) == (
                UA,
                "up",
                "Established",
                "Established",
            )
            assert sa["routes"] == {"ipv4": {"imported": 3, "filtered": 0, "exported": 0}}
            assert (sa["routes_imported"], sa["routes_exported"]) == (3, 0)
            assert isinstance(sa["since"], int) and abs(sa["since"] - now) < 120  # timeformat "%s"
            assert sa["health"] == {"verdict": "healthy", "reasons": []}

            assert sb["uuid"] == UB and [p["name"] for p in sb["protocols"]] == [b4, b6]
            assert sb["routes"] == {"ipv4": {"imported": 2, "filtered": 1, "exported": 0}}
            assert sb["protocols"][0]["bgp_state"] == "Established"
            assert sb["protocols"][1]["bgp_state"] in ("Idle", "Connect", "Active")
            assert sb["health"]["verdict"] == "degraded"
            first, second = sb["health"]["reasons"]
            dead = sb["protocols"][1]
            assert dead["last_error"].startswith("Socket: ")  # nobody listens (refused / reset)
            assert first == f"ipv6 session: BGP {dead['bgp_state']}: {dead['last_error']}"
            assert second == "ipv4: 1 route filtered"

            registry = h.agent.metrics.registry
            labels = {"session": UA, "asn": "4242420002", "interface": "dn42-2"}
            assert registry.get_sample_value("moenet_sessions_bgp_up", {**labels, "protocol": a_name}) == 1
            assert (
                registry.get_sample_value(
                    "moenet_sessions_routes", {**labels, "family": "ipv4", "direction": "imported"}
                )
                == 3
            )
            labels_b = {"session": UB, "asn": "4242420003", "interface": "dn42-3"}
            assert registry.get_sample_value("moenet_sessions_bgp_up", {**labels_b, "protocol": b6}) == 0
            assert registry.get_sample_value("moenet_sessions_health", labels_b) == 1
