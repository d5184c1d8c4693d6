"""What one valid mesh peer needs on this node: a tunnel, a port, a Babel interface.

Pure and deterministic: equal peers and settings give equal :class:`DesiredPeer`
values (and digests), so an unchanged peer diffs as unchanged and costs nothing.

Per peer N (see :mod:`.addressing` for the plan):

- tunnel ``<prefix>N`` (owner ``mesh``), listening on ``portBase + N``, our key
  (:mod:`.keys`), the peer's key, its endpoint (the CP's port if it gave one,
  else ``portBase + <our id>``), persistent keepalive (``mesh.keepalive``), MTU
  (the peer's, else ``mesh.mtu``);
- one address: our link-local ``fe80::1:<our id>/64``;
- allowed IPs: ``fe80::/10`` (the peer's link-local), ``ff02::1:6/128`` (Babel's
  group), the configured networks (``mesh.allowedIps``, default DN42's
  space) and the peer's own loopbacks where those do not cover them;
- the UDP port open in the firewall (owner ``mesh``);
- a Babel interface (``type tunnel`` with RTT cost) declared to the routing backend.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import TunnelAddress, TunnelSpec
from moenet_core.intents import BabelInterfaceIntent

from .addressing import (
    BABEL_GROUP,
    LINK_LOCAL_NET,
    AddressingError,
    interface_name,
    link_local,
    link_local_interface,
    listen_port,
)
from .config import DEFAULT_KEEPALIVE
from .model import MeshPeer

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

    from .config import MeshConfig

OWNER = "mesh"


class DesiredError(ValueError):
    """A valid peer this node cannot place (its id has no listen port, say)."""


@attrs.frozen(kw_only=True)
class MeshSettings:
    """The node-wide inputs of :func:`build_desired`."""

    node_id: int
    prefix: str
    port_base: int
    private_key_file: str
    public_key: str
    """Ours: part of every digest, so a new key re-applies every tunnel."""
    keepalive: int
    mtu: int
    networks: tuple[str, ...]
    babel: Mapping[str, Any]
    """The :class:`~moenet_core.intents.BabelInterfaceIntent` fields (snake_case)
    but ``pattern``: the same for every mesh tunnel."""

    @classmethod
    def from_config(
        cls,
        config: AgentConfig,
        section: MeshConfig,
        *,
        node_id: int,
        private_key_file: str,
        public_key: str,
    ) -> MeshSettings:
        """From the ``mesh`` section (``config`` is kept for the callers; everything
        the mesh needs is its own section's now)."""
        babel: dict[str, Any] = {
            "type": "tunnel",
            "rxcost": section.rxcost,
            "rtt_cost": section.rtt_cost,
            "rtt_min_ms": section.rtt_min_ms,
            "rtt_max_ms": section.rtt_max_ms,
            "hello_interval_s": section.hello_interval_s,
        }
        keepalive = section.keepalive
        return cls(
            node_id=node_id,
            prefix=section.interface_prefix,
            port_base=section.port_base,
            private_key_file=private_key_file,
            public_key=public_key,
            keepalive=DEFAULT_KEEPALIVE if keepalive is None else keepalive,
            mtu=section.mtu,
            networks=section.networks(),
            babel=babel,
        )


@attrs.frozen(kw_only=True)
class DesiredPeer:
    node_id: int
    name: str
    interface: str
    port: int
    spec: TunnelSpec
    fragment: BabelInterfaceIntent
    digest: str
    """Of everything applied to the tunnel, including what cannot be read back
    (the endpoint as configured, our key)."""
    link_local: str
    """The peer's link-local (its RTT probe address)."""
    loopbacks: tuple[str, ...]


def allowed_ips(networks: tuple[str, ...], peer: MeshPeer) -> tuple[str, ...]:
    """Link-local, Babel's group, ``networks``, and the peer's loopbacks they miss."""
    nets = [ipaddress.ip_network(n) for n in networks]
    out = {LINK_LOCAL_NET, BABEL_GROUP, *networks}
    for lo in (peer.loopback_ipv4, peer.loopback_ipv6):
        if lo is None:
            continue
        ip = ipaddress.ip_address(lo)
        if not any(ip.version == n.version and ip in n for n in nets):
            out.add(str(ipaddress.ip_network(ip)))
    return tuple(sorted(out))


def babel_fragment(interface: str, settings: MeshSettings) -> BabelInterfaceIntent:
    """The Babel interface declared for one mesh tunnel; raises :class:`DesiredError`
    when the settings make no valid one."""
    try:
        return BabelInterfaceIntent(pattern=interface, **settings.babel)
    except (ValueError, TypeError) as exc:
        raise DesiredError(f"Babel interface {interface}: {exc}") from None


def spec_digest(spec: TunnelSpec, public_key: str) -> str:
    doc = {**attrs.asdict(spec, recurse=True), "ourPublicKey": public_key}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()[:16]


def build_desired(peer: MeshPeer, settings: MeshSettings) -> DesiredPeer:
    """The tunnel spec, port and Babel fragment of ``peer``; raises :class:`DesiredError`."""
    try:
        interface = interface_name(peer.node_id, settings.prefix)
        port = listen_port(peer.node_id, settings.port_base)
        endpoint = None
        if peer.endpoint is not None:
            endpoint = peer.endpoint.render(
                peer.endpoint.port
                if peer.endpoint.port is not None
                else listen_port(settings.node_id, settings.port_base)
            )
        our_ll = link_local_interface(settings.node_id)
        peer_ll = link_local(peer.node_id)
    except AddressingError as exc:
        raise DesiredError(str(exc)) from None
    spec = TunnelSpec(
        name=interface,
        private_key_file=settings.private_key_file,
        listen_port=port,
        peer_public_key=peer.public_key,
        endpoint=endpoint,
        allowed_ips=allowed_ips(settings.networks, peer),
        keepalive=settings.keepalive,
        mtu=peer.mtu or settings.mtu,
        addresses=(TunnelAddress(local=our_ll),),
        owner=OWNER,
    )
    return DesiredPeer(
        node_id=peer.node_id,
        name=peer.name,
        interface=interface,
        port=port,
        spec=spec,
        fragment=babel_fragment(interface, settings),
        digest=spec_digest(spec, settings.public_key),
        link_local=peer_ll,
        loopbacks=tuple(a for a in (peer.loopback_ipv6, peer.loopback_ipv4) if a),
    )
