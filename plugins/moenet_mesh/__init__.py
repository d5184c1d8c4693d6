"""WireGuard IGP mesh between the nodes of one network, with Babel on top.

Hooks: the ``meshSync`` task (:mod:`.task`, every 120 s and on ``/sync``), the
optional ``mesh`` config section (:mod:`.config`; the former ``meshSync`` is read
as a deprecated alias) and the ``mesh`` feature.
At run time the task also publishes the node's mesh public key in the
heartbeat (``meshPublicKey``), offers every mesh link to the RTT plugin
(``moenet_link_targets``, owner ``mesh``), handles ``POST /restart`` for mesh
interfaces and shows its state in ``/status``.

The pure modules: :mod:`.addressing` (the addressing plan: names, ports,
link-locals), :mod:`.model` (the CP answer, validated), :mod:`.desired` (tunnel,
port and Babel interface per peer), :mod:`.planner` (the diff, with the core's mass-removal guard,
:mod:`moenet_core.guard`) and :mod:`.keys` (the mesh key file). See README.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moenet_core import ConfigSection, RouteSpec, TaskSpec, hookimpl, plan_route

from .config import SECTION as CONFIG_SECTION
from .config import MeshConfig, MeshSyncConfig
from .task import TASK_NAME, MeshSync, MeshSyncError

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

__all__ = ["INTERVAL", "SECTION", "TASK_NAME", "MeshConfig", "MeshSync", "MeshSyncConfig", "MeshSyncError"]

SECTION = CONFIG_SECTION.name
#: The Go agent's period.
INTERVAL = 120.0


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [CONFIG_SECTION]


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=MeshSync,
            interval=INTERVAL,
            initial_delay=2.0,  # birdConfigSync first: Babel needs the BIRD policy
            timeout=120.0,
            requires=("tunnel", "firewall", "routing"),
            on_sync=True,
            description="Make the WireGuard + Babel mesh to the other nodes match the control plane",
        )
    ]


@hookimpl
def moenet_features() -> list[str]:
    return ["mesh"]


@hookimpl
def moenet_api_routes(config: AgentConfig) -> list[RouteSpec]:
    """``GET /plugins/mesh/plan``: what a meshSync would change now (``moenet-agent plan mesh``)."""
    return [plan_route(TASK_NAME)]
