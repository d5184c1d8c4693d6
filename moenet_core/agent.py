"""The agent: wires config, plugins, backends, tasks and the API, and owns their order.

Start: plugin sections are structured, ``moenet_configure`` runs, backends are
chosen and started, tasks are built and handed to the scheduler, the local API
listens, ``moenet_startup`` is awaited, and the scheduler begins.

Stop (SIGTERM/SIGINT): the API stops taking requests, the scheduler stops
scheduling and lets in-flight runs finish (30 s), ``moenet_shutdown`` is
awaited, backends close in reverse start order, the CP client closes. Nothing
on the node is torn down: tunnels and BIRD config stay, so a restart costs no flap.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import Awaitable, Sequence
from typing import Any

import attrs
from loguru import logger
from prometheus_client import CollectorRegistry

from . import HOOK_API_VERSION, systemd
from .api import LocalApi
from .backends import BACKEND_INTERFACES
from .breaker import CircuitBreaker
from .clock import Clock, SystemClock
from .config import AgentConfig, MergedSections, structure
from .context import PluginContext
from .controlplane import ControlPlane, FileControlPlane, HttpControlPlane
from .descriptors import (
    Backend,
    BackendSpec,
    ConfigSection,
    HealthCheck,
    MaintenanceEvent,
    RouteSpec,
    SessionStatusEvent,
    TaskRunEvent,
    TaskSpec,
)
from .errors import BackendUnavailable, ConfigError, PluginError
from .health import gather_health, health_summary
from .hookspecs import hookimpl
from .identity import IdentityBook
from .memory import MemoryTrimmer, forget_generated_sources
from .metrics import AgentMetrics, HealthCollector
from .models import SessionStatus
from .plugins import AgentPluginManager
from .retry import RetryPolicy
from .scheduler import Scheduler
from .state import StateError, StateStore
from .version import __version__

SHUTDOWN_GRACE = 30.0
HOOK_TIMEOUT = 30.0
#: Longest wait for the first sync before telling systemd we are ready anyway.
READY_TIMEOUT = 120.0
#: Whether the node is in maintenance, kept across restarts (in the state directory).
MAINTENANCE_FILE = "maintenance.json"
MAINTENANCE_VERSION = 1


@attrs.frozen(kw_only=True)
class MaintenanceDoc:
    """``maintenance.json``: ``{"version": 1, "enabled": ..., "since": ..., "reason": ...}``
    (the previous version wrote the same fields without ``"version"``)."""

    enabled: bool = False
    since: float | None = None
    reason: str = ""


def _migrate_maintenance(version: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Version 0 (no ``"version"``) has the same fields."""
    return fields


def make_control_plane(
    config: AgentConfig, *, clock: Clock, metrics: AgentMetrics, state: StateStore
) -> ControlPlane:
    """The CP source the config selects."""
    cp = config.control_plane
    if cp.source == "file":
        return FileControlPlane(path=cp.file, node=config.node.name, state=state.scoped("standalone"))

    def on_change(new_state: str) -> None:
        log = logger.warning if new_state != "closed" else logger.info
        log("control-plane circuit breaker is now {}", new_state)

    breaker = CircuitBreaker(
        failure_threshold=cp.breaker_failure_threshold,
        success_threshold=cp.breaker_success_threshold,
        open_duration=cp.breaker_open_duration,
        clock=clock,
        on_change=on_change,
    )
    retry = RetryPolicy(
        max_retries=cp.max_retries,
        initial_delay=cp.retry_initial_delay / 1000,
        max_delay=cp.retry_max_delay / 1000,
        multiplier=cp.retry_multiplier,
    )
    return HttpControlPlane(
        base_url=cp.url,
        node=config.node.name,
        token=cp.token or None,
        clock=clock,
        metrics=metrics,
        retry=retry,
        breaker=breaker,
        request_timeout=cp.request_timeout,
        max_response_bytes=cp.max_response_bytes,
    )


@attrs.frozen
class PluginSections:
    """The structured plugin sections of one configuration."""

    values: dict[str, Any]
    """Section name -> structured object."""
    owners: dict[str, str]
    """Section name -> plugin."""
    problems: dict[str, list[str]]
    """Plugin -> problems with its sections."""
    warnings: list[str]

    def of(self, plugin: str) -> Any:
        """The first section ``plugin`` owns, or None."""
        for name, owner in self.owners.items():
            if owner == plugin:
                return self.values.get(name)
        return None


def structure_plugin_sections(
    config: AgentConfig, pm: AgentPluginManager, *, apply: bool = True
) -> PluginSections:
    """Structure every active plugin's declared sections.

    Each section's aliases (deprecated section names, single keys taken from
    another section: :class:`~moenet_core.descriptors.SectionAlias`) are merged
    in first, with deprecation warnings (:func:`~moenet_core.config.merge_sections`);
    a problem with a key read from an alias names the path as written. A
    section (or alias) declared by two plugins, or clashing with a core
    section, is a problem of the later plugin. The structured sections are kept
    in ``config.sections``. With ``apply`` the plugin records are updated and
    plugins with problems are marked failed; without it (a reload being
    checked) no record changes.
    """
    from .config import merge_sections

    problems: dict[str, list[str]] = {}
    owners, declared = _declared_sections(pm, apply, problems)
    merged = merge_sections(
        config.plugin_sections, [sec for _, sec in declared], remote=config.remote_sections
    )
    warnings = list(merged.warnings)
    values = _structure_declared(declared, merged, problems, warnings)
    warnings.extend(_unused_section_warnings(config, pm, owners, merged))
    config.sections = values
    if apply:
        _apply_section_results(pm, owners, problems)
    return PluginSections(values, owners, problems, warnings)


def _declared_sections(
    pm: AgentPluginManager, apply: bool, problems: dict[str, list[str]]
) -> tuple[dict[str, str], list[tuple[str, ConfigSection]]]:
    """Collect the active plugins' section declarations, first come first served:
    ``(section -> plugin, [(plugin, section)])``; a rejected one is a problem
    of its plugin."""
    owners: dict[str, str] = {}
    declared: list[tuple[str, ConfigSection]] = []
    whole_aliases: dict[str, str] = {}
    for plugin, result in pm.collect("moenet_config_sections", setup=apply):
        items = [result] if isinstance(result, ConfigSection) else list(result)
        for sec in items:
            if not isinstance(sec, ConfigSection):
                problems.setdefault(plugin, []).append(
                    f"moenet_config_sections returned {type(sec).__name__}"
                )
                continue
            problem = _section_clash(sec, owners, whole_aliases)
            if problem is not None:
                problems.setdefault(plugin, []).append(problem)
                continue
            owners[sec.name] = plugin
            whole_aliases.update({a.section: plugin for a in sec.aliases if a.keys is None})
            declared.append((plugin, sec))
    return owners, declared


def _section_clash(sec: ConfigSection, owners: dict[str, str], whole_aliases: dict[str, str]) -> str | None:
    """Why ``sec`` can't be taken (its name or a whole-section alias is the
    core's or an earlier plugin's), or None."""
    from .config import CORE_SECTIONS

    if sec.name in CORE_SECTIONS or sec.name in owners or sec.name in whole_aliases:
        other = owners.get(sec.name) or whole_aliases.get(sec.name) or "the core"
        return f"section {sec.name!r} is already owned by {other}"
    clash = [
        a.section
        for a in sec.aliases
        if a.section in CORE_SECTIONS or (a.keys is None and a.section in owners)
    ]
    if clash:
        return f"section {sec.name!r}: alias {clash[0]!r} names a section of the core or another plugin"
    return None


def _structure_declared(
    declared: list[tuple[str, ConfigSection]],
    merged: MergedSections,
    problems: dict[str, list[str]],
    warnings: list[str],
) -> dict[str, Any]:
    """Structure each merged section into its declared class: section -> object.
    Problems and warnings name the path the user wrote (an alias's, if so)."""
    values: dict[str, Any] = {}
    for plugin, sec in declared:
        if sec.name in merged.problems:
            problems.setdefault(plugin, []).extend(merged.problems[sec.name])
            continue
        raw = merged.values.get(sec.name)
        if raw is None and sec.required:
            problems.setdefault(plugin, []).append(f"{sec.name}: required")
            continue
        own_warnings: list[str] = []
        obj, errs = structure(sec.type, {} if raw is None else raw, sec.name, own_warnings)
        warnings.extend(merged.origin_of(sec.name, w) for w in own_warnings)
        if errs:
            problems.setdefault(plugin, []).extend(merged.origin_of(sec.name, e) for e in errs)
        else:
            values[sec.name] = obj
    return values


def _unused_section_warnings(
    config: AgentConfig, pm: AgentPluginManager, owners: dict[str, str], merged: MergedSections
) -> list[str]:
    """A warning per top-level key (or leftover key of an old section) nobody
    read, saying whether its plugin is merely inactive or nothing knows it."""
    warnings: list[str] = []
    for key in config.plugin_sections:
        if key in owners or key in merged.consumed:
            continue
        record = pm.records.get(key)
        idle = record is not None and record.status != "active"
        if key in merged.leftovers:
            for sub in merged.leftovers[key]:
                if idle:
                    assert record is not None
                    warnings.append(f"{key}.{sub}: key of plugin {key!r}, which is {record.status}; unused")
                else:
                    warnings.append(f"{key}.{sub}: unknown key, ignored")
        elif idle:
            assert record is not None
            warnings.append(f"{key}: section of plugin {key!r}, which is {record.status}; unused")
        else:
            warnings.append(f"{key}: unknown section (no active plugin declares it), ignored")
    return warnings


def _apply_section_results(
    pm: AgentPluginManager, owners: dict[str, str], problems: dict[str, list[str]]
) -> None:
    """Record each plugin's sections and mark the plugins with problems failed."""
    for name, plugin in owners.items():
        if plugin in pm.records and name not in pm.records[plugin].sections:
            pm.records[plugin].sections.append(name)
    for plugin, errs in problems.items():
        pm.mark_failed(plugin, "config: " + "; ".join(errs))


class _CoreObserver:
    """The core's own listener: session counts for ``/status`` and metrics."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @hookimpl
    def moenet_session_status_changed(self, event: SessionStatusEvent) -> None:
        if event.removed:
            self.agent.sessions.pop(event.uuid, None)
        else:
            self.agent.sessions[event.uuid] = event.new
        counts = self.agent.session_counts()
        for status in SessionStatus:
            self.agent.metrics.sessions.labels(status=status.name).set(counts.get(status.name, 0))


class Agent:
    """One running agent. Also the :class:`moenet_core.api.ApiHost` of its API."""

    def __init__(
        self,
        config: AgentConfig,
        pm: AgentPluginManager,
        *,
        clock: Clock | None = None,
        cp: ControlPlane | None = None,
        state: StateStore | None = None,
        config_warnings: Sequence[str] = (),
        api: bool = True,
    ) -> None:
        self.config = config
        self.pm = pm
        self.clock: Clock = clock or SystemClock()
        self.metrics = AgentMetrics()
        self.metrics.registry.register(HealthCollector(self.health_checks))
        self.state = state or StateStore(config.state.directory)
        self.cp: ControlPlane = cp or make_control_plane(
            config, clock=self.clock, metrics=self.metrics, state=self.state
        )
        self.config_warnings = list(config_warnings)
        self.scheduler = Scheduler(
            clock=self.clock,
            metrics=self.metrics,
            on_finished=self._task_finished,
            is_paused=lambda spec: spec.skip_in_maintenance and self.maintenance_state()["enabled"],
        )
        self.memory = MemoryTrimmer()
        """Gives freed heap pages back to the system after task runs (:mod:`moenet_core.memory`)."""
        self.sessions: dict[str, SessionStatus] = {}
        self.identity = IdentityBook(lambda: self.config)
        """Who the node is (AS, id, loopbacks) from the config and what plugins
        published (:mod:`moenet_core.identity`); plugins use ``ctx.identity``."""
        self.features: list[str] = []
        self._sections = PluginSections({}, {}, {}, [])
        self._contexts: dict[str, PluginContext] = {}
        self._backends: dict[str, Backend] = {}
        self._backend_specs: dict[str, BackendSpec] = {}
        self._backend_errors: dict[str, str] = {}
        self._started_backends: list[tuple[str, Backend]] = []
        self._tasks: dict[str, TaskSpec] = {}
        self._task_problems: dict[str, str] = {}
        self._routes: list[RouteSpec] = []
        self._maintenance: dict[str, Any] = {"enabled": False, "since": None, "reason": ""}
        self._started_at: float | None = None
        self._stop = asyncio.Event()
        self._first_runs: dict[str, asyncio.Event] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self.api: LocalApi | None = (
            LocalApi(
                self,
                listen=config.server.listen,
                token=config.server.token,
                allowed_hosts=config.server.allowed_hosts,
                max_connections=config.server.max_connections,
                header_timeout=config.server.read_timeout,
                idle_timeout=config.server.idle_timeout,
            )
            if api
            else None
        )
        self.pm.register(_CoreObserver(self), name="moenet_core")

    # ------------------------------------------------------------ helpers

    def plugin_section(self, plugin: str) -> Any:
        return self._sections.of(plugin)

    def context(self, plugin: str) -> PluginContext:
        if plugin not in self._contexts:
            self._contexts[plugin] = PluginContext(self, plugin)
        return self._contexts[plugin]

    def backend(self, kind: str) -> Backend:
        if kind in self._backends:
            return self._backends[kind]
        reason = self._backend_errors.get(kind, "no plugin provides one")
        raise BackendUnavailable(f"no {kind!r} backend is running: {reason}")

    def health_checks(self) -> list[HealthCheck]:
        """Every plugin's node health checks (``moenet_health_checks``)."""
        return gather_health(self.pm.collect("moenet_health_checks", setup=False))

    def session_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in self.sessions.values():
            counts[status.name] = counts.get(status.name, 0) + 1
        return counts

    # --------------------------------------------------------------- start

    async def start(self) -> None:
        """Bring everything up; raises :class:`PluginError` on a task/backend conflict."""
        self._started_at = self.clock.time()
        self.metrics.start_time.set(self._started_at)
        self.state.ensure()
        self._restore_maintenance()

        self._sections = structure_plugin_sections(self.config, self.pm)
        self.config_warnings.extend(self._sections.warnings)
        for w in self._sections.warnings:
            logger.warning("config: {}", w)
        self.pm.collect("moenet_configure", config=self.config)

        await self._start_backends()
        self._build_tasks()
        self._routes = list(
            self.pm.collect_descriptors(
                "moenet_api_routes",
                RouteSpec,
                key=lambda r: (r.plugin, r.method, r.path),
                describe=lambda k: f"route {k[1]} {k[2]}",
                config=self.config,
            ).values()
        )
        self.features = sorted(
            {str(f) for _, res in self.pm.collect("moenet_features", setup=False) for f in res}
        )
        self._update_plugin_metrics()
        if self.api is not None:
            await self.api.start()
        await self._await_hooks("moenet_startup")
        # Every plugin's classes exist now: their generated source goes before the
        # first sync allocates its objects into the space it held.
        forget_generated_sources()
        if self._maintenance["enabled"]:
            # Announced once plugins are configured and started (they have their ctx).
            self.pm.broadcast(
                "moenet_maintenance_changed",
                event=MaintenanceEvent(enabled=True, since=self._maintenance["since"], reason="restored"),
            )
        await self.scheduler.start()
        logger.bind(node=self.config.node.name).info(
            "moenet-agent {} started: {} tasks, backends {}",
            __version__,
            len(self.scheduler.names()),
            ", ".join(f"{k}={s.name}" for k, s in self._backend_specs.items()) or "none",
        )

    async def _start_backends(self) -> None:
        specs = self.pm.collect_descriptors(
            "moenet_backends",
            BackendSpec,
            key=lambda s: (s.kind, s.name),
            describe=lambda k: f"backend {k[1]!r} of kind {k[0]!r}",
            config=self.config,
        )
        by_kind: dict[str, dict[str, BackendSpec]] = {}
        for (kind, name), spec in specs.items():
            by_kind.setdefault(kind, {})[name] = spec
            self._note_provided(spec.plugin, backend=f"{kind}:{name}")
        for kind, candidates in sorted(by_kind.items()):
            try:
                spec = self._select_backend(kind, candidates)
            except ConfigError as exc:
                self._backend_errors[kind] = "; ".join(exc.problems)
                logger.error("backend {}: {}", kind, self._backend_errors[kind])
                continue
            ctx = self.context(spec.plugin)
            try:
                backend = spec.factory(ctx)
                if inspect.isawaitable(backend):
                    raise PluginError(
                        f"backend factory of {spec.plugin!r} must return a Backend, not an awaitable"
                    )
                interface = BACKEND_INTERFACES.get(kind, Backend)
                if not isinstance(backend, interface):
                    raise PluginError(
                        f"backend {kind}={spec.name} of {spec.plugin!r} is a {type(backend).__name__}, "
                        f"which does not implement {interface.__name__}"
                    )
                await backend.start()
            except Exception as exc:
                self._backend_errors[kind] = f"{spec.name}: {type(exc).__name__}: {exc}"
                logger.bind(plugin=spec.plugin).opt(exception=exc).error(
                    "backend {}={} failed to start", kind, spec.name
                )
                continue
            self._backends[kind] = backend
            self._backend_specs[kind] = spec
            self._started_backends.append((kind, backend))

    def _select_backend(self, kind: str, candidates: dict[str, BackendSpec]) -> BackendSpec:
        choice = self.config.backend_choice(kind)
        if choice != "auto":
            if choice not in candidates:
                raise ConfigError(
                    [
                        f"backends.{kind}: unknown backend {choice!r}; "
                        f"choose one of: auto, {', '.join(sorted(candidates))}"
                    ]
                )
            return candidates[choice]
        decided = self.pm.first_result(
            "moenet_select_backend", kind=kind, candidates=dict(candidates), config=self.config
        )
        if decided is not None:
            name = decided[1]
            if name in candidates:
                return candidates[name]
            logger.warning("plugin {} chose unknown backend {!r} for {}", decided[0], name, kind)
        usable = []
        for spec in candidates.values():
            try:
                if spec.probe is None or spec.probe():
                    usable.append(spec)
            except Exception as exc:
                logger.bind(plugin=spec.plugin).warning(
                    "probe of backend {}={} raised: {}", kind, spec.name, exc
                )
        if not usable:
            raise ConfigError(
                [f"backends.{kind}: no available backend among {', '.join(sorted(candidates))}"]
            )
        return max(usable, key=lambda s: (s.priority, s.name))

    def _build_tasks(self) -> None:
        specs = self.pm.collect_descriptors(
            "moenet_tasks",
            TaskSpec,
            key=lambda s: s.name,
            describe=lambda k: f"task {k!r}",
            config=self.config,
        )
        for name, spec in sorted(specs.items()):
            self._note_provided(spec.plugin, task=name)
            override = self.config.tasks.get(name)
            if override is not None and not override.enabled:
                self._task_problems[name] = "disabled by tasks." + name + ".enabled"
                continue
            missing = [k for k in spec.requires if k not in self._backends]
            if missing:
                reasons = "; ".join(
                    f"{k}: {self._backend_errors.get(k, 'no plugin provides one')}" for k in missing
                )
                self._task_problems[name] = f"needs backend {', '.join(missing)} ({reasons})"
                logger.bind(task=name, plugin=spec.plugin).error("task {} not started: {}", name, reasons)
                continue
            try:
                task = spec.factory(self.context(spec.plugin))
                built: object = task
                if inspect.isawaitable(built) or not callable(getattr(built, "run_once", None)):
                    if inspect.iscoroutine(built):
                        built.close()
                    raise PluginError(
                        f"task factory for {name!r} must return an object with async run_once()"
                    )
            except Exception as exc:
                self._task_problems[name] = f"factory failed: {type(exc).__name__}: {exc}"
                self.pm.mark_failed(spec.plugin, f"task {name}: {exc}")
                continue
            self._tasks[name] = spec
            self.scheduler.add(
                spec,
                task,
                interval=override.interval if override else None,
                timeout=override.timeout if override else None,
            )

    def _note_provided(self, plugin: str, *, task: str | None = None, backend: str | None = None) -> None:
        """Record what a plugin provides (``/status`` lists it as ``moenet-agent
        plugins`` does; what actually runs is in ``tasks`` and ``backends``)."""
        record = self.pm.records.get(plugin)
        if record is None:
            return
        if task is not None and task not in record.tasks:
            record.tasks.append(task)
        if backend is not None and backend not in record.backends:
            record.backends.append(backend)

    async def _await_hooks(self, hook_name: str) -> None:
        for plugin, result in self.pm.collect(
            hook_name,
            setup=hook_name == "moenet_startup",
            per_plugin=lambda p: {"ctx": self.context(p)},
            agent=self,
        ):
            if not inspect.isawaitable(result):
                continue
            try:
                await asyncio.wait_for(_as_coroutine(result), HOOK_TIMEOUT)
            except Exception as exc:
                if hook_name == "moenet_startup":
                    self.pm.mark_failed(plugin, f"{hook_name}: {type(exc).__name__}: {exc}")
                else:
                    logger.bind(plugin=plugin).opt(exception=exc).error("{} of {} failed", hook_name, plugin)

    def _update_plugin_metrics(self) -> None:
        counts: dict[str, int] = {}
        for record in self.pm.records.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        for status in ("active", "blocked", "failed", "incompatible"):
            self.metrics.plugins.labels(status=status).set(counts.get(status, 0))

    def _task_finished(self, event: TaskRunEvent) -> None:
        self._first_runs.setdefault(event.task, asyncio.Event()).set()
        self.pm.broadcast("moenet_task_finished", event=event)
        self.memory.after_run()

    async def wait_first_sync(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once every ``on_sync`` task has finished (or failed) its first
        run, or after ``timeout`` seconds of the agent's clock."""
        events = [
            self._first_runs.setdefault(n, asyncio.Event()) for n, s in self._tasks.items() if s.on_sync
        ]
        waiting: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in events)))
        timer: asyncio.Future[Any] = asyncio.ensure_future(self.clock.sleep(timeout))
        try:
            await asyncio.wait({waiting, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            timer.cancel()
            await asyncio.gather(waiting, timer, return_exceptions=True)

    async def _watchdog_loop(self, interval: float) -> None:
        # Pings come from the event loop itself: a wedged loop stops them and
        # systemd restarts the agent.
        while True:
            systemd.notify("WATCHDOG=1")
            await self.clock.sleep(interval)

    # -------------------------------------------------------------- stop

    async def stop(self) -> None:
        """Graceful shutdown, in the order the module docstring gives."""
        if self.api is not None:
            await self.api.stop()
        await self.scheduler.stop(timeout=SHUTDOWN_GRACE)
        await self._await_hooks("moenet_shutdown")
        for kind, backend in reversed(self._started_backends):
            try:
                await backend.aclose()
            except Exception as exc:
                logger.opt(exception=exc).error("closing backend {} failed", kind)
        self._started_backends.clear()
        for ctx in self._contexts.values():
            ctx.close()
        await self.cp.aclose()
        logger.info("moenet-agent stopped")

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. Returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.start()
            if (interval := systemd.watchdog_interval()) is not None:
                self._watchdog = asyncio.ensure_future(self._watchdog_loop(interval))
            ready = asyncio.ensure_future(self._announce_ready())
            await self._stop.wait()
            ready.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            systemd.notify("STOPPING=1")
            if self._watchdog is not None:
                self._watchdog.cancel()
            await self.stop()
        return 0

    async def _announce_ready(self) -> None:
        """READY=1 once the API answers and the first sync finished or failed."""
        await self.wait_first_sync()
        systemd.notify(f"READY=1\nSTATUS=running: {len(self.scheduler.names())} tasks")

    def _on_sighup(self) -> None:
        async def reload() -> None:
            systemd.notify("RELOADING=1")
            try:
                await self.reload()
            finally:
                systemd.notify("READY=1")

        self._reload_task = asyncio.get_running_loop().create_task(reload())

    async def reload(self) -> bool:
        """Re-read the config file; apply what can change live (task intervals,
        plugin sections). Settings that need a restart are logged as such."""
        from .bootstrap import load_config

        if self.config.source is None:
            logger.warning("SIGHUP: configuration did not come from a file; nothing to reload")
            return False
        try:
            new, warnings = await load_config(self.config.source, clock=self.clock, use_cache_only=True)
        except ConfigError as exc:
            logger.error("SIGHUP: keeping the running configuration: {}", exc)
            return False
        for w in warnings:
            logger.warning("config: {}", w)
        sections = structure_plugin_sections(new, self.pm, apply=False)
        active_problems = {p: e for p, e in sections.problems.items() if self.pm.active(p)}
        if active_problems:
            detail = "; ".join(f"{p}: {', '.join(e)}" for p, e in active_problems.items())
            logger.error("SIGHUP: keeping the running configuration: {}", detail)
            return False
        old = self.config
        restart_needed = [
            key
            for key, a, b in (
                ("server", old.server, new.server),
                ("plugins", old.plugins, new.plugins),
                ("backends", old.backends, new.backends),
                ("controlPlane.url", old.control_plane.url, new.control_plane.url),
                ("state", old.state, new.state),
            )
            if a != b
        ]
        self.config = new
        self._sections = sections
        for name, spec in self._tasks.items():
            override = new.tasks.get(name)
            self.scheduler.set_interval(
                name, override.interval if override and override.interval else spec.interval
            )
        self.pm.broadcast("moenet_config_updated", old=old, new=new)
        if restart_needed:
            logger.warning("SIGHUP: {} changed; restart the agent to apply", ", ".join(restart_needed))
        logger.info("configuration reloaded from {}", new.source)
        return True

    # ---------------------------------------------------------- ApiHost

    def status(self) -> dict[str, Any]:
        now = self.clock.time()
        infos = dict(self.pm.collect("moenet_status_info", setup=False))
        plugins = self.pm.listing(info=infos)
        return {
            "version": __version__,
            "hookApiVersion": HOOK_API_VERSION,
            "uptime": round(now - self._started_at, 3) if self._started_at else 0.0,
            "node": {"name": self.config.node.name, "id": self.config.node.id, "mode": self.config.mode},
            "identity": self.identity.effective().to_json(),
            "maintenance": self.maintenance_state(),
            "controlPlane": {"source": self.config.control_plane.source, "breaker": self.cp.breaker_state},
            "plugins": plugins,
            "backends": {
                **{
                    k: {"name": s.name, "plugin": s.plugin, "ok": True}
                    for k, s in self._backend_specs.items()
                },
                **{k: {"ok": False, "error": e} for k, e in self._backend_errors.items()},
            },
            "tasks": self.scheduler.status(),
            "tasksNotStarted": dict(self._task_problems),
            "sessions": self.session_counts(),
            "health": health_summary(self.health_checks()),
            "features": self.features,
            "warnings": self.config_warnings,
        }

    async def sync(self, task: str | None, wait: bool) -> dict[str, Any]:
        names = [task] if task else [n for n, s in self._tasks.items() if s.on_sync]
        if task and task not in self._tasks:
            raise KeyError(task)
        futures = {n: self.scheduler.trigger(n) for n in names}
        if not wait:
            return {"triggered": names}
        results = {}
        for name, fut in futures.items():
            ev = await fut
            results[name] = {"ok": ev.ok, "duration": round(ev.duration, 3), "error": ev.error}
        return {"triggered": names, "results": results}

    def maintenance_state(self) -> dict[str, Any]:
        return dict(self._maintenance)

    def maintenance(self) -> dict[str, Any]:
        return self.maintenance_state()

    async def set_maintenance(self, enabled: bool, reason: str) -> dict[str, Any]:
        if enabled == self._maintenance["enabled"]:
            return self.maintenance_state()
        self._maintenance = {
            "enabled": enabled,
            "since": self.clock.time() if enabled else None,
            "reason": reason,
        }
        self.state.save(
            MAINTENANCE_FILE,
            MaintenanceDoc(enabled=enabled, since=self._maintenance["since"], reason=reason),
            version=MAINTENANCE_VERSION,
        )
        self.metrics.maintenance.set(1 if enabled else 0)
        logger.warning(
            "maintenance {}{}", "started" if enabled else "stopped", f": {reason}" if reason else ""
        )
        self.pm.broadcast(
            "moenet_maintenance_changed",
            event=MaintenanceEvent(enabled=enabled, since=self._maintenance["since"], reason=reason),
        )
        return self.maintenance_state()

    def _restore_maintenance(self) -> None:
        """Maintenance as saved. A file that cannot be read (not JSON, wrong types, a
        newer version) does not stop the start: it is moved aside to
        ``maintenance.json.bad`` for the operator and maintenance stays off."""
        try:
            saved = self.state.load(
                MAINTENANCE_FILE, MaintenanceDoc, version=MAINTENANCE_VERSION, migrate=_migrate_maintenance
            )
        except StateError as exc:
            path = self.state.path(MAINTENANCE_FILE)
            bad = path.with_name(path.name + ".bad")
            try:
                path.replace(bad)
            except OSError as move:
                logger.warning(
                    "ignoring {}, maintenance is off: {} (cannot move it aside: {})", path, exc, move
                )
            else:
                logger.warning("ignoring {}, maintenance is off: {} (moved to {})", path, exc, bad)
            return
        if saved is not None and saved.enabled:
            self._maintenance = {"enabled": True, "since": saved.since, "reason": saved.reason[:200]}
            self.metrics.maintenance.set(1)
            logger.warning("node is in maintenance (restored from the state directory)")

    async def restart(self, interface: str) -> dict[str, Any] | None:
        answer = self.pm.first_result("moenet_restart", interface=interface)
        if answer is None:
            return None
        plugin, action = answer
        result = await action()
        return {"plugin": plugin, **dict(result)}

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    @property
    def routes(self) -> Sequence[RouteSpec]:
        return self._routes


async def _as_coroutine(aw: Awaitable[Any]) -> Any:
    return await aw
