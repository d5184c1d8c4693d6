"""The ``birdRouteRefresh`` task without BIRD: which sessions, how spread, what is
counted. The real ``reload bgp in`` runs in ``tests/component/test_bird_roa_netns.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import moenet_bird
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.config import BirdConfig
from moenet_bird.protocol import BirdProtocol, Reply, ReplyLine
from moenet_bird.refresh import TASK_NAME, RouteRefresh

from moenet_core.config import build_config
from moenet_core.testing import ManualClock, plugin_context


def proto(name: str, bgp_state: str | None = "Established", kind: str = "BGP") -> BirdProtocol:
    return BirdProtocol(
        name=name, proto=kind, table=None, state="up", since=None, info="", bgp_state=bgp_state
    )


class FakeClient:
    def __init__(self, protocols: list[BirdProtocol], clock: ManualClock) -> None:
        self._protocols = protocols
        self.clock = clock
        self.sent: list[tuple[float, str]] = []

    async def protocols(self) -> list[BirdProtocol]:
        return self._protocols

    async def command(self, command: str, *, check: bool = True, timeout: float | None = None) -> Reply:
        self.sent.append((self.clock.monotonic(), command))
        if command.endswith("dn42_2_gone"):
            return Reply((ReplyLine(8006, "dn42_2_gone: not reloading, not up"), ReplyLine(0, "")))
        return Reply((ReplyLine(15, f"{command.split()[-1]}.ipv4: reloading"), ReplyLine(0, "")))


async def test_refreshes_established_ebgp_sessions_spread_over_the_window(tmp_path: Path) -> None:
    clock = ManualClock()
    backend = BirdRoutingBackend(BirdClient(str(tmp_path / "no.ctl")), str(tmp_path / "etc"))
    fake = FakeClient(
        [
            proto("dn42_1_a"),
            proto("dn42_2_gone"),
            proto("dn42_3_b_v4"),
            proto("dn42_4_idle", bgp_state="Active"),
            proto("ibgp_tyo1_4"),  # internal: not refreshed
            proto("rpki_akae", None, "RPKI"),
            proto("operator_bgp"),  # not the agent's
        ],
        clock,
    )
    backend.client = fake  # type: ignore[assignment]
    ctx = plugin_context(
        "bird",
        state_dir=tmp_path / "state",
        section=BirdConfig(route_refresh_spread=300),
        backends={"routing": backend},
        clock=clock,
    )
    task = RouteRefresh(ctx)
    run = asyncio.ensure_future(task.run_once())
    while not run.done():
        await clock.advance(10)
    result = run.result()
    assert [c for _, c in fake.sent] == [
        "reload bgp in dn42_1_a",
        "reload bgp in dn42_2_gone",
        "reload bgp in dn42_3_b_v4",
    ]
    times = [t for t, _ in fake.sent]
    assert times[1] - times[0] == 100 and times[2] - times[1] == 100  # 300 s over 3 sessions
    assert result["refreshed"] == 2 and "not up" in result["failed"]["dn42_2_gone"]
    counted = task._m_refreshes
    assert counted.labels(result="sent")._value.get() == 2
    assert counted.labels(result="failed")._value.get() == 1


def test_task_is_daily_and_has_an_off_switch() -> None:
    raw = {
        "node": {"name": "n", "id": 1},
        "controlPlane": {"url": "https://cp.example", "token": "test-token-123"},
    }
    config, _ = build_config(raw, env={})
    spec = {t.name: t for t in moenet_bird.moenet_tasks(config)}[TASK_NAME]
    assert spec.interval == 86400.0 and spec.timeout is not None and spec.timeout > 3600
    raw["tasks"] = {TASK_NAME: {"enabled": False}}
    config, _ = build_config(raw, env={})
    assert config.tasks[TASK_NAME].enabled is False
