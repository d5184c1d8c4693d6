"""iBGP between the nodes of one network over their loopbacks: the ``ibgpSync`` task.

The plugin owns this node's iBGP peer set and declares it to the ``routing``
backend as owner ``ibgp``; it never writes BIRD files (the backend renders them
in the same coalesced reconfigure as everything else). Pieces:

- :mod:`.model`: the CP's peer list validated entry by entry, and the
  route-reflector topology;
- :mod:`.task`: the ``ibgpSync`` task (fetch, validate, the core's mass-removal
  guard :mod:`moenet_core.guard`, topology, declare-if-changed, persist,
  ``/status``);
- :mod:`.config`: the ``ibgp`` section (``enabled``, ``routeReflector``,
  ``guardMaxShare``, ``guardMinCount``, ``allowRemoval``).

**Where the peers come from: the ``bird-config`` answer's ``ibgpPeers``**
(``[{nodeId, nodeName, loopbackIpv4, loopbackIpv6, isRr}]``), not the mesh
answer. Why:

- it is the CP's iBGP contract: the design's CP table lists "iBGP peers" under
  ``bird-config``, and the Go agent took its iBGP peers only from there, with
  these field names, so an existing CP already serves them;
- the mesh answer lists the nodes this node builds WireGuard tunnels to, i.e.
  the IGP adjacency. iBGP runs between loopbacks that Babel routes over any
  path, so the two sets need not be equal (a partial tunnel mesh still needs
  iBGP to every route reflector); tying them would drop a BGP session whenever
  a direct tunnel is missing;
- the mesh entries carry keys, endpoints and MTUs that are no concern of iBGP:
  validating them here would cost an iBGP session for a bad WireGuard key.

``ibgpSync`` fetches ``bird-config`` itself (every 120 s, and on ``/sync``)
rather than waiting for ``birdConfigSync`` (300 s): plugins never share state.
The BIRD plugin still parses ``ibgpPeers`` but never renders them. A node that
leaves the network must therefore leave ``ibgpPeers`` (for iBGP) as well as the
mesh answer (for its tunnels).

This node is recognised by ``node.id`` from the config (else the answer's
``node.id``, else by name); its role is the ``isRr`` of its own entry in the
list, else ``ibgp.routeReflector``, else not a route reflector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moenet_core import ConfigSection, RouteSpec, TaskSpec, hookimpl, plan_route

from .config import IbgpConfig
from .model import Answer, AnswerError, Node, parse_answer, sessions
from .task import OWNER, RESOURCE, TASK_NAME, IbgpSync, IbgpSyncError

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

__all__ = [
    "OWNER",
    "RESOURCE",
    "SECTION",
    "TASK_NAME",
    "Answer",
    "AnswerError",
    "IbgpConfig",
    "IbgpSync",
    "IbgpSyncError",
    "Node",
    "parse_answer",
    "sessions",
]

SECTION = "ibgp"


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            name=SECTION,
            type=IbgpConfig,
            description="iBGP: on/off, route-reflector role when the CP does not say, mass-removal guard",
        )
    ]


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=IbgpSync,
            interval=120.0,
            initial_delay=0.0,
            timeout=60.0,
            requires=("routing",),
            on_sync=True,
            description="Make this node's iBGP sessions (route-reflector topology) match the control plane",
        )
    ]


@hookimpl
def moenet_api_routes(config: AgentConfig) -> list[RouteSpec]:
    """``GET /plugins/ibgp/plan``: what a ibgpSync would change now (``moenet-agent plan ibgp``)."""
    return [plan_route(TASK_NAME)]
