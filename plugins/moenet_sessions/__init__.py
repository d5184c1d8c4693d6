"""eBGP sessions from the control plane: the pure half of the ``sessionSync`` reconciler.

Hooks: the ``sessionSync`` task (:mod:`.task`), the ``metricCollector`` task
(:mod:`.collector`: per-session BGP, routes, tunnel and RTT report, Prometheus
series and the health verdict of :mod:`.health`), RTT targets and tiers
(:mod:`.links`), ``/restart`` of a session's interface, the optional ``sessions`` config
section (:mod:`.config`: the tunnels' key, keepalive and link-local, read from the
Go agent's ``wireguard`` keys too; guard limits, operator override, PSK directory;
:mod:`.keys` publishes ``publicKeyPath`` at start), the
``GET /plugins/sessions/plan`` API route of the core's reconciler base, which
``moenet-agent plan sessions`` asks: a plan needs the live backends (tunnel list,
firewall set), which only the agent has built. ``moenet-agent adopt`` (:mod:`.adopt`)
takes over a node the Go agent built (tunnels, BIRD protocols, iptables rules)
without a BGP reset; the protocol names it keeps live in ``adopted.json``.

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

from moenet_core import (
    ConfigError,
    ConfigSection,
    LinkLatency,
    RouteSpec,
    StateStore,
    TaskSpec,
    TunnelBackend,
    hookimpl,
    plan_route,
)

from .collector import TASK_NAME as COLLECTOR_TASK
from .collector import MetricCollector
from .config import SECTION as CONFIG_SECTION
from .config import SessionsConfig, section_of
from .keys import config_problems, ensure_private_key, missing_key_problem, record, write_public_key
from .store import SessionStore
from .task import TASK_NAME, SessionSync, SessionSyncError

if TYPE_CHECKING:
    from moenet_core import CommandRegistrar, PluginContext
    from moenet_core.config import AgentConfig

__all__ = ["SECTION", "TASK_NAME", "SessionSync", "SessionSyncError", "SessionsConfig"]

SECTION = CONFIG_SECTION.name


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [CONFIG_SECTION]


def key_store(config: AgentConfig) -> StateStore:
    """This plugin's state store, where the node key's record lives (``keys.HISTORY_FILE``)."""
    return StateStore(config.state.directory).scoped("plugins").scoped(SECTION)


@hookimpl
def moenet_configure(config: AgentConfig) -> None:
    """Refuse, before any tunnel, key files that ``validate`` refuses too: a private
    key of another user or readable by others, a missing key this node had, a
    public-key path the agent must not replace (:mod:`.keys`)."""
    section = section_of(config)
    found = config_problems(section.private_key_path, section.public_key_path, key_store(config))
    if found:
        raise ConfigError(found)


@hookimpl
def moenet_startup(ctx: PluginContext) -> None:
    """The node key exists (generated, 0600, only when this node never had one) and
    is recorded; with ``sessions.publicKeyPath`` set, its public half is there."""
    section = ctx.section if isinstance(ctx.section, SessionsConfig) else SessionsConfig()
    path = section.private_key_path
    try:
        if (problem := missing_key_problem(path, ctx.state)) is not None:
            ctx.log.error("{}", problem)  # configure refused it already; never generate here
            return
        if ensure_private_key(path):
            ctx.log.warning("generated a new private key in {} (mode 0600)", path)
        public = ctx.backend("tunnel", TunnelBackend).public_key(path)
        record(ctx.state, path, public)
    except Exception as exc:  # a start-up chore: the sessions still run
        ctx.log.warning("cannot check the node key in {}: {}", path, exc)
        return
    if not section.public_key_path:
        return
    try:
        if write_public_key(section.public_key_path, public):
            ctx.log.info("wrote the session tunnels' public key to {}", section.public_key_path)
    except Exception as exc:  # a start-up chore: the sessions still run
        ctx.log.error("cannot publish the public key: {}", exc)


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


def make_collector(ctx: PluginContext) -> MetricCollector:
    def latest_latency(uuid: str) -> LinkLatency | None:
        task = ctx.stash.get(TASK_NAME)  # the sessionSync task of the same agent
        return task.links.latest(uuid) if isinstance(task, SessionSync) else None

    def shared_store() -> SessionStore | None:
        task = ctx.stash.get(TASK_NAME)
        return task.store if isinstance(task, SessionSync) else None

    return MetricCollector(ctx, latency=latest_latency, store=shared_store)


@hookimpl
def moenet_api_routes(config: AgentConfig) -> list[RouteSpec]:
    """``GET /plugins/sessions/plan`` (``moenet-agent plan sessions``)."""
    return [plan_route(TASK_NAME)]


@hookimpl
def moenet_cli_commands(register: CommandRegistrar) -> None:
    """``moenet-agent adopt``: take over the Go agent's sessions (:mod:`.adopt`)."""
    from .adopt import add_commands

    add_commands(register)
