"""Mesh latency tiers on iBGP: the ``ibgp`` plugin takes the RTT plugin's tiers of
the mesh links and declares them as each neighbour's ``latency`` (root-free)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import moenet_ibgp
import pytest
from moenet_bird.policy import validate_neighbor
from moenet_bird.render import render_tree
from moenet_bird.testing import sample_bird_config, unchecked_intent
from moenet_ibgp.model import Node, mesh_tiers, sessions
from moenet_ibgp.task import LATENCY_FILE, IbgpSync

from moenet_core import LinkLatency
from moenet_core.intents import IbgpNeighborIntent
from moenet_core.testing import FakeBackends, StubControlPlane, plugin_context

V6 = "fd42:4242:1234::"
ME = {"nodeId": 3, "nodeName": "hkg1", "loopbackIpv4": "172.20.42.1", "loopbackIpv6": V6 + "1"}
TYO1 = {"nodeId": 4, "nodeName": "tyo1", "loopbackIpv6": V6 + "4"}
SIN1 = {"nodeId": 5, "nodeName": "sin1", "loopbackIpv6": V6 + "5"}


def measured(owner: str, key: str, tier: int | None, *, changed: bool = False) -> LinkLatency:
    return LinkLatency(
        owner=owner,
        key=key,
        interface=f"mesh-{key}",
        target="fe80::1",
        rtt_ms=10.0,
        loss=0.0,
        tier=tier,
        measured_at=1.0,
        tier_changed=changed,
    )


def test_mesh_tiers_take_only_mesh_links_with_a_valid_tier() -> None:
    round_ = (
        measured("mesh", "4", 3),
        measured("mesh", "5", None),  # never answered
        measured("sessions", "6", 2),  # an eBGP session, not a node
        measured("mesh", "x7", 2),  # not a node id
        measured("mesh", "٨", 2),  # a digit, but not ASCII
        measured("mesh", "9", 10),  # out of range
        measured("mesh", "0", 2),  # no node 0
    )
    assert mesh_tiers(round_) == {4: 3}


def test_sessions_carry_the_tier_of_each_node() -> None:
    nodes = [
        Node(node_id=4, node_name="tyo1", loopback_ipv6=V6 + "4"),
        Node(node_id=5, node_name="sin1", loopback_ipv6=V6 + "5"),
    ]
    out = sessions(nodes, own_is_rr=False, own_id=3, latency={4: 6})
    assert out["4"].latency == 6 and out["5"].latency is None


class Triggers:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, task: str) -> Any:
        import asyncio

        self.count += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def task(state: Path) -> tuple[IbgpSync, FakeBackends, Triggers]:
    cp = StubControlPlane("hkg1")
    backends = FakeBackends()
    ctx = plugin_context(
        "ibgp",
        state_dir=state,
        config={"node": {"name": "hkg1", "id": 3}},
        plugins=[("ibgp", moenet_ibgp)],
        backends=backends,
        cp=cp,
    )
    answer = sample_bird_config()
    answer["ibgpPeers"] = [ME, TYO1, SIN1]
    cp.set("bird-config", answer)
    triggers = Triggers()
    ctx.trigger = triggers  # type: ignore[method-assign]
    return IbgpSync(ctx), backends, triggers


def declared_latency(backends: FakeBackends) -> list[dict[str, int | None]]:
    return [
        {k: v.latency for k, v in fragments.items() if isinstance(v, IbgpNeighborIntent)}
        for _owner, fragments in backends.routing.declares
    ]


async def test_a_tier_change_triggers_one_run_that_declares_it(tmp_path: Path) -> None:
    t, backends, triggers = task(tmp_path)
    await t.run_once()
    assert declared_latency(backends) == [{"4": None, "5": None}]

    # One RTT round with a tier for tyo1: one trigger, whatever else the round holds.
    t.ctx.emit_link_latency((measured("mesh", "4", 3, changed=True), measured("sessions", "u1", 2)))
    assert triggers.count == 1 and t.latency == {4: 3}
    await t.run_once()
    assert declared_latency(backends)[-1] == {"4": 3, "5": None}

    # The same tiers again (a round without a change): no trigger, no declare.
    t.ctx.emit_link_latency((measured("mesh", "4", 3), measured("mesh", "5", None)))
    assert triggers.count == 1
    await t.run_once()
    assert len(backends.routing.declares) == 2

    # Two tiers changing in one round: still one run.
    t.ctx.emit_link_latency((measured("mesh", "4", 4, changed=True), measured("mesh", "5", 6, changed=True)))
    assert triggers.count == 2
    await t.run_once()
    assert declared_latency(backends)[-1] == {"4": 4, "5": 6}
    assert t.moenet_status_info()["latency"] == {"4": 4, "5": 6}


async def test_tiers_survive_a_restart(tmp_path: Path) -> None:
    t, _backends, _triggers = task(tmp_path)
    await t.run_once()
    t.ctx.emit_link_latency((measured("mesh", "5", 2, changed=True),))
    saved = json.loads((tmp_path / "plugins" / "ibgp" / LATENCY_FILE).read_text())
    assert saved == {"version": 1, "tiers": {"5": 2}}

    again, backends, triggers = task(tmp_path)
    assert again.latency == {5: 2}
    await again.run_once()
    assert declared_latency(backends) == [{"4": None, "5": 2}]
    assert triggers.count == 0


def test_a_corrupt_latency_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "plugins" / "ibgp" / LATENCY_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "tiers": {"4": 12, "x": 3, "5": True, "6": 2}}))
    t, _backends, _triggers = task(tmp_path)
    assert t.latency == {6: 2}


def test_the_tier_renders_as_the_neighbour_import_filter() -> None:
    from moenet_bird.policy import parse_bird_config

    policy, _ = parse_bird_config(sample_bird_config())
    n = IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6=V6 + "4", latency=5)
    tree = render_tree(policy, ibgp_peers=[n])
    text = tree["ibgp/ibgp_tyo1_4.conf"]
    assert text.count("import where moenet_ibgp_in_link(5);") == 2  # ipv4 and ipv6
    unmeasured = render_tree(
        policy, ibgp_peers=[IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6=V6 + "4")]
    )
    assert "moenet_ibgp_in_link" not in unmeasured["ibgp/ibgp_tyo1_4.conf"]


@pytest.mark.parametrize("bad", [0, 10, True, "3"])
def test_the_backend_refuses_a_bad_latency_naming_the_field(bad: Any) -> None:
    n = unchecked_intent(IbgpNeighborIntent, node_id=4, node_name="tyo1", loopback_ipv6=V6 + "4", latency=bad)
    problems = validate_neighbor(n, "ibgp[4]")
    assert problems and problems[0].startswith("ibgp[4].latency: "), problems
    with pytest.raises(ValueError):
        IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6=V6 + "4", latency=bad)
