"""Loopback: the node's DN42 addresses on a dummy-like interface.

Provides the ``loopback`` backend ``netlink`` (:class:`LinkLoopback`) and the
``loopbackSync`` task, which puts the node's loopbacks from config
(``node.loopbackIpv4/6``, else ``wireguard.dn42Ipv4/6``) on the interface named
by the ``loopback`` section: at start, every 5 minutes (an operator's ``ip addr
flush`` or a re-created interface is repaired), and soon after a config reload.

The Go agent did this once at start, matched addresses by substring and never
removed an old loopback; see :mod:`moenet_loopback.backend` for how this one
decides what is its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moenet_core import BackendSpec, ConfigSection, LoopbackBackend, TaskSpec, hookimpl

from .backend import (
    MARKER,
    InvalidLoopbackAddress,
    LinkLoopback,
    LoopbackError,
    normalize_address,
    normalize_addresses,
)
from .config import KINDS, LoopbackConfig

if TYPE_CHECKING:
    from moenet_core import PluginContext
    from moenet_core.config import AgentConfig

__all__ = [
    "KINDS",
    "MARKER",
    "TASK_NAME",
    "InvalidLoopbackAddress",
    "LinkLoopback",
    "LoopbackConfig",
    "LoopbackError",
    "LoopbackSync",
    "normalize_address",
    "normalize_addresses",
]

TASK_NAME = "loopbackSync"
SECTION = "loopback"


def wanted_addresses(config: AgentConfig) -> list[str]:
    """The node's loopbacks from config, IPv4 first; empty when none is set."""
    return [a for a in (config.loopback_ipv4, config.loopback_ipv6) if a]


class LoopbackSync:
    """The ``loopbackSync`` task: ensure the node's loopbacks on the interface.

    It registers itself for ``moenet_config_updated`` so a reload (a new
    loopback, another interface, ``enabled`` switched) applies within moments,
    not at the next 5-minute tick.
    """

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self._said: set[str] = set()
        ctx.register_hooks(self)

    @hookimpl
    def moenet_config_updated(self, old: AgentConfig, new: AgentConfig) -> None:
        try:
            self.ctx.trigger(TASK_NAME)
        except (KeyError, RuntimeError) as exc:  # not scheduled (yet), or no loop
            self.ctx.log.warning("cannot schedule {} after the reload: {}", TASK_NAME, exc)

    def _say_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            self.ctx.log.info(message, *args)

    async def run_once(self) -> dict[str, Any]:
        section: LoopbackConfig = self.ctx.section or LoopbackConfig()
        if not section.enabled:
            self._say_once("disabled", "loopback.enabled is false: the loopback interface is left alone")
            return {"enabled": False}
        self._said.discard("disabled")
        wanted = wanted_addresses(self.ctx.config)
        if not wanted:
            self._say_once(
                "empty",
                "no loopback address configured (node.loopbackIpv4/6 or wireguard.dn42Ipv4/6); "
                "nothing to put on {}",
                section.interface,
            )
        else:
            self._said.discard("empty")
        backend = self.ctx.backend("loopback", LoopbackBackend)
        # With nothing wanted this only takes off addresses the agent added earlier
        # (and touches nothing at all when there are none).
        changed = await backend.ensure(wanted)
        return {
            "interface": section.interface,
            "wanted": wanted,
            "present": list(await backend.addresses()),
            "changed": changed,
        }


def _backend(ctx: PluginContext) -> LinkLoopback:
    return LinkLoopback(ctx.state, lambda: ctx.section, log=ctx.log)


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [
        ConfigSection(
            name=SECTION,
            type=LoopbackConfig,
            description="Interface (and its link kind) holding the node's DN42 loopback addresses",
        )
    ]


@hookimpl
def moenet_backends(config: AgentConfig) -> list[BackendSpec]:
    return [
        BackendSpec(
            kind="loopback",
            name="netlink",
            factory=_backend,
            description="dummy-like interface managed over rtnetlink",
        )
    ]


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    return [
        TaskSpec(
            name=TASK_NAME,
            factory=LoopbackSync,
            interval=300.0,
            initial_delay=0.0,
            timeout=30.0,
            requires=("loopback",),
            description="Ensure the node's DN42 loopback addresses on the loopback interface",
        )
    ]
