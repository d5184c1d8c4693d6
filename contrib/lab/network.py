r"""A network lab on this machine: three nodes of one network and an external peer.

Topology (every box is a network namespace; the underlay is one bridge in a fifth,
"switch" namespace, with a veth to each of the four, all on 192.0.2.0/24)::

                        switch namespace: bridge br0
        +----------------+----------------+----------------+
        |                |                |                |
    net1 (id 1)      net2 (id 2)     net3 (id 1000)     ext1
    192.0.2.1        192.0.2.2        192.0.2.3        192.0.2.4
    172.20.100.1     172.20.100.2     172.20.100.3     172.20.200.1
    fd42:100::1      fd42:100::2      fd42:100::3      fd42:200::1
         \______ WireGuard mesh + Babel _____/              |
          \___ iBGP over loopbacks, net2 is the RR ___/     |
    net1 <============ WireGuard eBGP session ==============+

The network is AS4242420100 (172.20.100.0/26, fd42:100::/48); the external peer is
AS4242420200 (172.20.200.0/26, fd42:200::/48) and has one eBGP session, with net1 only.
Node 3 has id 1000 on purpose (interface names and ports for ids >= 1000).

In each namespace run a real BIRD 3 (:class:`moenet_bird.testing.BirdDaemon`), the
installed ``moenet-agent`` (``ip netns exec <ns> <venv>/bin/moenet-agent run -c
config.json``, as ``lab.py`` starts it) and a test control plane
(:class:`moenet_core.testing.FakeControlPlane`, on 127.0.0.1 inside the namespace)
serving ``config``, ``bird-config`` (the network's AS and prefixes; for the three
network nodes ``ibgpPeers`` listing all three with ``isRr`` on net2 only),
``mesh`` (for the three: the other two, with their mesh public keys and underlay
endpoints) and ``sessions`` (net1 and ext1: one WireGuard eBGP session each way;
the others: none). ext1's agent runs without the ``mesh`` and ``ibgp`` plugins.

**Keys**: each network node's agent generates its own mesh key pair at start. The
lab waits for the public key at that node's CP (``status.meshPublicKey`` of its first
heartbeat, sent at start, or ``meshPublicKey`` of its first ``mesh/status`` report,
whichever comes first; event-based) and only then completes the other two nodes'
``mesh`` answers with it, and runs ``POST /sync {"task": "meshSync", "wait": true}``
on every node so the tunnels are made at once. The eBGP session keys are generated
by the lab (as in ``lab.py``).

Checks, each printed with the time since the agents started:

1. the mesh: two tunnels per network node, each with a WireGuard handshake, their
   ports in the mesh port set; Babel routes each loopback (/32 and /128) into the
   other two nodes' kernels through a mesh tunnel (proto bird), and every node pings every
   other node's loopbacks from its own;
2. eBGP: net1 <-> ext1 Established; net1 learns the external prefixes;
3. iBGP (over the loopbacks, through Babel, route-reflector topology: net1 and net3
   peer only with net2) Established; the external prefixes reach net2 and net3 with
   net1's loopback as BGP next hop (next hop self; on net3 reflected by net2, with
   net1 as originator), in their kernels through the mesh; ext1 learns the network's
   prefixes; net2 and net3 reach ext1's loopback through net1 (transit);
4. (``remove``) net3 leaves the ``mesh`` answer and ``ibgpPeers`` of net1's and
   net2's CPs, and ``POST /sync`` (``ibgpSync``, then ``meshSync``) on both: no tunnel
   to node 1000, no wireguard-go for it, no mesh port for it and no iBGP protocol to
   it remain on either, and net3's own iBGP session goes down; net1 <-> net2 stay up.

With ``--exits`` (``NetworkLab(exits=True)``) the lab adds ext2, a second node of
the external network (same AS and prefixes, underlay 192.0.2.5, loopbacks
172.20.200.2 and fd42:200::2, not connected to ext1) with a session to net3, and
fixes the mesh's link cost (Babel ``rtt cost 0``); instead of checks 2-4 it runs
:meth:`NetworkLab.exit_checks`: every network node's forwarding path into the
external prefixes, followed through the kernels' FIBs, never revisits a node and
leaves by an exit (net1 and net3 by their own session); ``birdc restart`` of
net1's session moves every path to net3's exit while it is down, and once it is
back the choices return to what they were and stay there.

``--once`` tears everything down after the checks, else the lab runs until Ctrl-C;
teardown leaves nothing behind (checked as ``lab.py`` does). Mesh interface names
carry a random per-node prefix (``<3 letters><a|b|c>``, e.g. ``qzxa1000``) because
``/var/run/wireguard`` is shared by all namespaces; in a real network every node
would use the default ``igp``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from moenet_bird.testing import BirdDaemon, sample_bird_config
from moenet_wireguard import keys

from moenet_core.testing import FakeControlPlane, NetNS, RecordedRequest, veth_pair
from moenet_core.testing.netns import have_root


def _two_node_lab() -> ModuleType:
    """``lab.py`` next to this file (its helpers are shared), loaded once."""
    mod = sys.modules.get("moenet_lab")
    if mod is None:
        spec = importlib.util.spec_from_file_location("moenet_lab", Path(__file__).with_name("lab.py"))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["moenet_lab"] = mod
        spec.loader.exec_module(mod)
    return mod


_lab = _two_node_lab()
LabError: type[Exception] = _lab.LabError
TOKEN: str = _lab.TOKEN
WG_RUN_DIR: Path = _lab.WG_RUN_DIR
STATUS_QUEUED_FOR_SETUP: int = _lab.STATUS_QUEUED_FOR_SETUP
say = _lab.say
_all_pids = _lab._all_pids
_comm = _lab._comm
_cmdline = _lab._cmdline
_wait_gone = _lab._wait_gone

NETWORK_ASN = 4242420100
NETWORK_PREFIX4 = "172.20.100.0/26"
NETWORK_PREFIX6 = "fd42:100::/48"
EXTERNAL_ASN = 4242420200
EXTERNAL_PREFIX4 = "172.20.200.0/26"
EXTERNAL_PREFIX6 = "fd42:200::/48"
#: Addresses in the external prefixes that no node holds (where the exit checks send to).
EXIT_PROBE4 = "172.20.200.42"
EXIT_PROBE6 = "fd42:200::42"
MESH_PORT_BASE = 51820  # meshSync.portBase's default: node N's tunnel to us listens on base + our id
MESH_SET = "udp_ports_mesh"  # the mesh's nftables port set


@attrs.define
class Session:
    """One side of the WireGuard eBGP session between net1 and ext1."""

    uuid: str
    interface: str
    listen_port: int
    link_local: str


@attrs.define
class NetNode:
    """One lab node's plan and, once running, its processes."""

    node_id: int
    name: str
    asn: int
    underlay: str
    loopback4: str
    loopback6: str
    prefix4: str
    prefix6: str
    api_port: int
    external: bool = False
    is_rr: bool = False
    mesh_prefix: str = ""
    session: Session | None = None
    session_peer: str = ""
    """The name of the node at the other end of ``session``."""
    # runtime
    dir: Path = Path()
    ns: NetNS | None = None
    bird: BirdDaemon | None = None
    cp: FakeControlPlane | None = None
    agent: asyncio.subprocess.Process | None = None
    agent_rc: int | None = None
    wg_public: str = ""
    """The public half of the key the lab generated for the eBGP session tunnel."""
    mesh_public: str = ""
    """The mesh public key the node's agent published (empty until it did)."""
    session_status: int = STATUS_QUEUED_FOR_SETUP
    members: list[int] = attrs.field(factory=list)
    """Network node ids this node's CP lists in ``mesh`` and ``ibgpPeers`` (itself included)."""
    learned: dict[str, str] = attrs.field(factory=dict)
    """Prefix learned over BGP -> ``birdc show route <prefix> all`` when it was."""

    @property
    def ns_name(self) -> str:
        assert self.ns is not None
        return self.ns.name

    @property
    def log_path(self) -> Path:
        return self.dir / "agent.log"

    @property
    def bird_dir(self) -> Path:
        return self.dir / "bird"

    @property
    def private_key_path(self) -> Path:
        return self.dir / "wg-private.key"

    @property
    def mesh_key_path(self) -> Path:
        """Where the mesh plugin keeps the node's mesh private key."""
        return self.dir / "state" / "plugins" / "mesh" / "mesh.key"

    def mesh_ifname(self, peer_id: int) -> str:
        """This node's mesh tunnel to node ``peer_id``."""
        return f"{self.mesh_prefix}{peer_id}"

    @staticmethod
    def mesh_port(peer_id: int) -> int:
        """This node's listen port for node ``peer_id``."""
        return MESH_PORT_BASE + peer_id

    @property
    def mesh_link_local(self) -> str:
        """This node's address on every mesh tunnel (``fe80::1:<id >> 16>:<id & 0xffff>``)."""
        return f"fe80::1:{self.node_id >> 16:x}:{self.node_id & 0xFFFF:x}"


def plan_nodes(suffix: str, letters: str, *, exits: bool = False) -> list[NetNode]:
    """net1, net2 (the route reflector), net3 (id 1000) and ext1; with ``exits`` also
    ext2, a second node of the external network (the same AS and prefixes, not
    connected to ext1) with a session to net3: two exits to one origin, on two nodes.

    ``suffix`` (hex) and ``letters`` keep interface names unique if two labs run at once.
    """
    nodes = [
        NetNode(
            node_id=node_id,
            name=f"net{i}",
            asn=NETWORK_ASN,
            underlay=f"192.0.2.{i}",
            loopback4=f"172.20.100.{i}",
            loopback6=f"fd42:100::{i}",
            prefix4=NETWORK_PREFIX4,
            prefix6=NETWORK_PREFIX6,
            api_port=24380 + i,
            is_rr=node_id == 2,
            mesh_prefix=letters + "abc"[i - 1],
        )
        for i, node_id in ((1, 1), (2, 2), (3, 1000))
    ]
    ext = NetNode(
        node_id=1,
        name="ext1",
        asn=EXTERNAL_ASN,
        underlay="192.0.2.4",
        loopback4="172.20.200.1",
        loopback6="fd42:200::1",
        prefix4=EXTERNAL_PREFIX4,
        prefix6=EXTERNAL_PREFIX6,
        api_port=24384,
        external=True,
        session=Session(
            uuid="6b1d0f9e-0200-4a6e-9c51-1ab0c0ffee02",
            interface=f"dn42-nt{suffix}",
            listen_port=52002,
            link_local="fe80::42:2",
        ),
        session_peer="net1",
    )
    nodes[0].session = Session(
        uuid="6b1d0f9e-0100-4a6e-9c51-1ab0c0ffee01",
        interface=f"dn42-ex{suffix}",
        listen_port=52001,
        link_local="fe80::42:1",
    )
    nodes[0].session_peer = "ext1"
    if not exits:
        return [*nodes, ext]
    ext2 = NetNode(
        node_id=2,
        name="ext2",
        asn=EXTERNAL_ASN,
        underlay="192.0.2.5",
        loopback4="172.20.200.2",
        loopback6="fd42:200::2",
        prefix4=EXTERNAL_PREFIX4,
        prefix6=EXTERNAL_PREFIX6,
        api_port=24385,
        external=True,
        session=Session(
            uuid="6b1d0f9e-0400-4a6e-9c51-1ab0c0ffee04",
            interface=f"dn42-nu{suffix}",
            listen_port=52004,
            link_local="fe80::42:4",
        ),
        session_peer="net3",
    )
    nodes[2].session = Session(
        uuid="6b1d0f9e-0300-4a6e-9c51-1ab0c0ffee03",
        interface=f"dn42-ey{suffix}",
        listen_port=52003,
        link_local="fe80::42:3",
    )
    nodes[2].session_peer = "ext2"
    return [*nodes, ext, ext2]


# ------------------------------------------------------------------ CP answers


def node_config(n: NetNode) -> dict[str, Any]:
    """The CP's ``config`` answer (merged under the local bootstrap file)."""
    return {
        "node": {
            "id": n.node_id,
            "name": n.name,
            "region": "eu-central",
            "asn": n.asn,
            "loopbackIpv4": n.loopback4,
            "loopbackIpv6": n.loopback6,
        }
    }


def ibgp_entry(m: NetNode) -> dict[str, Any]:
    return {
        "nodeId": m.node_id,
        "nodeName": m.name,
        "loopbackIpv4": m.loopback4,
        "loopbackIpv6": m.loopback6,
        "isRr": m.is_rr,
    }


def bird_config(n: NetNode, members: list[NetNode]) -> dict[str, Any]:
    """The CP's ``bird-config`` answer: policy, node, and ``ibgpPeers`` (``members``)."""
    answer = sample_bird_config(
        config_hash=f"netlab-{n.name}-" + "-".join(str(m.node_id) for m in members),
        node={
            "id": n.node_id,
            "name": n.name,
            "regionCode": "EU",
            "loopbackIpv4": n.loopback4,
            "loopbackIpv6": n.loopback6,
            "continentLc": "LC_ORIGIN_EU",
            "subregionLc": "EU_W",
            "regionCommunity": "DN42_REGION_EU",
            "countryCommunity": 276,
        },
        policy={"dn42As": str(n.asn), "dn42Ipv4Prefix": n.prefix4, "dn42Ipv6Prefix": n.prefix6},
    )
    answer["ibgpPeers"] = [ibgp_entry(m) for m in members]
    return answer


def mesh_answer(n: NetNode, members: list[NetNode]) -> dict[str, Any]:
    """The CP's ``mesh`` answer: every other member whose public key is known.

    No port in the endpoint: the agent derives it (``portBase`` + our id)."""
    return {
        "localNodeId": n.node_id,
        "localLoopback4": n.loopback4,
        "localLoopback6": n.loopback6,
        "peers": [
            {
                "nodeId": m.node_id,
                "nodeName": m.name,
                "loopbackIpv4": m.loopback4,
                "loopbackIpv6": m.loopback6,
                "publicKey": m.mesh_public,
                "endpoint": m.underlay,
                "isRr": m.is_rr,
            }
            for m in members
            if m is not n and m.mesh_public
        ],
    }


def session_for(n: NetNode, other: NetNode) -> dict[str, Any]:
    """``n``'s eBGP session to ``other`` (as ``lab.py``'s): WireGuard over the underlay,
    MP-BGP with extended next hop over link-local."""
    assert n.session is not None and other.session is not None
    return {
        "uuid": n.session.uuid,
        "asn": other.asn,
        "name": f"netlab-{other.name}",
        "status": n.session_status,
        "type": "wireguard",
        "interface": n.session.interface,
        "endpoint": f"{other.underlay}:{other.session.listen_port}",
        "credential": {"publicKey": other.wg_public, "listenPort": n.session.listen_port},
        "ipv6LinkLocal": other.session.link_local,
        "mtu": 1420,
        "extensions": ["mp-bgp", "extended-nexthop"],
    }


def agent_config(
    n: NetNode, cp_url: str, mesh_interval: float = 10.0, *, rtt_cost: int | None = None
) -> dict[str, Any]:
    """The node's local ``config.json`` (bootstrap mode; local settings win over the CP's).
    ``mesh_interval``: of ``meshSync`` and ``ibgpSync`` (tests make it long, so that
    only their ``POST /sync`` runs them after the start). ``rtt_cost``: the mesh's
    Babel ``rtt cost`` (None: the default)."""
    cfg: dict[str, Any] = {
        "bootstrap": {"apiUrl": cp_url, "nodeName": n.name, "token": TOKEN},
        "server": {"listen": f"127.0.0.1:{n.api_port}"},
        "state": {"directory": str(n.dir / "state")},
        "logging": {"format": "text", "level": "INFO"},
        "controlPlane": {"syncInterval": 5, "heartbeatInterval": 30},
        "tasks": {"birdConfigSync": {"interval": 5}},
        "bird": {
            "configDir": str(n.bird_dir),
            "controlSocket": str(n.dir / "bird-run" / "bird.ctl"),
            "templateDir": str(n.dir / "templates"),
        },
        "wireguard": {"backend": "userspace", "privateKeyPath": str(n.private_key_path)},
        # This kernel (like many VPS kernels) has no dummy driver; a bridge works everywhere.
        "loopback": {"kind": "bridge"},
    }
    if n.session is not None:
        cfg["wireguard"]["dn42Ipv6LinkLocal"] = n.session.link_local
    if n.external:
        cfg["plugins"] = {"disable": ["mesh", "ibgp"]}
    else:
        cfg["tasks"].update(
            {"meshSync": {"interval": mesh_interval}, "ibgpSync": {"interval": mesh_interval}}
        )
        # Babel hellos every second: the lab converges in seconds, not tens of them.
        cfg["meshSync"] = {"interfacePrefix": n.mesh_prefix, "helloIntervalS": 1}
        if rtt_cost is not None:
            cfg["meshSync"]["rttCost"] = rtt_cost
    return cfg


# ------------------------------------------------------------------ observations (pure parsers)


def parse_bgp_protocols(text: str) -> dict[str, dict[str, str]]:
    """``birdc show protocols all`` -> BGP protocol name -> {state, since, info, bgpState,
    neighbor (without a ``%scope``), neighborAs, session, source}."""
    keys = {
        "BGP state": "bgpState",
        "Neighbor address": "neighbor",
        "Neighbor AS": "neighborAs",
        "Session": "session",
        "Source address": "source",
    }
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        cols = line.split()
        if not cols:
            continue
        if not line[0].isspace():
            current = None
            # Name Proto Table State Since Info... (BIRD 3 prints Since as one token)
            if len(cols) >= 5 and cols[1] == "BGP":
                current = {"state": cols[3], "since": cols[4], "info": " ".join(cols[5:])}
                out[cols[0]] = current
            continue
        if current is None:
            continue
        key, _, value = line.strip().partition(":")
        if key in keys and keys[key] not in current:
            value = value.strip()
            current[keys[key]] = value.split("%")[0] if key == "Neighbor address" else value
    return out


def parse_route(text: str) -> dict[str, str]:
    """The first (best) route of ``birdc show route <prefix> all``: ``net``, ``proto``
    (the protocol it came from), ``via`` (``<address> on <interface>``) and every
    attribute line (``bgp_next_hop``, ``bgp_path``, ``bgp_originator_id``, ...);
    empty when there is no route."""
    route: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line[0].isspace():
            if route:
                break  # the next route or table
            m = re.match(r"^(\S+)\s+\S+\s+\[(\S+)\s", line)
            if m:
                route = {"net": m.group(1), "proto": m.group(2)}
            continue
        if not route:
            continue
        stripped = line.strip()
        if stripped.startswith("via "):
            route.setdefault("via", stripped[4:])
            continue
        key, sep, value = stripped.partition(":")
        if sep and " " not in key:
            route.setdefault(key, value.strip())
    return route


parse_udp_set = _lab.parse_udp_set


# ------------------------------------------------------------------ the lab


class NetworkLab:
    def __init__(
        self,
        *,
        timeout: float = 90.0,
        keep_logs: Path | None = None,
        mesh_interval: float = 10.0,
        exits: bool = False,
    ) -> None:
        """``exits``: add ext2 with a session to net3 (:func:`plan_nodes`), and give the
        mesh a fixed cost per link (Babel ``rtt cost 0``) so that the IGP metric, and
        so the exit each node picks, depends on the topology only, not on how loaded
        this machine is."""
        self.timeout = timeout
        self.mesh_interval = mesh_interval
        self.exits = exits
        self.keep_logs = keep_logs
        self.work = Path(tempfile.mkdtemp(prefix="moenet-nl-"))
        self.suffix = os.urandom(2).hex()[:3]
        self.letters = "".join(random.choices(string.ascii_lowercase, k=3))
        self.nodes = plan_nodes(self.suffix, self.letters, exits=exits)
        self.t0 = time.monotonic()
        self.times: dict[str, float] = {}
        sibling = Path(sys.executable).with_name("moenet-agent")
        self.agent_bin = (
            str(sibling) if sibling.exists() else (shutil.which("moenet-agent") or "moenet-agent")
        )
        self.birdc_bin = shutil.which("birdc") or "/opt/moenet-bird3/bin/birdc"
        self.switch: NetNS | None = None
        self.why = ""
        """What the running poll's check saw last when it was not satisfied (for the error)."""
        self.ns_names: list[str] = []
        self.leftovers: list[str] = []

    # -------------------------------------------------------------- plan accessors

    @property
    def network(self) -> list[NetNode]:
        return [n for n in self.nodes if not n.external]

    @property
    def external(self) -> NetNode:
        """ext1."""
        return next(n for n in self.nodes if n.external)

    @property
    def externals(self) -> list[NetNode]:
        return [n for n in self.nodes if n.external]

    def by_id(self, node_id: int) -> NetNode:
        return next(n for n in self.network if n.node_id == node_id)

    def by_name(self, name: str) -> NetNode:
        return next(n for n in self.nodes if n.name == name)

    def peer_of(self, n: NetNode) -> NetNode:
        """The node at the other end of ``n``'s session."""
        return self.by_name(n.session_peer)

    def log(self, msg: str) -> None:
        say(msg, self.t0)

    def mark(self, label: str) -> float:
        """Record (and print) the time since the agents started for ``label``."""
        t = time.monotonic() - self.t0
        self.times[label] = t
        self.log(label)
        return t

    def interface_names(self, n: NetNode) -> list[str]:
        """Every tunnel name ``n`` may have: its mesh tunnels to every other network node
        (even after one left its answer) and its session."""
        names = [n.mesh_ifname(m.node_id) for m in self.network if m is not n] if not n.external else []
        if n.session is not None:
            names.append(n.session.interface)
        return names

    # -------------------------------------------------------------- setup

    async def up(self) -> None:
        self.switch = NetNS(prefix="moenet-netlab")
        self.ns_names.append(self.switch.name)
        self.switch.run("ip", "link", "add", "br0", "type", "bridge")
        self.switch.run("ip", "link", "set", "br0", "up")
        for n in self.nodes:
            n.dir = self.work / n.name
            n.dir.mkdir(parents=True)
            (n.dir / "templates").mkdir()
            n.ns = NetNS(prefix="moenet-netlab")
            self.ns_names.append(n.ns.name)
            key = keys.generate_private_key()
            keys.write_key_file(n.private_key_path, key)
            os.chmod(n.private_key_path, 0o600)
            n.wg_public = key.public_key()
            veth_pair(n.ns, self.switch, "underlay", f"p-{n.name}")
            self.switch.run("ip", "link", "set", f"p-{n.name}", "master", "br0")
            n.ns.run("ip", "addr", "add", f"{n.underlay}/24", "dev", "underlay")
            if not n.external:
                # Routers: net1 forwards between ext1 and the mesh.
                n.ns.run(
                    "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/forwarding"
                    " && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
                )  # fmt: skip
        self.log(
            f"namespaces: switch {self.switch.name} (bridge br0, 192.0.2.0/24), "
            + ", ".join(f"{n.name} {n.ns_name} ({n.underlay})" for n in self.nodes)
            + f"; work dir {self.work}"
        )
        for n in self.nodes:
            assert n.ns is not None
            n.bird = BirdDaemon(n.ns, n.dir / "bird-run").start()
            cp = FakeControlPlane(token=TOKEN)
            # Created while this thread is in the node's namespace: it serves 127.0.0.1 there.
            with n.ns.entered():
                await cp.start()
            n.cp = cp
            cp.set("config", node_config(n))
            if n.external:
                cp.set("bird-config", bird_config(n, []))
                cp.set("mesh", {"localNodeId": n.node_id, "peers": []})
            else:
                n.members = [m.node_id for m in self.network]
                self.publish(n)
            cp.on_post("modify", lambda body, n=n: self.apply_report(n, body))
            self.publish_sessions(n)
            rtt_cost = 0 if self.exits else None
            (n.dir / "config.json").write_text(
                json.dumps(agent_config(n, cp.url, self.mesh_interval, rtt_cost=rtt_cost), indent=2)
            )
        pairs = " and ".join(f"{n.name} <-> {n.session_peer}" for n in self.network if n.session)
        self.log(
            "BIRDs running; control planes serving config, bird-config (ibgpPeers: net1, net2 (RR), "
            f"net3), mesh (no peers yet: keys unknown) and the {pairs} session" + ("s" if self.exits else "")
        )
        self.t0 = time.monotonic()  # times are measured from the agents' start
        for n in self.nodes:
            await self.start_agent(n)
            what = (
                f"AS{n.asn} external peer, {n.prefix4} + {n.prefix6}"
                if n.external
                else f"node id {n.node_id}{' (route reflector)' if n.is_rr else ''}, "
                f"loopbacks {n.loopback4} {n.loopback6}, mesh interfaces {n.mesh_prefix}<id>"
            )
            assert n.agent is not None
            self.log(f"{n.name}: agent pid {n.agent.pid} ({what}; log {n.log_path})")

    async def start_agent(self, n: NetNode) -> asyncio.subprocess.Process:
        """Start ``n``'s agent (again) in its namespace, appending to its log."""
        assert n.agent is None or n.agent.returncode is not None, f"{n.name}'s agent is running"
        with n.log_path.open("ab") as log:
            n.agent = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", n.ns_name, self.agent_bin, "run", "-c", str(n.dir / "config.json"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        return n.agent

    # -------------------------------------------------------------- the CPs' answers

    def publish(self, n: NetNode) -> None:
        """Serve ``n``'s ``bird-config`` and ``mesh`` for its current members."""
        assert n.cp is not None and not n.external
        members = [self.by_id(i) for i in n.members]
        n.cp.set("bird-config", bird_config(n, members))
        n.cp.set("mesh", mesh_answer(n, members))

    def publish_sessions(self, n: NetNode) -> None:
        assert n.cp is not None
        sessions = []
        if n.session is not None:
            sessions.append(session_for(n, self.peer_of(n)))
        n.cp.set("sessions", {"bgpSessions": sessions})

    def apply_report(self, n: NetNode, body: Any) -> None:
        """Like a real CP: an accepted report sets the session's status."""
        if (
            n.session is not None
            and isinstance(body, dict)
            and body.get("uuid") == n.session.uuid
            and isinstance(body.get("status"), int)
        ):
            n.session_status = body["status"]
            self.publish_sessions(n)

    def remove_member(self, gone: NetNode) -> list[NetNode]:
        """Drop ``gone`` from every other network node's ``mesh`` and ``ibgpPeers``;
        returns the nodes whose answers changed."""
        changed = []
        for n in self.network:
            if n is not gone and gone.node_id in n.members:
                n.members.remove(gone.node_id)
                self.publish(n)
                changed.append(n)
        return changed

    # -------------------------------------------------------------- driving and observing

    async def _watch(self, aw: Awaitable[Any]) -> Any:
        """Await ``aw`` but fail fast if an agent exits."""
        main = asyncio.ensure_future(aw)
        exits = [asyncio.ensure_future(x.agent.wait()) for x in self.nodes if x.agent is not None]
        try:
            done, _ = await asyncio.wait({main, *exits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in exits:
                f.cancel()
        if main not in done:
            main.cancel()
            dead = [(x.name, x.agent.returncode) for x in self.nodes if x.agent is not None]
            name, rc = next(((nm, rc) for nm, rc in dead if rc is not None), ("?", None))
            raise LabError(f"agent of {name} exited {rc}")
        return main.result()

    async def poll(self, what: str, check: Callable[[], Awaitable[Any]], timeout: float | None = None) -> Any:
        """Bounded poll (BIRD and the kernel have no push interface): every 0.25 s
        until ``check`` is truthy; fails when an agent exits or time runs out."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self.why = ""
        while True:
            result = await check()
            if result:
                return result
            for x in self.nodes:
                if x.agent is not None and x.agent.returncode is not None:
                    raise LabError(f"agent of {x.name} exited {x.agent.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                last = f" (last seen: {self.why})" if self.why else ""
                raise LabError(
                    f"timed out after {self.timeout if timeout is None else timeout:g} s: {what}{last}"
                )
            await asyncio.sleep(0.25)

    async def run_in(self, n: NetNode, *args: str, check: bool = True, timeout: float = 15) -> str:
        """Run ``args`` in ``n``'s namespace; stdout and stderr together."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", n.ns_name, *args,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        text = out.decode(errors="replace")
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(args)} in {n.name} exited {proc.returncode}: {text.strip()}")
        return text

    async def birdc(self, n: NetNode, *args: str) -> str:
        assert n.bird is not None
        return await self.run_in(n, self.birdc_bin, "-s", str(n.bird.socket), *args, check=False)

    async def bgp_protocols(self, n: NetNode) -> dict[str, dict[str, str]]:
        """Every BGP protocol in ``n``'s BIRD with its state and neighbour."""
        return parse_bgp_protocols(await self.birdc(n, "show", "protocols", "all"))

    def loopbacks(self, m: NetNode) -> set[str]:
        return {m.loopback4, m.loopback6}

    async def ibgp_protocols(self, n: NetNode) -> dict[int, dict[str, Any]]:
        """``n``'s BGP protocols whose neighbour is a network node's loopback, by node id."""
        out: dict[int, dict[str, Any]] = {}
        for name, p in (await self.bgp_protocols(n)).items():
            for m in self.network:
                if p.get("neighbor") in self.loopbacks(m):
                    out[m.node_id] = {"name": name, **p}
        return out

    async def links(self, n: NetNode) -> dict[str, dict[str, Any]]:
        """``ip -j -d link show`` in ``n``'s namespace, by name."""
        return {lk["ifname"]: lk for lk in json.loads(await self.run_in(n, "ip", "-j", "-d", "link", "show"))}

    async def mesh_ports(self, n: NetNode) -> set[int]:
        return parse_udp_set(await self.run_in(n, "nft", "-j", "list", "ruleset"), MESH_SET)

    async def wg_peer(self, n: NetNode, ifname: str) -> dict[str, str] | None:
        """``ifname``'s device and its one peer as wireguard-go reports them over its UAPI
        socket (``get=1``; keys turned to base64): ``public`` (ours), ``port``, ``peer``,
        ``endpoint``, ``allowed`` (comma-separated), ``handshake`` (seconds since the
        epoch, 0: none), ``peers`` (how many); None when nothing serves ``ifname``.
        (The socket is per name, not per namespace: ``n`` only names the node.)"""
        path = WG_RUN_DIR / f"{ifname}.sock"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 5)
        except (OSError, TimeoutError):
            return None
        lines: list[str] = []
        try:
            writer.write(b"get=1\n\n")
            await writer.drain()
            while line := (await asyncio.wait_for(reader.readline(), 5)).decode().rstrip("\n"):
                lines.append(line)
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
        if lines[-1:] != ["errno=0"]:
            raise LabError(f"{n.name}: wireguard-go for {ifname} answered {lines[-1:]}")
        out = {"public": "", "port": "", "peer": "", "endpoint": "", "handshake": "0", "peers": "0"}
        allowed: list[str] = []
        for line in lines[:-1]:
            key, _, value = line.partition("=")
            if key == "private_key":
                out["public"] = keys.bytes_to_b64(keys.public_from_private(bytes.fromhex(value)))
            elif key == "listen_port":
                out["port"] = value
            elif key == "public_key":
                out["peers"] = str(int(out["peers"]) + 1)
                out["peer"] = out["peer"] or keys.hex_to_b64(value)
            elif out["peers"] != "1":
                continue  # only the first peer's lines
            elif key == "endpoint":
                out["endpoint"] = value
            elif key == "allowed_ip":
                allowed.append(value)
            elif key == "last_handshake_time_sec":
                out["handshake"] = value
        out["allowed"] = ",".join(allowed)
        return out

    async def kernel_route(self, n: NetNode, prefix: str) -> dict[str, Any] | None:
        """The kernel's route for exactly ``prefix`` in ``n`` (main table), or None."""
        family = "-6" if ":" in prefix else "-4"
        routes = json.loads(await self.run_in(n, "ip", family, "-j", "route", "show", "exact", prefix))
        return routes[0] if routes else None

    async def ping(self, n: NetNode, src: str, dst: str) -> bool:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", n.ns_name, "ping", "-n", "-q", "-c", "1", "-W", "1", "-I", src, dst,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return await asyncio.wait_for(proc.wait(), 15) == 0

    async def sync(self, n: NetNode, task: str) -> dict[str, Any]:
        """``POST /sync {task, wait: true}`` on ``n``'s agent: one full run of ``task``
        that starts after this call, awaited; returns its ``{ok, duration, error}``."""
        body = json.dumps({"task": task, "wait": True})
        url = f"http://127.0.0.1:{n.api_port}/sync"
        curl = [
            "curl",
            "-sf",
            "-m",
            str(int(self.timeout)),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ]
        out = await self._watch(self.run_in(n, *curl, "-d", body, url, timeout=self.timeout + 5))
        result: dict[str, Any] = json.loads(out)["results"][task]
        return result

    async def agent_status(self, n: NetNode) -> dict[str, Any]:
        out = await self.run_in(n, "curl", "-sf", f"http://127.0.0.1:{n.api_port}/status")
        status: dict[str, Any] = json.loads(out)
        return status

    def wireguard_go(self, names: list[str]) -> list[int]:
        """wireguard-go processes serving any of ``names``."""
        return [
            p
            for p in _all_pids()
            if _comm(p) == "wireguard-go" and any(i in _cmdline(p).split() for i in names)
        ]

    # -------------------------------------------------------------- the checks

    async def wait_mesh_key(self, n: NetNode) -> str:
        """The mesh public key ``n``'s agent published: the first heartbeat (``status.
        meshPublicKey``) or ``mesh/status`` report (``meshPublicKey``) carrying it at
        its CP, whichever comes first (event-based)."""
        assert n.cp is not None
        cp = n.cp
        waits = [
            asyncio.ensure_future(
                cp.wait_for(res, where=lambda r: bool(published_key(r)), method="POST", timeout=self.timeout)
            )
            for res in ("heartbeat", "mesh/status")
        ]
        try:
            done, _ = await self._watch(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED))
            first: RecordedRequest = next(iter(done)).result()[0]
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        key = published_key(first)
        if not keys.is_valid_public_key(key):
            raise LabError(f"{n.name} published an invalid mesh public key {key!r}")
        n.mesh_public = key
        self.log(f"{n.name}: mesh public key {key} (from its POST {first.resource})")
        return key

    async def exchange_keys(self) -> None:
        """Learn every network node's mesh key, complete the ``mesh`` answers, and sync."""
        await asyncio.gather(*(self.wait_mesh_key(n) for n in self.network))
        self.mark("mesh keys known: mesh answers completed")
        for n in self.network:
            self.publish(n)
        results = await asyncio.gather(*(self.sync(n, "meshSync") for n in self.network))
        for n, r in zip(self.network, results, strict=True):
            if not r.get("ok"):
                raise LabError(f"meshSync on {n.name} failed: {r.get('error')}")
        self.mark("meshSync run on net1, net2, net3 (POST /sync)")

    async def mesh_state(self, n: NetNode) -> dict[int, dict[str, str] | None]:
        """Per other member: ``wg`` of the tunnel to it (None: no tunnel)."""
        return {i: await self.wg_peer(n, n.mesh_ifname(i)) for i in n.members if i != n.node_id}

    async def wait_mesh(self) -> None:
        """Check 1a: every network node has its two tunnels, each with a handshake and the
        peer's key and endpoint, and their ports in the mesh set."""

        async def up(n: NetNode) -> bool:
            state = await self.mesh_state(n)
            return all(wg is not None and int(wg["handshake"]) > 0 for wg in state.values())

        await self.poll(
            "mesh tunnels with handshakes on all three nodes",
            lambda: _all(*(up(n) for n in self.network)),
        )
        for n in self.network:
            state = await self.mesh_state(n)
            ports = await self.mesh_ports(n)
            for i, wg in state.items():
                peer = self.by_id(i)
                assert wg is not None
                expect = {
                    "peer": peer.mesh_public,
                    "port": str(n.mesh_port(i)),
                    "endpoint": f"{peer.underlay}:{peer.mesh_port(n.node_id)}",
                }
                got = {k: wg[k] for k in expect}
                if got != expect:
                    raise LabError(f"{n.name}: tunnel {n.mesh_ifname(i)} is {got}, expected {expect}")
            want = {n.mesh_port(i) for i in state}
            if ports != want:
                raise LabError(f"{n.name}: mesh ports {sorted(ports)}, expected {sorted(want)}")
            self.log(
                f"{n.name}: mesh tunnels "
                + ", ".join(f"{n.mesh_ifname(i)} :{n.mesh_port(i)}" for i in state)
                + " with handshakes; ports open"
            )
        self.mark("mesh up (2 tunnels per node, handshakes)")

    async def babel_routes_ok(self, n: NetNode) -> bool:
        """Every other member's loopbacks in ``n``'s kernel, put there by BIRD (Babel),
        through one of ``n``'s mesh tunnels (the direct one unless RTT costs make a
        two-hop path cheaper on a loaded machine)."""
        mesh = {n.mesh_ifname(i) for i in n.members}
        for i in n.members:
            if i == n.node_id:
                continue
            m = self.by_id(i)
            for prefix in (f"{m.loopback4}/32", f"{m.loopback6}/128"):
                r = await self.kernel_route(n, prefix)
                if r is None or r.get("dev") not in mesh or r.get("protocol") != "bird":
                    self.why = f"{n.name}: {prefix} -> {r}"
                    return False
        return True

    async def wait_babel(self) -> None:
        """Check 1b: each loopback in the other two kernels via a mesh tunnel (Babel,
        proto bird), then a ping from every loopback to every other, both families."""
        await self.poll(
            "Babel routes to every other loopback through the mesh",
            lambda: _all(*(self.babel_routes_ok(n) for n in self.network)),
        )
        self.mark("Babel: every loopback routed through the mesh on the other two")
        pairs = [
            (n, src, dst)
            for n in self.network
            for m in self.network
            if m is not n
            for src, dst in ((n.loopback4, m.loopback4), (n.loopback6, m.loopback6))
        ]

        async def pings() -> bool:
            return all(await asyncio.gather(*(self.ping(n, s, d) for n, s, d in pairs)))

        await self.poll("loopback-to-loopback pings over the mesh", pings)
        self.mark(f"ping: {len(pairs)} loopback-to-loopback pings over the mesh answered")

    async def ebgp_protocol(self, n: NetNode, other: NetNode) -> dict[str, str] | None:
        assert other.session is not None
        for name, p in (await self.bgp_protocols(n)).items():
            if p.get("neighbor") == other.session.link_local:
                return {"name": name, **p}
        return None

    async def wait_ebgp(self) -> None:
        """Check 2: net1 <-> ext1 Established; net1 learns ext1's prefixes."""
        n1, ext = self.network[0], self.external

        async def established() -> bool:
            a, b = await self.ebgp_protocol(n1, ext), await self.ebgp_protocol(ext, n1)
            return bool(a and b and a.get("bgpState") == "Established" and b.get("bgpState") == "Established")

        await self.poll("eBGP net1 <-> ext1 Established", established)
        self.mark("eBGP net1 <-> ext1 Established")
        proto = await self.ebgp_protocol(n1, ext)
        assert proto is not None
        await self.wait_learned(
            n1, self.external_prefixes(), f"eBGP {proto['name']}", {proto["name"]}, EXTERNAL_ASN
        )
        self.mark("net1 learned the external prefixes over eBGP")

    def external_prefixes(self) -> list[str]:
        return [EXTERNAL_PREFIX4, EXTERNAL_PREFIX6]

    async def wait_learned(
        self, n: NetNode, prefixes: list[str], what: str, protocols: set[str], origin_as: int
    ) -> None:
        """Until ``n``'s best route for each of ``prefixes`` comes from one of ``protocols``
        with AS path ``origin_as``; keeps ``birdc show route <prefix> all`` in ``n.learned``."""

        async def check() -> bool:
            for p in prefixes:
                text = await self.birdc(n, "show", "route", p, "all")
                r = parse_route(text)
                if r.get("proto") not in protocols or r.get("bgp_path") != str(origin_as):
                    return False
                n.learned[p] = text
            return True

        await self.poll(f"{n.name} to learn {', '.join(prefixes)} over {what}", check)

    async def wait_ibgp(self) -> None:
        """Check 3a: the route-reflector topology, Established: net2 with net1 and net3,
        net1 and net3 only with net2."""
        rr = next(n for n in self.network if n.is_rr)

        def expected(n: NetNode) -> set[int]:
            others = {i for i in n.members if i != n.node_id}
            return others if n.is_rr else {rr.node_id} & others

        async def check(n: NetNode) -> bool:
            protos = await self.ibgp_protocols(n)
            return set(protos) == expected(n) and all(
                p.get("bgpState") == "Established" for p in protos.values()
            )

        await self.poll(
            "iBGP Established in the route-reflector topology",
            lambda: _all(*(check(n) for n in self.network)),
        )
        for n in self.network:
            protos = await self.ibgp_protocols(n)
            self.log(
                f"{n.name}: iBGP "
                + ", ".join(
                    f"{p['name']} -> {self.by_id(i).name} ({p['neighbor']})" for i, p in protos.items()
                )
                + " Established"
            )
        self.mark("iBGP Established (net1 - net2 (RR) - net3)")

    async def wait_external_at(self, n: NetNode) -> None:
        """Check 3b: ``n`` (no eBGP session) has the external prefixes over iBGP with
        net1's loopback as BGP next hop (reflected by the RR when ``n`` has no session
        with net1: net1 the originator), in its kernel through the mesh, resolved like
        net1's loopback."""
        n1 = self.network[0]
        protos = await self.ibgp_protocols(n)
        await self.wait_learned(
            n, self.external_prefixes(), "iBGP", {p["name"] for p in protos.values()}, EXTERNAL_ASN
        )
        for p, text in n.learned.items():
            r = parse_route(text)
            hops = r.get("bgp_next_hop", "").split()
            if not hops or not set(hops) <= self.loopbacks(n1):
                raise LabError(f"{n.name}: {p} has bgp_next_hop {hops}, expected net1's loopback:\n{text}")
            if n1.node_id not in protos and r.get("bgp_originator_id") != n1.loopback4:
                raise LabError(f"{n.name}: {p} (reflected) does not name net1 as originator:\n{text}")
        reflected = "" if n1.node_id in protos else ", reflected by the RR"
        self.mark(f"{n.name}: external prefixes over iBGP, next hop net1{reflected}")

        async def in_kernel() -> bool:
            # Resolved recursively through the IGP: the same way as net1's loopback.
            igp = await self.kernel_route(n, f"{n1.loopback6}/128")
            for p in self.external_prefixes():
                r = await self.kernel_route(n, p)
                if (
                    igp is None
                    or r is None
                    or r.get("protocol") != "bird"
                    or r.get("dev") != igp.get("dev")
                    or r.get("dev") not in {n.mesh_ifname(i) for i in n.members}
                    or _gateway(r) != _gateway(igp)
                ):
                    self.why = f"{n.name}: {p} -> {r}, {n1.loopback6} -> {igp}"
                    return False
            return True

        await self.poll(f"{n.name}: external prefixes in the kernel through the mesh towards net1", in_kernel)

    async def wait_external_learns_network(self) -> None:
        ext, n1 = self.external, self.network[0]
        proto = await self.ebgp_protocol(ext, n1)
        assert proto is not None
        await self.wait_learned(
            ext, [NETWORK_PREFIX4, NETWORK_PREFIX6], f"eBGP {proto['name']}", {proto["name"]}, NETWORK_ASN
        )
        self.mark("ext1 learned the network's prefixes")

    async def wait_transit(self) -> None:
        """net2 and net3 reach ext1's loopback (through net1: mesh, then the session)."""
        ext = self.external
        pairs = [
            (n, src, dst)
            for n in self.network[1:]
            for src, dst in ((n.loopback4, ext.loopback4), (n.loopback6, ext.loopback6))
        ]

        async def pings() -> bool:
            return all(await asyncio.gather(*(self.ping(n, s, d) for n, s, d in pairs)))

        await self.poll("net2 and net3 pinging ext1's loopbacks through net1", pings)
        self.mark("transit: net2 and net3 ping ext1's loopbacks through net1")

    # -------------------------------------------------------------- two exits (``exits``)

    async def session_established(self, n: NetNode) -> dict[str, str] | None:
        """``n``'s eBGP protocol to its session peer when both ends are Established."""
        other = self.peer_of(n)
        a, b = await self.ebgp_protocol(n, other), await self.ebgp_protocol(other, n)
        if a and b and a.get("bgpState") == "Established" and b.get("bgpState") == "Established":
            return a
        self.why = f"{n.name}: {a}, {other.name}: {b}"
        return None

    async def wait_sessions(self) -> None:
        """Every eBGP session Established at both ends."""
        ends = [n for n in self.network if n.session is not None]
        await self.poll(
            "eBGP " + ", ".join(f"{n.name} <-> {n.session_peer}" for n in ends) + " Established",
            lambda: _all(*(_truthy(self.session_established(n)) for n in ends)),
        )
        self.mark("eBGP " + " and ".join(f"{n.name} <-> {n.session_peer}" for n in ends) + " Established")

    def exit_probes(self) -> list[str]:
        """Addresses in the external prefixes that no node holds: where the paths go."""
        return [EXIT_PROBE4, EXIT_PROBE6]

    def next_node(self, n: NetNode, dev: str) -> NetNode | None:
        """The node behind ``n``'s interface ``dev`` (a mesh tunnel or the session), or None."""
        if n.session is not None and dev == n.session.interface:
            return self.peer_of(n)
        for m in self.network:
            if m is not n and dev == n.mesh_ifname(m.node_id):
                return m
        return None

    async def fib_path(self, start: NetNode, dst: str) -> FibPath:
        """The forwarding path to ``dst`` from ``start``, from the kernels' FIBs: ``ip
        route get`` in each namespace, following the interface it names to the node
        behind it, until the path leaves the network by a session (its exit), has no
        route, or comes back to a node it passed (a loop)."""
        hops: list[str] = []
        devs: list[str] = []
        n = start
        while True:
            if n.name in hops:
                return FibPath(hops=[*hops, n.name], devs=devs, error="loop")
            hops.append(n.name)
            out = await self.run_in(n, "ip", "-j", "route", "get", dst, check=False)
            try:
                [r] = json.loads(out)
            except ValueError:
                return FibPath(hops=hops, devs=devs, error=f"no route at {n.name}: {out.strip()}")
            dev = str(r.get("dev", ""))
            devs.append(dev)
            nxt = self.next_node(n, dev)
            if nxt is None:
                return FibPath(hops=hops, devs=devs, error=f"{n.name} sends it to {dev or r}")
            if nxt.external:
                return FibPath(hops=hops, devs=devs, exit=n.name, external=nxt.name)
            n = nxt

    async def best_route(self, n: NetNode, prefix: str) -> tuple[str, str]:
        """``n``'s best route for ``prefix`` in BIRD: (protocol, BGP next hop)."""
        r = parse_route(await self.birdc(n, "show", "route", prefix, "all"))
        return r.get("proto", ""), r.get("bgp_next_hop", "")

    async def exit_choices(self) -> dict[str, Any]:
        """What every network node picked for the external prefixes: per node and probe
        address its forwarding path (:meth:`fib_path`), per node and prefix its best
        route in BIRD."""
        out: dict[str, Any] = {}
        for n in self.network:
            for dst in self.exit_probes():
                out[f"{n.name} -> {dst}"] = await self.fib_path(n, dst)
            for prefix in self.external_prefixes():
                out[f"{n.name} best {prefix}"] = await self.best_route(n, prefix)
        return out

    async def wait_exits(self, when: str = "") -> dict[str, Any]:
        """Until every network node has a loop-free forwarding path to both probe
        addresses that leaves by an exit, and the nodes with a session use their own;
        returns :meth:`exit_choices` then."""
        own = {n.name: n for n in self.network if n.session is not None}

        async def converged() -> dict[str, Any] | None:
            choices = await self.exit_choices()
            for key, v in choices.items():
                if not isinstance(v, FibPath):
                    continue
                name = key.split()[0]
                if v.error or v.exit is None or (name in own and v.exit != name):
                    self.why = f"{key}: {v}"
                    return None
            return choices

        choices: dict[str, Any] = await self.poll("every node's path to leave by an exit", converged)
        self.mark(
            f"exits{f' ({when})' if when else ''}: every node's forwarding path leaves the network, "
            "the session nodes by their own"
        )
        return choices

    async def restart_session(self, n: NetNode) -> dict[str, str]:
        """``birdc restart`` of ``n``'s eBGP protocol (Established before); returns the
        protocol as it was before."""
        before = await self.session_established(n)
        if before is None:
            raise LabError(f"{n.name}'s session is not Established before the reset: {self.why}")
        out = await self.birdc(n, "restart", before["name"])
        if "restarted" not in out:
            raise LabError(f"{n.name}: birdc restart {before['name']}: {out.strip()}")
        self.mark(f"{n.name}: birdc restart {before['name']}")
        return before

    async def wait_failover(self, n: NetNode) -> dict[str, Any]:
        """While ``n``'s session is down: until every path that started at or passed
        ``n`` leaves by another exit; returns :meth:`exit_choices` then."""

        async def moved() -> dict[str, Any] | None:
            choices = await self.exit_choices()
            for key, v in choices.items():
                if isinstance(v, FibPath) and (v.error or v.exit in (None, n.name)):
                    self.why = f"{key}: {v}"
                    return None
            return choices

        choices: dict[str, Any] = await self.poll(f"every path to avoid {n.name}'s exit", moved)
        self.mark(f"exits: {n.name}'s session down, every path leaves by another exit")
        return choices

    async def wait_session_back(self, n: NetNode, before: dict[str, str]) -> dict[str, str]:
        """Until ``n``'s session is Established again, since a later time than ``before``."""

        async def again() -> dict[str, str] | None:
            p = await self.session_established(n)
            return p if p is not None and p.get("since") != before.get("since") else None

        after: dict[str, str] = await self.poll(f"{n.name}'s session to come back after the reset", again)
        self.mark(f"{n.name}: session {before['name']} Established again")
        return after

    async def wait_choices(self, want: dict[str, Any], what: str) -> dict[str, Any]:
        """Until :meth:`exit_choices` is ``want`` (BGP converges node by node: the exit
        first, the route reflector and its clients an update later)."""

        async def same() -> dict[str, Any] | None:
            now = await self.exit_choices()
            if now == want:
                return now
            self.why = self.describe({k: v for k, v in now.items() if want.get(k) != v})
            return None

        choices: dict[str, Any] = await self.poll(what, same)
        return choices

    async def stable_choices(self, reads: int, seconds: float) -> list[dict[str, Any]]:
        """:meth:`exit_choices` read again and again, at least ``reads`` times and over
        at least ``seconds`` (the reads, a dozen ``birdc`` and ``ip`` runs each, pace it)."""
        seen = [await self.exit_choices()]
        start = time.monotonic()
        while len(seen) < reads or time.monotonic() - start < seconds:
            seen.append(await self.exit_choices())
        return seen

    def describe(self, choices: dict[str, Any]) -> str:
        return "; ".join(
            f"{k}: {'>'.join(v.hops)} exit {v.exit}" if isinstance(v, FibPath) else f"{k}: {v[0]}"
            for k, v in choices.items()
        )

    async def exit_checks(self) -> None:
        """The ``--exits`` checks: every node's path leaves by an exit without loops,
        the nodes with a session use their own; net1's session reset moves net1 (and
        whoever went through it) to net3's exit, then everything settles back on the
        choices from before and stays there."""
        n1 = self.network[0]
        await self.exchange_keys()
        await self.wait_mesh()
        await self.wait_babel()
        await self.wait_ibgp()
        await self.wait_sessions()
        before = await self.wait_exits()
        self.log("choices: " + self.describe(before))
        proto = await self.restart_session(n1)
        self.log("during the reset: " + self.describe(await self.wait_failover(n1)))
        await self.wait_session_back(n1, proto)
        await self.wait_exits("after the reset")
        await self.wait_choices(before, "the choices from before the reset")
        seen = await self.stable_choices(10, 5.0)
        changed = [c for c in seen if c != before]
        if changed:
            raise LabError(f"choices changed after settling: {self.describe(changed[0])}")
        self.mark(f"exits: the same choices as before the reset over {len(seen)} reads")

    async def remove(self, gone: NetNode) -> list[NetNode]:
        """Check 4: ``gone`` leaves the others' ``mesh`` and ``ibgpPeers``; ``ibgpSync`` then
        ``meshSync`` on them (POST /sync; iBGP first, so BIRD still reaches ``gone`` to
        close the session); nothing of ``gone`` remains on them, ``gone``'s own iBGP
        session goes down and the sessions between the others do not flap."""
        t = time.monotonic()
        stay = [n for n in self.network if n is not gone]
        before = {n.name: await self.ibgp_protocols(n) for n in stay}
        changed = self.remove_member(gone)
        self.log(
            f"{gone.name} removed from the mesh answer and ibgpPeers of {', '.join(n.name for n in changed)}"
        )
        for task in ("ibgpSync", "meshSync"):
            results = await asyncio.gather(*(self.sync(n, task) for n in changed))
            for n, r in zip(changed, results, strict=True):
                if not r.get("ok"):
                    raise LabError(f"{task} on {n.name} failed: {r.get('error')}")
        self.mark(f"ibgpSync and meshSync run on {', '.join(n.name for n in changed)} (POST /sync)")
        problems: list[str] = []
        for n in changed:
            problems += await self.remnants(n, gone)
        if problems:
            raise LabError(f"{gone.name} not removed: " + "; ".join(problems))
        for n in stay:
            after = await self.ibgp_protocols(n)
            for i, p in before[n.name].items():
                if i == gone.node_id:
                    continue
                q = after.get(i)
                if q is None or q.get("bgpState") != "Established" or q.get("since") != p.get("since"):
                    raise LabError(f"{n.name}: iBGP to {self.by_id(i).name} changed: {p} -> {q}")

        async def own_session_down() -> bool:
            protos = await self.ibgp_protocols(gone)  # its own CP still lists the others
            return bool(protos) and all(p.get("bgpState") != "Established" for p in protos.values())

        await self.poll(f"{gone.name}'s own iBGP session to go down", own_session_down)
        self.mark(f"{gone.name}: its iBGP session is down")

        async def unrouted() -> bool:
            # Babel keeps a retracted route as "unreachable" (metric infinity) until it
            # expires (~16 s here): what matters is that nothing goes through the mesh.
            for n in changed:
                for p in (f"{gone.loopback4}/32", f"{gone.loopback6}/128"):
                    r = await self.kernel_route(n, p)
                    if r is not None and r.get("type") != "unreachable":
                        return False
            return True

        await self.poll(f"{gone.name}'s loopbacks to be unreachable from the others", unrouted)
        took = time.monotonic() - t
        self.mark(f"{gone.name}'s loopbacks unreachable from the others ({took:.2f}s after the CP change)")
        return changed

    async def remnants(self, n: NetNode, gone: NetNode) -> list[str]:
        """What of ``gone`` is still on ``n``: tunnel, wireguard-go, its socket, mesh port,
        Babel interface, iBGP protocol or an iBGP file naming its loopbacks."""
        found: list[str] = []
        name = n.mesh_ifname(gone.node_id)
        if name in await self.links(n):
            found.append(f"{n.name}: interface {name}")
        if self.wireguard_go([name]):
            found.append(f"{n.name}: wireguard-go for {name}")
        if (WG_RUN_DIR / f"{name}.sock").exists():
            found.append(f"{n.name}: {WG_RUN_DIR}/{name}.sock")
        port = n.mesh_port(gone.node_id)
        if port in await self.mesh_ports(n):
            found.append(f"{n.name}: mesh port {port}")
        if name in (await self.birdc(n, "show", "babel", "interfaces")).split():
            found.append(f"{n.name}: Babel interface {name}")
        protos = await self.ibgp_protocols(n)
        if gone.node_id in protos:
            found.append(f"{n.name}: iBGP protocol {protos[gone.node_id]['name']} to {gone.name}")
        ibgp_dir = n.bird_dir / "ibgp"
        for f in sorted(ibgp_dir.glob("*.conf")) if ibgp_dir.exists() else []:
            if any(a in f.read_text() for a in self.loopbacks(gone)):
                found.append(f"{n.name}: {f.name} names {gone.name}'s loopback")
        return found

    async def checks(self, *, remove: bool = True) -> None:
        _, n2, n3 = self.network
        await self.exchange_keys()
        await self.wait_mesh()
        await self.wait_babel()
        await self.wait_ebgp()
        await self.wait_ibgp()
        await asyncio.gather(self.wait_external_at(n2), self.wait_external_at(n3))
        await self.wait_external_learns_network()
        await self.wait_transit()
        for n in (n2, n3):
            for p, text in n.learned.items():
                print(f"--- {n.name}: birdc show route {p} all")
                print(text.rstrip())
        if remove:
            await self.remove(n3)

    def summary(self) -> str:
        lines = ["", "summary (seconds from agent start):"]
        lines += [f"  {t:7.2f}  {label}" for label, t in self.times.items()]
        return "\n".join(lines)

    # -------------------------------------------------------------- teardown

    async def down(self) -> None:
        for n in self.nodes:
            if n.agent is not None and n.agent.returncode is None:
                n.agent.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.agent is not None:
                try:
                    n.agent_rc = await asyncio.wait_for(n.agent.wait(), 30)
                except TimeoutError:
                    n.agent.kill()
                    n.agent_rc = await n.agent.wait()
                self.log(f"{n.name}: agent exited {n.agent_rc}")
        for n in self.nodes:
            if self.keep_logs is not None and n.dir.exists():
                dest = self.keep_logs / n.name
                dest.mkdir(parents=True, exist_ok=True)
                for f in (n.log_path, n.dir / "bird-run" / "bird.stderr", n.dir / "bird-run" / "bird.log"):
                    if f.exists():
                        shutil.copy(f, dest / f.name)
            if n.bird is not None:
                n.bird.stop()
            if n.ns is not None:
                # The agent leaves tunnels up on purpose (no flap across restarts): delete them.
                for name in self.interface_names(n):
                    deleter = await asyncio.create_subprocess_exec(
                        "ip", "-n", n.ns_name, "link", "del", name,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    await deleter.wait()
                wg = [p for p in n.ns.pids() if _comm(p) == "wireguard-go"]
                for pid in wg:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                await _wait_gone(wg, 5)
                n.ns.remove()
            if n.cp is not None:
                await n.cp.stop()
            for name in self.interface_names(n):
                with contextlib.suppress(FileNotFoundError):
                    (WG_RUN_DIR / f"{name}.sock").unlink()
                    self.log(f"{n.name}: removed a stale {WG_RUN_DIR}/{name}.sock")
        if self.switch is not None:
            self.switch.remove()
        shutil.rmtree(self.work, ignore_errors=True)
        self.leftovers = self.find_leftovers()
        if self.leftovers:
            self.log("LEFT BEHIND: " + "; ".join(self.leftovers))
        else:
            self.log("torn down; nothing left behind")

    def find_leftovers(self) -> list[str]:
        left: list[str] = []
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        left += [f"namespace {name}" for name in self.ns_names if name in listed]
        names = [name for n in self.nodes for name in self.interface_names(n)]
        left += [f"{WG_RUN_DIR}/{name}.sock" for name in names if (WG_RUN_DIR / f"{name}.sock").exists()]
        left += [f"wireguard-go pid {pid}" for pid in self.wireguard_go(names)]
        for n in self.nodes:
            if n.agent is not None and n.agent.returncode is None:
                left.append(f"{n.name}'s agent pid {n.agent.pid}")
            if n.bird is not None and n.bird.running:
                left.append(f"{n.name}'s BIRD")
        if self.work.exists():
            left.append(str(self.work))
        return left


def published_key(r: RecordedRequest) -> str:
    """The mesh public key in a heartbeat (``status.meshPublicKey``) or ``mesh/status``
    report (``meshPublicKey``) the CP received; empty when it has none."""
    body = r.body if isinstance(r.body, dict) else {}
    if r.resource == "heartbeat":
        body = body.get("status") if isinstance(body.get("status"), dict) else {}
    key = body.get("meshPublicKey")
    return key if isinstance(key, str) else ""


@attrs.define
class FibPath:
    """A forwarding path (:meth:`NetworkLab.fib_path`): the nodes it passes (the
    first is where it starts; on a loop the last is the node seen twice), the
    interface each one sends it out of, and either the exit (the network node whose
    session it leaves by) and the external node behind it, or what went wrong."""

    hops: list[str]
    devs: list[str]
    exit: str | None = None
    external: str | None = None
    error: str | None = None


async def _truthy(aw: Awaitable[Any]) -> bool:
    return bool(await aw)


def _gateway(route: dict[str, Any]) -> str | None:
    """The next hop of an ``ip -j route`` entry (IPv6, or IPv4 with an IPv6 ``via``)."""
    via = route.get("via")
    return route.get("gateway") or (via.get("host") if isinstance(via, dict) else None)


async def _all(*checks: Awaitable[bool]) -> bool:
    return all(await asyncio.gather(*checks))


@attrs.define
class Result:
    ok: bool
    error: str | None
    nodes: list[NetNode]
    times: dict[str, float]
    leftovers: list[str]
    cp_requests: dict[str, list[RecordedRequest]]


async def run(
    once: bool,
    *,
    timeout: float = 90.0,
    keep_logs: Path | None = None,
    remove: bool = True,
    exits: bool = False,
) -> Result:
    """Bring the lab up, check, and tear it down (at once with ``once``, else on Ctrl-C).
    ``exits``: the two-exit lab and its checks (:meth:`NetworkLab.exit_checks`)."""
    if not have_root():
        raise LabError("the lab builds network namespaces and needs root")
    lab = NetworkLab(timeout=timeout, keep_logs=keep_logs, exits=exits)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if not once:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    error: str | None = None
    try:
        await lab.up()
        checks = asyncio.ensure_future(lab.exit_checks() if exits else lab.checks(remove=remove))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({checks, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not checks.done():
            checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checks
            error = "interrupted"
        else:
            checks.result()
            print(lab.summary(), flush=True)
            if not once:
                print("lab running; Ctrl-C tears it down", flush=True)
                await stop.wait()
        stopper.cancel()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        lab.log(f"FAILED: {error}")
        for n in lab.nodes:
            if n.log_path.exists():
                tail = n.log_path.read_text(errors="replace").splitlines()[-25:]
                print(f"--- last lines of {n.name}'s agent log:\n" + "\n".join(tail), file=sys.stderr)
            if n.bird is not None and n.bird.running:
                with contextlib.suppress(Exception):
                    print(
                        f"--- {n.name} birdc show protocols:\n" + await lab.birdc(n, "show", "protocols"),
                        file=sys.stderr,
                    )
        print(lab.summary(), flush=True)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await lab.down()
    cp_requests = {n.name: list(n.cp.requests) if n.cp is not None else [] for n in lab.nodes}
    ok = error is None and not lab.leftovers and all(n.agent_rc == 0 for n in lab.nodes)
    return Result(
        ok=ok, error=error, nodes=lab.nodes, times=lab.times, leftovers=lab.leftovers, cp_requests=cp_requests
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--once", action="store_true", help="tear down right after the checks")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each step")
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy agent/BIRD logs here before teardown"
    )
    parser.add_argument(
        "--no-remove", action="store_true", help="skip the last check (net3 leaving the network)"
    )
    parser.add_argument(
        "--exits",
        action="store_true",
        help="two exits instead: ext2 with a session to net3, the exit checks and a session reset",
    )
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(
            run(
                args.once,
                timeout=args.timeout,
                keep_logs=args.keep_logs,
                remove=not args.no_remove,
                exits=args.exits,
            )
        )
    except LabError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not result.ok:
        print(
            f"network lab failed: {result.error or 'agents did not exit 0 or something was left behind'}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
