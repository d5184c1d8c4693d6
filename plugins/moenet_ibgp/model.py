"""The CP's iBGP peer list, validated, and the route-reflector topology (pure, no I/O).

:func:`parse_answer` turns the ``bird-config`` answer's ``ibgpPeers``
(``[{nodeId, nodeName, loopbackIpv4, loopbackIpv6, isRr}]``, the Go agent's
field names) into :class:`Node` objects. Each entry is checked on its own: an
invalid one is reported with the reason and left out, the others are kept.
Strict types (``"5"`` is not a node id, ``"true"`` is not a boolean), node names
as the core's rule, loopbacks unicast and not link-local, no scope, no prefix
length; two entries with one node id, name or loopback are both left out (which
of them is right cannot be known). Nothing that reaches BIRD is taken on trust:
the routing backend validates the declared neighbours again.

:func:`sessions` is the topology, as one
:class:`~moenet_core.intents.IbgpNeighborIntent` per chosen node:

- a route reflector peers with every other node, ``rr client`` towards the
  nodes that are not route reflectors, plain iBGP towards the other RRs;
- a node that is not a route reflector peers only with the route reflectors
  when there are any, and with every other node when there are none (full mesh);
- never with itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from moenet_core import LinkLatency
from moenet_core.config import NODE_NAME_RE, check, structure
from moenet_core.intents import IbgpNeighborIntent

__all__ = [
    "MAX_NODES",
    "MESH_OWNER",
    "Answer",
    "AnswerError",
    "Node",
    "address",
    "mesh_tiers",
    "parse_answer",
    "sessions",
]

#: More nodes than this in one answer is refused as a whole (a runaway CP must
#: not make BIRD run thousands of sessions).
MAX_NODES = 4096

_MAX_ID = 4294967295

#: The owner of the mesh links in ``moenet_link_latency`` (the mesh plugin keys
#: each by the far node's id). A name, not an import: plugins never import each other.
MESH_OWNER = "mesh"


class AnswerError(ValueError):
    """The answer as a whole is unusable (not an object, no peer list, too long)."""


def address(version: int, v: str) -> str | None:
    """Why ``v`` is not a usable loopback of IP version ``version`` (or None)."""
    if not v:
        return None
    if "%" in v or "/" in v or v != v.strip():
        return f"must be a bare IPv{version} address (no scope, prefix or spaces; got {v[:50]!r})"
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        return f"not an IPv{version} address (got {v[:50]!r})"
    if ip.version != version:
        return f"must be an IPv{version} address (got {v[:50]!r})"
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        return "must be a unicast address, not link-local, multicast, unspecified or loopback"
    return None


def _node_id(v: int) -> str | None:
    return None if 1 <= v <= _MAX_ID else f"must be 1-{_MAX_ID} (got {v})"


def _node_name(v: str) -> str | None:
    return None if NODE_NAME_RE.match(v) else f"must be a node name (got {v[:40]!r})"


@attrs.frozen(kw_only=True)
class Node:
    """Another node of our network, as one valid ``ibgpPeers`` entry."""

    node_id: int = attrs.field(metadata=check(_node_id))
    node_name: str = attrs.field(metadata=check(_node_name))
    loopback_ipv4: str = attrs.field(default="", metadata=check(lambda v: address(4, v)))
    loopback_ipv6: str = attrs.field(default="", metadata=check(lambda v: address(6, v)))
    is_rr: bool = False

    @property
    def key(self) -> str:
        """The fragment key: the node id."""
        return str(self.node_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodeId": self.node_id,
            "nodeName": self.node_name,
            "loopbackIpv4": self.loopback_ipv4,
            "loopbackIpv6": self.loopback_ipv6,
            "isRr": self.is_rr,
        }

    def intent(self, *, rr_client: bool, latency: int | None = None) -> IbgpNeighborIntent:
        """The iBGP neighbour intent declared to the routing backend; ``latency`` is
        the DN42 tier of the mesh link to the node (None: not measured)."""
        return IbgpNeighborIntent(
            node_id=self.node_id,
            node_name=self.node_name,
            loopback_ipv4=self.loopback_ipv4,
            loopback_ipv6=self.loopback_ipv6,
            is_rr=self.is_rr,
            rr_client=rr_client,
            latency=latency,
        )


@attrs.frozen(kw_only=True)
class Answer:
    """What one answer says about iBGP."""

    nodes: dict[int, Node]
    """Valid entries for other nodes, by node id."""
    invalid: dict[str, str]
    """``ibgpPeers[i] (...)`` -> why it was left out."""
    self_is_rr: bool | None
    """``isRr`` of the entry for this node, if it has one with a boolean ``isRr``."""
    own_id: int
    """The node id this node was recognised by (0: unknown, recognised by name)."""
    warnings: list[str] = attrs.field(factory=list)


def _label(i: int, item: Any) -> str:
    if isinstance(item, Mapping):
        nid, name = item.get("nodeId"), item.get("nodeName")
        if isinstance(nid, int) and not isinstance(nid, bool):
            return f"ibgpPeers[{i}] (node {nid})"
        if isinstance(name, str) and NODE_NAME_RE.match(name):
            return f"ibgpPeers[{i}] ({name})"
    return f"ibgpPeers[{i}]"


def _answer_node(data: Mapping[str, Any]) -> tuple[int, set[str]]:
    """The answer's own ``node.id`` (0 if unusable) and its loopbacks."""
    node = data.get("node")
    if not isinstance(node, Mapping):
        return 0, set()
    nid = node.get("id")
    own = nid if isinstance(nid, int) and not isinstance(nid, bool) and 1 <= nid <= _MAX_ID else 0
    loops = set()
    for version, key in ((4, "loopbackIpv4"), (6, "loopbackIpv6")):
        v = node.get(key)
        if isinstance(v, str) and v and address(version, v) is None:
            loops.add(str(ipaddress.ip_address(v)))
    return own, loops


def _normalised(v: str | None) -> str | None:
    """A configured address (maybe with a /32 or /128) in canonical form, or None."""
    if not v:
        return None
    try:
        return str(ipaddress.ip_interface(v).ip)
    except ValueError:
        return None


def parse_answer(
    data: Any,
    *,
    own_id: int,
    own_name: str,
    own_loopbacks: Iterable[str | None] = (),
) -> Answer:
    """Validate the ``ibgpPeers`` of a ``bird-config`` answer (see the module doc).

    ``own_id`` is this node's id from the config (0 if unset: the answer's
    ``node.id`` is used then); an entry with it, or with no usable id match but
    this node's name, is this node. Raises :class:`AnswerError` when the answer
    as a whole is unusable; a JSON ``null`` list (a Go nil slice) is an empty one.
    """
    if not isinstance(data, Mapping):
        raise AnswerError("the bird-config answer is not an object")
    if "ibgpPeers" not in data:
        raise AnswerError("the bird-config answer has no ibgpPeers")
    items = data["ibgpPeers"]
    if items is None:
        items = []
    if not isinstance(items, list):
        raise AnswerError("ibgpPeers is not a list")
    if len(items) > MAX_NODES:
        raise AnswerError(f"ibgpPeers lists {len(items)} nodes (more than {MAX_NODES})")
    answer_id, answer_loops = _answer_node(data)
    warnings: list[str] = []
    if own_id and answer_id and own_id != answer_id:
        warnings.append(f"the answer's node.id {answer_id} differs from node.id {own_id} in the config")
    own = own_id or answer_id
    own_name_l = own_name.lower()
    mine = answer_loops | {a for a in (_normalised(x) for x in own_loopbacks) if a}

    invalid: dict[str, str] = {}
    self_is_rr: bool | None = None
    valid: list[tuple[str, Node]] = []
    for i, item in enumerate(items):
        label = _label(i, item)
        nid = item.get("nodeId") if isinstance(item, Mapping) else None
        name = item.get("nodeName") if isinstance(item, Mapping) else None
        is_self = (own and nid == own and not isinstance(nid, bool)) or (
            not own and isinstance(name, str) and name.lower() == own_name_l
        )
        if is_self:
            rr = item.get("isRr") if isinstance(item, Mapping) else None
            if isinstance(rr, bool):
                self_is_rr = rr
            continue
        if not isinstance(item, Mapping):
            invalid[label] = f"ibgpPeers[{i}]: expected an object"
            continue
        node, errs = structure(Node, dict(item), f"ibgpPeers[{i}]", [])
        if node is None:
            invalid[label] = "; ".join(errs)
            continue
        if not node.loopback_ipv4 and not node.loopback_ipv6:
            invalid[label] = f"ibgpPeers[{i}]: needs loopbackIpv6 or loopbackIpv4"
            continue
        if own_name and node.node_name.lower() == own_name_l:
            invalid[label] = f"ibgpPeers[{i}].nodeName: {node.node_name} is this node's name, with another id"
            continue
        node = attrs.evolve(
            node,
            loopback_ipv4=_normalised(node.loopback_ipv4) or "",
            loopback_ipv6=_normalised(node.loopback_ipv6) or "",
        )
        clash = mine & {node.loopback_ipv4, node.loopback_ipv6}
        if clash:
            invalid[label] = f"ibgpPeers[{i}]: loopback {min(clash)} is this node's own"
            continue
        valid.append((label, node))

    # Duplicates: every entry sharing an id, a name or a loopback is left out.
    seen: dict[str, list[str]] = {}
    for label, node in valid:
        for what in (f"nodeId {node.node_id}", f"nodeName {node.node_name.lower()}"):
            seen.setdefault(what, []).append(label)
        for a in (node.loopback_ipv4, node.loopback_ipv6):
            if a:
                seen.setdefault(f"loopback {a}", []).append(label)
    for what, labels in seen.items():
        if len(labels) > 1:
            for label in labels:
                others = ", ".join(x for x in labels if x != label)
                invalid.setdefault(label, f"duplicate {what} (also {others})")
    nodes = {n.node_id: n for label, n in valid if label not in invalid}
    return Answer(nodes=nodes, invalid=invalid, self_is_rr=self_is_rr, own_id=own, warnings=warnings)


def sessions(
    nodes: Iterable[Node],
    *,
    own_is_rr: bool,
    own_id: int = 0,
    latency: Mapping[int, int] | None = None,
) -> dict[str, IbgpNeighborIntent]:
    """The iBGP neighbour intents of this node (see the module doc), by node id;
    ``latency`` is the measured mesh tier per node id (absent: not measured)."""
    tiers = latency or {}
    others = [n for n in nodes if n.node_id != own_id]
    rrs = [n for n in others if n.is_rr]
    if own_is_rr:
        chosen = [(n, not n.is_rr) for n in others]
    elif rrs:
        chosen = [(n, False) for n in rrs]
    else:
        chosen = [(n, False) for n in others]
    return {
        n.key: n.intent(rr_client=client, latency=tiers.get(n.node_id))
        for n, client in sorted(chosen, key=lambda c: c[0].node_id)
    }


def mesh_tiers(measurements: Iterable[LinkLatency]) -> dict[int, int]:
    """Latency tier per node id from one RTT round: the mesh links (key = node id)
    that have a tier. The tier already carries the RTT plugin's hysteresis."""
    out: dict[int, int] = {}
    for m in measurements:
        if m.owner != MESH_OWNER or not m.key.isascii() or not m.key.isdigit() or len(m.key) > 10:
            continue
        tier = m.tier
        if isinstance(tier, int) and not isinstance(tier, bool) and 1 <= tier <= 9:
            node = int(m.key)
            if 1 <= node <= _MAX_ID:
                out[node] = tier
    return out
