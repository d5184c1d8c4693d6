"""The plugin contract: every hook a moenet-agent plugin can implement.

This module *is* the hook API. Each hook says when the core calls it, what it
receives, what it must return and its type:

- **collect**: the core calls every implementation separately and gathers the
  results; one plugin raising marks that plugin failed and skips its results,
  the others still count. Names in the results must be unique across plugins.
- **firstresult**: the first implementation that returns something other than
  None decides; built-in defaults are ``trylast``.
- **historic**: replayed to plugins registered after the call.
- **broadcast**: an event; every implementation is called, failures are logged
  and isolated, return values are ignored.

Hooks are synchronous and take keyword arguments; an implementation may accept
any subset of them. A hook that leads to async work returns a descriptor holding a
factory (:mod:`moenet_core.descriptors`). Only :func:`moenet_startup` and
:func:`moenet_shutdown` may return awaitables; a coroutine returned from any other
hook is closed and reported as an error naming the plugin.

Hook implementations live on a plugin module (registered from the ``moenet``
entry-point group) or on an object a plugin registers at run time with
``ctx.register_hooks(obj)`` (e.g. a task that publishes its mesh public key).

Versioning: the hook API follows the package's major version
(:data:`moenet_core.HOOK_API_VERSION`). A minor release may add hooks, add
arguments to a hook, and add keyword fields with defaults to descriptors and
events; removing or renaming anything waits for a major release after at least
one minor release of deprecation warnings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from .descriptors import (
    BackendSpec,
    ConfigSection,
    HealthCheck,
    LinkLatency,
    LinkTarget,
    MaintenanceEvent,
    RestartAction,
    RouteSpec,
    SessionStatusEvent,
    SyncEvent,
    TaskRunEvent,
    TaskSpec,
)

if TYPE_CHECKING:
    from .agent import Agent
    from .cli import CommandRegistrar
    from .config import AgentConfig
    from .context import PluginContext
    from .plugins import AgentPluginManager

PROJECT = "moenet"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ----------------------------------------------------------------- set-up


@hookspec(historic=True)
def moenet_addhooks(pluginmanager: AgentPluginManager) -> None:
    """Add hook specifications of your own (``pluginmanager.add_hookspecs(module)``).

    **When**: once, right after the plugin is registered (historic: plugins
    registered later still get the call).
    **Use**: a plugin that offers an extension point to other plugins declares
    it here; implementers of such hooks mark them ``optionalhook=True`` so they
    load even when the declaring plugin is disabled.
    **Returns**: nothing. **Type**: historic.
    """


@hookspec
def moenet_config_sections() -> Iterable[ConfigSection]:
    """Declare the top-level config sections this plugin owns.

    **When**: before the configuration is structured (at start, on
    ``moenet-agent validate``, and on reload).
    **Returns**: ConfigSection descriptors; each names a section (``"heartbeat"``)
    and an attrs class the core structures it into, reporting every error with
    its path (``heartbeat.timeout: expected a number``). Section names must not
    collide with core sections or another plugin's. **Type**: collect.
    """
    raise NotImplementedError


@hookspec
def moenet_configure(config: AgentConfig) -> None:
    """The configuration is final and valid; check cross-section constraints.

    **When**: once at start, after plugin sections are structured and before
    backends or tasks are built. Raising marks the plugin failed (its tasks and
    backends are not started); the agent keeps running.
    **Returns**: nothing. **Type**: collect (called once per plugin).
    """


@hookspec
def moenet_backends(config: AgentConfig) -> Iterable[BackendSpec]:
    """Provide backend implementations.

    **When**: at start, after :func:`moenet_configure`.
    **Returns**: BackendSpec descriptors, each a ``(kind, name)`` with a factory
    ``factory(ctx) -> Backend``. Two plugins providing the same ``(kind, name)``
    is an error naming both. **Type**: collect.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def moenet_select_backend(
    kind: str, candidates: Mapping[str, BackendSpec], config: AgentConfig
) -> str | None:
    """Choose a backend when the config says ``auto`` for ``kind``.

    **When**: at start, once per kind that has candidates and is set to ``auto``.
    **Arguments**: ``candidates`` maps backend name to spec.
    **Returns**: a name from ``candidates``, or None to let the next
    implementation (finally the core's probe/priority rule) decide.
    **Type**: firstresult.
    """


@hookspec
def moenet_tasks(config: AgentConfig) -> Iterable[TaskSpec]:
    """Provide periodic tasks.

    **When**: at start, after backends are selected.
    **Returns**: TaskSpec descriptors with a factory ``factory(ctx) -> Task``.
    Task names are unique across plugins; a duplicate is an error naming both.
    ``tasks.<name>.enabled`` / ``interval`` in the config can switch a task off or
    retune it without touching the plugin. **Type**: collect.
    """
    raise NotImplementedError


@hookspec
def moenet_api_routes(config: AgentConfig) -> Iterable[RouteSpec]:
    """Add HTTP routes to the local API, mounted under ``/plugins/<plugin>/``.

    **When**: at start, before the API listens.
    **Returns**: RouteSpec descriptors. The handler is an aiohttp coroutine
    called as ``handler(request, ctx)``: ``ctx`` is the plugin's
    :class:`PluginContext` in the running agent, the one its tasks and backends
    got, so ``ctx.task(name)``, ``ctx.stash`` and ``ctx.backend(kind)`` reach
    the live objects (no module-level registries). Raise
    ``moenet_core.ApiError(status, code, message)`` to answer
    ``{"error", "code"}``. Mutating routes are protected like the core's.
    A handler taking only ``request`` is deprecated (still called, with a
    ``DeprecationWarning``). **Type**: collect.
    """
    raise NotImplementedError


@hookspec
def moenet_features() -> Iterable[str]:
    """Name the optional features this plugin adds (``"mesh"``, ``"rtt"``).

    **When**: when ``/status`` is served and when a heartbeat is built.
    **Returns**: feature ids (lower-case words); published so the CP can adapt.
    **Type**: collect.
    """
    raise NotImplementedError


@hookspec
def moenet_cli_commands(register: CommandRegistrar) -> None:
    """Add subcommands to ``moenet-agent`` (``render``, ``plan``...).

    **When**: when the command line names a command the core does not have, or
    asks for ``--help``; plugins are loaded (honouring the block lists) first.
    **Arguments**: ``register(name, help, handler)`` adds a subcommand and
    returns its :class:`argparse.ArgumentParser` (``-c/--config`` is already
    on it) for the plugin to add options to. ``handler(args, cmd)`` runs the
    command and returns the exit code; ``cmd`` is a
    :class:`moenet_core.CommandContext`: ``cmd.config`` (the validated
    :class:`AgentConfig`, or None when no config file was found), ``cmd.log``,
    ``cmd.clock``, and built on first use ``cmd.state`` (the plugin's state
    store) and ``cmd.cp`` (the control plane the agent would use, with retries
    and breaker; run async code with ``cmd.run(coro)``, which closes it). A
    handler whose second parameter is named ``config`` (hook API 1.0) still
    gets the config, with a ``DeprecationWarning``. A name the core or another
    plugin already uses is refused, naming both.
    **Returns**: nothing. **Type**: collect.
    """


# --------------------------------------------------------------- run time


@hookspec
def moenet_heartbeat_fields() -> Mapping[str, Any] | None:
    """Add fields to the heartbeat sent to the CP.

    **When**: each time the heartbeat task builds its payload.
    **Returns**: a mapping of JSON-able values merged into the heartbeat's
    ``status`` object (e.g. ``{"meshPublicKey": "..."}``), or None. A key offered
    by two plugins is dropped and logged naming both. Must be fast: no I/O.
    **Type**: collect.
    """


@hookspec
def moenet_status_info() -> Mapping[str, Any] | None:
    """Add plugin state to ``GET /status`` (under ``plugins[<name>].info``).

    **When**: each time ``/status`` is served. Must be fast: no I/O.
    **Returns**: a JSON-able mapping, or None. **Type**: collect.
    """


@hookspec
def moenet_health_checks() -> Iterable[HealthCheck] | None:
    """Report node-level health findings (ROA tables empty, ``rp_filter`` on the
    agent's interfaces, ...).

    **When**: each time ``/status``, ``/metrics`` or the heartbeat is built. Must
    be fast: no I/O; report what the plugin's tasks last found.
    **Returns**: :class:`~moenet_core.descriptors.HealthCheck` objects (names
    unique across plugins), or None. The node's verdict is the worst of all
    checks; it is shown in ``/status`` (``health``), sent in the heartbeat and
    exported as ``moenet_health_check{check}`` (0 healthy, 1 degraded, 2 down).
    **Type**: collect.
    """


@hookspec
def moenet_link_targets() -> Iterable[LinkTarget] | None:
    """Offer links whose round-trip time should be measured.

    **When**: at the start of every RTT round (``rttMeasurement``).
    **Returns**: :class:`~moenet_core.descriptors.LinkTarget` objects, one per
    link this plugin owns (e.g. one per configured eBGP session), or None. Must be
    fast: no I/O. **Type**: collect.
    """


@hookspec
def moenet_link_latency(measurements: tuple[LinkLatency, ...]) -> None:
    """The links' latest round-trip times, loss and DN42 latency tiers.

    **When**: at the end of every RTT round, with every link measured in it (each
    plugin picks its own ``owner``). Tiers already carry hysteresis;
    ``tier_changed`` marks the links whose tier moved this round, so an owner
    re-declares its routing fragments once for the whole round (one coalesced
    reconfigure). Must be fast; start async work with ``ctx.trigger``.
    **Type**: broadcast.
    """


@hookspec(firstresult=True)
def moenet_restart(interface: str) -> RestartAction | None:
    """Handle ``POST /restart {"interface": ...}``.

    **When**: on that API call, after authentication and name validation.
    **Returns**: None if this plugin does not own ``interface``; otherwise an
    async callable that re-applies the tunnel and restarts the protocol, and
    returns a JSON-able summary. **Type**: firstresult.
    """


@hookspec
def moenet_session_status_changed(event: SessionStatusEvent) -> None:
    """A session changed status (or was seen for the first time).

    **When**: right after the reconciler decides a session's new status, before
    the report reaches the CP; and at start, once per status known before the
    restart (``event.restored``, ``old`` None: not a change). Must be fast; start
    async work with ``ctx.trigger`` or a task. **Type**: broadcast.
    """


@hookspec
def moenet_maintenance_changed(event: MaintenanceEvent) -> None:
    """The node entered or left maintenance (API call, or restored at start).

    **When**: after the new state is persisted; a state restored at start is
    announced (``reason="restored"``) after :func:`moenet_startup`, before the
    first task run. **Type**: broadcast.
    """


@hookspec
def moenet_sync_completed(event: SyncEvent) -> None:
    """A reconciler (session, mesh, iBGP, BIRD policy sync) finished a cycle.

    **When**: at the end of every cycle, successful or not (a cancelled run emits
    nothing); emitted by :class:`moenet_core.reconcile.Reconciler` and
    :func:`moenet_core.reconcile.sync_cycle`, so a third-party reconciler gets it
    too. ``event.changes`` counts the writes; on failure ``event.error`` says why
    and ``event.transient`` whether a retry may fix it. **Type**: broadcast.
    """


@hookspec
def moenet_task_finished(event: TaskRunEvent) -> None:
    """The scheduler finished one run of any task (ok, error or timeout).

    **When**: after each run, with its duration and error. Observers use it for
    alerting or extra metrics. **Type**: broadcast.
    """


@hookspec
def moenet_config_updated(old: AgentConfig, new: AgentConfig) -> None:
    """The configuration was reloaded (SIGHUP) and the new one is valid.

    **When**: after the new config is in place. Settings that only apply at
    start (plugins, backends, listen address) need a restart; intervals and
    plugin sections take effect from here. **Type**: broadcast.
    """


@hookspec
def moenet_startup(agent: Agent, ctx: PluginContext) -> Awaitable[None] | None:
    """The agent is up: backends started, API listening, tasks about to run.

    **When**: once at start, before the scheduler's first run.
    **Arguments**: ``ctx`` is *this* plugin's own :class:`PluginContext` (its
    config section, clock, logger, state directory, metrics): a plugin made only
    of event hooks keeps it here for its later hooks.
    **Returns**: None or an awaitable, which the core awaits (bounded) before
    the first task run; a failure marks the plugin failed. **Type**: broadcast.
    """


@hookspec
def moenet_shutdown(agent: Agent, ctx: PluginContext) -> Awaitable[None] | None:
    """The agent is stopping: tasks have finished, backends are still open.
    ``ctx`` is this plugin's own context, as for :func:`moenet_startup`.

    **When**: once at shutdown (SIGTERM/SIGINT), after in-flight runs ended.
    **Returns**: None or an awaitable, awaited with a bounded timeout.
    **Type**: broadcast.
    """
