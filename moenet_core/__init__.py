"""moenet-agent core: the public API for plugins.

A plugin imports the core from exactly these places:

- ``moenet_core`` itself, which re-exports everything a plugin needs: hooks
  (``hookimpl``, ``hookspec``), descriptors and events (``TaskSpec``,
  ``RouteSpec``, ``SyncEvent``...), the contexts (``PluginContext``,
  ``CommandContext``, ``CommandRegistrar``), backend interfaces and their value
  types (``TunnelBackend``, ``TunnelSpec``, ``tunnel_drift``...), errors,
  ``AgentConfig``, state (``StateStore``, ``StateError``, ``atomic_write``),
  the guard (``GuardPolicy``, ``evaluate``...), the reconciler skeleton
  (``Reconciler``...), ``PluginMetrics``, ``StreamedCollector``, ``ApiError``, ``Clock``, a CP body
  encoded ahead (``EncodedJson``), bounded
  aiohttp connections (``ConnectionLimits``, ``LimitedConnection``,
  ``LimitedRunner``), the small
  rtnetlink client (``Rtnl``, ``RtLink``, ``RtAddress``, ``RtAddressDetail``,
  ``RtAddressFlag``, ``RtScope``, ``RtRoute``, ``NetlinkError``);
- ``moenet_core.config``: the building blocks of a config section (``check``,
  ``checked``, ``positive``, ``one_of``, ``structure``, ``camel``...);
- ``moenet_core.intents``: the routing intents and their JSON forms;
- ``moenet_core.testing``: the pytest plugin and test doubles.

Every other submodule is the core's own and may change in any release;
``tests/unit/test_boundaries.py`` keeps the built-in plugins to this list::

    from moenet_core import hookimpl, TaskSpec, PluginContext

``import moenet_core`` stays cheap: names from heavy modules (the contexts, the
API, the CLI, config, metrics, the reconciler) are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .backends import (
    DEFAULT_OWNER,
    DN42_ALLOWED_IPS,
    ApplyResult,
    FirewallBackend,
    LoopbackBackend,
    ProtocolState,
    RoutingBackend,
    TunnelAddress,
    TunnelBackend,
    TunnelSpec,
    TunnelState,
    TunnelStats,
    tunnel_drift,
)
from .clock import Clock, SystemClock
from .concurrency import map_bounded
from .crashpoints import crashpoint, sweep_partial_writes
from .descriptors import (
    Backend,
    BackendSpec,
    ConfigSection,
    HealthCheck,
    LinkLatency,
    LinkTarget,
    MaintenanceEvent,
    RestartAction,
    RouteSpec,
    SectionAlias,
    SessionStatusEvent,
    SyncEvent,
    Task,
    TaskRunEvent,
    TaskSpec,
)
from .errors import (
    BackendUnavailable,
    ConfigError,
    ControlPlaneError,
    ControlPlaneRejected,
    ControlPlaneUnavailable,
    MoenetError,
    PluginError,
)
from .guard import (
    GuardMemory,
    GuardPolicy,
    GuardVerdict,
    GuardWindow,
    evaluate,
    numeric_order,
    removal_digest,
)
from .health import gather_health, health_summary
from .hookspecs import hookimpl, hookspec
from .identity import IdentityConflict, NodeIdentity
from .intents import (
    BabelInterfaceIntent,
    EbgpPeerIntent,
    IbgpNeighborIntent,
    IbgpOptionsIntent,
    IntentError,
    RoutingIntent,
    intent_from_json,
    intent_from_legacy,
    intent_to_json,
)
from .models import SessionStatus, StatusScheme, status_from_wire, status_to_wire
from .netcheck import RESERVED_IFNAMES, endpoint_ip_problem, host_header_name, ifname_problem, normal_ip
from .state import StateError, StateStore, atomic_write
from .version import __version__

if TYPE_CHECKING:
    from .api import ApiError
    from .cli import CommandHandler, CommandRegistrar
    from .config import AgentConfig
    from .connlimits import ConnectionLimits, LimitedConnection, LimitedRunner
    from .context import CommandContext, PluginContext
    from .controlplane import EncodedJson
    from .metrics import PluginMetrics, StreamedCollector
    from .plugins import AgentPluginManager
    from .reconcile import (
        Answer,
        Failure,
        ReconcileError,
        Reconciler,
        TransientError,
        is_transient,
        plan_route,
        sync_cycle,
    )
    from .rtnl import NetlinkError, RtAddress, RtAddressDetail, RtAddressFlag, RtLink, Rtnl, RtRoute, RtScope
    from .state import STATE_CONVERTER, SavedAnswer, from_document, json_codec, to_document

#: Major version of the hook API; plugins pin ``moenet-agent>=X.Y,<X+1``.
HOOK_API_VERSION = 1

#: Public names loaded on first use (module relative to this package).
_LAZY = {
    "AgentConfig": "config",
    "AgentPluginManager": "plugins",
    "Answer": "reconcile",
    "ApiError": "api",
    "CommandContext": "context",
    "CommandHandler": "cli",
    "CommandRegistrar": "cli",
    "ConnectionLimits": "connlimits",
    "EncodedJson": "controlplane",
    "Failure": "reconcile",
    "LimitedConnection": "connlimits",
    "LimitedRunner": "connlimits",
    "PluginContext": "context",
    "PluginMetrics": "metrics",
    "StreamedCollector": "metrics",
    "NetlinkError": "rtnl",
    "ReconcileError": "reconcile",
    "Reconciler": "reconcile",
    "TransientError": "reconcile",
    "is_transient": "reconcile",
    "plan_route": "reconcile",
    "sync_cycle": "reconcile",
    "RtAddress": "rtnl",
    "RtAddressDetail": "rtnl",
    "RtAddressFlag": "rtnl",
    "RtLink": "rtnl",
    "RtRoute": "rtnl",
    "RtScope": "rtnl",
    "Rtnl": "rtnl",
    "STATE_CONVERTER": "state",
    "SavedAnswer": "state",
    "from_document": "state",
    "json_codec": "state",
    "to_document": "state",
}

__all__ = [
    "DEFAULT_OWNER",
    "DN42_ALLOWED_IPS",
    "HOOK_API_VERSION",
    "RESERVED_IFNAMES",
    "STATE_CONVERTER",
    "AgentConfig",
    "AgentPluginManager",
    "Answer",
    "ApiError",
    "ApplyResult",
    "BabelInterfaceIntent",
    "Backend",
    "BackendSpec",
    "BackendUnavailable",
    "Clock",
    "CommandContext",
    "CommandHandler",
    "CommandRegistrar",
    "ConfigError",
    "ConfigSection",
    "ConnectionLimits",
    "ControlPlaneError",
    "ControlPlaneRejected",
    "ControlPlaneUnavailable",
    "EbgpPeerIntent",
    "EncodedJson",
    "Failure",
    "FirewallBackend",
    "GuardMemory",
    "GuardPolicy",
    "GuardVerdict",
    "GuardWindow",
    "HealthCheck",
    "IbgpNeighborIntent",
    "IbgpOptionsIntent",
    "IdentityConflict",
    "IntentError",
    "LimitedConnection",
    "LimitedRunner",
    "LinkLatency",
    "LinkTarget",
    "LoopbackBackend",
    "MaintenanceEvent",
    "MoenetError",
    "NetlinkError",
    "NodeIdentity",
    "PluginContext",
    "PluginError",
    "PluginMetrics",
    "ProtocolState",
    "ReconcileError",
    "Reconciler",
    "RestartAction",
    "RouteSpec",
    "RoutingBackend",
    "RoutingIntent",
    "RtAddress",
    "RtAddressDetail",
    "RtAddressFlag",
    "RtLink",
    "RtRoute",
    "RtScope",
    "Rtnl",
    "SavedAnswer",
    "SectionAlias",
    "SessionStatus",
    "SessionStatusEvent",
    "StateError",
    "StateStore",
    "StatusScheme",
    "StreamedCollector",
    "SyncEvent",
    "SystemClock",
    "Task",
    "TaskRunEvent",
    "TaskSpec",
    "TransientError",
    "TunnelAddress",
    "TunnelBackend",
    "TunnelSpec",
    "TunnelState",
    "TunnelStats",
    "__version__",
    "atomic_write",
    "crashpoint",
    "endpoint_ip_problem",
    "evaluate",
    "from_document",
    "gather_health",
    "health_summary",
    "hookimpl",
    "hookspec",
    "host_header_name",
    "ifname_problem",
    "intent_from_json",
    "intent_from_legacy",
    "intent_to_json",
    "is_transient",
    "json_codec",
    "map_bounded",
    "normal_ip",
    "numeric_order",
    "plan_route",
    "removal_digest",
    "status_from_wire",
    "status_to_wire",
    "sweep_partial_writes",
    "sync_cycle",
    "to_document",
    "tunnel_drift",
]


def __getattr__(name: str) -> object:
    # Heavy modules (aiohttp, prometheus_client, cattrs, the agent) load on first
    # use, so that ``import moenet_core`` from a hookimpl module stays cheap.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
