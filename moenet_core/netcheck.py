"""Checks on network values a peer, the CP or an HTTP client hands the agent:
tunnel endpoint addresses, interface names, ``Host`` headers. One place, so that
the sessions and the mesh plugins (and the tunnel backends) refuse the same
things for the same reasons, and the local API and the looking glass read a
``Host`` header the same way.

The ``*_problem`` functions answer *why not* (a short reason for an error
message) or None.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["RESERVED_IFNAMES", "endpoint_ip_problem", "host_header_name", "ifname_problem", "normal_ip"]

_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,252}[a-z0-9])?$")

#: Interface names the kernel treats specially: ``.`` and ``..`` are refused by
#: the kernel, ``all`` and ``default`` are the ``/proc/sys/net/ipv*/conf/`` entries
#: for every interface and for new ones (a sysctl written for such a tunnel would
#: change every interface), ``lo`` is the loopback device, and ``bonding_masters``
#: is a file in ``/sys/class/net`` once the bonding driver is loaded.
RESERVED_IFNAMES = frozenset({".", "..", "all", "default", "lo", "bonding_masters"})

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def ifname_problem(name: str) -> str | None:
    """Why ``name`` must not name one of our interfaces, or None. (Only the
    reserved names: each caller checks its own character set and length.)"""
    if name in RESERVED_IFNAMES:
        return f"{name!r} is reserved by the kernel (one of {', '.join(sorted(RESERVED_IFNAMES))})"
    return None


def endpoint_ip_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` cannot be a tunnel peer's address, or None: the unspecified
    address, multicast, broadcast, loopback (the tunnel would point back at this
    node), link-local (169.254/16, fe80::/10: meaningless without an interface,
    and 169.254.169.254 is a cloud metadata service) and the reserved 240/4. An
    IPv4-mapped IPv6 address is judged by its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        problem = endpoint_ip_problem(ip.ipv4_mapped)
        return f"{problem} (IPv4-mapped)" if problem else None
    if ip.is_unspecified:
        return f"{ip} is not a unicast address (unspecified)"
    if ip.is_multicast:
        return f"{ip} is not a unicast address (multicast)"
    if ip == _BROADCAST:
        return f"{ip} is not a unicast address (broadcast)"
    if ip.is_loopback:
        return f"{ip} is a loopback address (the tunnel would point back at this node)"
    if ip.is_link_local:
        return f"{ip} is link-local (it has no meaning without an interface)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return f"{ip} carries a %scope (an endpoint cannot name a local interface)"
    if isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved:
        return f"{ip} is in the reserved range 240.0.0.0/4"
    return None


def host_header_name(header: str) -> str | None:
    """The host of a ``Host`` header, lower-case, without port, brackets or
    trailing dot; None when it is not ``name[:port]`` or ``[v6][:port]``."""
    text = header.strip().lower()
    if text.startswith("["):
        name, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, sep, port = text.rpartition(":")
    if not sep:
        name = text
    elif not port.isdigit():
        return None
    name = name.rstrip(".")
    return name if _HOST_NAME.match(name) else None


def normal_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an address (a zone suffix dropped, an IPv4-mapped IPv6 address
    as IPv4), or None when it is not one."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
