"""A third-party plugin declares a BGP peer through the public API and BIRD 3 runs it.

The plugin below imports nothing but ``moenet_core``: a periodic task that
declares, as owner ``staticpeers``, the eBGP peers it was given to the running
``routing`` backend (the ``bird`` plugin, BIRD in a namespace). The agent is the
real one (:class:`~moenet_core.testing.AgentHarness` with an explicit plugin
list), so the plugin goes through ``moenet_tasks`` and its context.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import moenet_bird
import pytest
from helpers.bird import U1, cp_data, session
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.policy import BgpPeer, peer_id
from moenet_bird.sync import TASK_NAME as SYNC
from moenet_bird.testing import BirdDaemon

from moenet_core.intents import BabelInterfaceIntent, EbgpPeerIntent, IbgpNeighborIntent, IbgpOptionsIntent
from moenet_core.testing import AgentHarness, FakeControlPlane, NetNS

#: The whole plugin, as a third party would ship it: it imports only ``moenet_core``.
PLUGIN_SOURCE = """
from moenet_core import EbgpPeerIntent, RoutingBackend, TaskSpec, hookimpl

OWNER = "staticpeers"
PEERS: dict[str, EbgpPeerIntent] = {}


class StaticPeers:
    def __init__(self, ctx):
        self.ctx = ctx

    async def run_once(self):
        routing = self.ctx.backend("routing", RoutingBackend)
        result = await routing.declare(OWNER, dict(PEERS))
        if not result.ok:
            raise RuntimeError(result.error)
        return {"changed": result.changed, "rejected": dict(result.rejected)}


@hookimpl
def moenet_tasks(config):
    return [TaskSpec(name="staticPeers", factory=StaticPeers, interval=3600.0, requires=("routing",))]
"""


def load_plugin() -> types.ModuleType:
    module = types.ModuleType("staticpeers_plugin")
    exec(compile(PLUGIN_SOURCE, "staticpeers_plugin.py", "exec"), module.__dict__)
    imported = {
        line.split()[1] for line in PLUGIN_SOURCE.splitlines() if line.startswith(("from ", "import "))
    }
    assert imported == {"moenet_core"}, imported  # the public API only
    return module


#: The peer the operator configured in the third-party plugin: AS4242420077 over a
#: plain IPv4 session (no tunnel of the agent's).
STATIC = EbgpPeerIntent(asn=4242420077, neighbor_ipv4="172.20.77.1", mp_bgp=False, name="static")


@pytest.mark.netns
async def test_a_third_party_plugin_declares_a_peer_that_bird_runs(
    netns: Callable[[], NetNS], tmp_path: Path, fake_cp: FakeControlPlane
) -> None:
    plugin = load_plugin()
    etc, state = tmp_path / "etc", tmp_path / "state"
    with BirdDaemon(netns(), tmp_path / "bird").start() as daemon:
        cfg: dict[str, Any] = {
            "node": {"name": "hkg1", "id": 3},
            "controlPlane": {"url": fake_cp.url, "token": "test-token", "maxRetries": 0},
            "bird": {"controlSocket": str(daemon.socket), "configDir": str(etc)},
            "birdAgent": {"applyDebounce": 0},
            "state": {"directory": str(state)},
        }
        fake_cp.set("bird-config", cp_data("h1"))
        plugins = [("bird", moenet_bird), ("staticpeers", plugin)]
        async with AgentHarness(cfg, plugins=plugins, state_dir=state) as h:
            backend = h.agent.backend("routing")
            assert isinstance(backend, BirdRoutingBackend)
            assert (await h.agent.scheduler.run_now(SYNC)).ok

            plugin.PEERS["kioubit"] = STATIC
            ev = await h.agent.scheduler.run_now("staticPeers")
            assert ev.ok and ev.result == {"changed": True, "rejected": {}}, ev
            symbol = BgpPeer(peer_id("staticpeers", "kioubit"), STATIC).symbol
            assert symbol.startswith("dn42_4242420077_")
            assert dict(backend.fragment_protocols("staticpeers")) == {"kioubit": (symbol + "_v4",)}
            running = {p.name: p for p in await backend.protocols()}
            assert running[symbol + "_v4"].proto == "BGP"
            assert running[symbol + "_v4"].neighbor == "172.20.77.1"
            assert running[symbol + "_v4"].neighbor_as == 4242420077
            info = h.agent.status()
            [bird] = [p for p in info["plugins"] if p["name"] == "bird"]
            assert bird["info"]["owners"]["staticpeers"] == 1

            # Unchanged: no configure. Removed: the protocol and its file are gone.
            configures = backend.applier.stats.configures
            ev = await h.agent.scheduler.run_now("staticPeers")
            assert ev.ok and ev.result["changed"] is False
            assert backend.applier.stats.configures == configures
            plugin.PEERS.clear()
            ev = await h.agent.scheduler.run_now("staticPeers")
            assert ev.ok and ev.result == {"changed": True, "rejected": {}}, ev
            assert not any(p.name.startswith(symbol) for p in await backend.protocols())
            assert not (etc / f"peers/{symbol}.conf").exists()
            assert dict(backend.fragment_protocols("staticpeers")) == {}


@pytest.mark.netns
async def test_clashes_between_owners_are_rejected_for_the_later_one(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    from helpers.bird import Env, policy, protocol_names, symbol

    with BirdDaemon(netns(), tmp_path / "bird").start() as daemon:
        env = Env(daemon, tmp_path)
        b = await env.backend()
        try:
            data = cp_data()
            assert (await b.set_policy(policy(data), "h", raw=data)).ok
            v6 = "fd42:4242:1234::"
            tyo = IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6=v6 + "2")
            assert (await b.declare("sessions", {U1: session()})).ok
            assert (await b.declare("ibgp", {"options": IbgpOptionsIntent(), "4": tyo})).ok
            assert (await b.declare("mesh", {"igp": BabelInterfaceIntent(pattern="igp*")})).ok

            r = await b.declare(
                "staticpeers",
                {
                    U1.upper(): session(),  # the same session, another spelling
                    "same-node": IbgpNeighborIntent(node_id=4, node_name="other", loopback_ipv6=v6 + "9"),
                    "same-name": IbgpNeighborIntent(node_id=9, node_name="TYO1", loopback_ipv6=v6 + "9"),
                    "options": IbgpOptionsIntent(enabled=False),
                    "babel": BabelInterfaceIntent(pattern="igp*", type="wired"),
                    "fine": EbgpPeerIntent(asn=4242420078, neighbor_ipv4="172.20.78.1", mp_bgp=False),
                },
            )
            assert r.ok and set(r.rejected) == {U1.upper(), "same-node", "same-name", "options", "babel"}, r
            assert f"is already declared by sessions[{U1}]" in r.rejected[U1.upper()]
            assert (
                "staticpeers[same-node].nodeId: 4 is already declared (tyo1, by ibgp[4])"
                in r.rejected["same-node"]
            )
            assert "nodeName: TYO1 is already declared" in r.rejected["same-name"]
            assert "iBGP options are already declared by ibgp[options]" in r.rejected["options"]
            assert "pattern: igp* is already declared by mesh[igp]" in r.rejected["babel"]
            assert b.status_info()["rejected"]["staticpeers"].keys() == r.rejected.keys()
            assert b.status_info()["ibgp"]["enabled"] is True  # the earlier options hold
            names = await protocol_names(b)
            fine = BgpPeer(
                peer_id("staticpeers", "fine"), EbgpPeerIntent(asn=4242420078, neighbor_ipv4="172.20.78.1")
            )
            assert {symbol(U1, 4242420002), "ibgp_tyo1_4", fine.symbol + "_v4"} <= names

            # The earlier owner lets go: the later fragment is no longer in anyone's way.
            assert (await b.declare("sessions", {})).ok
            r = await b.declare("staticpeers", {U1.upper(): session()})
            assert (r.ok, dict(r.rejected)) == (True, {}), r
            assert dict(b.fragment_protocols("staticpeers")) == {U1.upper(): (symbol(U1, 4242420002),)}
        finally:
            await b.aclose()
