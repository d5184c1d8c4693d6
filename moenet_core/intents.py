"""Typed routing intents: what a plugin asks the routing backend to run.

Tunnels have :class:`~moenet_core.backends.TunnelSpec`; routing has these. A
plugin builds intents and hands them to ``RoutingBackend.declare(owner,
{key: intent})``; the backend dispatches on the intent's *type*, never on the
owner's name, so any plugin (a third-party "static peers" plugin included) can
declare an eBGP peer, an iBGP neighbour or a Babel interface.

Intents are frozen attrs classes: equality is what reconcilers diff on, and
every field is checked when the object is built (in code, or from JSON with
:func:`intent_from_json`), so a bad value fails where it was made, naming the
field. These checks are the daemon-independent ones (ranges, address families,
interface names, no control characters); the routing backend adds its own
(BIRD's string and symbol rules) and rejects a fragment it cannot render in
``ApplyResult.rejected`` without touching the others.

Keys: a fragment key is the owner's stable name for the object (the sessions
plugin uses the session uuid, iBGP the node id, the mesh the interface). The
backend derives protocol names from it, so a key must not change while the
object lives.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from .config import camel, checked, structure
from .errors import MoenetError

__all__ = [
    "INTENT_KINDS",
    "LEGACY_EBGP_CRYPTO",
    "BabelInterfaceIntent",
    "EbgpPeerIntent",
    "IbgpNeighborIntent",
    "IbgpOptionsIntent",
    "IntentError",
    "RoutingIntent",
    "intent_from_json",
    "intent_from_legacy",
    "intent_to_json",
]

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_IFPATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,13}\*?$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: The Go agent's eBGP protocol names (``dn42_<ASN>``), the only names an adopted
#: session keeps (``EbgpPeerIntent.legacy_protocol``).
LEGACY_PROTOCOL = re.compile(r"^dn42_[1-9][0-9]{0,9}$")
TEXT_MAX = 256


class IntentError(MoenetError):
    """A routing intent could not be built from its JSON form."""


# ----------------------------------------------------------------- checks


def int_range(lo: int, hi: int, *, optional: bool = False) -> Any:
    def fn(v: int | None) -> str | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer {lo}-{hi}"
        return None if lo <= v <= hi else f"must be {lo}-{hi} (got {v})"

    return fn


def _positive_or_none(v: int | None) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        return "must be a positive integer"
    return None


def _bool(v: bool) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _bool_or_none(v: bool | None) -> str | None:
    return None if v is None or isinstance(v, bool) else "must be true, false or null"


def _asn(v: int) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4294967294:
        return f"must be an AS number 1-4294967294 (got {v!r})"
    return None


def _text(v: object) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    if len(v) > TEXT_MAX:
        return f"must be at most {TEXT_MAX} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0x80 <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in v):
        return "must not contain control characters or line separators"
    return None


def _matches(rx: re.Pattern[str], what: str, *, empty_ok: bool) -> Any:
    def fn(v: object) -> str | None:
        if not isinstance(v, str):
            return "must be a string"
        if not v and empty_ok:
            return None
        if not rx.match(v) or v in {".", ".."}:
            return f"must be {what} (got {v[:40]!r})"
        return None

    return fn


def address(version: int, *, link_local: bool | None = None) -> Any:
    """A unicast address of one family, or empty; ``link_local`` True requires
    fe80::/10, False forbids it."""

    def fn(v: object) -> str | None:
        if not isinstance(v, str):
            return "must be a string"
        if not v:
            return None
        if "%" in v or v != v.strip():
            return f"not an IPv{version} address (got {v[:50]!r})"
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            return f"not an IPv{version} address (got {v[:50]!r})"
        if ip.version != version:
            return f"must be an IPv{version} address"
        if link_local is True and not ip.is_link_local:
            return "must be a link-local address (fe80::/10)"
        if link_local is False and ip.is_link_local:
            return "must not be link-local"
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
            return "must be a unicast address"
        return None

    return fn


_ifname = _matches(_IFNAME, "an interface name (1-15 letters, digits, '_', '.', '-')", empty_ok=True)


# ----------------------------------------------------------------- intents


@attrs.frozen(kw_only=True)
class RoutingIntent:
    """Base of every routing intent; ``kind`` names the type in JSON."""

    kind: ClassVar[str] = ""


@attrs.frozen(kw_only=True)
class EbgpPeerIntent(RoutingIntent):
    """One eBGP session (DN42 peering), usually over a tunnel.

    At least one neighbour address is needed; a link-local neighbour needs the
    ``interface``. ``mp_bgp``: one session over IPv6 carrying both families;
    ``extended_nexthop``: IPv4 routes with IPv6 next hops (RFC 8950). ``latency``,
    ``bandwidth`` and ``crypto`` are the DN42 link communities (64511, n): crypto
    31 none, 32 unsafe, 33 safe VPN, 34 with PFS (WireGuard), 35 with PFS and a
    pre-shared key (WireGuard + PSK), 36 post-quantum forward secrecy.
    ``import_limit``/``export_limit``/``receive_limit``: per-session route
    limits; None takes the node's defaults.
    ``name``/``description`` are free text, only shown (never a symbol).
    ``legacy_protocol``: see the field.
    """

    kind: ClassVar[str] = "ebgpPeer"

    asn: int = attrs.field(**checked(_asn))
    latency: int = attrs.field(default=1, **checked(int_range(1, 9)))
    bandwidth: int = attrs.field(default=24, **checked(int_range(21, 29)))
    crypto: int = attrs.field(default=33, **checked(int_range(31, 36)))
    name: str = attrs.field(default="", **checked(_text))
    description: str = attrs.field(default="", **checked(_text))
    interface: str = attrs.field(default="", **checked(_ifname))
    neighbor_link_local: str = attrs.field(default="", **checked(address(6, link_local=True)))
    neighbor_ipv6: str = attrs.field(default="", **checked(address(6, link_local=False)))
    neighbor_ipv4: str = attrs.field(default="", **checked(address(4)))
    local_link_local: str = attrs.field(default="", **checked(address(6, link_local=True)))
    local_ipv6: str = attrs.field(default="", **checked(address(6, link_local=False)))
    local_ipv4: str = attrs.field(default="", **checked(address(4)))
    mp_bgp: bool = attrs.field(default=True, **checked(_bool))
    extended_nexthop: bool = attrs.field(default=True, **checked(_bool))
    import_limit: int | None = attrs.field(default=None, **checked(_positive_or_none))
    export_limit: int | None = attrs.field(default=None, **checked(_positive_or_none))
    receive_limit: int | None = attrs.field(default=None, **checked(_positive_or_none))
    disabled: bool = attrs.field(default=False, **checked(_bool))
    legacy_protocol: str = attrs.field(
        default="", **checked(_matches(LEGACY_PROTOCOL, "a Go agent protocol name dn42_<ASN>", empty_ok=True))
    )
    """The BIRD protocol name of a session adopted from the Go agent
    (``moenet-agent adopt``), e.g. ``dn42_4242420002``: the routing backend keeps
    that name and the Go agent's session-level options, so BIRD keeps the running
    BGP session across the takeover (filters and limits are ours at once). Empty:
    the backend's own name. Kept until the session is removed."""

    def __attrs_post_init__(self) -> None:
        if self.legacy_protocol and not self.mp_bgp:
            raise ValueError(
                "legacyProtocol: only an MP-BGP session (one protocol) keeps the Go agent's name"
            )
        if not (self.neighbor_link_local or self.neighbor_ipv6 or self.neighbor_ipv4):
            raise ValueError("needs neighborLinkLocal, neighborIpv6 or neighborIpv4")
        if self.neighbor_link_local and not self.interface:
            raise ValueError("interface: required with a link-local neighbour")


@attrs.frozen(kw_only=True)
class IbgpNeighborIntent(RoutingIntent):
    """One iBGP session to another node of the network, between loopbacks.

    ``rr_client``: this node reflects routes for that neighbour; ``is_rr``: the
    neighbour is a route reflector (informational). The declaring plugin decides
    the topology; the backend renders exactly the declared sessions.
    ``latency`` is the DN42 latency tier (1-9) of the mesh path to that node,
    merged into routes learned from it (the wiki asks networks to apply the link
    communities inside too); None while unmeasured (routes keep theirs).
    """

    kind: ClassVar[str] = "ibgpNeighbor"

    node_id: int = attrs.field(**checked(int_range(1, 4294967295)))
    node_name: str = attrs.field(**checked(_matches(_NODE_NAME, "a node name", empty_ok=False)))
    loopback_ipv4: str = attrs.field(default="", **checked(address(4)))
    loopback_ipv6: str = attrs.field(default="", **checked(address(6, link_local=False)))
    is_rr: bool = attrs.field(default=False, **checked(_bool))
    rr_client: bool = attrs.field(default=False, **checked(_bool))
    latency: int | None = attrs.field(default=None, **checked(int_range(1, 9, optional=True)))

    def __attrs_post_init__(self) -> None:
        if not (self.loopback_ipv4 or self.loopback_ipv6):
            raise ValueError("needs loopbackIpv6 or loopbackIpv4")


@attrs.frozen(kw_only=True)
class IbgpOptionsIntent(RoutingIntent):
    """Node-wide iBGP switches: ``enabled=False`` renders no iBGP session at all;
    ``route_reflector`` is this node's role (shown in files and ``/status``)."""

    kind: ClassVar[str] = "ibgpOptions"

    enabled: bool = attrs.field(default=True, **checked(_bool))
    route_reflector: bool | None = attrs.field(default=None, **checked(_bool_or_none))


@attrs.frozen(kw_only=True)
class BabelInterfaceIntent(RoutingIntent):
    """An interface (or ``prefix*`` pattern) the IGP (Babel) runs on."""

    kind: ClassVar[str] = "babelInterface"

    pattern: str = attrs.field(
        **checked(_matches(_IFPATTERN, "an interface name, optionally ending in '*'", empty_ok=False))
    )
    type: str = attrs.field(
        default="tunnel",
        **checked(
            lambda v: None if v in ("tunnel", "wired", "wireless") else "must be tunnel, wired or wireless"
        ),
    )
    rxcost: int | None = attrs.field(default=None, **checked(int_range(1, 65535, optional=True)))
    rtt_cost: int = attrs.field(default=1024, **checked(int_range(0, 65535)))
    rtt_min_ms: int = attrs.field(default=10, **checked(int_range(1, 60000)))
    rtt_max_ms: int = attrs.field(default=150, **checked(int_range(1, 60000)))
    hello_interval_s: int = attrs.field(default=5, **checked(int_range(1, 600)))

    def __attrs_post_init__(self) -> None:
        if self.rtt_min_ms > self.rtt_max_ms:
            raise ValueError("rttMinMs: must not exceed rttMaxMs")


INTENT_KINDS: dict[str, type[RoutingIntent]] = {
    cls.kind: cls for cls in (EbgpPeerIntent, IbgpNeighborIntent, IbgpOptionsIntent, BabelInterfaceIntent)
}
"""JSON ``kind`` -> intent class."""


# ----------------------------------------------------------------- JSON


def intent_to_json(intent: RoutingIntent) -> dict[str, Any]:
    """The intent as a JSON object: ``{"kind": ..., <camelCase fields>}``."""
    out: dict[str, Any] = {"kind": intent.kind}
    for f in attrs.fields(type(intent)):
        out[camel(f.name)] = getattr(intent, f.name)
    return out


def intent_from_json(data: Any, path: str = "intent") -> RoutingIntent:
    """An intent from :func:`intent_to_json`'s form; raises :class:`IntentError`
    naming every problem (state files and hand-edited input are untrusted)."""
    if not isinstance(data, dict):
        raise IntentError(f"{path}: expected an object")
    kind = data.get("kind")
    cls = INTENT_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise IntentError(f"{path}.kind: must be one of {', '.join(sorted(INTENT_KINDS))} (got {kind!r})")
    warnings: list[str] = []
    obj, problems = structure(cls, {k: v for k, v in data.items() if k != "kind"}, path, warnings)
    if obj is None:
        raise IntentError("; ".join(problems) or f"{path}: invalid")
    return obj


# ----------------------------------------------------------------- before intents

LEGACY_EBGP_CRYPTO = 34
"""``crypto`` of an eBGP payload written before intents that did not carry one:
the previous BIRD backend's default (WireGuard, encrypted with PFS)."""


def intent_from_legacy(
    kind: str, data: Any, path: str = "intent", *, key: str | None = None
) -> RoutingIntent:
    """An intent from a payload written before intents existed: the camelCase
    fields of ``kind`` without a ``kind`` key (what the sessions, ibgp and mesh
    plugins declared, and the BIRD backend and the sessions plugin persisted).

    An ``ebgpPeer`` payload may carry ``uuid`` (the fragment key, no longer a
    field: it must equal ``key`` when both are given) and gets
    :data:`LEGACY_EBGP_CRYPTO` when it has no ``crypto``, so an upgraded node
    renders what it rendered before. Raises :class:`IntentError` like
    :func:`intent_from_json`.
    """
    if not isinstance(data, Mapping):
        raise IntentError(f"{path}: expected an object")
    payload = {k: v for k, v in data.items() if k != "kind"}
    if kind == EbgpPeerIntent.kind:
        uuid = payload.pop("uuid", None)
        if uuid is not None and key is not None and str(uuid).lower() != key.lower():
            raise IntentError(f"{path}.uuid: {str(uuid)[:40]!r} differs from the fragment key {key[:40]!r}")
        payload.setdefault("crypto", LEGACY_EBGP_CRYPTO)
    return intent_from_json({"kind": kind, **payload}, path)
