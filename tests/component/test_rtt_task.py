"""``rttMeasurement`` end to end: a real agent core, real ICMP, a fake CP.

The agent, its fake control plane and the prober's raw sockets all live in
namespace A (``with a.entered()``), joined to B by a veth pair; a test plugin
offers links over that veth (and a broken one) through ``moenet_link_targets``
and records what ``moenet_link_latency`` announces. Runs are driven with
``scheduler.run_now`` on a manual clock (the task's own schedule never fires).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import attrs
import moenet_rtt
import pytest
from loguru import logger
from moenet_rtt.config import RttConfig
from moenet_rtt.task import RttMeasurement

from moenet_core import hookimpl
from moenet_core.config import build_config
from moenet_core.descriptors import LinkLatency, LinkTarget
from moenet_core.testing import AgentHarness, FakeControlPlane, ManualClock, NetNS, plugin_context, veth_pair
from moenet_core.testing.netns import have_root

pytestmark = pytest.mark.netns

ASN = "4242420001"
PEER = LinkTarget(
    owner="sessions",
    key="uuid-1",
    interface="va1",
    addresses=("fe80::b1", "fd72:1::2", "10.72.1.2"),
    labels={"asn": ASN, "region": "eu", "tier": "9"},  # "tier" may not override the body's
)
SILENT = LinkTarget(owner="mesh", key="node-2", interface="va1", addresses=("10.72.1.77",))
BROKEN = LinkTarget(owner="sessions", key="uuid-3", interface="nonexistent0", addresses=("10.72.1.2",))


def labels(t: LinkTarget) -> dict[str, str]:
    return {"owner": t.owner, "key": t.key, "interface": t.interface, "asn": t.labels.get("asn", "")}


class Links:
    """A plugin offering links and recording every RTT round it is told about."""

    def __init__(self, *targets: LinkTarget) -> None:
        self.targets = list(targets)
        self.rounds: list[tuple[LinkLatency, ...]] = []

    @hookimpl
    def moenet_link_targets(self) -> list[LinkTarget]:
        return list(self.targets)

    @hookimpl
    def moenet_link_latency(self, measurements: tuple[LinkLatency, ...]) -> None:
        self.rounds.append(measurements)

    def last(self) -> dict[str, LinkLatency]:
        return {f"{m.owner}/{m.key}": m for m in self.rounds[-1]}


@pytest.fixture(scope="module")
def topo() -> Iterator[tuple[NetNS, NetNS]]:
    if not have_root():
        pytest.fail("this test needs root (network namespaces, raw sockets)")
    a, b = NetNS("rtt"), NetNS("rtt")
    try:
        veth_pair(a, b, "va1", "vb1")
        for ns, addrs in (
            (a, ["10.72.1.1/24", "fd72:1::1/64", "fe80::a1/64"]),
            (b, ["10.72.1.2/24", "fd72:1::2/64", "fe80::b1/64"]),
        ):
            ifname = "va1" if ns is a else "vb1"
            for addr in addrs:
                extra = [] if "." in addr else ["nodad"]
                ns.run("ip", "addr", "add", addr, "dev", ifname, *extra)
        yield a, b
    finally:
        a.remove()
        b.remove()


class Run:
    def __init__(self, h: AgentHarness, cp: FakeControlPlane, links: Links, clock: ManualClock) -> None:
        self.h, self.cp, self.links, self.clock = h, cp, links, clock

    @property
    def state_file(self) -> Path:
        return Path(self.h.agent.config.state.directory) / "plugins" / "rtt" / "links.json"

    async def run(self) -> dict[str, Any]:
        ev = await self.h.agent.scheduler.run_now("rttMeasurement")
        assert ev.ok, ev.error
        assert isinstance(ev.result, dict)
        return ev.result

    def metric(self, name: str, target: LinkTarget) -> float | None:
        return self.h.agent.metrics.registry.get_sample_value(f"moenet_rtt_{name}", labels(target))

    def reports(self) -> list[dict[str, Any]]:
        return [c.body for c in self.cp.calls("rtt", "POST")]

    def info(self) -> dict[str, Any]:
        [rtt] = [p for p in self.h.agent.status()["plugins"] if p["name"] == "rtt"]
        return rtt["info"]  # type: ignore[no-any-return]


@asynccontextmanager
async def agent(topo: tuple[NetNS, NetNS], tmp_path: Path, links: Links, **rtt: Any) -> AsyncIterator[Run]:
    a, _b = topo
    clock = ManualClock()
    with a.entered():
        async with FakeControlPlane() as cp:
            cfg = {
                "node": {"name": "rtt1", "id": 1},
                "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
                "rtt": {"count": 2, "timeoutMs": 300, **rtt},
            }
            plugins = [("rtt", moenet_rtt), ("links", links)]
            async with AgentHarness(cfg, plugins=plugins, state_dir=tmp_path / "state", clock=clock) as h:
                assert h.agent.pm.records["rtt"].status == "active", h.agent.pm.records["rtt"].error
                yield Run(h, cp, links, clock)


async def test_round_reports_announces_and_exports(topo, tmp_path):
    links = Links(PEER, SILENT, BROKEN)
    async with agent(topo, tmp_path, links) as r:
        assert r.reports() == []  # the schedule's first run is 60 s away
        summary = await r.run()
        assert summary["links"] == 3 and summary["answered"] == 1 and summary["reported"] is True
        assert summary["tierChanges"] == ["sessions/uuid-1"]
        assert "no such interface" in summary["errors"]["sessions/uuid-3"]

        # The CP got the Go agent's body, extended per link.
        [body] = r.reports()
        assert body["timestamp"] == int(r.clock.time())
        peer, silent, broken = body["measurements"]
        assert list(peer)[:3] == ["target", "rtt_ms", "loss"]
        assert peer["target"] == "fe80::b1" and peer["loss"] == 0.0
        assert isinstance(peer["rtt_ms"], float) and 0 < peer["rtt_ms"] < 300
        assert (peer["owner"], peer["key"], peer["interface"]) == ("sessions", "uuid-1", "va1")
        assert (peer["tier"], peer["asn"], peer["region"]) == (1, ASN, "eu")
        assert silent == {
            "target": "10.72.1.77",
            "rtt_ms": -1.0,
            "loss": 100.0,
            "owner": "mesh",
            "key": "node-2",
            "interface": "va1",
            "tier": None,
        }
        assert (broken["rtt_ms"], broken["loss"], broken["tier"]) == (-1.0, 100.0, None)

        # Every owner heard about the round; the first answer set the tier (a change).
        got = links.last()
        assert got["sessions/uuid-1"].tier == 1 and got["sessions/uuid-1"].tier_changed
        assert got["sessions/uuid-1"].target == "fe80::b1" and got["sessions/uuid-1"].rtt_ms is not None
        assert got["mesh/node-2"].tier is None and not got["mesh/node-2"].tier_changed
        assert got["mesh/node-2"].target is None and got["mesh/node-2"].loss == 100.0

        # Prometheus.
        rtt = r.metric("rtt_seconds", PEER)
        assert rtt is not None and rtt == pytest.approx(peer["rtt_ms"] / 1000, abs=1e-6)
        assert r.metric("loss_ratio", PEER) == 0.0 and r.metric("latency_tier", PEER) == 1.0
        assert r.metric("loss_ratio", SILENT) == 1.0
        assert r.metric("rtt_seconds", SILENT) is None and r.metric("latency_tier", SILENT) is None

        # /status.
        info = r.info()
        assert info["lastRun"] == r.clock.time()
        assert info["links"]["sessions/uuid-1"]["target"] == "fe80::b1"
        assert "no such interface" in info["links"]["sessions/uuid-3"]["error"]

        # Persisted: only the link that has a tier.
        saved = json.loads(r.state_file.read_text())
        assert list(saved["links"]) == ["sessions/uuid-1"] and saved["links"]["sessions/uuid-1"]["tier"] == 1

        # Second round: same tier, no change announced.
        await r.run()
        assert links.last()["sessions/uuid-1"].tier == 1
        assert not any(m.tier_changed for m in links.rounds[-1])

        # The peer goes silent: a lost round keeps the tier and does not touch the file.
        before = os.stat(r.state_file)
        links.targets[0] = attrs.evolve(PEER, addresses=("10.72.1.66",))
        await r.run()
        lost = links.last()["sessions/uuid-1"]
        assert (lost.tier, lost.tier_changed, lost.rtt_ms, lost.loss) == (1, False, None, 100.0)
        after = os.stat(r.state_file)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert r.metric("rtt_seconds", PEER) is None and r.metric("latency_tier", PEER) == 1.0
        assert r.reports()[-1]["measurements"][0]["tier"] == 1

        # Links no longer offered lose their metrics and their saved state.
        links.targets = [SILENT]
        await r.run()
        assert r.metric("loss_ratio", PEER) is None and r.metric("latency_tier", PEER) is None
        assert r.metric("loss_ratio", SILENT) == 1.0
        assert json.loads(r.state_file.read_text())["links"] == {}
        assert list(r.info()["links"]) == ["mesh/node-2"]


async def test_tiers_survive_a_restart_and_move_with_hysteresis(topo, tmp_path):
    state = tmp_path / "state" / "plugins" / "rtt"
    state.mkdir(parents=True)
    (state / "links.json").write_text(
        json.dumps(
            {
                "version": 1,
                "links": {
                    "sessions/uuid-1": {"tier": 5, "ewma": 100.0, "pending": None, "count": 0},
                    "sessions/gone": {"tier": 2, "ewma": 5.0, "pending": None, "count": 0},
                },
            }
        )
    )
    links = Links(PEER)
    async with agent(topo, tmp_path, links, ewmaAlpha=1.0, confirmRounds=2) as r:
        await r.run()
        first = links.last()["sessions/uuid-1"]
        # The saved tier holds: a sub-millisecond round only proposes tier 1 ...
        assert (first.tier, first.tier_changed) == (5, False)
        assert r.metric("latency_tier", PEER) == 5.0
        saved = json.loads((state / "links.json").read_text())["links"]
        assert list(saved) == ["sessions/uuid-1"]  # the link no longer offered is pruned
        assert (saved["sessions/uuid-1"]["tier"], saved["sessions/uuid-1"]["pending"]) == (5, 1)
        # ... and the second round in a row confirms it.
        await r.run()
        second = links.last()["sessions/uuid-1"]
        assert (second.tier, second.tier_changed) == (1, True)
        assert r.metric("latency_tier", PEER) == 1.0
        assert json.loads((state / "links.json").read_text())["links"]["sessions/uuid-1"]["tier"] == 1


async def test_a_cp_failure_does_not_lose_the_round(topo, tmp_path):
    links = Links()
    async with agent(topo, tmp_path, links) as r:
        # No links: nothing to announce, nothing to report.
        summary = await r.run()
        assert summary["links"] == 0 and summary["reported"] is False
        assert r.reports() == [] and links.rounds == []

        links.targets = [PEER]
        r.cp.fail("rtt", 1, status=503)
        summary = await r.run()  # the run itself still succeeds
        assert summary["reported"] is False and summary["tierChanges"] == ["sessions/uuid-1"]
        assert len(r.cp.calls("rtt")) == 1
        assert links.last()["sessions/uuid-1"].tier_changed
        assert json.loads(r.state_file.read_text())["links"]["sessions/uuid-1"]["tier"] == 1
        assert r.metric("latency_tier", PEER) == 1.0
        assert "503" in r.info()["reportError"]

        summary = await r.run()
        assert summary["reported"] is True and summary["tierChanges"] == []
        assert len(r.reports()) == 2 and r.info()["reportError"] is None


# ------------------------------------------------------------- the plugin


def test_task_spec_and_entry_point():
    config, _ = build_config(
        {"node": {"name": "n"}, "controlPlane": {"url": "http://cp", "token": "t-123456"}}
    )
    [spec] = moenet_rtt.moenet_tasks(config)
    assert (spec.name, spec.interval, spec.initial_delay) == ("rttMeasurement", 300.0, 60.0)
    assert spec.timeout is not None and spec.timeout < spec.interval and spec.factory is RttMeasurement
    [section] = moenet_rtt.moenet_config_sections()
    assert (section.name, section.type) == ("rtt", RttConfig)
    assert [e.value for e in entry_points(group="moenet") if e.name == "rtt"] == ["moenet_rtt"]


def test_config_defaults_and_checks():
    cfg = RttConfig()
    # Probe settings default to the Go agent's metric defaults.
    assert cfg.probe_settings() == (4, 5.0, 32)
    own = RttConfig(count=3, timeout_ms=250, concurrency=8)
    assert own.probe_settings() == (3, 0.25, 8)
    assert (cfg.hysteresis, cfg.confirm_rounds, cfg.ewma_alpha) == (0.2, 2, 0.3)
    for bad in ({"count": 0}, {"timeout_ms": 5}, {"concurrency": 0}, {"hysteresis": 1.0}, {"ewma_alpha": 0}):
        with pytest.raises(ValueError):
            RttConfig(**bad)


async def test_bad_config_is_reported_with_paths(tmp_path):
    cfg = {
        "node": {"name": "rtt1", "id": 1},
        "controlPlane": {"url": "http://127.0.0.1:9", "token": "t-123456"},
        "rtt": {"count": 0, "timeoutMs": "2000", "hysteresis": 1.5, "confirmRounds": 3, "ewmaAlpha": 2},
    }
    plugins = [("rtt", moenet_rtt)]
    async with AgentHarness(cfg, plugins=plugins, state_dir=tmp_path / "state", clock=ManualClock()) as h:
        record = h.agent.pm.records["rtt"]
        tasks = [t["name"] for t in h.agent.status()["tasks"]]
    assert record.status == "failed"
    error = record.error or ""
    for path in ("rtt.count", "rtt.timeoutMs", "rtt.hysteresis", "rtt.ewmaAlpha"):
        assert path in error, error
    assert "rtt.confirmRounds" not in error
    assert tasks == []


# ------------------------------------------------------------- the state file


def rtt_task(state: Path) -> RttMeasurement:
    """The task on a plugin context (no agent running, no probing)."""
    return RttMeasurement(plugin_context("rtt", state_dir=state, section=RttConfig()))


def write_links(state: Path, doc: dict[str, Any]) -> Path:
    path = state / "plugins" / "rtt" / "links.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    return path


def snapshot(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


SAVED = {"tier": 5, "ewma": 100.0, "pending": 1, "count": 1}


@pytest.mark.parametrize("version", [{"version": 1}, {}])  # the previous version's file; a hand-written one
def test_saved_tiers_load_and_an_unchanged_round_writes_nothing(
    tmp_path: Path, version: dict[str, int]
) -> None:
    path = write_links(tmp_path, {**version, "links": {"sessions/uuid-1": SAVED, "mesh/bad": {"tier": 12}}})
    before = snapshot(path)
    task = rtt_task(tmp_path)
    assert {k: s.to_json() for k, s in task.states().items()} == {"sessions/uuid-1": SAVED}
    task._save()  # what the end of a round does
    assert snapshot(path) == before
    task._states.pop("sessions/uuid-1")
    task._save()
    assert json.loads(path.read_text()) == {"version": 1, "links": {}}


def test_a_newer_or_corrupt_state_file_is_not_read(tmp_path: Path) -> None:
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING", format="{message}")
    try:
        newer = write_links(tmp_path / "a", {"version": 2, "links": {"sessions/uuid-1": SAVED}})
        assert rtt_task(tmp_path / "a").states() == {}
        assert newer.read_text() == json.dumps({"version": 2, "links": {"sessions/uuid-1": SAVED}})
        write_links(tmp_path / "b", {"version": 1, "tiers": {}})
        assert rtt_task(tmp_path / "b").states() == {}
    finally:
        logger.remove(sink)
    [v2, nolinks] = [m for m in seen if "ignoring the saved tiers" in m]
    assert "version 2" in v2 and str(newer) in v2
    assert "links" in nolinks
