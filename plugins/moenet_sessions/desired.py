"""What one valid session needs on this node: a tunnel, a routing fragment, a port.

Pure and deterministic: equal sessions and settings give equal
:class:`DesiredSession` values, so an unchanged session diffs as unchanged and
costs nothing. Addresses are produced in the canonical form the tunnel backend
reports (``ip/prefix`` locals, plain peers), so "is the system already like
this?" is an equality test.

Tunnel addressing (fixing go-agent.md §20.13/25):

- our IPv6 link-local ``<ll>/64`` always (the usual DN42 session source);
- ``<local v4>/32 peer <neighbour v4>`` when the session has an IPv4 neighbour;
- ``<local v6>/128 peer <neighbour v6>`` when it has a ULA/IPv6 neighbour.

The local address (also BIRD's ``source address``) is the session's
``localIpv4``/``localIpv6`` from the CP when it gives one, else the node's
loopback. A per-session address is what the DN42 wiki recommends: a peer that
routes our tunnel address statically over the tunnel loses only that address when
the tunnel dies; with the loopback it black-holes the node's services on it.
The loopback needs no address plan, and a peer can reach the node's loopback
directly over the tunnel.

Session shapes (``extensions``; see :func:`build_desired`):

- ``mp-bgp`` + ``extended-nexthop``: one session over IPv6 carrying IPv6 and
  IPv4 (IPv4 routes with IPv6 next hops, RFC 8950), with or without ``ipv4``;
- ``mp-bgp`` alone with ``ipv4``: one session over IPv6, IPv4 routes with our
  tunnel IPv4 as next hop;
- ``mp-bgp`` alone without ``ipv4``: one IPv6-only session (nothing could be the
  next hop of IPv4 routes, so IPv4 is not negotiated; a peer whose template has
  both channels simply gets IPv6 only);
- neither: separate IPv4 and IPv6 sessions for the neighbours the session has;
- no ``extensions``: MP-BGP with extended next hop when there is an IPv6
  neighbour, plain IPv4 BGP otherwise.

Link communities: crypto 35 (PFS plus a pre-shared key's post-quantum
resistance) with a PSK, else 34; bandwidth from min(``sessions.bandwidth``,
``policy.bandwidth``); the route limits from ``policy`` (None: the BIRD policy's).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING

import attrs

from moenet_core import DN42_ALLOWED_IPS, TunnelAddress, TunnelSpec
from moenet_core.intents import EbgpPeerIntent

from .config import SessionsConfig, section_of
from .model import Session, bandwidth_community
from .records import ConfiguredSession

if TYPE_CHECKING:
    from moenet_core import NodeIdentity
    from moenet_core.config import AgentConfig

#: Latency tier until the RTT task has measured the link: DN42 tier 5 (< 148 ms),
#: pessimistic so an unmeasured link never looks better than it is.
DEFAULT_LATENCY = 5
#: Bandwidth tier when neither the node nor the session says: 24 (>= 100 Mbit/s),
#: the usual VPS uplink.
DEFAULT_BANDWIDTH = 24
#: DN42 crypto community of a WireGuard tunnel: 34, encrypted with PFS.
CRYPTO = 34
#: ... with a pre-shared key: 35, PFS and post-quantum resistance (the wiki's
#: "WireGuard + PSK").
CRYPTO_PSK = 35
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
    """The bandwidth community when neither ``uplink_mbit`` nor the session's
    policy gives one."""
    uplink_mbit: int | None = None
    """``sessions.bandwidth``: the node's uplink (Mbit/s); caps every session's tier."""
    psk_dir: str = DEFAULT_PSK_DIR
    import_limit: int | None = None
    export_limit: int | None = None
    asn: int | None = None
    """The node's own AS, wherever it came from (``node.asn``, else the BIRD
    policy's AS: ``ctx.identity``): a session with it is iBGP, never a peering."""
    adopted: tuple[tuple[str, str], ...] = ()
    """(uuid, Go agent protocol name) of the sessions ``moenet-agent adopt`` took
    over (:mod:`.adopt`): their routing intent keeps that name (``legacy_protocol``)."""

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
            uplink_mbit=sec.bandwidth,
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
    record: ConfiguredSession = attrs.field(init=False, eq=False, repr=False)
    """What a successful apply records, built once: a cycle that keeps the session
    hands the same object on, so comparing the sessions memory with the last one
    is an identity check per session, not a comparison of every intent field."""

    def __attrs_post_init__(self) -> None:
        record = ConfiguredSession(
            interface=self.tunnel.name,
            tunnel=self.tunnel,
            peer=self.peer,
            port=self.port,
            psk_digest=self.psk_digest,
        )
        object.__setattr__(self, "record", record)


def build_desired(session: Session, settings: NodeSettings, *, latency: int | None = None) -> DesiredSession:
    """The tunnel spec, routing fragment and port of ``session``.

    ``latency`` overrides the default tier (the RTT task's measured tier).
    Raises :class:`DesiredError` when the session needs something the node lacks,
    or asks for a BGP setup that cannot work (the reason is reported as ERROR
    instead of a routing failure at apply time):

    - the peer's AS is the node's own (that is iBGP, the ``ibgp`` plugin's job;
      BIRD would make it a multihop session, refused over link-local);
    - ``mp-bgp`` without any IPv6 neighbour to carry it;
    - an IPv4 (IPv6) neighbour without ``localIpv4`` (``localIpv6``) on a node
      without an IPv4 (IPv6) loopback.

    Without ``extensions`` the backend's defaults (MP-BGP with extended next hop)
    apply where there is an IPv6 neighbour, plain IPv4 BGP where there is not.
    ``mp-bgp`` without ``extended-nexthop`` and without ``ipv4`` is an IPv6-only
    session: on the wire a BGP session over IPv6 negotiating only IPv6 unicast,
    so the intent is the IPv6 half of a split peer (``mp_bgp`` False, no IPv4
    neighbour), which the backend renders as one session with one IPv6 channel.
    """
    if settings.asn is not None and session.asn == settings.asn:
        raise DesiredError(
            f"the peer's AS{session.asn} is this node's own AS: that is iBGP, not an eBGP peering"
        )
    v6_neighbour = bool(session.ipv6_link_local or session.ipv6)
    if session.extensions is not None and "mp-bgp" in session.extensions and not v6_neighbour:
        raise DesiredError("extension mp-bgp needs an IPv6 neighbour (ipv6LinkLocal or ipv6)")
    local_v4 = local_v6 = ""
    addresses = [TunnelAddress(local=f"{settings.link_local}/64")]
    if session.ipv4:
        local_v4 = session.local_ipv4 or settings.loopback_ipv4 or ""
        if not local_v4:
            raise DesiredError(
                "the session has an IPv4 neighbour but neither a localIpv4 nor the node's IPv4 loopback"
            )
        addresses.append(TunnelAddress(local=f"{local_v4}/32", peer=session.ipv4))
    if session.ipv6:
        local_v6 = session.local_ipv6 or settings.loopback_ipv6 or ""
        if not local_v6:
            raise DesiredError(
                "the session has an IPv6 neighbour but neither a localIpv6 nor the node's IPv6 loopback"
            )
        addresses.append(TunnelAddress(local=f"{local_v6}/128", peer=session.ipv6))
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
        if mp_bgp and not extended_nexthop and not session.ipv4:
            # Nothing could be the next hop of IPv4 routes: an IPv6-only session
            # (the backend's IPv6 session of a split peer, which has no IPv4 one).
            mp_bgp = False
    else:
        mp_bgp, extended_nexthop = v6_neighbour, True  # IPv4 only: plain IPv4 BGP
    policy = session.policy
    try:
        peer = EbgpPeerIntent(
            asn=session.asn,
            latency=latency if latency is not None else settings.latency,
            bandwidth=link_bandwidth(settings, policy.bandwidth),
            crypto=CRYPTO_PSK if session.preshared_key else CRYPTO,
            name=session.name,
            description=session.description,
            interface=session.interface,
            neighbor_link_local=session.ipv6_link_local or "",
            local_link_local=settings.link_local if session.ipv6_link_local else "",
            neighbor_ipv6=session.ipv6 or "",
            local_ipv6=local_v6,
            neighbor_ipv4=session.ipv4 or "",
            local_ipv4=local_v4,
            mp_bgp=mp_bgp,
            extended_nexthop=extended_nexthop,
            import_limit=policy.import_limit if policy.import_limit is not None else settings.import_limit,
            export_limit=policy.export_limit if policy.export_limit is not None else settings.export_limit,
            receive_limit=policy.receive_limit,
            legacy_protocol=dict(settings.adopted).get(session.uuid, "") if mp_bgp else "",
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


def link_bandwidth(settings: NodeSettings, session_tier: int | None) -> int:
    """The DN42 bandwidth community of a session's link: the lower of the node's
    uplink (``sessions.bandwidth``) and the session's own (``policy``); the
    node's default tier when neither is known."""
    tiers = [t for t in (session_tier, _tier(settings.uplink_mbit)) if t is not None]
    return min(tiers) if tiers else settings.bandwidth


def _tier(mbit: int | None) -> int | None:
    return bandwidth_community(mbit) if mbit else None


def psk_digest(key: str | None) -> str | None:
    """sha256 of a preshared key (what the state remembers instead of the key)."""
    return hashlib.sha256(key.encode()).hexdigest() if key else None
