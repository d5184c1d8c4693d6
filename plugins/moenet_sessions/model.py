"""Validate the control plane's session list into typed ``Session`` objects.

The CP is not trusted to be well-formed (DESIGN.md §6): every field of every
session is checked here, before anything reaches a tunnel, a firewall rule or a
BIRD file. Each element is validated on its own: a bad one becomes an
:class:`Invalid` (reported ``ERROR`` with the reason) and never breaks its
siblings. Only an answer whose *shape* is wrong is refused as a whole
(:class:`SessionsPayloadError`), because reading it as "no sessions" would tear
the node down.

Rules chosen where the CP contract is silent:

- **Listen port**: ``credential.listen_port`` (what the Go agent gave WireGuard),
  ``localPort`` and ``port`` (what the Go agent opened in the firewall) all mean
  *our* UDP listen port. ``0``/``null`` means unset. If several are set they must
  agree, otherwise the session is invalid: the firewall and the tunnel would
  disagree (go-agent.md §20.21). A session needs a listen port or an endpoint.
- **Endpoint**: ``endpoint`` wins over ``credential.endpoint`` (as in the Go
  agent); a differing credential endpoint is a warning. An IP endpoint must be a
  usable unicast peer: no unspecified, multicast, broadcast, loopback, link-local
  (169.254/16, fe80::/10, with or without a scope) or 240/4 address
  (``moenet_core.endpoint_ip_problem``, the mesh plugin's check too). Host names
  are allowed.
- **MTU**: ``mtu`` and ``credential.mtu`` must agree when both are set; default 1420.
- **Interface name**: when the CP gives none, :func:`derive_interface` makes
  ``wg<last 4 ASN digits>-<6 hex of sha256(uuid)>`` (13 characters). Names the
  kernel treats specially (``all``, ``default``, ``lo``...: ``moenet_core.RESERVED_IFNAMES``)
  are refused.
- **Our tunnel addresses**: ``localIpv4`` / ``localIpv6`` are this node's
  address on the tunnel (and BGP source) towards ``ipv4`` / ``ipv6``; each needs
  its neighbour and must differ from it. Without them the node's loopback is used
  (see :mod:`.desired`).
- **Policy**: ``policy`` is null, ``""``, an object or a JSON string of one
  (:class:`SessionPolicy`). A bad value in it makes the session invalid like any
  other field: falling back to the node default could accept a full table from a
  peer the CP meant to limit to a few routes.
- **Duplicates**: the same uuid twice makes every element with it invalid. The
  same interface or listen port on two sessions the node must *configure*
  (``ACTIVE``, ``ERROR``, ``QUEUED_FOR_SETUP``) makes both invalid; a session
  being deleted may still hold the name its successor wants.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from moenet_core import (
    MoenetError,
    SessionStatus,
    StatusScheme,
    endpoint_ip_problem,
    ifname_problem,
    status_from_wire,
)

#: Statuses whose session the node must have configured.
CONFIGURE_STATUSES = frozenset({SessionStatus.ACTIVE, SessionStatus.ERROR, SessionStatus.QUEUED_FOR_SETUP})

#: Extensions the agent understands (others are ignored with a warning).
KNOWN_EXTENSIONS = frozenset({"mp-bgp", "extended-nexthop"})

#: Upper bound of a per-session route limit (the DN42 table is a few thousand routes).
MAX_ROUTE_LIMIT = 1_000_000
#: Upper bound of a link bandwidth in Mbit/s (DN42 community 29 is >= 10 Tbit/s).
MAX_BANDWIDTH_MBIT = 100_000_000
#: DN42 bandwidth community (64511, x): the link carries at least 10^(x-22) Mbit/s.
BANDWIDTH_COMMUNITY_MBIT: dict[int, float] = {x: 10.0 ** (x - 22) for x in range(21, 30)}
_BW_RE = re.compile(r"^([0-9]{1,12}(?:\.[0-9]{1,6})?)\s*([KMGT]?)(?:BIT|BPS|B)?(?:/S)?$", re.IGNORECASE)
_BW_SCALE = {"K": 0.001, "": 1.0, "M": 1.0, "G": 1000.0, "T": 1_000_000.0}

DEFAULT_MTU = 1420
MIN_MTU = 1280
MAX_MTU = 9000
NAME_MAX = 128
DESCRIPTION_MAX = 256
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: 1-15 of ``[A-Za-z0-9_.-]`` starting with a letter or digit (stricter than the
#: kernel: BIRD's interface-name pattern in moenet_bird must accept it too).
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)

# 0, AS_TRANS, documentation (RFC 5398), last 16-bit, IANA reserved, last 32-bit.
_RESERVED_ASNS: tuple[tuple[int, int], ...] = (
    (0, 0),
    (23456, 23456),
    (64496, 64511),
    (65535, 65535),
    (65536, 65551),
    (65552, 131071),
    (4294967295, 4294967295),
)

_TOP_KEYS = frozenset(
    {
        "uuid", "asn", "name", "description", "status", "type", "interface", "endpoint", "credential",
        "ipv4", "ipv6", "ipv6LinkLocal", "localIpv4", "localIpv6", "mtu", "port", "localPort", "extensions",
        "policy", "lastError", "data", "removed", "id", "createdAt", "updatedAt", "node", "nodeId", "router",
    }
)  # fmt: skip
_CRED_KEYS = {
    "public_key": "publicKey",
    "preshared_key": "presharedKey",
    "listen_port": "listenPort",
    "endpoint": "endpoint",
    "mtu": "mtu",
}


_POLICY_KEYS = frozenset({"importLimit", "exportLimit", "receiveLimit", "bandwidth", "bandwidthCommunity"})


class SessionsPayloadError(MoenetError):
    """The CP answer is not a session list at all (refused as a whole, never "empty")."""


class _Bad(Exception):
    """One field is invalid: ``path: message``."""


@attrs.frozen(kw_only=True)
class SessionPolicy:
    """The CP's per-session routing policy (``policy``); None takes the node's
    default (the BIRD policy's eBGP limits, ``sessions.bandwidth``)."""

    import_limit: int | None = None
    """Routes accepted from the peer (BIRD ``import limit``)."""
    export_limit: int | None = None
    """Routes sent to the peer (BIRD ``export limit``)."""
    receive_limit: int | None = None
    """Routes received from the peer, filtered ones included (BIRD ``receive limit``)."""
    bandwidth: int | None = None
    """The link's DN42 bandwidth community 21-29 (from ``bandwidth`` in Mbit/s or
    ``bandwidthCommunity``)."""


@attrs.frozen(kw_only=True)
class Session:
    """One validated eBGP session. Addresses are canonical text without prefix length."""

    uuid: str
    """Canonical lower-case 8-4-4-4-12 form."""
    asn: int
    status: SessionStatus
    name: str = ""
    description: str = ""
    interface: str
    interface_derived: bool = False
    endpoint: str | None = None
    """Canonical ``host:port`` / ``[v6]:port``; the host may be a DNS name."""
    public_key: str
    preshared_key: str | None = attrs.field(default=None, repr=False)
    listen_port: int | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    ipv6_link_local: str | None = None
    local_ipv4: str | None = None
    """Our address on the tunnel towards ``ipv4`` (None: the node's IPv4 loopback)."""
    local_ipv6: str | None = None
    """Our address on the tunnel towards ``ipv6`` (None: the node's IPv6 loopback)."""
    policy: SessionPolicy = SessionPolicy()
    mtu: int = DEFAULT_MTU
    extensions: tuple[str, ...] | None = None
    """Known extensions, sorted; None when the CP sent none (backend defaults apply)."""
    last_error: str | None = None
    """The ``lastError`` the CP holds (what it last heard from us), for report de-duplication."""
    warnings: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Invalid:
    """A session that failed validation; ``uuid`` is None when even that was unusable."""

    uuid: str | None
    reason: str
    status: SessionStatus | None = None
    """The CP status when it parsed: a removal request can be honoured without the other fields."""
    last_error: str | None = None
    interface: str | None = None


def parse_sessions(
    data: Any, *, max_sessions: int | None = None, status_scheme: StatusScheme | str = StatusScheme.SEED
) -> tuple[list[Session], list[Invalid]]:
    """Validate a CP sessions answer: ``{"bgpSessions": [...]}``, ``{"sessions": [...]}``
    or a bare list (an unwrapped ``{code, message, data}`` envelope's ``data``).
    ``status_scheme`` (``controlPlane.statusScheme``) says how the CP numbers the
    statuses; each is read into a :class:`SessionStatus`.

    Raises :class:`SessionsPayloadError` when the answer is not one of those shapes,
    or lists more than ``max_sessions`` entries (``sessions.maxSessions``; None: no cap).
    """
    items = _session_list(data)
    if max_sessions is not None and len(items) > max_sessions:
        raise SessionsPayloadError(
            f"{len(items)} sessions exceed sessions.maxSessions ({max_sessions}); answer refused"
        )
    parsed: list[Session | Invalid] = []
    for i, item in enumerate(items):
        parsed.append(_parse_one(item, f"sessions[{i}]", StatusScheme(status_scheme)))
    parsed = _reject_duplicates(parsed)
    return [p for p in parsed if isinstance(p, Session)], [p for p in parsed if isinstance(p, Invalid)]


def _session_list(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        keys = [k for k in ("bgpSessions", "sessions") if k in data]
        if len(keys) == 2:
            raise SessionsPayloadError("sessions answer has both 'bgpSessions' and 'sessions'")
        if keys:
            inner = data[keys[0]]
            if isinstance(inner, list):
                return inner
            raise SessionsPayloadError(f"sessions answer: '{keys[0]}' must be a list (got {_kind(inner)})")
        raise SessionsPayloadError(
            "sessions answer must be a list or an object with 'bgpSessions' or 'sessions' "
            f"(got an object with keys {sorted(str(k) for k in data)[:8]})"
        )
    raise SessionsPayloadError(f"sessions answer must be a list or an object (got {_kind(data)})")


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


# ----------------------------------------------------------------- one session


def _parse_one(item: Any, path: str, scheme: StatusScheme = StatusScheme.SEED) -> Session | Invalid:
    if not isinstance(item, Mapping):
        return Invalid(uuid=None, reason=f"{path}: must be an object (got {_kind(item)})")
    uuid: str | None = None
    status: SessionStatus | None = None
    last_error: str | None = None
    try:
        uuid = _uuid(item.get("uuid"), f"{path}.uuid")
        path = f"sessions[{uuid}]"
        status = _status(item.get("status"), f"{path}.status", scheme)
        last_error = _opt_text(item.get("lastError"), f"{path}.lastError", 1024)
    except _Bad as exc:
        return Invalid(uuid=uuid, reason=str(exc), status=status)
    problems: list[str] = []
    warnings: list[str] = []
    fields: dict[str, Any] = {}

    def run(key: str, fn: Any, *args: Any) -> None:
        try:
            fields[key] = fn(*args)
        except _Bad as exc:
            problems.append(str(exc))

    for key in sorted(str(k) for k in item if k not in _TOP_KEYS):
        warnings.append(f"{path}: unknown field {key[:40]!r} ignored")
    run("asn", _asn, item.get("asn"), f"{path}.asn")
    run("name", _opt_text, item.get("name"), f"{path}.name", NAME_MAX)
    run("description", _opt_text, item.get("description"), f"{path}.description", DESCRIPTION_MAX)
    run("type", _type, item.get("type"), f"{path}.type")
    run("ipv4", _addr, item.get("ipv4"), f"{path}.ipv4", 4, False)
    run("ipv6", _addr, item.get("ipv6"), f"{path}.ipv6", 6, False)
    run("ipv6_link_local", _addr, item.get("ipv6LinkLocal"), f"{path}.ipv6LinkLocal", 6, True)
    run("local_ipv4", _addr, item.get("localIpv4"), f"{path}.localIpv4", 4, False)
    run("local_ipv6", _addr, item.get("localIpv6"), f"{path}.localIpv6", 6, False)
    run("policy", _policy, item.get("policy"), f"{path}.policy", warnings)
    run("extensions", _extensions, item.get("extensions"), f"{path}.extensions", warnings)
    run("cred", _credential, item.get("credential"), f"{path}.credential", warnings)
    run("endpoint", _endpoint, item.get("endpoint"), f"{path}.endpoint")
    run("port", _port, item.get("port"), f"{path}.port")
    run("local_port", _port, item.get("localPort"), f"{path}.localPort")
    run("mtu", _mtu, item.get("mtu"), f"{path}.mtu")
    iface_raw = item.get("interface")
    run("interface", _ifname, iface_raw, f"{path}.interface")
    if problems:
        iface = (
            iface_raw
            if isinstance(iface_raw, str) and IFNAME_RE.fullmatch(iface_raw) and not ifname_problem(iface_raw)
            else None
        )
        return Invalid(
            uuid=uuid, reason="; ".join(problems), status=status, last_error=last_error, interface=iface
        )

    cred: dict[str, Any] = fields["cred"]
    # Listen port: every source that is set must agree.
    ports = {
        k: v
        for k, v in (
            ("credential.listen_port", cred.get("listen_port")),
            ("localPort", fields["local_port"]),
            ("port", fields["port"]),
        )
        if v is not None
    }
    if len(set(ports.values())) > 1:
        problems.append(
            f"{path}.port: listen port sources disagree ("
            + ", ".join(f"{k}={v}" for k, v in ports.items())
            + "): the firewall and the tunnel would use different ports"
        )
    listen_port = next(iter(ports.values()), None)
    endpoint = fields["endpoint"]
    if endpoint is None:
        endpoint = cred.get("endpoint")
    elif cred.get("endpoint") not in (None, endpoint):
        warnings.append(f"{path}.credential.endpoint: differs from endpoint; endpoint wins")
    if listen_port is None and endpoint is None:
        problems.append(f"{path}: neither an endpoint nor a listen port: the tunnel could never come up")
    mtus = {v for v in (fields["mtu"], cred.get("mtu")) if v is not None}
    if len(mtus) > 1:
        problems.append(f"{path}.mtu: mtu and credential.mtu disagree ({sorted(mtus)})")
    if not any(fields[k] for k in ("ipv4", "ipv6", "ipv6_link_local")):
        problems.append(f"{path}: no neighbour address (ipv4, ipv6 or ipv6LinkLocal) for BGP")
    for family in ("ipv4", "ipv6"):
        local, key = fields[f"local_{family}"], f"local{family.capitalize()}"
        if local is None:
            continue
        if not fields[family]:
            problems.append(
                f"{path}.{key}: set without {family} (no neighbour to pair it with on the tunnel)"
            )
        elif local == fields[family]:
            problems.append(f"{path}.{key}: {local} is the neighbour's own address ({family})")
    if problems:
        return Invalid(
            uuid=uuid,
            reason="; ".join(problems),
            status=status,
            last_error=last_error,
            interface=fields["interface"],
        )
    interface = fields["interface"]
    return Session(
        uuid=uuid,
        asn=fields["asn"],
        status=status,
        name=fields["name"] or "",
        description=fields["description"] or "",
        interface=interface or derive_interface(fields["asn"], uuid),
        interface_derived=interface is None,
        endpoint=endpoint,
        public_key=cred["public_key"],
        preshared_key=cred.get("preshared_key"),
        listen_port=listen_port,
        ipv4=fields["ipv4"],
        ipv6=fields["ipv6"],
        ipv6_link_local=fields["ipv6_link_local"],
        local_ipv4=fields["local_ipv4"],
        local_ipv6=fields["local_ipv6"],
        policy=fields["policy"],
        mtu=next(iter(mtus), DEFAULT_MTU),
        extensions=fields["extensions"],
        last_error=last_error,
        warnings=tuple(warnings),
    )


def derive_interface(asn: int, uuid: str) -> str:
    """``wg<asn mod 10000, 4 digits>-<first 6 hex of sha256(uuid)>``: deterministic,
    readable for DN42 ASNs (``wg0001-…`` for AS4242420001), and unique per session
    (two sessions with one ASN differ in the hash; a collision is caught as a
    duplicate interface)."""
    return f"wg{asn % 10000:04d}-{hashlib.sha256(uuid.encode()).hexdigest()[:6]}"


# ----------------------------------------------------------------- fields


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _uuid(v: Any, path: str) -> str:
    if not isinstance(v, str) or not UUID_RE.fullmatch(v):
        raise _Bad(f"{path}: must be a UUID (8-4-4-4-12 hex digits), got {_show(v)}")
    return v.lower()


def _status(v: Any, path: str, scheme: StatusScheme = StatusScheme.SEED) -> SessionStatus:
    try:
        if not _is_int(v):
            raise ValueError
        return status_from_wire(v, scheme)
    except ValueError:
        raise _Bad(
            f"{path}: must be a status code {'0-7' if scheme is StatusScheme.GO else '0-6'} "
            f"(controlPlane.statusScheme {scheme.value}), got {_show(v)}"
        ) from None


def _asn(v: Any, path: str) -> int:
    if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 10:
        v = int(v)
    if not _is_int(v):
        raise _Bad(f"{path}: must be an AS number, got {_show(v)}")
    if not 1 <= v <= 4294967294 or any(lo <= v <= hi for lo, hi in _RESERVED_ASNS):
        raise _Bad(f"{path}: {v} is not a usable AS number (0, reserved or out of the 32-bit range)")
    return int(v)


def _opt_text(v: Any, path: str, max_len: int) -> str | None:
    """Free CP text: only ever rendered inert (quoted) downstream, so only control
    characters, line separators and excessive length are refused."""
    if v is None:
        return None
    if not isinstance(v, str):
        raise _Bad(f"{path}: must be a string, got {_kind(v)}")
    if len(v) > max_len:
        raise _Bad(f"{path}: must be at most {max_len} characters (got {len(v)})")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in v):
        raise _Bad(f"{path}: must not contain control characters or line breaks")
    return v


def _type(v: Any, path: str) -> str:
    if v is None or v == "" or v == "wireguard":
        return "wireguard"
    if v in ("gre", "ip6gre"):
        raise _Bad(f"{path}: unsupported tunnel type {v!r} (only wireguard is supported)")
    raise _Bad(f"{path}: unknown tunnel type {_show(v)}")


def _ifname(v: Any, path: str) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str) or not IFNAME_RE.fullmatch(v):
        raise _Bad(
            f"{path}: must be 1-15 characters of letters, digits, '_', '.' or '-' starting with a "
            f"letter or digit, got {_show(v)}"
        )
    if problem := ifname_problem(v):
        raise _Bad(f"{path}: {problem}")
    return v


def _addr(v: Any, path: str, version: int, link_local: bool) -> str | None:
    """One host address; ``/32``, ``/128`` (and ``/64`` for link-local) are tolerated."""
    if v is None or v == "":
        return None
    if not isinstance(v, str) or len(v) > 64:
        raise _Bad(f"{path}: must be an IPv{version} address, got {_show(v)}")
    text, _, plen = v.strip().partition("/")
    if "%" in text:
        raise _Bad(f"{path}: must not carry a %scope, got {_show(v)}")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise _Bad(f"{path}: must be an IPv{version} address, got {_show(v)}") from None
    if addr.version != version:
        raise _Bad(f"{path}: must be an IPv{version} address, got {_show(v)}")
    allowed = {"", str(addr.max_prefixlen)} | ({"64"} if link_local else set())
    if plen not in allowed:
        raise _Bad(f"{path}: must be a single address, got {_show(v)}")
    is_ll = isinstance(addr, ipaddress.IPv6Address) and addr.is_link_local
    if link_local and not is_ll:
        raise _Bad(f"{path}: must be an IPv6 link-local address (fe80::/10), got {_show(v)}")
    if not link_local and is_ll:
        raise _Bad(f"{path}: a link-local address belongs in ipv6LinkLocal, got {_show(v)}")
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        raise _Bad(f"{path}: not a usable unicast address, got {_show(v)}")
    return str(addr)


def _port(v: Any, path: str) -> int | None:
    if v is None or (_is_int(v) and v == 0):
        return None
    if not _is_int(v) or not 1 <= v <= 65535:
        raise _Bad(f"{path}: must be a port 1-65535 (0 or null for none), got {_show(v)}")
    return int(v)


def _mtu(v: Any, path: str) -> int | None:
    if v is None or (_is_int(v) and v == 0):
        return None
    if not _is_int(v) or not MIN_MTU <= v <= MAX_MTU:
        raise _Bad(f"{path}: must be {MIN_MTU}-{MAX_MTU} (0 or null for the default), got {_show(v)}")
    return int(v)


def _extensions(v: Any, path: str, warnings: list[str]) -> tuple[str, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise _Bad(f"{path}: must be a list of strings, got {_kind(v)}")
    out: set[str] = set()
    for i, ext in enumerate(v):
        if not isinstance(ext, str):
            raise _Bad(f"{path}[{i}]: must be a string, got {_kind(ext)}")
        if ext in KNOWN_EXTENSIONS:
            out.add(ext)
        else:
            warnings.append(f"{path}[{i}]: unknown extension {ext[:40]!r} ignored")
    return tuple(sorted(out))


def _endpoint(v: Any, path: str) -> str | None:
    """``host:port``, ``a.b.c.d:port`` or ``[v6]:port`` in canonical form."""
    if v is None or v == "":
        return None
    if not isinstance(v, str) or len(v) > 300:
        raise _Bad(f"{path}: must be host:port or [v6]:port, got {_show(v)}")
    raw = v.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise _Bad(f"{path}: expected [address]:port, got {_show(v)}")
        port_text = rest[1:]
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad(f"{path}: {_show(host)} is not an IPv6 address") from None
        if problem := endpoint_ip_problem(ip6):  # the mesh plugin's check too
            raise _Bad(f"{path}: {problem}")
        host = f"[{ip6}]"
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host:
            raise _Bad(f"{path}: expected host:port, got {_show(v)}")
        if ":" in host:
            raise _Bad(f"{path}: write an IPv6 endpoint as [address]:port, got {_show(v)}")
        try:
            ip4 = ipaddress.IPv4Address(host)
        except ValueError:
            if not HOSTNAME_RE.fullmatch(host) or host.replace(".", "").isdigit():
                raise _Bad(f"{path}: {_show(host)} is not an IP address or a DNS name") from None
            host = host.lower()
        else:
            if problem := endpoint_ip_problem(ip4):
                raise _Bad(f"{path}: {problem}")
            host = str(ip4)
    if not (
        port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 and 1 <= int(port_text) <= 65535
    ):
        raise _Bad(f"{path}: port must be 1-65535, got {_show(port_text)}")
    return f"{host}:{int(port_text)}"


def wireguard_key(v: Any, path: str) -> str:
    """A WireGuard key: canonical base64 of exactly 32 bytes."""
    if not isinstance(v, str):
        raise _Bad(f"{path}: must be a base64 WireGuard key, got {_kind(v)}")
    text = v.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(f"{path}: is not valid base64") from None
    if len(raw) != 32 or len(text) != 44 or base64.b64encode(raw).decode() != text:
        raise _Bad(f"{path}: must be 44 characters of base64 encoding 32 bytes")
    return text


def _credential(v: Any, path: str, warnings: list[str]) -> dict[str, Any]:
    """A raw public key, a JSON string, or an object; snake_case or camelCase keys."""
    if isinstance(v, str):
        text = v.strip()
        if text.startswith("{"):
            try:
                v = json.loads(text)
            except ValueError as exc:
                raise _Bad(f"{path}: looks like JSON but does not parse: {exc}") from None
        else:
            return {"public_key": wireguard_key(text, path)}
    if not isinstance(v, Mapping):
        raise _Bad(f"{path}: must be a public key, a JSON string or an object, got {_kind(v)}")
    known = set(_CRED_KEYS) | set(_CRED_KEYS.values())
    for key in sorted(str(k) for k in v if k not in known):
        warnings.append(f"{path}: unknown field {key[:40]!r} ignored")
    raw: dict[str, Any] = {}
    for snake, camel in _CRED_KEYS.items():
        values = [v[k] for k in dict.fromkeys((snake, camel)) if k in v and v[k] not in (None, "")]
        if len(values) == 2 and values[0] != values[1]:
            raise _Bad(f"{path}: {snake} and {camel} are both set and differ")
        if values:
            raw[snake] = values[0]
    if "public_key" not in raw:
        raise _Bad(f"{path}.public_key: is required")
    out: dict[str, Any] = {"public_key": wireguard_key(raw["public_key"], f"{path}.public_key")}
    if "preshared_key" in raw:
        out["preshared_key"] = wireguard_key(raw["preshared_key"], f"{path}.preshared_key")
    if "listen_port" in raw:
        out["listen_port"] = _port(raw["listen_port"], f"{path}.listen_port")
    if "endpoint" in raw:
        out["endpoint"] = _endpoint(raw["endpoint"], f"{path}.endpoint")
    if "mtu" in raw:
        out["mtu"] = _mtu(raw["mtu"], f"{path}.mtu")
    return out


def _policy(v: Any, path: str, warnings: list[str]) -> SessionPolicy:
    """``{"importLimit", "exportLimit", "receiveLimit", "bandwidth" | "bandwidthCommunity"}``,
    each optional; null, ``""`` or ``{}`` is no policy; a JSON string of the object
    is read like ``credential``. Unknown keys are warnings."""
    if v is None or v == "":
        return SessionPolicy()
    if isinstance(v, str) and v.strip().startswith("{") and len(v) <= 4096:
        try:
            v = json.loads(v)
        except ValueError as exc:
            raise _Bad(f"{path}: looks like JSON but does not parse: {exc}") from None
    if not isinstance(v, Mapping):
        raise _Bad(
            f"{path}: must be an object (importLimit, exportLimit, receiveLimit, bandwidth), got {_kind(v)}"
        )
    for key in sorted(str(k) for k in v if k not in _POLICY_KEYS):
        warnings.append(f"{path}: unknown field {key[:40]!r} ignored")
    problems: list[str] = []
    limits: dict[str, int | None] = {}
    for key in ("importLimit", "exportLimit", "receiveLimit"):
        try:
            limits[key] = _limit(v.get(key), f"{path}.{key}")
        except _Bad as exc:
            problems.append(str(exc))
    bandwidth: int | None = None
    try:
        if v.get("bandwidth") not in (None, 0) and v.get("bandwidthCommunity") not in (None, 0):
            raise _Bad(f"{path}.bandwidth: set bandwidth (Mbit/s) or bandwidthCommunity, not both")
        bandwidth = _bandwidth_mbit(v.get("bandwidth"), f"{path}.bandwidth")
        if bandwidth is None:
            bandwidth = _bandwidth_community(v.get("bandwidthCommunity"), f"{path}.bandwidthCommunity")
    except _Bad as exc:
        problems.append(str(exc))
    if problems:
        raise _Bad("; ".join(problems))
    imp, rcv = limits["importLimit"], limits["receiveLimit"]
    if imp is not None and rcv is not None and rcv < imp:
        warnings.append(
            f"{path}.receiveLimit: {rcv} is below importLimit {imp} (received routes include the imported "
            "ones): the receive limit is hit first"
        )
    return SessionPolicy(
        import_limit=imp, export_limit=limits["exportLimit"], receive_limit=rcv, bandwidth=bandwidth
    )


def _limit(v: Any, path: str) -> int | None:
    if v is None or (_is_int(v) and v == 0):
        return None
    if not _is_int(v) or not 1 <= v <= MAX_ROUTE_LIMIT:
        raise _Bad(
            f"{path}: must be a route count 1-{MAX_ROUTE_LIMIT} (0 or null for the node default), "
            f"got {_show(v)}"
        )
    return int(v)


def bandwidth_community(mbit: float) -> int:
    """The DN42 bandwidth community (21-29) of a link of ``mbit`` Mbit/s: the
    highest tier whose floor it reaches (below 0.1 Mbit/s: 21)."""
    return max((x for x, floor in BANDWIDTH_COMMUNITY_MBIT.items() if mbit >= floor), default=21)


def _bandwidth_mbit(v: Any, path: str) -> int | None:
    """A link speed in Mbit/s (a number, or ``"100M"``, ``"1G"``, ``"500K"``) as its
    DN42 bandwidth community."""
    if v is None or (_is_int(v) and v == 0):
        return None
    mbit: float | None = None
    if isinstance(v, int | float) and not isinstance(v, bool):
        mbit = float(v)
    elif isinstance(v, str) and (m := _BW_RE.fullmatch(v.strip())):
        mbit = float(m.group(1)) * _BW_SCALE[m.group(2).upper()]
    if mbit is None or not math.isfinite(mbit) or not 0 < mbit <= MAX_BANDWIDTH_MBIT:
        raise _Bad(
            f"{path}: must be a link speed in Mbit/s (a positive number, or like '100M', '1G'; "
            f"at most {MAX_BANDWIDTH_MBIT}), got {_show(v)}"
        )
    return bandwidth_community(mbit)


def _bandwidth_community(v: Any, path: str) -> int | None:
    if v is None or (_is_int(v) and v == 0):
        return None
    if not _is_int(v) or not 21 <= v <= 29:
        raise _Bad(f"{path}: must be a DN42 bandwidth community 21-29, got {_show(v)}")
    return int(v)


def _show(v: Any) -> str:
    """A short, inert rendering of a hostile value for error messages."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------- duplicates


def _reject_duplicates(items: Sequence[Session | Invalid]) -> list[Session | Invalid]:
    uuids = Counter(p.uuid for p in items if p.uuid is not None)
    configured = [p for p in items if isinstance(p, Session) and p.status in CONFIGURE_STATUSES]
    names = Counter(p.interface for p in configured)
    ports = Counter(p.listen_port for p in configured if p.listen_port is not None)
    out: list[Session | Invalid] = []
    for p in items:
        reasons: list[str] = []
        if p.uuid is not None and uuids[p.uuid] > 1:
            reasons.append(f"sessions[{p.uuid}].uuid: appears {uuids[p.uuid]} times in the answer")
        if isinstance(p, Session) and p.status in CONFIGURE_STATUSES:
            if names[p.interface] > 1:
                reasons.append(f"sessions[{p.uuid}].interface: {p.interface!r} is used by another session")
            if p.listen_port is not None and ports[p.listen_port] > 1:
                reasons.append(
                    f"sessions[{p.uuid}].port: listen port {p.listen_port} is used by another session"
                )
        if not reasons:
            out.append(p)
        elif isinstance(p, Session):
            out.append(
                Invalid(
                    uuid=p.uuid,
                    reason="; ".join(reasons),
                    status=p.status,
                    last_error=p.last_error,
                    interface=p.interface,
                )
            )
        else:
            out.append(attrs.evolve(p, reason="; ".join([p.reason, *reasons])))
    return out
