"""BIRD 3: the only writer of BIRD configuration and the only user of its control socket.

- :mod:`.client` / :mod:`.protocol`: the control-socket client (read pool, one
  serialised coalescing writer) and framing / read-out parsers.
- :mod:`.policy`, :mod:`.render`, :mod:`.communities`, :mod:`.names`: the CP
  policy and peer intent, validated, rendered into the config tree.
- :mod:`.apply`: stage, ``configure check``, atomic swap, reconfigure, rollback;
  only files carrying the agent's marker are ever replaced or deleted.
- :mod:`.backend`: the ``routing`` backend ``bird`` (``declare`` fragments of the
  owners ``sessions``, ``ibgp``, ``mesh``; maintenance drain; coalesced applies).
- :mod:`.sync`: the ``birdConfigSync`` task (CP ``bird-config`` every 300 s).
- :mod:`.testing`: a real BIRD in a network namespace for tests and the lab.

Hooks: the backend, the task, the optional ``birdAgent`` section; the backend
registers ``moenet_maintenance_changed`` and ``moenet_status_info`` itself.

BIRD 3 itself is installed by ``scripts/install-bird`` (wrappers in
``/opt/moenet-bird3/bin``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from moenet_core import BackendSpec, ConfigSection, TaskSpec, hookimpl

from .apply import TreeApplier, default_bird_binary
from .backend import OWNERS, BirdRoutingBackend
from .client import BirdClient
from .config import BirdAgentConfig
from .sync import TASK_NAME, BirdConfigSync

if TYPE_CHECKING:
    from moenet_core.cli import CommandRegistrar
    from moenet_core.config import AgentConfig
    from moenet_core.context import PluginContext

__all__ = [
    "OWNERS",
    "SECTION",
    "TASK_NAME",
    "BirdAgentConfig",
    "BirdConfigSync",
    "BirdRoutingBackend",
    "TreeApplier",
]

SECTION = "birdAgent"


def make_backend(ctx: PluginContext) -> BirdRoutingBackend:
    """The backend from ``bird`` (Go-compatible keys) and ``birdAgent``."""
    bird = ctx.config.bird
    section: BirdAgentConfig = ctx.section or BirdAgentConfig()
    peers = os.path.join(bird.config_dir, "peers")
    ibgp = os.path.join(bird.config_dir, "ibgp")
    for key, value, want in (
        ("peerConfDir", bird.peer_conf_dir, peers),
        ("ibgpConfDir", bird.ibgp_conf_dir, ibgp),
    ):
        if os.path.normpath(value) != os.path.normpath(want):
            ctx.log.warning("bird.{} {} is ignored: the agent writes {}", key, value, want)
    client = BirdClient(bird.control_socket, pool_size=bird.pool_size, pool_size_max=bird.pool_size_max)
    backend = BirdRoutingBackend(
        client,
        bird.config_dir,
        state=ctx.state,
        template_dir=bird.template_dir or None,
        bird_binary=section.bird_binary or None,
        loopback_interface=section.loopback_interface,
        maintenance=ctx.maintenance,
        debounce=section.apply_debounce,
        log=ctx.log,
    )
    ctx.register_hooks(backend)
    return backend


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            name=SECTION,
            type=BirdAgentConfig,
            description="BIRD apply: bird binary for parse checks, apply debounce, loopback interface",
        )
    ]


@hookimpl
def moenet_backends(config: AgentConfig) -> list[BackendSpec]:
    socket_path = config.bird.control_socket

    def probe() -> bool:
        return default_bird_binary() is not None or os.path.exists(socket_path)

    return [
        BackendSpec(
            kind="routing",
            name="bird",
            factory=make_backend,
            probe=probe,
            description="BIRD 3 over its control socket; renders, checks and applies the config tree",
        )
    ]


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=BirdConfigSync,
            interval=300.0,
            initial_delay=0.0,
            timeout=120.0,
            requires=("routing",),
            on_sync=True,
            description="Fetch the CP's bird-config, validate it and apply it to BIRD",
        )
    ]


@hookimpl
def moenet_cli_commands(register: CommandRegistrar) -> None:
    from .cli import add_render_command

    add_render_command(register)
