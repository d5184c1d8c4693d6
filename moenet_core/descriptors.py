"""Descriptors: what sync hooks return so the core can build the async objects.

Hooks are synchronous. A plugin that needs async work (a periodic task, a backend,
an HTTP route) returns one of these frozen attrs classes holding a *factory*; the
core calls the factory inside the running event loop and owns the object's
lifetime: scheduling, timeouts, cancellation and closing. Every descriptor is
stamped with the providing plugin's name (``plugin``) by the plugin manager.

Adding a keyword field with a default is a compatible change (see the hook API
versioning rules in ``docs/plugins``).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from .models import SessionStatus

if TYPE_CHECKING:
    from aiohttp import web

    from .config import AgentConfig
    from .context import PluginContext

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SECTION = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_ROUTE_PATH = re.compile(r"^/[A-Za-z0-9_\-./{}]*$")


def _check(pattern: re.Pattern[str], what: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def validator(_inst: Any, _attr: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"invalid {what} {value!r}: must match {pattern.pattern}")

    return validator


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _upper(value: object) -> str:
    return str(value).upper()


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attr.name} must be > 0, got {value!r}")


@runtime_checkable
class Task(Protocol):
    """What a :class:`TaskSpec` factory builds.

    ``run_once`` does one unit of work (one sync, one heartbeat). It may return a
    short JSON-able summary shown in ``/status``. An optional ``async aclose()`` is
    awaited at shutdown.
    """

    async def run_once(self) -> object: ...


class Backend:
    """Base of every backend. ``start`` and ``aclose`` default to no-ops.

    Backend *interfaces* (``TunnelBackend`` ...) live in :mod:`moenet_core.backends`.
    """

    async def start(self) -> None:
        """Acquire resources (sockets, processes). Called once before any task runs."""

    async def aclose(self) -> None:
        """Release resources. Called once at shutdown, in reverse start order."""


@attrs.frozen(kw_only=True)
class TaskSpec:
    """A periodic task.

    ``interval`` is the default period in seconds; ``tasks.<name>.interval`` in the
    config overrides it. ``jitter`` is a fraction of the interval added at random to
    each wait (0 to 0.5). ``timeout`` bounds one run (default: the interval).
    ``requires`` lists backend kinds that must be running, else the task is not
    started and ``/status`` says why. ``on_sync`` marks tasks that ``/sync`` runs.
    ``skip_in_maintenance`` pauses the task while the node is in maintenance.
    """

    name: str = attrs.field(validator=_check(_TASK_NAME, "task name"))
    factory: Callable[[PluginContext], Task]
    interval: float = attrs.field(validator=_positive)
    initial_delay: float = attrs.field(default=0.0)
    jitter: float = attrs.field(default=0.1)
    timeout: float | None = attrs.field(default=None, validator=_positive)
    requires: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    on_sync: bool = False
    skip_in_maintenance: bool = False
    description: str = ""
    plugin: str = ""

    @jitter.validator
    def _jitter_range(self, _attr: attrs.Attribute[float], value: float) -> None:
        if not 0.0 <= value <= 0.5:
            raise ValueError(f"jitter must be within 0..0.5 of the interval, got {value!r}")

    @initial_delay.validator
    def _delay_range(self, _attr: attrs.Attribute[float], value: float) -> None:
        if value < 0:
            raise ValueError(f"initial_delay must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class BackendSpec:
    """One implementation of a backend kind (``tunnel``, ``routing``, ``firewall``,
    ``loopback``, or a kind a plugin defines).

    ``probe`` is a cheap synchronous availability check used when the config says
    ``auto``; among candidates whose probe passes, the highest ``priority`` wins
    unless a ``moenet_select_backend`` implementation decides first.
    """

    kind: str = attrs.field(converter=_lower, validator=_check(_IDENT, "backend kind"))
    name: str = attrs.field(converter=_lower, validator=_check(_IDENT, "backend name"))
    factory: Callable[[PluginContext], Backend]
    probe: Callable[[], bool] | None = None
    priority: int = 0
    description: str = ""
    plugin: str = ""


def _pairs(value: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...] | None:
    if value is None:
        return None
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), v) for k, v in items)


def _converters(
    value: Mapping[str, Callable[[Any], Any]] | Iterable[tuple[str, Callable[[Any], Any]]],
) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    return _pairs(value) or ()


@attrs.frozen(kw_only=True)
class SectionAlias:
    """A deprecated place the keys of a :class:`ConfigSection` may still be written.

    ``section`` names the old top-level section. Without ``keys`` every key of it
    is taken under its own name (``birdAgent`` -> ``bird``). With ``keys``
    (old key -> new key) only those are taken, and the old section's other keys
    are left to whoever else takes them: its own section's owner, another alias,
    else they are warned about as unknown (``wireguard.privateKeyPath`` ->
    ``sessions.privateKeyPath``, while the rest of ``wireguard`` stays the
    wireguard plugin's). One old key may be taken by several sections.

    ``convert`` maps an old key to a function turning its JSON value into the new
    key's unit (``metric.pingTimeout`` seconds -> ``rtt.timeoutMs``); it gets the
    raw value and returns it unchanged when it cannot convert it, so the
    structurer reports the type error. ``fallback`` marks a default rather than
    an old spelling: the section's own value wins without a conflict warning
    (``wireguard.persistentKeepaliveInterval`` as the default ``mesh.keepalive``).

    The core merges taken keys into the section before structuring it, with a
    deprecation warning naming the old and the new spelling; where the section
    (or an earlier alias) sets the same key, that value wins, with a warning.
    A null value counts as unset.
    """

    section: str = attrs.field(validator=_check(_SECTION, "config section name"))
    keys: tuple[tuple[str, str], ...] | None = attrs.field(default=None, converter=_pairs)
    convert: tuple[tuple[str, Callable[[Any], Any]], ...] = attrs.field(default=(), converter=_converters)
    fallback: bool = False

    def key_map(self) -> dict[str, str] | None:
        """Old key -> new key, or None when every key is taken under its own name."""
        return None if self.keys is None else dict(self.keys)

    def converter(self, key: str) -> Callable[[Any], Any] | None:
        return dict(self.convert).get(key)


def _aliases(value: Iterable[SectionAlias | str]) -> tuple[SectionAlias, ...]:
    return tuple(SectionAlias(section=a) if isinstance(a, str) else a for a in value)


@attrs.frozen(kw_only=True)
class ConfigSection:
    """A top-level config section owned by a plugin, structured into ``type``
    (an attrs class) with the core's converter; errors carry the section path.

    ``aliases`` lists deprecated places its keys may still be written
    (:class:`SectionAlias`; a plain string is a whole-section alias). The core
    merges them in with a deprecation warning; the section's own keys win."""

    name: str = attrs.field(validator=_check(_SECTION, "config section name"))
    type: builtins.type = attrs.field()
    required: bool = False
    description: str = ""
    aliases: tuple[SectionAlias, ...] = attrs.field(default=(), converter=_aliases)
    plugin: str = ""

    @type.validator
    def _is_attrs(self, _attr: attrs.Attribute[Any], value: object) -> None:
        if not (isinstance(value, builtins.type) and attrs.has(value)):
            raise ValueError(f"config section {self.name!r}: type must be an attrs class")

    @aliases.validator
    def _not_itself(self, _attr: attrs.Attribute[Any], value: tuple[SectionAlias, ...]) -> None:
        for alias in value:
            if alias.section == self.name:
                raise ValueError(f"config section {self.name!r}: an alias cannot name the section itself")

    def of(self, config: AgentConfig) -> Any:
        """This section of ``config``, structured: the value the core structured
        for the running configuration (``AgentConfig.sections``), else structured
        now with the aliases merged in (for hooks called on a config the core has
        not gone through, as tests and tools do). None when it is invalid."""
        if self.name in config.sections:
            return config.sections[self.name]
        from .config import merge_sections, structure

        merged = merge_sections(config.plugin_sections, [self], remote=config.remote_sections)
        if merged.problems.get(self.name):
            return None
        obj, problems = structure(self.type, merged.values.get(self.name) or {}, self.name, [])
        return None if problems else obj


Handler = Callable[["web.Request", "PluginContext"], Awaitable["web.StreamResponse"]]
"""``async handler(request, ctx) -> web.StreamResponse`` of a plugin route."""


@attrs.frozen(kw_only=True)
class RouteSpec:
    """An HTTP route on the local API, mounted under ``/plugins/<plugin>/``.

    ``handler`` is an aiohttp coroutine called as ``handler(request, ctx)``, with
    ``ctx`` the providing plugin's :class:`~moenet_core.PluginContext` in the
    running agent (the one its tasks got: ``ctx.task(name)``, ``ctx.stash``,
    ``ctx.backend(...)`` find the plugin's live objects). A handler taking only
    ``request`` (hook API 1.0) is still called that way, with a
    ``DeprecationWarning``. ``mutating`` defaults to true for every method but
    GET and HEAD; mutating routes get the same protection as the core's (token
    or loopback only).

    ``sensitive`` (default None: true) protects a route that changes nothing the
    same way: with ``server.token`` set it needs the token; without one it
    answers loopback clients only and refuses browser cross-origin requests.
    Every plugin route is sensitive unless it says ``sensitive=False``, because
    a plugin route typically calls the control plane or shows the topology
    (a reconciler's ``/plan`` does both: :func:`~moenet_core.reconcile.plan_route`
    says ``sensitive=True``). Say ``sensitive=False`` only for a read-only route
    that is cheap and reveals nothing a monitoring system may not see, like
    ``/status``. A mutating route is protected whatever ``sensitive`` says.
    """

    method: str = attrs.field(converter=_upper)
    path: str = attrs.field(validator=_check(_ROUTE_PATH, "route path"))
    handler: Handler
    mutating: bool | None = None
    description: str = ""
    plugin: str = ""
    sensitive: bool | None = None

    @property
    def is_mutating(self) -> bool:
        if self.mutating is not None:
            return self.mutating
        return self.method not in ("GET", "HEAD")

    @property
    def is_sensitive(self) -> bool:
        """Needs the token (or a loopback, same-origin client): see the class doc."""
        return self.sensitive is not False or self.is_mutating


# ---------------------------------------------------------------- events


@attrs.frozen(kw_only=True)
class SessionStatusEvent:
    """A session's status changed (``old`` is None the first time it is seen;
    ``removed`` is true once nothing of it is left on the node)."""

    uuid: str
    name: str
    asn: int | None
    old: SessionStatus | None
    new: SessionStatus
    error: str | None = None
    interface: str | None = None
    removed: bool = False
    restored: bool = False
    """Not a change: at start the owner re-announces every status it knew before
    the restart (``old`` is None), so counts (``/status``, ``moenet_sessions``)
    are right from the start."""


@attrs.frozen(kw_only=True)
class MaintenanceEvent:
    """The node entered (``enabled``) or left maintenance."""

    enabled: bool
    since: float | None
    reason: str = ""


@attrs.frozen(kw_only=True)
class SyncEvent:
    """A reconciler finished a cycle (``task`` names it, e.g. ``sessionSync``)."""

    task: str
    ok: bool
    duration: float
    changes: int = 0
    error: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict)
    transient: bool = False
    """With ``ok`` false: a retry may fix it (the CP or a daemon unreachable)."""


@attrs.frozen(kw_only=True)
class TaskRunEvent:
    """The scheduler finished one run of a task (success, failure or timeout)."""

    task: str
    plugin: str
    ok: bool
    started: float
    duration: float
    error: str | None = None
    result: object = None


@attrs.frozen(kw_only=True)
class LinkTarget:
    """A link whose latency a measuring plugin should probe (``moenet_link_targets``).

    ``owner`` is the offering plugin's fragment owner (``sessions``, ``mesh``) and
    ``key`` its own id for the link (a session uuid); together they route the
    result back. ``addresses`` are the far end's addresses in preference order
    (IPv6 link-local first, then IPv6, then IPv4), without scope: the probe goes
    out of ``interface``. ``labels`` are extra Prometheus/report labels such as
    ``asn``.
    """

    owner: str
    key: str
    interface: str
    addresses: tuple[str, ...] = attrs.field(converter=_str_tuple)
    labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class LinkLatency:
    """One measured link (``moenet_link_latency``).

    ``rtt_ms`` is the mean over answered probes (None when none answered);
    ``loss`` is the lost share in percent (0-100); ``tier`` is the DN42 latency
    tier (1-9) after hysteresis, None until a first successful measurement.
    ``target`` is the address that was probed (the first that answered).
    """

    owner: str
    key: str
    interface: str
    target: str | None
    rtt_ms: float | None
    loss: float
    tier: int | None
    measured_at: float
    tier_changed: bool = False


HEALTH_VERDICTS = ("healthy", "degraded", "down")
"""Node health verdicts, best first (their index is the metric value)."""

_CHECK_NAME = re.compile(r"^[a-z][A-Za-z0-9_.-]{0,63}$")


def _verdict(_inst: Any, _attr: attrs.Attribute[Any], value: object) -> None:
    if value not in HEALTH_VERDICTS:
        raise ValueError(f"verdict: must be one of {', '.join(HEALTH_VERDICTS)} (got {value!r})")


@attrs.frozen(kw_only=True)
class HealthCheck:
    """One node-level health finding (``moenet_health_checks``).

    ``name`` is a stable dotted id such as ``bird.roa`` or ``host.rp_filter``
    (it becomes a metric label); ``verdict`` is ``healthy``, ``degraded`` or
    ``down``; ``reason`` says in one line what is wrong and, where it can, what
    to change. A healthy check carries no reason (or a short note).
    """

    name: str = attrs.field(validator=_check(_CHECK_NAME, "a check name (lower-case start, [A-Za-z0-9_.-])"))
    verdict: str = attrs.field(validator=_verdict)
    reason: str = ""
    plugin: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "plugin": self.plugin, "verdict": self.verdict, "reason": self.reason}


RestartAction = Callable[[], Awaitable[Mapping[str, Any]]]
