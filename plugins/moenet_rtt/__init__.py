"""RTT and DN42 latency tiers of the links other plugins offer.

Hooks: the ``rttMeasurement`` task (:mod:`.task`, every 300 s, first run 60 s
after start so sessions are up) and the optional ``rtt`` config section
(:mod:`.config`; the Go agent's ``metric`` keys are read into it). The task
probes the ``LinkTarget`` objects plugins offer through
``moenet_link_targets`` with ICMP echo out of each link's own interface
(:mod:`.icmp`: raw sockets, needs root or ``CAP_NET_RAW``), keeps a DN42 latency
tier per link with hysteresis (:mod:`.tier`), announces the results through
``moenet_link_latency``, reports them to the CP (``POST /agent/{node}/rtt``) and
exports ``moenet_rtt_*`` gauges. It knows nothing about sessions or the mesh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moenet_core import ConfigSection, TaskSpec, hookimpl

from .config import SECTION as CONFIG_SECTION
from .config import RttConfig
from .task import TASK_NAME, RttMeasurement

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

__all__ = ["INITIAL_DELAY", "INTERVAL", "SECTION", "TASK_NAME", "RttConfig", "RttMeasurement"]

SECTION = CONFIG_SECTION.name
#: The Go agent's period.
INTERVAL = 300.0
#: Let the first sessionSync bring the tunnels up before they are probed.
INITIAL_DELAY = 60.0


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [CONFIG_SECTION]


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=RttMeasurement,
            interval=INTERVAL,
            initial_delay=INITIAL_DELAY,
            jitter=0.1,
            timeout=240.0,
            description="ICMP RTT and loss of every offered link, DN42 latency tiers, POST /agent/{node}/rtt",
        )
    ]
