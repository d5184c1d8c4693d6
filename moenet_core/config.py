"""Configuration: attrs models, strict structuring, and where the file comes from.

The file format is JSON, compatible with the Go agent's: camelCase keys. The core
owns the sections ``server``, ``node``, ``controlPlane``, ``bootstrap``,
``plugins``, ``tasks``, ``backends``, ``state`` and ``logging``; any other
top-level key is a plugin's section (``bird``, ``wireguard``, ``mesh``, ``rtt``,
``updater``...), structured by the plugin manager with the class the plugin
declares (:class:`~moenet_core.descriptors.ConfigSection`). A plugin section may
declare deprecated names (``birdAgent``, ``tunnel``, ``meshSync``, the Go agent's
``metric`` and ``autoUpdate``), and single keys it takes from another section
(``wireguard.privateKeyPath`` is the ``sessions`` plugin's): :func:`merge_sections`
folds them in with a deprecation warning. The Go agent's ``wireguard.dn42Ipv4/6``
are the core's own legacy spelling of ``node.loopbackIpv4/6``.

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
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.gen import make_dict_structure_fn, override

from . import jsonlimits
from .errors import ConfigError

if TYPE_CHECKING:
    from .descriptors import ConfigSection, SectionAlias

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


#: Field metadata key: the control plane's bootstrap answer may set this key.
CP_SETTABLE = "cp_settable"


def cp_settable(metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Field metadata saying that the CP's ``/agent/{node}/config`` answer
    (bootstrap mode) may set this key: ``attrs.field(default=...,
    metadata=cp_settable())``, or ``check(fn, cp=True)`` / ``checked(fn, cp=True)``.

    Every key is local only unless its owner marks it so: a key that names a
    file, directory, socket, binary, template, key or update source, or that
    decides which code runs, must never be marked (the CP decides the desired
    state, never what runs or where files go). A key the CP sets that is not
    marked is ignored with a warning naming it (:func:`remote_settable`). A
    field holding an attrs class (or a dict of them) marked settable lets the
    CP set the inner keys that are marked in turn.
    """
    return {**(metadata or {}), CP_SETTABLE: True}


def check(fn: Check, *, cp: bool = False) -> dict[str, Any]:
    """Field metadata that validates the structured value: ``attrs.field(
    default=..., metadata=check(fn))`` where ``fn(value)`` returns an error
    message or None. Unlike an attrs validator, the error is reported with the
    field's own path (``loopback.kind: must be one of ...``). Plugins use it
    for their config sections too; :func:`checked` adds the same rule as an
    attrs validator. ``cp=True``: the control plane may set the key too
    (:func:`cp_settable`)."""
    return cp_settable({"check": fn}) if cp else {"check": fn}


def checked(fn: Check, *, cp: bool = False) -> dict[str, Any]:
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
    itself (``metadata=check(fn)``, ``validator=[...]``). ``cp=True``: the
    control plane may set the key too (:func:`cp_settable`).
    """

    def validator(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if (msg := fn(value)) is not None:
            raise ValueError(f"{attr.name}: {msg}")

    return {"metadata": check(fn, cp=cp), "validator": validator}


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


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (a URL's host: a name, an IPv4 or a bracketed or bare
    IPv6 address) is this machine: ``localhost`` and names under ``.localhost``,
    127.0.0.0/8, ``::1`` and ``::ffff:127.x``."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def insecure_url_warning(url: str, key: str) -> str | None:
    """A warning when ``url`` is plain ``http://`` to a host other than this
    machine (the bearer token and every answer travel in cleartext; whoever is on
    the path becomes the CP), else None."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname
    except ValueError:
        return None
    if parsed.scheme.lower() != "http" or not host or is_loopback_host(host):
        return None
    return (
        f"{key}: plain http:// to {host}: the CP token and the CP's answers travel "
        "unencrypted and anyone on the path can act as the control plane; use https://"
    )


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


#: The shortest token (``server.token``, ``controlPlane.token``, ``bootstrap.token``)
#: the config accepts. Logs redact every registered secret of at least 6 characters
#: (``moenet_core.logs``: replacing every "abc" in every line would mangle the logs
#: and, by where the ``***`` land, give the token away); refusing shorter tokens here
#: means every token the agent holds is redacted, and none is trivially guessed.
MIN_TOKEN_LENGTH = 8


def api_token(v: str | None) -> str | None:
    """A token (``server.token``, ``controlPlane.token``, ``bootstrap.token``): empty
    (unset), or at least :data:`MIN_TOKEN_LENGTH` printable characters without
    whitespace. The message never contains the value."""
    if not v:
        return None
    if any(c.isspace() or not c.isprintable() for c in v):
        return "must be printable and contain no whitespace"
    if len(v) < MIN_TOKEN_LENGTH:
        return (
            f"must be at least {MIN_TOKEN_LENGTH} characters (got {len(v)}): a shorter token could "
            "not be redacted from the logs; use a long random one (e.g. openssl rand -hex 16)"
        )
    return None


def host_names(v: list[str]) -> str | None:
    from .api import _HOSTNAME  # one pattern for the config check and the Host check

    for name in v:
        bare = name.strip("[]") if name.startswith("[") else name
        if _HOSTNAME.match(bare.rstrip(".")) is None and not _is_ip(bare):
            return f"{name!r} is not a host name or address (no port, no wildcard)"
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def log_level(v: str) -> str | None:
    return one_of("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")(v.upper())


# ----------------------------------------------------------------- models


@attrs.define(kw_only=True)
class ServerConfig:
    """The local HTTP API."""

    listen: str = attrs.field(default="127.0.0.1:24368", metadata=check(listen_address))
    """Address the local HTTP API listens on; the CLI (``moenet-agent status``...)
    reaches the agent there too. A change takes effect on restart, not on SIGHUP."""
    read_timeout: float = attrs.field(default=10.0, metadata=check(positive))
    """Seconds a client has to send a complete request header, counted from
    connecting (or from the first byte of its next request on a kept-alive
    connection); then the agent closes the connection."""
    write_timeout: float = attrs.field(default=30.0, metadata=check(positive))
    """Seconds. Accepted for compatibility with the Go agent's files; not used."""
    idle_timeout: float = attrs.field(default=120.0, metadata=check(positive))
    """Seconds a kept-alive connection may wait for its next request before the
    agent closes it."""
    max_connections: int = attrs.field(default=64, metadata=check(positive))
    """Most connections the API holds open at once. At the cap the oldest one
    without a request in progress is closed to make room; when every one has a
    request running, the new one is closed at once
    (``moenet_api_connections_dropped_total``)."""
    allowed_hosts: list[str] = attrs.field(factory=list, metadata=check(host_names))
    """Names (or addresses) the API answers to in the ``Host`` header besides
    ``localhost``, loopback addresses, the ``listen`` host and the address the
    client connected to; any other Host gets ``421`` on every route (a
    DNS-rebinding page in a browser). Add the name a scraper or reverse proxy
    uses to reach the agent."""
    token: str | None = attrs.field(default=None, metadata=check(api_token))
    """Bearer token for mutating endpoints and for plugin routes that call the
    control plane or show the topology (``/plugins/<plugin>/plan``); unset
    means loopback clients only. Required when ``listen`` is not loopback.
    ``moenet-agent status`` and ``plan`` send it."""


@attrs.define(kw_only=True)
class NodeConfig:
    """Who this node is. Bootstrap mode fills it from the CP."""

    name: str = attrs.field(default="", metadata=check(node_name, cp=True))
    """This node's name at the control plane: every CP call goes to
    ``/agent/<name>/...``. Required in full and standalone mode; bootstrap mode
    takes ``bootstrap.nodeName``. ``MOENET_NODE_NAME`` overrides it."""
    id: int = attrs.field(default=0, metadata=check(non_negative, cp=True))
    """This node's id in the network (1-4294967295; 0: unset). The mesh derives
    this node's link-local address and the port its peers reach it on from it,
    and refuses a mesh answer whose ``localNodeId`` differs; iBGP finds this node
    in ``ibgpPeers`` by it (a different ``node.id`` in the answer is a warning).
    Unset: both take the id the CP's answer gives. ``MOENET_NODE_ID`` overrides it."""
    region: str = attrs.field(default="", metadata=cp_settable())
    """Accepted for compatibility with the Go agent's files; not used (BIRD's
    region community comes from the CP's ``bird-config``)."""
    location: str = attrs.field(default="", metadata=cp_settable())
    """Accepted for compatibility with the Go agent's files; not used."""
    provider: str = attrs.field(default="", metadata=cp_settable())
    """Accepted for compatibility with the Go agent's files; not used."""
    asn: int | None = attrs.field(
        default=None,
        metadata=check(
            lambda v: None if v is None or 1 <= v <= 4294967295 else "must be a 32-bit ASN", cp=True
        ),
    )
    """This node's own AS number. A CP session whose peer has this AS is refused
    (that is iBGP, not an eBGP peering) and reported as an error. Null: the AS of
    the CP's ``bird-config`` (``policy.dn42As``, BIRD's ``local as``) is used once
    known. Set here and in the CP's ``config`` or ``bird-config``, they must agree
    (as must ``id`` and the loopbacks): a mismatch is an error naming both."""
    loopback_ipv4: str | None = attrs.field(default=None, metadata=check(ipv4_address, cp=True))
    """The node's DN42 IPv4 address (bare or ``/32``): put on the loopback
    interface (``loopback`` plugin) and the local IPv4 of eBGP sessions that have
    one; an iBGP peer entry claiming it is refused. The Go agent's
    ``wireguard.dn42Ipv4`` is read as this key (deprecated; both set: they must agree)."""
    loopback_ipv6: str | None = attrs.field(default=None, metadata=check(ipv6_address, cp=True))
    """The node's DN42 IPv6 address (bare or ``/128``): put on the loopback
    interface and the local IPv6 of eBGP sessions that have one, and the source of
    the default ``sessions.dn42Ipv6LinkLocal``; an iBGP peer entry claiming it is
    refused. The Go agent's ``wireguard.dn42Ipv6`` is read as this key (deprecated;
    both set: they must agree)."""


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
    token: str = attrs.field(default="", metadata=check(api_token))
    """Bearer token sent to the CP (``Authorization: Bearer ...``), never logged.
    Required in full mode (bootstrap mode takes ``bootstrap.token``).
    ``MOENET_CP_TOKEN`` overrides it."""
    source: str = attrs.field(default="http", metadata=check(one_of("http", "file")))
    """``http`` (the CP) or ``file`` (standalone: read ``file``, no CP at all)."""
    file: str = ""
    """With ``source: "file"``: the JSON file that stands in for the CP, an object
    keyed by resource (``sessions``, ``mesh``, ``bird-config``...), re-read on every
    fetch; what the agent would send is kept in the state directory. Required then."""
    request_timeout: float = attrs.field(default=15.0, metadata=check(positive, cp=True))
    """Seconds one HTTP request to the CP may take (each attempt, and the bootstrap
    config fetch); a timeout counts as a failed attempt and is retried."""
    heartbeat_interval: float = attrs.field(default=30.0, metadata=check(positive, cp=True))
    """Seconds between runs of the ``heartbeat`` task (its timeout is this, kept
    within 5-60 s). ``tasks.heartbeat.interval`` wins."""
    sync_interval: float = attrs.field(default=60.0, metadata=check(positive, cp=True))
    """Seconds between runs of the ``sessionSync`` task (``tasks.sessionSync.interval``
    wins); also the base of the back-off for repeating a status report the CP keeps
    contradicting."""
    metric_interval: float = attrs.field(default=60.0, metadata=check(positive, cp=True))
    """Seconds between runs of the ``metricCollector`` task (per-session report to
    the CP, metrics, health); ``tasks.metricCollector.interval`` wins."""
    max_retries: int = attrs.field(default=3, metadata=check(non_negative, cp=True))
    """Retries of one CP request after its first attempt (0: none), for network
    errors, timeouts, HTTP 5xx and 429 only."""
    retry_initial_delay: int = attrs.field(default=1000, metadata=check(positive, cp=True))
    """Milliseconds before the first retry; each further retry waits
    ``retryMultiplier`` times longer, up to ``retryMaxDelay`` (±10 % jitter; a
    ``Retry-After`` on 429/503 can lengthen it)."""
    retry_max_delay: int = attrs.field(default=30000, metadata=check(positive, cp=True))
    """Milliseconds: the longest wait between two retries."""
    retry_multiplier: float = attrs.field(
        default=2.0, metadata=check(lambda v: None if v >= 1 else "must be 1 or greater", cp=True)
    )
    """Factor by which each retry's wait grows (1: constant waits)."""
    breaker_failure_threshold: int = attrs.field(default=5, metadata=check(positive, cp=True))
    """Consecutive failed attempts (network errors, timeouts, HTTP 5xx and 429)
    that open the circuit breaker; while it is open, CP calls fail at once
    without a request."""
    breaker_success_threshold: int = attrs.field(default=3, metadata=check(positive, cp=True))
    """Successful trial calls that close a half-open breaker again (any failure
    re-opens it)."""
    breaker_open_duration: float = attrs.field(default=30.0, metadata=check(positive, cp=True))
    """Seconds the breaker stays open before it lets one trial call through."""
    status_scheme: str = attrs.field(default="seed", metadata=check(one_of("seed", "go")))
    """How the CP numbers session statuses: ``seed`` (0 DISABLED, 1 ACTIVE, 2 ERROR,
    3 PENDING_REVIEW, 4 QUEUED_FOR_SETUP, 5 QUEUED_FOR_DELETE, 6 SETUP_FAILED) or
    ``go``, the Go agent's (0 Deleted, 1 Disabled, 2 Enabled, 3 PendingApproval,
    4 QueuedForSetup, 5 QueuedForDelete, 6 Problem, 7 Teardown), mapped both ways
    (docs/migration.md). Local only: never guessed from the CP's data, and the CP
    cannot change it."""
    max_response_bytes: int = attrs.field(default=16 * 1024 * 1024, metadata=check(positive))
    """Largest CP response body read, in bytes (default 16 MiB), after decompression;
    a larger answer is never read past the cap and is refused like an invalid one
    (bootstrap then starts from its cached config). Local only: the CP cannot raise it."""


@attrs.define(kw_only=True)
class BootstrapConfig:
    """Bootstrap mode: just enough to ask the CP for the rest."""

    api_url: str = attrs.field(default="", metadata=check(http_url))
    """The CP's base URL: the agent fetches ``GET <apiUrl>/agent/<nodeName>/config``
    at start and uses the URL as ``controlPlane.url``."""
    node_name: str = attrs.field(default="", metadata=check(node_name))
    """This node's name at the CP; becomes ``node.name``."""
    token: str = attrs.field(default="", metadata=check(api_token))
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
    """False: the task is not started (``/status`` lists it under ``tasksNotStarted``).
    Local only: the control plane may tune a task's interval and timeout, not
    switch it off (that would freeze the updater, for one)."""
    interval: float | None = attrs.field(default=None, metadata=check(positive, cp=True))
    """Seconds between runs, instead of the task's default; a SIGHUP reload
    applies a new value. Null: the default."""
    timeout: float | None = attrs.field(default=None, metadata=check(positive, cp=True))
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
    node: NodeConfig = attrs.field(factory=NodeConfig, metadata=cp_settable())
    control_plane: ControlPlaneConfig = attrs.field(factory=ControlPlaneConfig, metadata=cp_settable())
    bootstrap: BootstrapConfig = attrs.field(factory=BootstrapConfig)
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    tasks: dict[str, TaskOverride] = attrs.field(factory=dict, metadata=check(_task_names, cp=True))
    backends: dict[str, str] = attrs.field(factory=dict, metadata=check(_backend_choices))
    """Backend choice per kind (``auto`` or a name). ``auto`` (or no entry) lets the
    plugins decide (``moenet_select_backend``: the wireguard plugin answers
    ``wireguard.backend`` for ``tunnel``), else the available one with the highest
    priority. Local only: which code drives the node is not the CP's to say."""
    state: StateConfig = attrs.field(factory=StateConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)

    # Not read from the file's core sections:
    plugin_sections: dict[str, Any] = attrs.field(factory=dict, metadata={"internal": True})
    """Raw top-level sections that belong to plugins (structured by the plugin manager)."""
    remote_sections: dict[str, Any] = attrs.field(factory=dict, metadata={"internal": True})
    """The plugin sections of the CP's bootstrap answer, raw: merged under the
    local ones key by key, only the keys their section marks settable
    (:func:`cp_settable`; :func:`merge_sections`)."""
    sections: dict[str, Any] = attrs.field(factory=dict, metadata={"internal": True})
    """The plugin sections as structured by the core (section name -> object; aliases
    merged in), filled by ``structure_plugin_sections``. A plugin reads its own with
    ``ctx.section``, or in a hook that only gets the config with ``DECL.of(config)``."""
    mode: str = attrs.field(default="full", metadata={"internal": True})
    """``full``, ``bootstrap`` or ``standalone``."""
    source: str | None = attrs.field(default=None, metadata={"internal": True})
    """The file the config came from, if any."""
    node_sources: dict[str, str] = attrs.field(factory=dict, metadata={"internal": True})
    """Where each identity key of ``node`` came from (``asn``, ``id``,
    ``loopback_ipv4/6`` -> the local file or the CP's answer;
    :mod:`moenet_core.identity`)."""

    def task_interval(self, name: str, default: float) -> float:
        """The configured interval of task ``name``, else ``default``."""
        override = self.tasks.get(name)
        return override.interval if override and override.interval else default

    def backend_choice(self, kind: str) -> str:
        """The configured backend name for ``kind`` (``auto`` when unset)."""
        return self.backends.get(kind, "auto")

    @property
    def loopback_ipv4(self) -> str | None:
        """``node.loopbackIpv4`` (which the Go agent's ``wireguard.dn42Ipv4`` fills)."""
        return self.node.loopback_ipv4 or None

    @property
    def loopback_ipv6(self) -> str | None:
        """``node.loopbackIpv6`` (which the Go agent's ``wireguard.dn42Ipv6`` fills)."""
        return self.node.loopback_ipv6 or None


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


# ------------------------------------------------------ plugin sections


@attrs.define
class MergedSections:
    """What :func:`merge_sections` made of the raw plugin sections."""

    values: dict[str, Any] = attrs.field(factory=dict)
    """Section name -> its raw value with the aliases' keys merged in (present
    only when the file has the section or one of its aliases)."""
    origins: dict[str, dict[str, str]] = attrs.field(factory=dict)
    """Section name -> key -> the old path it was read from (``metric.pingTimeout``)."""
    warnings: list[str] = attrs.field(factory=list)
    problems: dict[str, list[str]] = attrs.field(factory=dict)
    """Section name -> problems of its aliases (an old section that is not an object)."""
    consumed: set[str] = attrs.field(factory=set)
    """Top-level keys fully taken (the sections and their aliases)."""
    leftovers: dict[str, list[str]] = attrs.field(factory=dict)
    """Old sections partly taken by single-key aliases, with no section of their
    own: top-level key -> the keys nobody took."""

    def origin_of(self, section: str, message: str) -> str:
        """``message`` (``rtt.timeoutMs: ...``) with the path the user wrote when the
        key came from an alias (``metric.pingTimeout (as rtt.timeoutMs): ...``)."""
        for key, where in self.origins.get(section, {}).items():
            path = f"{section}.{key}"
            if message.startswith(path) and message[len(path) : len(path) + 1] in (":", ".", "["):
                return f"{where} (as {path}){message[len(path) :]}"
        return message


def _get_ci(obj: Mapping[str, Any], key: str) -> tuple[str, Any] | None:
    lower = key.lower()
    for k, v in obj.items():
        if str(k).lower() == lower:
            return str(k), v
    return None


def merge_sections(
    raw: Mapping[str, Any], decls: Sequence[ConfigSection], *, remote: Mapping[str, Any] | None = None
) -> MergedSections:
    """Fold the aliases of ``decls`` into their sections (see
    :class:`~moenet_core.descriptors.SectionAlias`).

    Per key of a section the first value wins: the section's own, then each
    alias in declared order; a later one is ignored with a warning (none for a
    ``fallback`` alias). A null value counts as unset. Every key taken from an
    old place gets a deprecation warning naming the old and the new spelling. A
    section name spelled with other case is accepted with a warning.

    ``remote`` holds the plugin sections of the CP's bootstrap answer
    (``AgentConfig.remote_sections``): folded the same way (without deprecation
    warnings: the CP speaks the Go agent's names), then only the keys the
    section's class marks :func:`cp_settable` go under the local values (the
    local file wins key by key); every other key is ignored with a warning
    naming it as the CP wrote it. Sections no declared plugin owns are ignored.
    """
    out = MergedSections()
    canon = {d.name for d in decls}
    known = canon | {a.section for d in decls for a in d.aliases}
    norm = _normalize_section_names(raw, known, out)
    fold = _Folding(out=out, norm=norm, canon=canon, claimed=_claimed_keys(decls))
    for d in decls:
        _fold_section(fold, d)
    _warn_deprecated(fold)
    _record_leftovers(fold)
    if remote:
        _merge_remote(out, remote, decls)
    return out


def _merge_remote(out: MergedSections, remote: Mapping[str, Any], decls: Sequence[ConfigSection]) -> None:
    """Put the settable keys of the CP's plugin sections under ``out``'s values."""
    theirs = merge_sections(remote, decls)
    for d in decls:
        if d.name in theirs.problems:
            out.problems.setdefault(d.name, []).extend(
                f"control plane config: {p}" for p in theirs.problems[d.name]
            )
            continue
        value = theirs.values.get(d.name)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            out.problems.setdefault(d.name, []).append(
                f"control plane config: {d.name}: expected an object, got {_describe(value)}"
            )
            continue
        origins = theirs.origins.get(d.name, {})
        ignored: list[str] = []
        settable = remote_settable(d.type, value, d.name, ignored)
        for path in ignored:
            key = path.split(".", 1)[1].split(".", 1)[0]
            where = origins.get(key)
            out.warnings.append(ignored_remote_key(f"{where} (as {path})" if where else path))
        if not settable:
            continue
        own = out.values.get(d.name)
        if own is not None and not isinstance(own, Mapping):
            continue  # the local value is reported by the structurer
        local = dict(own or {})
        lower = {str(k).lower() for k in local}
        for key, v in settable.items():
            if str(key).lower() not in lower:
                local[key] = v
                if key in origins:
                    out.origins.setdefault(d.name, {}).setdefault(key, f"control plane {origins[key]}")
        out.values[d.name] = local


def _normalize_section_names(raw: Mapping[str, Any], known: set[str], out: MergedSections) -> dict[str, Any]:
    """``raw`` with known top-level names spelled right, so that a case slip
    (``BirdAgent``) still finds its section; a miscased duplicate is dropped."""
    norm: dict[str, Any] = {}
    lower_known = {k.lower(): k for k in known}
    for key, value in raw.items():
        fixed = key if key in known else lower_known.get(str(key).lower())
        if fixed is not None and fixed != key:
            if fixed in raw:
                out.warnings.append(f"{key}: duplicate of {fixed!r}, ignored")
                out.consumed.add(key)
                continue
            out.warnings.append(f"{key}: accepted as {fixed!r} (spell it that way)")
            out.consumed.add(key)
        norm[fixed or key] = value
    return norm


def _claimed_keys(decls: Sequence[ConfigSection]) -> dict[str, set[str]]:
    """Old section -> lower(old key) for the single keys aliases take from it; a
    whole-section alias and the section itself must leave those keys alone."""
    claimed: dict[str, set[str]] = {}
    for d in decls:
        for a in d.aliases:
            if (km := a.key_map()) is not None:
                claimed.setdefault(a.section, set()).update(k.lower() for k in km)
    return claimed


@attrs.define
class _Folding:
    """State shared by the steps of :func:`merge_sections`."""

    out: MergedSections
    norm: dict[str, Any]
    """The raw top level, names' case fixed."""
    canon: set[str]
    """The declared sections' own names."""
    claimed: dict[str, set[str]]
    moved: dict[str, list[str]] = attrs.field(factory=dict)
    """Old ``section.key`` taken by a single-key alias -> the new paths it was read as."""
    whole: dict[str, list[str]] = attrs.field(factory=dict)
    """Old section read whole by an alias -> the sections reading it."""

    def is_claimed(self, section: str, key: Any) -> bool:
        return str(key).lower() in self.claimed.get(section, set())


@attrs.define
class _SectionValues:
    """One section being assembled: its keys and the path each was read from, so
    that a losing value's warning can name the winner."""

    name: str
    merged: dict[str, Any]
    source: dict[str, str]
    """lower(key) -> the path its value came from."""


def _fold_section(fold: _Folding, d: ConfigSection) -> None:
    """Merge the section ``d`` from its own value and its aliases' into ``fold.out``."""
    own = fold.norm.get(d.name)
    if own is not None and not isinstance(own, Mapping):
        fold.out.values[d.name] = own  # the structurer reports "expected an object"
        fold.out.consumed.add(d.name)
        return
    merged: dict[str, Any] = {k: v for k, v in (own or {}).items() if not fold.is_claimed(d.name, k)}
    sec = _SectionValues(d.name, merged, {str(k).lower(): f"{d.name}.{k}" for k in merged})
    present = own is not None
    for a in d.aliases:
        present = _fold_alias(fold, sec, a) or present
    if present:
        fold.out.values[d.name] = merged
        fold.out.consumed.add(d.name)


def _fold_alias(fold: _Folding, sec: _SectionValues, a: SectionAlias) -> bool:
    """Take what the alias ``a`` reads into ``sec``; True when the old place holds
    anything for the section (then it counts as present even if all values are null)."""
    old = fold.norm.get(a.section)
    if old is None:
        return False
    km = a.key_map()
    if not isinstance(old, Mapping):
        if km is None:
            fold.out.problems.setdefault(sec.name, []).append(
                f"{a.section}: expected an object, got {_describe(old)}"
            )
            fold.out.consumed.add(a.section)
        return False
    lower_km = None if km is None else {o.lower(): (o, n) for o, n in km.items()}
    present = False
    if lower_km is None:
        if a.section in fold.canon:
            return False  # another section's own: only single keys may be taken from it
        fold.whole.setdefault(a.section, []).append(sec.name)
        present = True
    for key, value in old.items():
        where = f"{a.section}.{key}"
        target = _alias_target(fold, a, lower_km, key)
        if target is None:
            continue
        new, convert = target
        present = True
        if value is None:
            continue
        if convert is not None:
            value = convert(value)
        if _put_value(fold, sec, a, where, new, value) and lower_km is not None:
            fold.moved[where].append(f"{sec.name}.{new}")
    return present


def _alias_target(
    fold: _Folding, a: SectionAlias, lower_km: dict[str, tuple[str, str]] | None, key: Any
) -> tuple[str, Callable[[Any], Any] | None] | None:
    """The new key (and its converter) the old ``key`` is read as, or None when
    the alias does not take it. A key-map hit is noted in ``fold.moved``."""
    if lower_km is None:
        if fold.is_claimed(a.section, key):
            return None
        return str(key), None
    hit = lower_km.get(str(key).lower())
    if hit is None:
        return None
    fold.moved.setdefault(f"{a.section}.{key}", [])
    return hit[1], a.converter(hit[0])


def _put_value(
    fold: _Folding, sec: _SectionValues, a: SectionAlias, where: str, new: str, value: Any
) -> bool:
    """Set ``new`` unless a value is there already (first wins: warn unless the
    alias is a fallback); True when the value was taken."""
    prev = _get_ci(sec.merged, new)
    if prev is not None and prev[1] is not None:
        if not a.fallback:
            fold.out.warnings.append(
                f"{where}: ignored, {sec.source[new.lower()]} is set too (that one wins)"
            )
        return False
    if prev is not None:
        del sec.merged[prev[0]]
    sec.merged[new] = value
    sec.source[new.lower()] = where
    fold.out.origins.setdefault(sec.name, {})[new] = where
    return True


def _warn_deprecated(fold: _Folding) -> None:
    """One warning per old section read whole, then one per old section whose
    single keys moved, listing every move."""
    out = fold.out
    for old, targets in fold.whole.items():
        names = " and ".join(f"'{t}'" for t in targets)
        out.warnings.append(f"{old}: deprecated section name; its keys are read as {names} (rename it)")
        out.consumed.add(old)
    by_section: dict[str, list[str]] = {}
    for where, targets in fold.moved.items():
        if targets:
            by_section.setdefault(where.split(".", 1)[0], []).append(f"{where} -> {' and '.join(targets)}")
    for old, moves in by_section.items():
        out.warnings.append(
            f"{old}: deprecated keys, read in their new place (move them): {', '.join(moves)}"
        )


def _record_leftovers(fold: _Folding) -> None:
    """An old section with no owner that single-key aliases took from is consumed
    when emptied; otherwise its remaining keys are left for the caller to report."""
    out = fold.out
    for section, keys in fold.claimed.items():
        old = fold.norm.get(section)
        if section in out.consumed or section in fold.canon or not isinstance(old, Mapping):
            continue
        rest = [str(k) for k in old if str(k).lower() not in keys]
        if rest:
            out.leftovers[section] = rest
        else:
            out.consumed.add(section)


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


#: The Go agent's node-level keys in its ``wireguard`` section: the core reads them
#: as ``node.loopbackIpv4/6`` (deprecated spelling; both set: they must agree).
LEGACY_NODE_KEYS: dict[str, tuple[str, Check]] = {
    "dn42Ipv4": ("loopbackIpv4", ipv4_address),
    "dn42Ipv6": ("loopbackIpv6", ipv6_address),
}


def _take_legacy_node_keys(
    merged: dict[str, Any], problems: list[str], warnings: list[str]
) -> dict[str, tuple[str, str]]:
    """Take ``wireguard.dn42Ipv4/6`` out of the raw config (the wireguard plugin's
    section no longer has them); returns node key -> (old path, address)."""
    wg = merged.get("wireguard")
    if not isinstance(wg, Mapping):
        return {}
    rest = dict(wg)
    lower = {k.lower(): k for k in LEGACY_NODE_KEYS}
    found: dict[str, tuple[str, str]] = {}
    for key, value in wg.items():
        canonical = lower.get(str(key).lower())
        if canonical is None:
            continue
        del rest[key]
        path = f"wireguard.{key}"
        node_key, fn = LEGACY_NODE_KEYS[canonical]
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {_describe(value)}")
            continue
        if (msg := fn(value)) is not None:
            problems.append(f"{path}: {msg}")
            continue
        warnings.append(f"{path}: deprecated; read as node.{node_key} (move it there)")
        found[node_key] = (path, value)
    if rest:
        merged["wireguard"] = rest
    else:
        del merged["wireguard"]
    return found


def remote_settable(cls: type, data: Mapping[str, Any], path: str, ignored: list[str]) -> dict[str, Any]:
    """The keys of ``data`` (a raw section of the CP's answer for the attrs class
    ``cls``) that the CP may set: fields marked :func:`cp_settable`, recursing
    into marked fields that hold attrs classes. Every key of a field that is not
    marked is dropped and its path appended to ``ignored``; keys ``cls`` does not
    know are dropped silently (the Go agent's CP sends keys this agent dropped)."""
    known = {camel(f.name).lower(): f for f in _fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        f = known.get(str(key).lower())
        kpath = _join(path, str(key))
        if f is None:
            continue
        if not f.metadata.get(CP_SETTABLE):
            ignored.append(kpath)
            continue
        sub, how = _model_type(f.type)
        if sub is not None and how in ("plain", "optional") and isinstance(value, Mapping):
            out[key] = remote_settable(sub, value, kpath, ignored)
        elif sub is not None and how == "dict" and isinstance(value, Mapping):
            out[key] = {
                k: remote_settable(sub, v, _join(kpath, str(k)), ignored) if isinstance(v, Mapping) else v
                for k, v in value.items()
            }
        else:
            out[key] = value
    return out


def ignored_remote_key(path: str) -> str:
    """The warning for a key the CP's answer set that is this node's own decision."""
    return f"{path}: set by the control plane, ignored (a local setting: only this node's file decides it)"


def remote_overlay(remote: Any, problems: list[str], warnings: list[str] | None = None) -> dict[str, Any]:
    """The core's part of the CP's ``/agent/{node}/config`` answer as a config overlay.

    Only the core keys marked :func:`cp_settable` are taken (node, the
    ``controlPlane`` intervals, retries and breaker, task intervals and timeouts,
    and the Go agent's ``wireguard.dn42Ipv4/6``); every other core key the answer
    sets (``server``, ``state``, ``logging``, ``plugins``, ``backends``,
    ``bootstrap``, ``controlPlane.url``...) is local only and ignored with a
    warning in ``warnings`` naming it. The plugin sections are kept apart
    (:func:`remote_plugin_sections`): their owners say which keys the CP may set.
    """
    if not isinstance(remote, Mapping):
        problems.append("control plane config: expected an object")
        return {}
    ignored: list[str] = []
    core = {k: v for k, v in remote.items() if str(k).lower() in {c.lower() for c in CORE_SECTIONS}}
    overlay: dict[str, Any] = {}
    lower_core = {c.lower(): c for c in CORE_SECTIONS}
    for key, value in core.items():
        name = lower_core[str(key).lower()]
        f = {x.name: x for x in _fields(AgentConfig)}[CORE_SECTIONS[name]]
        if not f.metadata.get(CP_SETTABLE):
            ignored.extend(
                [f"{key}.{k}" for k in value] if isinstance(value, Mapping) and value else [str(key)]
            )
            continue
        if not isinstance(value, Mapping):
            overlay[key] = value  # the structurer reports "expected an object"
            continue
        sub, how = _model_type(f.type)
        if sub is None:
            overlay[key] = value
        elif how == "dict":
            overlay[key] = {
                k: remote_settable(sub, v, f"{key}.{k}", ignored) if isinstance(v, Mapping) else v
                for k, v in value.items()
            }
        else:
            overlay[key] = remote_settable(sub, value, str(key), ignored)
    wg = remote.get("wireguard")
    if isinstance(wg, Mapping):
        lower = {k.lower() for k in LEGACY_NODE_KEYS}
        legacy = {k: v for k, v in wg.items() if str(k).lower() in lower}
        if legacy:
            overlay["wireguard"] = legacy
    if warnings is not None:
        warnings.extend(ignored_remote_key(p) for p in ignored)
    return overlay


def remote_plugin_sections(remote: Any) -> dict[str, Any]:
    """The plugin sections of the CP's answer, raw (the Go agent's
    ``wireguard.dn42Ipv4/6`` left out: they are the core's ``node`` keys)."""
    if not isinstance(remote, Mapping):
        return {}
    lower_core = {c.lower() for c in CORE_SECTIONS}
    out = {k: v for k, v in remote.items() if str(k).lower() not in lower_core}
    wg = out.get("wireguard")
    if isinstance(wg, Mapping):
        lower = {k.lower() for k in LEGACY_NODE_KEYS}
        out["wireguard"] = {k: v for k, v in wg.items() if str(k).lower() not in lower}
    return out


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
    remote_sections: dict[str, Any] = {}
    overlay: dict[str, Any] | None = None
    if remote is not None:
        overlay = remote_overlay(remote, problems, warnings)
        merged = deep_merge(overlay, local)
        remote_sections = remote_plugin_sections(remote)
    from .identity import node_sources

    node_origin = node_sources(local, overlay, source, problems)

    legacy = _take_legacy_node_keys(merged, problems, warnings)
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
    cfg.remote_sections = remote_sections
    cfg.source = source
    cfg.node_sources = node_origin
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

    if not cfg.server.token:
        from .api import listen_is_loopback

        if not listen_is_loopback(cfg.server.listen):
            problems.append(
                f"server.listen: {cfg.server.listen!r} is not loopback and server.token is unset, which "
                "would let anyone who reaches it drain the node: set server.token, or listen on "
                "loopback (127.0.0.1:24368)"
            )
    if cfg.control_plane.retry_max_delay < cfg.control_plane.retry_initial_delay:
        problems.append("controlPlane.retryMaxDelay: must not be smaller than retryInitialDelay")
    if cfg.mode != "standalone":
        key, url = (
            ("bootstrap.apiUrl", cfg.bootstrap.api_url)
            if bootstrap_mode
            else ("controlPlane.url", cfg.control_plane.url)
        )
        if (insecure := insecure_url_warning(url, key)) is not None:
            warnings.append(insecure)
    for node_key, (path, value) in legacy.items():
        attr = "loopback_ipv4" if node_key == "loopbackIpv4" else "loopback_ipv6"
        current = getattr(cfg.node, attr)
        if not current:
            setattr(cfg.node, attr, value)
        elif ipaddress.ip_interface(current).ip != ipaddress.ip_interface(value).ip:
            problems.append(f"node.{node_key}: disagrees with {path} ({current} vs {value})")
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
        data = jsonlimits.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"line {exc.lineno} column {exc.colno}: {exc.msg}"], str(path)) from exc
    except ValueError as exc:  # nested too deep, a number over Python's digit limit
        raise ConfigError([f"not usable JSON: {exc}"], str(path)) from None
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
