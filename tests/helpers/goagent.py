"""A node laid out as the Go agent (research/go-agent.md) leaves it, and a DN42 peer.

Two namespaces joined by a veth underlay (192.0.2.1 node, 192.0.2.2 peer):

- the **node** (``GoNode``): a WireGuard tunnel named as the CP's session says,
  built the Go agent's way (§5: device, ``wg set`` private key, listen port, one
  peer with allowed IPs ``0.0.0.0/0,fd00::/8,fe80::/64``, endpoint and keepalive
  25, MTU 1420, up, and only the link-local derived from the loopback,
  ``fe80::998:302:1:1``); a BIRD 3 running the Go agent's files in its
  directory (§7: ``bird.conf`` with the ``dn42_peer`` template of local AS
  4242420998 and graceful restart, ``filters.conf`` with
  ``dn42_import_filter``/``dn42_export_filter``, ``maintenance.conf``,
  ``blacklist.conf``, the static blackholes of 172.22.188.0/26 and
  fd00:4242:7777::/48, and ``peers/dn42_<ASN>.conf`` exactly as §7.7 renders it);
  and the iptables rules of §14 (``moenet-dn42-<port>``, v4 and v6);
- the **peer**: its own tunnel and a BIRD announcing 172.20.20.0/27 and
  fd42:20::/48 over MP-BGP with extended next hop.

The Go agent used the kernel's WireGuard; this machine has wireguard-go, so the
device is a wireguard-go TUN (started as ``wireguard-go <name>``, as our userspace
backend starts it). Its kernel-made random link-local is switched off
(``addrgenmode none``), as a kernel WireGuard device has none to pick as a
source either.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
from moenet_bird.testing import BirdDaemon
from moenet_wireguard import keys

from moenet_core.testing import NetNS, veth_pair

BIRDC = shutil.which("birdc") or "/opt/moenet-bird3/bin/birdc"
WG_RUN_DIR = Path("/var/run/wireguard")

NODE_ASN = 4242420998  # the Go agent's hard-coded local AS
PEER_ASN = 4242420020
NODE_LOOPBACK4 = "172.22.188.1"
NODE_LOOPBACK6 = "fd00:4242:7777:302:1::1"
NODE_LL = "fe80::998:302:1:1"  # deriveLLAFromLoopback(NODE_LOOPBACK6)
PEER_LL = "fe80::20"
NODE_PREFIX4, NODE_PREFIX6 = "172.22.188.0/26", "fd00:4242:7777::/48"
PEER_PREFIX4, PEER_PREFIX6 = "172.20.20.0/27", "fd42:20::/48"
NODE_PORT, PEER_PORT = 51821, 51822
PROTOCOL = f"dn42_{PEER_ASN}"
PEER_PROTOCOL = f"dn42_{NODE_ASN}"
ALLOWED = "0.0.0.0/0,fd00::/8,fe80::/64"


def go_bird_conf(d: Path) -> str:
    """The Go agent's bird.conf (§7.6), without RPKI (no network here) and kernel
    protocols (nothing in these namespaces routes); ``log`` to a file, not syslog."""
    return f"""log "{d}/bird.log" all;
router id {NODE_LOOPBACK4};

protocol device {{
    scan time 10;
}}

protocol direct direct1 {{
    ipv4;
    ipv6;
    interface "dn42*", "dummy0", "lo";
}}

protocol static static_v4 {{
    ipv4 {{ preference 10; }};
    route {NODE_PREFIX4} blackhole;
}}

protocol static static_v6 {{
    ipv6 {{ preference 10; }};
    route {NODE_PREFIX6} blackhole;
}}

roa4 table dn42_roa4;
roa6 table dn42_roa6;

include "{d}/maintenance.conf";
include "{d}/filters.conf";
include "{d}/blacklist.conf";

template bgp dn42_peer {{
    local as {NODE_ASN};
    graceful restart on;
    graceful restart time 120;
    ipv4 {{
        import limit 10000 action warn;
        export limit 5000 action warn;
        import filter dn42_import_filter;
        export filter dn42_export_filter;
        extended next hop on;
        next hop self;
    }};
    ipv6 {{
        import limit 10000 action warn;
        export limit 5000 action warn;
        import filter dn42_import_filter;
        export filter dn42_export_filter;
        next hop self;
    }};
}}

include "{d}/peers/*.conf";
"""


GO_FILTERS = """define DN42_MAX_PATH_LEN = 32;

function is_valid_dn42_prefix() {
    return net ~ [172.20.0.0/14{21,29}, 172.20.0.0/24{28,32}, 172.21.0.0/24{28,32},
                  172.22.0.0/24{28,32}, 172.23.0.0/24{28,32}, 172.31.0.0/16+, 10.0.0.0/8{15,24}];
}

function is_valid_dn42_prefix6() {
    return net ~ [fd00::/8{44,64}];
}

function check_roa() {
    if net.type = NET_IP4 then {
        if roa_check(dn42_roa4, net, bgp_path.last) = ROA_INVALID then return false;
    } else {
        if roa_check(dn42_roa6, net, bgp_path.last) = ROA_INVALID then return false;
    }
    return true;
}

filter dn42_import_filter {
    if bgp_path.len > DN42_MAX_PATH_LEN then reject;
    if net.type = NET_IP4 && !is_valid_dn42_prefix() then reject;
    if net.type = NET_IP6 && !is_valid_dn42_prefix6() then reject;
    if !check_roa() then reject;
    bgp_local_pref = 100;
    accept;
}

filter dn42_export_filter {
    if net.type = NET_IP4 && !is_valid_dn42_prefix() then reject;
    if net.type = NET_IP6 && !is_valid_dn42_prefix6() then reject;
    if source ~ [RTS_STATIC, RTS_DEVICE] then accept;
    if source = RTS_BGP then accept;
    reject;
}
"""


def go_peer_file(iface: str) -> str:
    """``peers/dn42_<ASN>.conf`` as the Go agent renders it (bird/config.go, §7.7)."""
    return f"""# lab peer
protocol bgp {PROTOCOL} from dn42_peer {{
    neighbor {PEER_LL} % '{iface}' as {PEER_ASN};
    description "lab peer";
    ipv4 {{
        import filter dn42_import_filter;
        export filter dn42_export_filter;
        extended next hop on;
    }};
    ipv6 {{
        import filter dn42_import_filter;
        export filter dn42_export_filter;
    }};
}}
"""


def peer_bird_conf(d: Path, iface: str) -> str:
    return f"""log "{d}/bird.log" all;
router id 172.20.20.1;
protocol device {{ scan time 10; }}
protocol static own4 {{ ipv4; route {PEER_PREFIX4} blackhole; }}
protocol static own6 {{ ipv6; route {PEER_PREFIX6} blackhole; }}
protocol bgp {PEER_PROTOCOL} {{
    local as {PEER_ASN};
    neighbor {NODE_LL} % '{iface}' as {NODE_ASN};
    graceful restart on;
    ipv4 {{ import all; export where source = RTS_STATIC; extended next hop on; }};
    ipv6 {{ import all; export where source = RTS_STATIC; }};
}}
"""


@attrs.define
class GoNode:
    work: Path
    suffix: str = attrs.field(factory=lambda: os.urandom(2).hex()[:3])
    node: NetNS | None = None
    peer: NetNS | None = None
    node_bird: BirdDaemon | None = None
    peer_bird: BirdDaemon | None = None
    node_key: Any = None
    peer_key: Any = None

    @property
    def iface(self) -> str:
        return f"dn42-go{self.suffix}"

    @property
    def peer_iface(self) -> str:
        return f"wg-peer{self.suffix}"

    @property
    def orphan_iface(self) -> str:
        """A Go agent tunnel of a session the CP no longer lists."""
        return f"dn42-or{self.suffix}"

    @property
    def bird_dir(self) -> Path:
        return self.work / "bird"

    @property
    def key_file(self) -> Path:
        return self.work / "wg-private.key"

    # ---------------------------------------------------------------- build

    def up(self) -> None:
        self.node, self.peer = NetNS(prefix="moenet-go"), NetNS(prefix="moenet-go")
        veth_pair(self.node, self.peer, "veth-go", "veth-go")
        self.node.run("ip", "addr", "add", "192.0.2.1/24", "dev", "veth-go")
        self.peer.run("ip", "addr", "add", "192.0.2.2/24", "dev", "veth-go")
        self.node_key, self.peer_key = keys.generate_private_key(), keys.generate_private_key()
        keys.write_key_file(self.key_file, self.node_key)
        os.chmod(self.key_file, 0o600)
        peer_key_file = self.work / "peer-private.key"
        keys.write_key_file(peer_key_file, self.peer_key)
        os.chmod(peer_key_file, 0o600)
        self._tunnel(
            self.node, self.iface, self.key_file, NODE_PORT, self.peer_key.public_key(),
            f"192.0.2.2:{PEER_PORT}", NODE_LL,
        )  # fmt: skip
        self._tunnel(
            self.peer, self.peer_iface, peer_key_file, PEER_PORT, self.node_key.public_key(),
            f"192.0.2.1:{NODE_PORT}", PEER_LL,
        )  # fmt: skip
        # Leftovers of a session the CP no longer lists (the Go agent never cleaned up, §4.2).
        self.node.run("wireguard-go", self.orphan_iface)
        self.node.run(
            "wg", "set", self.orphan_iface, "private-key", str(self.key_file), "listen-port", "40000"
        )
        self.node.run(
            "iptables", "-A", "INPUT", "-p", "udp", "--dport", "40000",
            "-m", "comment", "--comment", "moenet-dn42-40000", "-j", "ACCEPT",
        )  # fmt: skip
        d = self.bird_dir
        (d / "peers").mkdir(parents=True)
        (d / "bird.conf").write_text(go_bird_conf(d))
        (d / "filters.conf").write_text(GO_FILTERS)
        (d / "maintenance.conf").write_text("define MAINTENANCE_MODE = false;\n")
        (d / "blacklist.conf").write_text("# no blacklist entries\n")
        (d / "peers" / f"{PROTOCOL}.conf").write_text(go_peer_file(self.iface))
        for v6 in (False, True):
            self.node.run(
                "ip6tables" if v6 else "iptables", "-A", "INPUT", "-p", "udp", "--dport", str(NODE_PORT),
                "-m", "comment", "--comment", f"moenet-dn42-{NODE_PORT}", "-j", "ACCEPT",
            )  # fmt: skip
        self.node_bird = BirdDaemon(self.node, self.work / "bird-run").start(d / "bird.conf")
        peer_dir = self.work / "peer-bird"
        peer_dir.mkdir()
        (peer_dir / "bird.conf").write_text(peer_bird_conf(peer_dir, self.peer_iface))
        self.peer_bird = BirdDaemon(self.peer, peer_dir / "run").start(peer_dir / "bird.conf")

    def _tunnel(self, ns: NetNS, name: str, key: Path, port: int, peer: str, endpoint: str, ll: str) -> None:
        """The Go agent's CreateInterface + SetMTU + AddAddress (§4.3, §5), on wireguard-go."""
        ns.run("wireguard-go", name)  # daemonises; the device exists when it returns
        ns.run("ip", "link", "set", "dev", name, "addrgenmode", "none")
        ns.run("wg", "set", name, "private-key", str(key))
        ns.run("wg", "set", name, "listen-port", str(port))
        ns.run(
            "wg", "set", name, "peer", peer, "allowed-ips", ALLOWED, "endpoint", endpoint,
            "persistent-keepalive", "25",
        )  # fmt: skip
        ns.run("ip", "link", "set", name, "mtu", "1420")
        ns.run("ip", "link", "set", name, "up")
        ns.run("ip", "addr", "add", f"{ll}/64", "dev", name)

    def down(self) -> None:
        for b in (self.node_bird, self.peer_bird):
            if b is not None:
                b.stop()
        for ns, name in (
            (self.node, self.iface),
            (self.node, self.orphan_iface),
            (self.peer, self.peer_iface),
        ):
            if ns is not None:
                ns.run("ip", "link", "del", name, check=False)
        for ns in (self.node, self.peer):
            if ns is not None:
                ns.remove()
        for name in (self.iface, self.orphan_iface, self.peer_iface):
            with contextlib.suppress(FileNotFoundError):
                (WG_RUN_DIR / f"{name}.sock").unlink()

    # ------------------------------------------------------------- observe

    @staticmethod
    def birdc(bird: BirdDaemon, *args: str) -> str:
        res = subprocess.run(
            ["ip", "netns", "exec", bird.ns.name, BIRDC, "-s", str(bird.socket), *args],
            capture_output=True, text=True, check=False, timeout=20,
        )  # fmt: skip
        return res.stdout

    @classmethod
    def protocol(cls, bird: BirdDaemon, name: str) -> tuple[str, str, str] | None:
        """(state, since, info) of protocol ``name``, None when BIRD has none."""
        for line in cls.birdc(bird, "show", "protocols", name).splitlines():
            parts = line.split()
            if parts and parts[0] == name and len(parts) >= 6:
                return parts[3], parts[4], " ".join(parts[5:])
        return None

    @classmethod
    def has_route(cls, bird: BirdDaemon, prefix: str) -> bool:
        out = cls.birdc(bird, "show", "route", "for", prefix, "primary")
        return bool(re.search(rf"^{re.escape(prefix)}\s", out, re.MULTILINE))

    def alias(self) -> str | None:
        assert self.node is not None
        out = self.node.run("ip", "-o", "link", "show", "dev", self.iface).stdout
        m = re.search(r"alias (\S+)", out)
        return m.group(1) if m else None

    def daemons(self) -> list[int]:
        """The wireguard-go processes serving the node's tunnel."""
        assert self.node is not None
        out = []
        for pid in self.node.pids():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if Path(argv[0].decode()).name == "wireguard-go" and argv[1:2] == [self.iface.encode()]:
                    out.append(pid)
        return sorted(out)

    def ifindex(self) -> int | None:
        assert self.node is not None
        res = self.node.run("ip", "-j", "link", "show", "dev", self.iface, check=False)
        return int(json.loads(res.stdout)[0]["ifindex"]) if res.returncode == 0 else None

    def iptables_rules(self) -> list[str]:
        assert self.node is not None
        out = []
        for tool in ("iptables", "ip6tables"):
            out += [
                line
                for line in self.node.run(tool, "-S", "INPUT").stdout.splitlines()
                if "moenet-dn42" in line
            ]
        return out

    def files(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.bird_dir)): p.read_text()
            for p in sorted(self.bird_dir.rglob("*"))
            if p.is_file()
        }

    def wait(self, what: str, check: Any, timeout: float = 60.0) -> Any:
        """Poll ``check()`` until it returns something truthy (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)
