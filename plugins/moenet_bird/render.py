"""Render the BIRD 3 configuration tree from validated policy and routing intents.

Pure: no BIRD socket, no file writes. ``render_tree`` returns ``{relative path:
content}``; the apply layer stages, checks and swaps it. Rendering is
deterministic (everything sorted, no timestamps) so unchanged input gives
byte-identical output and never triggers a reconfigure.

Files the agent owns (each starts with :data:`MARKER`), all in ``bird.configDir``:

- ``moenet.conf``: the aggregator. Node constants (``OWNAS``, ``OWNIP``,
  ``OWNIPv6``, ``OWNNET``, ``OWNNETv6``, ``OWNNETSET``, ``OWNNETSETv6``,
  ``DN42_MAX_PATH``), the ROA tables ``dn42_roa`` / ``dn42_roa_v6``, the
  ``direct`` protocol ``moenet_lo``, the aggregates ``own4`` / ``own6``, the RPKI
  protocols, the BGP templates ``dn42_ebgp`` / ``dn42_ibgp``, and includes of
  every other file below. Self-contained: it defines everything it references.
- ``moenet_communities.conf``, ``filters.conf``, ``cold_potato.conf``,
  ``babel.conf``, ``collector.conf`` (the DN42 Global Route Collector session,
  :mod:`.collector`), ``denylist.conf`` (:mod:`.denylist`), ``peers/*.conf``
  (one per eBGP peer), ``ibgp/*.conf`` (one
  per declared iBGP neighbour, named after its protocol),
  ``peers/00_moenet.conf`` and ``ibgp/00_moenet.conf`` (placeholders keeping the
  include globs' directories present).
- ``bird.conf`` (only when the operator has none of their own): ``log``,
  ``include "moenet.conf"``, ``router id OWNIP``, ``device`` and the kernel
  protocols ``kernel4`` / ``kernel6``.

Every include is relative (BIRD resolves it against the directory of the file
containing it), so the texts do not depend on where the tree lives: the apply
layer stages a plain copy of them.

An operator's own ``bird.conf`` (see :mod:`.apply`) must:

- define ``router id`` (``OWNIP`` may be used after the include) and whatever
  base protocols it wants (``device``, ``kernel``...): ``moenet.conf`` has none;
- include ``moenet.conf``, as ``include "<bird.configDir>/moenet.conf";`` or
  ``include "moenet.conf";``, before anything of its own that uses the agent's
  symbols (BIRD needs a symbol defined before its use);
- define none of the symbols the agent's files define: ``OWNAS``, ``OWNIP``,
  ``OWNIPv6``, ``OWNNET``, ``OWNNETv6``, ``OWNNETSET``, ``OWNNETSETv6``,
  ``DN42_MAX_PATH``, ``BOGON_ASNS``, ``DN42_REGION``, ``DN42_COUNTRY``,
  ``DN42_NODE_BANDWIDTH``, ``MOENET_*``, the tables ``dn42_roa`` /
  ``dn42_roa_v6``, the functions ``is_self_net``, ``is_valid_network``,
  ``has_bogon_asn``, ``dn42_*``, ``moenet_*``, the templates
  ``dn42_ebgp`` / ``dn42_ibgp`` and the protocols ``moenet_lo``, ``moenet_igp``,
  ``own4``, ``own6``, ``moenet_roa4``, ``moenet_roa6``, ``moenet_grc``, ``rpki_*``,
  ``dn42_*``, ``ibgp_*``. (The DN42 wiki's
  example config defines several of these: drop them when adopting the agent.)
  BIRD's ``Symbol 'X' already defined`` reaches the caller if it does.

Templates are jinja2 files in ``moenet_templates/bird`` (``templates/bird`` in the
repo). An operator overrides any of them by putting a file with the same name in
``bird.templateDir``; that directory is searched first. The environment is built
once per template directory (compiling the templates dominated an unchanged
apply); jinja2's auto-reload sees an edited override, and adding or removing an
override file builds a fresh one.

Templates are code the root agent runs, so they render in jinja2's
``ImmutableSandboxedEnvironment`` (a template reaching for Python internals,
``{{ cycler.__init__.__globals__ }}``, fails with a render error instead of
running as root), and ``bird.templateDir`` is used only when it and everything
in it belong to the agent's user and are writable by nobody else
(:func:`template_dir_problem`); otherwise every render is refused with a message
saying what to change. ``bird.templateDir`` is a local-only key: the control
plane cannot set it.

What the per-peer templates see: ``peer.conf.j2`` gets ``p`` (the
:class:`~moenet_core.intents.EbgpPeerIntent` fields, plus ``canonical_uuid``:
the id the protocol name derives from, ``symbol`` and ``file_name``),
``sessions``, ``link`` (:func:`link`) and the limits (:func:`peer_limits`);
``ibgp.conf.j2`` gets ``peer`` (the
:class:`~moenet_core.intents.IbgpNeighborIntent` fields plus ``symbol`` and
``file_name``), ``rr_client`` and ``add_paths`` (:func:`add_paths`);
``babel.conf.j2`` gets ``babel_interfaces`` as (quoted pattern,
:class:`~moenet_core.intents.BabelInterfaceIntent`) pairs.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import jinja2
import jinja2.sandbox

from moenet_core.intents import BabelInterfaceIntent, IbgpNeighborIntent, IbgpOptionsIntent

from . import communities as C
from .collector import COLLECTOR_FILE, PROTOCOL, collector_asn_problem, collector_neighbor_problem
from .collector import effective_collector as _effective_collector
from .denylist import DENYLIST_FILE, DenyList
from .names import BirdConfigError, bird_string, ifname_error
from .policy import (
    BgpPeer,
    BirdPolicy,
    ibgp_file,
    ibgp_symbol,
    validate_babel,
    validate_ibgp,
    validate_options,
    validate_peers,
)
from .roa import LocalRouting, effective_roa_mode, rpki_caches

#: First line of every file the agent writes: the ownership marker. The apply
#: layer only ever replaces or deletes files that start with it.
MARKER = "# Generated by moenet-agent"
HEADER = MARKER + " ({path}); do not edit, changes are overwritten. Override templates via bird.templateDir."

#: The agent's aggregator: the one file an operator's own bird.conf includes.
AGGREGATOR = "moenet.conf"
#: The agent's bird.conf; left out when the operator keeps their own.
BIRD_CONF = "bird.conf"
#: Top-level files (moenet.conf includes the others; bird.conf includes moenet.conf).
TOP_FILES: tuple[str, ...] = (
    BIRD_CONF,
    AGGREGATOR,
    "moenet_communities.conf",
    "filters.conf",
    "cold_potato.conf",
    "babel.conf",
    COLLECTOR_FILE,
    DENYLIST_FILE,
)
#: Directories holding one file per session; each always gets a placeholder so
#: the include glob's directory exists (BIRD rejects a glob into a missing dir).
#: Static ROA entries (validated and re-rendered by :mod:`.roa`), present only when
#: a local ROA file or URL gave some; ``moenet.conf`` includes them into the
#: ``moenet_roa4`` / ``moenet_roa6`` static protocols.
ROA4_FILE = "moenet_roa4.conf"
ROA6_FILE = "moenet_roa6.conf"
PEER_DIR = "peers"
IBGP_DIR = "ibgp"
PLACEHOLDER = "00_moenet.conf"

TEMPLATE_NAMES: dict[str, str] = {
    "bird.conf": "bird.conf.j2",
    "moenet.conf": "moenet.conf.j2",
    "moenet_communities.conf": "moenet_communities.conf.j2",
    "filters.conf": "filters.conf.j2",
    "cold_potato.conf": "cold_potato.conf.j2",
    "babel.conf": "babel.conf.j2",
    COLLECTOR_FILE: "collector.conf.j2",
    DENYLIST_FILE: "denylist.conf.j2",
    "peer": "peer.conf.j2",
    "ibgp": "ibgp.conf.j2",
}

_ENVIRONMENTS: dict[str, tuple[frozenset[str], jinja2.Environment]] = {}


def environment(template_dir: str | Path | None = None) -> jinja2.Environment:
    """The cached environment for ``template_dir``: compiled templates are reused.

    jinja2 re-checks a template's source file on use (``auto_reload``), so an
    edited override is seen at the next render; the set of override files is part
    of the key, so one added or removed later is seen too.
    """
    key = str(template_dir or "")
    names: frozenset[str] = frozenset()
    if key and (problem := template_dir_problem(key)) is not None:
        raise BirdConfigError([problem], source="bird.templateDir")
    if key:
        try:
            names = frozenset(e.name for e in os.scandir(key) if e.name.endswith(".j2"))
        except OSError:
            names = frozenset()
    cached = _ENVIRONMENTS.get(key)
    if cached is not None and cached[0] == names:
        return cached[1]
    env = make_environment(template_dir)
    _ENVIRONMENTS[key] = (names, env)
    return env


def _unsafe(path: str, st: os.stat_result, euid: int) -> str | None:
    """Why a template file or directory may not be trusted, with the fix."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != euid:
        return f"{path} is owned by uid {st.st_uid}, not the agent's user (uid {euid}): chown {euid} {path}"
    if mode & 0o022:
        return f"{path} is group- or world-writable (mode {mode:04o}): chmod go-w {path}"
    return None


def template_dir_problem(template_dir: str | Path) -> str | None:
    """Why the operator's ``bird.templateDir`` may not be used, or None.

    Its templates run inside the root agent, so the directory, every directory
    below it and every file in them (symbolic links followed, as jinja2 does)
    must be owned by the agent's effective user and not be group- or
    world-writable. A missing directory is refused too (a typo would silently
    render the shipped templates instead)."""
    root = os.fspath(template_dir)
    where = f"bird.templateDir {root}"
    euid = os.geteuid()
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return f"{where}: does not exist (create it, or leave the key empty for the shipped templates)"
    except OSError as exc:
        return f"{where}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{where}: not a directory"
    refused = "bird.templateDir: refused (templates run as the agent)"
    if (why := _unsafe(root, st, euid)) is not None:
        return f"{refused}: {why}"
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            return f"{where}: {directory}: {exc.strerror}"
        for entry in entries:
            try:
                est = os.stat(entry.path)
            except OSError as exc:
                return f"{where}: {entry.path}: {exc.strerror}"
            if (why := _unsafe(entry.path, est, euid)) is not None:
                return f"{refused}: {why}"
            if stat.S_ISDIR(est.st_mode):
                if entry.is_symlink():
                    return f"{refused}: {entry.path} is a symbolic link to a directory"
                pending.append(entry.path)
    return None


def make_environment(template_dir: str | Path | None = None) -> jinja2.Environment:
    """A new sandboxed jinja2 environment: operator directory first, then the
    shipped templates. Raises :class:`BirdConfigError` when ``template_dir`` is
    not safe to run (:func:`template_dir_problem`)."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir:
        if (problem := template_dir_problem(template_dir)) is not None:
            raise BirdConfigError([problem], source="bird.templateDir")
        loaders.append(jinja2.FileSystemLoader(str(template_dir)))
    loaders.append(jinja2.PackageLoader("moenet_templates", "bird"))
    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not an empty string
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@attrs.frozen
class _Channel:
    family: str
    extended_nexthop: bool = False
    next_hop_address: str = ""


@attrs.frozen
class _Session:
    symbol: str
    description: str
    neighbor: str
    interface: str
    source: str
    channels: tuple[_Channel, ...]


def peer_protocol_names(peer: BgpPeer) -> tuple[str, ...]:
    """The BGP protocol names one eBGP peer renders to (one MP-BGP session, or
    ``_v4`` / ``_v6``)."""
    return tuple(s.symbol for s in _peer_sessions(peer))


def ibgp_protocol_name(n: IbgpNeighborIntent) -> str:
    """The one BGP protocol an iBGP neighbour renders to."""
    return ibgp_symbol(n.node_name, n.node_id)


def _peer_sessions(peer: BgpPeer) -> list[_Session]:
    """One MP-BGP session over IPv6, or separate IPv4 / IPv6 sessions."""
    p, symbol = peer.intent, peer.symbol
    text = " ".join(x for x in (f"AS{p.asn}", p.name, p.description) if x)[:200]
    iface = bird_string(p.interface, "interface") if p.interface else ""
    v6_neighbor = p.neighbor_link_local or p.neighbor_ipv6
    v6_source = p.local_link_local if p.neighbor_link_local else p.local_ipv6
    v6_iface = iface if (p.neighbor_link_local or p.interface) else ""
    sessions = []
    if p.mp_bgp:
        v4 = _Channel(
            "ipv4",
            extended_nexthop=p.extended_nexthop,
            next_hop_address="" if p.extended_nexthop else p.local_ipv4,
        )
        sessions.append(
            _Session(
                symbol,
                bird_string(text, "description"),
                v6_neighbor,
                v6_iface,
                v6_source,
                (v4, _Channel("ipv6")),
            )
        )
        return sessions
    if p.neighbor_ipv4:
        sessions.append(
            _Session(
                symbol + "_v4",
                bird_string(text + " (IPv4)", "description"),
                p.neighbor_ipv4,
                iface,
                p.local_ipv4,
                (_Channel("ipv4"),),
            )
        )
    if v6_neighbor:
        sessions.append(
            _Session(
                symbol + "_v6",
                bird_string(text + " (IPv6)", "description"),
                v6_neighbor,
                v6_iface,
                v6_source,
                (_Channel("ipv6"),),
            )
        )
    return sessions


def _peer_view(peer: BgpPeer) -> dict[str, Any]:
    """``p`` of ``peer.conf.j2``: the intent's fields and the BIRD names."""
    return {
        **attrs.asdict(peer.intent),
        "uuid": peer.canonical_id,
        "canonical_uuid": peer.canonical_id,
        "symbol": peer.symbol,
        "file_name": peer.file_name,
        "legacy": peer.legacy,
    }


def peer_limits(policy: BirdPolicy, peer: BgpPeer) -> dict[str, int]:
    """A session's route limits: its own, else the policy's (receive: twice the
    import limit when the policy names none)."""
    pol, p = policy.policy, peer.intent
    imp = p.import_limit or pol.ebgp_import_limit
    return {
        "import_limit": imp,
        "export_limit": p.export_limit or pol.ebgp_export_limit,
        "receive_limit": p.receive_limit or pol.ebgp_receive_limit or 2 * imp,
    }


def link(policy: BirdPolicy, peer: BgpPeer) -> dict[str, int]:
    """The DN42 link communities of a session: the intent's, with the bandwidth
    capped at the node's own (``node.bandwidthCommunity``): a tunnel is no faster
    than the node's uplink (wiki: min of both ends)."""
    p, node_bw = peer.intent, policy.node.bandwidth_dn42
    return {
        "latency": p.latency,
        "bandwidth": min(p.bandwidth, node_bw) if node_bw else p.bandwidth,
        "crypto": p.crypto,
    }


def add_paths(n: IbgpNeighborIntent, *, is_rr: bool) -> str:
    """``tx`` from a route reflector to its clients, ``rx`` from a client to a
    route reflector (every exit reaches the client, which picks by its own IGP
    metric), else nothing."""
    if n.rr_client:
        return "tx"
    if n.is_rr and not is_rr:
        return "rx"
    return ""


def _neighbor_view(n: IbgpNeighborIntent) -> dict[str, Any]:
    """``peer`` of ``ibgp.conf.j2``: the intent's fields and the BIRD names."""
    return {**attrs.asdict(n), "symbol": ibgp_protocol_name(n), "file_name": ibgp_file(n)}


def ibgp_sessions(
    policy: BirdPolicy, neighbors: Sequence[IbgpNeighborIntent], ibgp: IbgpOptionsIntent | None = None
) -> list[IbgpNeighborIntent]:
    """The iBGP neighbours that are rendered: none when iBGP is disabled, never this
    node itself (by the policy's ``node.id``), sorted by name and id."""
    if ibgp is not None and not ibgp.enabled:
        return []
    return sorted(
        (n for n in neighbors if n.node_id != policy.node.id), key=lambda n: (n.node_name.lower(), n.node_id)
    )


def render_tree(
    policy: BirdPolicy,
    peers: Sequence[BgpPeer] = (),
    *,
    ibgp: IbgpOptionsIntent | None = None,
    ibgp_peers: Sequence[IbgpNeighborIntent] = (),
    babel: Sequence[BabelInterfaceIntent] = (),
    maintenance: bool = False,
    template_dir: str | Path | None = None,
    loopback_interface: str = "dummy0",
    bird_conf: bool = True,
    local: LocalRouting | None = None,
) -> dict[str, str]:
    """Render every file the agent owns, as ``{relative path: content}``.

    The texts are the same wherever the tree lives (includes are relative).
    ``peers`` are the eBGP peers (every owner's), ``ibgp_peers`` the declared
    iBGP neighbours (the policy's ``ibgpPeers`` are not rendered; neither is one
    for this node itself), ``ibgp.enabled=False`` leaves them out, ``babel`` the
    interfaces the IGP runs on.
    ``maintenance`` drains: exports carry GRACEFUL_SHUTDOWN (65535,0), eBGP paths
    are prepended, and on iBGP what enters the network here (our aggregates and
    routes learned from our eBGP peers) goes out with local-pref 0.
    ``bird_conf=False`` leaves out ``bird.conf`` (the operator keeps their own).
    ``local`` is what the local config and the plugin's tasks add (:mod:`.roa`):
    the ROA mode pin, local RTR caches, static ROA entries, aggregates withdrawn.
    Raises :class:`BirdConfigError` naming every invalid field.
    """
    ibgp = ibgp or IbgpOptionsIntent()
    _check_inputs(peers, ibgp, ibgp_peers, babel, loopback_interface)
    peers = sorted(peers, key=lambda p: (p.intent.asn, p.canonical_id))
    neighbors = ibgp_sessions(policy, ibgp_peers, ibgp)
    local = local or LocalRouting()
    ctx = _template_context(policy, ibgp, neighbors, babel, maintenance, loopback_interface)
    ctx.update(_roa_context(policy, local))
    ctx.update(_collector_context(policy, local))
    ctx.update(_deny_context(policy, local))
    env = environment(template_dir)
    try:
        out = _top_files(env, ctx, bird_conf)
        out.update(_roa_files(local))
        out.update(_session_files(env, ctx, policy, peers, neighbors))
    except jinja2.exceptions.SecurityError as exc:
        raise BirdConfigError(
            [f"a template tried an unsafe operation, refused by the sandbox: {exc}"], source="bird templates"
        ) from exc
    return dict(sorted(out.items()))


def _check_inputs(
    peers: Sequence[BgpPeer],
    ibgp: IbgpOptionsIntent,
    ibgp_peers: Sequence[IbgpNeighborIntent],
    babel: Sequence[BabelInterfaceIntent],
    loopback_interface: str,
) -> None:
    """Raise :class:`BirdConfigError` with every invalid field at once, before
    anything is rendered (so a bad value never reaches a template)."""
    problems = (
        validate_peers(list(peers))
        + validate_babel(list(babel))
        + validate_ibgp(list(ibgp_peers))
        + validate_options(ibgp, "ibgp.options")
    )
    if err := ifname_error(loopback_interface):
        problems.append(f"loopbackInterface: {err}")
    if problems:
        raise BirdConfigError(problems)


def _template_context(
    policy: BirdPolicy,
    ibgp: IbgpOptionsIntent,
    neighbors: Sequence[IbgpNeighborIntent],
    babel: Sequence[BabelInterfaceIntent],
    maintenance: bool,
    loopback_interface: str,
) -> dict[str, Any]:
    """The variables every template sees; strings BIRD reads are quoted here."""
    node, pol = policy.node, policy.policy
    is_rr = ibgp.route_reflector if ibgp.route_reflector is not None else any(n.rr_client for n in neighbors)
    v4net = ipaddress.IPv4Network(pol.dn42_ipv4_prefix)
    v6net = ipaddress.IPv6Network(pol.dn42_ipv6_prefix)
    return {
        "node": node,
        "policy": pol,
        "config_hash": policy.config_hash,
        "asn": pol.asn,
        "ownnet4": str(v4net),
        "ownnet6": str(v6net),
        "region": node.region,
        "region_name": C.REGIONS.get(node.region, "unassigned"),
        "country": node.country,
        "node_bandwidth": node.bandwidth_dn42,
        "node_mbit": node.bandwidth_mbit,
        "continent": node.continent,
        "subregion": node.subregion,
        "bogon_asns": C.bogon_asn_set(),
        "rpki": sorted(pol.rpki_servers, key=lambda s: s.symbol),
        "maintenance": maintenance,
        "peer_dir": PEER_DIR,
        "ibgp_dir": IBGP_DIR,
        "loopback_interface": bird_string(loopback_interface, "loopbackInterface"),
        "babel_interfaces": [
            (bird_string(i.pattern, "babel.interfaces.pattern"), i)
            for i in sorted(babel, key=lambda i: i.pattern)
        ],
        "is_rr": is_rr,
        "q": bird_string,
    }


def _roa_context(policy: BirdPolicy, local: LocalRouting) -> dict[str, Any]:
    """ROA and aggregate variables of ``moenet.conf`` and ``filters.conf``."""
    return {
        "roa_mode": effective_roa_mode(policy, local),
        "rpki": rpki_caches(policy, local),
        "rpki_expire": local.rpki_expire,
        "roa_static4": bool(local.static.roa4),
        "roa_static6": bool(local.static.roa6),
        "announce_aggregates": local.announce_aggregates,
    }


def effective_deny_list(policy: BirdPolicy, local: LocalRouting) -> DenyList:
    """The local deny-list files' entries and the CP's ``policy.denyList``, merged."""
    return DenyList.merged(local.deny, policy.policy.deny_list)


def _deny_context(policy: BirdPolicy, local: LocalRouting) -> dict[str, Any]:
    """``denylist.conf``: the merged prefix patterns per family and the AS numbers."""
    deny = effective_deny_list(policy, local)
    return {"deny4": deny.patterns(4), "deny6": deny.patterns(6), "deny_asns": list(deny.asns)}


def _collector_context(policy: BirdPolicy, local: LocalRouting) -> dict[str, Any]:
    """``collector.conf``: the GRC session when the local pin or the CP turns it on.
    Its neighbour and AS were checked by the config; checked again here (a
    ``LocalRouting`` built in code), and a collector in our own AS is not rendered
    (it would be an iBGP session)."""
    collector = _effective_collector(local.collector, policy.policy.route_collector)
    problems = []
    if collector is not None:
        if err := collector_neighbor_problem(collector.neighbor):
            problems.append(f"bird.routeCollectorNeighbor: {err}")
        if err := collector_asn_problem(collector.asn):
            problems.append(f"bird.routeCollectorAs: {err}")
        if problems:
            raise BirdConfigError(problems, source="bird.routeCollector")
    why = ""
    if collector is not None:
        why = "pinned by bird.routeCollector" if local.collector.enabled else "policy.routeCollector"
    if collector is not None and collector.asn == policy.policy.asn:
        why = f"not rendered: bird.routeCollectorAs {collector.asn} is this network's own AS"
        collector = None
    v6 = collector is not None and ipaddress.ip_address(collector.neighbor).version == 6
    return {
        "collector": collector,
        "collector_why": why,
        "protocol": PROTOCOL,
        "source": "OWNIPv6" if v6 else "OWNIP",
    }


def _roa_files(local: LocalRouting) -> dict[str, str]:
    """The static ROA entries, rendered once by :mod:`.roa` (not through jinja2:
    thousands of lines would slow every apply), under the ownership header."""
    out: dict[str, str] = {}
    for path, text in ((ROA4_FILE, local.static.roa4), (ROA6_FILE, local.static.roa6)):
        if text:
            out[path] = HEADER.format(path=path) + "\n" + text
    return out


def _render_file(
    env: jinja2.Environment,
    ctx: dict[str, Any],
    path: str,
    template: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """One file's text: the ownership header, then the template's output ending
    in exactly one newline."""
    body = env.get_template(TEMPLATE_NAMES[template]).render({**ctx, **(extra or {})})
    return HEADER.format(path=path) + "\n" + body.rstrip("\n") + "\n"


def _top_files(env: jinja2.Environment, ctx: dict[str, Any], bird_conf: bool) -> dict[str, str]:
    """The top-level files (``bird.conf`` only with ``bird_conf``) and a
    placeholder in each session directory, so its include glob always matches."""
    out: dict[str, str] = {}
    for name in TOP_FILES:
        if name != BIRD_CONF or bird_conf:
            out[name] = _render_file(env, ctx, name, name)
    for d in (PEER_DIR, IBGP_DIR):
        path = f"{d}/{PLACEHOLDER}"
        out[path] = HEADER.format(path=path) + "\n# Keeps this directory (and its include glob) present.\n"
    return out


def _session_files(
    env: jinja2.Environment,
    ctx: dict[str, Any],
    policy: BirdPolicy,
    peers: Sequence[BgpPeer],
    neighbors: Sequence[IbgpNeighborIntent],
) -> dict[str, str]:
    """One file per eBGP peer, then one per iBGP neighbour (a later one of the
    same path wins)."""
    out: dict[str, str] = {}
    for p in peers:
        out[p.file_name] = _render_file(
            env,
            ctx,
            p.file_name,
            "peer",
            {
                "p": _peer_view(p),
                "sessions": _peer_sessions(p),
                **peer_limits(policy, p),
                "link": link(policy, p),
            },
        )
    is_rr = bool(ctx["is_rr"])
    for n in neighbors:
        path = ibgp_file(n)
        out[path] = _render_file(
            env,
            ctx,
            path,
            "ibgp",
            {
                "peer": _neighbor_view(n),
                "neighbor": n.loopback_ipv6 or n.loopback_ipv4,
                "source": "OWNIPv6" if n.loopback_ipv6 else "OWNIP",
                "rr_client": n.rr_client,
                "add_paths": add_paths(n, is_rr=is_rr),
                "description": bird_string(f"iBGP to {n.node_name} (node {n.node_id})", "ibgp.nodeName"),
            },
        )
    return out
