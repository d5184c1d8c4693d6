"""``meshSync`` on a real agent core with the shared fake backends
(``moenet_core.testing.FakeBackends``) and a fake CP.

The fakes keep what a real backend would show (canonical tunnel state, open ports
per owner, declared fragments) and journal every write, so a test can say exactly
what a cycle changed. Runs are driven with ``scheduler.run_now`` on a manual clock
(the task's own schedule never fires). Real backends: ``test_mesh_netns.py``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import attrs
import moenet_mesh
import pytest
from helpers.mesh import key, mesh_answer, node, peer
from moenet_mesh.config import MeshSyncConfig
from moenet_wireguard.keys import read_key

from moenet_core.backends import ApplyResult, TunnelSpec, TunnelState
from moenet_core.descriptors import LinkTarget


async def test_setup_unchanged_change_and_departure(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        n.cp.set("mesh", mesh_answer(peer(1), peer(3), peer(1000), peer(7, endpoint="[2001:db8::7]:40000")))
        r = await n.sync()
        assert (
            r["errors"] == {} and r["configured"] == 3 and sorted(r["created"]) == ["igp1", "igp1000", "igp7"]
        )
        assert (r["tunnelWrites"], r["firewallSyncs"], r["declares"]) == (3, 1, 1), r
        t = n.b.tunnel.tunnels
        assert set(t) == {"igp1", "igp7", "igp1000"}  # never a tunnel to ourselves (node 3)
        assert all(s.owner == "mesh" for s in t.values())
        assert t["igp1000"].listen_port == 52820 and t["igp1"].listen_port == 51821
        assert t["igp1"].endpoint == "192.0.2.1:51823"  # node 1 listens on 51820 + 3 for us
        assert t["igp7"].endpoint == "[2001:db8::7]:40000"
        assert [a.local for a in t["igp1"].addresses] == ["fe80::1:0:3/64"]
        assert n.b.firewall.ports["mesh"] == {51821, 51827, 52820}
        [(owner, frags)] = n.b.routing.declares
        assert owner == "mesh" and set(frags) == {"igp1", "igp7", "igp1000"}
        assert frags["igp1"].type == "tunnel" and frags["igp1"].pattern == "igp1"
        [rep] = n.reports()
        assert rep["node_id"] == "hkg1" and rep["timestamp"] == int(n.clock.time())
        assert rep["peers"] == {"1": "configured", "7": "configured", "1000": "configured"}
        assert rep["meshPublicKey"] == n.task.public_key and rep["listenPorts"]["1000"] == 52820
        assert n.events[-1].task == "meshSync" and n.events[-1].ok

        # Unchanged: reads only, and the unchanged report is not repeated before statusRepeat.
        writes, syncs = len(n.b.tunnel.writes), len(n.b.firewall.syncs)
        state_mtime = (n.state / "state.json").stat().st_mtime_ns
        r = await n.sync()
        assert (r["tunnelWrites"], r["tunnelRemovals"], r["firewallSyncs"], r["declares"]) == (0, 0, 0, 0), r
        assert len(n.b.tunnel.writes) == writes and len(n.b.firewall.syncs) == syncs
        assert len(n.b.routing.declares) == 1 and len(n.reports()) == 1 and r["statusSent"] is False
        assert (n.state / "state.json").stat().st_mtime_ns == state_mtime
        await n.clock.advance(601)
        r = await n.sync()
        assert r["statusSent"] is True and len(n.reports()) == 2

        # WireGuard roaming survives: a roamed endpoint is not "repaired".
        t["igp1"] = attrs.evolve(t["igp1"], endpoint="198.51.100.1:6000")
        r = await n.sync()
        assert r["tunnelWrites"] == 0 and t["igp1"].endpoint == "198.51.100.1:6000"

        # The CP moves node 1: updated in place (same ifindex), nothing else touched.
        ifindex = t["igp1"].ifindex
        n.cp.set(
            "mesh",
            mesh_answer(peer(1, endpoint="192.0.2.101"), peer(1000), peer(7, endpoint="[2001:db8::7]:40000")),
        )
        r = await n.sync()
        assert r["updated"] == {"igp1": ["endpoint changed"]} and r["tunnelWrites"] == 1, r
        assert t["igp1"].endpoint == "192.0.2.101:51823" and t["igp1"].ifindex == ifindex
        assert (r["firewallSyncs"], r["declares"]) == (0, 0)

        # Node 7 leaves: its tunnel, port and Babel interface go; the others stay.
        n.cp.set("mesh", mesh_answer(peer(1, endpoint="192.0.2.101"), peer(1000)))
        r = await n.sync()
        assert r["removed"] == ["igp7"] and r["tunnelRemovals"] == 1, r
        assert set(t) == {"igp1", "igp1000"} and n.b.firewall.ports["mesh"] == {51821, 52820}
        assert set(n.b.routing.declares[-1][1]) == {"igp1", "igp1000"}
        assert n.reports()[-1]["peers"] == {"1": "configured", "1000": "configured"}


async def test_key_pair_heartbeat_and_status(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        keyfile = n.state / "mesh.key"
        assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
        public = read_key(keyfile).public_key()
        assert n.task.public_key == public
        fields = dict(n.h.agent.pm.collect("moenet_heartbeat_fields", setup=False))
        assert fields["mesh"] == {"meshPublicKey": public}
        n.cp.set("mesh", mesh_answer(peer(1), peer(2, publicKey="bogus")))
        await n.sync()
        info = n.info()
        assert info["enabled"] is True and info["publicKey"] == public and info["linkLocal"] == "fe80::1:0:3"
        assert info["peers"]["1"]["state"] == "configured" and info["peers"]["1"]["listenPort"] == 51821
        assert info["peers"]["2"]["state"].startswith("error: peers[1].publicKey")
        assert info["guardRefused"] is False and info["lastRun"]["answer"] == "controlPlane"
        # The key survives a restart of the task: same file, same public key.
        inode = keyfile.stat().st_ino
        await n.sync()
        assert n.task.public_key == public and keyfile.stat().st_ino == inode
        # Offered to the RTT plugin: the peer's link-local first.
        targets = [t for t in n.h.agent.context("rtt").link_targets() if t.owner == "mesh"]
        assert (
            LinkTarget(
                owner="mesh",
                key="1",
                interface="igp1",
                addresses=("fe80::1:0:1", "fd42:4242:1234::1", "172.20.42.1"),
                labels={"node": "node1", "nodeId": "1"},
            )
            in targets
        )
        # Switched off: nothing is touched and no key is published.
        n.h.agent.plugin_section("mesh").enabled = False
        writes = len(n.b.tunnel.writes)
        r = await n.sync()
        assert r == {"enabled": False} and len(n.b.tunnel.writes) == writes
        assert "mesh" not in dict(n.h.agent.pm.collect("moenet_heartbeat_fields", setup=False))


async def test_hostile_peers_never_break_the_others(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        n.cp.set(
            "mesh",
            mesh_answer(
                peer(1),
                peer(2, nodeName='x"; } protocol static evil {'),
                peer(4, endpoint="192.0.2.4:99999"),
                peer(5, publicKey=key(1)),  # node 1's key: both invalid
                peer(6, mtu=70000),
                peer(20000),  # does not fit the port range (51820 + 20000 > 65535)
                peer(3, publicKey="garbage"),  # ourselves: dropped, whatever it says
                "not a peer",
                peer(9),
            ),
        )
        r = await n.sync()
        rep = n.reports()[-1]["peers"]
        assert rep["9"] == "configured"
        for k, words in (
            ("1", "another peer"),
            ("2", "nodeName"),
            ("4", "port"),
            ("5", "another peer"),
            ("6", "mtu"),
            ("20000", "does not fit the mesh port range"),
        ):
            assert rep[k].startswith("error: ") and words in rep[k], (k, rep[k])
        assert "3" not in rep
        assert set(n.b.tunnel.tunnels) == {"igp9"}
        assert r["configured"] == 1 and "evil" not in str(n.b.routing.declares)

        # Node 1 was fine before and turns invalid: its working tunnel is kept as it is.
        n.cp.set("mesh", mesh_answer(peer(1), peer(9)))
        await n.sync()
        assert set(n.b.tunnel.tunnels) == {"igp1", "igp9"}
        writes = len(n.b.tunnel.writes)
        n.cp.set("mesh", mesh_answer(peer(1, publicKey="AAAA"), peer(9)))
        r = await n.sync()
        assert r["removed"] == [] and len(n.b.tunnel.writes) == writes
        assert set(n.b.tunnel.tunnels) == {"igp1", "igp9"} and 51821 in n.b.firewall.ports["mesh"]
        assert "igp1" in n.b.routing.fragments["mesh"]
        assert n.reports()[-1]["peers"]["1"].startswith("error: peers[0].publicKey")


async def test_cp_failures_serve_the_saved_answer(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        # No answer ever: nothing to serve, nothing changed.
        n.cp.fail("mesh", 1, status=503)
        r = await n.sync(ok=False)
        assert "no saved answer" in r["error"]
        n.cp.set("mesh", mesh_answer(peer(1), peer(2), peer(4)))
        await n.sync()
        assert set(n.b.tunnel.tunnels) == {"igp1", "igp2", "igp4"}
        writes = len(n.b.tunnel.writes)
        # Unreachable: the saved answer is served; nothing removed.
        n.cp.fail("mesh", 1, status=503)
        r = await n.sync()
        assert r["answer"] == "saved" and "unreachable" in r["problem"] and len(n.b.tunnel.writes) == writes
        # A CP error reply (code != 0 in the envelope), and an answer that is wrong as a whole:
        # refused, the saved one served, the run fails visibly.
        n.cp.fail("mesh", 1, status=200, body={"code": 500, "message": "db down", "data": None})
        r = await n.sync(ok=False)
        assert "refused mesh" in r["error"] and set(n.b.tunnel.tunnels) == {"igp1", "igp2", "igp4"}
        for bad in ({"peers": None}, [], mesh_answer(peer(1), local=4)):
            n.cp.set("mesh", bad)
            r = await n.sync(ok=False)
            assert "invalid mesh answer" in r["error"], r
        assert set(n.b.tunnel.tunnels) == {"igp1", "igp2", "igp4"} and len(n.b.tunnel.writes) == writes
        assert n.info()["lastRun"]["answer"] == "saved"
        # A hand-deleted tunnel is repaired from the saved answer too.
        del n.b.tunnel.tunnels["igp2"]
        n.cp.fail("mesh", 1, status=503)
        r = await n.sync()
        assert r["created"] == ["igp2"] and "igp2" in n.b.tunnel.tunnels


async def test_guard_refuses_an_empty_answer(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        n.cp.set("mesh", mesh_answer(*(peer(i) for i in (1, 2, 4, 5))))
        await n.sync()
        n.cp.set("mesh", mesh_answer())
        r = await n.sync()
        assert r["guard"]["refused"] is True and r["tunnelRemovals"] == 0 and r["declares"] == 0, r
        assert set(n.b.tunnel.tunnels) == {"igp1", "igp2", "igp4", "igp5"}
        assert n.b.firewall.ports["mesh"] == {51821, 51822, 51824, 51825}
        info = n.info()
        assert info["guardRefused"] is True and info["guard"]["withheld"] == ["igp1", "igp2", "igp4", "igp5"]
        # The operator allows exactly this removal.
        n.section().allow_removal = info["guard"]["digest"]
        r = await n.sync()
        assert (
            r["tunnelRemovals"] == 4
            and n.b.tunnel.tunnels == {}
            and n.b.firewall.ports["mesh"] == frozenset()
        )
        assert n.b.routing.declares[-1] == ("mesh", {})


async def test_other_owners_and_leftovers_from_before_a_restart(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        spec = TunnelSpec(
            name="igp1",
            private_key_file="/nonexistent",
            listen_port=20001,
            peer_public_key=key(40),
            owner="sessions",
        )
        n.b.tunnel.tunnels["igp1"] = TunnelState(
            name="igp1", ifindex=5, listen_port=51822, peer_public_key=key(40), endpoint=None,
            allowed_ips=(), keepalive=None, mtu=1420, addresses=(), up=True, owner="sessions",
        )  # fmt: skip
        # A mesh tunnel left from before (no record: the state directory is new).
        n.b.tunnel.tunnels["igp8"] = TunnelState(
            name="igp8", ifindex=6, listen_port=51828, peer_public_key=key(8), endpoint=None,
            allowed_ips=(), keepalive=None, mtu=1420, addresses=(), up=True, owner="mesh",
        )  # fmt: skip
        n.b.firewall.ports["sessions"] = frozenset({51822})
        n.cp.set("mesh", mesh_answer(peer(1), peer(2), peer(4)))
        r = await n.sync()
        rep = n.reports()[-1]["peers"]
        assert "owner 'sessions'" in rep["1"] and "listen port 51822 is used by tunnel igp1" in rep["2"]
        assert rep["4"] == "configured" and r["removed"] == ["igp8"]
        assert (
            n.b.tunnel.tunnels["igp1"].owner == "sessions" and n.b.tunnel.tunnels["igp1"].listen_port == 51822
        )
        assert n.b.firewall.ports["sessions"] == {51822} and n.b.firewall.ports["mesh"] == {51824}
        assert spec.owner == "sessions"


async def test_failures_are_reported_and_rolled_back(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        n.cp.set("mesh", mesh_answer(peer(1), peer(2)))
        n.b.tunnel.fail("ensure", "igp2", "wireguard-go would not start", times=None)
        r = await n.sync()
        assert r["errors"] == {"2": "error: tunnel igp2: wireguard-go would not start"}
        assert set(n.b.tunnel.tunnels) == {"igp1"} and n.b.firewall.ports["mesh"] == {51821}
        assert set(n.b.routing.fragments["mesh"]) == {"igp1"}
        n.b.tunnel.heal("ensure", "igp2")
        r = await n.sync()
        assert r["errors"] == {} and set(n.b.tunnel.tunnels) == {"igp1", "igp2"}

        # A create that fails late (the endpoint's name does not resolve yet) leaves a usable
        # tunnel: it keeps its port and Babel interface, reports the error, and is retried.
        n.b.tunnel.fail("ensure", "igp3000", "endpoint node.invalid: no address", times=None, late=True)
        n.section().port_base = 50000
        n.cp.set("mesh", mesh_answer(peer(1), peer(2), peer(3000, endpoint="node.invalid")))
        r = await n.sync()
        assert r["errors"] == {"3000": "error: tunnel igp3000: endpoint node.invalid: no address"}, r
        assert "igp3000" in n.b.tunnel.tunnels and 53000 in n.b.firewall.ports["mesh"]
        assert "igp3000" in n.b.routing.fragments["mesh"]
        n.b.tunnel.heal("ensure", "igp3000")
        r = await n.sync()
        assert r["errors"] == {} and r["updated"] == {"igp3000": ["not known to be applied"]}, r
        assert n.b.tunnel.tunnels["igp3000"].endpoint == "node.invalid:50003"
        n.section().port_base = 51820
        n.cp.set("mesh", mesh_answer(peer(1), peer(2)))
        r = await n.sync()
        assert set(n.b.tunnel.tunnels) == {"igp1", "igp2"} and r["errors"] == {}, r

        # The firewall fails: the tunnels stay; the new peer is an error; the next cycle repairs.
        n.b.firewall.fail("sync", "mesh", "nft: permission denied", times=None)
        n.cp.set("mesh", mesh_answer(peer(1), peer(2), peer(4)))
        r = await n.sync()
        assert "firewall" in r["errors"]["4"] and set(r["errors"]) == {"4"}
        n.b.firewall.heal()
        r = await n.sync()
        assert r["errors"] == {} and r["firewallSyncs"] == 1 and 51824 in n.b.firewall.ports["mesh"]

        # Routing refuses: peers whose Babel interface changed are errors, the rest configured;
        # the declare is repeated next cycle (nothing recorded as applied).
        refused = ApplyResult(ok=False, changed=False, error="no BIRD policy from the control plane yet")
        n.b.routing.fail("declare", "mesh", result=refused, times=None)
        n.cp.set("mesh", mesh_answer(peer(1), peer(2), peer(4), peer(5)))
        r = await n.sync()
        assert r["errors"] == {"5": "error: routing: no BIRD policy from the control plane yet"}, r
        n.b.routing.heal()
        r = await n.sync()
        assert r["declares"] == 1 and r["errors"] == {}
        assert set(n.b.routing.fragments["mesh"]) == {"igp1", "igp2", "igp4", "igp5"}

        # The status report fails: logged, retried next cycle, the tunnel work stands.
        n.cp.fail("mesh/status", 1, status=500)
        n.cp.set("mesh", mesh_answer(peer(1), peer(2), peer(4)))
        r = await n.sync()
        assert r["statusSent"] is False and r["tunnelRemovals"] == 1 and "igp5" not in n.b.tunnel.tunnels
        assert n.info()["statusReportError"] is not None
        r = await n.sync()
        assert r["statusSent"] is True and n.reports()[-1]["peers"] == dict.fromkeys(
            ("1", "2", "4"), "configured"
        )


async def test_our_id_and_config(tmp_path: Path) -> None:
    cfg = {
        "meshSync": {"portBase": 20000, "interfacePrefix": "m", "allowedIps": ["fd42::/16"], "keepalive": 0}
    }
    async with node(tmp_path, config=cfg, node_id=0) as n:
        n.h.agent.plugin_section("mesh").mtu = 1400
        n.cp.set("mesh", mesh_answer(peer(1), peer(45000, mtu=None), local=40000))
        r = await n.sync()
        assert r["nodeId"] == 40000 and r["errors"] == {}, r
        t = n.b.tunnel.tunnels
        assert set(t) == {"m1", "m45000"} and t["m45000"].listen_port == 65000
        assert t["m1"].endpoint == "192.0.2.1:60000" and t["m45000"].mtu == 1400
        assert t["m1"].keepalive is None
        assert [a.local for a in t["m1"].addresses] == ["fe80::1:0:9c40/64"]
        assert set(t["m1"].allowed_ips) == {"fd42::/16", "fe80::/10", "ff02::1:6/128", "172.20.42.1/32"}
        # Our own id must fit the port range, or nothing happens at all.
        n.cp.set("mesh", mesh_answer(peer(1), local=50000))
        r = await n.sync(ok=False)
        assert "this node's id cannot be meshed" in r["error"] and set(t) == {"m1", "m45000"}


async def test_state_file_and_key_file_problems_fail_loudly(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        n.cp.set("mesh", mesh_answer(peer(1)))
        await n.sync()
        (n.state / "state.json").write_text("{nope")
        r = await n.sync(ok=False)
        assert "not valid JSON" in r["error"] and set(n.b.tunnel.tunnels) == {"igp1"}
        (n.state / "state.json").unlink()
        # A missing record re-applies once (the backend decides what differs), then nothing.
        r = await n.sync()
        assert r["updated"] == {"igp1": ["not known to be applied"]} and r["tunnelWrites"] == 0
        r = await n.sync()
        assert r["updated"] == {} and r["tunnelWrites"] == 0
        os.chmod(n.state / "mesh.key", 0o644)
        r = await n.sync(ok=False)
        assert "mesh key" in r["error"]


def test_the_plugin_declares_its_section_task_and_feature() -> None:
    [section] = moenet_mesh.moenet_config_sections()
    assert section.name == "mesh" and section.type is MeshSyncConfig  # MeshConfig; meshSync an alias
    assert "meshSync" in [a.section for a in section.aliases]
    from moenet_core.config import AgentConfig

    [task] = moenet_mesh.moenet_tasks(AgentConfig())
    assert (task.name, task.interval, task.on_sync) == ("meshSync", 120.0, True)
    assert set(task.requires) == {"tunnel", "firewall", "routing"}
    assert moenet_mesh.moenet_features() == ["mesh"]


@pytest.mark.parametrize(
    "section",
    [{"portBase": "51820"}, {"interfacePrefix": "dn42-"}, {"allowedIps": "fd00::/8"}, {"guardMaxShare": 2}],
)
def test_bad_sections_are_refused_with_their_path(section: dict[str, Any], tmp_path: Path) -> None:
    from moenet_core.config import structure

    warnings: list[str] = []
    obj, problems = structure(MeshSyncConfig, section, "meshSync", warnings)
    assert obj is None and problems and all(p.startswith("meshSync") for p in problems), problems


async def test_restart_and_latency_in_status(tmp_path: Path) -> None:
    from moenet_core.descriptors import LinkLatency

    async with node(tmp_path) as n:
        n.cp.set("mesh", mesh_answer(peer(1), peer(2)))
        await n.sync()
        assert n.task.moenet_restart("dn42-other") is None and n.task.moenet_restart("igp9") is None
        t = n.b.tunnel.tunnels
        t["igp1"] = attrs.evolve(t["igp1"], mtu=1300)  # someone changed it by hand
        action = n.task.moenet_restart("igp1")
        assert action is not None
        result = await action()
        assert result == {"interface": "igp1", "nodeId": 1, "tunnelRepaired": True} and t["igp1"].mtu == 1420
        n.h.agent.context("rtt").emit_link_latency(
            (
                LinkLatency(
                    owner="mesh", key="2", interface="igp2", target="fe80::1:0:2", rtt_ms=12.5, loss=0.0,
                    tier=3, measured_at=n.clock.time(),
                ),
                LinkLatency(
                    owner="sessions", key="2", interface="x", target=None, rtt_ms=None, loss=100.0,
                    tier=None, measured_at=n.clock.time(),
                ),
            )
        )  # fmt: skip
        peers = n.info()["peers"]
        assert (peers["2"]["rttMs"], peers["2"]["loss"]) == (12.5, 0.0) and peers["1"]["rttMs"] is None
