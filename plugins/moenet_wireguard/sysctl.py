"""The per-interface IPv6 sysctls a DN42 tunnel needs.

- ``addr_gen_mode=1``: no automatic link-local address. The agent puts the
  configured link-local on the tunnel; a second, random one would become the
  source of BGP packets and make the peer reset the session.
- ``accept_ra=0``, ``autoconf=0``: a tunnel never takes router advertisements
  or SLAAC addresses from a peer.
- ``accept_dad=0``: a point-to-point tunnel has nobody to collide with, and
  duplicate address detection would keep the addresses tentative (unusable as a
  BGP source) for a second after every change.

They are written right after the link is created, before it goes up, and only
when the value differs. ``/proc/sys/net`` shows the network namespace of the
calling thread, like the netlink sockets.
"""

from __future__ import annotations

from pathlib import Path

from .journal import Journal

IPV6_CONF = Path("/proc/sys/net/ipv6/conf")
TUNNEL_IPV6_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("addr_gen_mode", "1"),
    ("accept_ra", "0"),
    ("autoconf", "0"),
    ("accept_dad", "0"),
)


def ensure_ipv6_sysctls(ifname: str, journal: Journal, root: Path = IPV6_CONF) -> None:
    """Write the tunnel sysctls of ``ifname`` that differ. A kernel without IPv6
    has no such directory; then there is nothing to do."""
    conf = root / ifname
    if not conf.is_dir():
        return
    for key, value in TUNNEL_IPV6_SYSCTLS:
        path = conf / key
        if path.read_text().strip() != value:
            journal.record("sysctl")
            path.write_text(value + "\n")


def read_ipv6_sysctls(ifname: str, root: Path = IPV6_CONF) -> dict[str, str]:
    conf = root / ifname
    return {k: (conf / k).read_text().strip() for k, _ in TUNNEL_IPV6_SYSCTLS if (conf / k).exists()}
