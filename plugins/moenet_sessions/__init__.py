"""eBGP sessions from the control plane: the pure half of the ``sessionSync`` reconciler.

Hooks: the ``sessionSync`` task (:mod:`.task`), the ``metricCollector`` task
(:mod:`.collector`: per-session BGP, routes, tunnel and RTT report, Prometheus
series and the health verdict of :mod:`.health`), RTT targets and tiers
(:mod:`.links`), ``/restart`` of a session's interface, the optional ``sessions`` config
section (:mod:`.config`: guard limits, operator override, PSK directory), the
``GET /plugins/sessions/plan`` API route and the ``moenet-agent plan`` command
(:mod:`.cli`), which asks the running agent for that route: a plan needs the
live backends (tunnel list, firewall set), which only the agent has built.

The pure modules the task calls:

- :mod:`.model`: ``parse_sessions`` validates the CP answer into ``Session`` or
  ``Invalid`` per element, never letting one bad session break the others.
- :mod:`.desired`: ``NodeSettings`` and ``build_desired``: the tunnel spec, the
  routing fragment and the firewall port one valid session needs, deterministically.
- :mod:`.records`: the persisted per-session records (``ConfiguredSession``,
  ``Report``, ``Previous``) and their JSON forms.
- :mod:`.planner`: ``plan`` diffs desired against observed and previous state and
  says what to create, repair, remove and report (pure, no I/O).
- :mod:`.store`: the last valid CP answer, ``Previous`` and the status outbox in a
  ``StateStore``.

The planner consults the core's mass-removal guard (:mod:`moenet_core.guard`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moenet_core import ConfigSection, TaskSpec, hookimpl
from moenet_core.descriptors import LinkLatency, RouteSpec

from .collector import TASK_NAME as COLLECTOR_TASK
from .collector import MetricCollector
from .config import SessionsConfig
from .task import TASK_NAME, SessionSync, SessionSyncError, live_task

if TYPE_CHECKING:
    from moenet_core.cli import CommandRegistrar
    from moenet_core.config import AgentConfig
    from moenet_core.context import PluginContext

__all__ = ["SECTION", "TASK_NAME", "SessionSync", "SessionSyncError", "SessionsConfig"]

SECTION = "sessions"


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            name=SECTION,
            type=SessionsConfig,
            description="eBGP sessions: mass-removal guard, operator override, preshared-key directory",
        )
    ]


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=SessionSync,
            interval=config.control_plane.sync_interval,
            initial_delay=0.0,
            timeout=120.0,
            requires=("tunnel", "firewall", "routing"),
            on_sync=True,
            description="Make the node's eBGP sessions (tunnel, port, BIRD peer) match the control plane",
        ),
        TaskSpec(
            name=COLLECTOR_TASK,
            factory=make_collector,
            interval=config.control_plane.metric_interval,
            initial_delay=30.0,  # let the first sessionSync and BIRD settle
            timeout=45.0,
            requires=("routing",),  # without a tunnel backend, tunnel stats are a health reason
            description="Report per-session BGP state, routes, tunnel and RTT to the CP; metrics; health",
        ),
    ]


def _latest_latency(uuid: str) -> LinkLatency | None:
    task = live_task()
    return task.links.latest(uuid) if task is not None else None


def make_collector(ctx: PluginContext) -> MetricCollector:
    return MetricCollector(ctx, latency=_latest_latency)


@hookimpl
def moenet_api_routes(config: AgentConfig) -> list[RouteSpec]:
    from .cli import plan_route

    return [
        RouteSpec(
            method="GET",
            path="/plan",
            handler=plan_route,
            description="what a sessionSync would change now (changes nothing)",
        )
    ]


@hookimpl
def moenet_cli_commands(register: CommandRegistrar) -> None:
    from .cli import add_plan_command

    add_plan_command(register)
