"""Agent-rendered BIRD nodes and plain BIRD neighbours in namespaces, for the
component tests that run several BIRDs: polling with a deadline, text of a ``birdc``
command, the links between the namespaces, a hand-written BIRD, one agent node
(backend + policy) on a running BIRD, iBGP between two of them, and the usual rig
of two agent nodes and an external peer (:func:`two_nodes`).

The names are the tests' own: node A is ``sample_bird_config``'s hkg1 (node 3), B is
tyo1 (node 4, :data:`TYO1`); A and B share the ``ib-a``/``ib-b`` link, an external
network X sits on A's eBGP link ``ex-a``/``ex-x`` (A's end ``fe80::1234``, the
sessions' local link-local, X's ``fe80::2``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.policy import parse_bird_config
from moenet_bird.testing import BirdDaemon, sample_bird_config

from moenet_core.intents import IbgpNeighborIntent, IbgpOptionsIntent
from moenet_core.state import StateStore
from moenet_core.testing import NetNS, veth_pair

V6 = "fd42:4242:1234::"
#: Node B's ``node`` in its CP answer (A is ``sample_bird_config``'s default, hkg1).
TYO1: dict[str, Any] = {"id": 4, "name": "tyo1", "loopbackIpv4": "172.20.42.2", "loopbackIpv6": V6 + "2"}

#: X, an external DN42 network (AS4242420002, ``fe80::2`` on ``ex-x``) with one eBGP
#: session ``to_a`` to A (AS4242421234 at ``fe80::1234``): hand-written BIRD, a
#: template of :func:`plain_bird` (see :func:`external_peer`).
EXTERNAL_PEER = """\
log "{log}" all;
router id 192.0.2.2;
protocol device {{}}
protocol static ext4 {{ ipv4; {routes4} }}
protocol static ext6 {{ ipv6; {routes6} }}
protocol bgp to_a {{
  local fe80::2 as 4242420002;
  neighbor fe80::1234 as 4242421234;
  interface "ex-x";
  connect delay time 1;
  ipv4 {{ extended next hop on; import {imports}; export {exports}; }};
  ipv6 {{ import {imports}; export {exports}; }};
}}
"""


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Poll (BIRD is an external process) until ``check()`` is truthy; its value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def text(client: BirdClient, command: str) -> str:
    """What ``birdc <command>`` prints (an error reply included)."""
    return "\n".join((await client.command(command, check=False)).texts())


def addresses(ns: NetNS, dev: str, *addrs: str) -> None:
    for a in addrs:
        ns.run("ip", "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))


def inner_link(ns_a: NetNS, ns_b: NetNS) -> None:
    """A and B joined by ``ib-a``/``ib-b``, with their addresses (``::1``, ``.1`` and
    ``::2``, ``.2`` of the network's prefixes)."""
    veth_pair(ns_a, ns_b, "ib-a", "ib-b")
    addresses(ns_a, "ib-a", f"{V6}1/64", "172.20.42.1/27")
    addresses(ns_b, "ib-b", f"{V6}2/64", "172.20.42.2/27")


def external_link(
    ns_node: NetNS, ns_x: NetNS, *x_addrs: str, node_dev: str = "ex-a", x_dev: str = "ex-x"
) -> None:
    """An eBGP link from a node (``fe80::1234``) to an external network (``x_addrs``,
    default ``fe80::2``)."""
    veth_pair(ns_node, ns_x, node_dev, x_dev)
    addresses(ns_node, node_dev, "fe80::1234/64")
    addresses(ns_x, x_dev, *(x_addrs or ("fe80::2/64",)))


def plain_bird(ns: NetNS, base: Path, template: str, **fmt: Any) -> BirdDaemon:
    """A hand-written BIRD in ``ns``, started: ``template`` formatted with its ``log``
    (and ``fmt``), written to ``base/<base name>.conf``."""
    bird = BirdDaemon(ns, base)
    conf = base / f"{base.name}.conf"
    conf.write_text(template.format(log=bird.log, **fmt))
    return bird.start(conf)


def external_peer(ns: NetNS, base: Path, *routes: str, imports: bool = False) -> BirdDaemon:
    """X (:data:`EXTERNAL_PEER`) in ``ns``, started: it announces ``routes`` (unreachable
    statics) to A and, with ``imports``, takes everything A sends (else nothing)."""

    def statics(v6: bool) -> str:
        return " ".join(f"route {r} unreachable;" for r in routes if (":" in r) == v6)

    return plain_bird(
        ns,
        base,
        EXTERNAL_PEER,
        routes4=statics(False),
        routes6=statics(True),
        imports="all" if imports else "none",
        exports="all" if routes else "none",
    )


async def agent_backend(bird: BirdDaemon, base: Path, *, loopback: str, **kw: Any) -> BirdRoutingBackend:
    """The agent's backend on ``bird`` (files in ``base/etc``), started, no policy yet."""
    backend = BirdRoutingBackend(
        BirdClient(str(bird.socket)),
        str(base / "etc"),
        state=StateStore(base / "state"),
        loopback_interface=loopback,
        **kw,
    )
    try:
        await backend.start()
    except BaseException:
        await backend.aclose()
        raise
    return backend


async def agent_node(
    bird: BirdDaemon, base: Path, data: dict[str, Any], *, loopback: str, **kw: Any
) -> BirdRoutingBackend:
    """The agent's backend on ``bird`` (files in ``base/etc``), the policy ``data`` applied."""
    backend = await agent_backend(bird, base, loopback=loopback, **kw)
    try:
        result = await backend.set_policy(parse_bird_config(data)[0], data["configHash"], raw=data)
        assert result.ok, result.error
    except BaseException:
        await backend.aclose()
        raise
    return backend


async def ibgp_pair(a: BirdRoutingBackend, b: BirdRoutingBackend, *, reflector: bool = False) -> None:
    """iBGP between A (hkg1, node 3) and B (tyo1, node 4) over their loopbacks; with
    ``reflector``, A is B's route reflector."""
    to_b = IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6=V6 + "2", rr_client=reflector)
    options = IbgpOptionsIntent(route_reflector=True) if reflector else IbgpOptionsIntent()
    r = await a.declare("ibgp", {"options": options, "4": to_b})
    assert r.ok and not r.rejected, r
    to_a = IbgpNeighborIntent(node_id=3, node_name="hkg1", loopback_ipv6=V6 + "1", is_rr=reflector)
    r = await b.declare("ibgp", {"options": IbgpOptionsIntent(), "3": to_a})
    assert r.ok and not r.rejected, r


@attrs.define
class TwoNodes:
    """The rig of :func:`two_nodes`: A's and B's backends, a client on X's socket."""

    a: BirdRoutingBackend
    b: BirdRoutingBackend
    x: BirdClient


@contextlib.asynccontextmanager
async def two_nodes(
    netns: Callable[[], NetNS],
    base: Path,
    *x_routes: str,
    x_imports: bool = False,
    loopback: tuple[str, str] = ("ib-a", "ib-b"),
    data_a: dict[str, Any] | None = None,
    data_b: dict[str, Any] | None = None,
) -> AsyncIterator[TwoNodes]:
    """Agent nodes A (``data_a``, default hkg1) and B (``data_b``, default :data:`TYO1`)
    on the inner link, X (:func:`external_peer` with ``x_routes`` and ``x_imports``) on
    A's eBGP link; files under ``base/a``, ``base/b``, ``base/x``. No session and no
    iBGP yet. Everything is closed and stopped on the way out."""
    ns_a, ns_b, ns_x = netns(), netns(), netns()
    inner_link(ns_a, ns_b)
    external_link(ns_a, ns_x)
    with (
        BirdDaemon(ns_a, base / "a").start() as bird_a,
        BirdDaemon(ns_b, base / "b").start() as bird_b,
        external_peer(ns_x, base / "x", *x_routes, imports=x_imports) as bird_x,
    ):
        async with contextlib.AsyncExitStack() as stack:
            x = BirdClient(str(bird_x.socket))
            stack.push_async_callback(x.close)
            a = await agent_node(bird_a, base / "a", data_a or sample_bird_config(), loopback=loopback[0])
            stack.push_async_callback(a.aclose)
            data_b = data_b or sample_bird_config(node=TYO1)
            b = await agent_node(bird_b, base / "b", data_b, loopback=loopback[1])
            stack.push_async_callback(b.aclose)
            yield TwoNodes(a, b, x)


async def established(backend: BirdRoutingBackend, *names: str) -> dict[str, Any] | None:
    """Every protocol in ``names`` Established: ``{name: ProtocolState}``; else None."""
    states = {p.name: p for p in await backend.client.protocols()}
    if all(n in states and states[n].bgp_state == "Established" for n in names):
        return states
    return None
