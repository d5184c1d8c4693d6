"""The ``bird`` config section: BIRD's control socket, the directories the agent
writes, and how it applies.

The Go agent's keys (``controlSocket``, ``poolSize``, ``poolSizeMax``,
``configDir``, ``peerConfDir``, ``ibgpConfDir``, ``ebgpConfTemplateFile``) keep
their names; the keys of the former ``birdAgent`` section (``birdBinary``,
``applyDebounce``, ``loopbackInterface``) moved here, and ``birdAgent`` is read
as a deprecated alias of this section.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import ConfigSection
from moenet_core.config import check, is_loopback_host, positive, structure

from .collector import RouteCollector, collector_asn_problem, collector_neighbor_problem
from .policy import RpkiServer

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_GROUP = re.compile(r"^(?:[0-9]{1,10}|[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?)$")


def _binary(value: object) -> str | None:
    if value == "" or (isinstance(value, str) and value.startswith("/")):
        return None
    return "must be an absolute path (or empty: search PATH, then /opt/moenet-bird3/bin/bird)"


def _debounce(value: object) -> str | None:
    if isinstance(value, int | float) and 0 <= value <= 5:
        return None
    return "must be 0-5 seconds"


def _group(value: object) -> str | None:
    if isinstance(value, str) and (value == "" or _GROUP.match(value)):
        return None
    return "must be a group name or a numeric gid (or empty: the group BIRD already reads with)"


def _roa_mode(value: object) -> str | None:
    if value in ("", "strict", "loose"):
        return None
    return "must be strict, loose, or empty (follow the control plane's policy.roaMode, else strict)"


def _roa_files(value: object) -> str | None:
    if not isinstance(value, list) or len(value) > 8:
        return "must be a list of at most 8 absolute paths"
    for v in value:
        if not isinstance(v, str) or not v.startswith("/") or "\n" in v or len(v) > 4096:
            return f"must hold absolute paths (got {str(v)[:60]!r})"
    return None


def _roa_urls(value: object) -> str | None:
    if not isinstance(value, list) or len(value) > 8:
        return "must be a list of at most 8 https:// URLs"
    for v in value:
        m = re.fullmatch(r"(https?)://([^/\s?#@]+)(/[^\s#]*)?", v) if isinstance(v, str) else None
        if m is None or len(str(v)) > 2048:
            return f"must hold https:// URLs without credentials or fragment (got {str(v)[:60]!r})"
        host = m.group(2).rsplit(":", 1)[0] if not m.group(2).startswith("[") else m.group(2).split("]")[0]
        if m.group(1) == "http" and not is_loopback_host(host):
            return f"must be https:// (plain http:// only to this machine; got {str(v)[:60]!r})"
    return None


def _rpki_servers(value: object) -> str | None:
    if not isinstance(value, list) or len(value) > 8:
        return "must be a list of at most 8 RTR caches ({name, host, port})"
    problems: list[str] = []
    for i, item in enumerate(value):
        _, errs = structure(RpkiServer, item, f"[{i}]", [])
        problems += errs
    names = [item.get("name") for item in value if isinstance(item, dict)]
    if len(set(names)) != len(names):
        problems.append("names must be unique")
    return "; ".join(problems) or None


def _optional_bool(value: object) -> str | None:
    return None if value is None or isinstance(value, bool) else "must be true, false or null"


def _deny_files(value: object) -> str | None:
    if not isinstance(value, list) or len(value) > 8:
        return "must be a list of at most 8 absolute paths"
    for v in value:
        if not isinstance(v, str) or not v.startswith("/") or "\n" in v or len(v) > 4096:
            return f"must hold absolute paths (got {str(v)[:60]!r})"
    if len(set(value)) != len(value):
        return "must not name a file twice"
    return None


def _expire(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 600 <= value <= 172800:
        return None
    return "must be 600-172800 seconds (RFC 8210's range for the expire interval)"


def _seconds(lo: float, hi: float) -> Callable[[object], str | None]:
    def fn(value: object) -> str | None:
        if isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi:
            return None
        return f"must be {lo:g}-{hi:g} seconds"

    return fn


def _ifname(value: object) -> str | None:
    if isinstance(value, str) and _IFNAME.match(value):
        return None
    return "must be a Linux interface name (1-15 letters, digits, '_', '.', '-')"


@attrs.define(kw_only=True)
class BirdConfig:
    """BIRD 3: control socket, the directories the agent writes, and how it applies."""

    control_socket: str = "/var/run/bird/bird.ctl"
    """BIRD's control socket: every query and ``configure`` goes through it. The
    ``routing/bird`` backend is available when it exists or a ``bird`` binary is found."""
    pool_size: int = attrs.field(default=5, metadata=check(positive, cp=True))
    """Idle control-socket connections kept open for read commands."""
    pool_size_max: int = attrs.field(default=10, metadata=check(positive, cp=True))
    """Most read connections open at once; callers beyond that wait. Not smaller
    than ``poolSize``. Reconfigurations use one connection of their own."""
    config_dir: str = "/etc/bird"
    """Directory of BIRD's configuration, where the agent writes ``moenet.conf``
    and its other files, ``peers/*.conf``, ``ibgp/*.conf``, and ``bird.conf``
    unless the operator keeps their own (see docs/bird.md)."""
    peer_conf_dir: str = "/etc/bird/peers"
    """Accepted for compatibility with the Go agent's files; the agent always
    writes eBGP peers to ``<configDir>/peers`` and logs a warning when this is set
    to another directory."""
    ibgp_conf_dir: str = "/etc/bird/ibgp"
    """Accepted for compatibility with the Go agent's files; the agent always
    writes iBGP sessions to ``<configDir>/ibgp`` and logs a warning when this is
    set to another directory."""
    template_dir: str = ""
    """Operator templates that override the shipped ones, file by file."""
    ebgp_conf_template_file: str = ""
    """Accepted for Go-agent compatibility; unused (see ``templateDir``): a
    non-empty value is warned about."""
    group: str = attrs.field(default="", metadata=check(_group))
    """Group given read access to the files the agent writes: they are 0640 and its
    directories 0750 whatever the agent's umask, owned by the agent (root), never
    world-readable. A name or a numeric gid. Empty (the default) picks, in order: the
    group of an existing ``<configDir>/bird.conf``, then the group of ``configDir``,
    then ``bird`` (Debian's ``bird3`` runs BIRD as ``-u bird -g bird``) if that group
    exists, skipping root's group 0 in the first two; with none of them the files
    stay root's (enough for a BIRD running as root). An unknown name refuses the
    apply. Setting the group needs ``CAP_CHOWN`` or membership of the group: under
    the shipped unit add ``SupplementaryGroups=<group>`` in a drop-in (a BIRD that
    runs as ``bird`` also makes its control socket ``0660 bird:bird``, so the agent
    needs that membership to talk to it at all)."""
    bird_binary: str = attrs.field(default="", metadata=check(_binary))
    """``bird`` for the ``bird -p`` parse check when the daemon is not running."""
    apply_debounce: float = attrs.field(default=0.05, metadata=check(_debounce))
    """Seconds to wait before an apply so owners declaring together share one configure."""
    loopback_interface: str = attrs.field(default="dummy0", metadata=check(_ifname))
    """Interface holding the node's loopbacks (BIRD's ``direct`` protocol reads it)."""

    roa_mode: str = attrs.field(default="", metadata=check(_roa_mode))
    """ROA policy on eBGP import, pinned locally: ``strict`` accepts only ROA-valid
    routes (the DN42 wiki's rule), ``loose`` rejects only ROA-invalid ones. Empty
    (the default) follows the control plane's ``policy.roaMode``, and strict when it
    sends none. Strict needs a ROA source: the CP's ``policy.rpkiServers`` or
    ``rpkiServers`` / ``roaFiles`` / ``roaUrls`` here; a strict mode pinned here with
    none of the local ones is refused at start (and by ``validate``), and a policy
    that would leave strict mode without any source is refused by
    ``birdConfigSync`` (the last good one stays)."""
    rpki_servers: list[dict[str, Any]] = attrs.field(factory=list, metadata=check(_rpki_servers))
    """Local RTR caches (``{name, host, port}``, port 8082 by default), e.g. an RTR server
    on this host, each a ``protocol rpki`` feeding the ROA tables next to the
    control plane's ``policy.rpkiServers`` (a local one wins a name clash)."""
    roa_files: list[str] = attrs.field(factory=list, metadata=check(_roa_files))
    """Local ROA files in the DN42 registry's BIRD format (``route <prefix> max <len>
    as <asn>;`` lines, e.g. ``dn42_roa_bird2_4.conf`` / ``_6.conf``; both families may
    share a file). Validated line by line and re-rendered into the
    ``moenet_roa4`` / ``moenet_roa6`` static protocols that feed the ROA tables
    together with the RTR caches; a malformed file is refused as a whole and the last
    good content stays. Re-read when it changes (task ``birdRoaSources``)."""
    roa_urls: list[str] = attrs.field(factory=list, metadata=check(_roa_urls))
    """``https://`` URLs of ROA files in the same format, fetched by the
    ``birdRoaSources`` task (``tasks.birdRoaSources.interval``, default 900 s) and
    validated like ``roaFiles``; the last good download is kept in the state
    directory. Local only: the control plane cannot name a URL."""
    roa_max_age: float = attrs.field(default=172800.0, metadata=check(_seconds(600, 31_536_000)))
    """A static ROA source (file or download) older than this many seconds makes the
    ``bird.roa`` health check degraded."""
    rpki_expire: int = attrs.field(default=172800, metadata=check(_expire))
    """``expire keep`` of every RTR cache (seconds): how long its ROAs stay in the
    tables while it is unreachable. The DN42 wiki's RTR server example keeps 2 days
    (172800), rather than emptying the tables after the caches' own 2 h."""
    route_refresh_spread: float = attrs.field(default=3600.0, metadata=check(_seconds(0, 86400)))
    """The daily route refresh (task ``birdRouteRefresh``: ``reload bgp in`` on every
    Established eBGP session against ghost routes; ``tasks.birdRouteRefresh.interval``, default
    86400 s, ``enabled: false`` turns it off) spreads its reloads evenly over this
    many seconds, so 1 000 sessions are not refreshed at once."""
    route_collector: bool | None = attrs.field(default=None, metadata=check(_optional_bool))
    """Peer with the DN42 Global Route Collector (``protocol bgp moenet_grc``:
    multihop from the loopback, ``add paths tx``, ``import none``; see docs/bird.md).
    True or false pins it on this node; null (the default) follows the control
    plane's ``policy.routeCollector``, off when it sends none."""
    route_collector_neighbor: str = attrs.field(
        default="fd42:4242:2601:ac12::1", metadata=check(collector_neighbor_problem)
    )
    """The collector's address (the DN42 wiki's ``collector.dn42``); an IPv6 one is
    reached from ``OWNIPv6``, an IPv4 one from ``OWNIP``. Local only."""
    route_collector_as: int = attrs.field(default=4242422602, metadata=check(collector_asn_problem))
    """The collector's AS (the DN42 wiki's AS4242422602). Local only."""
    deny_list_files: list[str] = attrs.field(factory=list, metadata=check(_deny_files))
    """Local deny lists: one prefix (``172.20.66.0/24``, ``172.20.66.0/24+``,
    ``fd42:dead::/32{48,64}``) or AS number (``AS4242420666``: refused anywhere in the
    AS path) per line, ``#`` comments. Routes matching any entry, or the control
    plane's ``policy.denyList``, are refused on eBGP and iBGP import. A file with a bad
    line is refused as a whole and its last good entries stay. Re-read when it changes
    (task ``birdDenyList``, every 60 s); applied without resetting a session."""
    withdraw_isolated: bool = True
    """Withdraw the own aggregates (``own4`` / ``own6``) while this node has iBGP
    sessions but none of them is Established for ``isolationHoldDown`` seconds: a
    node cut off from the others would otherwise keep attracting their traffic. A
    node without iBGP sessions (a single-node network) always announces."""
    isolation_hold_down: float = attrs.field(default=120.0, metadata=check(_seconds(0, 86400)))
    """Seconds every iBGP session must have been down before the aggregates are
    withdrawn (a blip does not flap them); they are announced again as soon as one
    session is Established."""

    def __attrs_post_init__(self) -> None:
        if self.pool_size_max < self.pool_size:
            raise ValueError("poolSizeMax: must not be smaller than poolSize")

    @property
    def local_rpki_servers(self) -> list[RpkiServer]:
        """``rpkiServers`` as validated models (an invalid entry never gets this far)."""
        out = []
        for item in self.rpki_servers:
            server, _ = structure(RpkiServer, item, "bird.rpkiServers", [])
            if server is not None:
                out.append(server)
        return out

    @property
    def collector(self) -> RouteCollector:
        """The route collector keys as the renderer takes them."""
        return RouteCollector(
            enabled=self.route_collector, neighbor=self.route_collector_neighbor, asn=self.route_collector_as
        )

    @property
    def has_local_roa_source(self) -> bool:
        """A ROA source the local config names itself (RTR cache, file or URL)."""
        return bool(self.rpki_servers or self.roa_files or self.roa_urls)

    def roa_source_problem(self) -> str | None:
        """Why this config cannot run (``validate`` and the start refuse it), or None:
        a strict ROA mode pinned here needs a ROA source named here too."""
        if self.roa_mode == "strict" and not self.has_local_roa_source:
            return (
                "bird.roaMode: strict is pinned locally but the local config names no ROA source, "
                "so every eBGP route would be rejected whenever the control plane sends no RTR "
                "cache: set bird.rpkiServers (an RTR cache such as a local RTR server), bird.roaFiles "
                "or bird.roaUrls (the DN42 registry's BIRD ROA files), or set bird.roaMode to "
                "loose or empty (follow the control plane)"
            )
        return None


#: Deprecated: the old name of this class (the ``birdAgent`` section's).
BirdAgentConfig = BirdConfig

SECTION = ConfigSection(
    name="bird",
    type=BirdConfig,
    aliases=("birdAgent",),
    description="BIRD 3: control socket and pool, config and template directories, bird binary, "
    "apply debounce, loopback interface, ROA mode and sources, route refresh, isolated aggregates, "
    "route collector, deny lists",
)


def section_of(config: AgentConfig) -> BirdConfig:
    """The ``bird`` section of ``config`` (defaults when it is invalid), for hooks
    that get only the config."""
    section = SECTION.of(config)
    return section if isinstance(section, BirdConfig) else BirdConfig()
