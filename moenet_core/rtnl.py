"""A small rtnetlink client: the link and address requests the agent makes.

Why not pyroute2: importing it costs about 7 MB resident (its package loads every
submodule), and the agent needs a dozen message shapes. Requests are encoded
here exactly as pyroute2 encoded them (``tests/unit/test_rtnl.py`` holds the
bytes it sent), and a refusal raises :class:`NetlinkError` with the same
``code`` and text as pyroute2's, so callers keep their errno checks.

Replies are decoded only as far as the agent uses them: a link's index, flags,
name, MTU, alias and kind; an address's index, prefix length, local address and
peer (with :meth:`Rtnl.address_details`, also its ``IFA_F_*`` flags and scope);
a route lookup's output interface, preferred source and gateway. Statistics are
left out kernel-side (``RTEXT_FILTER_SKIP_STATS``), and a full dump decodes only
the messages that changed since the previous one.

A socket belongs to the network namespace of the thread that opens it, so an
:class:`Rtnl` is opened on the event-loop thread (what the tests, switching
that thread into a namespace, rely on). Requests on one :class:`Rtnl` run one
at a time, each with its own sequence number: a reply still queued from a
cancelled request is recognised and skipped. Nothing blocks beyond a
non-blocking syscall.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import hashlib
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import NamedTuple, TypeVar

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26

IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_AF_SPEC = 26
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INET6_ADDR_GEN_MODE = 8
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP = 0x1

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_VIA = 18

_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_ERRNO = struct.Struct("=i")
_RECV_SIZE = 1 << 18

T = TypeVar("T")

Message = tuple[memoryview, int, int]
"""One reply: ``(buffer, offset, end)`` of the message inside ``buffer``."""


class NetlinkError(Exception):
    """The kernel refused a request. ``code`` is the errno; ``str()`` reads
    ``(17, 'File exists')``, exactly like pyroute2's ``NetlinkError``."""

    def __init__(self, code: int, msg: str | None = None) -> None:
        super().__init__(code, msg or os.strerror(code))
        self.code = code

    @property
    def errno(self) -> int:
        return self.code


class RtLink(NamedTuple):
    """The fields of a link the agent reads."""

    ifindex: int
    name: str
    kind: str | None
    alias: str | None
    mtu: int
    flags: int

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


class RtAddress(NamedTuple):
    """An IPv4 or IPv6 address; ``peer`` only when it differs from ``local``."""

    ifindex: int
    prefixlen: int
    local: str
    peer: str | None


class RtAddressFlag(enum.IntFlag):
    """The kernel's ``IFA_F_*`` address flags (``linux/if_addr.h``)."""

    TEMPORARY = 0x01
    """An IPv6 privacy address; on IPv4 the same bit means secondary."""
    NODAD = 0x02
    OPTIMISTIC = 0x04
    DADFAILED = 0x08
    """Duplicate address detection found the address in use: never usable."""
    HOMEADDRESS = 0x10
    DEPRECATED = 0x20
    """Its preferred lifetime is over: still valid, no longer picked as a source."""
    TENTATIVE = 0x40
    """Duplicate address detection has not finished: not usable yet."""
    PERMANENT = 0x80
    MANAGETEMPADDR = 0x100
    NOPREFIXROUTE = 0x200
    MCAUTOJOIN = 0x400
    STABLE_PRIVACY = 0x800


class RtScope(enum.IntEnum):
    """An address's or route's scope (``RT_SCOPE_*``)."""

    UNIVERSE = 0
    """Global: the only scope an address reachable from elsewhere has."""
    SITE = 200
    LINK = 253
    HOST = 254
    NOWHERE = 255


class RtAddressDetail(NamedTuple):
    """An address as :class:`RtAddress`, with what the kernel says about it:
    ``flags`` (:class:`RtAddressFlag` bits: the 32-bit ``IFA_FLAGS`` attribute,
    else the message's 8-bit field) and ``scope`` (:class:`RtScope`)."""

    ifindex: int
    prefixlen: int
    local: str
    peer: str | None
    flags: int
    scope: int


class RtRoute(NamedTuple):
    """The kernel's answer to a route lookup (``ip route get``): the output
    interface (0: none named), the source address it would pick and the gateway
    (an IPv6 one for an IPv4 route via ``inet6``), None when it names none."""

    oif: int
    prefsrc: str | None
    gateway: str | None
    route_type: int
    """``RTN_*``: 1 unicast, 2 local, ..."""


class Request(NamedTuple):
    """An rtnetlink request without its header's sequence number and port."""

    type: int
    flags: int
    body: bytes

    def encode(self, seq: int, pid: int = 0) -> bytes:
        return _NLMSG.pack(_NLMSG.size + len(self.body), self.type, self.flags, seq, pid) + self.body


# ------------------------------------------------------------------ encoding


def rta(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes (its length field leaves the padding out)."""
    raw = _RTA.pack(_RTA.size + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def _asciiz(text: str) -> bytes:
    return text.encode() + b"\0"


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _ext_mask() -> bytes:
    return rta(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))


_WRITE = NLM_F_REQUEST | NLM_F_ACK
_CREATE = _WRITE | NLM_F_CREATE | NLM_F_EXCL


def link_add_request(name: str, kind: str) -> Request:
    """``ip link add <name> type <kind>`` (fails with EEXIST when it exists)."""
    body = (
        _ifinfo() + rta(IFLA_IFNAME, _asciiz(name)) + rta(IFLA_LINKINFO, rta(IFLA_INFO_KIND, _asciiz(kind)))
    )
    return Request(RTM_NEWLINK, _CREATE, body)


def link_set_request(
    index: int,
    *,
    mtu: int | None = None,
    up: bool | None = None,
    alias: str | None = None,
    ipv6_addr_gen_mode: int | None = None,
) -> Request:
    """Change a link: only what is given (``up`` None leaves the state alone)."""
    body = _ifinfo(index, IFF_UP if up else 0, IFF_UP if up is not None else 0)
    if mtu is not None:
        body += rta(IFLA_MTU, _U32.pack(mtu))
    if alias is not None:
        body += rta(IFLA_IFALIAS, _asciiz(alias))
    if ipv6_addr_gen_mode is not None:
        inet6 = rta(IFLA_INET6_ADDR_GEN_MODE, bytes([ipv6_addr_gen_mode]))
        body += rta(IFLA_AF_SPEC, rta(socket.AF_INET6, inet6))
    return Request(RTM_NEWLINK, _WRITE, body)


def link_del_request(index: int) -> Request:
    return Request(RTM_DELLINK, _WRITE, _ifinfo(index))


def link_get_request(name: str) -> Request:
    """One link by name, without statistics (no ack: the link, or an error)."""
    return Request(RTM_GETLINK, NLM_F_REQUEST, _ifinfo() + _ext_mask() + rta(IFLA_IFNAME, _asciiz(name)))


def link_dump_request() -> Request:
    return Request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, _ifinfo() + _ext_mask())


def addr_dump_request(index: int = 0) -> Request:
    """Every address, or those of link ``index`` (honoured under strict checking)."""
    return Request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, index))


def route_get_request(destination: str) -> Request:
    """``ip route get <destination>`` (an IPv4 or IPv6 literal): a lookup, nothing is sent."""
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    packed = socket.inet_pton(family, destination)
    body = _RTMSG.pack(family, len(packed) * 8, 0, 0, 0, 0, 0, 0, 0) + rta(RTA_DST, packed)
    return Request(RTM_GETROUTE, NLM_F_REQUEST, body)


def _addr_request(
    msg_type: int, msg_flags: int, index: int, prefixlen: int, address: str, local: str | None, flags: int
) -> Request:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    attrs = b""
    if local is not None:
        attrs += rta(IFA_LOCAL, socket.inet_pton(family, local))
    attrs += rta(IFA_ADDRESS, packed)
    if local is None and family == socket.AF_INET:
        attrs += rta(IFA_LOCAL, packed)  # IPv4 needs a local address; pyroute2 adds it too
    if flags:
        attrs += rta(IFA_FLAGS, _U32.pack(flags))
    return Request(msg_type, msg_flags, _IFADDR.pack(family, prefixlen, 0, 0, index) + attrs)


def addr_add_request(
    index: int, prefixlen: int, address: str, *, local: str | None = None, flags: int = 0
) -> Request:
    """``ip addr add [<local> peer] <address>/<prefixlen> dev <index>``; ``flags``
    are ``IFA_F_*`` (``IFA_F_NODAD``). Without ``local``, an IPv4 address is its own."""
    return _addr_request(RTM_NEWADDR, _CREATE, index, prefixlen, address, local, flags)


def addr_del_request(index: int, prefixlen: int, address: str, *, local: str | None = None) -> Request:
    return _addr_request(RTM_DELADDR, _WRITE, index, prefixlen, address, local, 0)


# ------------------------------------------------------------------ decoding


def attrs(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(type, payload start, payload end)`` of each attribute in ``buf[start:end]``."""
    while start + 4 <= end:
        length, kind = _RTA.unpack_from(buf, start)
        if length < 4:
            return
        yield kind & 0x3FFF, start + 4, start + length
        start += (length + 3) & ~3


def _text(buf: bytes | memoryview, a: int, b: int) -> str:
    return bytes(buf[a:b]).split(b"\0", 1)[0].decode(errors="replace")


def parse_link(buf: bytes | memoryview, off: int, end: int) -> RtLink:
    """The link in an ``RTM_NEWLINK`` message at ``buf[off:end]``."""
    _family, _type, index, flags, _change = _IFINFO.unpack_from(buf, off + 16)
    name = ""
    kind = alias = None
    mtu = 0
    for t, a, b in attrs(buf, off + 32, end):
        if t == IFLA_IFNAME:
            name = _text(buf, a, b)
        elif t == IFLA_MTU:
            mtu = _U32.unpack_from(buf, a)[0]
        elif t == IFLA_IFALIAS:
            # Kinds and aliases are a few texts shared by many links (every tunnel of
            # a 1 000-session node is "tun" with the same marker): one copy each.
            alias = sys.intern(_text(buf, a, b)) or None
        elif t == IFLA_LINKINFO:
            for t2, a2, b2 in attrs(buf, a, b):
                if t2 == IFLA_INFO_KIND:
                    kind = sys.intern(_text(buf, a2, b2))
    return RtLink(index, name, kind, alias, mtu, flags)


_ADDR_LEN: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 16}


def _ntop(family: int, raw: bytes) -> str | None:
    """``raw`` as text when it is an address of ``family``, else None."""
    return socket.inet_ntop(family, raw) if len(raw) == _ADDR_LEN.get(family) else None


def parse_address_detail(buf: bytes | memoryview, off: int, end: int) -> RtAddressDetail | None:
    """The address in an ``RTM_NEWADDR`` message, with its flags and scope
    (None: not IPv4 or IPv6, or no address in it)."""
    if end - off < _NLMSG.size + _IFADDR.size:
        return None
    family, prefixlen, flags, scope, index = _IFADDR.unpack_from(buf, off + 16)
    if family not in _ADDR_LEN:
        return None
    local = address = None
    for t, a, b in attrs(buf, off + 24, end):
        if t == IFA_LOCAL:
            local = bytes(buf[a:b])
        elif t == IFA_ADDRESS:
            address = bytes(buf[a:b])
        elif t == IFA_FLAGS and b - a >= 4:
            flags = _U32.unpack_from(buf, a)[0]  # all 32 bits; the header holds the low 8
    if local is None:
        local, address = address, None  # IFA_LOCAL is only sent when it differs
    text = _ntop(family, local) if local is not None else None
    if text is None:
        return None
    peer = _ntop(family, address) if address is not None and address != local else None
    return RtAddressDetail(index, prefixlen, text, peer, flags, scope)


def parse_address(buf: bytes | memoryview, off: int, end: int) -> RtAddress | None:
    """The address in an ``RTM_NEWADDR`` message (None: not IPv4 or IPv6)."""
    detail = parse_address_detail(buf, off, end)
    return None if detail is None else RtAddress(detail[0], detail[1], detail[2], detail[3])


def parse_route(buf: bytes | memoryview, off: int, end: int) -> RtRoute:
    """The route in an ``RTM_NEWROUTE`` message (the answer to a lookup)."""
    family, _dst, _src, _tos, _table, _proto, _scope, route_type, _flags = _RTMSG.unpack_from(buf, off + 16)
    oif = 0
    prefsrc = gateway = None
    for t, a, b in attrs(buf, off + _NLMSG.size + _RTMSG.size, end):
        if t == RTA_OIF and b - a >= 4:
            oif = _U32.unpack_from(buf, a)[0]
        elif t == RTA_PREFSRC:
            prefsrc = _ntop(family, bytes(buf[a:b]))
        elif t == RTA_GATEWAY:
            gateway = _ntop(family, bytes(buf[a:b]))
        elif t == RTA_VIA and b - a >= 2:  # struct rtvia: the gateway's family, then its address
            gateway = _ntop(_U16.unpack_from(buf, a)[0], bytes(buf[a + 2 : b]))
    return RtRoute(oif, prefsrc, gateway, route_type)


def _msg_type(msg: Message) -> int:
    return int(_NLMSG.unpack_from(msg[0], msg[1])[1])


class _Decoded:
    """Decoded messages by their bytes (a digest of them): an unchanged link or
    address comes back byte for byte in the next dump (statistics are left out),
    so decoding it again is skipped. Holds what the last dump returned only."""

    def __init__(self) -> None:
        self.seen: dict[bytes, object] = {}

    def decode(self, msgs: list[Message], parse: Callable[[memoryview, int, int], T]) -> list[T]:
        old, new = self.seen, {}
        out: list[T] = []
        for b, o, e in msgs:
            key = hashlib.blake2b(b[o + 4 : o + 6], digest_size=16)  # the type, not the sequence number
            key.update(b[o + 16 : e])
            digest = key.digest()
            value = old.get(digest, _MISSING)
            if value is _MISSING:
                value = parse(b, o, e)
            new[digest] = value
            out.append(value)  # type: ignore[arg-type]
        self.seen = new
        return out


_MISSING = object()
_LINKS = _Decoded()
_ADDRESSES = _Decoded()


# -------------------------------------------------------------------- socket


class Rtnl:
    """One rtnetlink socket of the calling thread's network namespace, opened
    at construction; ``async with Rtnl() as rt`` closes it.

    ``strict``: ask the kernel to filter dumps by their request
    (``NETLINK_GET_STRICT_CHK``, Linux 4.20+); where it cannot, filtering
    happens here instead.
    """

    def __init__(self, *, strict: bool = False) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.strict = False
            if strict:
                try:
                    self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
                    self.strict = True
                except OSError:
                    pass  # kernel < 4.20: filtered here instead
            self.sock.bind((0, 0))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Rtnl:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    async def request(self, req: Request) -> list[Message]:
        """Send ``req`` and collect its replies: until ``NLMSG_DONE`` for a dump,
        the ack for ``NLM_F_ACK``, else the first reply. A refusal raises
        :class:`NetlinkError` (``ENOBUFS`` an :class:`OSError`, as in pyroute2)."""
        async with self._lock:
            self._seq = self._seq % 0xFFFFFFFF + 1
            seq = self._seq
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(self.sock, req.encode(seq))
            dump = req.flags & NLM_F_DUMP == NLM_F_DUMP
            wait_ack = bool(req.flags & NLM_F_ACK)
            out: list[Message] = []
            while True:
                data = memoryview(await loop.sock_recv(self.sock, _RECV_SIZE))
                off = 0
                while off + _NLMSG.size <= len(data):
                    length, kind, _flags, rseq, _pid = _NLMSG.unpack_from(data, off)
                    if length < _NLMSG.size:
                        raise NetlinkError(errno.EBADMSG, "rtnetlink answered a malformed message")
                    end = off + length
                    if rseq == seq:  # anything else answers an earlier, abandoned request
                        if kind == NLMSG_DONE:
                            return out
                        if kind == NLMSG_ERROR:
                            code = -_ERRNO.unpack_from(data, off + 16)[0]
                            if code == 0:
                                return out
                            if code == errno.ENOBUFS:
                                raise OSError(code, os.strerror(code))
                            raise NetlinkError(code)
                        out.append((data, off, end))
                    off = (end + 3) & ~3
                if out and not dump and not wait_ack:
                    return out

    # ------------------------------------------------------------- reads

    async def get_link(self, name: str) -> RtLink | None:
        """The link ``name``, or None when there is none."""
        try:
            msgs = await self.request(link_get_request(name))
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        for msg in msgs:
            if _msg_type(msg) == RTM_NEWLINK:
                return parse_link(*msg)
        return None

    async def links(self) -> list[RtLink]:
        """Every link of the namespace (no statistics)."""
        return _LINKS.decode(await self.request(link_dump_request()), parse_link)

    async def addresses(self, index: int | None = None) -> list[RtAddress]:
        """IPv4 and IPv6 addresses (of the link ``index`` only, when given:
        filtered by the kernel under strict checking)."""
        msgs = [
            m
            for m in await self.request(addr_dump_request(index if self.strict and index is not None else 0))
            if _msg_type(m) == RTM_NEWADDR
        ]
        decoded = (
            _ADDRESSES.decode(msgs, parse_address) if index is None else [parse_address(*m) for m in msgs]
        )
        return [a for a in decoded if a is not None and (index is None or a.ifindex == index)]

    async def address_details(
        self, index: int | None = None, *, scope: int | None = None
    ) -> list[RtAddressDetail]:
        """IPv4 and IPv6 addresses with their flags and scope, in the kernel's
        order: of the link ``index`` only, and of ``scope`` only (an
        :class:`RtScope`), when given. Messages of another scope are skipped
        undecoded, so a thousand tunnels' link-local addresses cost little."""
        out: list[RtAddressDetail] = []
        for msg in await self.request(addr_dump_request(index if self.strict and index is not None else 0)):
            buf, off, end = msg
            if _msg_type(msg) != RTM_NEWADDR or end - off < _NLMSG.size + _IFADDR.size:
                continue
            if scope is not None and buf[off + 19] != scope:  # ifa_scope
                continue
            detail = parse_address_detail(buf, off, end)
            if detail is not None and (index is None or detail.ifindex == index):
                out.append(detail)
        return out

    async def route_get(self, destination: str) -> RtRoute | None:
        """The route the kernel would take to ``destination`` (an IPv4 or IPv6
        literal), as ``ip route get`` (nothing is sent); None when it has none
        (``ENETUNREACH``, or ``EHOSTUNREACH`` for an unreachable route). Other
        refusals raise :class:`NetlinkError`: ``EINVAL`` for a blackhole route,
        ``EACCES`` for a prohibit route, ``EAFNOSUPPORT`` without IPv6."""
        try:
            msgs = await self.request(route_get_request(destination))
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None
            raise
        for msg in msgs:
            if _msg_type(msg) == RTM_NEWROUTE:
                return parse_route(*msg)
        return None

    # ------------------------------------------------------------ writes

    async def link_add(self, name: str, kind: str) -> None:
        await self.request(link_add_request(name, kind))

    async def link_set(
        self,
        index: int,
        *,
        mtu: int | None = None,
        up: bool | None = None,
        alias: str | None = None,
        ipv6_addr_gen_mode: int | None = None,
    ) -> None:
        await self.request(
            link_set_request(index, mtu=mtu, up=up, alias=alias, ipv6_addr_gen_mode=ipv6_addr_gen_mode)
        )

    async def link_del(self, index: int) -> None:
        await self.request(link_del_request(index))

    async def addr_add(
        self, index: int, prefixlen: int, address: str, *, local: str | None = None, flags: int = 0
    ) -> None:
        await self.request(addr_add_request(index, prefixlen, address, local=local, flags=flags))

    async def addr_del(self, index: int, prefixlen: int, address: str, *, local: str | None = None) -> None:
        await self.request(addr_del_request(index, prefixlen, address, local=local))
