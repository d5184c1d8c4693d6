"""WireGuard tunnels: the ``tunnel`` backends ``kernel`` and ``userspace``.

Selection: ``backends.tunnel`` if set, else ``wireguard.backend`` (``auto`` by
default; the plugin answers ``moenet_select_backend`` with it). ``auto`` takes
``kernel`` when the kernel offers WireGuard (probe: the ``wireguard``
generic-netlink family) and ``userspace`` (wireguard-go) otherwise (probe: the
binary is on PATH).

What exists on the node: one interface per tunnel (kind ``wireguard``, or a TUN
device served by a ``wireguard-go <ifname>`` daemon with its socket in
``/var/run/wireguard``), carrying the alias ``moenet-agent`` (owner ``sessions``)
or ``moenet-agent:<owner>`` (any other owner, e.g. ``mesh``). That alias is the
ownership marker: nothing without it is ever changed, listed or removed, and one
owner's calls never change or remove another owner's tunnel.

Only hook implementations live here; see :mod:`.base` for the behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping

from moenet_core import BackendSpec, ConfigSection, hookimpl
from moenet_core.config import AgentConfig

from .config import (
    SECTION,
    TunnelSection,
    WireguardConfig,
    raw_wireguard_go,
    section_of,
    wireguard_go_available,
)
from .genl import kernel_supports_wireguard
from .kernel import KernelTunnelBackend
from .userspace import UserspaceTunnelBackend

__all__ = ["SECTION", "KernelTunnelBackend", "TunnelSection", "UserspaceTunnelBackend", "WireguardConfig"]


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [SECTION]


@hookimpl
def moenet_select_backend(
    kind: str, candidates: Mapping[str, BackendSpec], config: AgentConfig
) -> str | None:
    """``wireguard.backend`` for ``tunnel`` when ``backends.tunnel`` leaves it to the plugins."""
    if kind != "tunnel":
        return None
    choice = section_of(config).backend
    return None if choice == "auto" else choice


@hookimpl
def moenet_backends(config: AgentConfig) -> list[BackendSpec]:
    binary = raw_wireguard_go(config)
    return [
        BackendSpec(
            kind="tunnel",
            name="kernel",
            factory=KernelTunnelBackend.from_context,
            probe=kernel_supports_wireguard,
            priority=20,
            description="WireGuard kernel module over netlink (pyroute2)",
        ),
        BackendSpec(
            kind="tunnel",
            name="userspace",
            factory=UserspaceTunnelBackend.from_context,
            probe=lambda: wireguard_go_available(binary),
            priority=10,
            description="wireguard-go daemons configured over their UAPI sockets",
        ),
    ]
