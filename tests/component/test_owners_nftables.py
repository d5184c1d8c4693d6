"""Firewall owners against real nftables, in throwaway network namespaces.

Each owner has its own set in the agent's table (``udp_ports`` for ``sessions``,
as before owners existed; ``udp_ports_<owner>`` for the others). A sync changes
only its owner's set, still in one ``nft -f`` transaction that rewrites the
table with the other owners' sets as the kernel listed them. Assertions read
the namespace's ruleset with ``nft``; packets prove the union is open.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator

import pytest
from helpers.nftables import Recording, counter_of, host_ruleset_untouched, rule_by_comment
from moenet_nftables import NftablesConfig, NftablesFirewall, ruleset
from prometheus_client import CollectorRegistry

from moenet_core.metrics import PluginMetrics
from moenet_core.testing import NetNS, veth_pair

pytestmark = pytest.mark.netns
__all__ = ["host_ruleset_untouched"]  # autouse: the host's own ruleset is compared around each test

TABLE = ("table", "inet", "moenet_agent")
READ = ("-j", "list", *TABLE)
WRITE = ("-f", "-")
MESH_ACCEPT = "moenet-agent: open ports of mesh"

#: The table exactly as the agent wrote it before owners existed (managedRange set).
PREVIOUS_VERSION_TABLE = """table inet moenet_agent {}
delete table inet moenet_agent
table inet moenet_agent {
\tcomment "managed by moenet-agent: hand edits are overwritten on its next sync"
\tset udp_ports {
\t\ttype inet_service
\t\tcomment "moenet-agent: UDP ports open for tunnels"
\t\telements = { 20001, 20002 }
\t}
\tchain input {
\t\tcomment "moenet-agent: tunnel ports (priority before the usual filter chain)"
\t\ttype filter hook input priority -10; policy accept;
\t\tudp dport @udp_ports counter accept comment "moenet-agent: open ports"
\t\tudp dport 20000-29999 counter drop comment "moenet-agent: closed ports of the managed range"
\t}
}
"""


def nft_set(ns: NetNS, name: str) -> dict | None:
    """One of the agent's sets as ``nft`` lists it (handle included), None when absent."""
    res = ns.run("nft", "-j", "list", "set", "inet", "moenet_agent", name, check=False)
    if res.returncode != 0:
        return None
    [body] = [o["set"] for o in json.loads(res.stdout)["nftables"] if "set" in o]
    return body


def elements(ns: NetNS, name: str) -> set[int] | None:
    body = nft_set(ns, name)
    return None if body is None else set(body.get("elem", []))


def ruleset_text(ns: NetNS) -> str:
    """With handles: any rewrite of the table changes them."""
    return ns.run("nft", "-a", "list", "ruleset").stdout


@pytest.fixture
def ns(netns) -> Iterator[NetNS]:
    yield netns()


async def test_each_owner_changes_only_its_own_set(ns):
    registry = CollectorRegistry()
    with ns.entered():
        fw = Recording(
            NftablesConfig(managed_range="20000-29999"), metrics=PluginMetrics(registry, "nftables")
        )
        assert await fw.sync(frozenset({20001, 20002})) is True  # the default owner: sessions
        assert await fw.sync(frozenset({20010}), owner="mesh") is True
        assert fw.calls == [READ, WRITE, READ] * 2  # one transaction per changing sync
        assert fw.last_changes == ["mesh: open 20010"]
        assert await fw.list_ports() == {20001, 20002, 20010}
        assert await fw.list_ports("sessions") == {20001, 20002}
        assert await fw.list_ports(owner="mesh") == {20010}
        assert await fw.list_ports(owner="ibgp") == frozenset()
    assert elements(ns, "udp_ports") == {20001, 20002}
    assert elements(ns, "udp_ports_mesh") == {20010}
    sample = registry.get_sample_value
    assert sample("moenet_nftables_open_ports", {"owner": "sessions"}) == 2
    assert sample("moenet_nftables_open_ports", {"owner": "mesh"}) == 1

    # sessions changes: the mesh set is rewritten exactly as it was.
    mesh_before = nft_set(ns, "udp_ports_mesh")
    with ns.entered():
        fw.calls.clear()
        assert await fw.sync(frozenset({20003})) is True
        assert fw.calls == [READ, WRITE, READ]
    assert elements(ns, "udp_ports") == {20003}
    after = nft_set(ns, "udp_ports_mesh")
    assert after is not None and mesh_before is not None
    assert {k: v for k, v in after.items() if k != "handle"} == {
        k: v for k, v in mesh_before.items() if k != "handle"
    }

    # mesh changes: the sessions set stays.
    with ns.entered():
        fw.calls.clear()
        assert await fw.sync(frozenset({20011, 20012}), owner="mesh") is True
        assert fw.calls == [READ, WRITE, READ]
    assert elements(ns, "udp_ports") == {20003}
    assert elements(ns, "udp_ports_mesh") == {20011, 20012}

    # Nothing differs: nothing is written, for either owner.
    before = ruleset_text(ns)
    with ns.entered():
        fw.calls.clear()
        assert await fw.sync(frozenset({20003}), owner="sessions") is False
        assert await fw.sync(frozenset({20012, 20011}), owner="mesh") is False
        assert (
            await fw.plan(frozenset({20003})) == []
            and await fw.plan(frozenset({20011, 20012}), owner="mesh") == []
        )
        assert fw.calls == [READ] * 4
    assert ruleset_text(ns) == before
    assert fw.transactions == 4 and fw.drift_repairs == 0

    # The mesh closes everything: its set and rule go, the sessions' stay.
    with ns.entered():
        assert await fw.sync(frozenset(), owner="mesh") is True
        assert await fw.sync(frozenset(), owner="mesh") is False
        assert await fw.list_ports() == {20003}
    assert elements(ns, "udp_ports_mesh") is None and elements(ns, "udp_ports") == {20003}
    assert MESH_ACCEPT not in ns.run("nft", "list", "ruleset").stdout
    assert sample("moenet_nftables_open_ports", {"owner": "mesh"}) == 0
    assert fw.transactions == 5


async def test_the_table_has_one_accept_rule_per_owner_before_the_drop(ns):
    with ns.entered():
        fw = NftablesFirewall(NftablesConfig(managed_range="20000-29999"))
        await fw.sync(frozenset({20010}), owner="mesh")
        await fw.sync(frozenset({20001}))
        await fw.sync(frozenset({20020}), owner="ibgp")
    rules = [
        o["rule"] for o in json.loads(ns.run("nft", "-j", "list", *TABLE).stdout)["nftables"] if "rule" in o
    ]
    assert [(r["comment"], r["expr"][0]["match"]["right"]) for r in rules] == [
        ("moenet-agent: open ports", "@udp_ports"),
        ("moenet-agent: open ports of ibgp", "@udp_ports_ibgp"),
        (MESH_ACCEPT, "@udp_ports_mesh"),
        (ruleset.DROP_COMMENT, {"range": [20000, 29999]}),
    ]
    with ns.entered():
        assert await fw.list_ports() == {20001, 20010, 20020}


async def test_other_owners_sets_are_read_from_the_system(ns):
    """A second backend object (another agent run) knows nothing of the first's
    writes: the other owners' ports it keeps come from the kernel's listing."""
    with ns.entered():
        first = NftablesFirewall()
        await first.sync(frozenset({51820, 51821}))
        second = Recording()
        assert await second.list_ports("sessions") == {51820, 51821}
        assert await second.sync(frozenset({4242}), owner="mesh") is True
        assert second.writes() == [WRITE]
        assert await first.list_ports("sessions") == {51820, 51821}
        assert await first.list_ports("mesh") == {4242}
        # Each sees the other's write as the current table: nothing to do.
        assert await first.sync(frozenset({51820, 51821})) is False
        assert await second.sync(frozenset({4242}), owner="mesh") is False


async def test_concurrent_syncs_of_two_owners_keep_both(ns):
    with ns.entered():
        fw = NftablesFirewall()
        results = await asyncio.gather(
            *(
                fw.sync(frozenset({p}), owner=o)
                for p, o in ((1000, "sessions"), (2000, "mesh"), (3000, "ibgp"))
            )
        )
        assert results == [True, True, True]
        assert await fw.list_ports() == {1000, 2000, 3000}
        assert await fw.list_ports("mesh") == {2000}


async def test_a_table_written_by_the_previous_version_belongs_to_sessions(ns):
    ns.run("nft", "-f", "-", input=PREVIOUS_VERSION_TABLE)
    before = ruleset_text(ns)
    with ns.entered():
        fw = Recording(NftablesConfig(managed_range="20000-29999"))
        await fw.start()
        assert await fw.list_ports() == {20001, 20002}
        assert await fw.list_ports("sessions") == {20001, 20002}
        assert await fw.list_ports("mesh") == frozenset()
        # The upgrade itself changes nothing: the sessions sync finds its table as wanted.
        assert await fw.sync(frozenset({20001, 20002})) is False
        assert await fw.sync(frozenset(), owner="mesh") is False
        assert fw.writes() == []
    assert ruleset_text(ns) == before
    with ns.entered():
        assert await fw.sync(frozenset({20010}), owner="mesh") is True
        assert await fw.list_ports("sessions") == {20001, 20002}
    assert elements(ns, "udp_ports") == {20001, 20002} and elements(ns, "udp_ports_mesh") == {20010}


async def test_invalid_owner_is_refused_before_any_nft_call(ns):
    with ns.entered():
        fw = Recording()
        for bad in ("", "Mesh", "mesh;flush", "a b", "x" * 33):
            with pytest.raises(ValueError, match="firewall owner"):
                await fw.sync(frozenset({1}), owner=bad)
            with pytest.raises(ValueError, match="firewall owner"):
                await fw.list_ports(bad)
    assert fw.calls == []


async def test_hand_edits_to_another_owners_set_are_kept_until_that_owner_syncs(ns):
    """A sync keeps the other owners' sets *as listed*; each owner repairs its own."""
    with ns.entered():
        fw = NftablesFirewall()
        await fw.sync(frozenset({1000}))
        await fw.sync(frozenset({2000}), owner="mesh")
        ns.run("nft", "add", "element", "inet", "moenet_agent", "udp_ports_mesh", "{ 7 }")
        assert await fw.sync(frozenset({1001})) is True
        assert await fw.list_ports("mesh") == {2000, 7}
        assert await fw.sync(frozenset({2000}), owner="mesh") is True
        assert await fw.list_ports("mesh") == {2000} and await fw.list_ports("sessions") == {1001}


def _udp(port: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if port is not None:
        sock.bind(("0.0.0.0", port))
    return sock


async def test_the_union_of_all_owners_ports_is_open(netns):
    """Packets to a sessions port and a mesh port arrive (each counted by its
    owner's accept rule); a closed port of the managed range is dropped."""
    rx, tx = netns(), netns()
    veth_pair(rx, tx, "vr", "vt")
    rx.run("ip", "addr", "add", "192.0.2.1/24", "dev", "vr")
    tx.run("ip", "addr", "add", "192.0.2.2/24", "dev", "vt")
    ports = {"sessions": 20001, "mesh": 20002, "closed": 20003}
    loop = asyncio.get_running_loop()
    receivers: dict[str, socket.socket] = {}
    sender: socket.socket | None = None
    affinity = os.sched_getaffinity(0)
    try:
        with rx.entered():
            fw = NftablesFirewall(NftablesConfig(managed_range="20000-29999"))
            assert await fw.sync(frozenset({ports["sessions"]}))
            assert await fw.sync(frozenset({ports["mesh"]}), owner="mesh")
            receivers = {name: _udp(port) for name, port in ports.items()}
        with tx.entered():
            sender = _udp()
        # One CPU for the sends: the veth delivers them in order through that CPU's
        # backlog, so once the last packet has arrived the earlier drop has been counted.
        os.sched_setaffinity(0, {min(affinity)})
        for name in ("closed", "sessions", "mesh"):
            sender.sendto(name.encode(), ("192.0.2.1", ports[name]))
        for name in ("sessions", "mesh"):
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(receivers[name], 100), 5)
            assert data == name.encode()
        assert counter_of(rule_by_comment(rx, ruleset.DROP_COMMENT)) == 1
        assert counter_of(rule_by_comment(rx, ruleset.ACCEPT_COMMENT)) == 1
        assert counter_of(rule_by_comment(rx, MESH_ACCEPT)) == 1
        with pytest.raises(BlockingIOError):
            receivers["closed"].recv(100)
    finally:
        os.sched_setaffinity(0, affinity)
        for sock in [*receivers.values(), *([sender] if sender else [])]:
            sock.close()
