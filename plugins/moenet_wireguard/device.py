"""WireGuard device state and the minimal update that makes it match a spec.

Both implementations (the kernel's generic netlink family and wireguard-go's
UAPI) have the same model: a device with a private key and a listen port, peers
with a key, endpoint, keepalive and allowed IPs. They read into :class:`Device`,
:func:`plan` computes a :class:`DeviceUpdate`, and each writes it in its own
encoding. Keeping the diff here means "write only what differs" is decided once:

- the peer key changed (or is missing): the new peer is written whole and the
  old ones go (``replace_peers`` only when there were peers);
- same peer: only the fields that differ, flagged ``update_only``, so the
  session and its keys survive (no forced handshake);
- allowed IPs are compared as sets and replaced only when they differ.

Key fields are excluded from reprs.
"""

from __future__ import annotations

import attrs

ZERO_KEY = bytes(32)


@attrs.frozen(kw_only=True)
class Peer:
    """A peer as the device reports it. ``preshared_key`` None means none."""

    public_key: bytes = attrs.field(repr=False)
    preshared_key: bytes | None = attrs.field(default=None, repr=False)
    endpoint: str | None = None
    keepalive: int = 0
    allowed_ips: frozenset[str] = frozenset()
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0


@attrs.frozen(kw_only=True)
class Device:
    """A device as read. ``private_key`` None means unset."""

    private_key: bytes | None = attrs.field(default=None, repr=False)
    listen_port: int | None = None
    peers: tuple[Peer, ...] = ()

    def peer(self, public_key: bytes) -> Peer | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


@attrs.frozen(kw_only=True)
class PeerUpdate:
    """What to write for one peer; None fields are left as they are.

    ``preshared_key`` of 32 zero bytes clears it; ``allowed_ips`` replaces the
    whole set (``replace_allowed_ips``).
    """

    public_key: bytes = attrs.field(repr=False)
    update_only: bool = False
    remove: bool = False
    preshared_key: bytes | None = attrs.field(default=None, repr=False)
    endpoint: str | None = None
    keepalive: int | None = None
    allowed_ips: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class DeviceUpdate:
    """One set transaction: device fields first, then peers in order."""

    private_key: bytes | None = attrs.field(default=None, repr=False)
    listen_port: int | None = None
    replace_peers: bool = False
    peers: tuple[PeerUpdate, ...] = ()

    def describe(self) -> str:
        """What changes, for logs (never the keys themselves)."""
        parts = []
        if self.private_key is not None:
            parts.append("private key")
        if self.listen_port is not None:
            parts.append(f"listen port {self.listen_port}")
        if self.replace_peers:
            parts.append("peers replaced")
        for p in self.peers:
            if p.remove:
                parts.append("stale peer removed")
                continue
            fields = [
                n
                for n, v in (
                    ("preshared key", p.preshared_key),
                    ("endpoint", p.endpoint),
                    ("keepalive", p.keepalive),
                    ("allowed IPs", p.allowed_ips),
                )
                if v is not None
            ]
            parts.append(("peer updated: " if p.update_only else "peer added: ") + ", ".join(fields))
        return "; ".join(parts) or "nothing"


@attrs.frozen(kw_only=True)
class DesiredDevice:
    """The target, with keys read from their files and the endpoint resolved.

    ``endpoints`` are the acceptable device endpoints (first = the one to write);
    empty means "do not manage the endpoint". ``keep_roamed_endpoint`` tells the
    planner to leave a differing endpoint alone (the peer roamed, the session
    is alive, and the spec did not change).
    """

    private_key: bytes = attrs.field(repr=False)
    listen_port: int | None
    peer_public_key: bytes = attrs.field(repr=False)
    preshared_key: bytes | None = attrs.field(repr=False)
    endpoints: tuple[str, ...]
    keep_roamed_endpoint: bool
    keepalive: int
    allowed_ips: frozenset[str]


def plan(current: Device, want: DesiredDevice) -> DeviceUpdate | None:
    """The smallest update from ``current`` to ``want``; None when they match."""
    private_key = want.private_key if current.private_key != want.private_key else None
    listen_port = (
        want.listen_port if want.listen_port is not None and current.listen_port != want.listen_port else None
    )
    peers: list[PeerUpdate] = []
    replace_peers = False
    ours = current.peer(want.peer_public_key)
    if ours is None:
        replace_peers = bool(current.peers)
        peers.append(
            PeerUpdate(
                public_key=want.peer_public_key,
                preshared_key=want.preshared_key,
                endpoint=want.endpoints[0] if want.endpoints else None,
                keepalive=want.keepalive or None,
                allowed_ips=tuple(sorted(want.allowed_ips)),
            )
        )
    else:
        for other in current.peers:
            if other.public_key != want.peer_public_key:
                peers.append(PeerUpdate(public_key=other.public_key, remove=True))
        psk = None
        if (ours.preshared_key or None) != want.preshared_key:
            psk = want.preshared_key if want.preshared_key is not None else ZERO_KEY
        endpoint = None
        roamed = want.keep_roamed_endpoint and ours.endpoint is not None
        if want.endpoints and ours.endpoint not in want.endpoints and not roamed:
            endpoint = want.endpoints[0]
        keepalive = want.keepalive if ours.keepalive != want.keepalive else None
        allowed = tuple(sorted(want.allowed_ips)) if ours.allowed_ips != want.allowed_ips else None
        if any(v is not None for v in (psk, endpoint, keepalive, allowed)):
            peers.append(
                PeerUpdate(
                    public_key=want.peer_public_key,
                    update_only=True,
                    preshared_key=psk,
                    endpoint=endpoint,
                    keepalive=keepalive,
                    allowed_ips=allowed,
                )
            )
    if private_key is None and listen_port is None and not peers:
        return None
    return DeviceUpdate(
        private_key=private_key, listen_port=listen_port, replace_peers=replace_peers, peers=tuple(peers)
    )


def endpoint_update(public_key: bytes, endpoint: str) -> DeviceUpdate:
    """Move an existing peer to ``endpoint`` (endpoint refresh), nothing else."""
    return DeviceUpdate(peers=(PeerUpdate(public_key=public_key, update_only=True, endpoint=endpoint),))
