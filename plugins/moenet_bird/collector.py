"""The DN42 Global Route Collector (GRC) session.

The GRC (wiki: ``services/Route-Collector``) is a BIRD at AS4242422602,
``fd42:4242:2601:ac12::1`` (``collector.dn42``; IPv4 172.20.129.4) that anyone
may peer with: multihop, one multiprotocol session, ``add paths tx`` so it sees
every path a network has, not only the best, and it exports nothing. Its data
feeds the DN42 maps and statistics.

Rendered into ``collector.conf`` (:data:`COLLECTOR_FILE`, included by
``moenet.conf``) as ``protocol bgp moenet_grc`` (:data:`PROTOCOL`): multihop
from the node's loopback (``source address OWNIPv6``, or ``OWNIP`` for an IPv4
neighbour), ``import none`` (nothing it could send changes a best path here),
``add paths tx`` and ``export where moenet_grc_out()``: what the wiki's example
exports (valid DN42 networks from static and BGP sources), with our static
routes limited to the own aggregates and our internal large communities
stripped, as on every eBGP export.

Whether a node peers with it: ``bird.routeCollector`` (local) when it is true or
false, else the CP's ``policy.routeCollector``, else off. The neighbour address
and AS are local only (``bird.routeCollectorNeighbor``, ``bird.routeCollectorAs``,
the wiki's values by default): the CP can switch the session on, never point it
somewhere else.
"""

from __future__ import annotations

import ipaddress

import attrs

__all__ = [
    "COLLECTOR_FILE",
    "GRC_ASN",
    "GRC_NEIGHBOR",
    "PROTOCOL",
    "RouteCollector",
    "collector_asn_problem",
    "collector_neighbor_problem",
    "effective_collector",
]

#: The rendered file (top level of ``bird.configDir``), included by ``moenet.conf``.
COLLECTOR_FILE = "collector.conf"
#: The BGP protocol's name (stable; ``moenet_*`` protocols belong to the agent).
PROTOCOL = "moenet_grc"
#: The GRC's AS and IPv6 address (wiki.dn42.dev/services/Route-Collector).
GRC_ASN = 4242422602
GRC_NEIGHBOR = "fd42:4242:2601:ac12::1"


@attrs.frozen
class RouteCollector:
    """The local side of the GRC session: the pin and where the collector is."""

    enabled: bool | None = None
    """True / False pinned locally; None follows the CP's ``policy.routeCollector``."""
    neighbor: str = GRC_NEIGHBOR
    asn: int = GRC_ASN


def collector_neighbor_problem(value: object) -> str | None:
    """Why ``value`` cannot be the collector's address, or None."""
    if not isinstance(value, str):
        return "must be an IP address"
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address (got {value[:50]!r})"
    if "%" in value or value != value.strip():
        return f"must be an IP address without %scope (got {value[:50]!r})"
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        return "must be a routed unicast address (the session is multihop from the loopback)"
    return None


def collector_asn_problem(value: object) -> str | None:
    """Why ``value`` cannot be the collector's AS, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4294967294:
        return "must be an AS number (1-4294967294)"
    return None


def effective_collector(local: RouteCollector, cp_enabled: bool | None) -> RouteCollector | None:
    """The session to render, or None: the local pin, else the CP's word, else off."""
    enabled = local.enabled if local.enabled is not None else bool(cp_enabled)
    return local if enabled else None
