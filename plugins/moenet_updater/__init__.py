"""Verified self-update from signed release wheels (entry point ``updater``).

Hooks: the ``updater`` task (:mod:`.task`; only when ``updater.enabled``,
every ``updater.checkInterval`` minutes, first check 5 minutes after start,
paused in maintenance), the ``updater`` config section (:mod:`.config`; holds the
pinned public key; the Go agent's ``autoUpdate`` is read into it), the ``moenet-agent updater`` command
(:mod:`.cli`). Verification chain in :mod:`.verify`, release selection in
:mod:`.releases`, the install layout in :mod:`.install`. Operator notes:
``plugins/moenet_updater/README.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger

from moenet_core import ConfigError, ConfigSection, TaskSpec, hookimpl

from .config import SECTION as CONFIG_SECTION
from .config import UpdaterConfig, problems, section_of

if TYPE_CHECKING:
    from moenet_core import CommandRegistrar, PluginContext
    from moenet_core.config import AgentConfig

    from .task import Updater

__all__ = ["INITIAL_DELAY", "RUN_TIMEOUT", "SECTION", "TASK_NAME", "Updater", "UpdaterConfig", "interval"]

SECTION = CONFIG_SECTION.name
TASK_NAME = "updater"
#: Let the agent settle (and its tasks succeed once: they become the health
#: tasks of an update) before the first check.
INITIAL_DELAY = 300.0
#: One check, download and install.
RUN_TIMEOUT = 1800.0
#: The Go agent's rule: a check interval under one minute means one hour.
FALLBACK_MINUTES = 60.0


def interval(config: AgentConfig) -> float:
    """Seconds between checks, from ``updater.checkInterval`` (minutes)."""
    minutes = (section_of(config) or UpdaterConfig()).check_interval
    return (minutes if minutes >= 1 else FALLBACK_MINUTES) * 60.0


def _enabled(config: AgentConfig) -> bool:
    section = section_of(config)
    return section is not None and section.enabled


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [CONFIG_SECTION]


@hookimpl
def moenet_configure(config: AgentConfig) -> None:
    if not _enabled(config):
        logger.bind(plugin="updater").info("auto-update is off (updater.enabled is false)")
        return
    found = problems(section_of(config))
    if found:
        raise ConfigError(found)


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    if not _enabled(config):
        return []
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=_updater,
            interval=interval(config),
            initial_delay=INITIAL_DELAY,
            jitter=0.1,
            timeout=RUN_TIMEOUT,
            skip_in_maintenance=True,
            description="check the release feed; install a signed, newer release and restart into it",
        )
    ]


def _updater(ctx: PluginContext) -> Updater:
    # The task and what it needs (the installer, ``packaging``: about 1 MB) load
    # only on a node that updates itself; the updater is off by default.
    from .task import Updater

    return Updater(ctx)


def __getattr__(name: str) -> Any:
    if name == "Updater":
        from .task import Updater

        return Updater
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def moenet_cli_commands(register: CommandRegistrar) -> None:
    from .cli import add_commands

    add_commands(register)
