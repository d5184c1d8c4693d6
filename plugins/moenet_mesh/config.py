"""The ``mesh`` config section: on/off, MTU, addressing knobs, Babel tuning, the guard.

The Go agent's ``mesh`` keys (``enabled``: the task does nothing while it is
false; ``mtu``: the tunnels' MTU when a peer names none) keep their names; the
keys of the former ``meshSync`` section (what the Go agent hard-coded) moved
here, and ``meshSync`` is still read as a deprecated alias. The Go agent's
``wireguard.persistentKeepaliveInterval`` is the default ``keepalive``. Every
key has a default, so the section is optional.

Each check is attached twice with the core's ``checked(fn)``, as the other
plugins do: as core metadata (the error lands on the field's own path,
``mesh.portBase: ...``) and as an attrs validator (an object built in code
is held to the same rules).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import ConfigSection, SectionAlias
from moenet_core.config import checked, cp_settable

from .addressing import DEFAULT_PORT_BASE, DEFAULT_PREFIX, PREFIX_RE

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

#: Where mesh traffic may come from and go to besides the link itself: the
#: address space DN42's filters accept (``is_valid_network`` in the BIRD
#: templates). Routes learned over iBGP resolve through the mesh, so packets to
#: any DN42 destination cross it: narrowing this to the network's own prefixes
#: (as the Go agent did) silently drops transit traffic.
DEFAULT_ALLOWED_IPS: tuple[str, ...] = ("172.20.0.0/14", "172.31.0.0/16", "10.0.0.0/8", "fd00::/8")
#: Persistent keepalive of the mesh tunnels when ``keepalive`` is null (the Go
#: agent's ``wireguard.persistentKeepaliveInterval`` default).
DEFAULT_KEEPALIVE = 25


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_range(lo: int, hi: int, what: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not _is_int(value) or not lo <= value <= hi:
            return f"must be an integer from {lo} to {hi} ({what}; got {value!r})"
        return None

    return check


def check_prefix(value: Any) -> str | None:
    if not isinstance(value, str) or not PREFIX_RE.fullmatch(value):
        return (
            f"must be 1-5 lower-case letters (the interface name is the prefix and the peer's "
            f"node id, at most 15 characters; got {value!r})"
        )
    return None


def check_networks(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        return "must be a list of networks"
    bad: list[str] = []
    for item in value:
        try:
            if not isinstance(item, str):
                raise ValueError
            ipaddress.ip_network(item.strip(), strict=True)
        except ValueError:
            bad.append(repr(item))
    if bad:
        return f"not networks in a.b.c.d/len or x::/len form (host bits clear): {', '.join(bad)}"
    return None


def check_share(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        return f"must be a number from 0 to 1 (got {value!r})"
    return None


@attrs.define(kw_only=True)
class MeshConfig:
    """The WireGuard + Babel IGP mesh between this network's nodes (section ``mesh``)."""

    enabled: bool = attrs.field(default=True, metadata=cp_settable())
    """False: the ``meshSync`` task does nothing (existing mesh tunnels are left as
    they are) and the heartbeat carries no ``meshPublicKey``."""
    mtu: int = attrs.field(default=1420, **checked(_int_range(1280, 9000, "bytes"), cp=True))
    """MTU of the mesh tunnels whose peer entry names none."""
    port_base: int = attrs.field(
        default=DEFAULT_PORT_BASE, **checked(_int_range(1, 65534, "the first mesh listen port minus 1"))
    )
    """Our tunnel to node N listens on ``portBase + N`` (the Go agent's rule, 51820 +
    N). Node ids above ``65535 - portBase`` cannot be meshed and are refused."""
    interface_prefix: str = attrs.field(default=DEFAULT_PREFIX, **checked(check_prefix))
    """The tunnel to node N is ``<prefix><N>`` (``igp7``, ``igp4294967295``)."""
    allowed_ips: list[str] | None = attrs.field(default=None, **checked(check_networks))
    """Traffic allowed through each mesh tunnel besides the link itself (IPv6
    link-local and Babel's multicast group, always allowed) and the peer's own
    loopbacks (always allowed). Default: DN42's address space."""
    keepalive: int | None = attrs.field(default=None, **checked(_int_range(0, 65535, "seconds"), cp=True))
    """Persistent keepalive of the mesh tunnels in seconds; 0 off. Null: the Go
    agent's ``wireguard.persistentKeepaliveInterval`` when the file has it, else 25."""
    max_peers: int = attrs.field(default=250, **checked(_int_range(1, 10000, "peers")))
    """An answer listing more peers is refused as a whole (each peer is a tunnel,
    and with the userspace backend a process)."""
    rtt_cost: int = attrs.field(default=1024, **checked(_int_range(0, 65535, "Babel rtt cost")))
    """Babel's ``rtt cost`` on every mesh tunnel: the most cost a link's round-trip
    time adds to its metric (reached at ``rttMaxMs``); 0 ignores the RTT."""
    rtt_min_ms: int = attrs.field(default=10, **checked(_int_range(1, 60000, "milliseconds")))
    """Babel's ``rtt min``, in milliseconds: the RTT above which the RTT cost
    starts to be added (growing linearly up to ``rttMaxMs``)."""
    rtt_max_ms: int = attrs.field(default=150, **checked(_int_range(1, 60000, "milliseconds")))
    """Babel's ``rtt max``, in milliseconds: from this RTT on the full ``rttCost``
    is added. Must not be below ``rttMinMs``."""
    hello_interval_s: int = attrs.field(default=5, **checked(_int_range(1, 600, "seconds")))
    """Babel's ``hello interval`` on the mesh tunnels, in seconds."""
    rxcost: int | None = attrs.field(default=None, **checked(_int_range(1, 65535, "Babel rxcost")))
    """Babel's ``rxcost`` (the base cost of a mesh link, before the RTT cost).
    Null: not written, BIRD's default for a tunnel interface applies."""
    guard_max_share: float = attrs.field(default=0.5, **checked(check_share))
    """Refuse an answer removing more than this share of the mesh tunnels ..."""
    guard_min_count: int = attrs.field(default=2, **checked(_int_range(0, 1_000_000, "tunnels")))
    """... and more than this many (both must be exceeded). The limits count the
    tunnels an answer removes together with those it would re-key or recreate
    (the peer's key, the interface name, a tunnel of another WireGuard kind
    after a backend switch)."""
    guard_window: float = attrs.field(default=3600.0, **checked(lambda v: _non_negative(v)))
    """Seconds over which tunnel removals are also counted together, against the
    tunnels there were at the window's start; remembered across restarts. 0:
    each answer is judged on its own."""
    allow_removal: str = ""
    """The guard digest (``/status``) of the one refused removal set to let through."""
    status_repeat: float = attrs.field(default=600.0, **checked(lambda v: _non_negative(v)))
    """An unchanged ``mesh/status`` report is sent again after this many seconds
    (a changed one at once); 0 sends it every cycle, as the Go agent did."""
    deep_check_interval: float = attrs.field(default=600.0, **checked(lambda v: _non_negative(v)))
    """Seconds between deep checks of the mesh tunnels: every cycle reads them
    cheaply (one link dump, the WireGuard settings as last written); every this
    many seconds, and on the first cycle after a start, each tunnel's WireGuard
    settings are read back from the system, so drift inside WireGuard is
    repaired. 0: a deep check every cycle."""

    def __attrs_post_init__(self) -> None:
        if self.rtt_min_ms > self.rtt_max_ms:
            raise ValueError("rttMinMs must not exceed rttMaxMs")

    def networks(self) -> tuple[str, ...]:
        """The allowed networks in canonical form."""
        raw = DEFAULT_ALLOWED_IPS if self.allowed_ips is None else tuple(self.allowed_ips)
        return tuple(sorted({str(ipaddress.ip_network(n.strip())) for n in raw}))


def _non_negative(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return f"must be a number of seconds, 0 or more (got {value!r})"
    return None


#: Deprecated: the old name of this class (the ``meshSync`` section's).
MeshSyncConfig = MeshConfig

SECTION = ConfigSection(
    name="mesh",
    type=MeshConfig,
    aliases=(
        "meshSync",
        SectionAlias(section="wireguard", keys={"persistentKeepaliveInterval": "keepalive"}, fallback=True),
    ),
    description="IGP mesh: on/off, MTU, portBase, interfacePrefix, allowedIps, keepalive, Babel tuning, "
    "removal guard",
)


def section_of(config: AgentConfig) -> MeshConfig:
    """The ``mesh`` section of ``config`` (defaults when it is invalid)."""
    section = SECTION.of(config)
    return section if isinstance(section, MeshConfig) else MeshConfig()


__all__ = [
    "DEFAULT_ALLOWED_IPS",
    "DEFAULT_KEEPALIVE",
    "SECTION",
    "MeshConfig",
    "MeshSyncConfig",
    "section_of",
]
