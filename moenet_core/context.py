"""What the core hands to a plugin's factories: capabilities, not globals.

A task or backend factory receives a :class:`PluginContext` bound to its plugin:
its own config section, the CP, a state directory of its own, metrics under its
own prefix, a logger bound with ``plugin=<name>``, backend lookup, task triggers,
and a way to register hook implementations on run-time objects. Plugins never
import each other or reach into the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from loguru import logger

from .descriptors import Backend, LinkLatency, LinkTarget, SessionStatusEvent, SyncEvent, TaskRunEvent
from .errors import BackendUnavailable

if TYPE_CHECKING:
    from loguru import Logger

    from .agent import Agent
    from .clock import Clock
    from .config import AgentConfig
    from .controlplane import ControlPlane
    from .metrics import PluginMetrics
    from .state import StateStore

B = TypeVar("B", bound=Backend)


class PluginContext:
    """Capabilities of one plugin inside a running agent."""

    def __init__(self, agent: Agent, plugin: str) -> None:
        self._agent = agent
        self.plugin = plugin
        self.log: Logger = logger.bind(plugin=plugin)
        self.metrics: PluginMetrics = agent.metrics.for_plugin(plugin)
        self.state: StateStore = agent.state.scoped("plugins").scoped(plugin)
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

    def add_secret(self, value: str | None) -> None:
        """Mask ``value`` (a token, a password from this plugin's section) as ``***``
        in every log line and output from now on. Values shorter than 6
        characters are ignored."""
        from .logs import add_secret

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
