"""The ``loopback`` config section.

Checks are attached twice on purpose, with the core's ``checked(fn)``: as
metadata the core's structurer runs, so an error lands on the field's own path
(``loopback.kind: must be one of ...``), and as attrs validators, so an object
built directly in code cannot hold a value the structurer would refuse.
"""

from __future__ import annotations

import re

import attrs

from moenet_core.config import checked

#: Link kinds the backend may create. Each needs no parameters beyond its name
#: and, with no ports or peers, behaves like a dummy: it never carries traffic of
#: its own, it only holds addresses. ``dummy`` is the natural choice; ``bridge``
#: (an empty bridge) and ``ifb`` stand in where the kernel lacks the dummy driver
#: (many VPS kernels, and the CI machine). An empty bridge has no carrier, which
#: is harmless here (IPv6 addresses are added with ``nodad``). Where ifb is a
#: module, loading it also creates ``ifb0``/``ifb1``; prefer ``bridge``. Kinds
#: that need a peer or a parent (veth, vlan, macvlan, vrf) are not offered.
KINDS: tuple[str, ...] = ("dummy", "bridge", "ifb")

IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

#: Names the kernel refuses, or that collide with /proc/sys/net/ipv*/conf/{all,default}.
_RESERVED = frozenset({".", "..", "all", "default"})


def check_ifname(value: object) -> str | None:
    """An interface name the kernel accepts (IFNAMSIZ-1 = 15 characters)."""
    if not isinstance(value, str) or not IFNAME_RE.match(value):
        return "must be 1-15 characters of letters, digits, '_', '.' or '-' (a Linux interface name)"
    if value in _RESERVED:
        return f"{value!r} is reserved by the kernel"
    return None


def check_kind(value: object) -> str | None:
    if value in KINDS:
        return None
    return f"must be one of {', '.join(KINDS)} (got {value!r})"


@attrs.define(kw_only=True)
class LoopbackConfig:
    """Section ``loopback``: where the node's DN42 addresses live.

    The addresses themselves come from ``node.loopbackIpv4/6`` (or
    ``wireguard.dn42Ipv4/6``); this section only says which interface holds them.
    """

    interface: str = attrs.field(default="dummy0", **checked(check_ifname))
    """The interface carrying the addresses; created when missing."""
    kind: str = attrs.field(default="dummy", **checked(check_kind))
    """Link kind used when the interface has to be created (see :data:`KINDS`)."""
    enabled: bool = True
    """False: the agent leaves the loopback alone (no create, no add, no removal)."""
