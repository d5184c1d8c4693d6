"""What one valid session needs on this node: a tunnel, a routing fragment, a port.

Pure and deterministic: equal sessions and settings give equal
:class:`DesiredSession` values, so an unchanged session diffs as unchanged and
costs nothing. Addresses are produced in the canonical form the tunnel backend
reports (``ip/prefix`` locals, plain peers), so "is the system already like
this?" is an equality test.

Tunnel addressing (fixing go-agent.md §20.13/25):

- our IPv6 link-local ``<ll>/64`` always (the usual DN42 session source);
- ``<loopback v4>/32 peer <neighbour v4>`` when the session has an IPv4 neighbour;
- ``<loopback v6>/128 peer <neighbour v6>`` when it has a ULA/IPv6 neighbour.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING

import attrs

from moenet_core import DN42_ALLOWED_IPS, TunnelAddress, TunnelSpec
from moenet_core.intents import EbgpPeerIntent

from .config import SessionsConfig, section_of
from .model import Session

if TYPE_CHECKING:
    from moenet_core import NodeIdentity
    from moenet_core.config import AgentConfig

#: Latency tier until the RTT task has measured the link: DN42 tier 5 (< 148 ms),
#: pessimistic so an unmeasured link never looks better than it is.
DEFAULT_LATENCY = 5
#: Bandwidth tier: 24 (>= 100 Mbit/s), the usual VPS uplink.
DEFAULT_BANDWIDTH = 24
#: DN42 crypto community of a WireGuard tunnel: 34, encrypted with PFS (PSK or not).
CRYPTO = 34
#: Where preshared keys are written (one 0600 file per interface) by the apply phase.
DEFAULT_PSK_DIR = "/var/lib/moenet-agent/psk"


class DesiredError(ValueError):
    """A valid session this node cannot build (e.g. an IPv4 neighbour but no IPv4 loopback)."""


@attrs.frozen(kw_only=True)
class NodeSettings:
    """The node-wide inputs of :func:`build_desired`."""

    private_key_file: str
    link_local: str
    """Our IPv6 link-local on every peering tunnel (no prefix length)."""
    keepalive: int = 25
    """Persistent keepalive in seconds; 0 turns it off."""
    loopback_ipv4: str | None = None
    loopback_ipv6: str | None = None
    latency: int = DEFAULT_LATENCY
    bandwidth: int = DEFAULT_BANDWIDTH
    psk_dir: str = DEFAULT_PSK_DIR
    import_limit: int | None = None
    export_limit: int | None = None
    asn: int | None = None
    """The node's own AS, wherever it came from (``node.asn``, else the BIRD
    policy's AS: ``ctx.identity``): a session with it is iBGP, never a peering."""

    @classmethod
    def from_config(
        cls,
        config: AgentConfig,
        section: SessionsConfig | None = None,
        *,
        psk_dir: str | None = None,
        identity: NodeIdentity | None = None,
    ) -> NodeSettings:
        """From the ``sessions`` section (the plugin's ``ctx.section``; without it,
        the one in ``config``) and the node loopbacks (``node.loopbackIpv4/6``).
        ``psk_dir`` overrides ``sessions.pskDir``. ``identity`` (``ctx.identity``)
        gives the effective own AS when the config has no ``node.asn``."""
        sec = section if section is not None else section_of(config)
        v4 = _host(config.loopback_ipv4)
        v6 = _host(config.loopback_ipv6)
        ll = _host(sec.dn42_ipv6_link_local) or derive_link_local(v6, config.node.name)
        return cls(
            private_key_file=sec.private_key_path,
            link_local=ll,
            keepalive=sec.persistent_keepalive_interval,
            loopback_ipv4=v4,
            loopback_ipv6=v6,
            psk_dir=psk_dir or sec.psk_dir or f"{config.state.directory.rstrip('/')}/psk",
            asn=config.node.asn if config.node.asn is not None else (identity.asn if identity else None),
        )


def _host(text: str | None) -> str | None:
    """``a.b.c.d/32`` or a bare address -> the bare canonical address."""
    if not text:
        return None
    return str(ipaddress.ip_interface(text.strip()).ip)


def derive_link_local(loopback_ipv6: str | None, node_name: str = "") -> str:
    """Our link-local when ``sessions.dn42Ipv6LinkLocal`` is not configured.

    A loopback ``fd..:..:..:<g3>:<g4>::…`` gives ``fe80::998:<g3>:<g4>:1``: the Go
    agent's rule (``fd00:4242:7777:302:1::1`` -> ``fe80::998:302:1:1``), done on the
    expanded address, so peers of migrated nodes keep their configured neighbour.
    Without a loopback the interface identifier is the first 64 bits of
    sha256(node name): stable, and unlikely to equal a peer's ``fe80::1``.
    """
    if loopback_ipv6:
        groups = ipaddress.IPv6Address(_host(loopback_ipv6)).exploded.split(":")
        return str(ipaddress.IPv6Address(f"fe80::998:{groups[3]}:{groups[4]}:1"))
    digest = hashlib.sha256(node_name.encode()).digest()[:8]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + digest))


@attrs.frozen(kw_only=True)
class DesiredSession:
    """The node-side intent of one session."""

    uuid: str
    tunnel: TunnelSpec
    peer: EbgpPeerIntent
    """The ``declare("sessions", {uuid: peer})`` intent (the key is the uuid)."""
    port: int | None
    """The UDP port to open (None: we only initiate, nothing to open)."""
    preshared_key: str | None = attrs.field(default=None, repr=False)
    """Content for ``tunnel.preshared_key_file``; the apply phase writes it (0600)."""
    psk_digest: str | None = None


def build_desired(session: Session, settings: NodeSettings, *, latency: int | None = None) -> DesiredSession:
    """The tunnel spec, routing fragment and port of ``session``.

    ``latency`` overrides the default tier (the RTT task's measured tier).
    Raises :class:`DesiredError` when the session needs something the node lacks,
    or asks for a BGP setup that cannot work (the reason is reported as ERROR
    instead of a routing failure at apply time):

    - the peer's AS is the node's own (that is iBGP, the ``ibgp`` plugin's job;
      BIRD would make it a multihop session, refused over link-local);
    - ``mp-bgp`` without any IPv6 neighbour to carry it;
    - ``mp-bgp`` without ``extended-nexthop`` and without the session's IPv4
      (the IPv4 channel then has no next hop of its own).

    Without ``extensions`` the backend's defaults (MP-BGP with extended next hop)
    apply where there is an IPv6 neighbour, plain IPv4 BGP where there is not.
    """
    if settings.asn is not None and session.asn == settings.asn:
        raise DesiredError(
            f"the peer's AS{session.asn} is this node's own AS: that is iBGP, not an eBGP peering"
        )
    v6_neighbour = bool(session.ipv6_link_local or session.ipv6)
    if session.extensions is not None:
        mp_bgp = "mp-bgp" in session.extensions
        if mp_bgp and not v6_neighbour:
            raise DesiredError("extension mp-bgp needs an IPv6 neighbour (ipv6LinkLocal or ipv6)")
        if mp_bgp and "extended-nexthop" not in session.extensions and not session.ipv4:
            raise DesiredError(
                "extension mp-bgp without extended-nexthop needs the session's ipv4 "
                "(the next hop of the IPv4 routes)"
            )
    addresses = [TunnelAddress(local=f"{settings.link_local}/64")]
    if session.ipv4:
        if not settings.loopback_ipv4:
            raise DesiredError("the session has an IPv4 neighbour but the node has no IPv4 loopback")
        addresses.append(TunnelAddress(local=f"{settings.loopback_ipv4}/32", peer=session.ipv4))
    if session.ipv6:
        if not settings.loopback_ipv6:
            raise DesiredError("the session has an IPv6 neighbour but the node has no IPv6 loopback")
        addresses.append(TunnelAddress(local=f"{settings.loopback_ipv6}/128", peer=session.ipv6))
    psk_file = f"{settings.psk_dir.rstrip('/')}/{session.interface}.psk" if session.preshared_key else None
    tunnel = TunnelSpec(
        name=session.interface,
        private_key_file=settings.private_key_file,
        listen_port=session.listen_port,
        peer_public_key=session.public_key,
        preshared_key_file=psk_file,
        endpoint=session.endpoint,
        allowed_ips=DN42_ALLOWED_IPS,
        keepalive=settings.keepalive,
        mtu=session.mtu,
        addresses=tuple(sorted(addresses, key=lambda a: (a.local, a.peer or ""))),
    )
    if session.extensions is not None:
        mp_bgp = "mp-bgp" in session.extensions
        extended_nexthop = "extended-nexthop" in session.extensions
    else:
        mp_bgp, extended_nexthop = v6_neighbour, True  # IPv4 only: plain IPv4 BGP
    try:
        peer = EbgpPeerIntent(
            asn=session.asn,
            latency=latency if latency is not None else settings.latency,
            bandwidth=settings.bandwidth,
            crypto=CRYPTO,
            name=session.name,
            description=session.description,
            interface=session.interface,
            neighbor_link_local=session.ipv6_link_local or "",
            local_link_local=settings.link_local if session.ipv6_link_local else "",
            neighbor_ipv6=session.ipv6 or "",
            local_ipv6=(settings.loopback_ipv6 or "") if session.ipv6 else "",
            neighbor_ipv4=session.ipv4 or "",
            local_ipv4=(settings.loopback_ipv4 or "") if session.ipv4 else "",
            mp_bgp=mp_bgp,
            extended_nexthop=extended_nexthop,
            import_limit=settings.import_limit,
            export_limit=settings.export_limit,
        )
    except ValueError as exc:
        raise DesiredError(f"cannot build the routing intent: {exc}") from None
    return DesiredSession(
        uuid=session.uuid,
        tunnel=tunnel,
        peer=peer,
        port=session.listen_port,
        preshared_key=session.preshared_key,
        psk_digest=psk_digest(session.preshared_key),
    )


def psk_digest(key: str | None) -> str | None:
    """sha256 of a preshared key (what the state remembers instead of the key)."""
    return hashlib.sha256(key.encode()).hexdigest() if key else None
