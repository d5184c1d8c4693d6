"""Peer endpoints: parsing, one canonical text form, and host-name resolution.

A spec's endpoint is ``host:port`` or ``[v6]:port``; the host may be a name. Both
WireGuard implementations only take addresses, so names are resolved here and the
name is remembered: when the tunnel's handshake goes stale the name is resolved
again (the peer's address may have changed, see ``refresh_endpoints``).

The book also decides when *not* to write an endpoint. WireGuard roams: a peer
that sends authenticated packets from a new address becomes reachable there. An
agent that rewrote the configured endpoint every cycle would fight that (the Go
agent did). So a differing endpoint is left alone while the handshake is fresh,
unless the spec itself changed since this backend last applied it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

import attrs

from .errors import EndpointError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``resolver(host, port)`` -> canonical endpoints (``ip:port`` / ``[ip6]:port``), best first."""


def format_endpoint(ip: IPAddress, port: int) -> str:
    """The canonical form both WireGuard implementations print."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _port(text: str, endpoint: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise EndpointError(f"endpoint {endpoint!r}: port must be 1-65535")
    return int(text)


@attrs.frozen
class EndpointSpec:
    """A parsed spec endpoint; ``address`` is set when the host is an IP literal."""

    text: str
    host: str
    port: int
    address: IPAddress | None

    @property
    def literal(self) -> str | None:
        return format_endpoint(self.address, self.port) if self.address is not None else None


def parse_endpoint(text: str) -> EndpointSpec:
    """``host:port``, ``a.b.c.d:port`` or ``[v6]:port``; a bare IPv6 with a port is ambiguous."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise EndpointError(f"endpoint {text!r}: expected [address]:port")
        port = _port(rest[1:], text)
        try:
            addr: IPAddress = ipaddress.IPv6Address(host)
        except ValueError:
            raise EndpointError(f"endpoint {text!r}: {host!r} is not an IPv6 address") from None
        return EndpointSpec(text=raw, host=host, port=port, address=addr)
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise EndpointError(f"endpoint {text!r}: expected host:port")
    if ":" in host:
        raise EndpointError(f"endpoint {text!r}: write an IPv6 endpoint as [address]:port")
    port = _port(port_text, text)
    try:
        return EndpointSpec(text=raw, host=host, port=port, address=ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if len(host) > 253 or not all(
        label and len(label) <= 63 and label.isascii() and all(c.isalnum() or c in "-_" for c in label)
        for label in host.rstrip(".").split(".")
    ):
        raise EndpointError(f"endpoint {text!r}: {host!r} is not a valid host name")
    return EndpointSpec(text=raw, host=host, port=port, address=None)


def canonical(endpoint: str | None) -> str | None:
    """Normalise an endpoint read from a device (None or unparsable -> None)."""
    if not endpoint or endpoint in ("(none)", "0.0.0.0:0", "[::]:0"):
        return None
    try:
        spec = parse_endpoint(endpoint)
    except EndpointError:
        return None
    return spec.literal


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system resolver (``getaddrinfo``, UDP), keeping its order."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    except socket.gaierror as exc:
        raise EndpointError(f"endpoint host {host!r} does not resolve: {exc.strerror}") from None
    out: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]))
        except ValueError:
            continue
        ep = format_endpoint(ip, int(sockaddr[1]))
        if ep not in out:
            out.append(ep)
    if not out:
        raise EndpointError(f"endpoint host {host!r} has no IPv4 or IPv6 address")
    return out


@attrs.frozen
class Resolved:
    """What the book knows about one tunnel's endpoint."""

    spec: EndpointSpec
    candidates: tuple[str, ...]
    """Acceptable device endpoints; the first is the one written."""


class EndpointBook:
    """Per tunnel: the spec endpoint last seen and its resolved addresses."""

    def __init__(self, resolver: Resolver = system_resolver) -> None:
        self._resolver = resolver
        self._records: dict[str, Resolved] = {}

    def get(self, name: str) -> Resolved | None:
        return self._records.get(name)

    def names(self) -> list[str]:
        return sorted(self._records)

    def forget(self, name: str) -> None:
        self._records.pop(name, None)

    async def resolve(self, spec: EndpointSpec) -> tuple[str, ...]:
        if spec.literal is not None:
            return (spec.literal,)
        return tuple(await self._resolver(spec.host, spec.port))

    async def lookup(self, name: str, spec: EndpointSpec) -> tuple[Resolved, bool]:
        """The record for ``spec``: cached while the spec text is unchanged (and
        it resolved), else resolved now. Returns ``(record, changed)``; ``changed``
        is true when the spec differs from the one seen before (not on the first
        sighting), or a name that did not resolve before now does. A name that
        does not resolve raises :class:`EndpointError` and is remembered without
        addresses, so :meth:`names` and :meth:`refresh` still cover it."""
        old = self._records.get(name)
        if old is not None and old.spec.text == spec.text and old.candidates:
            return old, False
        try:
            candidates = await self.resolve(spec)
        except EndpointError:
            # Remembered without addresses: ensure and refresh() try again.
            self._records[name] = Resolved(spec=spec, candidates=())
            raise
        record = Resolved(spec=spec, candidates=candidates)
        self._records[name] = record
        return record, old is not None

    async def refresh(self, name: str) -> Resolved | None:
        """Resolve the remembered name again (literals need no lookup). A name
        that does not resolve keeps its last addresses (none, if it never did)."""
        old = self._records.get(name)
        if old is None:
            return None
        if old.spec.literal is not None:
            return old
        record = Resolved(spec=old.spec, candidates=await self.resolve(old.spec))
        self._records[name] = record
        return record

    def retain(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in list(self._records):
            if name not in keep:
                del self._records[name]
