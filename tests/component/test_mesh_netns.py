"""``meshSync`` with the real backends: wireguard-go, nftables and BIRD 3 in namespaces.

One node: every mesh tunnel is created with the mesh owner, its port opened in the
mesh set, its Babel interface live in BIRD; an unchanged run writes nothing; a
departed peer's tunnel, port and interface go (also after an agent restart); a
sessions-owned tunnel next to them is never touched; the guard refuses an empty
answer. Two nodes: their agents' mesh tunnels reach each other over a veth pair
and Babel carries each node's loopbacks to the other (kernel routes, ping).

Agents run in this process, each inside its namespace (``ns.entered()`` around
every step that opens sockets or starts processes), on a manual clock so no
scheduled run fires: runs are driven with ``scheduler.run_now``. Interface names
get a random prefix: ``/var/run/wireguard`` is shared by all namespaces.
"""

from __future__ import annotations

import base64
import json
import random
import string
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import moenet_bird
import moenet_mesh
import moenet_nftables
import moenet_wireguard
import pytest
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.testing import BirdDaemon, sample_bird_config
from moenet_mesh.task import MeshSync
from moenet_nftables.backend import NftablesFirewall

from moenet_core.backends import FirewallBackend, TunnelBackend, TunnelSpec
from moenet_core.testing import AgentHarness, FakeControlPlane, ManualClock, NetNS, veth_pair

pytestmark = pytest.mark.netns

PEER_KEYS = {n: base64.b64encode(bytes([n % 250 + 1]) * 32).decode() for n in (1, 2, 4, 7, 1000)}


def random_prefix() -> str:
    return "q" + "".join(random.choices(string.ascii_lowercase, k=3))


class MeshNode:
    """One agent (mesh, wireguard, nftables, bird) in a namespace, with its BIRD and CP."""

    def __init__(
        self, ns: NetNS, h: AgentHarness, cp: FakeControlPlane, bird: BirdDaemon, etc: Path, prefix: str
    ) -> None:
        self.ns, self.h, self.cp, self.bird, self.etc, self.prefix = ns, h, cp, bird, etc, prefix

    def ifname(self, n: int) -> str:
        return f"{self.prefix}{n}"

    @property
    def task(self) -> MeshSync:
        task = self.h.agent.scheduler._entry("meshSync").task
        assert isinstance(task, MeshSync)
        return task

    @property
    def tunnel(self) -> TunnelBackend:
        t = self.h.agent.backend("tunnel")
        assert isinstance(t, TunnelBackend)
        return t

    @property
    def firewall(self) -> NftablesFirewall:
        f = self.h.agent.backend("firewall")
        assert isinstance(f, NftablesFirewall)
        return f

    @property
    def routing(self) -> BirdRoutingBackend:
        r = self.h.agent.backend("routing")
        assert isinstance(r, BirdRoutingBackend)
        return r

    async def run(self, task: str) -> dict[str, Any]:
        with self.ns.entered():
            ev = await self.h.agent.scheduler.run_now(task)
        assert ev.ok, ev.error
        assert isinstance(ev.result, dict)
        return ev.result

    async def sync(self) -> dict[str, Any]:
        await self.run("birdConfigSync")
        return await self.run("meshSync")

    def link(self, name: str) -> dict[str, Any] | None:
        res = self.ns.run("ip", "-j", "-d", "link", "show", name, check=False)
        if res.returncode != 0:
            return None
        [link] = json.loads(res.stdout)
        return link  # type: ignore[no-any-return]

    def mesh_ports(self) -> set[int]:
        res = self.ns.run("nft", "-j", "list", "set", "inet", "moenet_agent", "udp_ports_mesh", check=False)
        if res.returncode != 0:
            return set()
        for obj in json.loads(res.stdout)["nftables"]:
            if "set" in obj:
                return set(obj["set"].get("elem", []))
        return set()

    def birdc(self, *cmd: str) -> str:
        return subprocess.run(
            ["birdc", "-s", str(self.bird.socket), *cmd], capture_output=True, text=True, check=True
        ).stdout

    def babel_interfaces(self) -> set[str]:
        out = self.birdc("show", "babel", "interfaces")
        return {line.split()[0] for line in out.splitlines() if line.startswith(self.prefix)}

    def wg(self, name: str) -> dict[str, str]:
        """``wg show <name> dump``: the interface line and the one peer."""
        out = self.ns.run("wg", "show", name, "dump").stdout.splitlines()
        _priv, pub, port, _fw = out[0].split("\t")
        peer, _psk, endpoint, allowed, handshake, _rx, _tx, keepalive = out[1].split("\t")
        return {
            "public": pub,
            "port": port,
            "peer": peer,
            "endpoint": endpoint,
            "allowed": allowed,
            "handshake": handshake,
            "keepalive": keepalive,
        }


def peer(n: int, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "nodeId": n,
        "nodeName": f"node{n}",
        "loopbackIpv4": f"172.20.42.{n % 30}",
        "loopbackIpv6": f"fd42:4242:1234::{n:x}",
        "publicKey": PEER_KEYS[n],
        "endpoint": f"192.0.2.{n % 250}",
    }
    d.update(over)
    return d


@asynccontextmanager
async def mesh_node(
    ns: NetNS,
    tmp: Path,
    *,
    node_id: int,
    name: str,
    prefix: str,
    loopback4: str,
    loopback6: str,
    state: Path | None = None,
    bird: BirdDaemon | None = None,
) -> AsyncIterator[MeshNode]:
    etc = tmp / "etc"
    state = state or tmp / "state"
    own_bird = bird is None
    with ns.entered():
        daemon = bird or BirdDaemon(ns, tmp / "bird").start()
        cp = FakeControlPlane()
        await cp.start()
        cp.set(
            "bird-config",
            sample_bird_config(
                config_hash=name,
                node={"id": node_id, "name": name, "loopbackIpv4": loopback4, "loopbackIpv6": loopback6},
            ),
        )
        cp.set("mesh", {"localNodeId": node_id, "peers": []})
        cfg = {
            "node": {"name": name, "id": node_id, "loopbackIpv4": loopback4, "loopbackIpv6": loopback6},
            "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
            "bird": {
                "controlSocket": str(daemon.socket),
                "configDir": str(etc),
                "applyDebounce": 0,
                "loopbackInterface": "lo",
            },
            "sessions": {"privateKeyPath": str(tmp / "wg" / "private.key")},
            "wireguard": {"backend": "userspace"},
            "backends": {"firewall": "nftables"},
            "state": {"directory": str(state)},
            # The per-answer guard is what these scenarios show; the window over
            # several answers is covered in tests/unit/test_sessions_guard.py.
            "mesh": {"interfacePrefix": prefix, "helloIntervalS": 1, "rttMinMs": 1, "guardWindow": 0},
        }
        plugins = [
            ("mesh", moenet_mesh),
            ("wireguard", moenet_wireguard),
            ("nftables", moenet_nftables),
            ("bird", moenet_bird),
        ]
        h = AgentHarness(cfg, plugins=plugins, state_dir=state, clock=ManualClock())
        await h.__aenter__()
    n = MeshNode(ns, h, cp, daemon, etc, prefix)
    try:
        assert h.agent.pm.records["mesh"].status == "active", h.agent.pm.records["mesh"].error
        yield n
    finally:
        with ns.entered():
            await h.__aexit__(None, None, None)
            await cp.stop()
        if own_bird:
            daemon.stop()


async def remove_all_tunnels(n: MeshNode) -> None:
    """Tear the tunnels down (wireguard-go processes outlive the agent on purpose)."""
    with n.ns.entered():
        for name, st in list((await n.tunnel.list()).items()):
            await n.tunnel.remove(name, owner=st.owner)


async def poll(what: Callable[[], Any], timeout: float = 30.0, step: float = 0.25) -> Any:
    """Bounded polling of kernel/BIRD state (real daemons converge on their own time)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(step)


async def test_one_node_with_real_backends(netns: Callable[[], NetNS], tmp_path: Path) -> None:
    ns = netns()
    prefix = random_prefix()
    bird_dir = tmp_path / "bird"
    node_args: dict[str, Any] = {
        "node_id": 3,
        "name": "hkg1",
        "prefix": prefix,
        "loopback4": "172.20.42.3",
        "loopback6": "fd42:4242:1234::3",
        "state": tmp_path / "state",
    }
    daemon = BirdDaemon(ns, bird_dir).start()
    sessions_name = f"s{prefix}9"
    try:
        async with mesh_node(ns, tmp_path, bird=daemon, **node_args) as n:
            # A sessions tunnel and port already live on the node, one with a mesh-like name.
            with ns.entered():
                keyfile = tmp_path / "sessions.key"
                keyfile.write_text(PEER_KEYS[4] + "\n")
                keyfile.chmod(0o600)
                squat = TunnelSpec(
                    name=n.ifname(7),
                    private_key_file=str(keyfile),
                    listen_port=21007,
                    peer_public_key=PEER_KEYS[7],
                    endpoint="192.0.2.77:51820",
                    owner="sessions",
                )
                other = TunnelSpec(
                    name=sessions_name,
                    private_key_file=str(keyfile),
                    listen_port=51822,  # what the mesh would want for node 2
                    peer_public_key=PEER_KEYS[2],
                    owner="sessions",
                )
                await n.tunnel.ensure(squat)
                await n.tunnel.ensure(other)
                fw = n.h.agent.backend("firewall")
                assert isinstance(fw, FirewallBackend)
                await fw.sync(frozenset({21007, 51822}), owner="sessions")
            sessions_links = {s: n.link(s) for s in (n.ifname(7), sessions_name)}

            n.cp.set("mesh", {"localNodeId": 3, "peers": [peer(1), peer(2), peer(4), peer(7), peer(1000)]})
            r = await n.sync()
            assert sorted(r["created"]) == sorted(n.ifname(i) for i in (1, 4, 1000)), r
            assert "owner 'sessions'" in r["errors"]["7"] and "used by tunnel" in r["errors"]["2"], r
            for i, port in ((1, 51821), (4, 51824), (1000, 52820)):
                link = n.link(n.ifname(i))
                assert link is not None and link["ifalias"] == "moenet-agent:mesh", link
                wg = n.wg(n.ifname(i))
                assert wg["port"] == str(port) and wg["peer"] == PEER_KEYS[i]
                assert wg["public"] == n.task.public_key and wg["keepalive"] == "25"
                assert wg["endpoint"] == f"192.0.2.{i % 250}:51823"
                assert set(wg["allowed"].split(",")) == {
                    "10.0.0.0/8",
                    "172.20.0.0/14",
                    "172.31.0.0/16",
                    "fd00::/8",
                    "fe80::/10",
                    "ff02::1:6/128",
                }
                addrs = n.ns.run("ip", "-j", "addr", "show", n.ifname(i)).stdout
                assert "fe80::1:0:3" in addrs
            assert n.mesh_ports() == {51821, 51824, 52820}
            assert await poll(lambda: n.babel_interfaces() == {n.ifname(i) for i in (1, 4, 1000)}), n.birdc(
                "show", "babel", "interfaces"
            )
            babel_conf = (n.etc / "babel.conf").read_text()
            assert f'interface "{n.ifname(1000)}"' in babel_conf and "type tunnel" in babel_conf
            [report] = [c.body for c in n.cp.calls("mesh/status", "POST")]
            assert report["peers"]["1000"] == "configured" and report["peers"]["7"].startswith("error: ")

            # Unchanged: no netlink/UAPI write, no nft transaction, no BIRD configure.
            wg_writes = sum(n.tunnel.writes.values())  # type: ignore[attr-defined]
            nft = n.firewall.transactions
            configures = n.routing.applier.stats.configures
            ifindex = n.link(n.ifname(1))["ifindex"]  # type: ignore[index]
            r = await n.sync()
            assert (r["tunnelWrites"], r["tunnelRemovals"], r["firewallSyncs"], r["declares"]) == (
                0,
                0,
                0,
                0,
            ), r
            assert sum(n.tunnel.writes.values()) == wg_writes  # type: ignore[attr-defined]
            assert n.firewall.transactions == nft and n.routing.applier.stats.configures == configures
            assert n.link(n.ifname(1))["ifindex"] == ifindex  # type: ignore[index]
            print(f"unchanged meshSync, 3 peers: {r['seconds'] * 1000:.1f} ms")

            # Node 4 leaves: tunnel, port and Babel interface gone; the rest untouched.
            n.cp.set("mesh", {"localNodeId": 3, "peers": [peer(1), peer(1000), peer(2), peer(7)]})
            r = await n.sync()
            assert r["removed"] == [n.ifname(4)], r
            assert n.link(n.ifname(4)) is None and n.mesh_ports() == {51821, 52820}
            assert await poll(lambda: n.babel_interfaces() == {n.ifname(1), n.ifname(1000)})
            assert n.link(n.ifname(1))["ifindex"] == ifindex  # type: ignore[index]

            # The guard: an answer removing everything is refused and shown in /status.
            n.cp.set("mesh", {"localNodeId": 3, "peers": [peer(2)]})
            r = await n.sync()
            assert r["guard"] is None and r["removed"] == sorted([n.ifname(1), n.ifname(1000)]), r
            # (two of two may go; rebuild three and take all three away)
            n.cp.set("mesh", {"localNodeId": 3, "peers": [peer(1), peer(4), peer(1000)]})
            await n.sync()
            n.cp.set("mesh", {"localNodeId": 3, "peers": []})
            r = await n.sync()
            assert r["guard"]["refused"] is True and r["tunnelRemovals"] == 0, r
            assert all(n.link(n.ifname(i)) is not None for i in (1, 4, 1000))
            [info] = [p["info"] for p in n.h.agent.status()["plugins"] if p["name"] == "mesh"]
            assert info["guardRefused"] is True and len(info["guard"]["withheld"]) == 3
            n.cp.set("mesh", {"localNodeId": 3, "peers": [peer(1), peer(4), peer(1000)]})
            await n.sync()

        # The agent is down while node 1000 leaves; the restarted agent cleans it up
        # (ownership is read from the system, not remembered in memory).
        async with mesh_node(ns, tmp_path, bird=daemon, **node_args) as n:
            n.cp.set("mesh", {"localNodeId": 3, "peers": [peer(1), peer(4)]})
            wg_before = n.wg(n.ifname(1))
            r = await n.sync()
            assert r["removed"] == [n.ifname(1000)] and r["tunnelWrites"] == 0, r
            assert n.link(n.ifname(1000)) is None and n.mesh_ports() == {51821, 51824}
            assert n.wg(n.ifname(1)) == wg_before
            # The sessions owner's tunnels and port are exactly as they were.
            for s, link in sessions_links.items():
                now = n.link(s)
                assert now is not None and link is not None
                assert (now["ifindex"], now["ifalias"]) == (link["ifindex"], "moenet-agent"), s
            assert n.wg(sessions_name)["port"] == "51822"
            with ns.entered():
                assert await n.firewall.list_ports(owner="sessions") == {21007, 51822}
            await remove_all_tunnels(n)
    finally:
        daemon.stop()


async def test_two_nodes_mesh_and_babel_carries_the_loopbacks(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    a, b = netns(), netns()
    veth_pair(a, b, "va", "vb")
    a.run("ip", "addr", "add", "192.0.2.1/24", "dev", "va")
    b.run("ip", "addr", "add", "192.0.2.2/24", "dev", "vb")
    for ns, i in ((a, 1), (b, 2)):
        ns.run("ip", "addr", "add", f"172.20.42.{i}/32", "dev", "lo")
        ns.run("ip", "addr", "add", f"fd42:4242:1234::{i}/128", "dev", "lo")
        ns.run("sysctl", "-qw", "net.ipv4.conf.all.forwarding=1")
    prefix = random_prefix()
    async with (
        mesh_node(
            a,
            tmp_path / "a",
            node_id=1,
            name="a",
            prefix=prefix,
            loopback4="172.20.42.1",
            loopback6="fd42:4242:1234::1",
        ) as na,
        mesh_node(
            b,
            tmp_path / "b",
            node_id=1000,
            name="b",
            prefix=prefix,
            loopback4="172.20.42.2",
            loopback6="fd42:4242:1234::2",
        ) as nb,
    ):
        try:
            ka, kb = na.task.public_key, nb.task.public_key
            assert ka and kb and ka != kb
            na.cp.set(
                "mesh",
                {
                    "localNodeId": 1,
                    "peers": [
                        {
                            "nodeId": 1000,
                            "nodeName": "b",
                            "publicKey": kb,
                            "endpoint": "192.0.2.2",
                            "loopbackIpv4": "172.20.42.2",
                            "loopbackIpv6": "fd42:4242:1234::2",
                        }
                    ],
                },
            )
            nb.cp.set(
                "mesh",
                {
                    "localNodeId": 1000,
                    "peers": [{"nodeId": 1, "nodeName": "a", "publicKey": ka, "endpoint": "192.0.2.1"}],
                },
            )
            ra, rb = await na.sync(), await nb.sync()
            assert ra["configured"] == 1 and rb["configured"] == 1, (ra, rb)
            # a listens for b on 51820 + 1000 and reaches b on 51820 + 1; and the other way round.
            assert na.wg(na.ifname(1000))["port"] == "52820"
            assert na.wg(na.ifname(1000))["endpoint"] == "192.0.2.2:51821"
            assert nb.wg(nb.ifname(1))["endpoint"] == "192.0.2.1:52820"

            def route(n: MeshNode, dest: str) -> str:
                return n.ns.run("ip", "route", "get", dest, check=False).stdout

            def learned() -> bool:
                return (
                    na.ifname(1000) in route(na, "172.20.42.2")
                    and nb.ifname(1) in route(nb, "172.20.42.1")
                    and na.ifname(1000) in route(na, "fd42:4242:1234::2")
                    and nb.ifname(1) in route(nb, "fd42:4242:1234::1")
                )

            ok = await poll(learned, timeout=45)
            assert ok, (
                route(na, "172.20.42.2"),
                route(nb, "172.20.42.1"),
                na.birdc("show", "babel", "neighbors"),
                na.birdc("show", "route", "protocol", "moenet_igp"),
                na.wg(na.ifname(1000)),
            )
            assert "proto bird" in a.run("ip", "route", "show", "172.20.42.2").stdout
            assert nb.ifname(1) in nb.birdc("show", "babel", "neighbors")
            # Loopback to loopback through the mesh, both families.
            a.run("ping", "-c", "1", "-W", "5", "-I", "172.20.42.1", "172.20.42.2")
            b.run("ping", "-c", "1", "-W", "5", "-I", "fd42:4242:1234::2", "fd42:4242:1234::1")
            assert int(na.wg(na.ifname(1000))["handshake"]) > 0

            # b leaves a's answer: a's tunnel, port and Babel interface go, and the route with them.
            na.cp.set("mesh", {"localNodeId": 1, "peers": []})
            r = await na.sync()
            assert r["removed"] == [na.ifname(1000)] and na.mesh_ports() == set(), r
            assert await poll(lambda: na.ifname(1000) not in route(na, "172.20.42.2"))
        finally:
            await remove_all_tunnels(na)
            await remove_all_tunnels(nb)
