"""Validated input models for rendering: the CP's bird-config answer, and BIRD's rules for the intents.

The Go agent rendered whatever the CP sent (an empty ``asPathMaxLen`` rejected
every route, an empty region broke the file). Here every field is checked before
anything is rendered, and each problem names its field
(``policy.asPathMaxLen: must be 1-255``). Values that the Go agent sent as BIRD
symbol names (``DN42_REGION_AS_E``) are accepted and normalised to numbers by
meaning (see :mod:`.communities`).
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from moenet_core.config import camel, check, structure
from moenet_core.intents import BabelInterfaceIntent, EbgpPeerIntent, IbgpNeighborIntent, IbgpOptionsIntent

from . import communities as C
from .denylist import DenyList, deny_list_from_policy
from .names import (
    HOSTNAME_RE,
    IFPATTERN_RE,
    NODE_NAME_RE,
    SHORT_NAME_RE,
    BirdConfigError,
    bird_string,
    ifname_error,
    sanitise_symbol_part,
    short_hash,
    symbol_error,
    text_error,
)

Check = Callable[[Any], "str | None"]

# ----------------------------------------------------------------- checks


def _range(lo: int, hi: int) -> Check:
    def fn(v: int | None) -> str | None:
        return None if v is None or lo <= v <= hi else f"must be {lo}-{hi} (got {v})"

    return fn


def _positive(v: int | None) -> str | None:
    return None if v is None or v > 0 else "must be greater than 0"


def asn_value(v: Any) -> int | None:
    """An ASN from an int or a decimal string (the CP sends ``dn42As`` as a string)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and re.fullmatch(r"(AS)?[0-9]{1,10}", v.strip(), re.IGNORECASE):
        return int(v.strip().upper().removeprefix("AS"))
    return None


def _asn(v: Any) -> str | None:
    n = asn_value(v)
    if n is None:
        return f"must be an AS number (got {v!r})"
    if not 1 <= n <= 4294967294 or C.is_bogon_asn(n):
        return f"must be a usable 32-bit AS number, not reserved (got {n})"
    return None


def _network(version: int) -> Check:
    def fn(v: str) -> str | None:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            return f"not a network: {exc}"
        if net.version != version:
            return f"must be an IPv{version} network"
        return None

    return fn


def _address(version: int, *, link_local: bool | None = None, empty_ok: bool = True) -> Check:
    def fn(v: str) -> str | None:
        if not v:
            return None if empty_ok else "required"
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            return f"not an IPv{version} address (got {v[:50]!r})"
        if "%" in v or v != v.strip():  # Python accepts scope ids ("fe80::1%wg0"): free text
            return f"not an IPv{version} address (no %scope; got {v[:50]!r})"
        if ip.version != version:
            return f"must be an IPv{version} address"
        if link_local is True and not ip.is_link_local:
            return "must be a link-local address (fe80::/10)"
        if link_local is False and ip.is_link_local:
            return "must not be link-local (use the link-local field)"
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
            return "must be a unicast address"
        return None

    return fn


def _pattern(rx: re.Pattern[str], what: str, *, empty_ok: bool = False) -> Check:
    def fn(v: str) -> str | None:
        if not v and empty_ok:
            return None
        return None if rx.match(v) else f"must be {what} (got {v[:40]!r})"

    return fn


def _text(v: str) -> str | None:
    return text_error(v)


def _ifname(v: str) -> str | None:
    return None if not v else ifname_error(v)


#: ROA policies on eBGP import: ``strict`` accepts only ROA_VALID, ``loose`` rejects only ROA_INVALID.
ROA_MODES = ("strict", "loose")


def _roa_mode(v: Any) -> str | None:
    return None if v == "" or v in ROA_MODES else f"must be strict or loose (got {str(v)[:20]!r})"


def _host(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
        return None if "%" not in v else f"must not carry a %scope (got {v[:40]!r})"
    except ValueError:
        pass
    return None if HOSTNAME_RE.match(v) else f"must be an IP address or a DNS name (got {v[:40]!r})"


def _is_number_text(s: str) -> bool:
    """ASCII digits only, and few enough for ``int()``: ``str.isdigit()`` is also
    true for ``"²"`` or ``"١٢٣"``, which ``int()`` refuses or reads differently, and
    ``int()`` of more than 4 300 digits raises ValueError."""
    return s.isascii() and s.isdigit() and len(s) <= 20


def _symbolic(
    table: Mapping[str, int],
    valid: Callable[[int], bool],
    what: str,
    ambiguous: Mapping[str, str] | None = None,
) -> tuple[Check, Callable[[Any], int | None]]:
    """A check plus a normaliser for values sent as a number or a symbol name."""

    def norm(v: Any) -> int | None:
        if isinstance(v, bool) or v is None:
            return None
        if isinstance(v, int):
            return v if valid(v) else None
        if isinstance(v, str):
            s = v.strip()
            if _is_number_text(s):
                n = int(s)
                return n if valid(n) else None
            return table.get(C.symbol_key(s))
        return None

    def fn(v: Any) -> str | None:
        if v is None:
            return "required"
        if norm(v) is not None:
            return None
        if isinstance(v, str) and ambiguous and C.symbol_key(v) in ambiguous:
            return f"{v!r} is ambiguous in the DN42 standard: send {ambiguous[C.symbol_key(v)]}"
        return f"must be {what} or one of {', '.join(sorted(table))} (got {v!r})"

    return fn, norm


_region_check, region_value = _symbolic(
    C.REGION_SYMBOLS, lambda n: n in C.REGION_RANGE, "a DN42 region 41-70", C.AMBIGUOUS_REGION_SYMBOLS
)
_bwc_check, bandwidth_community_value = _symbolic(
    C.BANDWIDTH_SYMBOLS, lambda n: 21 <= n <= 29, "a DN42 bandwidth community 21-29"
)
_continent_check, continent_value = _symbolic(
    C.CONTINENTS, lambda n: n in C.CONTINENTS.values(), "a MoeNet continent code"
)
_subregion_check, subregion_value = _symbolic(
    C.SUBREGIONS, lambda n: n in C.SUBREGIONS.values(), "a MoeNet subregion code"
)


def country_value(v: Any) -> int | None:
    """DN42 country community (1000 + ISO-3166 numeric) from either form."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, str) and _is_number_text(v.strip()):
        v = int(v.strip())
    if isinstance(v, int):
        if 1 <= v <= 999:
            return C.COUNTRY_BASE + v
        if v in C.COUNTRY_RANGE:
            return v
    return None


def _country(v: Any) -> str | None:
    if v is None or country_value(v) is not None:
        return None
    return f"must be an ISO-3166-1 numeric country code (1-999) or its DN42 community 1001-1999 (got {v!r})"


_BW_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:BIT|B|BPS)?(?:_PLUS)?$", re.IGNORECASE)
_BW_SCALE = {"K": 0.001, "": 1.0, "M": 1.0, "G": 1000.0, "T": 1_000_000.0}


def bandwidth_mbit(v: Any) -> int | None:
    """Node bandwidth in Mbit/s from ``1000``, ``"1G"``, ``"500M"``, ``"LC_BW_10G"``."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return int(v) if 1 <= v <= 2**32 - 1 else None
    if isinstance(v, str) and len(v) <= 64:
        m = _BW_RE.match(re.sub(r"^(LC_BW_|BW_)", "", v.strip(), flags=re.IGNORECASE))
        if m:
            # float() of "9"*400 is inf (int(inf) raises OverflowError): compare first.
            scaled = float(m.group(1)) * _BW_SCALE[m.group(2).upper()]
            if not scaled < 2**32:
                return None
            mbit = int(scaled)
            return mbit if 1 <= mbit <= 2**32 - 1 else None
    return None


def _bandwidth(v: Any) -> str | None:
    if v is None or bandwidth_mbit(v) is not None:
        return None
    return f"must be a bandwidth in Mbit/s or like '1G', '500M' (got {v!r})"


# ----------------------------------------------------------------- CP models


@attrs.define(kw_only=True)
class NodeInfo:
    """``node`` of the CP's bird-config answer: who this node is and where."""

    id: int = attrs.field(metadata=check(_range(1, 4294967295)))
    name: str = attrs.field(
        metadata=check(_pattern(NODE_NAME_RE, "a node name (letters, digits, '.', '_', '-')"))
    )
    type: str = attrs.field(
        default="",
        metadata=check(_pattern(re.compile(r"^[A-Za-z0-9_-]{0,32}$"), "a short word", empty_ok=True)),
    )
    bandwidth: Any = attrs.field(default=None, metadata=check(_bandwidth))
    region_code: str = attrs.field(
        default="",
        metadata=check(_pattern(re.compile(r"^[A-Za-z0-9_-]{0,32}$"), "a short code", empty_ok=True)),
    )
    loopback_ipv4: str = attrs.field(metadata=check(_address(4, link_local=False, empty_ok=False)))
    loopback_ipv6: str = attrs.field(metadata=check(_address(6, link_local=False, empty_ok=False)))
    continent_lc: Any = attrs.field(metadata=check(_continent_check))
    subregion_lc: Any = attrs.field(metadata=check(_subregion_check))
    region_community: Any = attrs.field(metadata=check(_region_check))
    bandwidth_community: Any = attrs.field(metadata=check(_bwc_check))
    country_community: Any = attrs.field(default=None, metadata=check(_country))
    """Our extension: ISO-3166 numeric (or 1000+ that); adds (64511, 1000+n) to own routes."""

    @property
    def region(self) -> int:
        return region_value(self.region_community) or 0

    @property
    def bandwidth_dn42(self) -> int:
        return bandwidth_community_value(self.bandwidth_community) or 0

    @property
    def continent(self) -> int:
        return continent_value(self.continent_lc) or 0

    @property
    def subregion(self) -> int:
        return subregion_value(self.subregion_lc) or 0

    @property
    def country(self) -> int | None:
        return country_value(self.country_community)

    @property
    def bandwidth_mbit(self) -> int | None:
        return bandwidth_mbit(self.bandwidth)


@attrs.define(kw_only=True)
class RpkiServer:
    """One RTR cache; each becomes its own ``protocol rpki`` feeding the ROA tables."""

    name: str = attrs.field(metadata=check(_pattern(SHORT_NAME_RE, "1-32 letters, digits, '_' or '-'")))
    host: str = attrs.field(metadata=check(_host))
    port: int = attrs.field(default=8082, metadata=check(_range(1, 65535)))

    @property
    def symbol(self) -> str:
        return "rpki_" + sanitise_symbol_part(self.name)

    @property
    def remote(self) -> str:
        """An address bare, a DNS name as a (pattern-checked) BIRD string."""
        try:
            return str(ipaddress.ip_address(self.host))
        except ValueError:
            return bird_string(self.host, "policy.rpkiServers.host")


@attrs.define(kw_only=True)
class PolicyInfo:
    """``policy`` of the bird-config answer: the AS-wide routing policy."""

    dn42_as: Any = attrs.field(metadata=check(_asn))
    dn42_ipv4_prefix: str = attrs.field(metadata=check(_network(4)))
    dn42_ipv6_prefix: str = attrs.field(metadata=check(_network(6)))
    rpki_servers: list[RpkiServer] = attrs.field(factory=list)
    ebgp_import_limit: int = attrs.field(metadata=check(_positive))
    ebgp_export_limit: int = attrs.field(metadata=check(_positive))
    ibgp_import_limit: int = attrs.field(metadata=check(_positive))
    ibgp_export_limit: int = attrs.field(metadata=check(_positive))
    ebgp_receive_limit: int | None = attrs.field(default=None, metadata=check(_positive))
    """Default ``receive limit`` of an eBGP channel (routes received, filtered ones
    included: ``import table on`` keeps those too); None: twice the channel's
    import limit. A session's ``receiveLimit`` wins."""
    ebgp_local_pref: int = attrs.field(default=C.LOCAL_PREF["ebgp"], metadata=check(_range(1, 1_000_000)))
    """Local preference of every route learned over eBGP, set where it enters the
    network and carried unchanged over iBGP."""
    ebgp_direct_bonus: int = attrs.field(
        default=C.LOCAL_PREF["direct_bonus"], metadata=check(_range(0, 1_000_000))
    )
    """Added to ``ebgpLocalPref`` when the peer is the route's origin (AS path length 1)."""
    cold_potato: bool = True
    """Rank other nodes' exits by the route's DN42 origin region: the exit node
    takes ``coldPotatoPenalty`` off what it passes over iBGP when the route's
    origin region is not its own. False: plain hot potato (IGP metric)."""
    cold_potato_penalty: int = attrs.field(
        default=C.LOCAL_PREF["cold_potato_penalty"], metadata=check(_range(0, 1_000_000))
    )
    """See ``coldPotato``; smaller than ``ebgpLocalPref`` (0 is the drain)."""
    as_path_max_len: int = attrs.field(metadata=check(_range(1, 255)))
    roa_mode: str = attrs.field(default="", metadata=check(_roa_mode))
    """``strict`` (only ROA-valid routes are accepted on eBGP import, as the DN42
    wiki does), ``loose`` (only ROA-invalid ones are rejected), or empty: strict.
    A local ``bird.roaMode`` wins over this (see docs/bird.md, "ROA")."""
    route_collector: bool | None = None
    """Peer with the DN42 Global Route Collector (:mod:`.collector`): true or false;
    null or absent: off. A local ``bird.routeCollector`` wins; the neighbour and its
    AS are local only."""
    deny_list: DenyList = attrs.field(factory=DenyList, metadata={"internal": True})
    """``denyList`` (``{"prefixes": [...], "asns": [...]}``), validated by
    :func:`~moenet_bird.denylist.deny_list_from_policy` and merged with the local
    ``bird.denyListFiles``: routes refused on import."""
    communities: dict[str, Any] = attrs.field(factory=dict)
    """Accepted, not rendered (the Go agent ignored them too; semantics undefined)."""
    large_communities: dict[str, Any] = attrs.field(factory=dict)
    """Accepted, not rendered."""

    @property
    def asn(self) -> int:
        return asn_value(self.dn42_as) or 0


@attrs.define(kw_only=True)
class IbgpPeer:
    """Another node of ours, as the CP's bird-config ``ibgpPeers`` lists it.

    Parsed for compatibility only (an old CP answer still validates); the iBGP
    sessions are rendered from the declared :class:`~moenet_core.intents.IbgpNeighborIntent`
    fragments, never from the policy.
    """

    node_id: int = attrs.field(metadata=check(_range(1, 4294967295)))
    node_name: str = attrs.field(metadata=check(_pattern(NODE_NAME_RE, "a node name")))
    loopback_ipv4: str = attrs.field(default="", metadata=check(_address(4, link_local=False)))
    loopback_ipv6: str = attrs.field(default="", metadata=check(_address(6, link_local=False)))
    is_rr: bool = False

    @property
    def symbol(self) -> str:
        return ibgp_symbol(self.node_name, self.node_id)


@attrs.define(kw_only=True)
class BirdPolicy:
    """The whole validated bird-config answer."""

    config_hash: str = attrs.field(
        default="",
        metadata=check(_pattern(re.compile(r"^[A-Za-z0-9:_+/=.-]{0,128}$"), "a hash string", empty_ok=True)),
    )
    node: NodeInfo
    policy: PolicyInfo
    ibgp_peers: list[IbgpPeer] = attrs.field(factory=list)


# ----------------------------------------------------------------- intents, as BIRD names them


def canonical_key(key: str) -> str | None:
    """``key`` as a canonical UUID string, or None when it is not a UUID. A key
    already in canonical form is returned itself, not a copy: every eBGP peer
    keeps its id for as long as it is declared."""
    try:
        text = str(uuidlib.UUID(key))
    except (ValueError, TypeError, AttributeError):
        return None
    return key if text == key else text


def peer_id(owner: str, key: str) -> str:
    """What an eBGP peer's protocol name is derived from: the canonical UUID when
    the fragment key is one (the sessions plugin keys by session uuid, so the
    name does not depend on who declared it), else ``<owner>/<key>``."""
    return canonical_key(key) or f"{owner}/{key}"


@attrs.frozen
class BgpPeer:
    """An eBGP peer intent plus the id its BIRD names derive from (:func:`peer_id`)."""

    id: str
    intent: EbgpPeerIntent

    @property
    def canonical_id(self) -> str:
        """The id, a UUID in its canonical spelling."""
        return canonical_key(self.id) or self.id

    @property
    def symbol(self) -> str:
        """``dn42_<asn>_<hash of the id>``: two sessions with one ASN never collide;
        a session adopted from the Go agent keeps its ``dn42_<asn>``
        (``intent.legacy_protocol``)."""
        if self.intent.legacy_protocol:
            return self.intent.legacy_protocol
        return f"dn42_{self.intent.asn}_{short_hash(self.canonical_id)}"

    @property
    def legacy(self) -> bool:
        """Adopted from the Go agent: rendered with its session-level options."""
        return bool(self.intent.legacy_protocol)

    @property
    def file_name(self) -> str:
        return f"peers/{self.symbol}.conf"


def ibgp_symbol(node_name: str, node_id: int) -> str:
    """``ibgp_<name>_<node id>``: the node id keeps two names that sanitise alike apart."""
    return f"ibgp_{sanitise_symbol_part(node_name)[:40]}_{node_id}"


def ibgp_file(n: IbgpNeighborIntent) -> str:
    """``ibgp/<symbol>.conf``: never the placeholder's name, whatever the node is called."""
    return f"ibgp/{ibgp_symbol(n.node_name, n.node_id)}.conf"


# ----------------------------------------------------------------- validation


def run_checks(obj: Any, path: str) -> list[str]:
    """Field checks of an attrs object built in Python (not from JSON)."""
    problems = []
    for f in attrs.fields(type(obj)):
        fn = f.metadata.get("check")
        if fn is not None and (msg := fn(getattr(obj, f.name))):
            problems.append(f"{path}.{camel(f.name)}: {msg}")
    return problems


def _structure_list(
    cls: type[Any], items: Any, path: str, warnings: list[str], problems: list[str]
) -> list[Any]:
    if not isinstance(items, list):
        problems.append(f"{path}: expected a list")
        return []
    out = []
    for i, item in enumerate(items):
        obj, errs = structure(cls, item, f"{path}[{i}]", warnings)
        problems.extend(errs)
        if obj is not None:
            out.append(obj)
    return out


def parse_bird_config(data: Any) -> tuple[BirdPolicy, list[str]]:
    """Validate the CP's bird-config ``data`` object. Returns (policy, warnings);
    raises :class:`BirdConfigError` listing every problem with its field path."""
    warnings: list[str] = []
    problems: list[str] = []
    if not isinstance(data, dict):
        raise BirdConfigError("(top level): expected an object")
    raw = dict(data)
    raw_policy = raw.get("policy")
    raw_rpki: Any = []
    raw_deny: Any = None
    if isinstance(raw_policy, dict):
        raw_policy = dict(raw_policy)
        raw_rpki = raw_policy.pop("rpkiServers", [])
        raw_deny = raw_policy.pop("denyList", None)
        raw["policy"] = raw_policy
    raw_ibgp = raw.pop("ibgpPeers", [])
    bp, errs = structure(BirdPolicy, raw, "", warnings)
    problems.extend(errs)
    rpki = _structure_list(
        RpkiServer, raw_rpki if raw_rpki is not None else [], "policy.rpkiServers", warnings, problems
    )
    deny, deny_problems = deny_list_from_policy(raw_deny)
    problems.extend(deny_problems)
    # ibgpPeers are not rendered from the policy (the ibgp plugin owns the iBGP peer
    # set and validates it itself): a bad entry is a warning here, never a refusal.
    ibgp_problems: list[str] = []
    ibgp = _structure_list(
        IbgpPeer, raw_ibgp if raw_ibgp is not None else [], "ibgpPeers", warnings, ibgp_problems
    )
    if bp is not None:
        bp.policy.rpki_servers = rpki
        bp.policy.deny_list = deny
        bp.ibgp_peers = ibgp
        problems.extend(_cross_checks(bp, warnings))
        ibgp_problems += validate_ibgp(ibgp, "ibgpPeers")
    warnings.extend(f"{p} (entry ignored by the BIRD policy)" for p in ibgp_problems)
    if problems or bp is None:
        raise BirdConfigError(problems)
    return bp, warnings


def _dupes(items: list[tuple[str, str]], what: str) -> list[str]:
    seen: dict[str, str] = {}
    out = []
    for path, key in items:
        if key in seen:
            out.append(f"{path}: duplicate {what} (same as {seen[key]})")
        else:
            seen[key] = path
    return out


def _cross_checks(bp: BirdPolicy, warnings: list[str]) -> list[str]:
    problems: list[str] = []
    pol, node = bp.policy, bp.node
    v4 = ipaddress.IPv4Network(pol.dn42_ipv4_prefix)
    v6 = ipaddress.IPv6Network(pol.dn42_ipv6_prefix)
    if ipaddress.IPv4Address(node.loopback_ipv4) not in v4:
        warnings.append("node.loopbackIpv4: not inside policy.dn42Ipv4Prefix; Babel will not carry it")
    if ipaddress.IPv6Address(node.loopback_ipv6) not in v6:
        warnings.append("node.loopbackIpv6: not inside policy.dn42Ipv6Prefix; Babel will not carry it")
    if pol.cold_potato and pol.cold_potato_penalty >= pol.ebgp_local_pref:
        problems.append(
            f"policy.coldPotatoPenalty: must be smaller than policy.ebgpLocalPref "
            f"({pol.ebgp_local_pref}; local preference 0 is the drain)"
        )
    if not pol.rpki_servers:
        warnings.append(
            "policy.rpkiServers: empty; the ROA tables are fed only by a local static ROA file, if any"
        )
    problems += _dupes(
        [(f"policy.rpkiServers[{i}].name", s.symbol) for i, s in enumerate(pol.rpki_servers)],
        "RPKI server name",
    )
    for i, s in enumerate(pol.rpki_servers):
        if err := symbol_error(s.symbol):
            problems.append(f"policy.rpkiServers[{i}].name: {err}")
    return problems


def _typed(fn: Check) -> Check:
    """``fn`` made safe for a value of the wrong type (an intent built around its checks)."""

    def safe(v: Any) -> str | None:
        try:
            return fn(v)
        except (TypeError, ValueError, AttributeError):
            return f"has the wrong type ({type(v).__name__})"

    return safe


def _int(fn: Check) -> Check:
    return _typed(lambda v: "must be an integer" if isinstance(v, bool) or not isinstance(v, int) else fn(v))


def _int_or_none(fn: Check) -> Check:
    return _typed(lambda v: None if v is None else _int(fn)(v))


def _str(fn: Check) -> Check:
    return _typed(lambda v: fn(v) if isinstance(v, str) else "must be a string")


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


#: BIRD's rules for each eBGP intent field (stricter than the intent's own: no
#: reserved ASN, text safe inside a BIRD string, a safe interface name).
PEER_CHECKS: dict[str, Check] = {
    "asn": _int(_asn),
    "latency": _int(_range(1, 9)),
    "bandwidth": _int(_range(21, 29)),
    "crypto": _int(_range(31, 36)),
    "name": _str(_text),
    "description": _str(_text),
    "interface": _str(_ifname),
    "neighbor_link_local": _str(_address(6, link_local=True)),
    "neighbor_ipv6": _str(_address(6, link_local=False)),
    "neighbor_ipv4": _str(_address(4)),
    "local_link_local": _str(_address(6, link_local=True)),
    "local_ipv6": _str(_address(6, link_local=False)),
    "local_ipv4": _str(_address(4)),
    "mp_bgp": _bool,
    "extended_nexthop": _bool,
    "import_limit": _int_or_none(_positive),
    "export_limit": _int_or_none(_positive),
    "receive_limit": _int_or_none(_positive),
    "disabled": _bool,
}
NEIGHBOR_CHECKS: dict[str, Check] = {
    "node_id": _int(_range(1, 4294967295)),
    "node_name": _str(_pattern(NODE_NAME_RE, "a node name (letters, digits, '.', '_', '-')")),
    "loopback_ipv4": _str(_address(4, link_local=False)),
    "loopback_ipv6": _str(_address(6, link_local=False)),
    "is_rr": _bool,
}
#: Checked only on a declared neighbour (the policy's ``ibgpPeers`` have no latency).
NEIGHBOR_INTENT_CHECKS: dict[str, Check] = {
    "rr_client": _bool,
    "latency": _int_or_none(_range(1, 9)),
}
BABEL_CHECKS: dict[str, Check] = {
    "pattern": _str(_pattern(IFPATTERN_RE, "an interface name, optionally ending in '*'")),
    "type": lambda v: None if v in ("tunnel", "wired", "wireless") else "must be tunnel, wired or wireless",
    "rxcost": _int_or_none(_range(1, 65535)),
    "rtt_cost": _int(_range(0, 65535)),
    "rtt_min_ms": _int(_range(1, 60000)),
    "rtt_max_ms": _int(_range(1, 60000)),
    "hello_interval_s": _int(_range(1, 600)),
}
OPTIONS_CHECKS: dict[str, Check] = {
    "enabled": _bool,
    "route_reflector": lambda v: None if v is None or isinstance(v, bool) else "must be true, false or null",
}


def field_problems(obj: Any, checks: Mapping[str, Check], path: str) -> list[str]:
    """``<path>.<camelField>: <why>`` for every field of ``obj`` failing its check."""
    return [
        f"{path}.{camel(name)}: {msg}"
        for name, fn in checks.items()
        if (msg := fn(getattr(obj, name, None))) is not None
    ]


def validate_peer(peer: BgpPeer, path: str) -> list[str]:
    """Every reason BIRD cannot run one eBGP peer, each naming ``<path>.field``."""
    p = peer.intent
    if not isinstance(p, EbgpPeerIntent):  # callers may pass what a plugin declared
        return [f"{path}: not an eBGP peer intent"]  # type: ignore[unreachable]
    problems = field_problems(p, PEER_CHECKS, path)
    if err := text_error(peer.id, 128):
        problems.append(f"{path}: the key {peer.id[:40]!r} {err}")
    if problems:
        return problems
    v6_neighbor = p.neighbor_link_local or p.neighbor_ipv6
    if not v6_neighbor and not p.neighbor_ipv4:
        problems.append(f"{path}: needs neighborLinkLocal, neighborIpv6 or neighborIpv4")
    if p.neighbor_link_local and not p.interface:
        problems.append(f"{path}.interface: required with a link-local neighbour")
    if p.local_link_local and not p.neighbor_link_local:
        problems.append(f"{path}.localLinkLocal: only used with neighborLinkLocal")
    if p.mp_bgp and not v6_neighbor:
        problems.append(f"{path}.mpBgp: needs an IPv6 neighbour (link-local or neighborIpv6)")
    if p.mp_bgp and v6_neighbor and not p.extended_nexthop and not p.local_ipv4:
        problems.append(
            f"{path}.extendedNexthop: IPv4 over an IPv6 session needs extended next hop or localIpv4"
        )
    if err := symbol_error(peer.symbol):
        problems.append(f"{path}: protocol name {peer.symbol!r} {err}")
    return problems


def validate_peers(peers: Sequence[BgpPeer]) -> list[str]:
    """Every problem of the eBGP peers to render, each naming ``peers[i].field``."""
    problems: list[str] = []
    for i, p in enumerate(peers):
        problems += validate_peer(p, f"peers[{i}]")
    if not problems:
        problems += _dupes([(f"peers[{i}]", p.canonical_id) for i, p in enumerate(peers)], "session id")
        problems += _dupes(
            [(f"peers[{i}]", p.symbol) for i, p in enumerate(peers)], "protocol name (hash clash)"
        )
    return problems


def validate_neighbor(n: IbgpNeighborIntent | IbgpPeer, path: str) -> list[str]:
    """Every reason BIRD cannot run one iBGP neighbour, each naming ``<path>.field``."""
    problems = field_problems(n, NEIGHBOR_CHECKS, path)
    if isinstance(n, IbgpNeighborIntent):
        problems += field_problems(n, NEIGHBOR_INTENT_CHECKS, path)
    if not problems and not n.loopback_ipv4 and not n.loopback_ipv6:
        problems.append(f"{path}: needs loopbackIpv6 or loopbackIpv4")
    return problems


def validate_ibgp(peers: Sequence[IbgpNeighborIntent | IbgpPeer], path: str = "ibgp") -> list[str]:
    """Every problem of a list of iBGP neighbours (declared, or the policy's
    ``ibgpPeers``), each naming ``<path>[i].field``: field checks, a loopback to
    reach, no two with one node id or name."""
    problems: list[str] = []
    for i, p in enumerate(peers):
        problems += validate_neighbor(p, f"{path}[{i}]")
    if problems:
        return problems
    problems += _dupes([(f"{path}[{i}].nodeId", str(p.node_id)) for i, p in enumerate(peers)], "nodeId")
    problems += _dupes(
        [(f"{path}[{i}].nodeName", p.node_name.lower()) for i, p in enumerate(peers)], "nodeName"
    )
    return problems


def validate_interface(iface: BabelInterfaceIntent, path: str) -> list[str]:
    """Every reason BIRD cannot run Babel on one interface intent."""
    problems = field_problems(iface, BABEL_CHECKS, path)
    if not problems and iface.rtt_min_ms > iface.rtt_max_ms:
        problems.append(f"{path}.rttMinMs: must not exceed rttMaxMs")
    return problems


def validate_babel(interfaces: Sequence[BabelInterfaceIntent], path: str = "babel.interfaces") -> list[str]:
    problems: list[str] = []
    for i, iface in enumerate(interfaces):
        problems += validate_interface(iface, f"{path}[{i}]")
    problems += _dupes(
        [(f"{path}[{i}].pattern", str(b.pattern)) for i, b in enumerate(interfaces)], "pattern"
    )
    return problems


def validate_options(options: IbgpOptionsIntent, path: str) -> list[str]:
    return field_problems(options, OPTIONS_CHECKS, path)


__all__ = [
    "ROA_MODES",
    "BgpPeer",
    "BirdPolicy",
    "IbgpPeer",
    "NodeInfo",
    "PolicyInfo",
    "RpkiServer",
    "ibgp_file",
    "ibgp_symbol",
    "parse_bird_config",
    "peer_id",
    "run_checks",
    "validate_babel",
    "validate_ibgp",
    "validate_interface",
    "validate_neighbor",
    "validate_options",
    "validate_peer",
    "validate_peers",
]
