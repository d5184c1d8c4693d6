"""Node health: plugins report ``HealthCheck``s; /status, the metric and the heartbeat show the worst."""

from __future__ import annotations

import attrs
import moenet_heartbeat
import pytest

from moenet_core import HealthCheck, gather_health, health_summary, hookimpl

TOKEN = "secret-token"


def node_config(cp_url: str) -> dict:
    return {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": cp_url, "token": TOKEN},
        "state": {"directory": "STATE"},
    }


class Roa:
    def __init__(self, verdict: str, reason: str = "") -> None:
        self.verdict, self.reason = verdict, reason

    @hookimpl
    def moenet_health_checks(self):
        return [HealthCheck(name="bird.roa", verdict=self.verdict, reason=self.reason)]


class Host:
    @hookimpl
    def moenet_health_checks(self):
        yield HealthCheck(name="host.forwarding", verdict="healthy")


class Broken:
    @hookimpl
    def moenet_health_checks(self):
        raise RuntimeError("boom")


def test_a_check_refuses_an_unknown_verdict_and_a_bad_name() -> None:
    with pytest.raises(ValueError, match="verdict"):
        HealthCheck(name="bird.roa", verdict="sad")
    with pytest.raises(ValueError, match="check name"):
        HealthCheck(name="Bird roa", verdict="healthy")


def test_the_summary_is_the_worst_check_with_the_reasons_of_the_bad_ones() -> None:
    checks = gather_health(
        [
            ("host", [HealthCheck(name="host.rp_filter", verdict="degraded", reason="rp_filter=1 on dn42*")]),
            ("bird", HealthCheck(name="bird.roa", verdict="down", reason="ROA tables empty")),
            ("x", [HealthCheck(name="bird.roa", verdict="healthy")]),  # repeated name: the first is kept
            ("y", ["not a check"]),
        ]
    )
    assert [(c.name, c.plugin) for c in checks] == [("bird.roa", "bird"), ("host.rp_filter", "host")]
    summary = health_summary(checks)
    assert summary["verdict"] == "down"
    assert summary["reasons"] == ["bird.roa: ROA tables empty", "host.rp_filter: rp_filter=1 on dn42*"]
    assert health_summary([])["verdict"] == "healthy"


async def test_status_metric_and_heartbeat_show_node_health(fake_cp, agent_harness, tmp_path) -> None:
    cfg = node_config(fake_cp.url)
    cfg["state"]["directory"] = str(tmp_path)
    roa = Roa("degraded", "no RTR cache answers; static ROA file is 3 days old")
    plugins = [("roa", roa), ("host", Host()), ("broken", Broken()), ("heartbeat", moenet_heartbeat)]
    async with agent_harness(cfg, plugins=plugins) as h:
        [req] = await fake_cp.wait_for("heartbeat")
        status = h.agent.status()
        registry = h.agent.metrics.registry
        degraded = registry.get_sample_value("moenet_health_check", {"check": "bird.roa", "plugin": "roa"})
        healthy = registry.get_sample_value(
            "moenet_health_check", {"check": "host.forwarding", "plugin": "host"}
        )
        roa.verdict, roa.reason = "healthy", ""
        after = h.agent.status()["health"]
        recovered = registry.get_sample_value("moenet_health_check", {"check": "bird.roa", "plugin": "roa"})
    health = status["health"]
    assert health["verdict"] == "degraded"
    assert health["reasons"] == ["bird.roa: no RTR cache answers; static ROA file is 3 days old"]
    assert [c["name"] for c in health["checks"]] == ["bird.roa", "host.forwarding"]
    assert req.body["status"]["health"]["verdict"] == "degraded"
    assert (degraded, healthy, recovered) == (1, 0, 0)
    assert after["verdict"] == "healthy" and after["reasons"] == []
    assert attrs.asdict(HealthCheck(name="a", verdict="down"))["plugin"] == ""
