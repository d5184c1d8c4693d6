"""The node's public addresses for the heartbeat (``publicIpv4`` / ``publicIpv6``).

By default they come from the node's own interfaces, read with the core's
rtnetlink client (:class:`moenet_core.Rtnl`): an address dump (global-scope
addresses only are decoded: cheap even with a thousand tunnels) and a route
lookup telling which interface and source address the kernel would use towards
the internet (nothing is sent). Only globally routable unicast addresses count:
never DN42 or other private space, link-local, loopback, ULA, CGNAT,
documentation or reserved ranges (:func:`is_public`).
Among them the kernel's own source address for the default route wins, then
another address on the default route's interface, then the first one found on
any other interface; deprecated and privacy (temporary) IPv6 addresses come
last, tentative and duplicate ones never.

A node behind NAT has no public address of its own. For it, the operator may set
an echo URL per family in the local config (``heartbeat.publicIpv4Url``; the
control plane can never set it): asked over HTTPS only, over that family only,
no redirects, the answer bounded in size and time and accepted only when it is
one public address of that family. The service is asked again
``publicIpUrlTtl`` after a good answer; a failure is logged, retried after
``publicAddressRefresh`` (or the TTL, when shorter) and never breaks the
heartbeat: the last good answer, else the interface address, is reported
meanwhile.

The netlink socket is opened on the event loop's thread, so the reads follow
that thread's network namespace (component tests enter one).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import aiohttp
import attrs

from moenet_core import NetlinkError, RtAddressFlag, Rtnl, RtScope

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IFA_F_TEMPORARY = RtAddressFlag.TEMPORARY
IFA_F_DADFAILED = RtAddressFlag.DADFAILED
IFA_F_DEPRECATED = RtAddressFlag.DEPRECATED
IFA_F_TENTATIVE = RtAddressFlag.TENTATIVE

#: Where the route lookups look (nothing is sent): any global address that no
#: node routes specially resolves through the default route.
ROUTE_PROBES = {4: "1.1.1.1", 6: "2606:4700:4700::1111"}

#: Never public, whatever :attr:`ipaddress.IPv4Address.is_global` says in this
#: Python version: DN42 and other private space, CGNAT, loopback, link-local,
#: documentation, benchmarking, multicast, reserved; ULA (DN42's IPv6), NAT64,
#: IPv4-mapped, 6to4 relay, discard, site-local.
NOT_PUBLIC = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/8", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "2002::/16", "fc00::/7",
        "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip

#: The most bytes an echo answer may have (an IPv6 address and a newline fit easily).
MAX_ECHO_BYTES = 64


def is_public(addr: IPAddress) -> bool:
    """A globally routable unicast address (not DN42, private, CGNAT, ULA, ...)."""
    if any(addr.version == net.version and addr in net for net in NOT_PUBLIC):
        return False
    return addr.is_global and not addr.is_multicast


@attrs.frozen
class InterfaceAddress:
    """One address of the node: interface index, address, IFA_F_* flags."""

    index: int
    address: IPAddress
    flags: int = 0


@attrs.frozen
class RouteHint:
    """Where the kernel would send traffic to the internet: the interface (index)
    and the source address it would pick (None when it names none)."""

    index: int
    source: IPAddress | None = None


def choose(addresses: Iterable[InterfaceAddress], version: int, hint: RouteHint | None) -> str | None:
    """The address to report for ``version`` (4 or 6), or None: see the module doc."""
    usable = [
        a
        for a in addresses
        if a.address.version == version
        and not a.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
        and is_public(a.address)
    ]

    def rank(item: tuple[int, InterfaceAddress]) -> tuple[int, ...]:
        pos, a = item
        return (
            0 if hint is not None and hint.source == a.address else 1,
            0 if hint is not None and hint.index == a.index else 1,
            1 if a.flags & IFA_F_DEPRECATED else 0,
            1 if a.flags & IFA_F_TEMPORARY else 0,
            pos,  # then the kernel's order (interface index; primary address first)
        )

    best = min(enumerate(usable), key=rank, default=None)
    return None if best is None else str(best[1].address)


# ------------------------------------------------------------------ rtnetlink


@contextlib.asynccontextmanager
async def _netlink(rt: Rtnl | None) -> AsyncIterator[Rtnl]:
    """``rt``, else a socket of its own for the block."""
    if rt is not None:
        yield rt
        return
    async with Rtnl() as own:
        yield own


async def read_addresses(rt: Rtnl | None = None) -> list[InterfaceAddress]:
    """Every universe-scope address of this thread's network namespace, in the
    kernel's order (one address dump; link and host scope are never public)."""
    async with _netlink(rt) as sock:
        found = await sock.address_details(scope=RtScope.UNIVERSE)
    return [
        InterfaceAddress(index=a.ifindex, address=ipaddress.ip_address(a.local), flags=a.flags) for a in found
    ]


async def route_hint(version: int, rt: Rtnl | None = None) -> RouteHint | None:
    """The kernel's route towards the internet for ``version`` (a lookup of
    :data:`ROUTE_PROBES`, nothing sent): its interface and source, or None
    when there is no such route (or no such family)."""
    try:
        async with _netlink(rt) as sock:
            route = await sock.route_get(ROUTE_PROBES[version])
    except (NetlinkError, OSError) as exc:
        # No route (a blackhole one: EINVAL), or no IPv6 at all.
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EAFNOSUPPORT, errno.EINVAL):
            return None
        raise
    if route is None or not route.oif:
        return None
    source = ipaddress.ip_address(route.prefsrc) if route.prefsrc is not None else None
    return RouteHint(index=route.oif, source=source)


async def interface_addresses() -> dict[int, str | None]:
    """``{4: ..., 6: ...}``: the node's public address per family, or None."""
    async with Rtnl() as rt:
        found = await read_addresses(rt)
        return {v: choose(found, v, await route_hint(v, rt)) for v in (4, 6)}


# ------------------------------------------------------------------ echo services


def check_echo_url(value: str | None) -> str | None:
    """Config check of ``publicIpv4Url`` / ``publicIpv6Url``: an https URL with a host,
    no credentials, no fragment, at most 2048 characters."""
    if value is None:
        return None
    if len(value) > 2048:
        return "must be at most 2048 characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme != "https":
        return "must be an https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials"
    if parts.fragment:
        return "must not have a fragment"
    if any(c.isspace() or ord(c) < 32 for c in value):
        return "must not contain spaces or control characters"
    return None


class EchoError(Exception):
    """An echo service did not give one usable address."""


def parse_echo(body: bytes, version: int) -> str:
    """The address in an echo service's answer: one public address of ``version``
    (surrounding whitespace allowed), else :class:`EchoError`."""
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise EchoError("the answer is not ASCII text") from None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise EchoError(f"the answer is not an address: {text[:40]!r}") from None
    if addr.version != version:
        raise EchoError(f"the answer {addr} is not an IPv{version} address")
    if not is_public(addr):
        raise EchoError(f"the answer {addr} is not a public address")
    return str(addr)


async def ask_echo(
    url: str, version: int, timeout: float, *, ssl_context: ssl.SSLContext | None = None
) -> str:
    """Ask the echo service at ``url`` for our IPv``version`` address, over that
    family only, in at most ``timeout`` seconds, reading at most
    :data:`MAX_ECHO_BYTES`; raises :class:`EchoError` for anything unusable."""
    if (problem := check_echo_url(url)) is not None:
        raise EchoError(f"{url}: {problem}")
    try:
        literal = ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        literal = None  # a name: resolved for this family only
    if literal is not None and literal.version != version:
        raise EchoError(f"{url} names an IPv{literal.version} address, not IPv{version}")
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    connector = aiohttp.TCPConnector(family=family, ssl=ssl_context if ssl_context is not None else True)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False
            ) as session,
            session.get(url, allow_redirects=False, headers={"Accept": "text/plain"}) as resp,
        ):
            if resp.status != 200:
                raise EchoError(f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > MAX_ECHO_BYTES:
                raise EchoError(f"the answer is too long ({resp.content_length} bytes)")
            body = await resp.content.read(MAX_ECHO_BYTES + 1)
            if len(body) > MAX_ECHO_BYTES:
                raise EchoError(f"the answer is too long (more than {MAX_ECHO_BYTES} bytes)")
    except TimeoutError:  # before ClientError: aiohttp's timeouts are both
        raise EchoError(f"no answer within {timeout:g} s") from None
    except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
        raise EchoError(f"{type(exc).__name__}: {exc}") from None
    return parse_echo(body, version)


# ------------------------------------------------------------------ the cache


def default_ssl_context() -> ssl.SSLContext | None:
    """The TLS context for echo services: None is the system's trust store
    (tests replace this to trust their own server)."""
    return None


@attrs.define
class _Echo:
    value: str | None = None
    """The last good answer (kept through failures)."""
    next_try: float = float("-inf")


class PublicAddresses:
    """The cached ``publicIpv4`` / ``publicIpv6`` of one heartbeat task.

    ``monotonic``: the clock; ``read``: the interface reader
    (:func:`interface_addresses`, awaited); ``ask``: the echo client (:func:`ask_echo`);
    ``warn``: where failures are told (once per failure, with the family and URL).
    """

    def __init__(
        self,
        *,
        monotonic: Callable[[], float],
        warn: Callable[[str], None],
        read: Callable[[], Awaitable[dict[int, str | None]]] | None = None,
        ask: Callable[..., Awaitable[str]] | None = None,
    ) -> None:
        self._now = monotonic
        self._warn = warn
        # Looked up when used: tests replace the module's functions.
        self._read = read or (lambda: interface_addresses())
        self._ask = ask or (lambda *a, **k: ask_echo(*a, **k))
        self._local: dict[int, str | None] = {4: None, 6: None}
        self._local_next = float("-inf")
        self._echo = {4: _Echo(), 6: _Echo()}

    async def current(
        self, *, enabled: bool, refresh: float, urls: dict[int, str | None], ttl: float, timeout: float
    ) -> dict[str, str | None]:
        """``{"publicIpv4": ..., "publicIpv6": ...}``, each a string or None."""
        if not enabled:
            return {"publicIpv4": None, "publicIpv6": None}
        now = self._now()
        if now >= self._local_next:
            self._local_next = now + refresh
            try:
                self._local = dict(await self._read())
            except Exception as exc:  # a failure never breaks the heartbeat
                self._warn(f"public addresses: reading the interfaces failed: {type(exc).__name__}: {exc}")
        wanted = [v for v in (4, 6) if urls.get(v) and now >= self._echo[v].next_try]
        if wanted:
            await asyncio.gather(
                *(self._refresh_echo(v, urls[v] or "", refresh, ttl, timeout) for v in wanted)
            )
        out: dict[str, str | None] = {}
        for v in (4, 6):
            echo = self._echo[v].value if urls.get(v) else None
            out[f"publicIpv{v}"] = echo if echo is not None else self._local.get(v)
        return out

    async def _refresh_echo(self, version: int, url: str, refresh: float, ttl: float, timeout: float) -> None:
        echo = self._echo[version]
        # Set before asking: a heartbeat cancelled mid-ask does not ask again at once.
        echo.next_try = self._now() + min(refresh, ttl)
        try:
            value = await self._ask(url, version, timeout, ssl_context=default_ssl_context())
        except EchoError as exc:
            self._warn(f"public IPv{version} address from {url}: {exc}")
            return
        except Exception as exc:  # a failure never breaks the heartbeat
            self._warn(f"public IPv{version} address from {url}: {type(exc).__name__}: {exc}")
            return
        echo.value = value
        echo.next_try = self._now() + ttl


__all__ = [
    "EchoError",
    "InterfaceAddress",
    "PublicAddresses",
    "RouteHint",
    "ask_echo",
    "check_echo_url",
    "choose",
    "interface_addresses",
    "is_public",
    "parse_echo",
    "read_addresses",
    "route_hint",
]
