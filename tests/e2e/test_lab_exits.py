"""Issue 13 in the network lab: two exits to one origin, on two nodes, with real agents,
the WireGuard + Babel mesh and kernel forwarding.

``NetworkLab(exits=True)`` (contrib/lab/network.py): net1 (id 1), net2 (id 2, the route
reflector, no session) and net3 (id 1000) of AS4242420100; ext1 and ext2, two nodes of
AS4242420200 announcing the same prefixes (172.20.200.0/26, fd42:200::/48), with an eBGP
session to net1 and net3 respectively. Every route learned there is direct (AS path
length 1), so both exits have the same local preference everywhere (docs/bird.md,
"Exits"). The mesh has a fixed cost per link (``rttCost: 0``): the IGP metric depends on
the topology only, not on this machine's load.

Asserted, on the kernels' FIBs (``ip route get`` in each namespace, followed hop by hop
through the interface each node names: a mesh tunnel leads to that peer, a session
tunnel leaves the network):

1. net1 and net3, each with a direct session to the origin, use it: their kernel route
   for the prefixes goes through their own session tunnel, and BIRD's best route is
   their own eBGP route;
2. from every node the path to an address in the prefixes never revisits a node and
   leaves the network by one of the two exits;
3. ``birdc restart`` of net1's session: while it is down every path, net1's own too,
   leaves by net3's exit (still loop-free); once it is back the choices (every path and
   every node's best route) return to what they were before and stay there over an
   observation window of repeated reads (no flapping back and forth).

BIRD and the kernel have no push interface: everything is polled with deadlines.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers.lab import load_netlab, running_netlab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

#: Reads of the converged choices after the reset, and the least time they span.
WINDOW_READS = 12
WINDOW_SECONDS = 8.0


@pytest.fixture
async def exitlab(tmp_path, monkeypatch):
    async with running_netlab(tmp_path, monkeypatch, timeout=90, mesh_interval=3600, exits=True) as lab:
        yield lab


def paths(choices: dict[str, Any]) -> dict[str, Any]:
    mod = load_netlab()
    return {k: v for k, v in choices.items() if isinstance(v, mod.FibPath)}


def assert_loop_free_to_an_exit(lab, choices: dict[str, Any]) -> None:
    exits = {n.name: lab.peer_of(n).name for n in lab.network if n.session is not None}
    for key, p in paths(choices).items():
        assert p.error is None, (key, p)
        assert len(p.hops) == len(set(p.hops)), (key, p)  # never revisits a node
        assert p.exit in exits and p.external == exits[p.exit], (key, p)
        assert p.hops[-1] == p.exit, (key, p)
        # Each hop is a real tunnel of the node it leaves: a mesh tunnel, the session at the end.
        for name, dev, nxt in zip(p.hops, p.devs, [*p.hops[1:], p.external], strict=True):
            assert lab.next_node(lab.by_name(name), dev) is lab.by_name(nxt), (key, p)


async def test_two_exits_direct_session_loop_free_and_stable_after_a_reset(exitlab):
    lab = exitlab
    mod = load_netlab()
    n1, n2, n3 = lab.network
    ext1, ext2 = lab.externals
    assert (n1.session_peer, n3.session_peer, n2.session) == ("ext1", "ext2", None)
    assert (ext1.asn, ext1.prefix4, ext1.prefix6) == (ext2.asn, ext2.prefix4, ext2.prefix6)

    await lab.exchange_keys()
    await lab.wait_mesh()
    await lab.wait_babel()
    await lab.wait_ibgp()
    await lab.wait_sessions()
    sessions = {n.name: await lab.session_established(n) for n in (n1, n3)}
    for n in (n1, n3):
        await lab.wait_learned(
            n, lab.external_prefixes(), "eBGP", {sessions[n.name]["name"]}, mod.EXTERNAL_ASN
        )

    # 2 (and 1 on the FIB side): every node's path ends at an exit, without loops.
    before = await lab.wait_exits()
    assert_loop_free_to_an_exit(lab, before)

    # 1. A node with a direct session to the origin uses it, in BIRD and in the kernel.
    for n in (n1, n3):
        for prefix in lab.external_prefixes():
            proto, _ = before[f"{n.name} best {prefix}"]
            assert proto == sessions[n.name]["name"], (n.name, prefix, before)
            k = await lab.kernel_route(n, prefix)
            assert k is not None and k["protocol"] == "bird" and k["dev"] == n.session.interface, (n.name, k)
        for dst in lab.exit_probes():
            p = before[f"{n.name} -> {dst}"]
            assert p.hops == [n.name] and p.exit == n.name, p
    # The node without a session learned both exits (add paths from the RR's clients)
    # and forwards into the mesh: through at least one other node.
    for prefix in lab.external_prefixes():
        text = await lab.birdc(n2, "show", "route", prefix, "all")
        hops = {
            h
            for line in text.splitlines()
            if line.strip().startswith("bgp_next_hop:")
            for h in line.split()[1:]
        }
        assert hops & lab.loopbacks(n1) and hops & lab.loopbacks(n3), text
    for dst in lab.exit_probes():
        p = before[f"net2 -> {dst}"]
        assert p.hops[0] == "net2" and len(p.hops) >= 2, p

    # 3. Reset net1's session. While it is down every path (net1's own too) leaves by
    # net3's exit, still without loops; once it is back the choices settle on what they
    # were before and stay there.
    t = time.monotonic()
    proto = await lab.restart_session(n1)
    during = await lab.wait_failover(n1)
    assert_loop_free_to_an_exit(lab, during)
    assert {p.exit for p in paths(during).values()} == {"net3"}, during
    for dst in lab.exit_probes():
        assert during[f"net1 -> {dst}"].hops == ["net1", "net3"], during
    for prefix in lab.external_prefixes():
        proto_now, hop = during[f"net1 best {prefix}"]
        assert proto_now != proto["name"] and set(hop.split()) <= lab.loopbacks(n3), during
    await lab.wait_session_back(n1, proto)
    assert_loop_free_to_an_exit(lab, await lab.wait_exits("after the reset"))
    # Converged (bounded): every node back on its choice from before the reset.
    after = await lab.wait_choices(before, "the choices from before the reset")
    settle = time.monotonic() - t
    assert_loop_free_to_an_exit(lab, after)
    reads = await lab.stable_choices(WINDOW_READS, WINDOW_SECONDS)
    assert len(reads) >= WINDOW_READS
    for i, seen in enumerate(reads):
        assert seen == before, (i, lab.describe(before), lab.describe(seen))
    print(
        f"exits: settled {settle:.2f}s after the reset; {len(reads)} identical reads: {lab.describe(before)}"
    )
