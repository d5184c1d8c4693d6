"""The ``userspace`` tunnel backend: wireguard-go, configured over its UAPI socket.

For kernels without the WireGuard module (this one, and many VPS kernels).
Each tunnel is one ``wireguard-go <ifname>`` daemon owning a TUN device;
keys, port and peer go through ``/var/run/wireguard/<ifname>.sock``; addresses,
MTU, sysctls and link state through netlink like the kernel backend.

Lifecycle (see :mod:`.daemon` for why wireguard-go daemonises):

- ``ensure`` starts a daemon only when the link is missing; a running one is
  configured in place. A restarted agent therefore *adopts* its tunnels: the
  first ensure finds the marked link and writes nothing if nothing changed.
- ``remove`` deletes the link; the daemon exits and removes its socket, and the
  backend waits for that (killing a daemon that hangs, removing a stale socket).
- a new daemon sits on an automatic (random) UDP port until it is configured,
  which may be another tunnel's listen port: ``_write`` takes such a port back
  (see :meth:`UserspaceTunnelBackend._reclaim_port`).
- ``aclose`` leaves tunnels running on purpose (they are adopted by the next
  agent). A launcher still starting when the agent stops is killed by the
  cancellation of the ``ensure`` that started it, and its half-made device is
  deleted, so no unmarked tunnel or stray process is left.

Socket paths are global (not per network namespace): two namespaces must not
use the same interface name. wireguard-go refuses to start on a live socket, so
one namespace can never take over another's tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from moenet_core import crashpoint

from . import daemon
from .base import WireguardBackend
from .config import Settings, wireguard_go_available
from .device import Device, DeviceUpdate
from .errors import DaemonError, TunnelError, UapiBusyError
from .intentlog import CreateIntent, process_start
from .journal import Journal
from .limits import BATCH, InotifyRoom, check_nofile
from .links import Link, Netlink
from .uapi import SOCKET_DIR, UapiClient

if TYPE_CHECKING:
    from .endpoints import Resolver

SCAN_TTL = 2.0
"""Seconds a /proc scan for daemons is reused for tunnels it did not see start."""
EXES_TTL = 60.0
RECLAIM_POLL = 0.05
"""Seconds between attempts while a listen port's holder is being configured by its own ensure."""


class UserspaceTunnelBackend(WireguardBackend):
    """Tunnels served by wireguard-go daemons."""

    implementation: ClassVar[str] = "userspace"
    link_kind: ClassVar[str] = "tun"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        socket_dir: str = SOCKET_DIR,
        resolver: Resolver | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, resolver=resolver, **kwargs)
        self.socket_dir = socket_dir
        self._pids: dict[str, int] = {}
        self._exes: tuple[float, str, frozenset[str]] | None = None
        self._scan: tuple[float, object, dict[str, list[int]]] | None = None
        """The last /proc scan (monotonic time, network namespace, daemons by interface)."""
        self.inotify = InotifyRoom(self._executables, self.log.info)

    def _uapi(self) -> UapiClient:
        return UapiClient(self.socket_dir, self.settings.uapi_timeout)

    async def start(self) -> None:
        binary = self.settings.wireguard_go
        if not wireguard_go_available(binary):
            raise DaemonError(
                f"wireguard-go not found ({binary!r} is not an executable on PATH); "
                "install it or set tunnel.wireguardGo"
            )
        check_nofile(self.log.warning)
        # Room for the daemons running now is required; room for the next batch
        # is made when possible (else each create asks again, naming the number).
        self.inotify.reserve(1)
        try:
            self.inotify.reserve(BATCH)
        except DaemonError as exc:
            self.log.warning("{}", exc)
        await self.recover()

    def _executables(self) -> frozenset[str]:
        """:func:`daemon.executables`, looked up at most once a minute."""
        binary = self.settings.wireguard_go
        now = time.monotonic()
        if self._exes is None or self._exes[1] != binary or now - self._exes[0] > EXES_TTL:
            self._exes = (now, binary, daemon.executables(binary))
        return self._exes[2]

    async def _create(self, nl: Netlink, name: str, owner: str, journal: Journal) -> Link:
        settings = self.settings
        try:
            self.inotify.reserve(1)

            def spawned(pid: int) -> None:
                self.intents.launched(name, pid)  # the wireguard-go we started, for recover()
                crashpoint("wireguard.create.launched")

            await daemon.start(name, settings.wireguard_go, settings.start_timeout, journal, spawned)
            crashpoint("wireguard.create.made")
            link = await nl.get_link(name)
            if link is None or link.kind != "tun":
                raise DaemonError(f"{settings.wireguard_go} {name} exited 0 but created no TUN device {name}")
            alias = await nl.mark(link.index, owner, journal)
            crashpoint("wireguard.create.marked")
        except BaseException:
            # An unmarked tunnel would be refused as foreign forever: take it back down.
            with contextlib.suppress(Exception):
                await self._discard_unmarked(name, journal)
            raise
        return attrs.evolve(link, alias=alias)

    async def _discard_unmarked(self, name: str, journal: Journal) -> None:
        async with Netlink() as nl:
            link = await nl.get_link(name)
            if link is not None and link.kind == "tun" and link.owner is None:
                await self._destroy(nl, link, journal)
            else:
                await self._cleanup_absent(name, journal)

    async def _destroy(self, nl: Netlink, link: Link, journal: Journal) -> None:
        settings = self.settings
        pids = self._daemons(link.name) if link.kind == "tun" else []
        await nl.delete(link.index, journal)
        crashpoint("wireguard.remove.deleted")
        killed = await daemon.wait_exited(pids, settings.start_timeout)
        if killed:
            journal.record("daemon_kill", len(killed))
            self.log.warning("tunnel {}: wireguard-go {} did not exit; killed", link.name, killed)
        await self._cleanup_absent(link.name, journal)

    async def _cleanup_absent(self, name: str, journal: Journal) -> None:
        self._pids.pop(name, None)
        self._forget(name)
        if daemon.remove_stale_socket(self._uapi().path(name), name, self.settings.wireguard_go, journal):
            self.log.info("tunnel {}: removed a stale wireguard-go socket", name)

    async def _settle_launcher(self, entry: CreateIntent, journal: Journal) -> None:
        """The launchers started for ``entry`` may outlive a killed agent (they run in
        their own session): let them finish (each creates the device and forks the
        daemon, then exits), or stop them after ``startTimeout``.

        Not only the recorded launcher: the agent can die between starting one and
        recording it (a batch starts several before the first is recorded, and one
        that finished first is not recorded at all). Every wireguard-go launcher for
        the name started since the intent counts; left running, it would create an
        unmarked device after this create was settled as "nothing made"."""
        pids = set()
        if entry.launcher is not None:
            pid, start = entry.launcher
            if process_start(pid) == start:
                pids.add(pid)
        since = entry.since_ticks
        for pid in daemon.find_daemons(entry.name, self.settings.wireguard_go):
            if (process_start(pid) or 0) >= since and daemon.is_launcher(pid):
                pids.add(pid)
        if not pids:
            return
        self.log.info(
            "tunnel {}: waiting for the wireguard-go launcher {} of an interrupted create",
            entry.name,
            sorted(pids),
        )
        killed = await daemon.wait_exited(
            sorted(pids), self.settings.start_timeout, spare=lambda pid: not daemon.is_launcher(pid)
        )
        if killed:
            journal.record("daemon_kill", len(killed))
            self.log.warning("tunnel {}: wireguard-go launcher {} did not finish; killed", entry.name, killed)

    def _adoptable(self, link: Link, entry: CreateIntent) -> bool | None:
        """Ours when a daemon serving it started at or after our launcher (or our
        intent); dead when none serves it; not ours when only an older one does."""
        found = daemon.find_daemons(entry.name, self.settings.wireguard_go)
        if not found:
            return None
        since = entry.since_ticks
        return any((process_start(pid) or 0) >= since for pid in found)

    def _daemons(self, name: str) -> list[int]:
        """The pids of the daemons serving ``name``: the remembered one if it
        still does (a few /proc reads), else from a scan of /proc that looks up
        every tunnel at once and is reused for a moment (so a thousand tunnels
        cost one scan, not one each). That a daemon is missing is only believed
        from a scan made for this lookup."""
        binary = self.settings.wireguard_go
        exes = self._executables()
        pid = self._pids.get(name)
        if pid is not None and daemon.serves(pid, name, binary, exes=exes):
            return [pid]
        now = time.monotonic()
        netns = daemon.current_netns()
        scan = self._scan
        if (
            scan is None
            or scan[1] != netns
            or now - scan[0] > SCAN_TTL
            or name not in scan[2]  # "no daemon" is only believed from a scan made now
            or pid is not None  # the remembered daemon is gone: so may the scan's be
        ):
            scan = self._scan = (now, netns, daemon.scan(binary))
            for other, pids in scan[2].items():
                self._pids[other] = pids[0]
        found = scan[2].get(name, [])
        if found:
            self._pids[name] = found[0]
        else:
            self._pids.pop(name, None)
        return list(found)

    def _daemon(self, name: str) -> int | None:
        found = self._daemons(name)
        return found[0] if found else None

    def _serving(self, link: Link) -> bool:
        """A marked TUN whose daemon died (killed, crashed) is dead: it vanishes
        with the daemon's last file descriptor, and ensure replaces it."""
        return self._daemon(link.name) is not None

    async def _read(self, name: str) -> Device:
        return await self._uapi().get(name)

    async def _write(self, name: str, update: DeviceUpdate, journal: Journal) -> None:
        """One UAPI set. A listen port held by another tunnel's *unconfigured*
        daemon (on the automatic port it bound at start) is taken back and the set
        tried again, within ``uapiTimeout``; any other holder (a configured tunnel,
        another program) leaves :class:`~.errors.UapiBusyError` (transient)."""
        journal.record("uapi_set")
        deadline = time.monotonic() + self.settings.uapi_timeout
        while True:
            try:
                await self._uapi().set(name, update)
                return
            except UapiBusyError:
                port = update.listen_port
                if not port or time.monotonic() > deadline:
                    raise
                try:
                    again = await self._reclaim_port(name, port, journal)
                except TunnelError as exc:  # the holder went away or does not answer: retry later
                    self.log.debug("tunnel {}: could not move the holder of port {}: {}", name, port, exc)
                    again = False
                if not again:
                    raise
            except TunnelError:
                raise
            except Exception as exc:  # defensive: never let key material surface in a traceback
                raise TunnelError(f"tunnel {name}: UAPI set failed: {type(exc).__name__}") from None

    def _port_holders(self, name: str, port: int) -> set[str]:
        """The interfaces (other than ``name``) whose wireguard-go has a UDP socket on ``port``."""
        return {
            other for other in daemon.port_holders(port, self.settings.wireguard_go).values() if other != name
        }

    async def _reclaim_port(self, name: str, port: int, journal: Journal) -> bool:
        """Free ``port`` for tunnel ``name`` when one of our wireguard-go daemons holds
        it on its automatic port. True when a retry may now succeed.

        wireguard-go binds a random ephemeral port the moment it starts (this
        kernel reports a new TUN device as up to it), so a daemon created but not
        configured yet (a batch being created, or daemons left by an agent killed
        mid-create) can sit on another tunnel's listen port. A holder whose own
        ensure runs now is left to it (it is about to set its own port); an idle
        one of ours (marked, or being created) without a private key is moved to
        a new automatic port (under its lock, never waiting for it: two tunnels
        may hold each other's ports). Anyone else's daemon is never touched."""
        holders = self._port_holders(name, port)
        if not holders and daemon.udp_socket_inodes(port):
            holders = self._port_holders(name, port)  # released and taken again while we looked?
            if not holders:
                return False  # another program holds it
        if not holders:
            await asyncio.sleep(RECLAIM_POLL)  # released meanwhile (its holder was just configured)
            return True
        for other in sorted(holders):
            link = await Netlink().get_link(other)
            if link is None:  # removed meanwhile: its daemon is exiting
                await asyncio.sleep(RECLAIM_POLL)
                return True
            if not (link.owned or self.intents.pending(other) is not None):
                return False  # not one of our tunnels: never touched
            if self._locked(other):  # checked with no await before taking it: never blocks
                await asyncio.sleep(RECLAIM_POLL)  # its own ensure sets its port (or removes it)
                return True
            async with self._lock(other):
                if (await self._uapi().get(other)).private_key is not None:
                    return False  # a configured tunnel on this port: a real conflict
                await self._uapi().set(other, DeviceUpdate(listen_port=0))
            journal.record("port_reclaim")
            self.log.info(
                "tunnel {}: listen port {} was the automatic port of the unconfigured "
                "wireguard-go of {}; moved it",
                name,
                port,
                other,
            )
        return True
