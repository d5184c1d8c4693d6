"""Shared test helpers (moved from ``test_wireguard_netns``)."""

from __future__ import annotations

import subprocess

from moenet_wireguard import genl, keys
from moenet_wireguard.journal import Journal
from moenet_wireguard.kernel import KernelTunnelBackend
from moenet_wireguard.links import Netlink
from pyroute2.netlink.generic.wireguard import (
    WGDEVICE_F_REPLACE_PEERS,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    wgmsg,
)


def roundtrip(msg) -> wgmsg:
    msg["header"]["type"] = 0x1234
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


class RecordingKernel:
    """Stands in for the kernel's WireGuard family: records every message (as
    the bytes that would be sent, decoded again) and keeps the device state
    those messages describe, so reads see earlier writes like a kernel's."""

    def __init__(self) -> None:
        self.sets: list[wgmsg] = []
        self.gets: list[wgmsg] = []
        self.private_key: bytes | None = None
        self.port = 0
        self.peers: dict[bytes, dict] = {}

    async def get(self, msg):
        self.gets.append(roundtrip(msg))
        attrs_ = [["WGDEVICE_A_LISTEN_PORT", self.port]]
        if self.private_key:
            attrs_.append(["WGDEVICE_A_PRIVATE_KEY", keys.bytes_to_b64(self.private_key)])
        peers = []
        for key, p in self.peers.items():
            pa = [
                ["WGPEER_A_PUBLIC_KEY", keys.bytes_to_b64(key)],
                ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", p["keepalive"]],
                ["WGPEER_A_ALLOWEDIPS", genl._allowed_ips(tuple(sorted(p["allowed"])))],
            ]
            if p["endpoint"]:
                pa.append(["WGPEER_A_ENDPOINT", p["endpoint"]])
            peers.append({"attrs": pa})
        if peers:
            attrs_.append(["WGDEVICE_A_PEERS", peers])
        reply = wgmsg()
        reply["cmd"], reply["version"], reply["attrs"] = 0, 1, attrs_
        return [roundtrip(reply)]

    async def set(self, msg):
        m = roundtrip(msg)
        self.sets.append(m)
        if m.get_attr("WGDEVICE_A_PRIVATE_KEY"):
            self.private_key = genl._key(m.get_attr("WGDEVICE_A_PRIVATE_KEY"))
        if m.get_attr("WGDEVICE_A_LISTEN_PORT") is not None:
            self.port = m.get_attr("WGDEVICE_A_LISTEN_PORT")
        if (m.get_attr("WGDEVICE_A_FLAGS") or 0) & WGDEVICE_F_REPLACE_PEERS:
            self.peers.clear()
        for p in m.get_attr("WGDEVICE_A_PEERS") or ():
            key = genl._key(p.get_attr("WGPEER_A_PUBLIC_KEY"))
            flags = p.get_attr("WGPEER_A_FLAGS") or 0
            if flags & WGPEER_F_REMOVE_ME:
                self.peers.pop(key, None)
                continue
            if flags & WGPEER_F_UPDATE_ONLY and key not in self.peers:
                continue
            peer = self.peers.setdefault(key, {"endpoint": None, "keepalive": 0, "allowed": set()})
            if (ep := p.get_attr("WGPEER_A_ENDPOINT")) is not None:
                peer["endpoint"] = {"addr": ep["addr"], "port": ep["port"]}
            if (ka := p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")) is not None:
                peer["keepalive"] = ka
            if flags & WGPEER_F_REPLACE_ALLOWEDIPS:
                peer["allowed"] = set()
            peer["allowed"] |= {a["addr"] for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or ()}


class TunKernelBackend(KernelTunnelBackend):
    """The kernel backend with a persistent TUN standing in for the ``wireguard``
    link kind this kernel lacks; everything else is the real code path."""

    link_kind = "tun"

    async def _create_link(self, nl: Netlink, name: str, journal: Journal) -> None:
        journal.record("link_add")
        subprocess.run(["ip", "tuntap", "add", "mode", "tun", "name", name], check=True)
