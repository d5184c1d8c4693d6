"""moenet-agent core: the public API for plugins.

Plugins import from here only::

    from moenet_core import hookimpl, TaskSpec, PluginContext
"""

from __future__ import annotations

from .backends import (
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
)
from .descriptors import (
    Backend,
    BackendSpec,
    ConfigSection,
    LinkLatency,
    LinkTarget,
    MaintenanceEvent,
    RestartAction,
    RouteSpec,
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
from .hookspecs import hookimpl, hookspec
from .intents import (
    BabelInterfaceIntent,
    EbgpPeerIntent,
    IbgpNeighborIntent,
    IbgpOptionsIntent,
    IntentError,
    RoutingIntent,
    intent_from_json,
    intent_to_json,
)
from .models import SessionStatus
from .version import __version__

#: Major version of the hook API; plugins pin ``moenet-agent>=X.Y,<X+1``.
HOOK_API_VERSION = 1

__all__ = [
    "HOOK_API_VERSION",
    "ApplyResult",
    "BabelInterfaceIntent",
    "Backend",
    "BackendSpec",
    "BackendUnavailable",
    "ConfigError",
    "ConfigSection",
    "ControlPlaneError",
    "ControlPlaneRejected",
    "ControlPlaneUnavailable",
    "EbgpPeerIntent",
    "FirewallBackend",
    "IbgpNeighborIntent",
    "IbgpOptionsIntent",
    "IntentError",
    "LinkLatency",
    "LinkTarget",
    "LoopbackBackend",
    "MaintenanceEvent",
    "MoenetError",
    "PluginError",
    "ProtocolState",
    "RestartAction",
    "RouteSpec",
    "RoutingBackend",
    "RoutingIntent",
    "SessionStatus",
    "SessionStatusEvent",
    "SyncEvent",
    "Task",
    "TaskRunEvent",
    "TaskSpec",
    "TunnelAddress",
    "TunnelBackend",
    "TunnelSpec",
    "TunnelState",
    "TunnelStats",
    "__version__",
    "hookimpl",
    "hookspec",
    "intent_from_json",
    "intent_to_json",
]


def __getattr__(name: str) -> object:
    # PluginContext imports the agent's modules; load it lazily so that
    # ``import moenet_core`` from a hookimpl module stays cheap.
    if name == "PluginContext":
        from .context import PluginContext

        return PluginContext
    raise AttributeError(name)
