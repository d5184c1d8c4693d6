"""The mesh addressing plan: every name, port and address derived from node ids.

Node ids are the CP's ``nodeId``: integers from 1 to 4294967295 (0 means "unset"
in a node's config and is never a mesh peer). Everything below is a pure
function of ids and two settings (``meshSync.interfacePrefix``, default ``igp``,
and ``meshSync.portBase``, default 51820), so every node computes the same plan
for itself and for its peers.

**Interface names**: the tunnel to node N is ``<prefix><N>`` in decimal
(``igp7``, ``igp1000``, ``igp4294967295``). The prefix is 1-5 lower-case
letters, so the longest name is 5 + 10 = 15 characters, the kernel's limit
(the Go agent's ``dn42-wg-igp-<N>`` overflowed from N = 1000). A name of
letters followed by digits only can never be a sessions name derived by the
agent (``wg<4 digits>-<6 hex>``) nor the usual CP-given ``dn42-*``; the tunnel
backend records the owner (``mesh``) on every tunnel anyway, so a clash with a
hand-picked session name is refused, never taken over. Decimal keeps the peer
readable in ``ip link`` and BIRD's ``show babel neighbors``.

**Listen ports**: our tunnel to node N listens on ``portBase + N``; node N's
tunnel to us therefore listens on ``portBase + <our id>``, which is the port we
send to when the CP's endpoint for N carries none. Distinct peers get distinct
ports on a node (ids are unique), and both ends compute the same numbers. Ids
above ``65535 - portBase`` do not fit and are refused (with the default base:
ids up to 13715; lower the base to mesh bigger ids).

**Link-local addresses**: node N is ``fe80::1:<N >> 16>:<N & 0xffff>`` (/64) on
every one of its mesh tunnels (node 7 ``fe80::1:0:7``, node 1000
``fe80::1:0:3e8``, node 4294967295 ``fe80::1:ffff:ffff``): unique per node, the
same on all of its tunnels, and computable by the peer, which is how the RTT
probe finds the far end. Babel needs nothing else: it speaks over link-local
and carries IPv4 loopbacks with IPv6 next hops (RFC 9229, BIRD's default).
"""

from __future__ import annotations

import ipaddress
import re

MIN_NODE_ID = 1
MAX_NODE_ID = 4294967295
DEFAULT_PREFIX = "igp"
DEFAULT_PORT_BASE = 51820
MAX_PORT = 65535
PREFIX_RE = re.compile(r"[a-z]{1,5}")

#: The fixed part of every mesh link-local address: ``fe80::1:0:0``.
LINK_LOCAL_BASE = int(ipaddress.IPv6Address("fe80::1:0:0"))
#: Always allowed through a mesh tunnel: the peer's link-local (Babel's source
#: address) and Babel's multicast group (its hellos and updates).
LINK_LOCAL_NET = "fe80::/10"
BABEL_GROUP = "ff02::1:6/128"


class AddressingError(ValueError):
    """A node id the plan cannot place (out of range, or no listen port left)."""


def check_node_id(node_id: object, what: str = "node id") -> int:
    """``node_id`` as an int from 1 to 4294967295, else :class:`AddressingError`."""
    if isinstance(node_id, bool) or not isinstance(node_id, int):
        raise AddressingError(f"{what} must be an integer, got {type(node_id).__name__}")
    if not MIN_NODE_ID <= node_id <= MAX_NODE_ID:
        raise AddressingError(f"{what} {node_id} is out of range ({MIN_NODE_ID}-{MAX_NODE_ID})")
    return node_id


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.fullmatch(prefix):
        raise AddressingError(f"interface prefix {prefix!r} must be 1-5 lower-case letters")
    return prefix


def interface_name(node_id: int, prefix: str = DEFAULT_PREFIX) -> str:
    """The tunnel to ``node_id``: ``<prefix><decimal id>``, at most 15 characters."""
    return f"{check_prefix(prefix)}{check_node_id(node_id)}"


def parse_interface(name: str, prefix: str = DEFAULT_PREFIX) -> int | None:
    """The node id in a mesh interface name of this prefix, or None."""
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix) :]
    if not (digits.isascii() and digits.isdigit()) or digits.startswith("0"):
        return None
    value = int(digits)
    return value if MIN_NODE_ID <= value <= MAX_NODE_ID else None


def max_node_id(port_base: int) -> int:
    """The largest node id that has a listen port with this base."""
    return MAX_PORT - port_base


def listen_port(node_id: int, port_base: int = DEFAULT_PORT_BASE) -> int:
    """``port_base + node_id``: where our tunnel to ``node_id`` listens (and, with
    our own id, where every peer's tunnel to us listens)."""
    check_node_id(node_id)
    port = port_base + node_id
    if not 1 <= port <= MAX_PORT:
        raise AddressingError(
            f"node id {node_id} does not fit the mesh port range: portBase {port_base} + id must be "
            f"at most {MAX_PORT} (ids up to {max(max_node_id(port_base), 0)}; lower meshSync.portBase)"
        )
    return port


def link_local(node_id: int) -> str:
    """Node ``node_id``'s link-local address on all its mesh tunnels (no prefix length)."""
    return str(ipaddress.IPv6Address(LINK_LOCAL_BASE + check_node_id(node_id)))


def link_local_interface(node_id: int) -> str:
    """:func:`link_local` with its /64, as a tunnel address."""
    return f"{link_local(node_id)}/64"
