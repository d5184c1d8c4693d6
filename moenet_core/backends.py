"""Backend interfaces: how tasks reach the systems a node is made of.

A task never talks to WireGuard, BIRD, nftables or netlink directly; it asks for a
backend by *kind* (``ctx.backend("tunnel")``) and uses the interface below. The node
config picks the implementation (``backends.<kind>``; ``auto`` chooses by probe).

The interfaces are ABCs. Methods that every implementation must provide are
abstract; methods added in a later minor release get a default, so a third-party
backend written against an older core keeps working. The value types are frozen
attrs classes: equality is what reconcilers diff on.
"""

from __future__ import annotations

import functools
import ipaddress
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import attrs

from .descriptors import Backend
from .intents import RoutingIntent

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: DN42's usual allowed IPs on a peering tunnel.
DN42_ALLOWED_IPS: tuple[str, ...] = ("0.0.0.0/0", "fd00::/8", "fe80::/64")

#: The owner of tunnels and firewall ports when none is named: the eBGP sessions.
DEFAULT_OWNER = "sessions"


# ------------------------------------------------------------------ tunnel


@attrs.frozen(kw_only=True)
class TunnelAddress:
    """An address on a tunnel; ``peer`` makes it point-to-point (``local peer peer``)."""

    local: str
    peer: str | None = None


@attrs.frozen(kw_only=True)
class TunnelSpec:
    """Everything needed to ensure one WireGuard tunnel with one peer.

    ``private_key_file`` names a 0600 file (keys are never passed around as
    strings); ``endpoint`` is ``host:port`` or ``[v6]:port`` and may be a host name.
    ``owner`` is the plugin's owner name (``sessions``, ``mesh``): a tunnel belongs
    to exactly one owner, recorded on the system, and no other owner's call may
    change or remove it.
    """

    name: str
    private_key_file: str
    listen_port: int | None
    peer_public_key: str
    preshared_key_file: str | None = None
    endpoint: str | None = None
    allowed_ips: tuple[str, ...] = DN42_ALLOWED_IPS
    keepalive: int | None = None
    mtu: int = 1420
    addresses: tuple[TunnelAddress, ...] = ()
    owner: str = DEFAULT_OWNER


@attrs.frozen(kw_only=True)
class TunnelState:
    """What the system has for one of the agent's tunnels (for diffing against a spec)."""

    name: str
    ifindex: int
    listen_port: int | None
    peer_public_key: str | None
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive: int | None
    mtu: int
    addresses: tuple[TunnelAddress, ...]
    up: bool
    owner: str = DEFAULT_OWNER


@attrs.frozen(kw_only=True)
class TunnelStats:
    """Counters of one tunnel. ``latest_handshake`` is epoch seconds, None if never."""

    name: str
    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    endpoint: str | None


@functools.lru_cache(maxsize=4096)
def _canon_address(local: str, peer: str | None) -> tuple[str, str | None]:
    text = local.strip()
    iface = ipaddress.ip_interface(text)
    if "/" not in text and isinstance(iface, ipaddress.IPv6Interface):
        iface = ipaddress.IPv6Interface(f"{iface.ip}/{64 if iface.ip.is_link_local else 128}")
    return iface.with_prefixlen, str(ipaddress.ip_address(peer.strip())) if peer else None


@functools.lru_cache(maxsize=4096)
def _canon_network(net: str) -> str:
    return str(ipaddress.ip_network(net.strip(), strict=False))


def tunnel_drift(spec: TunnelSpec, state: TunnelState) -> list[str]:
    """How the system's tunnel (``state``) differs from ``spec`` in what can be read
    back, one readable line per difference; empty when they match.

    Addresses and networks are compared canonically (``fd00::1`` = ``fd00:0::1/128``).
    The endpoint is not compared (WireGuard roams; a reconciler catches a change
    of the *spec*'s endpoint against what it recorded), nor are keys in files.
    A ``listen_port`` of None in the spec means "any".
    """
    out: list[str] = []
    if spec.listen_port is not None and state.listen_port != spec.listen_port:
        out.append(f"listen port is {state.listen_port}, want {spec.listen_port}")
    if state.peer_public_key != spec.peer_public_key:
        out.append("peer public key differs")
    try:
        if {_canon_network(n) for n in state.allowed_ips} != {_canon_network(n) for n in spec.allowed_ips}:
            out.append("allowed IPs differ")
        have = {_canon_address(a.local, a.peer) for a in state.addresses}
        want = {_canon_address(a.local, a.peer) for a in spec.addresses}
    except ValueError as exc:
        out.append(f"unreadable address on the tunnel: {exc}")
    else:
        if have != want:
            out.append("addresses differ")
    if (spec.keepalive or None) != (state.keepalive or None):
        out.append(f"keepalive is {state.keepalive}, want {spec.keepalive}")
    if state.mtu != spec.mtu:
        out.append(f"mtu is {state.mtu}, want {spec.mtu}")
    if not state.up:
        out.append("interface is down")
    return out


class TunnelBackend(Backend):
    """Kind ``tunnel``: WireGuard interfaces owned by the agent."""

    kind: ClassVar[str] = "tunnel"

    @abstractmethod
    async def ensure(self, spec: TunnelSpec) -> bool:
        """Make the tunnel match ``spec``, in place where possible (no delete and
        recreate, no forced handshake). Returns True when anything was written.
        Refuses (raises) when ``spec.name`` is a tunnel of another owner or an
        interface the agent does not own."""

    @abstractmethod
    async def remove(self, name: str, *, owner: str | None = None) -> bool:
        """Remove one of the agent's tunnels. Returns False when it did not exist.
        Refuses (raises) for an interface the agent does not own, and, when
        ``owner`` is given, for a tunnel of another owner."""

    @abstractmethod
    async def list(self, owner: str | None = None) -> Mapping[str, TunnelState]:
        """The agent's tunnels as the system has them now (read, not remembered):
        all of them, or only ``owner``'s. The deep read: every tunnel's WireGuard
        settings come from the system."""

    async def observe(self, owner: str | None = None) -> Mapping[str, TunnelState]:
        """A cheap read for every-cycle observation: the links from one dump
        (existence, addresses, MTU, up, owner), the WireGuard settings as this
        backend last wrote and confirmed them. Drift inside WireGuard that
        someone else caused shows only in :meth:`list`, which a reconciler runs on
        a slower cadence. Default: :meth:`list`."""
        return await self.list(owner)

    @abstractmethod
    async def stats(self, name: str) -> TunnelStats:
        """Handshake and traffic counters of one tunnel."""

    async def refresh_endpoints(self, owner: str | None = None) -> Sequence[str]:
        """Re-resolve host-name endpoints of tunnels whose handshake is stale and
        move peers whose address changed (only ``owner``'s tunnels, when given).
        Call once per sync cycle; returns the tunnels updated. Default: nothing
        to refresh."""
        return ()

    async def bounce(self, name: str, *, owner: str | None = None) -> None:
        """Take one of the agent's tunnels down and up again (``/restart``: what
        ``ip link set down/up`` does; WireGuard drops its sessions and the peer
        handshakes afresh), keeping the interface, its index and its WireGuard
        settings; the kernel drops its IPv6 addresses on the way down, so call
        :meth:`ensure` afterwards. Refuses (raises) as :meth:`remove` does.
        Default: not supported (:class:`NotImplementedError`); a caller may then
        remove and re-ensure."""
        raise NotImplementedError(f"{type(self).__name__} cannot bounce a tunnel")

    def public_key(self, private_key_file: str) -> str:
        """The base64 public key of a (mode-checked) private key file."""
        raise NotImplementedError(f"{type(self).__name__} cannot derive public keys")


# ---------------------------------------------------------------- firewall


class FirewallBackend(Backend):
    """Kind ``firewall``: the UDP ports the node accepts for its tunnels."""

    kind: ClassVar[str] = "firewall"

    @abstractmethod
    async def sync(self, ports: frozenset[int], *, owner: str = DEFAULT_OWNER) -> bool:
        """Make ``owner``'s open set exactly ``ports`` in one atomic change, only
        when the system differs; other owners' ports stay as they are. A port is
        open while any owner has it. Returns True when a change was applied."""

    @abstractmethod
    async def list_ports(self, owner: str | None = None) -> frozenset[int]:
        """The ports open now, read from the system: all owners', or ``owner``'s."""

    async def remove_all(self) -> None:
        """Drop everything the agent created (only its own objects)."""


# ---------------------------------------------------------------- loopback


class LoopbackBackend(Backend):
    """Kind ``loopback``: the node's DN42 addresses on a dummy-like interface."""

    kind: ClassVar[str] = "loopback"

    @abstractmethod
    async def ensure(self, addresses: Sequence[str]) -> bool:
        """Make the loopback interface exist, be up and carry exactly ``addresses``
        (``a.b.c.d/32``, ``x::y/128``) among those the agent manages; addresses
        added by others are left alone. Returns True when anything changed."""

    @abstractmethod
    async def addresses(self) -> tuple[str, ...]:
        """The managed addresses present now."""


# ----------------------------------------------------------------- routing


@attrs.frozen(kw_only=True)
class ProtocolState:
    """One routing protocol as the routing daemon reports it."""

    name: str
    proto: str
    table: str | None
    state: str
    since: str | None
    info: str
    last_error: str | None = None
    bgp_state: str | None = None
    neighbor: str | None = None
    routes: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict)
    """Per channel (``ipv4``, ``ipv6``): ``imported``, ``filtered``, ``exported``."""


@attrs.frozen(kw_only=True)
class ApplyResult:
    """Outcome of handing intent to the routing backend.

    ``ok`` is false when the daemon rejected the configuration; ``error`` then
    carries its message (``file:line: text``) and the previous config stays live.
    ``changed`` is false when the rendered result was identical and nothing was
    written or reloaded.
    """

    ok: bool
    changed: bool
    error: str | None = None
    rejected: Mapping[str, str] = attrs.field(factory=dict)
    """Per-fragment errors the backend could attribute (fragment key -> message)."""
    transient: bool = False
    """With ``ok`` false: a retry may fix it (the daemon unreachable or restarting,
    no policy yet), as opposed to the daemon refusing the configuration."""


class RoutingBackend(Backend):
    """Kind ``routing``: the one writer of routing-daemon configuration.

    Plugins *declare intent* as named fragments: an ``owner`` (the declaring
    plugin, e.g. ``sessions``) replaces its whole set of fragments at once. The
    backend validates, renders and applies everything declared so far with one
    coalesced reload, so several owners declaring in the same moment cost one
    reconfigure. Fragments are typed intents (:mod:`moenet_core.intents`:
    eBGP peer, iBGP neighbour and options, Babel interface), dispatched by type:
    any owner may declare any kind. A fragment the backend cannot run is
    rejected alone (``ApplyResult.rejected``) without touching the others.
    """

    kind: ClassVar[str] = "routing"

    @abstractmethod
    async def declare(self, owner: str, fragments: Mapping[str, RoutingIntent]) -> ApplyResult:
        """Replace ``owner``'s fragments (key -> intent) and apply. Awaits the
        reload's real completion."""

    @abstractmethod
    async def protocols(self) -> Sequence[ProtocolState]:
        """Current protocol states, read from the daemon."""

    def fragment_protocols(self, owner: str) -> Mapping[str, tuple[str, ...]]:
        """The protocol names each of ``owner``'s applied fragments produced
        (fragment key -> names), so an owner can find its sessions' states in
        :meth:`protocols`. Default: nothing known."""
        return {}

    async def set_maintenance(self, enabled: bool) -> ApplyResult:
        """Drain (graceful-shutdown community, lowered preference) or restore."""
        raise NotImplementedError(f"{type(self).__name__} does not support maintenance drain")

    async def restart_protocol(self, name: str) -> None:
        """Restart one protocol the agent owns."""
        raise NotImplementedError(f"{type(self).__name__} cannot restart protocols")


#: The interface each built-in backend kind must implement.
BACKEND_INTERFACES: dict[str, type[Backend]] = {
    "tunnel": TunnelBackend,
    "firewall": FirewallBackend,
    "loopback": LoopbackBackend,
    "routing": RoutingBackend,
}
