"""What the tools may be pointed at: strict parsing, then an allow-list of ranges.

A target comes from an untrusted client (the local API, a looking-glass
frontend). It is accepted only as

- an IP address literal (no ``%scope``, no leading zeros), or
- a host name: dot-separated labels of letters, digits and inner hyphens, at
  most 253 characters; never a leading ``-``, never a space, so it cannot read
  as an option to ``ping``/``traceroute``.

A host name is resolved **once** and the programs get the resolved address,
never the name: what was checked is what is probed (no second lookup that a
rebinding DNS server could answer differently). The address must lie in one of
the allowed networks: by default DN42 (``172.20.0.0/14``, ``172.31.0.0/16``,
``10.0.0.0/8``, ``fd00::/8``, the ranges the DN42 wiki lists for DN42,
ChaosVPN and NeoNetwork) plus the node's own loopbacks; operators replace or
extend the list in the config. The unspecified address, multicast and the
IPv4 broadcast address are refused whatever the list says. An IPv4-mapped IPv6
address is judged (and probed) as its IPv4 address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import attrs

__all__ = [
    "DN42_TARGETS",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "TargetError",
    "TargetPolicy",
    "check_networks",
    "parse_network",
    "parse_target",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: DN42, ChaosVPN (172.31/16) and NeoNetwork/other dn42-interconnected nets in 10/8
#: and fd00::/8, as the DN42 wiki's address space page lists them.
DN42_TARGETS: tuple[str, ...] = ("172.20.0.0/14", "172.31.0.0/16", "10.0.0.0/8", "fd00::/8")

MAX_TARGET = 253
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_IP_CHARS = re.compile(r"^[0-9A-Fa-f:.]+$")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``resolver(name, family) -> addresses`` (``family`` is ``socket.AF_UNSPEC``,
``AF_INET`` or ``AF_INET6``); tests pass their own."""


class TargetError(ValueError):
    """A target refused. ``code`` is ``invalid_target`` (not an address or a host
    name), ``target_not_allowed`` (outside the allowed ranges) or
    ``unresolvable`` (the name has no usable address)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_target(text: object) -> IPAddress | str:
    """An address literal (IPv4-mapped turned into IPv4), or a host name (lower
    case, trailing dot removed); :class:`TargetError` ``invalid_target`` for
    anything else."""
    if not isinstance(text, str):
        raise TargetError("invalid_target", "target must be a string")
    if not text or len(text) > MAX_TARGET:
        raise TargetError("invalid_target", f"target must be 1 to {MAX_TARGET} characters")
    if (_IP_CHARS.fullmatch(text) and ":" in text) or text.replace(".", "").isdigit():
        # Looks like an address: it must be a valid one (no "1.2.3", no "010.0.0.1"
        # read as octal by the C library, no scope).
        try:
            return _unmapped(ipaddress.ip_address(text))
        except ValueError:
            raise TargetError("invalid_target", f"{text!r} is not a valid IP address") from None
    if not _HOSTNAME.fullmatch(text):
        raise TargetError(
            "invalid_target",
            "target must be an IP address or a host name (letters, digits, '-' and '.'; "
            "no leading '-', no spaces)",
        )
    return text.rstrip(".").lower()


def parse_network(text: object) -> IPAddress | IPNetwork:
    """An address or a prefix (``172.20.0.0/14``), as ``show route for`` takes
    them; host bits set in a prefix are refused. :class:`TargetError` otherwise."""
    if not isinstance(text, str) or not 1 <= len(text) <= 64:
        raise TargetError("invalid_target", "target must be an IP address or prefix (at most 64 characters)")
    if "/" not in text:
        ip = parse_target(text)
        if isinstance(ip, str):
            raise TargetError("invalid_target", f"{text!r} is not an IP address or prefix")
        return ip
    addr, _, length = text.partition("/")
    if not _IP_CHARS.fullmatch(addr) or not length.isdigit() or len(length) > 3:
        raise TargetError("invalid_target", f"{text!r} is not an IP prefix")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise TargetError("invalid_target", f"{text!r} is not an IP prefix: {exc}") from None


def check_networks(values: Iterable[object]) -> str | None:
    """Config check for a list of networks (``10.0.0.0/8``, a bare address)."""
    for value in values:
        if not isinstance(value, str):
            return f"{value!r} is not a string"
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not an IP network (e.g. 172.20.0.0/14 or fd00::/8)"
    return None


async def system_resolver(name: str, family: int) -> list[str]:
    """The system's resolver (``getaddrinfo``), addresses in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


@attrs.frozen(kw_only=True)
class TargetPolicy:
    """The allowed networks and how names are resolved."""

    networks: tuple[IPNetwork, ...]
    resolve_names: bool = True
    resolve_timeout: float = 3.0
    resolver: Resolver | None = None

    @classmethod
    def build(
        cls,
        networks: Iterable[str],
        *,
        extra: Iterable[str | None] = (),
        resolve_names: bool = True,
        resolve_timeout: float = 3.0,
        resolver: Resolver | None = None,
    ) -> TargetPolicy:
        """From config strings; ``extra`` adds single addresses or networks (the
        node's loopbacks); None and empty entries are skipped."""
        nets: list[IPNetwork] = []
        for value in [*networks, *extra]:
            if value:
                net = ipaddress.ip_network(value, strict=False)
                if net not in nets:
                    nets.append(net)
        return cls(
            networks=tuple(nets),
            resolve_names=resolve_names,
            resolve_timeout=resolve_timeout,
            resolver=resolver,
        )

    def problem(self, ip: IPAddress) -> str | None:
        """Why ``ip`` must not be probed, or None."""
        ip = _unmapped(ip)
        if ip.is_unspecified or ip.is_multicast or ip == _BROADCAST:
            return f"{ip} is not a unicast address"
        if any(ip.version == net.version and ip in net for net in self.networks):
            return None
        return f"{ip} is outside the allowed target ranges ({', '.join(map(str, self.networks)) or 'none'})"

    async def resolve(self, text: object, *, family: int = socket.AF_UNSPEC) -> IPAddress:
        """The address to probe for ``text``: checked literal, or the first
        allowed address the name resolves to (``family`` narrows the lookup of a
        name, not a literal). Raises :class:`TargetError`."""
        target = parse_target(text)
        if not isinstance(target, str):
            if (why := self.problem(target)) is not None:
                raise TargetError("target_not_allowed", why)
            return target
        if not self.resolve_names:
            raise TargetError("invalid_target", "host names are not accepted here: give an IP address")
        resolver = self.resolver or system_resolver
        try:
            found: Sequence[Any] = await asyncio.wait_for(resolver(target, family), self.resolve_timeout)
        except TimeoutError:
            raise TargetError("unresolvable", f"resolving {target} timed out") from None
        except OSError as exc:
            raise TargetError("unresolvable", f"cannot resolve {target}: {exc.strerror or exc}") from None
        refused: list[str] = []
        for raw in found:
            try:
                ip = _unmapped(ipaddress.ip_address(str(raw).split("%", 1)[0]))
            except ValueError:
                continue
            if (why := self.problem(ip)) is None:
                return ip
            refused.append(why)
        if refused:
            raise TargetError("target_not_allowed", f"{target} resolves to no allowed address: {refused[0]}")
        raise TargetError("unresolvable", f"{target} has no address")
