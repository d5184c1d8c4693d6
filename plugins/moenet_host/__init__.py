"""Host: the kernel settings a DN42 router needs (``rp_filter``, forwarding).

The ``hostCheck`` task reads ``/proc/sys`` at start, every 5 minutes and soon
after a reconciler changed something. With ``host.manageSysctls`` (the default)
it sets ``rp_filter`` to 0 where the kernel would drop asymmetric DN42 traffic
on the agent's interfaces and turns forwarding on; without, it only reports.
Either way the node health carries ``host.rp_filter`` and ``host.forwarding``
with the exact ``sysctl -w`` to run. See ``README.md`` here for what is changed
and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moenet_core import ConfigSection, TaskSpec, hookimpl

from .config import HostConfig
from .sysctl import Report, Sysctl, check
from .task import TASK_NAME, HostCheck, health_checks

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

__all__ = ["TASK_NAME", "HostCheck", "HostConfig", "Report", "Sysctl", "check", "health_checks"]


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            name="host",
            type=HostConfig,
            description="Host kernel settings: rp_filter off on the agent's interfaces, forwarding on",
        )
    ]


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=HostCheck,
            interval=300.0,
            initial_delay=0.0,
            jitter=0.1,
            timeout=30.0,
            description="Check (and fix) rp_filter and forwarding for the agent's interfaces",
        )
    ]
