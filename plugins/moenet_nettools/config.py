"""The ``nettools`` and ``lg`` config sections.

Every key is local: none may be set by the control plane (what the node probes,
where it listens and whom it answers are the operator's decisions).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import attrs

from moenet_core import ConfigSection
from moenet_core.config import check, host_names, is_loopback_host, listen_address

from .birdsock import DEFAULT_SOCKET
from .targets import DN42_TARGETS, check_networks


def _range(lo: float, hi: float, what: str, *, integer: bool = False) -> Callable[[Any], str | None]:
    def fn(v: Any) -> str | None:
        number = isinstance(v, int) if integer else isinstance(v, int | float)
        if isinstance(v, bool) or not number or not lo <= v <= hi:
            return (
                f"must be {'an integer' if integer else 'a number'} from {lo:g} to {hi:g} ({what}; got {v!r})"
            )
        return None

    return fn


def _socket(v: str) -> str | None:
    if not v.startswith("/"):
        return "must be an absolute path to BIRD's control socket"
    return None


def _clients(v: list[str]) -> str | None:
    return check_networks(v)


def _hosts(v: list[str]) -> str | None:
    return host_names([n for n in v if n != "*"])


@attrs.define(kw_only=True)
class NettoolsConfig:
    """Section ``nettools``: the Go agent's diagnostic tools on the local API."""

    targets: list[str] = attrs.field(factory=lambda: list(DN42_TARGETS), metadata=check(check_networks))
    """Networks ``ping``, ``tcping`` and ``trace`` may be pointed at (a host name
    is resolved first and its address must be in one of them). Default: DN42,
    ChaosVPN and NeoNetwork (``172.20.0.0/14``, ``172.31.0.0/16``, ``10.0.0.0/8``,
    ``fd00::/8``); the node's own loopbacks are always added."""
    extra_targets: list[str] = attrs.field(factory=list, metadata=check(check_networks))
    """More networks to allow on top of ``targets`` (e.g. the node's public
    prefixes)."""
    resolve_names: bool = True
    """Accept host names (resolved once by the system resolver; the tool gets the
    address). False: IP addresses only."""
    ping_count: int = attrs.field(default=4, metadata=check(_range(1, 10, "echo requests", integer=True)))
    """Echo requests ``/ping`` sends (``ping -c``)."""
    ping_wait: float = attrs.field(default=2.0, metadata=check(_range(0.2, 10, "seconds per reply")))
    """Seconds ``ping`` waits for each reply (``ping -W``)."""
    tcping_count: int = attrs.field(default=4, metadata=check(_range(1, 10, "connects", integer=True)))
    """TCP connects ``/tcping`` makes, 250 ms apart."""
    tcping_timeout: float = attrs.field(default=2.0, metadata=check(_range(0.2, 10, "seconds per connect")))
    """Seconds one TCP connect may take."""
    tcping_port: int = attrs.field(default=80, metadata=check(_range(1, 65535, "port", integer=True)))
    """Port ``/tcping`` connects to when the target names none."""
    trace_max_hops: int = attrs.field(default=20, metadata=check(_range(1, 64, "hops", integer=True)))
    """``traceroute -m``: the most hops ``/trace`` probes."""
    trace_wait: float = attrs.field(default=2.0, metadata=check(_range(0.2, 10, "seconds per probe")))
    """``traceroute -w``: seconds to wait for each probe's answer."""
    timeout: float = attrs.field(default=25.0, metadata=check(_range(1, 120, "seconds")))
    """Seconds one request may run; the program is then killed and what it
    printed so far is answered (``timedOut: true``)."""
    output_limit: int = attrs.field(
        default=65536, metadata=check(_range(1024, 4 << 20, "bytes", integer=True))
    )
    """Bytes of output one request answers at most (the rest is cut, ``truncated: true``)."""
    concurrency: int = attrs.field(default=4, metadata=check(_range(1, 64, "requests", integer=True)))
    """Tool requests running at once; more are answered ``429``."""
    bird_socket: str = attrs.field(default=DEFAULT_SOCKET, metadata=check(_socket))
    """BIRD's control socket for ``/route`` and ``/path`` (queried read-only, in
    BIRD's restricted mode)."""


@attrs.define(kw_only=True)
class LgConfig:
    """Section ``lg``: a bird-lg-go compatible looking-glass proxy."""

    enabled: bool = False
    """Serve the proxy. Off by default."""
    listen: str = attrs.field(default="127.0.0.1:8000", metadata=check(listen_address))
    """Address of the proxy's own HTTP server (bird-lg-go's frontend reaches
    proxies on port 8000 by default: ``--proxy-port``). A non-loopback address
    needs ``allowedClients``, or ``allowAnyClient: true``."""
    allowed_clients: list[str] = attrs.field(factory=list, metadata=check(_clients))
    """Addresses or networks of the frontends allowed to query (bird-lg-go's
    ``allowed_ips``); empty: any client that can reach ``listen``."""
    allow_any_client: bool = False
    """Say yes to a non-loopback ``listen`` without ``allowedClients``: anyone who
    reaches the port can read the routing table and run traceroutes."""
    bird_socket: str = attrs.field(default=DEFAULT_SOCKET, metadata=check(_socket))
    """BIRD's control socket (queried read-only, in BIRD's restricted mode)."""
    query_timeout: float = attrs.field(default=10.0, metadata=check(_range(1, 120, "seconds")))
    """Seconds one BIRD query may take; the answer then ends with a note."""
    output_limit: int = attrs.field(
        default=1 << 20,
        metadata=check(_range(4096, 64 << 20, "bytes", integer=True)),
    )
    """Bytes of text one answer carries at most (bird-lg-go's frontend itself
    reads only the first 64 KiB)."""
    max_concurrent: int = attrs.field(default=4, metadata=check(_range(1, 64, "queries", integer=True)))
    """BIRD queries running at once; more are answered ``503``."""
    max_connections: int = attrs.field(
        default=32, metadata=check(_range(1, 4096, "connections", integer=True))
    )
    """Connections the proxy serves at once, kept-alive ones included. At the cap
    the oldest one without a request in progress is closed to make room; when
    every one has a request in progress, a new connection's request is answered
    ``503`` and the connection closed (and past twice the cap, new connections are
    closed at once)."""
    allowed_hosts: list[str] = attrs.field(factory=list, metadata=check(_hosts))
    """Host names (or addresses) the proxy answers to in the ``Host`` header,
    besides ``localhost``, loopback addresses, the ``listen`` host and the address
    the client connected to; any other ``Host`` gets ``421`` (a DNS-rebinding page
    in a browser). Empty: that check applies when ``listen`` is loopback, and no
    check otherwise. ``["*"]``: any Host. List the names bird-lg-go's frontend
    uses (``<server>.<--domain>``) when it reaches a loopback listener by name."""
    header_timeout: float = attrs.field(default=10.0, metadata=check(_range(1, 120, "seconds")))
    """Seconds a client has to send a complete request header, counted from
    connecting (or from the first byte of its next request on a kept-alive
    connection); then the connection is closed."""
    request_timeout: float = attrs.field(default=60.0, metadata=check(_range(1, 600, "seconds")))
    """Seconds one request may take to be answered (then ``504``), and again to
    be sent to the client (then the connection is closed: a client that does not
    read its answer holds nothing). Keep it above ``queryTimeout`` and
    ``tracerouteTimeout``, which end with the partial output instead."""
    traceroute: bool = True
    """Serve ``/traceroute`` and ``/traceroute6``."""
    traceroute_targets: list[str] = attrs.field(
        factory=lambda: list(DN42_TARGETS), metadata=check(check_networks)
    )
    """Networks a traceroute may go to (names are resolved first; the node's
    loopbacks are added). Default: DN42, ChaosVPN and NeoNetwork."""
    traceroute_max_concurrent: int = attrs.field(
        default=2,
        metadata=check(_range(1, 64, "traceroutes", integer=True)),
    )
    """Traceroutes running at once; more are answered ``503`` (bird-lg-go's
    ``traceroute_max_concurrent``)."""
    traceroute_max_hops: int = attrs.field(default=30, metadata=check(_range(1, 64, "hops", integer=True)))
    """``traceroute -m``."""
    traceroute_timeout: float = attrs.field(default=20.0, metadata=check(_range(1, 120, "seconds")))
    """Seconds one traceroute may run before it is killed."""
    traceroute_raw: bool = False
    """Answer traceroute's output as it is; false: drop the ``*`` lines and count
    them, as bird-lg-go does by default."""

    def loopback_listen(self) -> bool:
        host = self.listen.rpartition(":")[0].strip("[]")
        return bool(host) and is_loopback_host(host)

    def needs_consent(self) -> bool:
        """A non-loopback listen with no client allow-list and no explicit yes."""
        return (
            self.enabled
            and not self.loopback_listen()
            and not self.allowed_clients
            and not self.allow_any_client
        )

    def checks_host(self) -> bool:
        """Whether the ``Host`` header is checked (see ``allowed_hosts``)."""
        if "*" in self.allowed_hosts:
            return False
        return bool(self.allowed_hosts) or self.loopback_listen()

    def client_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.allowed_clients)


NETTOOLS_SECTION = ConfigSection(
    name="nettools",
    type=NettoolsConfig,
    description="ping/tcping/trace/route/path on the local API: allowed targets, limits, BIRD socket",
)

LG_SECTION = ConfigSection(
    name="lg",
    type=LgConfig,
    description="bird-lg-go compatible looking-glass proxy: listen, allowed clients, limits, traceroute",
)
