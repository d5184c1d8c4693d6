"""The CP's mesh answer, validated field by field (nothing in it is trusted).

``GET /agent/{node}/mesh`` answers (the CP client has removed the envelope)::

    {"localNodeId": 3, "localLoopback4": "...", "localLoopback6": "...",
     "peers": [{"nodeId", "nodeName", "loopbackIpv4", "loopbackIpv6",
                "publicKey", "endpoint", "mtu", "isRr"}]}

:func:`parse_mesh` splits it into valid :class:`MeshPeer` and :class:`InvalidPeer`
entries; one bad peer never breaks the others. The answer as a whole is refused
(:class:`MeshPayloadError`) when it is not an object with a ``peers`` list, lists
more than ``max_peers`` peers, or names another node as ``localNodeId``: acting
on it could only do harm, and the last valid answer is served instead.

Per peer:

- ``nodeId``: integer 1-4294967295 (``"7"`` as a string of digits is tolerated);
  the entry for our own id is dropped (never a tunnel to ourselves). An id listed
  twice makes every entry with it invalid.
- ``publicKey``: canonical base64 of 32 bytes, not all zero, not our own key; a
  key listed by two peers makes both invalid.
- ``nodeName``: optional, 1-63 of letters, digits, ``.``, ``_``, ``-`` (it shows
  in logs and reports).
- ``endpoint``: optional (a peer without one is waited for): ``host``,
  ``host:port``, ``a.b.c.d[:port]``, ``[v6]:port``, ``[v6]`` or a bare IPv6
  address; no unspecified, multicast, broadcast, loopback, link-local or 240/4
  address (``moenet_core.endpoint_ip_problem``, shared with the sessions plugin);
  host names are DNS names. Without a port, the peer is reached on ``portBase + <our id>``.
- ``mtu``: optional, 1280-9000 (0 or null: ``mesh.mtu``).
- ``loopbackIpv4`` / ``loopbackIpv6``: optional single unicast addresses (bare,
  /32 or /128): allowed through the peer's tunnel and probed for RTT.
- ``isRr``: optional boolean (the iBGP plugin's business; kept for reports).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

from moenet_core import endpoint_ip_problem

from .addressing import AddressingError, check_node_id

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
MIN_MTU = 1280
MAX_MTU = 9000


class MeshPayloadError(ValueError):
    """The answer as a whole is unusable."""


class _Bad(ValueError):
    pass


@attrs.frozen
class Endpoint:
    """A peer's address: ``host`` is a canonical IP literal or a lower-case DNS name."""

    host: str
    port: int | None = None

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def render(self, default_port: int) -> str:
        """``host:port`` / ``[v6]:port``, with ``default_port`` when the CP gave none."""
        port = self.port if self.port is not None else default_port
        return f"[{self.host}]:{port}" if self.is_ipv6 else f"{self.host}:{port}"


@attrs.frozen(kw_only=True)
class MeshPeer:
    node_id: int
    name: str
    public_key: str
    endpoint: Endpoint | None = None
    mtu: int | None = None
    loopback_ipv4: str | None = None
    loopback_ipv6: str | None = None
    is_rr: bool = False


@attrs.frozen(kw_only=True)
class InvalidPeer:
    """A peer entry that cannot be used; ``node_id`` is None when not even that was usable."""

    node_id: int | None
    reason: str


@attrs.frozen(kw_only=True)
class MeshAnswer:
    node_id: int
    """Our own id (from the config, else the answer's ``localNodeId``)."""
    peers: tuple[MeshPeer, ...]
    invalid: tuple[InvalidPeer, ...]

    @property
    def present(self) -> frozenset[int]:
        """Every peer id the answer lists, valid or not."""
        return frozenset(p.node_id for p in self.peers) | frozenset(
            i.node_id for i in self.invalid if i.node_id is not None
        )


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def node_id_value(v: Any, path: str) -> int:
    if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 10:
        v = int(v)
    try:
        return check_node_id(v, path)
    except AddressingError as exc:
        raise _Bad(str(exc)) from None


def public_key_value(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise _Bad(f"{path}: must be a base64 WireGuard key, got {_kind(v)}")
    text = v.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(f"{path}: not base64: {_show(v)}") from None
    if len(raw) != 32:
        raise _Bad(f"{path}: must decode to 32 bytes, got {len(raw)}")
    if base64.b64encode(raw).decode() != text:
        raise _Bad(f"{path}: not in canonical base64 form")
    if raw == bytes(32):
        raise _Bad(f"{path}: the all-zero key is not a usable public key")
    return text


def name_value(v: Any, path: str) -> str:
    if v is None or v == "":
        return ""
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        raise _Bad(
            f"{path}: must be 1-63 letters, digits, '.', '_' or '-' starting with a letter or digit, "
            f"got {_show(v)}"
        )
    return v


def _port(text: str, path: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _Bad(f"{path}: port must be 1-65535")
    return int(text)


def _ip_host(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, path: str) -> str:
    problem = endpoint_ip_problem(ip)  # the one check the sessions plugin uses too
    if problem:
        raise _Bad(f"{path}: {problem}")
    return str(ip)


def endpoint_value(v: Any, path: str) -> Endpoint | None:
    """See the module doc for the accepted forms."""
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise _Bad(f"{path}: must be a string, got {_kind(v)}")
    text = v.strip()
    if len(text) > 261 or not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise _Bad(f"{path}: not an endpoint: {_show(v)}")
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _Bad(f"{path}: expected [address]:port, got {_show(v)}")
        if rest:
            port = _port(rest[1:], path)
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad(f"{path}: {_show(host)} is not an IPv6 address") from None
        return Endpoint(host=_ip_host(ip6, path), port=port)
    if text.count(":") > 1:  # a bare IPv6 address, no port
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise _Bad(f"{path}: write an IPv6 endpoint as [address]:port, got {_show(v)}") from None
        return Endpoint(host=_ip_host(ip6, path), port=None)
    host, sep, port_text = text.partition(":")
    if sep:
        port = _port(port_text, path)
    try:
        ip4 = ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return Endpoint(host=_ip_host(ip4, path), port=port)
    name = host.rstrip(".").lower()
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise _Bad(f"{path}: {_show(host)} is neither an IP address nor a DNS name")
    return Endpoint(host=name, port=port)


def mtu_value(v: Any, path: str) -> int | None:
    if v is None or v == 0:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not MIN_MTU <= v <= MAX_MTU:
        raise _Bad(f"{path}: must be an integer from {MIN_MTU} to {MAX_MTU} (or 0 for the default)")
    return v


def loopback_value(v: Any, path: str, version: int) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise _Bad(f"{path}: must be a string, got {_kind(v)}")
    bits = 32 if version == 4 else 128
    try:
        iface = ipaddress.ip_interface(v.strip())
    except ValueError:
        raise _Bad(f"{path}: not an IP address: {_show(v)}") from None
    if iface.version != version:
        raise _Bad(f"{path}: must be an IPv{version} address")
    if "/" in v and iface.network.prefixlen != bits:
        raise _Bad(f"{path}: must be a single address (/{bits})")
    ip = iface.ip
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local:
        raise _Bad(f"{path}: {ip} is not a usable loopback address")
    return str(ip)


def bool_value(v: Any, path: str) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _Bad(f"{path}: must be true or false, got {_show(v)}")
    return v


def _parse_peer(item: Any, path: str) -> MeshPeer | InvalidPeer:
    if not isinstance(item, Mapping):
        return InvalidPeer(node_id=None, reason=f"{path}: must be an object, got {_kind(item)}")
    try:
        node_id = node_id_value(item.get("nodeId"), f"{path}.nodeId")
    except _Bad as exc:
        return InvalidPeer(node_id=None, reason=str(exc))
    problems: list[str] = []
    values: dict[str, Any] = {}

    def run(key: str, fn: Any, *args: Any) -> None:
        try:
            values[key] = fn(item.get(key), f"{path}.{key}", *args)
        except _Bad as exc:
            problems.append(str(exc))

    run("nodeName", name_value)
    run("publicKey", public_key_value)
    run("endpoint", endpoint_value)
    run("mtu", mtu_value)
    run("loopbackIpv4", loopback_value, 4)
    run("loopbackIpv6", loopback_value, 6)
    run("isRr", bool_value)
    if problems:
        return InvalidPeer(node_id=node_id, reason="; ".join(problems))
    return MeshPeer(
        node_id=node_id,
        name=values["nodeName"],
        public_key=values["publicKey"],
        endpoint=values["endpoint"],
        mtu=values["mtu"],
        loopback_ipv4=values["loopbackIpv4"],
        loopback_ipv6=values["loopbackIpv6"],
        is_rr=values["isRr"],
    )


def parse_mesh(
    data: Any, *, node_id: int | None, max_peers: int = 250, own_public_key: str | None = None
) -> MeshAnswer:
    """Validate a mesh answer (see the module doc).

    ``node_id`` is our id from the config (None when unset: the answer's
    ``localNodeId`` is then taken). ``own_public_key`` is our mesh key: a peer
    claiming it is invalid.
    """
    if not isinstance(data, Mapping):
        raise MeshPayloadError(f"the mesh answer must be an object, got {_kind(data)}")
    peers_raw = data.get("peers")
    if not isinstance(peers_raw, list):
        raise MeshPayloadError(f"peers: must be a list, got {_kind(peers_raw)}")
    if len(peers_raw) > max_peers:
        raise MeshPayloadError(
            f"peers: {len(peers_raw)} peers exceed mesh.maxPeers ({max_peers}); answer refused"
        )
    local = data.get("localNodeId")
    local_id: int | None = None
    if local is not None and local != 0:
        try:
            local_id = node_id_value(local, "localNodeId")
        except _Bad as exc:
            raise MeshPayloadError(str(exc)) from None
    if node_id is not None and local_id is not None and local_id != node_id:
        raise MeshPayloadError(
            f"localNodeId {local_id} is not this node (node.id {node_id}): the answer is for another node"
        )
    own = node_id if node_id is not None else local_id
    if own is None:
        raise MeshPayloadError("this node's id is unknown: set node.id, or the CP must send localNodeId")

    parsed = [_parse_peer(item, f"peers[{i}]") for i, item in enumerate(peers_raw)]
    parsed = [p for p in parsed if p.node_id != own]
    ids = Counter(p.node_id for p in parsed if p.node_id is not None)
    keys = Counter(p.public_key for p in parsed if isinstance(p, MeshPeer))
    peers: list[MeshPeer] = []
    invalid: list[InvalidPeer] = []
    for p in parsed:
        if p.node_id is not None and ids[p.node_id] > 1:
            reason = f"nodeId {p.node_id} is listed {ids[p.node_id]} times"
            if not any(i.node_id == p.node_id for i in invalid):
                invalid.append(InvalidPeer(node_id=p.node_id, reason=reason))
            continue
        if isinstance(p, InvalidPeer):
            invalid.append(p)
        elif own_public_key is not None and p.public_key == own_public_key:
            invalid.append(InvalidPeer(node_id=p.node_id, reason="publicKey is this node's own mesh key"))
        elif keys[p.public_key] > 1:
            invalid.append(
                InvalidPeer(node_id=p.node_id, reason="publicKey is listed for another peer as well")
            )
        else:
            peers.append(p)
    return MeshAnswer(
        node_id=own,
        peers=tuple(sorted(peers, key=lambda p: p.node_id)),
        invalid=tuple(invalid),
    )
