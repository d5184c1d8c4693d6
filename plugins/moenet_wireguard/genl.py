"""The kernel's WireGuard generic-netlink family: probe, messages, transport.

pyroute2's ``WireGuard.set()`` cannot express ``WGDEVICE_F_REPLACE_PEERS`` and
always sends the peer flags, so the set message is built here from pyroute2's
``wgmsg`` with exactly the attributes a :class:`~.device.DeviceUpdate` needs.
:func:`build_set_message` and :func:`parse_device` are pure, so what would be
sent to a kernel is unit-tested on machines without the module (like this one).

The transport is a small protocol (:class:`GenlTransport`) so tests can inject
a recorder; :class:`PyrouteGenl` is the real one (``AsyncWireGuard``, opened
per call in the calling thread's network namespace).

pyroute2 is imported inside the functions that need it, never at module level:
importing it costs about 7 MB resident, and only the kernel backend uses it (the
probe :func:`kernel_supports_wireguard` speaks netlink itself). The userspace
backend, and an agent importing every plugin, never load it.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from moenet_core import NetlinkError

from .device import Device, DeviceUpdate, Peer
from .endpoints import format_endpoint, parse_endpoint

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_NAME = 2
NLMSG_ERROR = 2
NETLINK_GENERIC = 16
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300


def kernel_supports_wireguard(timeout: float = 1.0) -> bool:
    """Does this kernel (in the caller's network namespace) offer WireGuard?

    True when ``/sys/module/wireguard`` exists, else asks the generic-netlink
    controller for the ``wireguard`` family (which also loads the module where
    module autoloading is on). One netlink round trip; never raises.
    """
    if Path("/sys/module/wireguard").exists():
        return True
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as s:
            s.settimeout(timeout)
            s.bind((0, 0))
            name = b"wireguard\0"
            attr = struct.pack("HH", 4 + len(name), CTRL_ATTR_FAMILY_NAME) + name
            attr += b"\0" * (-len(attr) % 4)
            payload = struct.pack("BBH", CTRL_CMD_GETFAMILY, 1, 0) + attr
            s.send(struct.pack("IHHII", 16 + len(payload), GENL_ID_CTRL, NLM_F_REQUEST, 1, 0) + payload)
            data = s.recv(65536)
    except OSError:
        return False
    if len(data) < 16:
        return False
    _length, msg_type, _flags, _seq, _pid = struct.unpack("IHHII", data[:16])
    if msg_type == NLMSG_ERROR:
        code: int = struct.unpack("i", data[16:20])[0] if len(data) >= 20 else -1
        return code == 0
    return bool(msg_type == GENL_ID_CTRL)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _allowed_ips(ips: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for ip in ips:
        net = ipaddress.ip_network(ip)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        out.append(
            {
                "attrs": [
                    ["WGALLOWEDIP_A_FAMILY", family],
                    ["WGALLOWEDIP_A_IPADDR", net.network_address.packed],
                    ["WGALLOWEDIP_A_CIDR_MASK", net.prefixlen],
                ]
            }
        )
    return out


def build_set_message(ifname: str, update: DeviceUpdate) -> Any:
    """``WG_CMD_SET_DEVICE`` for ``update``: only the attributes that change.

    Peer flags: ``UPDATE_ONLY`` for in-place updates (never creates a peer),
    ``REPLACE_ALLOWEDIPS`` when the allowed IPs are sent, ``REMOVE_ME`` for
    stale peers; the device flag ``REPLACE_PEERS`` when the peer key changed.
    """
    from pyroute2.netlink.generic.wireguard import (
        WG_CMD_SET_DEVICE,
        WG_GENL_VERSION,
        WGDEVICE_F_REPLACE_PEERS,
        WGPEER_F_REMOVE_ME,
        WGPEER_F_REPLACE_ALLOWEDIPS,
        WGPEER_F_UPDATE_ONLY,
        wgmsg,
    )

    msg = wgmsg()
    msg["cmd"] = WG_CMD_SET_DEVICE
    msg["version"] = WG_GENL_VERSION
    msg["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
    if update.private_key is not None:
        msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", _b64(update.private_key)])
    if update.listen_port is not None:
        msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", update.listen_port])
    if update.replace_peers:
        msg["attrs"].append(["WGDEVICE_A_FLAGS", WGDEVICE_F_REPLACE_PEERS])
    peers = []
    for p in update.peers:
        attrs: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", _b64(p.public_key)]]
        flags = 0
        if p.remove:
            flags |= WGPEER_F_REMOVE_ME
        if p.update_only:
            flags |= WGPEER_F_UPDATE_ONLY
        if p.allowed_ips is not None:
            flags |= WGPEER_F_REPLACE_ALLOWEDIPS
        if flags:
            attrs.append(["WGPEER_A_FLAGS", flags])
        if not p.remove:
            if p.preshared_key is not None:
                attrs.append(["WGPEER_A_PRESHARED_KEY", _b64(p.preshared_key)])
            if p.endpoint is not None:
                ep = parse_endpoint(p.endpoint)
                attrs.append(["WGPEER_A_ENDPOINT", {"addr": str(ep.address), "port": ep.port}])
            if p.keepalive is not None:
                attrs.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", p.keepalive])
            if p.allowed_ips is not None:
                attrs.append(["WGPEER_A_ALLOWEDIPS", _allowed_ips(p.allowed_ips)])
        peers.append({"attrs": attrs})
    if peers:
        msg["attrs"].append(["WGDEVICE_A_PEERS", peers])
    return msg


def build_get_message(ifname: str) -> Any:
    from pyroute2.netlink.generic.wireguard import WG_CMD_GET_DEVICE, WG_GENL_VERSION, wgmsg

    msg = wgmsg()
    msg["cmd"] = WG_CMD_GET_DEVICE
    msg["version"] = WG_GENL_VERSION
    msg["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
    return msg


def _key(value: Any) -> bytes | None:
    if value is None:
        return None
    text = value["value"] if isinstance(value, dict) else value
    raw = base64.b64decode(text)
    return raw if any(raw) else None


def parse_device(msgs: list[Any]) -> Device:
    """The replies of ``WG_CMD_GET_DEVICE`` (large devices span several)."""
    private_key: bytes | None = None
    listen_port: int | None = None
    peers: dict[bytes, Peer] = {}
    for msg in msgs:
        private_key = _key(msg.get_attr("WGDEVICE_A_PRIVATE_KEY")) or private_key
        listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port
        for p in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = _key(p.get_attr("WGPEER_A_PUBLIC_KEY"))
            if key is None:
                continue
            ep = p.get_attr("WGPEER_A_ENDPOINT")
            endpoint = None
            if ep and ep.get("port"):
                endpoint = format_endpoint(ipaddress.ip_address(ep["addr"]), int(ep["port"]))
            hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            handshake = hs["tv_sec"] + hs["tv_nsec"] / 1e9 if hs and hs.get("tv_sec") else None
            allowed = {a["addr"] for a in (p.get_attr("WGPEER_A_ALLOWEDIPS") or ()) if a.get("addr")}
            old = peers.get(key)
            if old is not None:  # a peer continued in the next message: more allowed IPs
                allowed |= old.allowed_ips
            peers[key] = Peer(
                public_key=key,
                preshared_key=_key(p.get_attr("WGPEER_A_PRESHARED_KEY")),
                endpoint=endpoint,
                keepalive=int(p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
                allowed_ips=frozenset(str(ipaddress.ip_network(a)) for a in allowed),
                last_handshake=handshake,
                rx_bytes=int(p.get_attr("WGPEER_A_RX_BYTES") or 0),
                tx_bytes=int(p.get_attr("WGPEER_A_TX_BYTES") or 0),
            )
    return Device(private_key=private_key, listen_port=listen_port, peers=tuple(peers.values()))


class GenlTransport(Protocol):
    """Sends WireGuard generic-netlink messages (real kernel or a test recorder);
    a refusal raises :class:`moenet_core.NetlinkError`."""

    async def get(self, msg: Any) -> list[Any]: ...

    async def set(self, msg: Any) -> None: ...


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """pyroute2's ``NetlinkError`` as the core's (same code and text), so the
    kernel backend catches one type whichever transport it has."""
    from pyroute2.netlink.exceptions import NetlinkError as PyrouteError

    try:
        yield
    except PyrouteError as exc:
        raise NetlinkError(exc.code, exc.args[1] if len(exc.args) > 1 else None) from exc


class PyrouteGenl:
    """The kernel, through pyroute2's ``AsyncWireGuard`` (one socket per call)."""

    async def _socket(self) -> Any:
        from pyroute2.netlink.generic.wireguard import AsyncWireGuard

        sock = AsyncWireGuard()
        try:
            await sock.setup_endpoint()
        except Exception:
            sock.close()
            raise
        return sock

    async def get(self, msg: Any) -> list[Any]:
        with _refusals():
            return await self._get(msg)

    async def set(self, msg: Any) -> None:
        with _refusals():
            await self._set(msg)

    async def _get(self, msg: Any) -> list[Any]:
        sock = await self._socket()
        try:
            return [
                m
                async for m in await sock.nlm_request(
                    msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_DUMP
                )
            ]
        finally:
            sock.close()

    async def _set(self, msg: Any) -> None:
        sock = await self._socket()
        try:
            async for _ in await sock.nlm_request(
                msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK
            ):
                pass
        finally:
            sock.close()
