"""Verified self-update from signed release wheels (entry point ``updater``).

Hooks: the ``updater`` task (:mod:`.task`; only when ``autoUpdate.enabled``,
every ``autoUpdate.checkInterval`` minutes, first check 5 minutes after start,
paused in maintenance), the ``updater`` config section (:mod:`.config`; local
only, holds the pinned public key), the ``moenet-agent updater`` command
(:mod:`.cli`). Verification chain in :mod:`.verify`, release selection in
:mod:`.releases`, the install layout in :mod:`.install`. Operator notes:
``plugins/moenet_updater/README.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from moenet_core import ConfigError, ConfigSection, TaskSpec, hookimpl

from .config import UpdaterConfig, problems
from .task import TASK_NAME, Updater

if TYPE_CHECKING:
    from moenet_core.cli import CommandRegistrar
    from moenet_core.config import AgentConfig

__all__ = ["INITIAL_DELAY", "RUN_TIMEOUT", "SECTION", "TASK_NAME", "Updater", "UpdaterConfig", "interval"]

SECTION = "updater"
#: Let the agent settle (and its tasks succeed once: they become the health
#: tasks of an update) before the first check.
INITIAL_DELAY = 300.0
#: One check, download and install.
RUN_TIMEOUT = 1800.0
#: The Go agent's rule: a check interval under one minute means one hour.
FALLBACK_MINUTES = 60.0


def interval(config: AgentConfig) -> float:
    """Seconds between checks, from ``autoUpdate.checkInterval`` (minutes)."""
    minutes = config.auto_update.check_interval
    return (minutes if minutes >= 1 else FALLBACK_MINUTES) * 60.0


def _section(config: AgentConfig) -> UpdaterConfig | None:
    from moenet_core.config import structure

    section, _ = structure(UpdaterConfig, config.plugin_sections.get(SECTION), SECTION, [])
    return section


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            name=SECTION,
            type=UpdaterConfig,
            description="Self-update: pinned Ed25519 key, feed, venv root, health timeout, restart command",
        )
    ]


@hookimpl
def moenet_configure(config: AgentConfig) -> None:
    if not config.auto_update.enabled:
        logger.bind(plugin="updater").info("auto-update is off (autoUpdate.enabled is false)")
        return
    found = problems(_section(config), config.auto_update)
    if found:
        raise ConfigError(found)


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    if not config.auto_update.enabled:
        return []
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=Updater,
            interval=interval(config),
            initial_delay=INITIAL_DELAY,
            jitter=0.1,
            timeout=RUN_TIMEOUT,
            skip_in_maintenance=True,
            description="check the release feed; install a signed, newer release and restart into it",
        )
    ]


@hookimpl
def moenet_cli_commands(register: CommandRegistrar) -> None:
    from .cli import add_commands

    add_commands(register)
