"""``ibgpSync`` through the real agent core: FakeControlPlane, the ``bird`` plugin, a real BIRD 3.

BIRD runs in a namespace (``moenet_bird.testing.BirdDaemon``); runs are
triggered with ``scheduler.run_now`` (the start-up runs are done by then: a
trigger during a run is served by one extra run after it). What the task did
is read from BIRD (protocols), the files, the backend's configure counter and a
count of the task's declares.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import moenet_bird
import moenet_ibgp
import pytest
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.sync import TASK_NAME as BIRD_TASK
from moenet_bird.testing import BirdDaemon, sample_bird_config
from moenet_ibgp import TASK_NAME

from moenet_core.testing import AgentHarness, FakeControlPlane, NetNS

V6 = "fd42:4242:1234::"
PLUGINS = [("bird", moenet_bird), ("ibgp", moenet_ibgp)]


def me(**kw: Any) -> dict[str, Any]:
    """hkg1's own entry (node 3 in sample_bird_config)."""
    return {"nodeId": 3, "nodeName": "hkg1", "loopbackIpv4": "172.20.42.1", "loopbackIpv6": V6 + "1", **kw}


def peer(node_id: int, name: str, *, rr: bool = False, v4only: bool = False) -> dict[str, Any]:
    e: dict[str, Any] = {"nodeId": node_id, "nodeName": name, "isRr": rr}
    e["loopbackIpv4"] = f"172.20.42.{node_id % 200 + 2}"
    if not v4only:
        e["loopbackIpv6"] = f"{V6}{node_id:x}"
    return e


TYO1 = peer(4, "tyo1", rr=True)
SIN1 = peer(1005, "sin1")
V4ONLY = peer(6, "v4only", v4only=True)
HOSTILE = [
    {"nodeId": 7, "nodeName": 'evil"; } protocol bgp x {', "loopbackIpv6": V6 + "7"},
    {"nodeId": 8, "nodeName": "scoped", "loopbackIpv6": "fd42::8%eth0"},
    {"nodeId": "9", "nodeName": "strid", "loopbackIpv6": V6 + "9"},
]


def answer(peers: list[dict[str, Any]] | None) -> dict[str, Any]:
    data = sample_bird_config()
    data["ibgpPeers"] = copy.deepcopy(peers)
    return data


def config(fake_cp: FakeControlPlane, daemon: BirdDaemon, tmp: Path, **ibgp: Any) -> dict[str, Any]:
    etc = tmp / "etc"
    return {
        "node": {"name": "hkg1", "id": 3},
        "controlPlane": {"url": fake_cp.url, "token": "test-token", "maxRetries": 0},
        "bird": {
            "controlSocket": str(daemon.socket),
            "configDir": str(etc),
        },
        "birdAgent": {"applyDebounce": 0},
        "ibgp": ibgp,
        "state": {"directory": str(tmp / "state")},
    }


class Run:
    """One started agent: its backend, a declare counter, helpers."""

    def __init__(self, h: AgentHarness, etc: Path) -> None:
        self.h = h
        self.etc = etc
        backend = h.agent.backend("routing")
        assert isinstance(backend, BirdRoutingBackend)
        self.backend = backend
        self.declares = 0
        real = backend.declare

        async def counted(owner: str, fragments: Any) -> Any:
            if owner == "ibgp":
                self.declares += 1
            return await real(owner, fragments)

        backend.declare = counted  # type: ignore[method-assign]

    async def bird(self) -> None:
        ev = await self.h.agent.scheduler.run_now(BIRD_TASK)
        assert ev.ok, ev.error

    async def sync(self) -> Any:
        return await self.h.agent.scheduler.run_now(TASK_NAME)

    @property
    def configures(self) -> int:
        return self.backend.applier.stats.configures

    async def ibgp_protocols(self) -> set[str]:
        return {p.name for p in await self.backend.protocols() if p.name.startswith("ibgp_")}

    def files(self) -> dict[str, str]:
        d = self.etc / "ibgp"
        return {p.name: p.read_text() for p in sorted(d.glob("ibgp_*.conf"))} if d.exists() else {}

    def info(self) -> dict[str, Any]:
        [plugin] = [p for p in self.h.agent.status()["plugins"] if p["name"] == "ibgp"]
        return plugin["info"]  # type: ignore[no-any-return]


@pytest.fixture
def daemon(netns: Callable[[], NetNS], tmp_path: Path) -> Any:
    with BirdDaemon(netns(), tmp_path / "bird").start() as d:
        yield d


@pytest.mark.netns
async def test_ibgp_sync_topology_changes_and_cp_failures(
    daemon: BirdDaemon, tmp_path: Path, fake_cp: FakeControlPlane
) -> None:
    fake_cp.set("bird-config", answer([me(isRr=True), TYO1, SIN1, V4ONLY, *HOSTILE]))
    async with AgentHarness(
        config(fake_cp, daemon, tmp_path), plugins=PLUGINS, state_dir=tmp_path / "s"
    ) as h:
        r = Run(h, tmp_path / "etc")
        await r.bird()  # hostile ibgpPeers do not cost the node its BIRD policy
        ev = await r.sync()
        assert ev.ok, ev.error

        # A route reflector: every other node, rr client towards the non-RRs.
        assert await r.ibgp_protocols() == {"ibgp_tyo1_4", "ibgp_sin1_1005", "ibgp_v4only_6"}
        files = r.files()
        assert "rr client;" in files["ibgp_sin1_1005.conf"] and "rr client;" in files["ibgp_v4only_6.conf"]
        assert "rr client;" not in files["ibgp_tyo1_4.conf"]
        assert "evil" not in "".join(p.read_text() for p in (tmp_path / "etc").rglob("*.conf"))
        info = r.info()
        assert info["routeReflector"] is True and info["nodes"] == 3 and info["source"] == "bird-config"
        assert sorted(info["invalid"]) == [
            "ibgpPeers[4] (node 7)",
            "ibgpPeers[5] (node 8)",
            "ibgpPeers[6] (strid)",
        ]
        assert [p["nodeId"] for p in info["peers"]] == [4, 6, 1005]
        sample = h.agent.metrics.registry.get_sample_value
        assert (sample("moenet_ibgp_peers"), sample("moenet_ibgp_invalid_peers")) == (3, 3)
        assert dict(r.backend.fragment_protocols("ibgp")) == {
            "4": ("ibgp_tyo1_4",),
            "1005": ("ibgp_sin1_1005",),
            "6": ("ibgp_v4only_6",),
        }

        # Unchanged answer: no declare, no configure.
        declares, configures = r.declares, r.configures
        ev = await r.sync()
        assert ev.ok and ev.result["changed"] is False
        assert (r.declares, r.configures) == (declares, configures)

        # Now a client (own isRr false): only the route reflector, in one configure.
        fake_cp.set("bird-config", answer([me(isRr=False), TYO1, SIN1, V4ONLY]))
        ev = await r.sync()
        assert ev.ok and ev.result["changed"] is True and ev.result["routeReflector"] is False
        assert await r.ibgp_protocols() == {"ibgp_tyo1_4"}
        assert list(r.files()) == ["ibgp_tyo1_4.conf"] and "rr client;" not in r.files()["ibgp_tyo1_4.conf"]
        assert r.configures == configures + 1 and r.info()["invalid"] == {}

        # No route reflector left: full mesh, nobody an rr client.
        fake_cp.set("bird-config", answer([me(), {**TYO1, "isRr": False}, SIN1, V4ONLY]))
        assert (await r.sync()).ok
        assert await r.ibgp_protocols() == {"ibgp_tyo1_4", "ibgp_sin1_1005", "ibgp_v4only_6"}
        assert not any("rr client;" in t for t in r.files().values())

        # CP down, CP error envelope, an answer without ibgpPeers: the peers stay, nothing declared.
        # Unreachable is not an error of the answer: the last valid one is served (as for
        # sessions and mesh); a refused or unusable answer fails the run.
        declares, configures = r.declares, r.configures
        fake_cp.fail("bird-config", status=503)
        ev = await r.sync()
        assert ev.ok and ev.result["answer"] == "saved"
        assert (
            "unreachable" in ev.result["problem"] and "serving the last valid answer" in ev.result["problem"]
        )
        fake_cp.fail("bird-config", status=200, body={"code": 500, "message": "db down", "data": None})
        ev = await r.sync()
        assert not ev.ok and "refused" in str(ev.error)
        broken = sample_bird_config()
        del broken["ibgpPeers"]
        fake_cp.set("bird-config", broken)
        ev = await r.sync()
        assert not ev.ok and "has no ibgpPeers" in str(ev.error)
        assert r.info()["lastError"] in str(ev.error)
        assert (r.declares, r.configures) == (declares, configures)
        assert await r.ibgp_protocols() == {"ibgp_tyo1_4", "ibgp_sin1_1005", "ibgp_v4only_6"}

        # One node leaves (within the guard): its session goes, in one configure.
        fake_cp.set("bird-config", answer([me(), {**TYO1, "isRr": False}, SIN1]))
        ev = await r.sync()
        assert ev.ok and ev.result["guard"]["refused"] is False
        assert await r.ibgp_protocols() == {"ibgp_tyo1_4", "ibgp_sin1_1005"}
        assert r.configures == configures + 1 and r.info()["lastError"] is None


def full_mesh(n: int) -> list[dict[str, Any]]:
    return [me(), *(peer(1000 + i, f"node{i}") for i in range(n))]


@pytest.mark.netns
async def test_guard_persistence_restart_and_override(
    daemon: BirdDaemon, tmp_path: Path, fake_cp: FakeControlPlane
) -> None:
    all4 = {f"ibgp_node{i}_{1000 + i}" for i in range(4)}
    fake_cp.set("bird-config", answer(full_mesh(4)))
    cfg = config(fake_cp, daemon, tmp_path)
    async with AgentHarness(cfg, plugins=PLUGINS, state_dir=tmp_path / "s") as h:
        r = Run(h, tmp_path / "etc")
        await r.bird()
        assert (await r.sync()).ok
        assert await r.ibgp_protocols() == all4

        # An answer dropping every node: refused, the sessions stay.
        fake_cp.set("bird-config", answer([me()]))
        ev = await r.sync()
        assert ev.ok and ev.result["guard"]["refused"] is True
        assert await r.ibgp_protocols() == all4
        guard = r.info()["guard"]
        assert guard["refused"] and guard["withheld"] == ["1000", "1001", "1002", "1003"]
        assert guard["configured"] == 4 and "would remove 4 of 4 iBGP nodes" in guard["reason"]
        assert h.agent.metrics.registry.get_sample_value("moenet_ibgp_guard_refused") == 1
        digest = guard["digest"]

        # A null list (a Go nil slice) is the same removal: still refused.
        fake_cp.set("bird-config", answer(None))
        assert (await r.sync()).result["guard"]["digest"] == digest
        assert await r.ibgp_protocols() == all4

    # Restarted, the same answer: the saved list is what the guard compares with, still refused.
    async with AgentHarness(cfg, plugins=PLUGINS, state_dir=tmp_path / "s") as h:
        r = Run(h, tmp_path / "etc")
        ev = await r.sync()
        assert ev.ok and ev.result["guard"]["refused"] is True and ev.result["guard"]["digest"] == digest
        assert await r.ibgp_protocols() == all4 and r.configures == 0

    # Restarted with the CP down: the saved answer is served, the guard (against the saved
    # nodes) still withholds the removal, so the saved nodes are declared again, BIRD untouched.
    fake_cp.fail("bird-config", times=100, status=503)
    async with AgentHarness(cfg, plugins=PLUGINS, state_dir=tmp_path / "s") as h:
        r = Run(h, tmp_path / "etc")
        ev = await r.sync()
        assert ev.ok and "serving the last valid answer" in ev.result["problem"]
        assert ev.result["guard"]["refused"] is True
        assert r.configures == 0
        assert dict(r.backend.fragment_protocols("ibgp")).keys() == {"1000", "1001", "1002", "1003"}
        assert await r.ibgp_protocols() == all4
    fake_cp._queued.clear()  # the CP is back

    # The operator allows exactly that removal: the sessions go.
    cfg = config(fake_cp, daemon, tmp_path, allowRemoval=digest)
    async with AgentHarness(cfg, plugins=PLUGINS, state_dir=tmp_path / "s") as h:
        r = Run(h, tmp_path / "etc")
        await r.bird()
        ev = await r.sync()  # the start-up run may have done it already: then nothing is left to remove
        assert ev.ok and (ev.result["guard"] is None or ev.result["guard"]["overridden"] is True)
        assert await r.ibgp_protocols() == set()
        assert r.files() == {} and r.info()["nodes"] == 0


@pytest.mark.netns
async def test_role_from_config_and_disabled(
    daemon: BirdDaemon, tmp_path: Path, fake_cp: FakeControlPlane
) -> None:
    # No own entry in the list: the config's routeReflector decides.
    fake_cp.set("bird-config", answer([TYO1, SIN1]))
    cfg = config(fake_cp, daemon, tmp_path, routeReflector=True)
    async with AgentHarness(cfg, plugins=PLUGINS, state_dir=tmp_path / "s") as h:
        r = Run(h, tmp_path / "etc")
        await r.bird()
        ev = await r.sync()
        assert ev.ok and ev.result["routeReflector"] is True
        assert "rr client;" in r.files()["ibgp_sin1_1005.conf"]
        # The CP's own entry wins over the config.
        fake_cp.set("bird-config", answer([me(isRr=False), TYO1, SIN1]))
        ev = await r.sync()
        assert ev.ok and ev.result["routeReflector"] is False
        assert await r.ibgp_protocols() == {"ibgp_tyo1_4"}

    # Switched off: every iBGP session the agent made goes.
    cfg = config(fake_cp, daemon, tmp_path, enabled=False)
    async with AgentHarness(cfg, plugins=PLUGINS, state_dir=tmp_path / "s") as h:
        r = Run(h, tmp_path / "etc")
        await r.bird()
        ev = await r.sync()
        assert ev.ok and ev.result == {"enabled": False, "peers": 0, "changed": ev.result["changed"]}
        assert await r.ibgp_protocols() == set() and r.files() == {}
        assert r.info()["enabled"] is False
