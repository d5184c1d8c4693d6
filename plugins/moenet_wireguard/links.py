"""Links and addresses of tunnel interfaces, over rtnetlink.

Spoken with the core's small rtnetlink client (:class:`moenet_core.Rtnl`,
which decodes only the attributes used here): no pyroute2 on this path. Each
read opens its own socket; writes share one per :class:`Netlink`, opened at the
first write. Sockets are opened on the event-loop thread: a socket belongs to
the network namespace of the calling thread at that moment (what the tests rely
on). Nothing here runs in another thread.

Ownership: the agent marks every tunnel it creates with the interface alias
(``IFLA_IFALIAS``) naming its owner (:func:`marker`), set right after creation
and before the link goes up: exactly :data:`MARKER` (``moenet-agent``) for the
default owner ``sessions`` (the alias every tunnel had before owners existed),
``moenet-agent:<owner>`` for any other (``moenet-agent:mesh``). Only links
carrying such an alias, of a WireGuard kind (``wireguard`` for the kernel
module, ``tun`` for wireguard-go), are ever changed or removed, and only on
behalf of their owner. Any other alias (``moenet-agent:Bad!``,
``moenet-agent:sessions``) is foreign, exactly like no alias at all.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Iterator
from types import TracebackType

import attrs

from moenet_core import DEFAULT_OWNER, NetlinkError, RtAddress, RtLink, Rtnl

from .journal import Journal
from .spec import OWNER_RE, Address, validate_owner

MARKER = "moenet-agent"
WIREGUARD_KINDS = ("wireguard", "tun")


def marker(owner: str) -> str:
    """The alias that marks a tunnel of ``owner``: ``moenet-agent`` for the
    default owner (unchanged since before owners existed), else ``moenet-agent:<owner>``."""
    owner = validate_owner(owner)
    return MARKER if owner == DEFAULT_OWNER else f"{MARKER}:{owner}"


def owner_of(alias: str | None) -> str | None:
    """The owner an alias marks, or None when it is not one of the agent's
    (no alias, another tool's, or a malformed or non-canonical marker)."""
    if alias == MARKER:
        return DEFAULT_OWNER
    if alias is None or not alias.startswith(f"{MARKER}:"):
        return None
    owner = alias[len(MARKER) + 1 :]
    if owner == DEFAULT_OWNER or not OWNER_RE.fullmatch(owner):
        return None
    return owner


@attrs.frozen
class Link:
    index: int
    name: str
    kind: str | None
    alias: str | None
    mtu: int
    up: bool

    @property
    def owner(self) -> str | None:
        """The owner whose tunnel this is (its alias on a WireGuard-kind link),
        None when it is not one of the agent's tunnels."""
        return owner_of(self.alias) if self.kind in WIREGUARD_KINDS else None

    @property
    def owned(self) -> bool:
        """Created by the agent (for any owner): an owner's marker alias on a WireGuard-kind link."""
        return self.owner is not None


def _raw_link(raw: RtLink) -> Link:
    return Link(index=raw.ifindex, name=raw.name, kind=raw.kind, alias=raw.alias, mtu=raw.mtu, up=raw.up)


_ADDRESSES: dict[tuple[int, str, str | None], Address] = {}
"""Parsed addresses by their raw form: a node's tunnel addresses rarely change,
and parsing them (``ipaddress``) dominated observing a thousand tunnels."""
_ADDRESS_CACHE_MAX = 1 << 16


def address_of(prefixlen: int, local: str, peer: str | None) -> Address:
    """The :class:`Address` of a raw address (:meth:`Netlink.raw_addresses`), parsed once."""
    key = (prefixlen, local, peer)
    addr = _ADDRESSES.get(key)
    if addr is None:
        if len(_ADDRESSES) >= _ADDRESS_CACHE_MAX:
            _ADDRESSES.clear()
        addr = _ADDRESSES[key] = Address(
            local=ipaddress.ip_interface(f"{local}/{prefixlen}"),
            peer=ipaddress.ip_address(peer) if peer is not None else None,
        )
    return addr


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """A refused read raises :class:`OSError` (errno and all), as reads always
    did here: a transient errno (``EBUSY``, ``EAGAIN``) then reads as transient."""
    try:
        yield
    except NetlinkError as exc:
        raise OSError(exc.code, exc.args[1]) from None


class Netlink:
    """``async with Netlink() as nl``: reads are free, writes go to the journal."""

    def __init__(self) -> None:
        self._rt: Rtnl | None = None

    async def __aenter__(self) -> Netlink:
        return self

    def _writer(self) -> Rtnl:
        """The socket for writes, opened at the first one (a call that only
        reads never opens it)."""
        if self._rt is None:
            self._rt = Rtnl()
        return self._rt

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        rt, self._rt = self._rt, None
        if rt is not None:
            rt.close()

    # ------------------------------------------------------------- reads

    async def get_link(self, name: str) -> Link | None:
        with _reading():
            async with Rtnl() as rt:
                raw = await rt.get_link(name)
        return _raw_link(raw) if raw is not None else None

    async def links(self) -> list[Link]:
        with _reading():
            async with Rtnl() as rt:
                return [_raw_link(raw) for raw in await rt.links()]

    async def raw_addresses(self, index: int | None = None) -> list[RtAddress]:
        """Addresses as the kernel reports them (cheap to hash and compare)."""
        with _reading():
            async with Rtnl(strict=index is not None) as rt:
                return await rt.addresses(index)

    async def addresses(self, index: int | None = None) -> dict[int, set[Address]]:
        """Addresses per link index (of one link when ``index`` is given: the
        kernel filters that dump, so it costs the same at any number of links)."""
        out: dict[int, set[Address]] = {}
        for ifindex, prefixlen, local, peer in await self.raw_addresses(index):
            out.setdefault(ifindex, set()).add(address_of(prefixlen, local, peer))
        return out

    # ------------------------------------------------------------ writes

    async def create(self, name: str, kind: str, journal: Journal) -> None:
        journal.record("link_add")
        await self._writer().link_add(name, kind)

    async def mark(self, index: int, owner: str, journal: Journal) -> str:
        """Set the alias marking the link as ``owner``'s tunnel; returns the alias."""
        alias = marker(owner)
        journal.record("link_alias")
        await self._writer().link_set(index, alias=alias)
        return alias

    async def delete(self, index: int, journal: Journal) -> None:
        journal.record("link_del")
        try:
            await self._writer().link_del(index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # already gone (wireguard-go exited): fine
                raise

    async def set_mtu(self, index: int, mtu: int, journal: Journal) -> None:
        journal.record("link_mtu")
        await self._writer().link_set(index, mtu=mtu)

    async def set_up(self, index: int, journal: Journal) -> None:
        journal.record("link_up")
        await self._writer().link_set(index, up=True)

    async def set_down(self, index: int, journal: Journal) -> None:
        journal.record("link_down")
        await self._writer().link_set(index, up=False)

    async def set_link(
        self, index: int, journal: Journal, *, mtu: int | None = None, up: bool = False
    ) -> None:
        """Set the MTU and/or bring the link up in one request (one link event,
        which every wireguard-go daemon in the namespace wakes up for)."""
        if mtu is not None:
            journal.record("link_mtu")
        if up:
            journal.record("link_up")
        if mtu is not None or up:
            await self._writer().link_set(index, mtu=mtu, up=True if up else None)

    async def add_address(self, index: int, addr: Address, journal: Journal) -> None:
        journal.record("addr_add")
        prefixlen = addr.local.network.prefixlen
        if addr.peer is not None:
            await self._writer().addr_add(index, prefixlen, str(addr.peer), local=str(addr.local.ip))
        elif addr.family == 4:
            ip = str(addr.local.ip)
            await self._writer().addr_add(index, prefixlen, ip, local=ip)
        else:
            await self._writer().addr_add(index, prefixlen, str(addr.local.ip))

    async def del_address(self, index: int, addr: Address, journal: Journal) -> None:
        journal.record("addr_del")
        prefixlen = addr.local.network.prefixlen
        ip = str(addr.local.ip)
        local = ip if addr.peer is not None or addr.family == 4 else None
        try:
            await self._writer().addr_del(index, prefixlen, str(addr.peer or ip), local=local)
        except NetlinkError as exc:
            if exc.code != errno.EADDRNOTAVAIL:  # gone already (a primary took it along)
                raise

    async def sync_addresses(self, index: int, want: frozenset[Address], journal: Journal) -> None:
        """Exactly ``want`` on the link: stale ones removed first, then missing added.

        The link is the agent's own, so any other address on it is stale. After a
        removal the list is read again: deleting a primary IPv4 address can take
        its secondaries along.
        """
        have = (await self.addresses(index)).get(index, set())
        stale = sorted(have - want)
        for addr in stale:
            await self.del_address(index, addr, journal)
        if stale:
            have = (await self.addresses(index)).get(index, set())
        for addr in sorted(want - have):
            await self.add_address(index, addr, journal)
