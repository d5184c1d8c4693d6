"""ICMP echo over raw sockets, bound to one interface, in asyncio.

Why like this:

- **Raw sockets** (``SOCK_RAW`` with ``IPPROTO_ICMP`` / ``IPPROTO_ICMPV6``), so no
  ``ping`` binary and no subprocess per probe, and the agent controls the
  identifier (ping sockets, ``SOCK_DGRAM``, would need ``net.ipv4.ping_group_range``).
  They need root or ``CAP_NET_RAW``. The IPv4 ICMP checksum is computed here; for
  ICMPv6 the kernel fills it in (it covers the pseudo-header).
- **SO_BINDTODEVICE** to the link's interface: the probe leaves through the
  tunnel even when the routing table would send it elsewhere (a DN42 peer's
  address is often also reachable over another path), and only replies that
  arrived on that interface are read. An IPv6 link-local target gets the
  interface's index as its scope.
- **Matching**: every series has its own identifier (unique among this process's
  live series), a sequence number per probe and a random 8-byte token in the
  payload; a raw socket sees every echo reply arriving on its interface, and only
  a reply with all three matching (and coming from the target) counts. Concurrent
  series never mix, and neither do other programs' pings.
- **Timing**: the kernel's receive timestamp (``SO_TIMESTAMPNS``) where the
  architecture's constant is known, so a busy event loop does not inflate the
  RTT; otherwise (or when it is implausible) the monotonic time at which the
  reply was read.

Probes of one series are sent ``interval`` apart without waiting for replies
(like ``ping -i``); each waits at most ``timeout`` for its own reply. Nothing here
raises for a bad link: errors (no such interface, no permission, no route)
become an error string in the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import platform
import secrets
import socket
import struct
import time
from collections.abc import Iterable, Sequence

import attrs

from moenet_core import map_bounded

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

#: linux/in.h and linux/icmp.h: ``setsockopt(SOL_RAW, ICMP_FILTER)`` drops ICMP
#: types whose bit is set, before they reach the socket.
SOL_RAW = 255
ICMP_FILTER = 1
#: linux/icmpv6.h ``ICMPV6_FILTER``: a 256-bit map, a set bit blocks the type.
ICMPV6_FILTER = 1
SO_BINDTODEVICE: int = getattr(socket, "SO_BINDTODEVICE", 25)

#: ``SO_TIMESTAMPNS`` (= ``SCM_TIMESTAMPNS``, the 64-bit ``timespec`` one) is 35
#: on the architectures using asm-generic/socket.h; others (sparc, parisc, 32-bit
#: time) differ, and there the reply's read time is used instead.
_SO_TIMESTAMPNS = 35
_TIMESTAMP_ARCHES = frozenset({"x86_64", "amd64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"})
USE_KERNEL_TIMESTAMPS = platform.machine().lower() in _TIMESTAMP_ARCHES and struct.calcsize("l") == 8
_TIMESPEC = struct.Struct("=qq")

#: Echo payload: the series' token followed by filler, 56 bytes like ``ping``.
PAYLOAD_SIZE = 56
#: Bytes read per datagram: an echo reply to our probe is under 100 (plus the IPv4
#: header); anything longer is not ours and may be cut. Not 64 KiB: each read
#: allocates its buffer first, and a round over 1 000 links reads thousands.
RECV_SIZE = 2048
TOKEN_SIZE = 8
_ECHO = struct.Struct("!BBHHH")

#: Seconds between two probes of a series.
DEFAULT_INTERVAL = 0.2

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the ones' complement of the
    ones' complement sum of its 16-bit words. Over a message that already holds
    its checksum the result is 0."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes, *, v6: bool) -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request; the ICMPv6 checksum is left 0 for the kernel."""
    if v6:
        return _ECHO.pack(ICMPV6_ECHO_REQUEST, 0, 0, ident, seq) + payload
    body = _ECHO.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq) + payload
    return _ECHO.pack(ICMP_ECHO_REQUEST, 0, checksum(body), ident, seq) + payload


def parse_echo_reply(packet: bytes, *, v6: bool) -> tuple[int, int, bytes] | None:
    """``(identifier, sequence, payload)`` of an echo reply, or None for anything else.

    An IPv4 raw socket reads the IP header too; an IPv6 one reads the ICMPv6
    message only (the kernel has checked its checksum). The IPv4 ICMP checksum is
    checked here: raw sockets get their copy before the kernel's ICMP code looks.
    """
    if v6:
        icmp = packet
        expected = ICMPV6_ECHO_REPLY
    else:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20:
            return None
        icmp = packet[ihl:]
        expected = ICMP_ECHO_REPLY
        if len(icmp) >= _ECHO.size and checksum(icmp) != 0:
            return None
    if len(icmp) < _ECHO.size:
        return None
    kind, code, _sum, ident, seq = _ECHO.unpack_from(icmp)
    if kind != expected or code != 0:
        return None
    return ident, seq, icmp[_ECHO.size :]


def describe_os_error(exc: OSError) -> str:
    """``"ENODEV: No such device"``: the errno's name and text."""
    if exc.errno is None:
        return str(exc) or type(exc).__name__
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{name}: {exc.strerror or os.strerror(exc.errno)}"


@attrs.frozen(kw_only=True)
class Series:
    """The probes sent to one address."""

    address: str
    sent: int
    rtts_ms: tuple[float, ...] = ()
    error: str | None = None

    @property
    def received(self) -> int:
        return len(self.rtts_ms)

    @property
    def loss(self) -> float:
        """Lost share in percent (100 when nothing was sent)."""
        if self.sent <= 0:
            return 100.0
        return 100.0 * (self.sent - self.received) / self.sent

    @property
    def rtt_ms(self) -> float | None:
        """Mean RTT over the answered probes (ms), None when none answered."""
        return sum(self.rtts_ms) / len(self.rtts_ms) if self.rtts_ms else None


@attrs.frozen(kw_only=True)
class LinkProbe:
    """One link's result: the first address (in the given order) that answered."""

    interface: str
    target: str | None
    """The address that answered; None when none did."""
    rtt_ms: float | None
    loss: float
    tried: tuple[Series, ...] = ()
    error: str | None = None
    """Why probing failed (no such interface, no permission...); None when the
    probes simply went unanswered or when an address answered."""


_live_idents: set[int] = set()


def _new_ident() -> int:
    for _ in range(64):
        ident = secrets.randbelow(0xFFFF) + 1
        if ident not in _live_idents:
            _live_idents.add(ident)
            return ident
    raise RuntimeError("no free ICMP identifier")  # 64 collisions in a row: not a real case


@attrs.define(eq=False)
class _Waiting:
    future: asyncio.Future[float]
    wall_ns: int = 0
    mono_ns: int = 0


class _EchoSeries:
    """One raw socket bound to ``interface``, probing one address."""

    def __init__(self, interface: str, address: Address, scope_id: int) -> None:
        self.interface = interface
        self.address = address
        self.v6 = address.version == 6
        self.sockaddr: tuple[str, int] | tuple[str, int, int, int] = (
            (str(address), 0, 0, scope_id if address.is_link_local else 0) if self.v6 else (str(address), 0)
        )
        self.ident = _new_ident()
        self.payload = secrets.token_bytes(TOKEN_SIZE) + bytes(range(PAYLOAD_SIZE - TOKEN_SIZE))
        self.sock: socket.socket | None = None
        self.waiting: dict[int, _Waiting] = {}
        self.timestamps = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        family, proto = (
            (socket.AF_INET6, socket.IPPROTO_ICMPV6) if self.v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
        )
        sock = socket.socket(family, socket.SOCK_RAW, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            # Best effort: fewer wake-ups for ICMP we never want.
            with contextlib.suppress(OSError):
                if self.v6:
                    blocked = [0xFFFFFFFF] * 8
                    blocked[ICMPV6_ECHO_REPLY >> 5] &= ~(1 << (ICMPV6_ECHO_REPLY & 31)) & 0xFFFFFFFF
                    sock.setsockopt(socket.IPPROTO_ICMPV6, ICMPV6_FILTER, struct.pack("=8I", *blocked))
                else:
                    sock.setsockopt(
                        SOL_RAW, ICMP_FILTER, struct.pack("=I", ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF)
                    )
            if USE_KERNEL_TIMESTAMPS:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                    self.timestamps = True
                except OSError:
                    self.timestamps = False
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for waiting in self.waiting.values():
            if not waiting.future.done():
                waiting.future.cancel()
        _live_idents.discard(self.ident)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        while True:
            try:
                data, ancdata, _flags, source = sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(_TIMESPEC.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # a pending socket error (ICMP error queue): the probe just times out
            mono_ns = time.monotonic_ns()
            parsed = parse_echo_reply(data, v6=self.v6)
            if parsed is None:
                continue
            ident, seq, payload = parsed
            if ident != self.ident or payload != self.payload:
                continue
            try:
                if ipaddress.ip_address(str(source[0]).split("%", 1)[0]) != self.address:
                    continue
            except ValueError:
                continue
            waiting = self.waiting.get(seq)
            if waiting is None or waiting.future.done():
                continue  # a duplicate, or a reply after its probe timed out
            rtt_ns = mono_ns - waiting.mono_ns
            kernel_ns = self._kernel_time(ancdata)
            if kernel_ns is not None:
                candidate = kernel_ns - waiting.wall_ns
                # The kernel saw the reply before we read it; anything else means
                # the wall clock was stepped meanwhile.
                if 0 <= candidate <= rtt_ns + 1_000_000:
                    rtt_ns = candidate
            waiting.future.set_result(max(rtt_ns, 0) / 1e6)

    def _kernel_time(self, ancdata: Iterable[tuple[int, int, bytes]]) -> int | None:
        if not self.timestamps:
            return None
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(value)
                return int(sec) * 1_000_000_000 + int(nsec)
        return None

    async def run(self, count: int, timeout: float, interval: float) -> Series:
        assert self.sock is not None and self._loop is not None
        errors: list[str] = []
        deadlines: list[tuple[int, asyncio.Future[float]]] = []
        timeout_ns = int(timeout * 1e9)
        for seq in range(1, count + 1):
            if seq > 1:
                await asyncio.sleep(interval)
            waiting = _Waiting(self._loop.create_future())
            self.waiting[seq] = waiting
            packet = echo_request(self.ident, seq, self.payload, v6=self.v6)
            waiting.wall_ns = time.time_ns()
            waiting.mono_ns = time.monotonic_ns()
            try:
                self.sock.sendto(packet, self.sockaddr)
            except OSError as exc:  # BlockingIOError too: a full send buffer loses the probe
                errors.append(describe_os_error(exc))
                del self.waiting[seq]
                continue
            deadlines.append((waiting.mono_ns + timeout_ns, waiting.future))
        rtts: list[float] = []
        for deadline_ns, future in deadlines:
            remaining = (deadline_ns - time.monotonic_ns()) / 1e9
            try:
                rtts.append(await asyncio.wait_for(future, max(remaining, 0.0)))
            except TimeoutError:
                continue
        error = None
        if errors:
            unique = list(dict.fromkeys(errors))
            error = "send failed: " + "; ".join(unique)
        return Series(address=str(self.address), sent=count, rtts_ms=tuple(rtts), error=error)


def parse_address(text: str) -> Address:
    """An address from a :class:`~moenet_core.LinkTarget`; a ``%scope`` suffix is
    dropped (the probe's interface is the scope). Raises ValueError."""
    return ipaddress.ip_address(text.strip().split("%", 1)[0])


async def ping(
    interface: str,
    address: str,
    *,
    count: int = 4,
    timeout: float = 2.0,
    interval: float = DEFAULT_INTERVAL,
) -> Series:
    """Send ``count`` echo requests to ``address`` out of ``interface``; never raises
    for a bad address, interface or missing permission (see ``Series.error``)."""
    try:
        ip = parse_address(address)
    except ValueError:
        return Series(address=address, sent=0, error=f"not an IP address: {address!r}")
    try:
        scope_id = socket.if_nametoindex(interface)
    except OSError:
        return Series(address=str(ip), sent=0, error=f"no such interface {interface!r}")
    series = _EchoSeries(interface, ip, scope_id)
    try:
        try:
            series.open()
        except PermissionError as exc:
            return Series(
                address=str(ip),
                sent=0,
                error=f"cannot open a raw ICMP socket ({describe_os_error(exc)}); needs root or CAP_NET_RAW",
            )
        except OSError as exc:
            what = "bind to" if exc.errno == errno.ENODEV else "open a raw ICMP socket on"
            return Series(
                address=str(ip), sent=0, error=f"cannot {what} {interface!r}: {describe_os_error(exc)}"
            )
        return await series.run(count, timeout, interval)
    finally:
        series.close()


async def probe_link(
    interface: str,
    addresses: Sequence[str],
    *,
    count: int = 4,
    timeout: float = 2.0,
    interval: float = DEFAULT_INTERVAL,
) -> LinkProbe:
    """Probe ``addresses`` in order out of ``interface``; the first one answering
    at least one probe gives the result. None answering: loss 100, rtt None."""
    if not addresses:
        return LinkProbe(
            interface=interface, target=None, rtt_ms=None, loss=100.0, error="no address to probe"
        )
    try:
        socket.if_nametoindex(interface)
    except OSError:
        return LinkProbe(
            interface=interface,
            target=None,
            rtt_ms=None,
            loss=100.0,
            error=f"no such interface {interface!r}",
        )
    tried: list[Series] = []
    for address in addresses:
        series = await ping(interface, address, count=count, timeout=timeout, interval=interval)
        tried.append(series)
        if series.received:
            return LinkProbe(
                interface=interface,
                target=series.address,
                rtt_ms=series.rtt_ms,
                loss=series.loss,
                tried=tuple(tried),
            )
    errors = [f"{s.address}: {s.error}" for s in tried if s.error]
    return LinkProbe(
        interface=interface,
        target=None,
        rtt_ms=None,
        loss=100.0,
        tried=tuple(tried),
        error="; ".join(errors) or None,
    )


class Prober:
    """Probes many links, at most ``concurrency`` at a time."""

    def __init__(
        self,
        *,
        count: int = 4,
        timeout: float = 2.0,
        interval: float = DEFAULT_INTERVAL,
        concurrency: int = 8,
    ) -> None:
        if count < 1 or timeout <= 0 or interval < 0 or concurrency < 1:
            raise ValueError("count and concurrency must be >= 1, timeout > 0, interval >= 0")
        self.count = count
        self.timeout = timeout
        self.interval = interval
        self.concurrency = concurrency

    async def probe(self, interface: str, addresses: Sequence[str]) -> LinkProbe:
        """:func:`probe_link` with this prober's settings; never raises an Exception."""
        try:
            return await probe_link(
                interface, addresses, count=self.count, timeout=self.timeout, interval=self.interval
            )
        except Exception as exc:  # a bug must cost one link, not the round
            return LinkProbe(
                interface=interface,
                target=None,
                rtt_ms=None,
                loss=100.0,
                error=f"probe failed: {type(exc).__name__}: {exc}",
            )

    async def probe_all(self, links: Iterable[tuple[str, Sequence[str]]]) -> list[LinkProbe]:
        """One :class:`LinkProbe` per ``(interface, addresses)``, in the same order."""
        return await map_bounded(lambda link: self.probe(*link), links, max(1, self.concurrency))
