"""Links and addresses of tunnel interfaces, over rtnetlink.

Reads (one link, all links, addresses) go through :mod:`.rtdump`, which decodes
only the attributes used here; writes go through pyroute2 (async). A fresh
socket is opened per backend call (the pyroute2 one only at its first write),
on the event-loop thread: a socket belongs to the network namespace of the
calling thread at that moment (what the tests rely on). Nothing here runs in
another thread.

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

import ipaddress
from types import TracebackType
from typing import Any

import attrs
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from moenet_core import DEFAULT_OWNER

from . import rtdump
from .journal import Journal
from .spec import OWNER_RE, Address, validate_owner

MARKER = "moenet-agent"
WIREGUARD_KINDS = ("wireguard", "tun")
IFF_UP = 0x1


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


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=kind,
        alias=msg.get_attr("IFLA_IFALIAS"),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        up=bool(msg["flags"] & IFF_UP),
    )


def _raw_link(raw: rtdump.RawLink) -> Link:
    index, name, kind, alias, mtu, flags = raw
    return Link(index=index, name=name, kind=kind, alias=alias, mtu=mtu, up=bool(flags & IFF_UP))


_ADDRESSES: dict[tuple[int, str, str | None], Address] = {}
"""Parsed addresses by their raw form: a node's tunnel addresses rarely change,
and parsing them (``ipaddress``) dominated observing a thousand tunnels."""
_ADDRESS_CACHE_MAX = 1 << 16


def address_of(prefixlen: int, local: str, peer: str | None) -> Address:
    """The :class:`Address` of a raw address (:func:`.rtdump.dump_addresses`), parsed once."""
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


def _address(msg: Any) -> Address:
    local = msg.get_attr("IFA_LOCAL")
    address = msg.get_attr("IFA_ADDRESS")
    prefixlen = int(msg["prefixlen"])
    if local is None:
        local, address = address, None
    peer = address if address is not None and address != local else None
    return Address(
        local=ipaddress.ip_interface(f"{local}/{prefixlen}"),
        peer=ipaddress.ip_address(peer) if peer is not None else None,
    )


class Netlink:
    """``async with Netlink() as nl``: reads are free, writes go to the journal."""

    def __init__(self) -> None:
        self._ipr: Any = None

    async def __aenter__(self) -> Netlink:
        return self

    async def _open(self) -> Any:
        """The pyroute2 socket, opened at the first write (a call that only reads
        never opens one)."""
        if self._ipr is None:
            ipr = AsyncIPRoute()
            await ipr.__aenter__()
            self._ipr = ipr
        return self._ipr

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            await ipr.__aexit__(et, ev, tb)

    # ------------------------------------------------------------- reads

    # Reads go through :mod:`.rtdump` (decodes only the attributes used here);
    # they need no open pyroute2 socket.

    async def get_link(self, name: str) -> Link | None:
        raw = await rtdump.get_link(name)
        return _raw_link(raw) if raw is not None else None

    async def links(self) -> list[Link]:
        return [_raw_link(raw) for raw in await rtdump.dump_links()]

    async def addresses(self, index: int | None = None) -> dict[int, set[Address]]:
        """Addresses per link index (of one link when ``index`` is given: the
        kernel filters that dump, so it costs the same at any number of links)."""
        out: dict[int, set[Address]] = {}
        for ifindex, prefixlen, local, peer in await rtdump.dump_addresses(index):
            out.setdefault(ifindex, set()).add(address_of(prefixlen, local, peer))
        return out

    # ------------------------------------------------------------ writes

    async def create(self, name: str, kind: str, journal: Journal) -> None:
        journal.record("link_add")
        await (await self._open()).link("add", ifname=name, kind=kind)

    async def mark(self, index: int, owner: str, journal: Journal) -> str:
        """Set the alias marking the link as ``owner``'s tunnel; returns the alias."""
        alias = marker(owner)
        journal.record("link_alias")
        await (await self._open()).link("set", index=index, ifalias=alias)
        return alias

    async def delete(self, index: int, journal: Journal) -> None:
        journal.record("link_del")
        try:
            await (await self._open()).link("del", index=index)
        except NetlinkError as exc:
            if exc.code != 19:  # already gone (wireguard-go exited): fine
                raise

    async def set_mtu(self, index: int, mtu: int, journal: Journal) -> None:
        journal.record("link_mtu")
        await (await self._open()).link("set", index=index, mtu=mtu)

    async def set_up(self, index: int, journal: Journal) -> None:
        journal.record("link_up")
        await (await self._open()).link("set", index=index, state="up")

    async def set_down(self, index: int, journal: Journal) -> None:
        journal.record("link_down")
        await (await self._open()).link("set", index=index, state="down")

    async def set_link(
        self, index: int, journal: Journal, *, mtu: int | None = None, up: bool = False
    ) -> None:
        """Set the MTU and/or bring the link up in one request (one link event,
        which every wireguard-go daemon in the namespace wakes up for)."""
        spec: dict[str, Any] = {}
        if mtu is not None:
            journal.record("link_mtu")
            spec["mtu"] = mtu
        if up:
            journal.record("link_up")
            spec["state"] = "up"
        if spec:
            await (await self._open()).link("set", index=index, **spec)

    async def add_address(self, index: int, addr: Address, journal: Journal) -> None:
        journal.record("addr_add")
        spec: dict[str, Any] = {"index": index, "prefixlen": addr.local.network.prefixlen}
        if addr.peer is not None:
            spec.update(local=str(addr.local.ip), address=str(addr.peer))
        elif addr.family == 4:
            spec.update(local=str(addr.local.ip), address=str(addr.local.ip))
        else:
            spec.update(address=str(addr.local.ip))
        await (await self._open()).addr("add", **spec)

    async def del_address(self, index: int, addr: Address, journal: Journal) -> None:
        journal.record("addr_del")
        spec: dict[str, Any] = {"index": index, "prefixlen": addr.local.network.prefixlen}
        if addr.peer is not None or addr.family == 4:
            spec.update(local=str(addr.local.ip), address=str(addr.peer or addr.local.ip))
        else:
            spec.update(address=str(addr.local.ip))
        try:
            await (await self._open()).addr("del", **spec)
        except NetlinkError as exc:
            if exc.code != 99:  # EADDRNOTAVAIL: gone already (a primary took it along)
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
