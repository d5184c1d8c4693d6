"""Cheap rtnetlink reads: link and address dumps decoded by hand.

pyroute2 decodes every attribute of every message (about a millisecond per
link); observing a thousand tunnels every cycle needs only a handful of them.
This module sends the request on a plain ``AF_NETLINK`` socket and walks each
message's attributes once, keeping the index, flags, name, MTU, alias and kind
of a link, or the index, prefix length and addresses of an address. Statistics
are left out kernel-side (``RTEXT_FILTER_SKIP_STATS``), and an address read for
one link is filtered by the kernel (strict checking) when it supports that.

The socket is opened on the calling thread, so it reads that thread's network
namespace, like :class:`~.links.Netlink`. Reads only: writes stay on pyroute2.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import TypeVar

from .errors import TunnelError

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300

RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22

IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
RTEXT_FILTER_VF = 1 << 0
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFA_ADDRESS = 1
IFA_LOCAL = 2

_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")

T = TypeVar("T")

RawLink = tuple[int, str, str | None, str | None, int, int]
"""``(index, name, kind, alias, mtu, flags)``."""
RawAddress = tuple[int, int, str, str | None]
"""``(index, prefixlen, local, peer-or-None)`` (the peer only when it differs)."""


def _attrs(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(type, payload start, payload end)`` of each attribute in ``buf[start:end]``."""
    while start + 4 <= end:
        length, kind = _RTA.unpack_from(buf, start)
        if length < 4:
            return
        yield kind & 0x3FFF, start + 4, start + length
        start += (length + 3) & ~3


def _text(buf: bytes | memoryview, a: int, b: int) -> str:
    return bytes(buf[a:b]).split(b"\0", 1)[0].decode(errors="replace")


def parse_link(buf: bytes | memoryview, off: int, end: int) -> RawLink:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(buf, off + 16)
    name = ""
    kind = alias = None
    mtu = 0
    for t, a, b in _attrs(buf, off + 32, end):
        if t == IFLA_IFNAME:
            name = _text(buf, a, b)
        elif t == IFLA_MTU:
            mtu = _U32.unpack_from(buf, a)[0]
        elif t == IFLA_IFALIAS:
            alias = _text(buf, a, b) or None
        elif t == IFLA_LINKINFO:
            for t2, a2, b2 in _attrs(buf, a, b):
                if t2 == IFLA_INFO_KIND:
                    kind = _text(buf, a2, b2)
    return index, name, kind, alias, mtu, flags


def _ip(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


def parse_address(buf: bytes | memoryview, off: int, end: int) -> RawAddress | None:
    family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(buf, off + 16)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    local = address = None
    for t, a, b in _attrs(buf, off + 24, end):
        if t == IFA_LOCAL:
            local = bytes(buf[a:b])
        elif t == IFA_ADDRESS:
            address = bytes(buf[a:b])
    if local is None:
        local, address = address, None
    if local is None:
        return None
    peer = _ip(family, address) if address is not None and address != local else None
    return index, prefixlen, _ip(family, local), peer


class _Socket:
    """One request and its replies on a fresh non-blocking rtnetlink socket."""

    def __init__(self, strict: bool = False) -> None:
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

    def close(self) -> None:
        self.sock.close()

    async def request(self, msg_type: int, flags: int, body: bytes) -> list[tuple[memoryview, int, int]]:
        """Send one request; returns ``(buffer, offset, end)`` of each reply message."""
        seq = 1
        header = _NLMSG.pack(_NLMSG.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, header + body)
        out: list[tuple[memoryview, int, int]] = []
        while True:
            data = memoryview(await loop.sock_recv(self.sock, 1 << 18))
            off = 0
            while off + _NLMSG.size <= len(data):
                length, kind, _flags, rseq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    raise TunnelError("rtnetlink answered a malformed message")
                end = off + length
                if rseq == seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, off + 16)[0]
                        if code == 0:
                            return out
                        raise OSError(code, os.strerror(code))
                    out.append((data, off, end))
                off = (end + 3) & ~3
            if not flags & NLM_F_DUMP and out:
                return out


def _ext_mask() -> bytes:
    return _RTA.pack(8, IFLA_EXT_MASK) + _U32.pack(RTEXT_FILTER_SKIP_STATS)


class _Decoded:
    """Decoded messages by their bytes (a digest of them): an unchanged link or
    address comes back byte for byte in the next dump (statistics are left out),
    so decoding it again is skipped. Holds what the last dump returned only."""

    def __init__(self) -> None:
        self.seen: dict[bytes, object] = {}

    def decode(
        self, msgs: list[tuple[memoryview, int, int]], parse: Callable[[memoryview, int, int], T]
    ) -> list[T]:
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


async def dump_links() -> list[RawLink]:
    """Every link of the calling thread's network namespace (no statistics)."""
    s = _Socket()
    try:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ext_mask()
        return _LINKS.decode(await s.request(RTM_GETLINK, NLM_F_DUMP, body), parse_link)
    finally:
        s.close()


async def get_link(name: str) -> RawLink | None:
    """The link ``name``, or None when there is none."""
    raw = name.encode() + b"\0"
    attr = _RTA.pack(4 + len(raw), IFLA_IFNAME) + raw + b"\0" * (-len(raw) % 4)
    s = _Socket()
    try:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ext_mask() + attr
        try:
            msgs = await s.request(RTM_GETLINK, 0, body)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        for b, o, e in msgs:
            if _NLMSG.unpack_from(b, o)[1] == RTM_NEWLINK:
                return parse_link(b, o, e)
        return None
    finally:
        s.close()


async def dump_addresses(index: int | None = None) -> list[RawAddress]:
    """IPv4 and IPv6 addresses (of the link ``index`` only, when given: filtered
    by the kernel where it can)."""
    s = _Socket(strict=index is not None)
    try:
        body = _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, index if s.strict and index is not None else 0)
        msgs = [
            m
            for m in await s.request(RTM_GETADDR, NLM_F_DUMP, body)
            if _NLMSG.unpack_from(m[0], m[1])[1] == RTM_NEWADDR
        ]
        decoded = (
            _ADDRESSES.decode(msgs, parse_address) if index is None else [parse_address(*m) for m in msgs]
        )
        return [a for a in decoded if a is not None and (index is None or a[0] == index)]
    finally:
        s.close()
