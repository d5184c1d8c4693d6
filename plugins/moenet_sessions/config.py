"""The ``sessions`` config section: the session tunnels' key, keepalive and
link-local, the node's uplink bandwidth, the mass-removal guard (and its window), the cap on sessions per
answer and where preshared keys go.

Everything has a default, so a node without the section behaves as issue 5 asks
(refuse removing more than half, and more than 2, of the node's sessions at once).

``privateKeyPath``, ``publicKeyPath``, ``persistentKeepaliveInterval`` and
``dn42Ipv6LinkLocal`` were the Go agent's ``wireguard`` keys: they concern the
eBGP session tunnels, so they are this section's, and the old spelling
(``wireguard.privateKeyPath``...) is still read, with a deprecation warning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import ConfigSection, SectionAlias
from moenet_core.config import check, ipv6_link_local

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig


def _share(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attr.name}: must be within 0..1, got {value!r}")


def _non_negative(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name}: must be >= 0, got {value!r}")


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attr.name}: must be >= 1, got {value!r}")


def _bandwidth(value: int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000_000:
        return f"must be the node's uplink speed in Mbit/s, 1-100000000 (or null), got {value!r}"
    return None


def _keepalive(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be 0-65535 seconds"


@attrs.define(kw_only=True)
class SessionsConfig:
    """Section ``sessions``."""

    private_key_path: str = "/etc/wireguard/private.key"
    """The node's WireGuard private key (base64), used by every eBGP session
    tunnel; generated (mode 0600) when missing. The mesh has its own key in the
    state directory."""
    public_key_path: str = ""
    """When set, the key's public half is written here (at start, generating the
    key when missing, and whenever the agent generates it). Empty: not written."""
    persistent_keepalive_interval: int = attrs.field(default=25, metadata=check(_keepalive, cp=True))
    """Seconds between keepalives on the eBGP session tunnels; 0 turns them off."""
    dn42_ipv6_link_local: str = attrs.field(default="", metadata=check(ipv6_link_local, cp=True))
    """Our link-local address (``/64``) on every eBGP session tunnel, and BIRD's
    local address towards link-local neighbours. Empty: derived from the IPv6
    loopback by the Go agent's rule (``fd00:4242:7777:302:1::1`` gives
    ``fe80::998:302:1:1``), or from a hash of ``node.name`` without one."""
    bandwidth: int | None = attrs.field(default=None, metadata=check(_bandwidth))
    """The node's uplink speed in Mbit/s: each session's DN42 bandwidth community
    (64511, 21-29) is that of min(this, the session's ``policy.bandwidth``), the
    wiki's rule (a link is as fast as its slower end). null: the session's value,
    else 24 (>= 100 Mbit/s)."""
    guard_max_share: float = attrs.field(default=0.5, validator=_share)
    """Refuse an answer removing more than this share of the configured sessions ..."""
    guard_min_count: int = attrs.field(default=2, validator=_non_negative)
    """... and more than this many (both must be exceeded). The limits count the
    sessions an answer removes together with those whose tunnel it would re-key
    or recreate (our key file, the peer's key or preshared key, the interface
    name, a tunnel of another WireGuard kind after a backend switch)."""
    guard_window: float = attrs.field(default=3600.0, validator=_non_negative)
    """Seconds over which removals are also counted together, against the
    sessions configured at the window's start (so removing 5, then 2, 2 and 1 of
    10 is refused from the second step on); remembered across restarts. 0: each
    answer is judged on its own."""
    max_sessions: int = attrs.field(default=2000, validator=_positive)
    """An answer listing more sessions is refused as a whole (the last valid
    answer keeps serving): each session is a tunnel (with the userspace backend a
    ``wireguard-go`` process), a BIRD protocol and an open port."""
    allow_removal: str = ""
    """An operator override: the guard digest (shown in ``/status``) of the one
    removal set to let through. It never matches a different, later mass removal."""
    psk_dir: str = ""
    """Where preshared keys are written (0600, one file per interface); default
    ``<state.directory>/psk``."""
    tunnel_concurrency: int = attrs.field(default=16, validator=_positive)
    """How many tunnels a cycle creates or repairs at once (with the userspace
    backend each is a ``wireguard-go`` to start): a cold start of many queued
    sessions is bounded by this, not by one tunnel after the other."""
    deep_check_interval: float = attrs.field(default=600.0, validator=_non_negative)
    """Seconds between deep checks: every cycle reads the tunnels cheaply (one
    link dump, the WireGuard settings as last written); every this many seconds,
    and on the first cycle after a start, each tunnel's WireGuard settings are
    read back from the system, so drift someone else caused inside WireGuard is
    repaired. 0: a deep check every cycle."""


#: The Go agent's ``wireguard`` keys that are the session tunnels' (same names here).
GO_WIREGUARD_KEYS = ("privateKeyPath", "publicKeyPath", "persistentKeepaliveInterval", "dn42Ipv6LinkLocal")

SECTION = ConfigSection(
    name="sessions",
    type=SessionsConfig,
    aliases=(SectionAlias(section="wireguard", keys={k: k for k in GO_WIREGUARD_KEYS}),),
    description="eBGP sessions: tunnel key, keepalive and link-local, uplink bandwidth, mass-removal guard, "
    "operator override, preshared-key directory",
)


def section_of(config: AgentConfig) -> SessionsConfig:
    """The ``sessions`` section of ``config`` (defaults when it is invalid)."""
    section = SECTION.of(config)
    return section if isinstance(section, SessionsConfig) else SessionsConfig()
