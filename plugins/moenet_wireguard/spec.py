"""Validate a :class:`~moenet_core.TunnelSpec` and put it in one canonical form.

The spec comes from the control plane through a reconciler, so nothing in it is
trusted: the interface name reaches a process argument and the kernel, the
addresses and allowed IPs reach netlink. Canonical forms (``ip/prefix``, sorted
sets) make "is the system already like this?" a plain equality test.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from moenet_core import DEFAULT_OWNER, TunnelAddress, TunnelSpec, ifname_problem

from .endpoints import EndpointSpec, parse_endpoint
from .errors import EndpointError, TunnelSpecError, WireguardKeyError
from .keys import b64_to_bytes

IFNAME_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}")
OWNER_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

MIN_MTU = 1280  # below this the kernel turns IPv6 (and the link-local BGP session) off
MAX_MTU = 65535


def validate_ifname(name: object) -> str:
    """1-15 characters of ``[A-Za-z0-9_.-]``, not starting with '-' (it becomes
    a ``wireguard-go`` argument), and not ``.`` or ``..`` (the kernel refuses them).
    A tunnel to create must also avoid the other reserved names (:func:`normalise`);
    removing or reading one (``lo``) is refused as not ours."""
    if not isinstance(name, str) or not IFNAME_RE.fullmatch(name) or name in (".", ".."):
        raise TunnelSpecError(
            f"interface name {name!r} is invalid: use 1-15 characters of letters, digits, "
            "'_', '.' or '-', not starting with '-'"
        )
    return name


def validate_owner(owner: object) -> str:
    """An owner name (``sessions``, ``mesh``): 1-32 of ``[a-z0-9_-]``, starting with a letter."""
    if not isinstance(owner, str) or not OWNER_RE.fullmatch(owner):
        raise TunnelSpecError(
            f"tunnel owner {owner!r} is invalid: use 1-32 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter"
        )
    return owner


@attrs.frozen(order=True)
class Address:
    """One tunnel address in canonical form (``local`` carries the prefix length)."""

    local: IPInterface = attrs.field(order=str)
    peer: IPAddress | None = attrs.field(default=None, order=lambda p: str(p or ""))

    @property
    def family(self) -> int:
        return self.local.version

    def to_tunnel_address(self) -> TunnelAddress:
        return TunnelAddress(local=self.local.with_prefixlen, peer=str(self.peer) if self.peer else None)


def parse_address(addr: TunnelAddress, where: str = "addresses") -> Address:
    """``a.b.c.d`` -> /32; IPv6 link-local -> /64; other IPv6 -> /128; an explicit
    prefix is kept. ``peer`` must be of the same family as ``local``."""
    text = addr.local.strip()
    try:
        local: IPInterface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise TunnelSpecError(f"{where}: {text!r} is not an IP address: {exc}") from None
    if "/" not in text and local.version == 6:
        local = ipaddress.IPv6Interface(f"{local.ip}/{64 if local.ip.is_link_local else 128}")
    peer: IPAddress | None = None
    if addr.peer:
        try:
            peer = ipaddress.ip_address(addr.peer.strip())
        except ValueError as exc:
            raise TunnelSpecError(f"{where}: peer {addr.peer!r} is not an IP address: {exc}") from None
        if peer.version != local.version:
            raise TunnelSpecError(f"{where}: peer {peer} and local {local} are of different families")
    return Address(local=local, peer=peer)


def parse_allowed_ips(ips: tuple[str, ...]) -> frozenset[str]:
    out: set[str] = set()
    for ip in ips:
        try:
            out.add(str(ipaddress.ip_network(ip.strip(), strict=False)))
        except ValueError as exc:
            raise TunnelSpecError(f"allowed_ips: {ip!r} is not a network: {exc}") from None
    return frozenset(out)


@attrs.frozen
class Desired:
    """A validated spec. ``keepalive`` 0 means off; keys stay in their files."""

    name: str
    private_key_file: str
    preshared_key_file: str | None
    listen_port: int | None
    peer_public_key: bytes = attrs.field(repr=False)
    endpoint: EndpointSpec | None
    allowed_ips: frozenset[str]
    keepalive: int
    mtu: int
    addresses: frozenset[Address]
    owner: str = DEFAULT_OWNER


def normalise(spec: TunnelSpec, default_keepalive: int) -> Desired:
    """Validate every field; ``keepalive=None`` takes the node default
    (``wireguard.persistentKeepaliveInterval``), 0 turns it off. The name must
    not be one the kernel treats specially (``all``, ``default``, ``lo``...:
    ``moenet_core.RESERVED_IFNAMES``), whichever plugin (sessions, mesh) asks."""
    name = validate_ifname(spec.name)
    if problem := ifname_problem(name):
        raise TunnelSpecError(f"interface name {problem}")
    try:
        owner = validate_owner(spec.owner)
    except TunnelSpecError as exc:
        raise TunnelSpecError(f"{name}: {exc}") from None
    if spec.listen_port is not None and not (
        isinstance(spec.listen_port, int) and 1 <= spec.listen_port <= 65535
    ):
        raise TunnelSpecError(f"{name}: listen_port must be 1-65535 or unset")
    try:
        peer_key = b64_to_bytes(spec.peer_public_key, "peer public key")
    except WireguardKeyError as exc:
        raise TunnelSpecError(f"{name}: {exc}") from None
    endpoint = None
    if spec.endpoint:
        try:
            endpoint = parse_endpoint(spec.endpoint)
        except EndpointError as exc:
            raise TunnelSpecError(f"{name}: {exc}") from None
    keepalive = default_keepalive if spec.keepalive is None else spec.keepalive
    if not 0 <= keepalive <= 65535:
        raise TunnelSpecError(f"{name}: keepalive must be 0-65535 seconds")
    if not MIN_MTU <= spec.mtu <= MAX_MTU:
        raise TunnelSpecError(f"{name}: mtu must be {MIN_MTU}-{MAX_MTU}")
    if not spec.private_key_file:
        raise TunnelSpecError(f"{name}: private_key_file is required")
    addresses = frozenset(parse_address(a, f"{name}: addresses") for a in spec.addresses)
    locals_ = [a.local.ip for a in addresses]
    if len(set(locals_)) != len(locals_):
        raise TunnelSpecError(f"{name}: addresses list the same local address twice")
    try:
        allowed = parse_allowed_ips(spec.allowed_ips)
    except TunnelSpecError as exc:
        raise TunnelSpecError(f"{name}: {exc}") from None
    return Desired(
        name=name,
        private_key_file=spec.private_key_file,
        preshared_key_file=spec.preshared_key_file,
        listen_port=spec.listen_port,
        peer_public_key=peer_key,
        endpoint=endpoint,
        allowed_ips=allowed,
        keepalive=keepalive,
        mtu=spec.mtu,
        addresses=addresses,
        owner=owner,
    )
