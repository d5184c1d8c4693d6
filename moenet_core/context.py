"""What the core hands to a plugin: capabilities, not globals.

A task or backend factory, a route handler and the ``ctx`` argument of the
lifecycle hooks receive a :class:`PluginContext` bound to its plugin: its own
config section, the CP, a state directory of its own, metrics under its own
prefix, a logger bound with ``plugin=<name>``, backend lookup, task triggers and
lookup, a ``stash`` shared by the plugin's objects, and a way to register hook
implementations on run-time objects. A CLI command handler receives a
:class:`CommandContext`: the same things a command can have without a running
agent. Plugins never import each other or reach into the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, overload

from loguru import logger

from .descriptors import Backend, LinkLatency, LinkTarget, SessionStatusEvent, SyncEvent, Task, TaskRunEvent
from .errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from loguru import Logger

    from .agent import Agent
    from .clock import Clock
    from .config import AgentConfig
    from .controlplane import ControlPlane
    from .identity import NodeIdentity
    from .metrics import PluginMetrics
    from .state import StateStore

B = TypeVar("B", bound=Backend)
T = TypeVar("T")
R = TypeVar("R")


class PluginContext:
    """Capabilities of one plugin inside a running agent."""

    def __init__(self, agent: Agent, plugin: str) -> None:
        self._agent = agent
        self.plugin = plugin
        self.log: Logger = logger.bind(plugin=plugin)
        self.metrics: PluginMetrics = agent.metrics.for_plugin(plugin)
        self.state: StateStore = agent.state.scoped("plugins").scoped(plugin)
        self.stash: dict[str, Any] = {}
        """Free-form storage shared by every object of this plugin in this agent.

        There is one context, so one stash, per (agent, plugin): the plugin's
        tasks, backends, route handlers and hook objects all see the same dict.
        It is how objects of one plugin find each other (like pytest's
        ``config.stash``) instead of module-level registries, which would be
        shared by every agent in the process. Prefix keys with your module's
        name; the stash lives as long as the agent."""
        self._runtime: list[str] = []

    @property
    def config(self) -> AgentConfig:
        """The current configuration (replaced on reload: do not cache it)."""
        return self._agent.config

    @property
    def section(self) -> Any:
        """This plugin's structured config section (None if it declared none)."""
        return self._agent.plugin_section(self.plugin)

    @property
    def cp(self) -> ControlPlane:
        """The control plane (HTTP with retries and breaker, or the local file)."""
        return self._agent.cp

    @property
    def clock(self) -> Clock:
        return self._agent.clock

    @property
    def node(self) -> str:
        return self._agent.config.node.name

    @property
    def identity(self) -> NodeIdentity:
        """The node's effective identity (AS, id, loopbacks, each with its
        source): the config's value, else what a plugin published
        (:mod:`moenet_core.identity`). Read-only; ask again, do not cache."""
        return self._agent.identity.effective()

    def check_identity(self, source: str, **values: Any) -> list[str]:
        """What would conflict if ``source`` published ``values`` (``asn``, ``id``,
        ``loopback_ipv4``, ``loopback_ipv6``): one line per mismatch naming both
        values and sources; empty when they agree."""
        return self._agent.identity.check(source, **values)

    def publish_identity(self, source: str, **values: Any) -> NodeIdentity:
        """Say who the node is according to ``source`` (e.g. ``bird-config``);
        keys the config leaves unset take these values. Raises
        :class:`~moenet_core.identity.IdentityConflict` (nothing recorded) when
        they disagree with the config or another source."""
        return self._agent.identity.publish(source, **values)

    @property
    def maintenance(self) -> bool:
        """True while the node is in maintenance (drained)."""
        return bool(self._agent.maintenance_state()["enabled"])

    @overload
    def backend(self, kind: str) -> Backend: ...

    @overload
    def backend(self, kind: str, interface: Callable[..., B]) -> B: ...

    def backend(self, kind: str, interface: Callable[..., Backend] = Backend) -> Backend:
        """The running backend of ``kind``; raises :class:`BackendUnavailable`.

        Pass the interface (``ctx.backend("tunnel", TunnelBackend)``) to get a
        typed object; a backend that does not implement it is refused.
        """
        backend = self._agent.backend(kind)
        # ``interface`` is a class; it is typed as a callable so abstract interfaces type-check.
        if not isinstance(backend, interface):  # type: ignore[arg-type]
            wanted = getattr(interface, "__name__", repr(interface))
            raise BackendUnavailable(f"backend for {kind!r} is a {type(backend).__name__}, not a {wanted}")
        return backend

    def trigger(self, task: str) -> asyncio.Future[TaskRunEvent]:
        """Run ``task`` as soon as possible (coalesced with a run in progress)."""
        return self._agent.scheduler.trigger(task)

    @overload
    def task(self, name: str) -> Task | None: ...

    @overload
    def task(self, name: str, kind: type[T]) -> T | None: ...

    def task(self, name: str, kind: type[Any] | None = None) -> Any:
        """The live object the scheduler built from this plugin's ``TaskSpec``
        ``name``, or None (not built: disabled, a backend it requires is
        missing, its factory failed, or the agent has not built its tasks yet).

        Only this plugin's own tasks are returned: another plugin's task name
        gives None. Pass the class (``ctx.task("sessionSync", SessionSync)``)
        for a typed object; a task of another class raises :class:`TypeError`.
        """
        found = self._agent.scheduler.lookup(name)
        if found is None or found[0].plugin != self.plugin:
            return None
        obj = found[1]
        if kind is not None and not isinstance(obj, kind):
            raise TypeError(f"task {name!r} is a {type(obj).__name__}, not a {kind.__name__}")
        return obj

    def add_secret(self, value: str | None) -> None:
        """Mask ``value`` (a token, a password from this plugin's section) as ``***``
        in every log line and output from now on. Values shorter than 6
        characters cannot be masked (every "abc" in every line would go, and the
        gaps would spell the secret): a warning says so, and a plugin's config
        check should ask for longer ones."""
        from .logs import _MIN_SECRET_LEN, add_secret

        if value and len(value) < _MIN_SECRET_LEN:
            self.log.warning(
                "a secret of this plugin is shorter than {} characters and cannot be redacted "
                "from the logs: configure a longer one",
                _MIN_SECRET_LEN,
            )
        add_secret(value)

    def register_hooks(self, obj: object) -> None:
        """Register hook implementations on ``obj`` (a task publishing heartbeat
        fields, say). They belong to this plugin and are removed at shutdown."""
        self._runtime.append(self._agent.pm.register_runtime(self.plugin, obj))

    def call_hook(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a hook implementation by implementation, with the core's
        isolation (a raising plugin is logged and skipped); returns
        ``(plugin, result)`` for every non-None result. Works for hooks other
        plugins declared with ``moenet_addhooks``."""
        return self._agent.pm.collect(hook_name, setup=False, **kwargs)

    def emit_session_status(self, event: SessionStatusEvent) -> None:
        """Announce a session status change to every plugin (and the core's counts)."""
        self._agent.pm.broadcast("moenet_session_status_changed", event=event)

    def emit_sync_completed(self, event: SyncEvent) -> None:
        """Announce the end of a reconcile cycle."""
        self._agent.pm.broadcast("moenet_sync_completed", event=event)

    def link_targets(self) -> list[LinkTarget]:
        """Every plugin's ``moenet_link_targets`` (a raising plugin is isolated);
        entries that are not :class:`LinkTarget` are logged and dropped."""
        out: list[LinkTarget] = []
        for plugin, result in self._agent.pm.collect("moenet_link_targets", setup=False):
            for target in result or ():
                if isinstance(target, LinkTarget):
                    out.append(target)
                else:
                    self.log.warning("plugin {} offered a link target that is not a LinkTarget", plugin)
        return out

    def emit_link_latency(self, measurements: tuple[LinkLatency, ...]) -> None:
        """Announce an RTT round's results to every plugin."""
        self._agent.pm.broadcast("moenet_link_latency", measurements=measurements)

    def close(self) -> None:
        for name in self._runtime:
            self._agent.pm.unregister_runtime(name)
        self._runtime.clear()


class CommandContext:
    """What a plugin's ``moenet-agent`` subcommand handler receives:
    ``handler(args, cmd) -> int``.

    A command runs without an agent, so this is the part of :class:`PluginContext`
    a command can have: ``config`` (the validated :class:`AgentConfig`, or None
    when no config file was found), ``log`` (bound with ``plugin=<name>``),
    ``clock``, and, built on first use, ``state`` (the plugin's state store, the
    directory its running tasks use) and ``cp`` (the same control-plane client
    the agent would build: HTTP with retries and the circuit breaker, or the
    standalone file). ``state`` and ``cp`` need a config: without one they raise
    :class:`ConfigError` ("no config file found (pass -c FILE)").

    The CP is asynchronous: run the async part with :meth:`run`, which also
    closes the client. Scripts and tests build one directly:
    ``CommandContext(config, plugin="bird")``.
    """

    def __init__(self, config: AgentConfig | None, *, plugin: str, clock: Clock | None = None) -> None:
        from .clock import SystemClock

        self.plugin = plugin
        self.config = config
        self.log: Logger = logger.bind(plugin=plugin)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._root: StateStore | None = None
        self._cp: ControlPlane | None = None

    def require_config(self) -> AgentConfig:
        """The config; :class:`ConfigError` when no config file was found."""
        if self.config is None:
            raise ConfigError(["no config file found (pass -c FILE)"])
        return self.config

    def _state_root(self) -> StateStore:
        if self._root is None:
            from .state import StateStore

            self._root = StateStore(self.require_config().state.directory)
        return self._root

    @property
    def state(self) -> StateStore:
        """This plugin's state store (``<state.directory>/plugins/<plugin>/``),
        the one ``ctx.state`` is in the running agent. Mind that the agent may be
        writing it at the same time."""
        return self._state_root().scoped("plugins").scoped(self.plugin)

    @property
    def cp(self) -> ControlPlane:
        """The control plane the config selects, built once, on first use."""
        if self._cp is None:
            from .agent import make_control_plane
            from .metrics import AgentMetrics

            self._cp = make_control_plane(
                self.require_config(), clock=self.clock, metrics=AgentMetrics(), state=self._state_root()
            )
        return self._cp

    async def aclose(self) -> None:
        """Close the CP client if one was built (idempotent)."""
        cp, self._cp = self._cp, None
        if cp is not None:
            await cp.aclose()

    def run(self, main: Coroutine[Any, Any, R]) -> R:
        """``asyncio.run(main)``, closing the CP client before the loop ends:
        ``data = cmd.run(cmd.cp.fetch("bird-config"))``."""

        async def runner() -> R:
            try:
                return await main
            finally:
                await self.aclose()

        return asyncio.run(runner())
