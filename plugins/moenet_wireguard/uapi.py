"""Async client for wireguard-go's configuration socket (the WireGuard UAPI).

``/var/run/wireguard/<ifname>.sock`` speaks a line protocol: ``get=1`` answers
``key=value`` lines, ``set=1`` takes them; both end with ``errno=N`` and an
empty line. Keys are lower-case hex. The spec says ``errno=0`` is success and
wireguard-go writes *negative* errno values, so anything non-zero is a failure
(reported with ``abs()``). One connection per operation: they are cheap, and a
half-read reply can never leak into the next request.

Requests carry private keys, so neither requests nor replies are ever logged or
put into an exception.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import os
from collections.abc import Iterable
from pathlib import Path

from .device import Device, DeviceUpdate, Peer
from .endpoints import canonical
from .errors import UapiBusyError, UapiError, WireguardKeyError
from .keys import hex_to_bytes

SOCKET_DIR = "/var/run/wireguard"
MAX_REPLY = 1 << 20


def socket_path(name: str, socket_dir: str = SOCKET_DIR) -> Path:
    return Path(socket_dir) / f"{name}.sock"


def render_set(update: DeviceUpdate) -> str:
    """The body of a ``set=1`` request (device keys first, then each peer)."""
    lines = ["set=1"]
    if update.private_key is not None:
        lines.append(f"private_key={update.private_key.hex()}")
    if update.listen_port is not None:
        lines.append(f"listen_port={update.listen_port}")
    if update.replace_peers:
        lines.append("replace_peers=true")
    for peer in update.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        if peer.remove:
            lines.append("remove=true")
            continue
        if peer.update_only:
            lines.append("update_only=true")
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={peer.preshared_key.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        if peer.keepalive is not None:
            lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        if peer.allowed_ips is not None:
            lines.append("replace_allowed_ips=true")
            lines.extend(f"allowed_ip={ip}" for ip in peer.allowed_ips)
    return "\n".join(lines) + "\n\n"


def _key(value: str, what: str) -> bytes:
    try:
        return hex_to_bytes(value)
    except WireguardKeyError:
        raise UapiError(f"wireguard-go answered a malformed {what}") from None


class _PeerLines:
    """Accumulates one peer section of a ``get`` reply."""

    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.psk: bytes | None = None
        self.endpoint: str | None = None
        self.hs_sec = 0
        self.hs_nsec = 0
        self.rx = 0
        self.tx = 0
        self.keepalive = 0
        self.allowed: set[str] = set()

    def take(self, key: str, value: str) -> None:
        if key == "preshared_key":
            raw = _key(value, "preshared key")
            self.psk = raw if any(raw) else None
        elif key == "endpoint":
            self.endpoint = canonical(value)
        elif key == "allowed_ip":
            self.allowed.add(value)
        elif key in _PEER_INTS:
            setattr(self, _PEER_INTS[key], int(value))

    def peer(self) -> Peer:
        return Peer(
            public_key=self.public_key,
            preshared_key=self.psk,
            endpoint=self.endpoint,
            keepalive=self.keepalive,
            allowed_ips=frozenset(self.allowed),
            last_handshake=(self.hs_sec + self.hs_nsec / 1e9) if self.hs_sec else None,
            rx_bytes=self.rx,
            tx_bytes=self.tx,
        )


_PEER_INTS = {
    "last_handshake_time_sec": "hs_sec",
    "last_handshake_time_nsec": "hs_nsec",
    "rx_bytes": "rx",
    "tx_bytes": "tx",
    "persistent_keepalive_interval": "keepalive",
}


def parse_get(lines: Iterable[str]) -> Device:
    """A ``get=1`` reply (without the ``errno`` line) as a :class:`Device`.
    Keys this client does not know (``fwmark``, ``protocol_version``) are skipped."""
    private_key: bytes | None = None
    listen_port: int | None = None
    peers: list[_PeerLines] = []
    try:
        for line in lines:
            key, sep, value = line.partition("=")
            if not sep:
                raise UapiError("wireguard-go answered a line without '='")
            if key == "public_key":
                peers.append(_PeerLines(_key(value, "public key")))
            elif peers:
                peers[-1].take(key, value)
            elif key == "private_key":
                raw = _key(value, "private key")
                private_key = raw if any(raw) else None
            elif key == "listen_port":
                listen_port = int(value) or None
    except ValueError:
        raise UapiError("wireguard-go answered a malformed number") from None
    return Device(private_key=private_key, listen_port=listen_port, peers=tuple(p.peer() for p in peers))


class UapiClient:
    """Talks to the wireguard-go instances under ``socket_dir``."""

    def __init__(self, socket_dir: str = SOCKET_DIR, timeout: float = 5.0) -> None:
        self.socket_dir = socket_dir
        self.timeout = timeout

    def path(self, name: str) -> Path:
        return socket_path(name, self.socket_dir)

    async def _request(self, name: str, body: str) -> list[str]:
        path = self.path(name)
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_REPLY)
                try:
                    writer.write(body.encode())
                    await writer.drain()
                    lines: list[str] = []
                    while True:
                        raw = await reader.readline()
                        if not raw:
                            raise UapiError(f"wireguard-go for {name} closed the socket mid-reply")
                        line = raw.decode(errors="replace").rstrip("\n")
                        if not line:
                            break
                        lines.append(line)
                finally:
                    writer.close()
        except TimeoutError:
            raise UapiError(f"wireguard-go for {name} did not answer within {self.timeout:g} s") from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise UapiError(f"no wireguard-go is serving {name} (socket {path})") from None
        except OSError as exc:
            raise UapiError(f"UAPI socket {path}: {exc.strerror or exc}") from None
        if not lines or not lines[-1].startswith("errno="):
            raise UapiError(f"wireguard-go for {name} answered without an errno line")
        try:
            code = int(lines[-1][len("errno=") :])
        except ValueError:
            raise UapiError(f"wireguard-go for {name} answered a malformed errno line") from None
        if code != 0:
            num = abs(code)
            reason = os.strerror(num) if num in errno_mod.errorcode else "unknown error"
            cls = UapiBusyError if num == errno_mod.EADDRINUSE else UapiError
            raise cls(f"wireguard-go for {name} refused the request: errno {num} ({reason})", num)
        return lines[:-1]

    async def get(self, name: str) -> Device:
        return parse_get(await self._request(name, "get=1\n\n"))

    async def set(self, name: str, update: DeviceUpdate) -> None:
        await self._request(name, render_set(update))
