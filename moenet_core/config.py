"""Configuration: attrs models, strict structuring, and where the file comes from.

The file format is JSON, compatible with the Go agent's: camelCase keys in the
sections ``server``, ``node``, ``controlPlane``, ``bird``, ``wireguard``, ``mesh``,
``metric``, ``autoUpdate`` and ``bootstrap``, plus ours: ``plugins``, ``tasks``,
``backends``, ``state``, ``logging``. Any other top-level key is a plugin's section
and is structured by the plugin manager with the class the plugin declares.

Errors are collected, not raised one at a time: an operator sees every problem in
the file at once, each with its path (``controlPlane.token: required``). Unknown
keys are reported as warnings (the Go agent dropped them silently); a key spelled
with different case (``dn42IPv4``, which the Go agent's case-insensitive decoder
accepted) is accepted with a warning naming the right spelling.

Precedence, lowest first: built-in defaults, the CP's ``/agent/{node}/config``
answer (bootstrap mode only), the local file, the ``MOENET_*`` environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.gen import make_dict_structure_fn, override

from .errors import ConfigError

T = TypeVar("T")

SEARCH_PATH: tuple[str, ...] = (
    "./config.json",
    "/etc/moenet-agent/config.json",
    "~/.config/moenet-agent/config.json",
)

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
PLUGIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TASK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
BACKEND_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def camel(name: str) -> str:
    """``retry_initial_delay`` -> ``retryInitialDelay`` (``dn42_ipv4`` -> ``dn42Ipv4``)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# ----------------------------------------------------------------- checks
#
# A check takes the structured value and returns an error message or None. They
# run after structuring, so the message lands on the field's own path.

Check = Callable[[Any], "str | None"]


def check(fn: Check) -> dict[str, Check]:
    """Field metadata that validates the structured value: ``attrs.field(
    default=..., metadata=check(fn))`` where ``fn(value)`` returns an error
    message or None. Unlike an attrs validator, the error is reported with the
    field's own path (``loopback.kind: must be one of ...``). Plugins use it
    for their config sections too; :func:`checked` adds the same rule as an
    attrs validator."""
    return {"check": fn}


def checked(fn: Check) -> dict[str, Any]:
    """One check, attached both ways: ``attrs.field(default=..., **checked(fn))``.

    - ``metadata``: :func:`check`'s, which the core's structurer runs on the
      value read from the file, so the error carries the field's path
      (``meshSync.portBase: must be ...``) and is listed with every other
      problem of the file;
    - ``validator``: an attrs validator running the same ``fn`` whenever the
      class is instantiated (and, with ``attrs.define``, on assignment), so an
      object built in code is held to the same rules; it raises
      ``ValueError("<field name>: <message>")``.

    The structurer runs the check first, so a bad file value is reported once,
    with its path. A field that needs more metadata or validators passes them
    itself (``metadata=check(fn)``, ``validator=[...]``).
    """

    def validator(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if (msg := fn(value)) is not None:
            raise ValueError(f"{attr.name}: {msg}")

    return {"metadata": check(fn), "validator": validator}


def positive(v: float | None) -> str | None:
    return None if v is None or v > 0 else "must be greater than 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be 0 or greater"


def port(v: int | None) -> str | None:
    return None if v is None or 1 <= v <= 65535 else "must be a port number (1-65535)"


def one_of(*choices: str) -> Check:
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)} (got {v!r})"

    return check


def http_url(v: str) -> str | None:
    if not v:
        return None
    m = re.match(r"^(https?)://([^/\s?#]+)(/[^\s?#]*)?$", v)
    if not m:
        return "must be an http:// or https:// URL without query or fragment"
    return None


def node_name(v: str) -> str | None:
    if not v or NODE_NAME_RE.match(v):
        return None
    return "must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"


def _host_address(family: type[ipaddress.IPv4Interface] | type[ipaddress.IPv6Interface], bits: int) -> Check:
    """A single address of one family, bare or with a full-length prefix."""
    name = "IPv4" if bits == 32 else "IPv6"

    def check(v: str | None) -> str | None:
        if not v:
            return None
        try:
            iface = family(v)
        except ValueError as exc:
            return f"not an {name} address: {exc}"
        if iface.network.prefixlen != bits and "/" in v:
            return f"must be a single address (/{bits})"
        return None

    return check


ipv4_address = _host_address(ipaddress.IPv4Interface, 32)
ipv6_address = _host_address(ipaddress.IPv6Interface, 128)


def ipv6_link_local(v: str) -> str | None:
    if not v:
        return None
    try:
        iface = ipaddress.IPv6Interface(v)
    except ValueError as exc:
        return f"not an IPv6 address: {exc}"
    if not iface.ip.is_link_local:
        return "must be a link-local address (fe80::/10)"
    return None


def listen_address(v: str) -> str | None:
    from .api import parse_listen  # one parser for the config check and the server

    try:
        parse_listen(v)
    except ValueError as exc:
        return str(exc)
    return None


def api_token(v: str | None) -> str | None:
    if v and any(c.isspace() or not c.isprintable() for c in v):
        return "must be printable and contain no whitespace"
    return None


def log_level(v: str) -> str | None:
    return one_of("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")(v.upper())


# ----------------------------------------------------------------- models


@attrs.define(kw_only=True)
class ServerConfig:
    """The local HTTP API."""

    listen: str = attrs.field(default="127.0.0.1:24368", metadata=check(listen_address))
    """Address the local HTTP API listens on; the CLI (``moenet-agent status``...)
    reaches the agent there too. A change takes effect on restart, not on SIGHUP."""
    read_timeout: float = attrs.field(default=30.0, metadata=check(positive))
    """Seconds. Accepted for compatibility with the Go agent's files; not used."""
    write_timeout: float = attrs.field(default=30.0, metadata=check(positive))
    """Seconds. Accepted for compatibility with the Go agent's files; not used."""
    idle_timeout: float = attrs.field(default=120.0, metadata=check(positive))
    """Seconds. Accepted for compatibility with the Go agent's files; not used."""
    token: str | None = attrs.field(default=None, metadata=check(api_token))
    """Bearer token for mutating endpoints; unset means loopback clients only."""


@attrs.define(kw_only=True)
class NodeConfig:
    """Who this node is. Bootstrap mode fills it from the CP."""

    name: str = attrs.field(default="", metadata=check(node_name))
    """This node's name at the control plane: every CP call goes to
    ``/agent/<name>/...``. Required in full and standalone mode; bootstrap mode
    takes ``bootstrap.nodeName``. ``MOENET_NODE_NAME`` overrides it."""
    id: int = attrs.field(default=0, metadata=check(non_negative))
    """This node's id in the network (1-4294967295; 0: unset). The mesh derives
    this node's link-local address and the port its peers reach it on from it,
    and refuses a mesh answer whose ``localNodeId`` differs; iBGP finds this node
    in ``ibgpPeers`` by it (a different ``node.id`` in the answer is a warning).
    Unset: both take the id the CP's answer gives. ``MOENET_NODE_ID`` overrides it."""
    region: str = ""
    """Accepted for compatibility with the Go agent's files; not used (BIRD's
    region community comes from the CP's ``bird-config``)."""
    location: str = ""
    """Accepted for compatibility with the Go agent's files; not used."""
    provider: str = ""
    """Accepted for compatibility with the Go agent's files; not used."""
    asn: int | None = attrs.field(
        default=None,
        metadata=check(lambda v: None if v is None or 1 <= v <= 4294967295 else "must be a 32-bit ASN"),
    )
    """This node's own AS number. A CP session whose peer has this AS is refused
    (that is iBGP, not an eBGP peering) and reported as an error. Null: no such
    check. BIRD's own AS (``local as``) comes from the CP's ``bird-config``."""
    loopback_ipv4: str | None = attrs.field(default=None, metadata=check(ipv4_address))
    """The node's DN42 IPv4 address (bare or ``/32``): put on the loopback
    interface (``loopback`` plugin) and the local IPv4 of eBGP sessions that have
    one; an iBGP peer entry claiming it is refused. Null: ``wireguard.dn42Ipv4``
    stands in for it."""
    loopback_ipv6: str | None = attrs.field(default=None, metadata=check(ipv6_address))
    """The node's DN42 IPv6 address (bare or ``/128``): put on the loopback
    interface and the local IPv6 of eBGP sessions that have one, and the source of
    the default ``wireguard.dn42Ipv6LinkLocal``; an iBGP peer entry claiming it is
    refused. Null: ``wireguard.dn42Ipv6`` stands in for it."""


@attrs.define(kw_only=True)
class ControlPlaneConfig:
    """The control plane: where it is, how hard to try (retries, circuit
    breaker), and the task intervals the Go agent kept here. Durations are in
    seconds, except ``retryInitialDelay`` and ``retryMaxDelay``, which are in
    milliseconds (as in the Go agent)."""

    url: str = attrs.field(default="", metadata=check(http_url))
    """Base URL of the CP's API; the agent calls ``<url>/agent/<node.name>/<resource>``.
    Required in full mode (bootstrap mode takes ``bootstrap.apiUrl``). Redirects
    are not followed. ``MOENET_CP_URL`` overrides it; the CP itself cannot change it."""
    token: str = ""
    """Bearer token sent to the CP (``Authorization: Bearer ...``), never logged.
    Required in full mode (bootstrap mode takes ``bootstrap.token``).
    ``MOENET_CP_TOKEN`` overrides it."""
    source: str = attrs.field(default="http", metadata=check(one_of("http", "file")))
    """``http`` (the CP) or ``file`` (standalone: read ``file``, no CP at all)."""
    file: str = ""
    """With ``source: "file"``: the JSON file that stands in for the CP, an object
    keyed by resource (``sessions``, ``mesh``, ``bird-config``...), re-read on every
    fetch; what the agent would send is kept in the state directory. Required then."""
    request_timeout: float = attrs.field(default=15.0, metadata=check(positive))
    """Seconds one HTTP request to the CP may take (each attempt, and the bootstrap
    config fetch); a timeout counts as a failed attempt and is retried."""
    heartbeat_interval: float = attrs.field(default=30.0, metadata=check(positive))
    """Seconds between runs of the ``heartbeat`` task (its timeout is this, kept
    within 5-60 s). ``tasks.heartbeat.interval`` wins."""
    sync_interval: float = attrs.field(default=60.0, metadata=check(positive))
    """Seconds between runs of the ``sessionSync`` task (``tasks.sessionSync.interval``
    wins); also the base of the back-off for repeating a status report the CP keeps
    contradicting."""
    metric_interval: float = attrs.field(default=60.0, metadata=check(positive))
    """Seconds between runs of the ``metricCollector`` task (per-session report to
    the CP, metrics, health); ``tasks.metricCollector.interval`` wins."""
    max_retries: int = attrs.field(default=3, metadata=check(non_negative))
    """Retries of one CP request after its first attempt (0: none), for network
    errors, timeouts, HTTP 5xx and 429 only."""
    retry_initial_delay: int = attrs.field(default=1000, metadata=check(positive))
    """Milliseconds before the first retry; each further retry waits
    ``retryMultiplier`` times longer, up to ``retryMaxDelay`` (±10 % jitter; a
    ``Retry-After`` on 429/503 can lengthen it)."""
    retry_max_delay: int = attrs.field(default=30000, metadata=check(positive))
    """Milliseconds: the longest wait between two retries."""
    retry_multiplier: float = attrs.field(
        default=2.0, metadata=check(lambda v: None if v >= 1 else "must be 1 or greater")
    )
    """Factor by which each retry's wait grows (1: constant waits)."""
    breaker_failure_threshold: int = attrs.field(default=5, metadata=check(positive))
    """Consecutive failed attempts (network errors, timeouts, HTTP 5xx and 429)
    that open the circuit breaker; while it is open, CP calls fail at once
    without a request."""
    breaker_success_threshold: int = attrs.field(default=3, metadata=check(positive))
    """Successful trial calls that close a half-open breaker again (any failure
    re-opens it)."""
    breaker_open_duration: float = attrs.field(default=30.0, metadata=check(positive))
    """Seconds the breaker stays open before it lets one trial call through."""


@attrs.define(kw_only=True)
class BirdConfig:
    """BIRD 3: control socket and the directories the agent writes."""

    control_socket: str = "/var/run/bird/bird.ctl"
    """BIRD's control socket: every query and ``configure`` goes through it. The
    ``routing/bird`` backend is available when it exists or a ``bird`` binary is found."""
    pool_size: int = attrs.field(default=5, metadata=check(positive))
    """Idle control-socket connections kept open for read commands."""
    pool_size_max: int = attrs.field(default=10, metadata=check(positive))
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
    """Accepted for Go-agent compatibility; unused (see ``templateDir``)."""


@attrs.define(kw_only=True)
class WireguardConfig:
    """WireGuard: keys, keepalive, the node's DN42 loopbacks, backend choice."""

    private_key_path: str = "/etc/wireguard/private.key"
    """The node's WireGuard private key (base64), used by every eBGP session
    tunnel; generated (mode 0600) when missing. The mesh has its own key in the
    state directory."""
    public_key_path: str = ""
    """When set, the node key's public half is written here when the agent
    generates the key. Empty: not written."""
    config_dir: str = "/etc/wireguard"
    """Accepted for compatibility with the Go agent's files; not used (tunnels are
    configured over netlink and UAPI, without files)."""
    persistent_keepalive_interval: int = attrs.field(
        default=25, metadata=check(lambda v: None if 0 <= v <= 65535 else "must be 0-65535 seconds")
    )
    """Seconds between keepalives on the eBGP session tunnels, and on the mesh
    tunnels unless ``meshSync.keepalive`` is set; 0 turns them off."""
    dn42_ipv4: str = attrs.field(default="", metadata=check(ipv4_address))
    """The Go agent's name for the node's DN42 IPv4: used when
    ``node.loopbackIpv4`` is unset, and must agree with it when both are set."""
    dn42_ipv6: str = attrs.field(default="", metadata=check(ipv6_address))
    """The Go agent's name for the node's DN42 IPv6: used when
    ``node.loopbackIpv6`` is unset, and must agree with it when both are set."""
    dn42_ipv6_link_local: str = attrs.field(default="", metadata=check(ipv6_link_local))
    """Our link-local address (``/64``) on every eBGP session tunnel, and BIRD's
    local address towards link-local neighbours. Empty: derived from the IPv6
    loopback by the Go agent's rule (``fd00:4242:7777:302:1::1`` gives
    ``fe80::998:302:1:1``), or from a hash of ``node.name`` without one."""
    backend: str = attrs.field(default="auto", metadata=check(one_of("auto", "kernel", "userspace")))
    """The tunnel backend: ``kernel`` (the kernel's WireGuard), ``userspace``
    (``wireguard-go``) or ``auto`` (the available one with the highest priority).
    ``backends.tunnel`` overrides it."""


@attrs.define(kw_only=True)
class MeshConfig:
    """The WireGuard + Babel IGP mesh between this network's nodes."""

    enabled: bool = True
    """False: the ``meshSync`` task does nothing (existing mesh tunnels are left as
    they are) and the heartbeat carries no ``meshPublicKey``."""
    mtu: int = attrs.field(default=1420, metadata=check(lambda v: None if 1280 <= v <= 9000 else "1280-9000"))
    """MTU of the mesh tunnels whose peer entry names none."""


@attrs.define(kw_only=True)
class MetricConfig:
    """Probing for RTT and loss."""

    ping_timeout: float = attrs.field(default=5.0, metadata=check(positive))
    """Seconds one RTT probe waits for its reply (``rtt.timeoutMs``, in
    milliseconds, overrides it)."""
    ping_count: int = attrs.field(default=4, metadata=check(positive))
    """ICMP echo requests per address per RTT round (``rtt.count`` overrides it)."""
    ping_workers: int = attrs.field(default=32, metadata=check(positive))
    """Links probed at the same time (``rtt.concurrency`` overrides it)."""


@attrs.define(kw_only=True)
class AutoUpdateConfig:
    """The self-updater (off by default)."""

    enabled: bool = False
    """True: the ``updater`` plugin's task runs (it then needs ``updater.publicKey``:
    the config is refused without it). False: no update check at all."""
    check_interval: float = attrs.field(default=60.0, metadata=check(positive))
    """Minutes between update checks (below 1: 60, as the Go agent did)."""
    channel: str = attrs.field(default="stable", metadata=check(one_of("stable", "beta", "dev")))
    """Which releases are taken: ``stable`` only stable releases; ``beta`` also
    pre-releases; ``dev`` also ``.devN`` releases. The newest such release newer
    than the running version is installed, never one remembered as bad."""
    github_repo: str = ""
    """``owner/name`` whose GitHub releases feed is read when ``updater.feedUrl``
    is empty. Empty: ``moenet/moenet-agent``."""


@attrs.define(kw_only=True)
class BootstrapConfig:
    """Bootstrap mode: just enough to ask the CP for the rest."""

    api_url: str = attrs.field(default="", metadata=check(http_url))
    """The CP's base URL: the agent fetches ``GET <apiUrl>/agent/<nodeName>/config``
    at start and uses the URL as ``controlPlane.url``."""
    node_name: str = attrs.field(default="", metadata=check(node_name))
    """This node's name at the CP; becomes ``node.name``."""
    token: str = ""
    """Bearer token for the CP; becomes ``controlPlane.token``."""

    @property
    def configured(self) -> bool:
        return bool(self.api_url or self.node_name or self.token)


def _plugin_names(v: list[str] | None) -> str | None:
    if v is None:
        return None
    bad = [n for n in v if not PLUGIN_NAME_RE.match(n)]
    return f"invalid plugin names: {', '.join(map(repr, bad))}" if bad else None


@attrs.define(kw_only=True)
class PluginsConfig:
    """Which plugins load. Blocked plugins are never imported."""

    enable: list[str] | None = attrs.field(default=None, metadata=check(_plugin_names))
    """Allow-list: when set, only these plugins load."""
    disable: list[str] = attrs.field(factory=list, metadata=check(_plugin_names))
    """Plugins (entry-point names) never imported; wins over ``enable``."""


@attrs.define(kw_only=True)
class TaskOverride:
    """Per-task switches: ``tasks.<name>``."""

    enabled: bool = True
    """False: the task is not started (``/status`` lists it under ``tasksNotStarted``)."""
    interval: float | None = attrs.field(default=None, metadata=check(positive))
    """Seconds between runs, instead of the task's default; a SIGHUP reload
    applies a new value. Null: the default."""
    timeout: float | None = attrs.field(default=None, metadata=check(positive))
    """Seconds one run may take before it is cancelled (counted as a timeout).
    Null: the task's own timeout, else its interval."""


@attrs.define(kw_only=True)
class StateConfig:
    """Where the agent keeps what must survive a restart."""

    directory: str = "/var/lib/moenet-agent"
    """Directory of the state files (written atomically): each plugin's state
    under ``plugins/<name>/`` (outboxes, last good answers, the mesh key), the
    cached bootstrap config, and by default the preshared keys (``sessions.pskDir``)."""


@attrs.define(kw_only=True)
class LoggingConfig:
    """Log format (``auto``: JSON unless stderr is a terminal) and level."""

    format: str = attrs.field(default="auto", metadata=check(one_of("auto", "json", "text")))
    """Log lines on stderr as ``json`` (one object a line) or ``text``; ``auto``:
    text on a terminal, JSON otherwise (under systemd)."""
    level: str = attrs.field(default="INFO", metadata=check(log_level))
    """The lowest level logged (any case)."""


def _task_names(v: dict[str, TaskOverride]) -> str | None:
    bad = [n for n in v if not TASK_NAME_RE.match(n)]
    return f"invalid task names: {', '.join(map(repr, bad))}" if bad else None


def _backend_choices(v: dict[str, str]) -> str | None:
    bad = [f"{k}={n}" for k, n in v.items() if not (BACKEND_NAME_RE.match(k) and BACKEND_NAME_RE.match(n))]
    return f"invalid backend selections: {', '.join(bad)}" if bad else None


@attrs.define(kw_only=True)
class AgentConfig:
    """The whole configuration (core sections; plugin sections in ``plugin_sections``)."""

    server: ServerConfig = attrs.field(factory=ServerConfig)
    node: NodeConfig = attrs.field(factory=NodeConfig)
    control_plane: ControlPlaneConfig = attrs.field(factory=ControlPlaneConfig)
    bird: BirdConfig = attrs.field(factory=BirdConfig)
    wireguard: WireguardConfig = attrs.field(factory=WireguardConfig)
    mesh: MeshConfig = attrs.field(factory=MeshConfig)
    metric: MetricConfig = attrs.field(factory=MetricConfig)
    auto_update: AutoUpdateConfig = attrs.field(factory=AutoUpdateConfig)
    bootstrap: BootstrapConfig = attrs.field(factory=BootstrapConfig)
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    tasks: dict[str, TaskOverride] = attrs.field(factory=dict, metadata=check(_task_names))
    backends: dict[str, str] = attrs.field(factory=dict, metadata=check(_backend_choices))
    """Backend choice per kind (``auto`` or a name); ``tunnel`` defaults to ``wireguard.backend``."""
    state: StateConfig = attrs.field(factory=StateConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)

    # Not read from the file's core sections:
    plugin_sections: dict[str, Any] = attrs.field(factory=dict, metadata={"internal": True})
    """Raw top-level sections that belong to plugins (structured by the plugin manager)."""
    mode: str = attrs.field(default="full", metadata={"internal": True})
    """``full``, ``bootstrap`` or ``standalone``."""
    source: str | None = attrs.field(default=None, metadata={"internal": True})
    """The file the config came from, if any."""

    def task_interval(self, name: str, default: float) -> float:
        """The configured interval of task ``name``, else ``default``."""
        override = self.tasks.get(name)
        return override.interval if override and override.interval else default

    def backend_choice(self, kind: str) -> str:
        """The configured backend name for ``kind`` (``auto`` when unset)."""
        if kind in self.backends:
            return self.backends[kind]
        if kind == "tunnel":
            return self.wireguard.backend
        return "auto"

    @property
    def loopback_ipv4(self) -> str | None:
        return self.node.loopback_ipv4 or self.wireguard.dn42_ipv4 or None

    @property
    def loopback_ipv6(self) -> str | None:
        return self.node.loopback_ipv6 or self.wireguard.dn42_ipv6 or None


CORE_SECTIONS: dict[str, str] = {
    camel(f.name): f.name for f in attrs.fields(AgentConfig) if not f.metadata.get("internal")
}
"""camelCase section key -> AgentConfig attribute."""


# -------------------------------------------------------------- converter


def _strict_bool(value: Any, _t: type) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected true or false, got {json.dumps(value)}")


def _strict_int(value: Any, _t: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"expected an integer, got {json.dumps(value)}")
    return value


def _strict_float(value: Any, _t: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {json.dumps(value)}")
    return float(value)


def _strict_str(value: Any, _t: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {json.dumps(value)}")
    return value


def make_converter() -> cattrs.Converter:
    """A converter that is strict about JSON types and maps camelCase keys."""
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)

    def strict_list(tp: Any) -> Callable[[Any, type], Any]:
        default = list_structure_factory(tp, conv)

        def hook(value: Any, t: type) -> Any:
            if not isinstance(value, list):  # a string would otherwise become a list of characters
                raise TypeError(f"expected a list, got {json.dumps(value)}")
            return default(value, t)

        return hook

    def strict_dict(tp: Any) -> Callable[[Any, type], Any]:
        default = mapping_structure_factory(tp, conv)

        def hook(value: Any, t: type) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {json.dumps(value)}")
            return default(value, t)

        return hook

    def is_list(tp: Any) -> bool:
        return bool(get_origin(tp) is list)

    def is_dict(tp: Any) -> bool:
        return bool(get_origin(tp) is dict)

    conv.register_structure_hook_factory(is_list, strict_list)
    conv.register_structure_hook_factory(is_dict, strict_dict)

    def factory(cls: type) -> Callable[[Any, type], Any]:
        renames = {f.name: override(rename=camel(f.name)) for f in attrs.fields(cls)}
        return make_dict_structure_fn(cls, conv, **renames)  # type: ignore[arg-type]

    conv.register_structure_hook_factory(attrs.has, factory)
    return conv


CONVERTER = make_converter()


def _format_cattrs_error(exc: BaseException, prefix: str) -> list[str]:
    def fmt(e: BaseException, _type: type | None) -> str:
        if isinstance(e, KeyError):
            return "required"
        if isinstance(e, TypeError | ValueError) and e.args:
            return str(e.args[0])
        return str(e) or type(e).__name__

    problems = []
    for line in cattrs.transform_error(exc, path="", format_exception=fmt):
        msg, _, sub = line.rpartition(" @ ")
        sub = re.sub(r"\['([^']*)'\]", r".\1", sub)
        full = (
            f"{prefix}{sub}" if sub.startswith("[") else ".".join(p for p in (prefix, sub.lstrip(".")) if p)
        )
        problems.append(f"{full}: {msg}" if full else msg)
    return problems


def _fields(cls: type) -> list[attrs.Attribute[Any]]:
    attrs.resolve_types(cls)
    return [f for f in attrs.fields(cls) if not f.metadata.get("internal")]


def _model_type(tp: Any) -> tuple[type | None, str]:
    """The attrs class inside a field type and how it is held:
    ``("plain"|"optional"|"dict")``, or ``(None, "")`` for a plain value."""
    if attrs.has(tp):
        return tp, "plain"
    args = get_args(tp)
    if get_origin(tp) is dict and len(args) == 2 and attrs.has(args[1]):
        return args[1], "dict"
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and attrs.has(inner[0]):
            return inner[0], "optional"
    return None, ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _structure_obj(cls: type, data: Any, path: str, problems: list[str], warnings: list[str]) -> Any:
    """Structure one attrs object field by field, so that one bad field never
    hides the problems of its siblings. Returns None when anything failed."""
    if not isinstance(data, dict):
        problems.append(f"{path or '(top level)'}: expected an object, got {_describe(data)}")
        return None
    fields = _fields(cls)
    known = {camel(f.name): f for f in fields}
    lower = {k.lower(): k for k in known}
    values: dict[str, Any] = {}
    for key, value in data.items():
        canonical = key if key in known else lower.get(str(key).lower())
        if canonical is None:
            warnings.append(f"{_join(path, str(key))}: unknown key, ignored")
            continue
        if canonical != key:
            if canonical in data:
                warnings.append(f"{_join(path, str(key))}: duplicate of {canonical!r}, ignored")
                continue
            warnings.append(f"{_join(path, str(key))}: accepted as {canonical!r} (spell it that way)")
        values[canonical] = value

    ok = True
    kwargs: dict[str, Any] = {}
    for key, f in known.items():
        fpath = _join(path, key)
        if key not in values:
            if f.default is attrs.NOTHING:
                problems.append(f"{fpath}: required")
                ok = False
            continue
        value = values[key]
        sub, how = _model_type(f.type)
        before = len(problems)
        if how == "plain" or (how == "optional" and value is not None):
            result = _structure_obj(sub, value, fpath, problems, warnings)  # type: ignore[arg-type]
        elif how == "dict":
            if not isinstance(value, dict):
                problems.append(f"{fpath}: expected an object, got {_describe(value)}")
                result = None
            else:
                result = {
                    str(k): _structure_obj(sub, v, _join(fpath, str(k)), problems, warnings)  # type: ignore[arg-type]
                    for k, v in value.items()
                }
        elif how == "optional":
            result = None
        else:
            try:
                result = CONVERTER.structure(value, cast(Any, f.type))
            except Exception as exc:
                problems.extend(_format_cattrs_error(exc, fpath))
        if len(problems) > before:
            ok = False
            continue
        check = f.metadata.get("check")
        if check is not None and (msg := check(result)):
            problems.append(f"{fpath}: {msg}")
            ok = False
            continue
        kwargs[f.name] = result
    if not ok:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{path or '(top level)'}: {exc}")
        return None


def structure(cls: type[T], data: Any, path: str, warnings: list[str]) -> tuple[T | None, list[str]]:
    """Structure ``data`` into the attrs class ``cls``.

    Returns ``(object, [])`` or ``(None, problems)``; every problem carries its
    path below ``path``. Unknown keys become warnings.
    """
    problems: list[str] = []
    obj = _structure_obj(cls, {} if data is None else data, path, problems, warnings)
    return (obj if not problems else None), problems


# ------------------------------------------------------------- assembling


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Objects merge key by key; anything else in ``over`` replaces ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def is_bootstrap(raw: Mapping[str, Any]) -> bool:
    """A file with a non-empty ``bootstrap`` section is a bootstrap config."""
    boot = raw.get("bootstrap")
    return isinstance(boot, Mapping) and any(boot.get(k) for k in ("apiUrl", "nodeName", "token"))


def apply_env(raw: dict[str, Any], env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Overlay ``MOENET_NODE_NAME``/``_NODE_ID``/``_CP_URL``/``_CP_TOKEN``."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    boot = is_bootstrap(raw)

    def put(section: str, key: str, value: Any) -> None:
        sec = out.get(section)
        out[section] = dict(sec) if isinstance(sec, Mapping) else {}
        out[section][key] = value

    if (v := env.get("MOENET_NODE_NAME")) is not None:
        put("node", "name", v)
        if boot:
            put("bootstrap", "nodeName", v)
    if (v := env.get("MOENET_NODE_ID")) is not None:
        try:
            put("node", "id", int(v))
        except ValueError:
            problems.append(f"MOENET_NODE_ID: expected an integer, got {v!r}")
    if (v := env.get("MOENET_CP_URL")) is not None:
        put("controlPlane", "url", v)
        if boot:
            put("bootstrap", "apiUrl", v)
    if (v := env.get("MOENET_CP_TOKEN")) is not None:
        put("controlPlane", "token", v)
        if boot:
            put("bootstrap", "token", v)
    return out


def remote_overlay(remote: Any, problems: list[str]) -> dict[str, Any]:
    """The CP's ``/agent/{node}/config`` answer as a config overlay.

    Only sections the CP may decide are taken (node, bird, wireguard, mesh,
    metric, autoUpdate, controlPlane intervals, tasks, backends); local-only
    settings (server, plugins, state, logging, bootstrap) are never taken from
    the network.
    """
    if not isinstance(remote, Mapping):
        problems.append("control plane config: expected an object")
        return {}
    allowed = {
        "node",
        "bird",
        "wireguard",
        "mesh",
        "metric",
        "autoUpdate",
        "controlPlane",
        "tasks",
        "backends",
    }
    overlay = {k: v for k, v in remote.items() if k in allowed}
    cp = overlay.get("controlPlane")
    if isinstance(cp, Mapping):
        # The CP may tune intervals but never redirect the agent or change its token.
        overlay["controlPlane"] = {k: v for k, v in cp.items() if k not in ("url", "token", "source", "file")}
    return overlay


def build_config(
    raw: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    remote: Any = None,
    source: str | None = None,
) -> tuple[AgentConfig, list[str]]:
    """Assemble and validate the configuration.

    Returns the config and the warnings; raises :class:`ConfigError` listing
    every problem when it is invalid.
    """
    problems: list[str] = []
    warnings: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError(["(top level): expected a JSON object"], source)
    env = os.environ if env is None else env
    bootstrap_mode = is_bootstrap(raw)
    local = apply_env(dict(raw), env, problems)
    merged = local
    if remote is not None:
        merged = deep_merge(remote_overlay(remote, problems), local)

    core_raw: dict[str, Any] = {}
    plugin_raw: dict[str, Any] = {}
    lower_core = {k.lower(): k for k in CORE_SECTIONS}
    for key, value in merged.items():
        canonical = key if key in CORE_SECTIONS else lower_core.get(str(key).lower())
        if canonical is None:
            plugin_raw[key] = value
            continue
        if canonical != key:
            warnings.append(f"{key}: accepted as {canonical!r} (spell it that way)")
        core_raw[canonical] = value

    cfg, errs = structure(AgentConfig, core_raw, "", warnings)
    problems.extend(errs)
    if cfg is None:
        raise ConfigError(problems, source)

    cfg.plugin_sections = plugin_raw
    cfg.source = source
    if cfg.control_plane.source == "file":
        cfg.mode = "standalone"
    elif bootstrap_mode:
        cfg.mode = "bootstrap"
    else:
        cfg.mode = "full"

    if bootstrap_mode:
        boot = cfg.bootstrap
        for key, value in (("apiUrl", boot.api_url), ("nodeName", boot.node_name), ("token", boot.token)):
            if not value:
                problems.append(f"bootstrap.{key}: required")
        if remote is not None:
            if cfg.node.name and boot.node_name and cfg.node.name != boot.node_name:
                warnings.append(
                    f"node.name: the CP calls this node {cfg.node.name!r}; "
                    f"using {boot.node_name!r} from bootstrap"
                )
            cfg.node.name = boot.node_name
            cfg.control_plane.url = boot.api_url
            cfg.control_plane.token = boot.token
    elif cfg.mode == "standalone":
        if not cfg.control_plane.file:
            problems.append("controlPlane.file: required when controlPlane.source is 'file'")
        if not cfg.node.name:
            problems.append("node.name: required")
    else:
        if not cfg.node.name:
            problems.append("node.name: required")
        if not cfg.control_plane.url:
            problems.append("controlPlane.url: required (or use a bootstrap section)")
        if not cfg.control_plane.token:
            problems.append("controlPlane.token: required")

    if cfg.control_plane.retry_max_delay < cfg.control_plane.retry_initial_delay:
        problems.append("controlPlane.retryMaxDelay: must not be smaller than retryInitialDelay")
    if cfg.bird.pool_size_max < cfg.bird.pool_size:
        problems.append("bird.poolSizeMax: must not be smaller than poolSize")
    if cfg.bird.ebgp_conf_template_file:
        warnings.append(
            "bird.ebgpConfTemplateFile: not used by this agent; put overrides in bird.templateDir"
        )
    for n, (sec, key) in enumerate(
        ((cfg.node.loopback_ipv4, cfg.wireguard.dn42_ipv4), (cfg.node.loopback_ipv6, cfg.wireguard.dn42_ipv6))
    ):
        if sec and key and sec.split("/")[0] != key.split("/")[0]:
            fam = "Ipv4" if n == 0 else "Ipv6"
            problems.append(f"node.loopback{fam}: disagrees with wireguard.dn42{fam} ({sec} vs {key})")
    if problems:
        raise ConfigError(problems, source)
    return cfg, warnings


# ------------------------------------------------------------ file access


def find_config_file(explicit: str | None = None) -> Path:
    """The config file: ``explicit`` if given, else the first of :data:`SEARCH_PATH`."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError([f"{explicit}: no such file"])
        return path
    for candidate in SEARCH_PATH:
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
    raise ConfigError([f"no config file found; looked for {', '.join(SEARCH_PATH)} (or pass -c FILE)"])


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the JSON file; a syntax error reports line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc.reason} at byte {exc.start}"], str(path)) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"line {exc.lineno} column {exc.colno}: {exc.msg}"], str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a JSON object"], str(path))
    return data


def to_dict(cfg: AgentConfig) -> dict[str, Any]:
    """The config as the JSON the file would hold (camelCase; secrets masked)."""

    def dump(obj: Any) -> Any:
        if attrs.has(type(obj)):
            return {
                camel(f.name): dump(getattr(obj, f.name))
                for f in attrs.fields(type(obj))
                if not f.metadata.get("internal")
            }
        if isinstance(obj, dict):
            return {k: dump(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [dump(v) for v in obj]
        return obj

    out: dict[str, Any] = dump(cfg)
    for section, key in (("server", "token"), ("controlPlane", "token"), ("bootstrap", "token")):
        if out[section].get(key):
            out[section][key] = "***"
    out.update({k: v for k, v in cfg.plugin_sections.items() if k not in out})
    return out
