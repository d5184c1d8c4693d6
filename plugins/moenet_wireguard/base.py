"""What both tunnel backends share: the ensure/remove/list/stats logic.

The two implementations differ only in how a WireGuard device is created and
how its keys and peer are read and written (kernel generic netlink or the
wireguard-go UAPI). Everything else is here, once:

**ensure** reads first and writes only the differences, in this order: create
the link if missing (and mark it as the agent's), the IPv6 sysctls (before the
link is ever up), device (key, port, peer), MTU, link up, then addresses (the
kernel drops the peer route of an IPv6 address added while the link is down). An unchanged spec performs reads
only; a changed endpoint, keepalive or address is applied in place (same
ifindex, same peer session, no forced handshake). Each call's writes are
counted in a :class:`~.journal.Journal`.

**Ownership**: only links carrying an owner's marker alias
(:func:`~.links.marker`: ``moenet-agent`` for ``sessions``,
``moenet-agent:<owner>`` for the others) are touched; an existing interface of
the same name without one is refused. Each tunnel belongs to one owner, read
from the system every time: ``ensure`` of a spec whose ``owner`` differs from
the existing tunnel's is refused (never re-labelled), ``remove(owner=...)``
refuses another owner's tunnel, and ``list(owner)`` lists only that owner's.

**Endpoints**: host names are resolved and remembered; :meth:`refresh_endpoints`
(call it once per sync cycle) re-resolves them for tunnels whose handshake is
stale and moves the peer when the address changed. It also brings back a peer
that roamed away from its configured address and then went quiet. A name that
does not resolve yet leaves the peer without an endpoint (ensure succeeds and
logs it); the next ensure or refresh fills it in.

**Reading**: :meth:`list` reads every device (the deep read); :meth:`observe`
answers from one link dump, one address dump and the settings this backend last
wrote and read back (no per-tunnel round trip). ``ensure`` runs concurrently
for different tunnels (one lock per interface name).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import time
from abc import abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from loguru import logger

from moenet_core import TunnelBackend, TunnelSpec, TunnelState, TunnelStats, crashpoint, map_bounded

from .config import Settings
from .device import DesiredDevice, Device, DeviceUpdate, endpoint_update, plan
from .endpoints import EndpointBook, Resolved, Resolver, system_resolver
from .errors import EndpointError, NotOwnedError, TunnelError
from .intentlog import DIRECTORY as INTENT_DIRECTORY
from .intentlog import CreateIntent, IntentLog, boot_id, netns_id
from .journal import Journal
from .keys import SecretKey, bytes_to_b64, load_or_create_private_key, read_key
from .links import MARKER, Link, Netlink, address_of
from .spec import Address, Desired, normalise, validate_ifname, validate_owner
from .sysctl import ensure_ipv6_sysctls

if TYPE_CHECKING:
    from loguru import Logger

    from moenet_core import PluginContext

_RawAddress = tuple[int, str, str | None]
"""(prefix length, local, peer) as the address dump gives it."""
_Observed = tuple[Link, Device | None, tuple[_RawAddress, ...], TunnelState]
"""A state :meth:`WireguardBackend.observe` built, with the link, device and raw
addresses (sorted; a tuple, a third of a frozenset's size) it came from."""


def _address_order(a: _RawAddress) -> tuple[int, str, str]:
    return a[0], a[1], a[2] or ""


#: Device reads in flight at once while listing (each is one UAPI round trip to a
#: wireguard-go process, or one netlink request): enough to overlap the waits of a
#: node with a hundred peers, few enough not to flood the daemons.
LIST_CONCURRENCY = 16


class WireguardBackend(TunnelBackend):
    """Common part of :class:`~.userspace.UserspaceTunnelBackend` and
    :class:`~.kernel.KernelTunnelBackend`."""

    implementation: ClassVar[str]
    link_kind: ClassVar[str]
    """``IFLA_INFO_KIND`` of the links this implementation creates."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        ctx: PluginContext | None = None,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
        intent_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._settings = settings
        self._ctx = ctx
        if intent_dir is None and ctx is not None:
            intent_dir = ctx.state.path(INTENT_DIRECTORY)
        self.intents = IntentLog(intent_dir)
        """Tunnels about to be created (:mod:`.intentlog`): what a crash mid-create left
        is adopted or removed by :meth:`recover`."""
        self.log: Logger = ctx.log if ctx is not None else logger.bind(plugin="wireguard")
        self.endpoints = EndpointBook(resolver or system_resolver)
        self._now = clock
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        """Per tunnel name: its lock and how many callers hold or wait for it."""
        self._confirmed: dict[str, tuple[int, Device]] = {}
        """Per tunnel: its ifindex and the WireGuard settings last written and read
        back (or read) by this backend, keys stripped; what :meth:`observe` reports."""
        self._observed: dict[str, _Observed] = {}
        """The states :meth:`observe` built last, with what they were built from."""
        self._recheck: dict[str, float] = {}
        """Per tunnel: when :meth:`refresh_endpoints` next needs to look at it
        (its handshake cannot go stale before then)."""
        self.writes: Counter[str] = Counter()
        """Every write this backend made, by operation (tests assert on it)."""
        self._metric: Any = None
        if ctx is not None:
            self._metric = ctx.metrics.counter(
                "tunnel_writes", "Changes made to WireGuard tunnels, by operation", ["op"]
            )

    @classmethod
    def from_context(cls, ctx: PluginContext) -> WireguardBackend:
        """The factory the core calls (settings are re-read from ``ctx`` per call)."""
        return cls(ctx=ctx)

    @property
    def settings(self) -> Settings:
        if self._settings is not None:
            return self._settings
        if self._ctx is not None:
            return Settings.from_context(self._ctx)
        return Settings()

    # ------------------------------------------------- implementation hooks

    @abstractmethod
    async def _create(self, nl: Netlink, name: str, owner: str, journal: Journal) -> Link:
        """Create the device ``name`` and mark it as ``owner``'s; return the marked
        link. Must not leave an unmarked device behind when it fails."""

    @abstractmethod
    async def _read(self, name: str) -> Device:
        """Keys, port and peers of the device ``name``."""

    @abstractmethod
    async def _write(self, name: str, update: DeviceUpdate, journal: Journal) -> None:
        """Apply ``update`` to the device ``name`` in one transaction."""

    async def _destroy(self, nl: Netlink, link: Link, journal: Journal) -> None:
        """Remove an owned link (of either kind) and whatever served it."""
        await nl.delete(link.index, journal)
        crashpoint("wireguard.remove.deleted")
        self._forget(link.name)

    async def _cleanup_absent(self, name: str, journal: Journal) -> None:
        """Leftovers of a tunnel whose link is already gone."""

    def _serving(self, link: Link) -> bool:
        """Is something configuring this link? (wireguard-go: a live socket.)"""
        return True

    # -------------------------------------------------------------- helpers

    @contextlib.asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        """Serialise the operations on one tunnel. The lock is dropped once nobody
        holds or waits for it: a lock that was ever waited for keeps its waiter
        queue (about 0.7 KB), which at 1 000 tunnels is most of a megabyte."""
        lock, users = self._locks.get(name) or (asyncio.Lock(), 0)
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users <= 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    def _locked(self, name: str) -> bool:
        """Someone holds (or waits for) the tunnel's lock."""
        return name in self._locks

    def _confirm(self, name: str, index: int, dev: Device) -> Device:
        """Remember ``dev`` as the device of ``name`` (link ``index``), keys and
        traffic counters stripped (an observed state has neither; at 1 000 tunnels
        the counters alone were 88 KB); returns the remembered copy."""
        kept = attrs.evolve(
            dev,
            private_key=None,
            peers=tuple(
                attrs.evolve(p, preshared_key=None, last_handshake=None, rx_bytes=0, tx_bytes=0)
                for p in dev.peers
            ),
        )
        self._confirmed[name] = (index, kept)
        return kept

    def _forget(self, name: str) -> None:
        self._confirmed.pop(name, None)
        self._recheck.pop(name, None)

    def _account(self, journal: Journal) -> None:
        self.writes.update(journal.ops)
        if self._metric is not None:
            for op, n in journal.ops.items():
                self._metric.labels(op=op).inc(n)

    def _private_key(self, path: str, settings: Settings, journal: Journal) -> SecretKey:
        """Read the key file; a missing one is generated (mode 0600). The file is
        its owner's (``sessions.privateKeyPath`` for the session tunnels, the mesh
        key in the mesh plugin's state), and so is publishing its public half
        (the sessions plugin's ``publicKeyPath``)."""
        if not os.path.lexists(path):
            key, created = load_or_create_private_key(path)
            if created:
                journal.record("key_generate")
                self.log.warning("generated a new private key in {} (mode 0600)", path)
            return key
        return read_key(path)

    @staticmethod
    def public_key(private_key_file: str) -> str:
        """The public key of a private key file (mode-checked, derived in-process)."""
        return read_key(private_key_file).public_key()

    def _fresh(self, last_handshake: float | None, settings: Settings) -> bool:
        return last_handshake is not None and self._now() - last_handshake < settings.stale_handshake

    async def _owned_link(self, nl: Netlink, name: str) -> Link:
        link = await nl.get_link(name)
        if link is None:
            raise TunnelError(f"no tunnel named {name}")
        if not link.owned:
            raise NotOwnedError(
                f"interface {name} is not one of moenet-agent's tunnels (no {MARKER!r} alias)"
            )
        return link

    @staticmethod
    def _check_owner(link: Link, owner: str, action: str) -> None:
        """Refuse ``action`` on ``link`` (one of the agent's) unless it is ``owner``'s."""
        if link.owner != owner:
            raise NotOwnedError(
                f"tunnel {link.name} belongs to owner {link.owner!r} (alias {link.alias!r}), "
                f"not {owner!r}; refusing to {action} it"
            )

    # --------------------------------------------------------------- ensure

    async def ensure(self, spec: TunnelSpec) -> bool:
        settings = self.settings
        want = normalise(spec, settings.default_keepalive)
        async with self._lock(want.name):
            journal = Journal()
            try:
                await self._ensure(want, settings, journal)
            finally:
                self._account(journal)
            if journal:
                self.log.debug("tunnel {}: {}", want.name, dict(journal.ops))
            return bool(journal)

    async def _ensure(self, want: Desired, settings: Settings, journal: Journal) -> None:
        name = want.name
        private = self._private_key(want.private_key_file, settings, journal)
        psk = read_key(want.preshared_key_file, "preshared key") if want.preshared_key_file else None
        record: Resolved | None = None
        spec_changed = False
        unresolved: EndpointError | None = None
        if want.endpoint is None:
            self.endpoints.forget(name)
        else:
            try:
                record, spec_changed = await self.endpoints.lookup(name, want.endpoint)
            except EndpointError as exc:
                unresolved = exc
                record = self.endpoints.get(name)

        async with Netlink() as nl:
            link = await nl.get_link(name)
            if link is not None and not link.owned and (pending := self.intents.pending(name)) is not None:
                # A create of ours that was interrupted and not cleaned up: settle it first.
                self.log.info("tunnel {}: {}", name, await self._settle(pending, journal))
                link = await nl.get_link(name)
            if link is not None and not link.owned:
                raise NotOwnedError(
                    f"interface {name} exists and is not one of moenet-agent's tunnels "
                    f"(no {MARKER!r} alias); refusing to touch it"
                )
            if link is not None:
                self._check_owner(link, want.owner, "touch")
            if link is not None and link.kind != self.link_kind:
                self.log.warning(
                    "tunnel {} is a {} link; recreating it for the {} backend",
                    name,
                    link.kind,
                    self.implementation,
                )
                await self._destroy(nl, link, journal)
                link = None
            elif link is not None and not self._serving(link):
                self.log.warning("tunnel {}: nothing serves the device any more; recreating it", name)
                await self._destroy(nl, link, journal)
                link = None
            created = link is None
            if link is None:
                # Recorded before anything exists: a crash from here on leaves an entry
                # that recover() settles (adopts or removes what was made).
                self.intents.record(CreateIntent.now(name, want.owner, self.link_kind))
                crashpoint("wireguard.create.intent")
                try:
                    link = await self._create(nl, name, want.owner, journal)
                except Exception:
                    # _create cleans up after itself; the entry stays only if it could not.
                    with contextlib.suppress(Exception):
                        if await nl.get_link(name) is None:
                            self.intents.drop(name)
                    raise
                self.intents.drop(name)
                self.log.info("tunnel {}: created for {} ({} backend)", name, want.owner, self.implementation)
            ensure_ipv6_sysctls(name, journal)

            # A device created just now has no key, port or peer yet: no need to ask.
            current = Device() if created else await self._read(name)
            ours = current.peer(want.peer_public_key)
            desired = DesiredDevice(
                private_key=private.raw,
                listen_port=want.listen_port,
                peer_public_key=want.peer_public_key,
                preshared_key=psk.raw if psk is not None else None,
                endpoints=record.candidates if record is not None else (),
                keep_roamed_endpoint=(
                    not spec_changed and ours is not None and self._fresh(ours.last_handshake, settings)
                ),
                keepalive=want.keepalive,
                allowed_ips=want.allowed_ips,
            )
            update = plan(current, desired)
            if update is not None:
                self.log.info("tunnel {}: {}", name, update.describe())
                self._forget(name)
                await self._write(name, update, journal)
                crashpoint("wireguard.ensure.configured")
                current = await self._read(name)  # what observe() reports from now on
            self._confirm(name, link.index, current)

            await nl.set_link(
                link.index, journal, mtu=want.mtu if link.mtu != want.mtu else None, up=not link.up
            )
            # Addresses last, on a link that is up: an IPv6 address with a peer added
            # while the link is down loses its peer route when the link comes up.
            await nl.sync_addresses(link.index, want.addresses, journal)
        if journal:
            crashpoint("wireguard.ensure.done")
        if unresolved is not None:
            # WireGuard works without an endpoint (the peer can still reach us);
            # the name is tried again by the next ensure and by refresh_endpoints().
            self.log.warning(
                "tunnel {}: {}; configured without an endpoint for now, retried every cycle",
                name,
                unresolved,
            )

    # ------------------------------------------------------ crash recovery

    async def recover(self) -> dict[str, str]:
        """Settle every create a crash interrupted (:mod:`.intentlog`): adopt (mark)
        the unmarked links that are ours, remove dead ones, clean up after creates
        that made nothing, drop the entries. Call it at start, before anything
        lists tunnels. Returns interface -> what was done (also logged)."""
        done: dict[str, str] = {}
        for entry in self.intents.load():
            async with self._lock(entry.name):
                journal = Journal()
                try:
                    done[entry.name] = outcome = await self._settle(entry, journal)
                except Exception as exc:
                    # Kept: the next start (or an ensure of the name) tries again.
                    done[entry.name] = f"not settled: {exc}"
                    self.log.warning("tunnel {}: interrupted create not settled: {}", entry.name, exc)
                    continue
                finally:
                    self._account(journal)
                self.log.warning(
                    "tunnel {}: interrupted create ({} owner): {}", entry.name, entry.owner, outcome
                )
        return done

    async def _settle(self, entry: CreateIntent, journal: Journal) -> str:
        """Settle one interrupted create (see :meth:`recover`); drops the entry
        unless it raises. Returns what was done."""
        name = entry.name
        if entry.boot != boot_id():
            self.intents.drop(name)
            return "recorded before the last boot: dropped"
        if entry.netns is not None and entry.netns != netns_id():
            self.intents.drop(name)
            return "recorded in another network namespace: dropped"
        await self._settle_launcher(entry, journal)
        async with Netlink() as nl:
            link = await nl.get_link(name)
            if link is None:
                await self._cleanup_absent(name, journal)
                outcome = "nothing was created (or it is gone): cleaned up"
            elif link.owned:
                outcome = f"the create had completed (alias {link.alias!r})"
            elif link.kind != entry.kind or link.alias:
                outcome = (
                    f"interface {name} (kind {link.kind}, alias {link.alias!r}) is not the one "
                    "being created: left alone"
                )
            else:
                ours = self._adoptable(link, entry)
                if ours is None:
                    await self._destroy(nl, link, journal)
                    outcome = "created but dead (nothing serves it): removed"
                elif ours:
                    alias = await nl.mark(link.index, entry.owner, journal)
                    crashpoint("wireguard.recover.adopted")
                    self._forget(name)
                    outcome = f"created but not marked: adopted (alias {alias!r})"
                else:
                    outcome = "served by a process older than the create: not ours, left alone"
        self.intents.drop(name)
        return outcome

    async def _settle_launcher(self, entry: CreateIntent, journal: Journal) -> None:
        """A launcher started for ``entry`` that is still running: wait for it (or stop it)."""

    def _adoptable(self, link: Link, entry: CreateIntent) -> bool | None:
        """Is the unmarked ``link`` (of the entry's name and kind) the one being
        created? None: it is, but dead (remove it). Default: yes (a kernel link
        of that name did not exist when the entry was written)."""
        return True

    # --------------------------------------------------------------- remove

    async def remove(self, name: str, *, owner: str | None = None) -> bool:
        name = validate_ifname(name)
        if owner is not None:
            owner = validate_owner(owner)
        async with self._lock(name):
            journal = Journal()
            try:
                async with Netlink() as nl:
                    link = await nl.get_link(name)
                    if link is None:
                        await self._cleanup_absent(name, journal)
                        self.endpoints.forget(name)
                        self._forget(name)
                        return False
                    if not link.owned:
                        raise NotOwnedError(
                            f"interface {name} is not one of moenet-agent's tunnels "
                            f"(no {MARKER!r} alias); refusing to remove it"
                        )
                    if owner is not None:
                        self._check_owner(link, owner, "remove")
                    await self._destroy(nl, link, journal)
                self.endpoints.forget(name)
                self.log.info("tunnel {}: removed (owner {})", name, link.owner)
                return True
            finally:
                self._account(journal)

    async def bounce(self, name: str, *, owner: str | None = None) -> None:
        """Link down and up (``/restart``): WireGuard (the kernel's, and
        wireguard-go, which follows its TUN device's link state) drops the peer's
        session keys and handshakes afresh; interface, index and settings stay."""
        name = validate_ifname(name)
        if owner is not None:
            owner = validate_owner(owner)
        async with self._lock(name):
            journal = Journal()
            try:
                async with Netlink() as nl:
                    link = await self._owned_link(nl, name)
                    if owner is not None:
                        self._check_owner(link, owner, "bounce")
                    await nl.set_down(link.index, journal)
                    await nl.set_up(link.index, journal)
                self.log.info("tunnel {}: bounced (link down and up)", name)
            finally:
                self._account(journal)

    # ---------------------------------------------------------------- stats

    async def stats(self, name: str) -> TunnelStats:
        name = validate_ifname(name)
        async with Netlink() as nl:
            await self._owned_link(nl, name)
        dev = await self._read(name)
        peer = dev.peers[0] if len(dev.peers) == 1 else None
        return TunnelStats(
            name=name,
            latest_handshake=peer.last_handshake if peer else None,
            rx_bytes=sum(p.rx_bytes for p in dev.peers),
            tx_bytes=sum(p.tx_bytes for p in dev.peers),
            endpoint=peer.endpoint if peer else None,
        )

    # ------------------------------------------------------ endpoint refresh

    async def refresh_endpoints(self, owner: str | None = None) -> builtins.list[str]:
        """Re-resolve endpoints of tunnels whose handshake is stale (of ``owner``
        only, when given).

        For every tunnel ensured with an endpoint: when its latest handshake is
        older than ``tunnel.staleHandshake`` (or there never was one), a host
        name is resolved again, and the peer's endpoint is moved when it is not
        one of the (new) addresses. Fresh tunnels are not touched, so roaming
        is never fought. Meant to be called once per sync cycle; returns the
        tunnels whose endpoint was updated.

        A tunnel whose handshake was fresh at time *h* cannot go stale before
        *h* + ``staleHandshake``: it is not looked at again until then, so a
        cycle on a node of healthy tunnels reads no device at all. The others
        are read overlapped (:data:`LIST_CONCURRENCY` at once).
        """
        settings = self.settings
        now = self._now()
        due = [n for n in self.endpoints.names() if self._recheck.get(n, 0.0) <= now]

        async def one(name: str) -> bool:
            async with self._lock(name):
                journal = Journal()
                try:
                    return await self._refresh_one(name, settings, journal, owner)
                except TunnelError as exc:
                    self.log.warning("tunnel {}: endpoint refresh failed: {}", name, exc)
                    return False
                finally:
                    self._account(journal)

        results = await map_bounded(one, due, LIST_CONCURRENCY)
        return [name for name, moved in zip(due, results, strict=True) if moved]

    async def _refresh_one(self, name: str, settings: Settings, journal: Journal, owner: str | None) -> bool:
        async with Netlink() as nl:
            link = await nl.get_link(name)
        if link is None or not link.owned or link.kind != self.link_kind:
            self.endpoints.forget(name)
            return False
        if owner is not None and link.owner != owner:
            return False
        dev = await self._read(name)
        if len(dev.peers) != 1:
            return False
        if self._fresh(dev.peers[0].last_handshake, settings):
            handshake = dev.peers[0].last_handshake
            assert handshake is not None
            self._recheck[name] = handshake + settings.stale_handshake
            return False
        peer = dev.peers[0]
        record = await self.endpoints.refresh(name)
        if record is None or not record.candidates or peer.endpoint in record.candidates:
            if record is not None and record.spec.literal is not None:
                # An address, not a name: nothing to re-resolve, and the peer can only
                # roam away with a handshake (which makes the tunnel fresh). Look again
                # once that could have gone stale, not every cycle.
                self._recheck[name] = self._now() + settings.stale_handshake
            return False
        self.log.info("tunnel {}: handshake stale, endpoint moved to {}", name, record.candidates[0])
        self._forget(name)
        await self._write(name, endpoint_update(peer.public_key, record.candidates[0]), journal)
        self._confirm(name, link.index, await self._read(name))
        return True

    # ----------------------------------------------------------------- list

    def _state(self, link: Link, dev: Device | None, addrs: set[Address]) -> TunnelState:
        owner = link.owner
        assert owner is not None, "only the agent's tunnels are listed"
        peer = dev.peers[0] if dev is not None and len(dev.peers) == 1 else None
        return TunnelState(
            name=link.name,
            ifindex=link.index,
            listen_port=dev.listen_port if dev is not None else None,
            peer_public_key=bytes_to_b64(peer.public_key) if peer else None,
            endpoint=peer.endpoint if peer else None,
            allowed_ips=tuple(sorted(peer.allowed_ips)) if peer else (),
            keepalive=(peer.keepalive or None) if peer else None,
            mtu=link.mtu,
            addresses=tuple(a.to_tunnel_address() for a in sorted(addrs)),
            up=link.up,
            owner=owner,
        )

    async def list(self, owner: str | None = None) -> Mapping[str, TunnelState]:
        """The agent's tunnels (all, or only ``owner``'s), read from the system now;
        each state's ``owner`` is read from the link's alias.

        Marked links of the other WireGuard kind (left from before a backend
        switch) are listed too, without device details, so a reconciler can
        remove them; :meth:`ensure` recreates them with this backend's kind.
        """
        if owner is not None:
            owner = validate_owner(owner)
        async with Netlink() as nl:
            links = [
                link for link in await nl.links() if link.owned and (owner is None or link.owner == owner)
            ]
            addrs = await nl.addresses()

        async def read(link: Link) -> Device | None:
            if link.kind != self.link_kind:
                return None
            try:
                return await self._read(link.name)
            except TunnelError as exc:
                self.log.warning("tunnel {}: cannot read its device: {}", link.name, exc)
                return None

        ordered = sorted(links, key=lambda lk: lk.name)
        devices = await map_bounded(read, ordered, LIST_CONCURRENCY)
        for link, dev in zip(ordered, devices, strict=True):
            if dev is not None:
                self._confirm(link.name, link.index, dev)
        return {
            link.name: self._state(link, dev, addrs.get(link.index, set()))
            for link, dev in zip(ordered, devices, strict=True)
        }

    async def observe(self, owner: str | None = None) -> Mapping[str, TunnelState]:
        """The cheap read: one link dump and one address dump (decoded by
        :class:`moenet_core.Rtnl`), plus the WireGuard settings this backend last wrote and
        read back for each tunnel (kept in memory). No per-tunnel round trip for
        a tunnel it remembers; one it does not (after a restart, or recreated
        under the same name) is read from its device as :meth:`list` does, once.

        WireGuard-side drift someone else caused (a peer removed with ``wg``, a
        roamed endpoint) shows only in :meth:`list`, the deep read.
        """
        if owner is not None:
            owner = validate_owner(owner)
        nl = Netlink()  # reads only: no write socket to open or close
        links = sorted(
            (link for link in await nl.links() if link.owned and (owner is None or link.owner == owner)),
            key=lambda lk: lk.name,
        )
        # Raw (prefixlen, local, peer) tuples: cheap to hash and compare; parsed
        # into Address only for a tunnel whose state is built anew.
        addrs: dict[int, set[_RawAddress]] = {}
        for index, prefixlen, local, peer in await nl.raw_addresses():
            addrs.setdefault(index, set()).add((prefixlen, local, peer))
        devices: dict[str, Device | None] = {}
        unknown: builtins.list[Link] = []
        for link in links:
            known = self._confirmed.get(link.name)
            if link.kind != self.link_kind:
                devices[link.name] = None
            elif known is not None and known[0] == link.index:
                devices[link.name] = known[1]
            else:
                unknown.append(link)
        if unknown:

            async def read(link: Link) -> Device | None:
                try:
                    dev = await self._read(link.name)
                except TunnelError as exc:
                    self.log.warning("tunnel {}: cannot read its device: {}", link.name, exc)
                    return None
                return self._confirm(link.name, link.index, dev)

            for link, dev in zip(unknown, await map_bounded(read, unknown, LIST_CONCURRENCY), strict=True):
                devices[link.name] = dev
        states: dict[str, _Observed] = {}
        for link in links:
            dev, have = devices[link.name], tuple(sorted(addrs.get(link.index, ()), key=_address_order))
            cached = self._observed.get(link.name)
            if cached is not None and cached[0] == link and cached[1] is dev and cached[2] == have:
                states[link.name] = cached
            else:
                parsed = {address_of(*a) for a in have}
                states[link.name] = (link, dev, have, self._state(link, dev, parsed))
        if owner is None:
            self._observed = states
        else:  # keep other owners' entries
            self._observed = {
                n: v for n, v in self._observed.items() if v[0].owner != owner and n not in states
            } | states
        return {name: entry[3] for name, entry in states.items()}
