"""The ``kernel`` tunnel backend: the WireGuard module, over netlink only.

Links of kind ``wireguard`` (rtnetlink), keys and the peer through the
``wireguard`` generic-netlink family (:mod:`.genl`); no ``wg``, no ``ip``, no
wg-quick, no processes. Preferred by ``auto`` whenever the kernel has WireGuard.
Selecting it explicitly on a kernel without the module fails at start with a
message saying so (the core then reports the ``tunnel`` backend as not running).

pyroute2 (generic netlink, :mod:`.genl`) is imported at this backend's first
device read or write, not when the module is imported.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Any, ClassVar

import attrs

from moenet_core import BackendUnavailable, NetlinkError, crashpoint

from .base import WireguardBackend
from .config import Settings
from .device import Device, DeviceUpdate
from .errors import TunnelError
from .genl import GenlTransport, PyrouteGenl, build_get_message, build_set_message, kernel_supports_wireguard
from .journal import Journal
from .links import Link, Netlink

NO_KERNEL_SUPPORT = (
    "this kernel has no WireGuard support (generic netlink family 'wireguard' not found, "
    'link kind \'wireguard\' unsupported); use wireguard.backend "userspace" (wireguard-go) or "auto"'
)


class KernelTunnelBackend(WireguardBackend):
    """Tunnels served by the kernel's WireGuard module."""

    implementation: ClassVar[str] = "kernel"
    link_kind: ClassVar[str] = "wireguard"

    def __init__(
        self, settings: Settings | None = None, *, genl: GenlTransport | None = None, **kwargs: Any
    ) -> None:
        super().__init__(settings, **kwargs)
        self.genl: GenlTransport = genl if genl is not None else PyrouteGenl()

    async def start(self) -> None:
        if not kernel_supports_wireguard():
            raise BackendUnavailable(NO_KERNEL_SUPPORT)
        await self.recover()

    async def _create_link(self, nl: Netlink, name: str, journal: Journal) -> None:
        try:
            await nl.create(name, self.link_kind, journal)
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                raise TunnelError(f"cannot create {name}: {NO_KERNEL_SUPPORT}") from None
            raise

    async def _create(self, nl: Netlink, name: str, owner: str, journal: Journal) -> Link:
        await self._create_link(nl, name, journal)
        try:
            crashpoint("wireguard.create.made")
            link = await nl.get_link(name)
            if link is None:
                raise TunnelError(f"link {name} vanished right after it was created")
            alias = await nl.mark(link.index, owner, journal)
            crashpoint("wireguard.create.marked")
        except BaseException:
            with contextlib.suppress(Exception):
                async with Netlink() as cleanup:
                    created = await cleanup.get_link(name)
                    # Unmarked (or foreign): ours, half made. Never an owner's tunnel.
                    if created is not None and created.owner is None:
                        await cleanup.delete(created.index, journal)
            raise
        return attrs.evolve(link, alias=alias)

    async def _read(self, name: str) -> Device:
        from .genl import parse_device

        try:
            return parse_device(await self.genl.get(build_get_message(name)))
        except NetlinkError as exc:
            raise TunnelError(f"tunnel {name}: reading the WireGuard device failed: {exc}") from None

    async def _write(self, name: str, update: DeviceUpdate, journal: Journal) -> None:
        journal.record("genl_set")
        try:
            await self.genl.set(build_set_message(name, update))
        except NetlinkError as exc:
            raise TunnelError(f"tunnel {name}: configuring the WireGuard device failed: {exc}") from None
