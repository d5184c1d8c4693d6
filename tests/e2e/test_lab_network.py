"""The network lab (contrib/lab/network.py), issue 6's "Lab" end to end: three nodes of one
network (ids 1, 2 and 1000; net2 the route reflector) and an external peer with an eBGP
session to net1 only, each with its own BIRD 3, installed agent and control plane.

- the mesh: two tunnels per node (wg, ip, nft, BIRD's Babel interfaces), Babel routes to
  every other loopback in the kernel through the mesh, loopback-to-loopback pings;
- eBGP net1 <-> ext1 Established, net1 learns the external prefixes;
- iBGP over the loopbacks in the route-reflector topology carries them to net2 and net3
  with net1 as next hop (on net3 reflected by net2), into their kernels; ext1 learns the
  network's prefixes; net2 and net3 reach ext1 through net1;
- net3 removed from the others' mesh answers and ``ibgpPeers`` (``POST /sync``): no
  tunnel, wireguard-go, port, Babel interface or iBGP session to it remains, the others'
  iBGP session does not flap.

Each test gets a fresh lab and tears it down, checking nothing is left behind.
Synchronisation is on events where one exists (the mesh key and reports arriving at a
CP, ``POST /sync {"task", "wait": true}`` returning after one full run); BIRD's and the
kernel's state have no push interface and are polled, bounded (``lab.poll``). The
measured times are printed (``pytest -s``) with the lab's summary.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.installed import clean_env
from helpers.lab import NETLAB, Since, load_netlab, running_netlab
from moenet_wireguard import keys

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MESH_ALIAS = "moenet-agent:mesh"  # the tunnel backend's owner alias on mesh tunnels


@pytest.fixture
async def netlab(tmp_path, monkeypatch):
    # meshSync and ibgpSync run at start and then only when a test asks (POST /sync).
    async with running_netlab(tmp_path, monkeypatch, timeout=60, mesh_interval=3600) as lab:
        yield lab


# ------------------------------------------------------------------ observations


def others(n) -> list[int]:
    return [i for i in n.members if i != n.node_id]


async def mesh_links(lab, n) -> list[str]:
    """Names of ``n``'s links the tunnel backend marked as the mesh's."""
    return sorted(name for name, lk in (await lab.links(n)).items() if lk.get("ifalias") == MESH_ALIAS)


async def addresses(lab, n, ifname: str) -> list[str]:
    [link] = json.loads(await lab.run_in(n, "ip", "-j", "addr", "show", "dev", ifname))
    return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])]


async def babel_interfaces(lab, n) -> set[str]:
    out = await lab.birdc(n, "show", "babel", "interfaces")
    return {line.split()[0] for line in out.splitlines() if line.startswith(n.mesh_prefix)}


async def route(lab, n, prefix: str) -> dict[str, str]:
    return load_netlab().parse_route(await lab.birdc(n, "show", "route", prefix, "all"))


async def cp_get(lab, n, resource: str) -> Any:
    """What ``n``'s CP serves the agent (from inside ``n``'s namespace, as the agent asks)."""
    url = f"{n.cp.url}/agent/{n.name}/{resource}"
    out = await lab.run_in(n, "curl", "-sf", "-H", f"Authorization: Bearer {load_netlab().TOKEN}", url)
    return json.loads(out)["data"]


def bgp_hops(r: dict[str, str]) -> set[str]:
    return set(r.get("bgp_next_hop", "").split())


# ------------------------------------------------------------------ checks 1-3


async def test_mesh_babel_and_ibgp_carry_the_external_prefixes(netlab):
    lab = netlab
    mod = load_netlab()
    n1, n2, n3 = lab.network
    ext = lab.external
    assert (n1.node_id, n2.node_id, n3.node_id) == (1, 2, 1000)
    assert [n.is_rr for n in lab.network] == [False, True, False]

    # Keys: each agent made its own mesh key; the lab took the public half from its CP.
    await lab.exchange_keys()
    for n in lab.network:
        assert stat.S_IMODE(n.mesh_key_path.stat().st_mode) == 0o600
        assert keys.read_key(n.mesh_key_path).public_key() == n.mesh_public
    assert len({n.mesh_public for n in lab.network}) == 3
    for n in lab.network:  # the heartbeat publishes it (ext1 has no mesh plugin: no key)
        beats = await lab._watch(n.cp.wait_for("heartbeat", method="POST", timeout=40))
        assert {mod.published_key(r) for r in beats} == {n.mesh_public}
    beats = await lab._watch(ext.cp.wait_for("heartbeat", method="POST", timeout=40))
    assert {mod.published_key(r) for r in beats} == {""}
    for n in lab.network:
        served = await cp_get(lab, n, "mesh")
        assert {p["nodeId"]: p["publicKey"] for p in served["peers"]} == {
            i: lab.by_id(i).mesh_public for i in others(n)
        }

    # 1a. The mesh: two tunnels per node, keyed, addressed and ported by node id.
    await lab.wait_mesh()
    for n in lab.network:
        assert await mesh_links(lab, n) == sorted(n.mesh_ifname(i) for i in others(n))
        for i in others(n):
            peer = lab.by_id(i)
            name = n.mesh_ifname(i)
            wg = await lab.wg_peer(n, name)
            assert wg is not None, name
            assert wg["peers"] == "1", wg
            assert wg["public"] == n.mesh_public and wg["peer"] == peer.mesh_public, wg
            assert wg["port"] == str(51820 + i), wg
            assert wg["endpoint"] == f"{peer.underlay}:{51820 + n.node_id}", wg
            assert {"fe80::/10", "ff02::1:6/128"} <= set(wg["allowed"].split(",")), wg
            assert int(wg["handshake"]) > 0, wg
            assert f"{n.mesh_link_local}/64" in await addresses(lab, n, name)
        assert await lab.mesh_ports(n) == {51820 + i for i in others(n)}
        assert await babel_interfaces(lab, n) == {n.mesh_ifname(i) for i in others(n)}
    # Each node reported both peers configured to its CP (mesh/status, after the sync).
    for n in lab.network:
        want = {
            "peers": {str(i): "configured" for i in others(n)},
            "interfaces": {str(i): n.mesh_ifname(i) for i in others(n)},
            "listenPorts": {str(i): 51820 + i for i in others(n)},
            "meshPublicKey": n.mesh_public,
            "nodeId": n.node_id,
        }

        def reported(r, want=want) -> bool:
            return isinstance(r.body, dict) and {k: r.body.get(k) for k in want} == want

        await lab._watch(n.cp.wait_for("mesh/status", method="POST", where=reported, timeout=10))
    # Node 1000's names and ports: igp-style names stay short, its port is 51820 + 1000.
    assert n1.mesh_ifname(1000) in await mesh_links(lab, n1) and len(n1.mesh_ifname(1000)) <= 15
    assert 52820 in await lab.mesh_ports(n2)

    # 1b. Babel: every loopback in the other two kernels through the mesh; pings.
    await lab.wait_babel()
    for n in lab.network:
        mesh = {n.mesh_ifname(i) for i in others(n)}
        for i in others(n):
            m = lab.by_id(i)
            for prefix in (f"{m.loopback4}/32", f"{m.loopback6}/128"):
                k = await lab.kernel_route(n, prefix)
                assert k is not None and k["protocol"] == "bird" and k["dev"] in mesh, (n.name, prefix, k)
                assert (await route(lab, n, prefix)).get("proto") == "moenet_igp", (n.name, prefix)
            for src, dst in ((n.loopback4, m.loopback4), (n.loopback6, m.loopback6)):
                await lab.poll(
                    f"{n.name}: ping {src} -> {dst}", lambda n=n, s=src, d=dst: lab.ping(n, s, d), 10
                )

    # 2. eBGP net1 <-> ext1, and only there.
    await lab.wait_ebgp()
    p1, pe = await lab.ebgp_protocol(n1, ext), await lab.ebgp_protocol(ext, n1)
    assert p1 is not None and p1["bgpState"] == "Established" and p1["neighborAs"] == str(ext.asn), p1
    assert pe is not None and pe["bgpState"] == "Established" and pe["neighborAs"] == str(n1.asn), pe
    for prefix in lab.external_prefixes():
        r = mod.parse_route(n1.learned[prefix])
        assert r["proto"] == p1["name"] and r["bgp_path"] == str(ext.asn), r
        assert r["via"] == f"{ext.session.link_local} on {n1.session.interface}", r
    for n in (n2, n3):
        assert all(p.get("neighborAs") == str(n.asn) for p in (await lab.bgp_protocols(n)).values())

    # 3a. iBGP over the loopbacks: net1 and net3 peer only with net2, the route reflector.
    await lab.wait_ibgp()
    ib = {n.name: await lab.ibgp_protocols(n) for n in lab.network}
    assert set(ib["net1"]) == {2} and set(ib["net3"]) == {2} and set(ib["net2"]) == {1, 1000}, ib
    for n in lab.network:
        for i, p in ib[n.name].items():
            assert p["bgpState"] == "Established", (n.name, p)
            assert p["neighbor"] in lab.loopbacks(lab.by_id(i)), (n.name, p)
            assert p["source"] in lab.loopbacks(n), (n.name, p)
            assert ("route-reflector" in p["session"]) == n.is_rr, (n.name, p)
            assert "internal" in p["session"], (n.name, p)

    # 3b. The external prefixes at net2 and net3: next hop net1, reflected to net3 by net2.
    await lab.wait_external_at(n2)
    await lab.wait_external_at(n3)
    for n in (n2, n3):
        via = ib[n.name][1 if n is n2 else 2]["name"]
        for prefix in lab.external_prefixes():
            r = mod.parse_route(n.learned[prefix])
            assert r["proto"] == via and r["bgp_path"] == str(ext.asn), (n.name, r)
            assert bgp_hops(r) and bgp_hops(r) <= lab.loopbacks(n1), (n.name, r)
            k = await lab.kernel_route(n, prefix)
            assert k is not None and k["protocol"] == "bird", (n.name, k)
            assert k["dev"] in {n.mesh_ifname(i) for i in others(n)}, (n.name, k)
    for prefix in lab.external_prefixes():
        assert "bgp_originator_id" not in mod.parse_route(n2.learned[prefix])
        r3 = mod.parse_route(n3.learned[prefix])
        assert r3["bgp_originator_id"] == n1.loopback4 and r3["bgp_cluster_list"] == n2.loopback4, r3

    # 3c. ext1 learns the network's prefixes; net2 and net3 reach ext1 through net1.
    await lab.wait_external_learns_network()
    for prefix in (mod.NETWORK_PREFIX4, mod.NETWORK_PREFIX6):
        r = mod.parse_route(ext.learned[prefix])
        assert r["proto"] == pe["name"] and r["bgp_path"] == str(n1.asn), r
    await lab.wait_transit()

    times = lab.times
    for label in ("mesh up", "Babel", "iBGP Established", "net2: external", "net3: external"):
        assert any(k.startswith(label) for k in times), (label, times)
    print("network lab times (s from agent start): " + "; ".join(f"{k}: {v:.2f}" for k, v in times.items()))


# ------------------------------------------------------------------ check 4


async def test_removed_node_leaves_no_tunnel_port_or_ibgp_session(netlab):
    lab = netlab
    n1, n2, n3 = lab.network
    await lab.exchange_keys()
    await lab.wait_mesh()
    await lab.wait_babel()
    await lab.wait_ibgp()

    # Before: net3 is on net1 and net2 (so the checks after the removal can fail).
    for n in (n1, n2):
        name = n.mesh_ifname(n3.node_id)
        assert name in await lab.links(n) and lab.wireguard_go([name])
        assert n.mesh_port(n3.node_id) in await lab.mesh_ports(n)
        assert name in await babel_interfaces(lab, n)
    assert n3.node_id in await lab.ibgp_protocols(n2)
    assert any("iBGP protocol" in r for r in await lab.remnants(n2, n3))
    since = {n.name: {i: p["since"] for i, p in (await lab.ibgp_protocols(n)).items()} for n in (n1, n2)}

    t = time.monotonic()
    changed = lab.remove_member(n3)
    assert changed == [n1, n2]
    for n in changed:
        assert n3.node_id not in [p["nodeId"] for p in (await cp_get(lab, n, "bird-config"))["ibgpPeers"]]
        assert n3.node_id not in [p["nodeId"] for p in (await cp_get(lab, n, "mesh"))["peers"]]
    # iBGP first (BIRD still reaches net3 to close the session), then the mesh.
    for task in ("ibgpSync", "meshSync"):
        for n in changed:
            result = await lab.sync(n, task)
            assert result["ok"], (n.name, task, result)
    took = time.monotonic() - t

    for n in changed:
        name = n.mesh_ifname(n3.node_id)
        assert await lab.remnants(n, n3) == [], n.name
        assert name not in await lab.links(n)
        assert lab.wireguard_go([name]) == []
        assert not Path(f"/var/run/wireguard/{name}.sock").exists()
        assert await lab.mesh_ports(n) == {n.mesh_port(i) for i in others(n)}
        assert await babel_interfaces(lab, n) == {n.mesh_ifname(i) for i in others(n)}
        assert await mesh_links(lab, n) == [n.mesh_ifname(i) for i in others(n)]
        protos = await lab.bgp_protocols(n)
        assert not any(p.get("neighbor") in lab.loopbacks(n3) for p in protos.values()), protos
        assert not any(
            any(a in f.read_text() for a in lab.loopbacks(n3)) for f in (n.bird_dir / "ibgp").glob("*.conf")
        )
    # Event: each reports its mesh without node 1000.
    for n in changed:
        want = {str(i) for i in others(n)}
        await lab._watch(
            n.cp.wait_for(
                "mesh/status",
                method="POST",
                where=lambda r, want=want: isinstance(r.body, dict) and set(r.body.get("peers", {})) == want,
                timeout=10,
            )
        )

    # net1 <-> net2 untouched: still Established since before, still talking over the mesh.
    for n, other in ((n1, n2), (n2, n1)):
        p = (await lab.ibgp_protocols(n))[other.node_id]
        assert p["bgpState"] == "Established" and Since(p["since"]) == since[n.name][other.node_id], (
            n.name,
            p,
        )
        await lab.poll(
            f"{n.name} pinging {other.name}", lambda n=n, o=other: lab.ping(n, n.loopback6, o.loopback6)
        )
    assert (await lab.wg_peer(n1, n1.mesh_ifname(2))) is not None

    # net3's own session goes down (its CP still lists the others), its loopbacks become
    # unreachable from net1 and net2 (Babel keeps them as "unreachable" until they expire).
    async def own_session_down() -> bool:
        protos = await lab.ibgp_protocols(n3)
        return bool(protos) and all(p["bgpState"] != "Established" for p in protos.values())

    await lab.poll("net3's iBGP session to go down", own_session_down)
    t_down = time.monotonic() - t

    async def unreachable() -> bool:
        for n in changed:
            for prefix in (f"{n3.loopback4}/32", f"{n3.loopback6}/128"):
                k = await lab.kernel_route(n, prefix)
                if k is not None and k.get("type") != "unreachable":
                    return False
        return True

    await lab.poll("net3's loopbacks unreachable from net1 and net2", unreachable)
    t_unreachable = time.monotonic() - t
    for n in changed:
        assert not await lab.ping(n, n.loopback4, n3.loopback4)
    print(
        f"removal: both syncs {took:.2f}s, net3's iBGP down {t_down:.2f}s, "
        f"unreachable {t_unreachable:.2f}s after the CP change"
    )


# ------------------------------------------------------------------ the command line


@pytest.mark.timeout(200)
def test_script_once(tmp_path):
    """What scripts/netlab runs after installing: every check, exit 0, nothing left."""
    env = clean_env(TMPDIR=str(tmp_path))
    res = subprocess.run(
        [sys.executable, str(NETLAB), "--once", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=190,
        env=env,
        check=False,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    for step in (
        "mesh up (2 tunnels per node, handshakes)",
        "Babel: every loopback routed through the mesh",
        "eBGP net1 <-> ext1 Established",
        "iBGP Established (net1 - net2 (RR) - net3)",
        "net2: external prefixes over iBGP, next hop net1",
        "net3: external prefixes over iBGP, next hop net1, reflected by the RR",
        "ext1 learned the network's prefixes",
        "net3's loopbacks unreachable from the others",
        "torn down; nothing left behind",
    ):
        assert step in out, (step, out)
    assert "summary (seconds from agent start):" in out
    assert list(tmp_path.iterdir()) == []
