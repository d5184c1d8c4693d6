"""The ``loopback`` backend: the node's DN42 addresses on a dummy-like interface.

What it creates on the node, and how it knows what is its own:

- **The interface** (``loopback.interface``, default ``dummy0``), of kind
  ``loopback.kind``, only when it is missing. An interface the agent creates
  carries the alias (``IFLA_IFALIAS``, ``ip -d link`` shows it) ``moenet-agent
  loopback`` and has IPv6 address generation off (``addr_gen_mode`` 1, set while
  it is still down), so no automatic link-local appears. An interface that
  already exists, of another kind or without the alias, is used as it is and
  logged; the backend never deletes or re-creates an interface.
- **Addresses**: IPv4 ``/32`` and IPv6 ``/128``, IPv6 with ``nodad`` so the
  address is usable at once (an empty bridge has no carrier, and a tentative
  address on it would never finish DAD). The addresses the agent added are
  recorded in its state directory (``plugins/<plugin>/addresses.json``, written
  atomically *before* the kernel is changed), so a restarted agent still knows
  them. Only recorded addresses are ever removed: an operator's own address on
  the same interface stays. Comparison is on the exact canonical address and
  prefix length (the Go agent's substring test took ``172.22.188.1`` to be
  present when ``172.22.188.12`` was).

Netlink is spoken with the core's small rtnetlink client (:class:`moenet_core.Rtnl`,
not pyroute2: about 7 MB less resident) on the event-loop thread, never from a
worker thread: a thread switched into a network namespace (the
tests, a node run with ``ip netns exec``) must see its own links, and a worker
thread would see the host's. A socket is opened per call: the task runs every
few minutes and a fresh socket always belongs to the caller's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs
from loguru import logger

from moenet_core import LoopbackBackend, MoenetError, NetlinkError, Rtnl, StateError

from .config import KINDS, LoopbackConfig, check_ifname

if TYPE_CHECKING:
    from loguru import Logger

    from moenet_core import StateStore

#: The alias an interface created by the agent carries.
MARKER = "moenet-agent loopback"
#: The state file recording which addresses the agent added, per interface.
STATE_FILE = "addresses.json"
STATE_VERSION = 1


@attrs.frozen(kw_only=True)
class AddressesDoc:
    """``addresses.json`` (a state document): interface -> the addresses the agent
    added there."""

    interfaces: dict[str, list[str]]


IFA_F_NODAD = 0x02
#: ``IFLA_INET6_ADDR_GEN_MODE`` turning automatic IPv6 addresses (the link-local) off.
_NO_ADDR_GEN = 1

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class LoopbackError(MoenetError):
    """The loopback could not be made to match (the message says what and why)."""


class InvalidLoopbackAddress(LoopbackError, ValueError):
    """An address handed to :meth:`LinkLoopback.ensure` is not a single host address."""


def normalize_address(value: object) -> str:
    """The canonical form of one loopback address: ``a.b.c.d/32`` or ``x::y/128``.

    Accepts a bare address or one with the full-length prefix; refuses networks,
    other prefix lengths, scoped or special addresses, with a message naming the
    value.
    """
    if not isinstance(value, str):
        raise InvalidLoopbackAddress(f"loopback address must be a string, got {value!r}")
    text = value.strip()
    if not text or text != value or "%" in text:
        raise InvalidLoopbackAddress(f"invalid loopback address {value!r}: not an IPv4 or IPv6 address")
    try:
        iface: Address = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidLoopbackAddress(
            f"invalid loopback address {value!r}: not an IPv4 or IPv6 address"
        ) from None
    bits = iface.max_prefixlen
    if iface.network.prefixlen != bits:
        raise InvalidLoopbackAddress(
            f"invalid loopback address {value!r}: must be a single address "
            f"(IPv{iface.version} /{bits}), not a /{iface.network.prefixlen}"
        )
    ip = iface.ip
    for bad, what in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "a loopback (127/8, ::1) address"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
    ):
        if bad:
            raise InvalidLoopbackAddress(f"invalid loopback address {value!r}: {what}")
    return iface.with_prefixlen


def _sort_key(addr: str) -> tuple[int, int]:
    iface = ipaddress.ip_interface(addr)
    return iface.version, int(iface.ip)


def normalize_addresses(values: Iterable[object]) -> tuple[str, ...]:
    """Canonical, de-duplicated, sorted (IPv4 first); every bad value in one error."""
    if isinstance(values, str | bytes):
        raise InvalidLoopbackAddress(f"expected a sequence of addresses, got the string {values!r}")
    good: set[str] = set()
    problems: list[str] = []
    for value in values:
        try:
            good.add(normalize_address(value))
        except InvalidLoopbackAddress as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidLoopbackAddress("; ".join(problems))
    return tuple(sorted(good, key=_sort_key))


@attrs.frozen
class _Link:
    index: int
    name: str
    kind: str | None
    alias: str | None
    up: bool

    @property
    def marked(self) -> bool:
        return self.alias == MARKER


@attrs.frozen
class _Present:
    """Addresses on one interface: exact ``addr/len`` forms, and the bare IPs
    (an IPv6 address cannot be on an interface twice with different lengths)."""

    exact: frozenset[str]
    ips: frozenset[str]


Settings = LoopbackConfig | Callable[[], LoopbackConfig | None]


class LinkLoopback(LoopbackBackend):
    """``loopback`` backend ``netlink``.

    ``settings`` is the section, or a callable returning the current one (the
    plugin passes ``lambda: ctx.section`` so a reloaded section applies to the
    next call). ``writes`` counts netlink write requests, so a caller (or a test)
    can see that an unchanged :meth:`ensure` wrote nothing.
    """

    def __init__(self, state: StateStore, settings: Settings, *, log: Logger | None = None) -> None:
        self._state = state
        self._settings = settings
        self.log: Logger = log or logger.bind(plugin="loopback")
        self.writes = 0
        self._lock = asyncio.Lock()
        self._owned: dict[str, tuple[str, ...]] | None = None
        self._said: set[str] = set()

    # ----------------------------------------------------------- settings

    @property
    def settings(self) -> LoopbackConfig:
        current = self._settings() if callable(self._settings) else self._settings
        return current if current is not None else LoopbackConfig()

    # -------------------------------------------------------------- state

    def owned(self) -> dict[str, tuple[str, ...]]:
        """Interface -> addresses the agent added there (from the state file)."""
        if self._owned is None:
            self._owned = self._read_state()
        return dict(self._owned)

    def _read_state(self) -> dict[str, tuple[str, ...]]:
        where = self._state.path(STATE_FILE)
        # A malformed file is refused, not read as empty: the addresses it names
        # would otherwise stay on the node forever, unnoticed.
        try:
            doc = self._state.load(STATE_FILE, AddressesDoc, version=STATE_VERSION)
        except StateError as exc:
            raise LoopbackError(str(exc)) from None
        if doc is None:
            return {}
        out: dict[str, tuple[str, ...]] = {}
        for name, addrs in doc.interfaces.items():
            if (problem := check_ifname(name)) is not None:
                raise LoopbackError(f"state file {where}: interface {name!r}: {problem}")
            try:
                out[str(name)] = normalize_addresses(addrs)
            except InvalidLoopbackAddress as exc:
                raise LoopbackError(f"state file {where}: interfaces.{name}: {exc}") from None
        return out

    def _save(self, owned: dict[str, tuple[str, ...]]) -> None:
        clean = {name: tuple(sorted(set(a), key=_sort_key)) for name, a in owned.items() if a}
        if clean == self._owned:
            return
        doc = AddressesDoc(interfaces={k: list(v) for k, v in sorted(clean.items())})
        self._state.save(STATE_FILE, doc, version=STATE_VERSION)
        self._owned = clean

    # ------------------------------------------------------------ netlink

    @contextlib.asynccontextmanager
    async def _netlink(self) -> AsyncIterator[Rtnl]:
        async with Rtnl(strict=True) as rt:
            yield rt

    async def _write(self, request: Awaitable[None]) -> None:
        """Await one write request, counted in :attr:`writes`."""
        self.writes += 1
        await request

    async def _get_link(self, rt: Rtnl, name: str) -> _Link | None:
        try:
            raw = await rt.get_link(name)
        except NetlinkError as exc:
            raise LoopbackError(f"cannot read interface {name!r}: {_strerror(exc)}") from exc
        if raw is None:
            return None
        return _Link(index=raw.ifindex, name=name, kind=raw.kind, alias=raw.alias, up=raw.up)

    async def _present(self, rt: Rtnl, index: int) -> _Present:
        exact: set[str] = set()
        ips: set[str] = set()
        for addr in await rt.addresses(index):
            ips.add(str(ipaddress.ip_address(addr.local)))
            if addr.peer is not None:
                continue  # point-to-point (``local peer``): never one of ours
            exact.add(ipaddress.ip_interface(f"{addr.local}/{addr.prefixlen}").with_prefixlen)
        return _Present(frozenset(exact), frozenset(ips))

    async def _create(self, rt: Rtnl, name: str, kind: str) -> _Link:
        try:
            await self._write(rt.link_add(name, kind))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise LoopbackError(_create_error(name, kind, exc)) from exc
            # Someone created it just now: use it like any interface found in place.
            link = await self._get_link(rt, name)
            if link is None:
                raise LoopbackError(f"interface {name!r} exists and vanished at once") from exc
            self._note_foreign(link, kind)
            return link
        link = await self._get_link(rt, name)
        if link is None:
            raise LoopbackError(f"interface {name!r} vanished right after it was created")
        # While the link is down: mark it as ours, and switch off automatic IPv6
        # addresses so bringing it up adds no link-local address.
        await self._write(rt.link_set(link.index, alias=MARKER))
        try:
            await self._write(rt.link_set(link.index, ipv6_addr_gen_mode=_NO_ADDR_GEN))
        except NetlinkError as exc:
            if exc.code != errno.EAFNOSUPPORT:
                raise LoopbackError(f"cannot configure IPv6 on {name!r}: {_strerror(exc)}") from exc
            self.log.info("IPv6 is disabled on this node; {} gets no IPv6 settings", name)
        self.log.info("created loopback interface {} (kind {}, alias {!r})", name, kind, MARKER)
        return attrs.evolve(link, alias=MARKER)

    def _note_foreign(self, link: _Link, kind: str) -> None:
        if not link.marked:
            self._say_once(
                f"unmarked:{link.name}",
                "loopback interface {} was not created by the agent (no alias {!r}); "
                "it is used as it is and never deleted",
                link.name,
                MARKER,
            )
        if link.kind != kind:
            self._say_once(
                f"kind:{link.name}:{link.kind}:{kind}",
                "loopback interface {} is of kind {}, not {} (loopback.kind); used as it is, "
                "never re-created",
                link.name,
                link.kind or "unknown",
                kind,
            )

    def _say_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log.warning(message, *args)

    # --------------------------------------------------------------- API

    async def ensure(self, addresses: Sequence[str]) -> bool:
        """Make ``loopback.interface`` exist, be up and carry ``addresses``
        (IPv4 /32, IPv6 /128); remove addresses the agent added earlier that are
        no longer wanted. Returns True when the system changed.

        With no addresses wanted, nothing is created or brought up: only the
        agent's own earlier addresses are removed. Invalid input raises
        :class:`InvalidLoopbackAddress` before anything is touched.
        """
        wanted = normalize_addresses(addresses)
        settings = self.settings
        async with self._lock:
            return await self._ensure(settings, wanted)

    async def _ensure(self, settings: LoopbackConfig, wanted: tuple[str, ...]) -> bool:
        owned = self.owned()
        name = settings.interface
        if not wanted and not any(owned.values()):
            return False
        changed = False
        errors: list[str] = []
        async with self._netlink() as rt:
            link = await self._get_link(rt, name)
            if link is None and wanted:
                link = await self._create(rt, name, settings.kind)
                changed = True
            elif link is not None:
                self._note_foreign(link, settings.kind)
            if link is None:  # nothing wanted and no interface: only forget
                owned.pop(name, None)
                self._save(owned)
            else:
                if wanted and not link.up:
                    await self._write(rt.link_set(link.index, up=True))
                    self.log.info("loopback interface {} set up", name)
                    changed = True
                present = await self._present(rt, link.index)
                changed |= await self._reconcile(rt, link, wanted, present, owned, errors)
            # ``loopback.interface`` changed: take the agent's addresses off the
            # interface it used before, only once the new one is complete, so a
            # failure above leaves the node with its old loopback rather than none.
            if not errors:
                for other in [n for n in owned if n != name]:
                    changed |= await self._release(rt, other, owned, errors)
        self._raise(errors)
        return changed

    async def _reconcile(
        self,
        rt: Rtnl,
        link: _Link,
        wanted: tuple[str, ...],
        present: _Present,
        owned: dict[str, tuple[str, ...]],
        errors: list[str],
    ) -> bool:
        name = link.name
        mine = set(owned.get(name, ()))
        to_add: list[str] = []
        for addr in wanted:
            if addr in present.exact:
                if addr not in mine:
                    self._say_once(
                        f"foreign:{name}:{addr}",
                        "{} on {} was not added by the agent; left as it is (and never removed)",
                        addr,
                        name,
                    )
                continue
            ip = addr.split("/")[0]
            if ip in present.ips:
                # Already there with another prefix length (or with a peer): the
                # node has the address; adding a second copy would only confuse.
                self._say_once(
                    f"conflict:{name}:{addr}",
                    "{} is on {} with another prefix length or a peer, not added by the agent; left as it is",
                    ip,
                    name,
                )
                mine.discard(addr)
                continue
            to_add.append(addr)
        to_remove = sorted((mine & present.exact) - set(wanted), key=_sort_key)
        # Gone from the kernel by other hands (a reboot drops the interface): forget
        # unless still wanted, in which case it is re-added below.
        mine -= (mine - present.exact) - set(wanted)
        if to_add:
            # Write-ahead: record before adding, so a crash in between cannot leave
            # an address of ours on the node that the next agent does not know.
            owned[name] = tuple(mine | set(to_add))
            self._save(owned)
        changed = False
        for addr in to_add:
            iface = ipaddress.ip_interface(addr)
            flags = IFA_F_NODAD if iface.version == 6 else 0
            try:
                await self._write(
                    rt.addr_add(link.index, iface.network.prefixlen, str(iface.ip), flags=flags)
                )
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:  # raced with someone else: theirs, not ours
                    self.log.warning("{} appeared on {} meanwhile; not the agent's", addr, name)
                else:
                    errors.append(f"cannot add {addr} to {name}: {_strerror(exc)}")
                continue
            mine.add(addr)
            changed = True
            self.log.info("loopback {}: added {}", name, addr)
        for addr in to_remove:
            if await self._delete(rt, link, addr, errors):
                mine.discard(addr)
                changed = True
        owned[name] = tuple(mine)
        self._save(owned)
        return changed

    async def _delete(self, rt: Rtnl, link: _Link, addr: str, errors: list[str]) -> bool:
        """Remove one of the agent's addresses; True when it is gone."""
        iface = ipaddress.ip_interface(addr)
        try:
            await self._write(rt.addr_del(link.index, iface.network.prefixlen, str(iface.ip)))
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                return True
            errors.append(f"cannot remove {addr} from {link.name}: {_strerror(exc)}")
            return False
        self.log.info("loopback {}: removed {} (no longer wanted)", link.name, addr)
        return True

    async def _release(
        self, rt: Rtnl, name: str, owned: dict[str, tuple[str, ...]], errors: list[str]
    ) -> bool:
        """``loopback.interface`` changed: take the agent's addresses off the old
        interface (the interface itself stays)."""
        mine = set(owned.get(name, ()))
        link = await self._get_link(rt, name)
        changed = False
        if link is not None:
            present = await self._present(rt, link.index)
            for addr in sorted(mine & present.exact, key=_sort_key):
                if await self._delete(rt, link, addr, errors):
                    mine.discard(addr)
                    changed = True
            mine &= present.exact  # what is left: removals that failed
        else:
            mine.clear()
        owned[name] = tuple(mine)
        self._save(owned)
        return changed

    @staticmethod
    def _raise(errors: list[str]) -> None:
        if errors:
            raise LoopbackError("; ".join(errors))

    async def addresses(self) -> tuple[str, ...]:
        """The agent's addresses on ``loopback.interface`` now, read from the kernel."""
        name = self.settings.interface
        mine = set(self.owned().get(name, ()))
        if not mine:
            return ()
        async with self._netlink() as rt:
            link = await self._get_link(rt, name)
            if link is None:
                return ()
            present = await self._present(rt, link.index)
        return tuple(sorted(mine & present.exact, key=_sort_key))


def _strerror(exc: NetlinkError) -> str:
    code = int(exc.code)
    return f"{os.strerror(code)} (errno {code})" if code else str(exc)


def _create_error(name: str, kind: str, exc: NetlinkError) -> str:
    base = f"cannot create loopback interface {name!r} of kind {kind!r}: {_strerror(exc)}"
    if exc.code == errno.EOPNOTSUPP:
        others = ", ".join(k for k in KINDS if k != kind)
        return (
            f"{base}; this kernel has no {kind!r} link support. Load it (modprobe {kind}) "
            f"or set loopback.kind to one of {others}"
        )
    return base
